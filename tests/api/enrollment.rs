//! Enrollment with an invitation: the happy path, and every way a registration can be wrong —
//! each refused with a clear error, changing nothing, the invitation still usable afterwards.

use reqwest::StatusCode;
use tessera_client::api::invitation_token;
use tessera_client::authenticator::{SoftKey, Tamper};
use tessera_tests::TestApp;
use tessera_wire::Role;

use crate::support::{assert_refused, tampered_responses};

#[tokio::test]
async fn the_first_admin_enrolls_with_the_bootstrap_link() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    assert_eq!(admin.granted.role, Role::Admin);
    let me = admin.client.me().await.expect("the session works");
    assert_eq!(me.member, admin.granted.member);
    assert_eq!(me.role, Role::Admin);
    assert_eq!(
        admin.key.user_handle(),
        admin.granted.member.as_bytes(),
        "the key's user handle is the member id"
    );
    let keys = admin.client.passkeys().await.expect("keys");
    assert_eq!(keys.len(), 1);
}

#[tokio::test]
async fn an_invited_member_enrolls_with_the_role_of_the_invitation() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let member = app.invite(&mut admin, Role::Member, "Grace").await;
    let second_admin = app.invite(&mut admin, Role::Admin, "Hedy").await;
    assert_eq!(member.granted.role, Role::Member);
    assert_eq!(second_admin.granted.role, Role::Admin);
    assert_eq!(member.granted.circle, admin.granted.circle);
    let directory = admin.client.members().await.expect("directory");
    assert_eq!(directory.len(), 3);
}

#[tokio::test]
async fn registration_asks_for_a_discoverable_roaming_key_with_user_verification() {
    let app = TestApp::spawn().await;
    let token = invitation_token(&app.first_invitation).expect("token");
    let options = app
        .client()
        .enroll_start(&token, Some("Ada"))
        .await
        .expect("start");
    let json = serde_json::to_value(&options).expect("json");
    let selection = &json["publicKey"]["authenticatorSelection"];
    assert_eq!(selection["residentKey"], "required");
    assert_eq!(selection["requireResidentKey"], true);
    assert_eq!(selection["userVerification"], "required");
    assert_eq!(selection["authenticatorAttachment"], "cross-platform");
    assert_eq!(
        json["publicKey"]["user"]["name"], "Ada",
        "the label reaches the key"
    );
    assert_eq!(json["publicKey"]["rp"]["id"], "localhost");
    assert!(json["ceremony"].as_str().is_some_and(|c| c.len() == 43));
}

/// Starts an enrollment and finishes it with a tampered registration; returns the refusal.
async fn enroll_tampered(app: &TestApp, tamper: Tamper) -> (StatusCode, String) {
    let mut client = app.client();
    let token = invitation_token(&app.first_invitation).expect("token");
    let options = client.enroll_start(&token, None).await.expect("start");
    let (_key, credential) =
        SoftKey::register_with(&options.options, app.origin.as_str(), &tamper).expect("register");
    match client.enroll_finish(&options.ceremony, credential).await {
        Err(error) => (
            error.status().expect("an HTTP refusal"),
            error.code().expect("an error code").as_str().to_owned(),
        ),
        Ok(granted) => panic!("a tampered registration was accepted: {granted:?}"),
    }
}

#[tokio::test]
async fn tampered_registrations_are_refused_and_the_invitation_survives() {
    let app = TestApp::spawn().await;
    let cases = tampered_responses("webauthn.get");
    for (case, tamper) in cases {
        let (status, code) = enroll_tampered(&app, tamper).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "webauthn_rejected"),
            "{case}"
        );
        assert!(
            app.store
                .members_of(circle_of(&app).await)
                .await
                .expect("members")
                .is_empty(),
            "{case}: no member was created"
        );
    }
    // The invitation still admits its admin.
    let admin = app.admin().await;
    assert_eq!(admin.granted.role, Role::Admin);
}

/// The first circle's id, read through the invitation the test app holds.
async fn circle_of(app: &TestApp) -> uuid::Uuid {
    let token = invitation_token(&app.first_invitation).expect("token");
    let hash = tessera_server::secret::digest(&token);
    app.store
        .usable_invitation(&hash, app.clock.now())
        .await
        .expect("store")
        .expect("the invitation is still usable")
        .circle
}

#[tokio::test]
async fn a_credential_already_registered_is_refused() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let invitation = admin.issue(Role::Member, 3600).await;
    let mut client = app.client();
    let options = client
        .enroll_start(&invitation.created.token, None)
        .await
        .expect("start");
    let tamper = Tamper {
        credential_id: Some(admin.key.credential_id().to_vec()),
        ..Tamper::default()
    };
    let (_key, credential) =
        SoftKey::register_with(&options.options, app.origin.as_str(), &tamper).expect("register");
    assert_refused(
        client.enroll_finish(&options.ceremony, credential).await,
        StatusCode::CONFLICT,
        "credential_exists",
    );
    assert_eq!(admin.client.members().await.expect("directory").len(), 1);
    let pending = admin.client.invitations().await.expect("pending");
    assert_eq!(pending.len(), 1, "the invitation was not consumed");
    app.enroll(&invitation.link, "Grace").await;
}

#[tokio::test]
async fn a_ceremony_cannot_be_finished_twice() {
    let app = TestApp::spawn().await;
    let token = invitation_token(&app.first_invitation).expect("token");
    let mut client = app.client();
    let options = client.enroll_start(&token, None).await.expect("start");
    let (_key, credential) =
        SoftKey::register(&options.options, app.origin.as_str()).expect("register");
    let granted = client
        .enroll_finish(&options.ceremony, credential.clone())
        .await
        .expect("the first finish succeeds");
    assert_refused(
        client.enroll_finish(&options.ceremony, credential).await,
        StatusCode::BAD_REQUEST,
        "ceremony_unknown",
    );
    let me = client.me().await.expect("still one member");
    assert_eq!(me.member, granted.member);
}

#[tokio::test]
async fn a_refused_finish_uses_up_the_ceremony_but_not_the_invitation() {
    let app = TestApp::spawn().await;
    let token = invitation_token(&app.first_invitation).expect("token");
    let mut client = app.client();
    let options = client.enroll_start(&token, None).await.expect("start");
    let bad = Tamper {
        clear_user_verified: true,
        ..Tamper::default()
    };
    let (_bad_key, bad_credential) =
        SoftKey::register_with(&options.options, app.origin.as_str(), &bad).expect("register");
    assert_refused(
        client
            .enroll_finish(&options.ceremony, bad_credential)
            .await,
        StatusCode::BAD_REQUEST,
        "webauthn_rejected",
    );
    // A replay of the same ceremony with a good credential is refused too.
    let (_key, credential) =
        SoftKey::register(&options.options, app.origin.as_str()).expect("register");
    assert_refused(
        client.enroll_finish(&options.ceremony, credential).await,
        StatusCode::BAD_REQUEST,
        "ceremony_unknown",
    );
    app.admin().await;
}

#[tokio::test]
async fn an_expired_ceremony_is_refused_and_the_invitation_survives() {
    let app = TestApp::spawn().await;
    let token = invitation_token(&app.first_invitation).expect("token");
    let mut client = app.client();
    let options = client.enroll_start(&token, None).await.expect("start");
    let (_key, credential) =
        SoftKey::register(&options.options, app.origin.as_str()).expect("register");
    app.clock.advance(301);
    assert_refused(
        client.enroll_finish(&options.ceremony, credential).await,
        StatusCode::BAD_REQUEST,
        "ceremony_unknown",
    );
    app.admin().await;
}

#[tokio::test]
async fn a_used_invitation_is_refused() {
    let app = TestApp::spawn().await;
    app.admin().await;
    let token = invitation_token(&app.first_invitation).expect("token");
    assert_refused(
        app.client().enroll_start(&token, None).await,
        StatusCode::GONE,
        "invitation_unusable",
    );
}

#[tokio::test]
async fn an_invitation_used_between_start_and_finish_admits_only_one() {
    let app = TestApp::spawn().await;
    let token = invitation_token(&app.first_invitation).expect("token");
    let mut first = app.client();
    let mut second = app.client();
    let first_options = first.enroll_start(&token, None).await.expect("start");
    let second_options = second.enroll_start(&token, None).await.expect("start");
    let (_k1, c1) = SoftKey::register(&first_options.options, app.origin.as_str()).expect("key");
    let (_k2, c2) = SoftKey::register(&second_options.options, app.origin.as_str()).expect("key");
    let granted = first
        .enroll_finish(&first_options.ceremony, c1)
        .await
        .expect("the first to finish wins");
    assert_refused(
        second.enroll_finish(&second_options.ceremony, c2).await,
        StatusCode::GONE,
        "invitation_unusable",
    );
    let directory = first.members().await.expect("directory");
    assert_eq!(directory.len(), 1);
    assert_eq!(directory[0].id, granted.member);
}

#[tokio::test]
async fn expired_revoked_and_forged_invitations_are_refused() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let client = app.client();

    let expiring = admin.issue(Role::Member, 60).await;
    let revoked = admin.issue(Role::Member, 3600).await;
    admin
        .client
        .revoke_invitation(revoked.created.id)
        .await
        .expect("revoke");
    app.clock.advance(61);

    for (case, token) in [
        ("expired", expiring.created.token.clone()),
        ("revoked", revoked.created.token.clone()),
        ("forged", tessera_server::secret::new_token()),
        ("malformed", "not-a-token".to_owned()),
        ("empty", String::new()),
    ] {
        let message = assert_refused(
            client.enroll_start(&token, None).await,
            StatusCode::GONE,
            "invitation_unusable",
        );
        assert!(message.contains("invitation"), "{case}: {message}");
    }
    assert_eq!(admin.client.members().await.expect("directory").len(), 1);
}

#[tokio::test]
async fn an_invitation_revoked_or_expired_during_the_ceremony_is_refused_at_finish() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let revoked = admin.issue(Role::Member, 3600).await;
    let expiring = admin.issue(Role::Member, 60).await;
    let mut client = app.client();
    let revoked_options = client
        .enroll_start(&revoked.created.token, None)
        .await
        .expect("start");
    let expiring_options = client
        .enroll_start(&expiring.created.token, None)
        .await
        .expect("start");
    admin
        .client
        .revoke_invitation(revoked.created.id)
        .await
        .expect("revoke");
    app.clock.advance(61);
    for options in [revoked_options, expiring_options] {
        let (_key, credential) =
            SoftKey::register(&options.options, app.origin.as_str()).expect("register");
        assert_refused(
            client.enroll_finish(&options.ceremony, credential).await,
            StatusCode::GONE,
            "invitation_unusable",
        );
    }
    assert_eq!(admin.client.members().await.expect("directory").len(), 1);
}

#[tokio::test]
async fn a_too_long_label_is_refused() {
    let app = TestApp::spawn().await;
    let token = invitation_token(&app.first_invitation).expect("token");
    assert_refused(
        app.client()
            .enroll_start(&token, Some(&"x".repeat(65)))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    assert_refused(
        app.client().enroll_start(&token, Some("bell\u{7}")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
}

#[tokio::test]
async fn a_login_ceremony_cannot_finish_an_enrollment() {
    let app = TestApp::spawn().await;
    let mut client = app.client();
    let login = client.login_start().await.expect("login start");
    let token = invitation_token(&app.first_invitation).expect("token");
    let enroll = client
        .enroll_start(&token, None)
        .await
        .expect("enroll start");
    let (_key, credential) =
        SoftKey::register(&enroll.options, app.origin.as_str()).expect("register");
    assert_refused(
        client.enroll_finish(&login.ceremony, credential).await,
        StatusCode::BAD_REQUEST,
        "ceremony_mismatch",
    );
}
