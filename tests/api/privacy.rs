//! After a full scenario, neither the database files nor the logs hold a label, a token in clear or an IP address.

use tessera_client::api::invitation_token;
use tessera_tests::{TestApp, captured_logs, contains_bytes};
use tessera_wire::Role;

#[tokio::test]
async fn the_database_and_logs_hold_no_labels_tokens_or_addresses() {
    let app = TestApp::spawn().await;
    let labels = [
        "Ada Lovelace (admin)",
        "Grace Hopper",
        "Hedy spare key",
        "Grace after loss",
    ];
    let mut secrets = vec![invitation_token(&app.first_invitation).expect("token")];

    let mut admin = app.enroll(&app.first_invitation.clone(), labels[0]).await;
    let invitation = admin.issue(Role::Member, 3600).await;
    secrets.push(invitation.created.token.clone());
    let mut member = app.enroll(&invitation.link, labels[1]).await;
    secrets.push(member.granted.session.clone().expect("a session"));
    let (_spare, _) = member.add_spare(Some(labels[2])).await.expect("spare");
    let recovery = admin
        .try_invite(Role::Member, Some(member.granted.member), 3600)
        .await
        .expect("recovery");
    secrets.push(recovery.created.token.clone());
    let recovered = app.enroll(&recovery.link, labels[3]).await;
    secrets.push(recovered.granted.session.clone().expect("a session"));
    let mut client = app.client();
    let login = client.login(&mut admin.key).await.expect("login");
    secrets.push(login.session.clone().expect("a session"));
    secrets.push(admin.granted.session.clone().expect("a session"));
    let pending = admin.issue(Role::Admin, 3600).await;
    secrets.push(pending.created.token.clone());
    admin.revoke(member.granted.member).await.expect("revoke");
    client.logout().await.expect("logout");

    let database = app.database_bytes();
    assert!(!database.is_empty());
    let logs = captured_logs();
    assert!(logs.contains("logged in"), "the logs were captured");
    for label in labels {
        assert!(
            !contains_bytes(&database, label.as_bytes()),
            "the database holds the label {label:?}"
        );
        assert!(!logs.contains(label), "the logs hold the label {label:?}");
    }
    for secret in &secrets {
        assert!(
            !contains_bytes(&database, secret.as_bytes()),
            "the database holds a token in clear"
        );
        assert!(
            !logs.contains(secret.as_str()),
            "the logs hold a token in clear"
        );
    }
    for address in ["127.0.0.1", "::1"] {
        assert!(
            !contains_bytes(&database, address.as_bytes()),
            "the database holds {address}"
        );
    }
    assert!(
        !logs.contains("127.0.0.1"),
        "the logs hold a client address"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_data_directory_the_server_makes_is_readable_by_its_user_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::spawn_with(|config| config.data_dir = config.data_dir.join("fresh")).await;
    let dir = app.data_dir().join("fresh");
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .expect("it exists")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&dir), 0o700, "the data directory");
    for file in ["tessera.db", "tessera.db-wal", "tessera.db-shm"] {
        let path = dir.join(file);
        if path.exists() {
            assert_eq!(mode(&path) & 0o077, 0, "{file} is readable by others");
        }
    }
    assert!(dir.join("tessera.db").exists());
}
