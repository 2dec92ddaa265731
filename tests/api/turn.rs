//! `GET /api/v1/turn`: only for members with a session, only when configured, and a server whose
//! ICE configuration is wrong does not start. (coturn accepting the credentials is tested in
//! tests/devices/turn.rs.)

use std::sync::Arc;

use reqwest::StatusCode;
use tessera_server::app::Application;
use tessera_server::clock::Clock;
use tessera_server::config::Config;
use tessera_tests::TestApp;

use crate::support::assert_refused;

const SECRET: &str = "0123456789abcdef-secret";

#[tokio::test]
async fn credentials_go_to_members_only_and_only_when_configured() {
    let plain = TestApp::spawn().await;
    let admin = plain.admin().await;
    assert_refused(
        admin.client.turn().await,
        StatusCode::NOT_FOUND,
        "turn_not_configured",
    );

    let app = TestApp::spawn_with(|config| {
        config.ice_urls = vec![
            "stun:stun.tessera.test:3478".into(),
            "turn:turn.tessera.test:3478?transport=udp".into(),
        ];
        config.turn_secret = Some(SECRET.parse().expect("secret"));
        config.turn_ttl_secs = 300;
    })
    .await;
    assert_refused(
        app.client().turn().await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let admin = app.admin().await;
    let before = app.clock.now();
    let credentials = admin.client.turn().await.expect("credentials");
    assert_eq!(credentials.urls.len(), 2);
    assert_eq!(credentials.ttl_secs, 300);
    let (expiry, tag) = credentials.username.split_once(':').expect("expiry:tag");
    // The clock is the real one and may tick during the request.
    let expiry = expiry.parse::<i64>().expect("expiry");
    assert!((before + 300..=app.clock.now() + 300).contains(&expiry));
    // The TURN server's logs learn no member id, no name.
    let me = admin.client.me().await.expect("me");
    assert!(!credentials.username.contains(&me.member.to_string()));
    assert!(!tag.is_empty());
    // Nothing of it is kept: the database does not hold the secret or the credentials.
    let database = app.database_bytes();
    for secret in [SECRET, credentials.credential.as_str(), tag] {
        assert!(
            !database
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "the database holds {secret}"
        );
    }
}

#[tokio::test]
async fn a_server_with_a_wrong_ice_configuration_does_not_start() {
    for (urls, secret, expected) in [
        (vec!["turn:turn.tessera.test:3478"], None, "--turn-secret"),
        (
            vec!["http://turn.tessera.test"],
            Some(SECRET),
            "must start with",
        ),
        (vec![], Some(SECRET), "--ice-url"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut config = Config::for_tests(
            dir.path().to_owned(),
            url::Url::parse("http://localhost:8080").expect("url"),
        );
        config.ice_urls = urls.into_iter().map(String::from).collect();
        config.turn_secret = secret.map(|s| s.parse().expect("secret"));
        let built = Application::build_on(config, Arc::new(Clock::default()), listener).await;
        let Err(error) = built else {
            panic!("a server started with {expected:?} missing");
        };
        assert!(error.to_string().contains(expected), "{error}");
    }
}
