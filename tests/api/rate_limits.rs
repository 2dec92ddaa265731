//! Rate limits on ceremonies (per client, and a share of the pending table per address range) and invitations (per admin): refused with 429, nothing created.

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
    let mut admin = app.admin().await;
    admin.issue(Role::Member, 3600).await;
    admin.issue(Role::Member, 3600).await;
    assert_refused(
        admin.try_invite(Role::Member, None, 3600).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    assert_eq!(admin.client.invitations().await.expect("pending").len(), 2);
}

/// A client whose requests leave from `address` (any of loopback's 127.0.0.0/8), as a client
/// at that address would send them.
fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<std::net::IpAddr>().expect("an address"))
        .build()
        .expect("a client")
}

async fn login_start(
    app: &TestApp,
    client: &reqwest::Client,
    forwarded: Option<&str>,
) -> StatusCode {
    let mut request = client.post(app.origin.join("/api/v1/login/start").expect("url"));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.expect("the server answers").status()
}

#[tokio::test]
async fn rotating_addresses_cannot_fill_the_ceremony_table_and_lock_members_out() {
    // Room for 200 waiting ceremonies: 2 per address range.
    let app = TestApp::spawn_with(|config| config.max_pending_ceremonies = 200).await;
    let mut admin = app.admin().await;

    // Every address of one /24 once: the range's share, then refusals.
    let mut answers = Vec::new();
    for host in 1..=20 {
        answers.push(login_start(&app, &client_from(&format!("127.0.9.{host}")), None).await);
    }
    assert_eq!(answers[..2], [StatusCode::OK; 2]);
    assert!(
        answers[2..]
            .iter()
            .all(|status| *status == StatusCode::TOO_MANY_REQUESTS),
        "rotating inside a range gains nothing: {answers:?}"
    );

    // Half again the table, from 150 ranges each taking its whole share: once the table is full,
    // a range's first ceremony still gets a place (the oldest of a range holding the most makes
    // room); a second one waits for the table to have room.
    let mut waited = 0;
    for net in 0..150 {
        let first = client_from(&format!("127.1.{net}.1"));
        assert_eq!(
            login_start(&app, &first, None).await,
            StatusCode::OK,
            "range {net}"
        );
        let second = client_from(&format!("127.1.{net}.2"));
        match login_start(&app, &second, None).await {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => waited += 1,
            other => panic!("range {net}: {other}"),
        }
    }
    assert!(waited > 0, "the table filled");

    // A member from yet another range still logs in, start to finish.
    app.client()
        .login(&mut admin.key)
        .await
        .expect("the member logs in while the table is under attack");
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let limit = 3;
    let behind_proxy = TestApp::spawn_with(|config| {
        config.ceremony_rate_per_minute = limit;
        config.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    })
    .await;
    let proxy = client_from("127.0.0.1");
    for _ in 0..limit {
        assert_eq!(
            login_start(&behind_proxy, &proxy, Some("198.51.100.1")).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        login_start(&behind_proxy, &proxy, Some("198.51.100.1")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "the forwarded client has its own limit"
    );
    assert_eq!(
        login_start(&behind_proxy, &proxy, Some("6.6.6.6, 198.51.100.2")).await,
        StatusCode::OK,
        "another client behind the proxy is not held back by the first"
    );

    // Without the proxy trusted, a client cannot escape its limit by naming other addresses.
    let direct = TestApp::spawn_with(|config| config.ceremony_rate_per_minute = limit).await;
    let client = client_from("127.0.0.1");
    for n in 0..limit {
        let claimed = format!("198.51.100.{n}");
        assert_eq!(
            login_start(&direct, &client, Some(&claimed)).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        login_start(&direct, &client, Some("198.51.100.200")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
