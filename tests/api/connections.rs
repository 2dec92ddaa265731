//! Silent, half-sent and held connections: closed once the read timeout passes, and never keeping
//! a stopping server alive.

use std::time::Duration;

use tessera_tests::TestApp;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Far longer than the read timeout these tests set: reaching it means the server held on.
const PATIENCE: Duration = Duration::from_secs(20);

async fn connect(app: &TestApp) -> TcpStream {
    let port = app.origin.port().expect("the test origin names its port");
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the server accepts")
}

/// Reads until the server closes the connection; what it sent meanwhile, or `None` if it kept
/// the connection open past [`PATIENCE`].
async fn until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&received).into_owned())
}

async fn spawn_with_read_timeout(secs: u64) -> TestApp {
    TestApp::spawn_with(|config| config.read_timeout_secs = secs).await
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_read_timeout() {
    let app = spawn_with_read_timeout(1).await;
    let mut silent = connect(&app).await;
    assert_eq!(
        until_closed(&mut silent).await.as_deref(),
        Some(""),
        "closed without an answer"
    );
    let health = reqwest::get(app.origin.join("/healthz").expect("url"))
        .await
        .expect("the server still answers");
    assert!(health.status().is_success());
}

#[tokio::test]
async fn a_half_sent_request_head_is_closed() {
    let app = spawn_with_read_timeout(1).await;
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("sent");
    let answer = until_closed(&mut slow)
        .await
        .expect("the server closes a head that never ends");
    assert!(
        !answer.contains("200 OK"),
        "the request was never served: {answer}"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_that_goes_quiet_is_closed() {
    let app = spawn_with_read_timeout(1).await;
    let mut quiet = connect(&app).await;
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("sent");
    let answer = until_closed(&mut quiet)
        .await
        .expect("the server closes the connection once it goes quiet");
    assert!(answer.starts_with("HTTP/1.1 200"), "served first: {answer}");
}

#[tokio::test]
async fn a_half_sent_body_is_refused_and_the_connection_closed() {
    let app = spawn_with_read_timeout(1).await;
    let mut slow = connect(&app).await;
    slow.write_all(
        b"POST /api/v1/login/finish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .expect("sent");
    let answer = until_closed(&mut slow)
        .await
        .expect("the server closes a body that never ends");
    let status: u16 = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {answer:?}"));
    assert!(
        (400..500).contains(&status),
        "refused as the client's fault: {answer}"
    );
}

#[tokio::test]
async fn a_stopping_server_does_not_wait_for_held_connections() {
    let mut app = TestApp::spawn().await;
    let mut half_sent = connect(&app).await;
    half_sent
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("sent");
    let mut body_pending = connect(&app).await;
    body_pending
        .write_all(
            b"POST /api/v1/login/finish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .expect("sent");
    let mut idle = connect(&app).await;
    // The server has read what was sent before it is told to stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.stop().await;
    for (what, stream) in [
        ("a half-sent head", &mut half_sent),
        ("a pending body", &mut body_pending),
        ("an idle connection", &mut idle),
    ] {
        assert!(
            until_closed(stream).await.is_some(),
            "{what} is closed when the server stops"
        );
    }
}
