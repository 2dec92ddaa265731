//! Oversized, malformed and mistyped bodies: refused with a clear error, nothing changed, the server unharmed.

use reqwest::{Method, StatusCode};
use tessera_tests::TestApp;
use tessera_wire::ErrorBody;

async fn refusal(
    app: &TestApp,
    session: Option<String>,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, ErrorBody) {
    let mut client = app.client();
    client.set_session(session);
    let (status, bytes) = client
        .send_raw(Method::POST, path, Some((content_type, body)))
        .await
        .expect("the server answers");
    let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{path}: not an error body: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

#[tokio::test]
async fn bad_bodies_are_refused_in_the_api_error_format() {
    let app = TestApp::spawn().await;
    let json = "application/json";
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "/enroll/start",
            json,
            vec![b'{'; 100 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "/enroll/start",
            json,
            b"{\"token\":".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "/enroll/start",
            json,
            b"[1,2,3]".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "/enroll/start",
            json,
            b"{\"token\":42}".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "/enroll/start",
            json,
            vec![0xff, 0xfe, 0x00],
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "/enroll/start",
            "text/plain",
            b"{\"token\":\"x\"}".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "/enroll/finish",
            json,
            b"{\"ceremony\":\"x\",\"credential\":{}}".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "/login/finish",
            json,
            b"{\"ceremony\":\"x\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let (got, error) = refusal(&app, None, path, content_type, body).await;
        assert_eq!(
            (got, error.error.as_str()),
            (status, code),
            "{path}: {}",
            error.message
        );
    }
    let admin = app.admin().await;
    let session = admin.client.session().map(str::to_owned);
    let (status, error) = refusal(
        &app,
        session.clone(),
        "/invitations",
        json,
        br#"{"role":"owner","ttl_secs":3600}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status, error.error.as_str()),
        (StatusCode::BAD_REQUEST, "malformed_body")
    );
    let (status, error) = refusal(
        &app,
        session,
        "/invitations",
        json,
        br#"{"role":"member","ttl_secs":-1}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status, error.error.as_str()),
        (StatusCode::BAD_REQUEST, "malformed_body")
    );
    assert!(
        admin
            .client
            .invitations()
            .await
            .expect("pending")
            .is_empty()
    );
    // The server is unharmed.
    admin.client.me().await.expect("still serving");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_refused_without_a_crash() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let (status, _) = client
        .send_raw(Method::GET, "/nothing-here", None)
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = client
        .send_raw(Method::GET, "/enroll/start", None)
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let health = reqwest::get(format!("{}healthz", app.origin))
        .await
        .expect("health");
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn pages_carry_protective_headers() {
    let app = TestApp::spawn().await;
    for path in ["", "join/unknown", "account", "admin", "static/app.js"] {
        let response = reqwest::get(format!("{}{path}", app.origin))
            .await
            .expect("page");
        let headers = response.headers();
        assert_eq!(headers["referrer-policy"], "no-referrer", "/{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "/{path}");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .is_ok_and(|csp| csp.contains("default-src 'self'")),
            "/{path}"
        );
    }
    let join = reqwest::get(format!("{}join/unknown", app.origin))
        .await
        .expect("page");
    assert_eq!(
        join.status(),
        StatusCode::GONE,
        "an unknown invitation says so"
    );
    let join = reqwest::get(&app.first_invitation).await.expect("page");
    assert_eq!(join.status(), StatusCode::OK);
    assert!(join.text().await.expect("html").contains("id=\"enroll\""));
}
