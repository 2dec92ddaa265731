//! A hostile server, tried as its operator would: the real server and `tessera` CLI devices, with
//! the test writing to the server's own store behind its back (the same store code, on the same
//! database file), and links altered on their way. Each case ends with the forged party outside
//! the group, reading nothing, and the honest devices saying why.

use serde_json::Value;
use tessera_engine::invitation::{InvitationSecret, InvitationStatement, SignedInvitation};
use tessera_engine::trust::{KeyProof, LinkSecrets};
use tessera_server::store::{InvitationRecord, SqliteStore, Store as _};
use tessera_softkey::SoftKey;
use tessera_wire::{Base64Url, PublicKeyInfo, Role};
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
    /// The whole link the member joined with.
    member_link: String,
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
            member_link: invitation,
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

    /// Enrolls Mallory through an invitation the operator forged, then swaps her proof in the
    /// server's store for the one `proof` makes of her member id and key: what honest devices
    /// judge her by. Her device, and her member id.
    fn mallory_admitted_by(
        &self,
        admin: Uuid,
        proof: impl FnOnce(Uuid, PublicKeyInfo) -> Base64Url,
    ) -> (Device, String) {
        let mallory = Device::new(self.root.path(), "mallory");
        mallory.join(&self.forged_link(admin), &format!("Mallory{}", unique()));
        let mut m = mallory.chat();
        let id = member_id(&mut m);
        m.quit();
        let key = SoftKey::load(&mallory.key).expect("Mallory's key");
        let proof = proof(id.parse().expect("member id"), key.public_key_info());
        self.sql(
            "DELETE FROM member_proofs WHERE member_id = ?",
            &[id.as_str()],
        );
        let hex: String = proof
            .as_slice()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let written = self.sql(
            "INSERT INTO member_proofs (member_id, proof, created_at) VALUES (?, unhex(?), 0)",
            &[id.as_str(), hex.as_str()],
        );
        assert_eq!(written, 1, "the proof is written");
        (mallory, id)
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

/// The ids of the keys `tessera keys` lists for `device`'s member.
fn key_ids(device: &Device) -> Vec<String> {
    device
        .ok(&["keys"])
        .lines()
        .skip(1)
        .filter_map(|row| row.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn a_lost_key_revoked_with_the_members_other_key_takes_its_device_out_of_the_group() {
    if !inside_namespace(
        "hostile::a_lost_key_revoked_with_the_members_other_key_takes_its_device_out_of_the_group",
    ) {
        return;
    }
    // The member's second device enrolls its own key with the admin's recovery link.
    let (honest, mut a, mut b, _) = Honest::talking();
    let member = member_id(&mut b);
    let first = key_ids(&honest.member);
    let link = honest
        .admin
        .ok(&["admin", "recover", &member])
        .trim()
        .to_owned();
    let phone = Device::new(honest.root.path(), "phone");
    phone.join(&link, &format!("Phone{}", unique()));
    let mut p = phone.chat();
    wait_converged(&mut [&mut a, &mut b, &mut p], 3);
    let lost: Vec<String> = key_ids(&honest.member)
        .into_iter()
        .filter(|id| !first.contains(id))
        .collect();
    assert_eq!(lost.len(), 1, "the phone's key: {lost:?}");

    // The phone is lost: the member's first key signs its key's revocation. The member's own
    // device, once it sees the directory, takes the phone out of the group.
    let out = honest.member.ok(&["keys", "revoke", &lost[0]]);
    assert!(out.contains("signed with your key"), "{out}");
    // The server ends the session the phone's key opened; the member's own device takes the
    // phone out of the group on the signature (whichever the phone hears first).
    let (status, stderr) = p.wait_exit();
    assert!(!status.success(), "the phone stops");
    assert!(
        stderr.contains("revoked") || stderr.contains("removed"),
        "and says why: {stderr}"
    );
    b.quit();
    let mut b = honest.member.chat();
    wait_converged(&mut [&mut a, &mut b], 2);
    let secret = format!("not for the lost phone {}", unique());
    a.say(&secret);
    b.wait_for("the message", message_with(&secret));
    // No one warns of anything: the revocation holds.
    for chat in [&a, &b] {
        assert!(
            chat.events("distrusted").is_empty(),
            "{:?}",
            chat.events("distrusted")
        );
    }
    let history = phone.ok(&["history"]);
    assert!(!history.contains(&secret), "{history}");
}

#[test]
fn an_older_directory_replayed_after_a_real_removal_brings_no_one_back() {
    if !inside_namespace(
        "hostile::an_older_directory_replayed_after_a_real_removal_brings_no_one_back",
    ) {
        return;
    }
    let (honest, a, mut b, epoch) = Honest::talking();
    let member = member_id(&mut b);
    honest.admin.ok(&["admin", "revoke", &member]);
    let (status, _) = b.wait_exit();
    assert!(!status.success(), "the revoked device stops");
    a.quit();
    let mut a = honest.admin.chat();
    let removed = wait_converged(&mut [&mut a], 1);
    assert!(removed > epoch, "the removal is a new epoch");

    // The operator serves the directory from before the revocation again and lets the member's
    // device back in: the admin's device, started again, says so and keeps it out.
    let restored = honest.sql(
        "UPDATE members SET revoked_at = NULL, revocation = NULL WHERE id = ?",
        &[member.as_str()],
    );
    assert_eq!(restored, 1);
    honest.member.ok(&["login"]);
    a.quit();
    let mut a = honest.admin.chat();
    let mut b = honest.member.chat();
    a.wait_for(
        "a warning about the member the directory brings back",
        |v: &Value| {
            distrusted_member(&member)(v)
                && v["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("revocation an admin signed removed"))
        },
    );
    let secret = format!("the revoked stay out {}", unique());
    a.say(&secret);
    b.drain(std::time::Duration::from_secs(5));
    let status = a.status();
    assert_eq!(
        status["group"].as_object().map(serde_json::Map::len),
        Some(1),
        "{status}"
    );
    assert!(!b.received().contains(&secret));
    assert_ne!(b.status()["epoch"].as_u64(), a.status()["epoch"].as_u64());
}

/// Now, in Unix seconds.
fn now_secs() -> i64 {
    tessera_engine::unix_ms(std::time::SystemTime::now()) / 1000
}

/// Checks that honest devices `a` and `b`, started again, say they distrust `mallory` for
/// `reason` and that her device never joins their group nor reads what they say.
fn refused_and_kept_out(
    honest: &Honest,
    (a, b): (Chat, Chat),
    (mallory, mallory_id): (&Device, &str),
    reason: &'static str,
) {
    a.quit();
    b.quit();
    let (mut a, mut b) = (honest.admin.chat(), honest.member.chat());
    let mut m = mallory.chat();
    for chat in [&mut a, &mut b] {
        let warning = chat.wait_for("a warning about Mallory", distrusted_member(mallory_id));
        assert!(
            warning["reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason)),
            "{warning}"
        );
    }
    wait_converged(&mut [&mut a, &mut b], 2);
    let secret = format!("not for Mallory {}", unique());
    a.say(&secret);
    b.wait_for("the message", message_with(&secret));
    m.drain(std::time::Duration::from_secs(5));
    assert_eq!(m.status()["epoch"], Value::Null, "Mallory joined the group");
    assert!(!m.received().contains(&secret));
}

#[test]
fn an_invitation_used_twice_admits_no_one_the_second_time() {
    if !inside_namespace("hostile::an_invitation_used_twice_admits_no_one_the_second_time") {
        return;
    }
    // Mallory got hold of the member's link after it was used (a forwarded email): the operator
    // enrolls her, and the admission she makes with the link's secret is a true one.
    let (honest, mut a, b, _) = Honest::talking();
    let admin_id: Uuid = serde_json::from_value(a.status()["member"].clone()).expect("member id");
    let (_, fragment) = honest.member_link.split_once('#').expect("a fragment");
    let secret = LinkSecrets::from_fragment(fragment)
        .expect("the whole link")
        .secret;
    let invitation = honest.tamper(async |store| {
        let member = store.member(admin_id).await.expect("read").expect("admin");
        store
            .proofs_of_circle(member.circle)
            .await
            .expect("read")
            .into_iter()
            .find_map(|(_, blob)| match KeyProof::from_blob(&blob.into()) {
                Ok(KeyProof::Admission(admission)) => Some(admission.invitation),
                _ => None,
            })
            .expect("the member's admission")
    });
    let (mallory, mallory_id) = honest.mallory_admitted_by(admin_id, |id, key| {
        KeyProof::Admission(secret.admit(invitation, id, key, now_secs())).to_blob()
    });
    refused_and_kept_out(
        &honest,
        (a, b),
        (&mallory, &mallory_id),
        "the invitation was used before",
    );
}

#[test]
fn an_expired_signed_invitation_admits_no_one() {
    if !inside_namespace("hostile::an_expired_signed_invitation_admits_no_one") {
        return;
    }
    // An invitation the admin's key really signed, expired a minute ago: the server (its
    // operator) takes it anyway.
    let (honest, mut a, b, _) = Honest::talking();
    let status = a.status();
    let admin_id: Uuid = serde_json::from_value(status["member"].clone()).expect("member id");
    let circle: Uuid = honest.tamper(async |store| {
        store
            .member(admin_id)
            .await
            .expect("read")
            .expect("admin")
            .circle
    });
    let secret = InvitationSecret::generate().expect("randomness");
    let statement = InvitationStatement {
        circle,
        invitation_key: secret.public_key(),
        role: Role::Member,
        expires_at: now_secs() - 60,
        issuer: admin_id,
        recovers: None,
    };
    let mut admin_key = SoftKey::load(&honest.admin.key).expect("the admin's key");
    let rp_id = admin_key.rp_id().to_owned();
    let signed =
        SignedInvitation::sign(statement, &rp_id, |r| admin_key.sign_in(r, &honest.origin))
            .expect("the admin's key signs");
    // Saved again, so that its signature counter stays ahead for the admin's next login.
    admin_key.save(&honest.admin.key).expect("saved");
    let (mallory, mallory_id) = honest.mallory_admitted_by(admin_id, |id, key| {
        KeyProof::Admission(secret.admit(signed, id, key, now_secs())).to_blob()
    });
    refused_and_kept_out(
        &honest,
        (a, b),
        (&mallory, &mallory_id),
        "the invitation has expired",
    );
}

#[test]
fn a_member_hidden_from_one_device_stays_and_the_split_shows_in_the_safety_numbers() {
    if !inside_namespace(
        "hostile::a_member_hidden_from_one_device_stays_and_the_split_shows_in_the_safety_numbers",
    ) {
        return;
    }
    let (honest, mut a, b, _) = Honest::talking();
    let admin_id = member_id(&mut a);
    let carol = Device::new(honest.root.path(), "carol");
    let link = honest.admin.ok(&["admin", "invite"]).trim().to_owned();
    carol.join(&link, &format!("Carol{}", unique()));
    b.quit();
    let (mut b, mut c) = (honest.member.chat(), carol.chat());
    wait_converged(&mut [&mut a, &mut b, &mut c], 3);
    let carol_id = member_id(&mut c);
    let agreed = a.status()["safety"].as_str().expect("safety").to_owned();
    assert_eq!(b.status()["safety"], agreed.as_str());

    // The operator hides Carol from the member's device only: it moves her to a circle of its
    // own while that device, started again, looks at the directory, then back. (The admin's
    // device looks too when the member's goes offline: the move waits until it has.)
    b.quit();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let elsewhere = Uuid::new_v4().to_string();
    honest.sql(
        "INSERT INTO circles (id, created_at) VALUES (?, 0)",
        &[elsewhere.as_str()],
    );
    let hide = "UPDATE members SET circle_id = ? WHERE id = ?";
    assert_eq!(
        honest.sql(hide, &[elsewhere.as_str(), carol_id.as_str()]),
        1
    );
    let mut b = honest.member.chat();
    let warning = b.wait_for("a warning about Carol", distrusted_member(&carol_id));
    assert!(
        warning["reason"]
            .as_str()
            .is_some_and(|r| r.contains("without a revocation")),
        "{warning}"
    );
    let back = "UPDATE members SET circle_id = (SELECT circle_id FROM members WHERE id = ?) \
                WHERE id = ?";
    assert_eq!(honest.sql(back, &[admin_id.as_str(), carol_id.as_str()]), 1);

    // Carol stays in the member's group, but the two devices now show different safety numbers:
    // compared in person, they show the split.
    let split = b.status()["safety"].as_str().expect("safety").to_owned();
    assert_ne!(split, agreed);
    assert_eq!(a.status()["safety"], agreed.as_str());
    let text = format!("still here {}", unique());
    c.say(&text);
    a.wait_for("Carol's message", message_with(&text));
    b.wait_for("Carol's message", message_with(&text));

    // Served the same directory again, the member's device agrees with the admin's once more.
    b.quit();
    let mut b = honest.member.chat();
    b.drain(std::time::Duration::from_secs(3));
    assert_eq!(b.status()["safety"], agreed.as_str());
}
