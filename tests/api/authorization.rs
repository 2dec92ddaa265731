//! Who may do what: sessions (bearer and cookie), expiry, revocation, roles, and circles that never see each other.

use reqwest::StatusCode;
use tessera_engine::decision::{Decision, SignedDecision};
use tessera_server::store::{SqliteStore, Store as _};
use tessera_tests::TestApp;
use tessera_wire::Role;

use crate::support::{assert_browser_session, assert_deletes_refused, assert_refused};

#[tokio::test]
async fn without_a_session_everything_but_login_is_refused() {
    let app = TestApp::spawn().await;
    let client = app.client();
    assert_refused(client.me().await, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_refused(
        client.members().await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_refused(
        client.invitations().await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_refused(
        client
            .create_signed_invitation(Role::Admin, 3600, None)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let mut forged = app.client();
    forged.set_session(Some(tessera_server::secret::new_token()));
    assert_refused(forged.me().await, StatusCode::UNAUTHORIZED, "unauthorized");
    forged.set_session(Some("garbage".into()));
    assert_refused(forged.me().await, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn the_browser_gets_its_session_as_an_http_only_strict_cookie_and_never_in_the_body() {
    let app = TestApp::spawn().await;
    let token = tessera_client::api::invitation_token(&app.first_invitation).expect("token");
    let client = app.client();
    let options = client.enroll_start(&token, None).await.expect("start");
    let (_key, credential) =
        tessera_client::authenticator::SoftKey::register(&options.options, app.origin.as_str())
            .expect("register");
    let origin = app.origin.as_str().trim_end_matches('/').to_owned();
    let response = reqwest::Client::new()
        .post(format!("{}api/v1/enroll/finish", app.origin))
        .header(reqwest::header::ORIGIN, &origin)
        .json(&tessera_wire::RegistrationFinishRequest {
            ceremony: options.ceremony,
            credential,
            proof: None,
        })
        .send()
        .await
        .expect("finish");
    assert_browser_session(&app, response).await;
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    app.clock.advance(12 * 3600 + 1);
    assert_refused(
        admin.client.me().await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
}

#[tokio::test]
async fn a_member_cannot_act_as_an_admin() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let mut member = app.invite(&mut admin, Role::Member, "Grace").await;
    let pending = admin.issue(Role::Member, 3600).await;
    let c = member.client.clone();
    assert_refused(
        member.try_invite(Role::Admin, None, 3600).await,
        StatusCode::FORBIDDEN,
        "admin_required",
    );
    assert_refused(
        c.invitations().await,
        StatusCode::FORBIDDEN,
        "admin_required",
    );
    assert_refused(
        c.revoke_invitation(pending.created.id).await,
        StatusCode::FORBIDDEN,
        "admin_required",
    );
    assert_refused(
        member.revoke(admin.granted.member).await,
        StatusCode::FORBIDDEN,
        "admin_required",
    );
    let own = member.granted.member;
    assert_refused(
        member.try_invite(Role::Member, Some(own), 3600).await,
        StatusCode::FORBIDDEN,
        "admin_required",
    );
    // Nothing changed.
    assert_eq!(admin.client.invitations().await.expect("pending").len(), 1);
    assert_eq!(admin.client.members().await.expect("directory").len(), 2);
    // Members may read the directory.
    assert_eq!(c.members().await.expect("directory").len(), 2);
}

#[tokio::test]
async fn revoking_a_member_ends_their_sessions_at_once() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let member = app.invite(&mut admin, Role::Member, "Grace").await;
    member
        .client
        .me()
        .await
        .expect("the member's session works");
    admin.revoke(member.granted.member).await.expect("revoke");
    assert_refused(
        member.client.me().await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // The directory keeps the revoked member, with their key and admission, and the revocation
    // the admin's key signed, as it was handed over: devices remove the member on that
    // signature.
    let directory = admin.client.members().await.expect("directory");
    assert_eq!(directory.len(), 2);
    let revoked = directory
        .iter()
        .find(|m| m.id == member.granted.member)
        .expect("the revoked member is listed");
    assert!(revoked.passkeys.len() == 1 && revoked.proofs.len() == 1);
    assert_eq!(
        directory.last().map(|m| m.id),
        Some(revoked.id),
        "listed last"
    );
    let revocation = SignedDecision::from_blob(
        revoked.revocation.as_ref().expect("revocation"),
        Decision::Revoke,
    )
    .expect("the revocation as signed");
    assert_eq!(revocation.statement.member, member.granted.member);
    assert_eq!(revocation.statement.issuer, admin.granted.member);
    assert!(
        directory
            .iter()
            .filter(|m| m.id != member.granted.member)
            .all(|m| m.revocation.is_none())
    );
    assert_refused(
        admin.revoke(member.granted.member).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn an_admin_cannot_revoke_themselves() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    assert_refused(
        admin.revoke(admin.granted.member).await,
        StatusCode::CONFLICT,
        "cannot_revoke_self",
    );
    admin.client.me().await.expect("still in");
}

#[tokio::test]
async fn circles_never_see_each_other() {
    let app = TestApp::spawn().await;
    let mut admin_a = app.admin().await;
    let member_a = app.invite(&mut admin_a, Role::Member, "Grace").await;
    let pending_a = admin_a.issue(Role::Member, 3600).await;

    let mut admin_b = app.admin_of_another_circle("Other Admin").await;
    assert_ne!(admin_b.granted.circle, admin_a.granted.circle);

    let b = admin_b.client.clone();
    let directory = b.members().await.expect("directory");
    assert_eq!(directory.len(), 1);
    assert_eq!(directory[0].id, admin_b.granted.member);
    assert!(b.invitations().await.expect("pending").is_empty());
    assert_refused(
        admin_b.revoke(member_a.granted.member).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_refused(
        b.revoke_invitation(pending_a.created.id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_refused(
        admin_b
            .try_invite(Role::Member, Some(member_a.granted.member), 3600)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Circle A is untouched.
    member_a
        .client
        .me()
        .await
        .expect("the member of A is still in");
    assert_eq!(
        admin_a.client.invitations().await.expect("pending").len(),
        1
    );
}

#[tokio::test]
async fn a_revocation_without_its_signed_statement_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let member = app.invite(&mut admin, Role::Member, "Grace").await;
    let url = format!("{}api/v1/members/{}", app.origin, member.granted.member);
    // No body, an empty statement, an oversized one, an unknown field.
    let bodies = [
        None,
        Some(serde_json::json!({ "statement": "" })),
        Some(serde_json::json!({ "statement": "B".repeat(11_000) })),
        Some(serde_json::json!({ "statement": "AAAA", "member": "x" })),
    ];
    let session = admin.client.session().expect("a session");
    assert_deletes_refused(&url, session, &bodies).await;
    // Nothing changed: the member is listed with their key, unrevoked, and their session works.
    let directory = admin.client.members().await.expect("directory");
    let listed = directory
        .iter()
        .find(|m| m.id == member.granted.member)
        .expect("listed");
    assert!(listed.revocation.is_none() && listed.passkeys.len() == 1);
    member.client.me().await.expect("the member is still in");
}

#[tokio::test]
async fn only_an_admin_promotes_with_a_signed_statement_and_the_directory_carries_it() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let mut grace = app.invite(&mut admin, Role::Member, "Grace").await;
    let mut hedy = app.invite(&mut admin, Role::Member, "Hedy").await;
    // A member cannot promote, not even themselves.
    assert_refused(
        grace.promote(hedy.granted.member).await,
        StatusCode::FORBIDDEN,
        "admin_required",
    );
    assert_refused(
        grace.promote(grace.granted.member).await,
        StatusCode::FORBIDDEN,
        "admin_required",
    );
    // An unknown member, an admin already, and statements empty or too large.
    assert_refused(
        admin.promote(uuid::Uuid::new_v4()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_refused(
        admin.promote(admin.granted.member).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    for blob in [vec![], vec![7u8; 8 * 1024 + 1]] {
        assert_refused(
            admin
                .client
                .promote_member(hedy.granted.member, blob.into())
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        );
    }
    let directory = admin.client.members().await.expect("directory");
    assert!(
        directory
            .iter()
            .filter(|m| m.id != admin.granted.member)
            .all(|m| m.role == Role::Member && m.proofs.len() == 1),
        "nothing changed: {directory:?}"
    );

    // The admin promotes Hedy: the directory lists her as an admin with the signed promotion
    // among her proofs, and she may now issue invitations.
    admin.promote(hedy.granted.member).await.expect("promote");
    let directory = admin.client.members().await.expect("directory");
    let listed = directory
        .iter()
        .find(|m| m.id == hedy.granted.member)
        .expect("listed");
    assert_eq!(listed.role, Role::Admin);
    let promotion = listed
        .proofs
        .iter()
        .find_map(|p| SignedDecision::from_blob(p, Decision::Promote).ok())
        .expect("the promotion as signed");
    assert_eq!(promotion.statement.issuer, admin.granted.member);
    hedy.issue(Role::Member, 3600).await;
    assert_refused(
        admin.promote(hedy.granted.member).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
}

#[tokio::test]
async fn two_admins_revoking_each_other_at_once_leave_one_admin() {
    let app = TestApp::spawn().await;
    let mut founder = app.admin().await;
    let mut bea = app.invite(&mut founder, Role::Admin, "Bea").await;
    let (founder_id, bea_id) = (founder.granted.member, bea.granted.member);
    let (a, b) = tokio::join!(founder.revoke(bea_id), bea.revoke(founder_id));
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one revocation is written: {a:?} {b:?}"
    );
    let survivor = if a.is_ok() { &founder } else { &bea };
    let directory = survivor.client.members().await.expect("the survivor is in");
    let admins: Vec<_> = directory
        .iter()
        .filter(|m| m.role == Role::Admin && m.revocation.is_none())
        .collect();
    assert_eq!(admins.len(), 1, "{directory:?}");
}

#[tokio::test]
async fn an_admin_revoked_meanwhile_revokes_and_promotes_no_one() {
    let app = TestApp::spawn().await;
    let mut founder = app.admin().await;
    let bea = app.invite(&mut founder, Role::Admin, "Bea").await;
    let grace = app.invite(&mut founder, Role::Member, "Grace").await;
    founder
        .revoke(bea.granted.member)
        .await
        .expect("revoke Bea");
    // Bea's decisions arriving after her admin check passed but written after her revocation:
    // the write itself checks, as a request in flight would find.
    let store = SqliteStore::open(app.data_dir())
        .await
        .expect("the store opens");
    let by_bea = (founder.granted.circle, bea.granted.member);
    assert!(
        !store
            .revoke_member(by_bea, founder.granted.member, 1, b"{}")
            .await
            .expect("the store answers")
    );
    assert!(
        !store
            .promote_member(by_bea, grace.granted.member, 1, b"{}")
            .await
            .expect("the store answers")
    );
    founder.client.me().await.expect("the founder is still in");
    let directory = founder.client.members().await.expect("directory");
    let listed = |id| directory.iter().find(|m| m.id == id).expect("listed");
    assert!(listed(founder.granted.member).revocation.is_none());
    assert_eq!(listed(grace.granted.member).role, Role::Member);
}
