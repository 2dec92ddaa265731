//! A hostile server, tried as its operator would: the real server and `tessera` CLI devices, with
//! the test writing to the server's own store behind its back (the same store code, on the same
//! database file), and links altered on their way. Each case ends with the forged party outside
//! the group, reading nothing, and the honest devices saying why.

use serde_json::Value;
use tessera_server::store::{InvitationRecord, SqliteStore, Store as _};
use tessera_wire::Role;
use uuid::Uuid;

use crate::support::{
    Chat, Device, Server, free_port, inside_namespace, message_with, unique, wait_converged,
};

/// The server, the admin's device and one member's, all enrolled honestly.
struct Honest {
    root: tempfile::TempDir,
    _server: Server,
    origin: String,
    admin: Device,
    member: Device,
}

impl Honest {
    fn new() -> Honest {
        let root = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let origin = format!("http://localhost:{port}");
        let (server, link) = Server::start(&root.path().join("server"), port, &origin);
        let admin = Device::new(root.path(), "admin");
        admin.join(
            &link.expect("the admin link"),
            &format!("Admin{}", unique()),
        );
        let member = Device::new(root.path(), "member");
        let invitation = admin.ok(&["admin", "invite"]).trim().to_owned();
        member.join(&invitation, &format!("Member{}", unique()));
        Honest {
            root,
            _server: server,
            origin,
            admin,
            member,
        }
    }

    /// The honest circle with both devices in the group and linked: their chats and the
    /// group's epoch.
    fn talking() -> (Honest, Chat, Chat, u64) {
        let honest = Honest::new();
        let (mut a, mut b) = (honest.admin.chat(), honest.member.chat());
        let epoch = wait_converged(&mut [&mut a, &mut b], 2);
        (honest, a, b, epoch)
    }

    /// Writes to the server's store behind its back.
    fn tamper<T>(&self, write: impl AsyncFnOnce(&SqliteStore) -> T) -> T {
        block_on(async {
            let store = SqliteStore::open(&self.root.path().join("server"))
                .await
                .expect("the server's store opens");
            write(&store).await
        })
    }

    /// Inserts an invitation of the operator's own, as it would: a token it knows, no admin's
    /// signature, said to come from `admin`. Returns its link (no fragment: there is no secret).
    fn forged_link(&self, admin: Uuid) -> String {
        let token = tessera_server::secret::new_token();
        self.tamper(async |store| {
            let circle = store
                .member(admin)
                .await
                .expect("read")
                .expect("admin")
                .circle;
            let now = i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs(),
            )
            .expect("time");
            let record = InvitationRecord {
                id: Uuid::new_v4(),
                circle,
                role: Role::Admin,
                member: None,
                created_by: Some(admin),
                created_at: now,
                expires_at: now + 3600,
                statement: None,
            };
            store
                .insert_invitation(&record, &tessera_server::secret::digest(&token))
                .await
                .expect("the forged invitation is written");
        });
        format!("{}/join/{token}", self.origin)
    }

    /// Runs one SQL statement on the server's database, as its operator can; returns the rows
    /// it changed.
    fn sql(&self, statement: &'static str, binds: &[&str]) -> u64 {
        let database = self
            .root
            .path()
            .join("server")
            .join(tessera_server::store::DATABASE_FILE);
        block_on(async {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&database);
            let mut connection = sqlx::ConnectOptions::connect(&options)
                .await
                .expect("the database opens");
            let mut query = sqlx::query(statement);
            for bind in binds {
                query = query.bind(*bind);
            }
            query
                .execute(&mut connection)
                .await
                .expect("the statement runs")
                .rows_affected()
        })
    }
}

/// Runs `work` to its end on a runtime of its own.
fn block_on<T>(work: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(work)
}

/// The member a device's chat is of.
fn member_id(chat: &mut Chat) -> String {
    chat.status()["member"]
        .as_str()
        .expect("member id")
        .to_owned()
}

fn distrusted_member(member: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| v["event"] == "distrusted" && v["member"] == member
}

#[test]
fn an_invitation_the_server_forges_admits_a_device_no_honest_device_adds() {
    if !inside_namespace(
        "hostile::an_invitation_the_server_forges_admits_a_device_no_honest_device_adds",
    ) {
        return;
    }
    let (honest, mut a, mut b, _) = Honest::talking();
    let admin_id: Uuid = serde_json::from_value(a.status()["member"].clone()).expect("member id");
    // Both devices show the same safety number: twelve words.
    let safety = a.status()["safety"]
        .as_str()
        .expect("a safety number")
        .to_owned();
    assert_eq!(safety.split(' ').count(), 12, "{safety}");
    assert_eq!(b.status()["safety"], safety.as_str());

    // The operator inserts an invitation of its own: a token it knows, no admin's signature.
    let link = honest.forged_link(admin_id);
    let forged = Device::new(honest.root.path(), "forged");
    forged.join(&link, &format!("Mallory{}", unique()));
    let mut f = forged.chat();
    let forged_id = f.status()["member"].as_str().expect("member id").to_owned();

    // Both honest devices say they ignore it, and it never gets into the group.
    for chat in [&mut a, &mut b] {
        chat.wait_for(
            "a warning about the forged member",
            distrusted_member(&forged_id),
        );
    }
    let secret = format!("not for the forged device {}", unique());
    a.say(&secret);
    b.wait_for("the message", message_with(&secret));
    f.drain(std::time::Duration::from_secs(5));
    assert_eq!(
        f.status()["epoch"],
        Value::Null,
        "the forged device joined the group"
    );
    assert!(!f.received().contains(&secret));
    // What the chain admits did not change, and neither did the safety number.
    assert_eq!(a.status()["safety"], safety.as_str());
    // Asked later, the admin's device still lists it, with a warning instead of a role, and shows
    // the same safety number.
    a.quit();
    let members = honest.admin.run(&["members"]);
    let out = crate::support::text(&members);
    assert!(out.contains(&forged_id) && out.contains("warning"), "{out}");
    assert!(out.contains(&safety), "{out}");
}

#[test]
fn a_link_cut_short_or_pointing_at_another_root_is_refused() {
    if !inside_namespace("hostile::a_link_cut_short_or_pointing_at_another_root_is_refused") {
        return;
    }
    let honest = Honest::new();
    let whole = honest.admin.ok(&["admin", "invite"]).trim().to_owned();
    let (cut, fragment) = whole.split_once('#').expect("a fragment");
    let newcomer = Device::new(honest.root.path(), "newcomer");
    let out = newcomer.run(&["join", cut, "--name", "Cut"]);
    assert!(!out.status.success());
    assert!(
        crate::support::text(&out)
            .contains("this link is incomplete: ask the admin for the whole link"),
        "{}",
        crate::support::text(&out)
    );
    // Nothing was used up: the whole link still works, with the same (still blank) key.
    newcomer.join(&whole, &format!("Whole{}", unique()));

    // A second link whose root was swapped on its way: the key enrolls, but the device finds that
    // the link's root does not admit it and stops there.
    let another = honest.admin.ok(&["admin", "invite"]).trim().to_owned();
    let (url, fragment_b) = another.split_once('#').expect("a fragment");
    let secret = fragment_b.split_once('.').expect("secret.root").0;
    let other_root = fragment.split_once('.').expect("secret.root").0; // 32 bytes, not a root
    let swapped = format!("{url}#{secret}.{other_root}");
    let misled = Device::new(honest.root.path(), "misled");
    let out = misled.run(&["join", &swapped, "--name", "Misled"]);
    assert!(!out.status.success());
    assert!(
        crate::support::text(&out).contains("does not admit you"),
        "{}",
        crate::support::text(&out)
    );
    assert!(
        !misled.dir.join("device.db").exists() || misled.run(&["history"]).status.code() != Some(0),
        "no device was made"
    );
}

#[test]
fn a_role_the_server_flips_to_admin_counts_for_nothing() {
    if !inside_namespace("hostile::a_role_the_server_flips_to_admin_counts_for_nothing") {
        return;
    }
    let (honest, a, mut b, _) = Honest::talking();
    let member = member_id(&mut b);
    b.quit();

    // The operator makes the member an admin in its database.
    let flipped = honest.sql(
        "UPDATE members SET role = 'admin' WHERE id = ?",
        &[member.as_str()],
    );
    assert_eq!(flipped, 1);

    // The server now lets the member issue invitations, but one they sign admits nobody: the
    // newcomer's device finds that the link's root does not admit it.
    let link = honest.member.ok(&["admin", "invite"]).trim().to_owned();
    let newcomer = Device::new(honest.root.path(), "newcomer");
    let out = newcomer.run(&["join", &link, "--name", "Newcomer"]);
    assert!(!out.status.success(), "{}", crate::support::text(&out));
    assert!(
        crate::support::text(&out).contains("does not admit you"),
        "{}",
        crate::support::text(&out)
    );

    // The admin's device, started again (else it would fetch the directory within a minute),
    // warns of the role no admin signed and of the newcomer; the member's own device warns of
    // its own role, marked `own`.
    a.quit();
    let mut a = honest.admin.chat();
    let warned = |own: bool, reason: &'static str| {
        move |v: &Value| {
            v["event"] == "distrusted"
                && v["own"] == own
                && v["reason"].as_str().is_some_and(|r| r.contains(reason))
        }
    };
    let forged = a.wait_for("the forged role", warned(false, "role no admin signed"));
    assert_eq!(forged["member"], member.as_str());
    a.wait_for("the newcomer", warned(false, "issuer is not an admin"));
    let mut b = honest.member.chat();
    let own = b.wait_for(
        "the member's own warning",
        warned(true, "role no admin signed"),
    );
    assert_eq!(own["member"], member.as_str());
    a.quit();
    let out = crate::support::text(&honest.admin.run(&["members"]));
    assert!(out.contains("role no admin signed"), "{out}");
}

#[test]
fn a_key_the_server_adds_to_an_honest_member_is_refused_and_its_owner_told() {
    if !inside_namespace(
        "hostile::a_key_the_server_adds_to_an_honest_member_is_refused_and_its_owner_told",
    ) {
        return;
    }
    let (honest, mut a, mut b, _) = Honest::talking();
    let admin_id: Uuid = serde_json::from_value(a.status()["member"].clone()).expect("member id");
    let member = member_id(&mut b);
    b.quit();

    // The operator enrolls a key of its own through an invitation it forged, then moves that key
    // to the honest member in its database.
    let mallory = Device::new(honest.root.path(), "mallory");
    mallory.join(
        &honest.forged_link(admin_id),
        &format!("Mallory{}", unique()),
    );
    let mut m = mallory.chat();
    let mallory_id = m.status()["member"].as_str().expect("member id").to_owned();
    a.wait_for("the forged member", distrusted_member(&mallory_id));
    m.quit();
    let moved = honest.sql(
        "UPDATE passkeys SET member_id = ? WHERE member_id = ?",
        &[member.as_str(), mallory_id.as_str()],
    );
    assert_eq!(moved, 1);

    // The member's own device says a key it never endorsed was added to the account; the admin's
    // device ignores the key too. Neither is told the member is untrusted as a whole.
    let unendorsed = |own: bool| {
        let member = member.clone();
        move |v: &Value| distrusted_member(&member)(v) && v["own"] == own && v["key"].is_string()
    };
    let mut b = honest.member.chat();
    let own = b.wait_for("the warning on the member's own device", unendorsed(true));
    assert!(
        own["reason"]
            .as_str()
            .is_some_and(|r| r.contains("admits this key")),
        "{own}"
    );
    a.quit();
    let mut a = honest.admin.chat();
    a.wait_for("the warning on the admin's device", unendorsed(false));
    assert!(
        a.events("distrusted")
            .iter()
            .all(|v| !(v["member"] == member.as_str() && v["key"].is_null())),
        "the honest member stays trusted"
    );
    // The two honest devices still talk.
    wait_converged(&mut [&mut a, &mut b], 2);
    let text = format!("still between us {}", unique());
    a.say(&text);
    b.wait_for("the message", message_with(&text));
}

#[test]
fn a_revocation_the_server_forges_or_a_member_it_drops_removes_no_one() {
    if !inside_namespace(
        "hostile::a_revocation_the_server_forges_or_a_member_it_drops_removes_no_one",
    ) {
        return;
    }
    let (honest, a, mut b, epoch) = Honest::talking();
    let member = member_id(&mut b);
    b.quit();
    let warned = |reason: &'static str| {
        let member = member.clone();
        move |v: &Value| {
            distrusted_member(&member)(v)
                && v["reason"].as_str().is_some_and(|r| r.contains(reason))
        }
    };
    let still_in_group = |a: &mut crate::support::Chat| {
        a.drain(std::time::Duration::from_secs(3));
        let status = a.status();
        assert_eq!(status["epoch"].as_u64(), Some(epoch), "{status}");
        assert_eq!(
            status["group"].as_object().map(serde_json::Map::len),
            Some(2),
            "{status}"
        );
    };

    // The operator marks the member revoked with a revocation of its own making.
    let forged = honest.sql(
        "UPDATE members SET revoked_at = 1, revocation = X'7b7d' WHERE id = ?",
        &[member.as_str()],
    );
    assert_eq!(forged, 1);
    a.quit();
    let mut a = honest.admin.chat();
    a.wait_for(
        "a warning of the forged revocation",
        warned("revoked, but the admin's statement is malformed"),
    );
    still_in_group(&mut a);

    // Then drops the member from the directory altogether.
    honest.sql(
        "UPDATE members SET revocation = NULL WHERE id = ?",
        &[member.as_str()],
    );
    a.quit();
    let mut a = honest.admin.chat();
    a.wait_for(
        "a warning of the dropped member",
        warned("without a revocation an admin signed"),
    );
    still_in_group(&mut a);

    // The member was never out: once the server serves them again, their device reads what the
    // admin sent meanwhile.
    let secret = format!("you never left {}", unique());
    a.say(&secret);
    honest.sql(
        "UPDATE members SET revoked_at = NULL WHERE id = ?",
        &[member.as_str()],
    );
    let mut b = honest.member.chat();
    b.wait_for("the message", message_with(&secret));
}

#[test]
fn a_key_added_to_an_account_is_announced_on_every_device_loudest_on_the_owners() {
    if !inside_namespace(
        "hostile::a_key_added_to_an_account_is_announced_on_every_device_loudest_on_the_owners",
    ) {
        return;
    }
    // Whoever adds it (the member, or a thief with one of their keys and its PIN), the new key
    // is said on every device: the account's owner can tell if it was not them.
    let (honest, mut a, mut b, _) = Honest::talking();
    let member = member_id(&mut b);
    let before = a.status()["safety"].as_str().expect("safety").to_owned();
    b.quit();
    let spare = honest.root.path().join("spare.key");
    let spare = spare.to_str().expect("utf-8 path");
    honest.member.ok(&["soft-key", "new", "--file", spare]);
    honest.member.ok(&["keys", "add", "--file", spare]);

    let changed = |own: bool| {
        let member = member.clone();
        move |v: &Value| {
            v["event"] == "keys_changed"
                && v["member"] == member.as_str()
                && v["own"] == own
                && v["added"].as_array().is_some_and(|a| a.len() == 1)
                && v["removed"].as_array().is_some_and(Vec::is_empty)
        }
    };
    a.quit();
    let mut a = honest.admin.chat();
    a.wait_for(
        "the admin's device says the member's keys changed",
        changed(false),
    );
    let mut b = honest.member.chat();
    b.wait_for("the member's own device says so, marked own", changed(true));
    // The safety number moved with the keys, the same on both.
    let after = a.status()["safety"].as_str().expect("safety").to_owned();
    assert_ne!(after, before);
    assert_eq!(b.status()["safety"], after.as_str());
    // Said once: a device started again has the new key pinned.
    b.quit();
    let mut b = honest.member.chat();
    b.drain(std::time::Duration::from_secs(3));
    assert!(
        b.events("keys_changed").is_empty(),
        "{:?}",
        b.events("keys_changed")
    );
}

#[test]
fn a_member_an_admin_promotes_invites_and_every_device_takes_the_newcomer() {
    if !inside_namespace(
        "hostile::a_member_an_admin_promotes_invites_and_every_device_takes_the_newcomer",
    ) {
        return;
    }
    // The honest counterpart of a flipped role: a promotion the admin's key signs.
    let (honest, a, mut b, _) = Honest::talking();
    let member = member_id(&mut b);
    b.quit();
    let out = honest.admin.ok(&["admin", "promote", &member]);
    assert!(out.contains("is now an admin"), "{out}");

    let link = honest.member.ok(&["admin", "invite"]).trim().to_owned();
    let newcomer = Device::new(honest.root.path(), "newcomer");
    newcomer.join(&link, &format!("Newcomer{}", unique()));
    a.quit();
    let (mut a, mut b, mut n) = (honest.admin.chat(), honest.member.chat(), newcomer.chat());
    wait_converged(&mut [&mut a, &mut b, &mut n], 3);
    for chat in [&mut a, &mut b, &mut n] {
        assert!(
            chat.events("distrusted").is_empty(),
            "{:?}",
            chat.events("distrusted")
        );
    }
    a.quit();
    let out = crate::support::text(&honest.admin.run(&["members"]));
    assert!(!out.contains("warning"), "{out}");
}
