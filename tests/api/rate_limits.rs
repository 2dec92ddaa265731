//! Rate limits on ceremonies (per client address) and invitations (per admin): refused with 429, nothing created.

use reqwest::StatusCode;
use tessera_tests::TestApp;
use tessera_wire::Role;

use crate::support::assert_refused;

#[tokio::test]
async fn ceremonies_past_the_limit_are_refused() {
    let app = TestApp::spawn_with(|config| config.ceremony_rate_per_minute = 5).await;
    let client = app.client();
    for _ in 0..5 {
        client.login_start().await.expect("within the limit");
    }
    assert_refused(
        client.login_start().await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    let token = tessera_client::api::invitation_token(&app.first_invitation).expect("token");
    assert_refused(
        client.enroll_start(&token, None).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
}

#[tokio::test]
async fn invitations_past_the_limit_are_refused_and_not_created() {
    let app = TestApp::spawn_with(|config| config.invitation_rate_per_minute = 2).await;
    let admin = app.admin().await;
    admin
        .client
        .create_invitation(Role::Member, 3600)
        .await
        .expect("1");
    admin
        .client
        .create_invitation(Role::Member, 3600)
        .await
        .expect("2");
    assert_refused(
        admin.client.create_invitation(Role::Member, 3600).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    assert_eq!(admin.client.invitations().await.expect("pending").len(), 2);
}
