//! Sessions renewed by a device key: a device certified by its member's key gets a new session
//! without a touch, for as long as that key is the member's and the member is unrevoked; every
//! forged, replayed or misdirected renewal is refused and opens no session.

use reqwest::StatusCode;
use tessera_client::api::{ApiClient, ApiClientResult};
use tessera_engine::Engine;
use tessera_engine::renewal::SessionRenewal;
use tessera_softkey::SoftKey;
use tessera_tests::native::certified_engine;
use tessera_tests::{TestApp, TestMember};
use tessera_wire::{Base64Url, Role};

use crate::support::{assert_browser_session, assert_refused};

/// A device of `member` certified by `key` (one of theirs), as `tessera join` or the page make it.
fn certified_by(app: &TestApp, member: &TestMember, key: &mut SoftKey) -> Engine {
    certified_engine(app, (member.granted.member, member.trust()), key)
}

/// A device of `member` certified by their first key.
fn device_of(app: &TestApp, member: &mut TestMember) -> Engine {
    certified_engine(
        app,
        (member.granted.member, member.trust()),
        &mut member.key,
    )
}

/// Renews with `device`'s key in a fresh ceremony: the client holding the new session, and the
/// server's answer.
async fn renewed(
    app: &TestApp,
    device: &Engine,
) -> (ApiClient, ApiClientResult<tessera_wire::SessionGranted>) {
    let mut client = app.client();
    let ceremony = client.renewal_start().await.expect("a ceremony");
    let renewal = device.session_renewal(&ceremony).expect("signed");
    let result = client.renew_session(&renewal).await;
    (client, result)
}

/// Renews with `device`'s key: the client, and the role granted or the status refused.
async fn renew(app: &TestApp, device: &Engine) -> (ApiClient, Result<Role, StatusCode>) {
    let (client, result) = renewed(app, device).await;
    let outcome = result
        .as_ref()
        .map(|g| g.role)
        .map_err(|e| e.status().unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    (client, outcome)
}

async fn sessions(app: &TestApp) -> i64 {
    let mut db = app.database().await;
    sqlx::query_scalar("SELECT COUNT(*) FROM sessions")
        .fetch_one(&mut db)
        .await
        .expect("count")
}

#[tokio::test]
async fn an_expired_session_is_renewed_by_the_device_key_without_a_touch() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let device = device_of(&app, &mut admin);
    app.clock.advance(12 * 3600 + 1);
    assert_refused(
        admin.client.me().await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    let signatures = admin.key.counter();
    let mut client = app.client();
    let ceremony = client.renewal_start().await.expect("a ceremony");
    let renewal = device.session_renewal(&ceremony).expect("signed");
    let granted = client.renew_session(&renewal).await.expect("renewed");
    assert_eq!(granted.member, admin.granted.member);
    assert_eq!(granted.role, Role::Admin);
    assert_eq!(client.me().await.expect("me").member, admin.granted.member);
    assert_eq!(
        admin.key.counter(),
        signatures,
        "the hardware key was not asked"
    );
    // A day later, again.
    app.clock.advance(24 * 3600);
    assert_refused(client.me().await, StatusCode::UNAUTHORIZED, "unauthorized");
    let (again, outcome) = renew(&app, &device).await;
    assert_eq!(outcome, Ok(Role::Admin));
    again.me().await.expect("the second renewal holds");
}

#[tokio::test]
async fn revoking_the_key_that_certified_a_device_ends_its_renewed_session_and_its_renewals() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let (mut spare, _) = admin.add_spare(Some("spare")).await.expect("a spare");
    let certified_by_first = device_of(&app, &mut admin);
    let certified_by_spare = certified_by(&app, &admin, &mut spare);
    let (first_session, outcome) = renew(&app, &certified_by_first).await;
    assert_eq!(outcome, Ok(Role::Admin));

    let first_id = Base64Url::encode(admin.key.credential_id());
    let now = tessera_engine::unix_ms(std::time::SystemTime::now()) / 1000;
    let client = app.client();
    let mut spare_client = client.clone();
    spare_client.login(&mut spare).await.expect("login");
    tessera_client::membership::revoke_key(
        &spare_client,
        tessera_client::membership::Signer {
            circle: admin.granted.circle,
            member: admin.granted.member,
            root: admin.root,
            key: &mut spare,
        },
        &first_id,
        now,
    )
    .await
    .expect("the spare revokes the first key");

    assert_refused(
        first_session.me().await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let before = sessions(&app).await;
    assert_refused(
        renewed(&app, &certified_by_first).await.1,
        StatusCode::UNAUTHORIZED,
        "device_not_certified",
    );
    assert_eq!(sessions(&app).await, before, "no session opened");
    // The device the spare certified renews as before.
    let (_, outcome) = renew(&app, &certified_by_spare).await;
    assert_eq!(outcome, Ok(Role::Admin));
}

#[tokio::test]
async fn a_revoked_member_is_told_so_and_renews_nothing() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let mut member = app.invite(&mut admin, Role::Member, "Grace").await;
    let device = device_of(&app, &mut member);
    admin.revoke(member.granted.member).await.expect("revoked");
    let before = sessions(&app).await;
    assert_refused(
        renewed(&app, &device).await.1,
        StatusCode::FORBIDDEN,
        "member_revoked",
    );
    assert_eq!(sessions(&app).await, before);
}

#[tokio::test]
async fn forged_replayed_and_misdirected_renewals_are_refused_and_open_no_session() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let mut grace = app.invite(&mut admin, Role::Member, "Grace").await;
    let device = device_of(&app, &mut admin);
    let graces = device_of(&app, &mut grace);
    let other_app = TestApp::spawn().await;
    let mut stranger = other_app.admin().await;
    let strangers = device_of(&app, &mut stranger);
    let thief = device_of(&app, &mut admin);

    let client = app.client();
    let before = sessions(&app).await;
    let fresh = || async { client.renewal_start().await.expect("a ceremony") };

    let signed =
        |engine: &Engine, ceremony: &str| engine.session_renewal(ceremony).expect("signed");
    let mut cases: Vec<(&str, SessionRenewal, StatusCode, &str)> = Vec::new();
    // Another device's key signs over this device's certificate.
    let mut stolen = signed(&thief, &fresh().await);
    stolen.certificate = signed(&device, "unused").certificate;
    cases.push((
        "another key",
        stolen,
        StatusCode::UNAUTHORIZED,
        "device_not_certified",
    ));
    // The certificate claims another member than the key's.
    let mut claimed = signed(&graces, &fresh().await);
    claimed.certificate.member = admin.granted.member;
    cases.push((
        "another member",
        claimed,
        StatusCode::UNAUTHORIZED,
        "device_not_certified",
    ));
    // Signed for another ceremony than the one presented.
    let mut elsewhere = signed(&device, "another ceremony");
    elsewhere.ceremony = fresh().await;
    cases.push((
        "another ceremony",
        elsewhere,
        StatusCode::UNAUTHORIZED,
        "device_not_certified",
    ));
    // A garbled signature.
    let mut garbled = signed(&device, &fresh().await);
    garbled.signature = vec![0; 64].into();
    cases.push((
        "garbled",
        garbled,
        StatusCode::UNAUTHORIZED,
        "device_not_certified",
    ));
    // A key of another server's circle.
    cases.push((
        "unknown key",
        signed(&strangers, &fresh().await),
        StatusCode::UNAUTHORIZED,
        "device_not_certified",
    ));
    // A login ceremony is not a renewal's.
    let login = client.login_start().await.expect("a login ceremony");
    cases.push((
        "login ceremony",
        signed(&device, &login.ceremony),
        StatusCode::BAD_REQUEST,
        "ceremony_mismatch",
    ));
    cases.push((
        "unknown ceremony",
        signed(&device, &tessera_server::secret::new_token()),
        StatusCode::BAD_REQUEST,
        "ceremony_unknown",
    ));
    for (case, renewal, status, code) in cases {
        let mut client = app.client();
        let message = assert_refused(client.renew_session(&renewal).await, status, code);
        assert!(client.session().is_none(), "{case}: {message}");
        assert_eq!(sessions(&app).await, before, "{case}: no session opened");
    }

    // A renewal is single use, and its ceremony expires.
    let (_, first) = renew(&app, &device).await;
    assert_eq!(first, Ok(Role::Admin));
    let ceremony = fresh().await;
    let renewal = signed(&device, &ceremony);
    app.client()
        .renew_session(&renewal)
        .await
        .expect("the first use");
    let before = sessions(&app).await;
    assert_refused(
        app.client().renew_session(&renewal).await,
        StatusCode::BAD_REQUEST,
        "ceremony_unknown",
    );
    let late = signed(&device, &fresh().await);
    app.clock.advance(301);
    assert_refused(
        app.client().renew_session(&late).await,
        StatusCode::BAD_REQUEST,
        "ceremony_unknown",
    );
    assert_eq!(sessions(&app).await, before);
}

#[tokio::test]
async fn a_browsers_renewal_sets_the_cookie_and_never_names_the_token() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let device = device_of(&app, &mut admin);
    let ceremony = app.client().renewal_start().await.expect("a ceremony");
    let renewal = device.session_renewal(&ceremony).expect("signed");
    let origin = app.origin.origin().ascii_serialization();
    let response = reqwest::Client::new()
        .post(format!("{}api/v1/session/renew", app.origin))
        .header(reqwest::header::ORIGIN, &origin)
        .json(&renewal)
        .send()
        .await
        .expect("renew");
    assert_browser_session(&app, response).await;
}
