//! Login with a discoverable credential, and every way an assertion can be wrong.

use reqwest::StatusCode;
use tessera_client::authenticator::Tamper;
use tessera_server::store::{SessionRecord, SqliteStore, Store as _, StoreError};
use tessera_tests::TestApp;
use tessera_wire::Role;

use crate::support::{assert_refused, tampered_responses};

#[tokio::test]
async fn a_member_logs_in_with_their_key_alone() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let mut client = app.client();
    let granted = client.login(&mut admin.key).await.expect("login");
    assert_eq!(granted.member, admin.granted.member);
    assert_eq!(granted.role, Role::Admin);
    assert_ne!(granted.session, admin.granted.session, "a fresh session");
    assert_eq!(client.me().await.expect("me").member, admin.granted.member);
    let keys = client.passkeys().await.expect("keys");
    assert!(
        keys[0].last_used_at.is_some(),
        "the login is recorded on the key"
    );
}

#[tokio::test]
async fn login_options_name_no_credential() {
    let app = TestApp::spawn().await;
    let options = app.client().login_start().await.expect("start");
    let json = serde_json::to_value(&options).expect("json");
    assert_eq!(json["publicKey"]["userVerification"], "required");
    let allowed = json["publicKey"]["allowCredentials"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(allowed, 0, "discoverable: the key says who logs in");
}

#[tokio::test]
async fn tampered_assertions_are_refused_and_grant_nothing() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let mut cases = tampered_responses("webauthn.create");
    cases.push((
        "bad signature",
        Tamper {
            corrupt_signature: true,
            ..Tamper::default()
        },
    ));
    for (case, tamper) in cases {
        let mut client = app.client();
        let result = client.login_with(&mut admin.key, &tamper).await;
        let message = assert_refused(result, StatusCode::BAD_REQUEST, "webauthn_rejected");
        assert!(client.session().is_none(), "{case}: no session ({message})");
    }
    // The key still logs in.
    app.client()
        .login(&mut admin.key)
        .await
        .expect("a correct login");
}

#[tokio::test]
async fn a_counter_that_goes_backwards_is_refused() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    app.client().login(&mut admin.key).await.expect("login 1");
    app.client().login(&mut admin.key).await.expect("login 2");
    let cloned = Tamper {
        counter: Some(1),
        ..Tamper::default()
    };
    assert_refused(
        app.client().login_with(&mut admin.key, &cloned).await,
        StatusCode::UNAUTHORIZED,
        "counter_regression",
    );
}

#[tokio::test]
async fn an_unknown_credential_is_refused() {
    let app = TestApp::spawn().await;
    let other = TestApp::spawn().await;
    let mut stranger = other.admin().await;
    // A key of another server, presenting itself here (same RP id: both are localhost).
    assert_refused(
        app.client().login(&mut stranger.key).await,
        StatusCode::UNAUTHORIZED,
        "unknown_credential",
    );
}

#[tokio::test]
async fn a_user_handle_that_does_not_match_the_key_is_refused() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let member = app.invite(&mut admin, Role::Member, "Grace").await;
    let impersonation = Tamper {
        user_handle: Some(member.granted.member.as_bytes().to_vec()),
        ..Tamper::default()
    };
    assert_refused(
        app.client()
            .login_with(&mut admin.key, &impersonation)
            .await,
        StatusCode::UNAUTHORIZED,
        "user_handle_mismatch",
    );
}

#[tokio::test]
async fn a_revoked_member_cannot_log_in() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let mut member = app.invite(&mut admin, Role::Member, "Grace").await;
    admin.revoke(member.granted.member).await.expect("revoke");
    assert_refused(
        app.client().login(&mut member.key).await,
        StatusCode::FORBIDDEN,
        "member_revoked",
    );
}

#[tokio::test]
async fn a_login_ceremony_is_single_use_and_expires() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let mut client = app.client();
    let options = client.login_start().await.expect("start");
    let assertion = admin
        .key
        .sign_in(&options.options, app.origin.as_str())
        .expect("sign");
    client
        .login_finish(&options.ceremony, assertion.clone())
        .await
        .expect("first finish");
    assert_refused(
        client.login_finish(&options.ceremony, assertion).await,
        StatusCode::BAD_REQUEST,
        "ceremony_unknown",
    );

    let options = client.login_start().await.expect("start");
    let assertion = admin
        .key
        .sign_in(&options.options, app.origin.as_str())
        .expect("sign");
    app.clock.advance(301);
    assert_refused(
        client.login_finish(&options.ceremony, assertion).await,
        StatusCode::BAD_REQUEST,
        "ceremony_unknown",
    );
    assert_refused(
        client.login_finish("forged-ceremony", serde_json::from_value(serde_json::json!({
            "id": "AA", "rawId": "AA", "type": "public-key",
            "response": {"authenticatorData": "AA", "clientDataJSON": "AA", "signature": "AA"},
            "extensions": {}
        })).expect("a credential shape")).await,
        StatusCode::BAD_REQUEST,
        "ceremony_unknown",
    );
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let session = admin.client.session().expect("session").to_owned();
    admin.client.logout().await.expect("logout");
    let mut replay = app.client();
    replay.set_session(Some(session));
    assert_refused(replay.me().await, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn a_login_checked_against_a_counter_another_login_moved_on_does_not_count() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let credential_id = admin.key.credential_id().to_vec();
    let store = SqliteStore::open(app.data_dir())
        .await
        .expect("the store opens");
    let (checked, _) = store
        .login_key(&credential_id)
        .await
        .expect("the store answers")
        .expect("the key");
    // Another login with the key comes in between this one's check and its write.
    app.client()
        .login(&mut admin.key)
        .await
        .expect("the other login");
    let session = SessionRecord {
        token_hash: [7; 32],
        member: admin.granted.member,
        expires_at: i64::MAX,
        credential_id: credential_id.clone(),
    };
    let written = store
        .record_login(
            &credential_id,
            (&checked.passkey_json, &checked.passkey_json),
            &session,
            1,
        )
        .await;
    assert!(
        matches!(written, Err(StoreError::KeyMovedOn)),
        "{written:?}"
    );
    assert!(
        store
            .session_member(&[7; 32], 2)
            .await
            .expect("the store answers")
            .is_none(),
        "no session was opened"
    );
}

#[tokio::test]
async fn concurrent_logins_never_leave_a_lower_counter_behind() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let counter = |n| Tamper {
        counter: Some(n),
        ..Tamper::default()
    };
    let (mut higher_key, mut lower_key) = (admin.key.clone(), admin.key.clone());
    let (mut a, mut b) = (app.client(), app.client());
    let (ten, nine) = (counter(10), counter(9));
    let (higher, lower) = tokio::join!(
        a.login_with(&mut higher_key, &ten),
        b.login_with(&mut lower_key, &nine)
    );
    assert!(higher.is_ok() || lower.is_ok(), "{higher:?} {lower:?}");
    // Whatever the order, the stored counter is 10 if the higher one counted: 10 again is a
    // regression.
    if higher.is_ok() {
        assert_refused(
            app.client().login_with(&mut admin.key, &counter(10)).await,
            StatusCode::UNAUTHORIZED,
            "counter_regression",
        );
    }
    app.client()
        .login_with(&mut admin.key, &counter(11))
        .await
        .expect("a higher counter logs in");
}
