//! Assertions shared by the API tests.

use reqwest::StatusCode;
use tessera_client::api::{ApiClientError, ApiClientResult};
use tessera_client::authenticator::Tamper;

/// Asserts that a call was refused with this status and error code, and returns the message.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: ApiClientResult<T>,
    status: StatusCode,
    code: &str,
) -> String {
    match result {
        Err(ApiClientError::Refused { status: got, body }) => {
            assert_eq!(
                (got, body.error.as_str()),
                (status, code),
                "refused, but not as expected: {}",
                body.message
            );
            assert!(!body.message.is_empty(), "a refusal explains itself");
            body.message
        }
        other => panic!("expected a refusal {status} {code}, got {other:?}"),
    }
}

/// Asserts that a browser's answer granting a session (enrollment, login, renewal) carries it as
/// an HttpOnly, SameSite=Strict cookie and never in the body, and that the cookie opens `GET /me`.
pub async fn assert_browser_session(app: &tessera_tests::TestApp, response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .expect("a session cookie")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        cookie.starts_with(&format!("{}=", tessera_wire::SESSION_COOKIE)),
        "{cookie}"
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            cookie.contains(attribute),
            "cookie lacks {attribute}: {cookie}"
        );
    }
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    assert!(body.get("member").is_some(), "{body}");
    assert!(
        body.get("session").is_none(),
        "a browser's scripts never see the token: {body}"
    );
    let pair = cookie.split(';').next().expect("name=value");
    let me = reqwest::Client::new()
        .get(format!("{}api/v1/me", app.origin))
        .header(reqwest::header::COOKIE, pair)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), StatusCode::OK);
}

/// Authenticator responses wrong in one way each, which verification must refuse. `other_type` is
/// the client-data type of the other ceremony (`webauthn.get` for a registration and vice versa).
pub fn tampered_responses(other_type: &str) -> Vec<(&'static str, Tamper)> {
    vec![
        (
            "wrong origin",
            Tamper {
                origin: Some("http://evil.example:8080".into()),
                ..Tamper::default()
            },
        ),
        (
            "wrong client-data type",
            Tamper {
                client_data_type: Some(other_type.into()),
                ..Tamper::default()
            },
        ),
        (
            "cross-origin (a frame on another site)",
            Tamper {
                cross_origin: true,
                ..Tamper::default()
            },
        ),
        (
            "wrong challenge",
            Tamper {
                challenge: Some(vec![7; 32]),
                ..Tamper::default()
            },
        ),
        (
            "wrong RP id hash",
            Tamper {
                rp_id: Some("evil.example".into()),
                ..Tamper::default()
            },
        ),
        (
            "no user verification",
            Tamper {
                clear_user_verified: true,
                ..Tamper::default()
            },
        ),
        (
            "no user presence",
            Tamper {
                clear_user_present: true,
                ..Tamper::default()
            },
        ),
    ]
}

/// Sends `DELETE url` with the session `session` once per body (`None`: no body) and checks
/// that each is refused as a client error that explains itself.
pub async fn assert_deletes_refused(
    url: &str,
    session: &str,
    bodies: &[Option<serde_json::Value>],
) {
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {session}");
    for body in bodies {
        let mut request = http
            .delete(url)
            .header(reqwest::header::AUTHORIZATION, &bearer);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        assert!(status.is_client_error(), "{status}");
        let error: serde_json::Value = response.json().await.expect("an error body");
        assert!(error["message"].is_string(), "{error}");
    }
}
