//! Invitations as admins issue, list and revoke them.

use reqwest::StatusCode;
use tessera_tests::TestApp;
use tessera_wire::{InvitationKind, Role};

use crate::support::assert_refused;

#[tokio::test]
async fn an_issued_invitation_is_shown_once_and_listed_without_its_token() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let before = app.clock.now();
    let created = admin.issue(Role::Member, 3600).await;
    assert_eq!(created.token.len(), 43, "256 bits in base64url");
    assert_eq!(created.url, format!("{}join/{}", app.origin, created.token));
    assert!(created.qr_svg.starts_with("<?xml") && created.qr_svg.contains("<svg"));
    // The clock is the real one and may tick during the request.
    assert!((before + 3600..=app.clock.now() + 3600).contains(&created.expires_at));

    let raw = admin
        .client
        .send_raw(reqwest::Method::GET, "/invitations", None)
        .await
        .expect("list");
    let text = String::from_utf8(raw.1).expect("utf-8");
    assert!(
        !text.contains(&created.token),
        "the list never shows a token"
    );
    let pending = admin.client.invitations().await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, created.id);
    assert_eq!(pending[0].kind, InvitationKind::Newcomer);
    assert_eq!(pending[0].role, Role::Member);
    assert_eq!(pending[0].created_by, Some(admin.granted.member));
}

#[tokio::test]
async fn used_revoked_and_expired_invitations_leave_the_list() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let used = admin.issue(Role::Member, 3600).await;
    let revoked = admin.issue(Role::Member, 3600).await;
    admin.issue(Role::Member, 60).await;
    app.enroll(&used.url, "Grace").await;
    admin
        .client
        .revoke_invitation(revoked.id)
        .await
        .expect("revoke");
    app.clock.advance(61);
    assert!(
        admin
            .client
            .invitations()
            .await
            .expect("pending")
            .is_empty()
    );
    assert_refused(
        admin.client.revoke_invitation(revoked.id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_refused(
        admin.client.revoke_invitation(uuid::Uuid::new_v4()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn lifetimes_outside_a_minute_to_thirty_days_are_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    for ttl in [0, 59, 30 * 24 * 3600 + 1, u64::MAX] {
        assert_refused(
            admin.client.create_invitation(Role::Member, ttl).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        );
    }
    assert!(
        admin
            .client
            .invitations()
            .await
            .expect("pending")
            .is_empty()
    );
}
