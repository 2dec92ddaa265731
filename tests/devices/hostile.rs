//! A hostile server, tried as its operator would: the real server and `tessera` CLI devices, with
//! the test writing to the server's own store behind its back (the same store code, on the same
//! database file), and links altered on their way. Each case ends with the forged party outside
//! the group, reading nothing, and the honest devices saying why.

use serde_json::Value;
use tessera_server::store::{InvitationRecord, SqliteStore, Store as _};
use tessera_wire::Role;
use uuid::Uuid;

use crate::support::{Device, Server, free_port, inside_namespace, unique, wait_converged};

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

    /// Writes to the server's store behind its back.
    fn tamper<T>(&self, write: impl AsyncFnOnce(&SqliteStore) -> T) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let store = SqliteStore::open(&self.root.path().join("server"))
                .await
                .expect("the server's store opens");
            write(&store).await
        })
    }
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
    let honest = Honest::new();
    let (mut a, mut b) = (honest.admin.chat(), honest.member.chat());
    wait_converged(&mut [&mut a, &mut b], 2);
    let admin_id: Uuid = serde_json::from_value(a.status()["member"].clone()).expect("member id");

    // The operator inserts an invitation of its own: a token it knows, no admin's signature.
    let token = tessera_server::secret::new_token();
    honest.tamper(async |store| {
        let circle = store
            .member(admin_id)
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
            created_by: Some(admin_id),
            created_at: now,
            expires_at: now + 3600,
            statement: None,
        };
        store
            .insert_invitation(&record, &tessera_server::secret::digest(&token))
            .await
            .expect("the forged invitation is written");
    });
    let forged = Device::new(honest.root.path(), "forged");
    forged.join(
        &format!("{}/join/{token}", honest.origin),
        &format!("Mallory{}", unique()),
    );
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
    b.wait_for("the message", |v| {
        v["event"] == "message" && v["text"] == secret
    });
    f.drain(std::time::Duration::from_secs(5));
    assert_eq!(
        f.status()["epoch"],
        Value::Null,
        "the forged device joined the group"
    );
    assert!(!f.received().contains(&secret));
    // Asked later, the admin's device still lists it, with a warning instead of a role.
    a.quit();
    let members = honest.admin.run(&["members"]);
    let out = crate::support::text(&members);
    assert!(out.contains(&forged_id) && out.contains("warning"), "{out}");
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
