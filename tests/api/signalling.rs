//! Signalling over the real WebSocket after a real WebAuthn login: presence, relays within a circle,
//! refusal across circles, the commit sequencer, revocation, and every abuse case.

use reqwest::StatusCode;
use serde_json::json;
use tessera_tests::{TestApp, TestMember, WsClient};
use tessera_wire::Role;
use tessera_wire::signal::{FrameErrorCode, Limits, ServerFrame};
use tokio_tungstenite::tungstenite::{self, Message};
use uuid::Uuid;

fn device_of(hello: &ServerFrame) -> Uuid {
    match hello {
        ServerFrame::Hello { device, .. } => *device,
        other => panic!("not a hello: {other:?}"),
    }
}

fn signal(to: Uuid, payload: &serde_json::Value) -> String {
    json!({"type": "signal", "to": to, "payload": payload}).to_string()
}

#[track_caller]
fn assert_error(frame: Option<ServerFrame>, expected: &str) {
    match frame {
        Some(ServerFrame::Error { code, message }) => {
            assert_eq!(code.as_str(), expected, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected an error {expected}, got {other:?}"),
    }
}

async fn circle_of_three(app: &TestApp) -> (TestMember, TestMember, TestMember) {
    let mut admin = app.admin().await;
    let grace = app.invite(&mut admin, Role::Member, "Grace").await;
    let hedy = app.invite(&mut admin, Role::Member, "Hedy").await;
    (admin, grace, hedy)
}

/// The admin's and Grace's devices online in a circle of three, the admin's having seen Grace's
/// arrive.
struct Online {
    admin: TestMember,
    a: WsClient,
    a_device: Uuid,
    g: WsClient,
    g_device: Uuid,
}

async fn admin_and_grace_online(app: &TestApp) -> Online {
    let (admin, grace, _) = circle_of_three(app).await;
    let (a, a_hello) = WsClient::connect(app, &admin).await;
    let (g, g_hello) = WsClient::connect(app, &grace).await;
    let mut online = Online {
        admin,
        a,
        a_device: device_of(&a_hello),
        g,
        g_device: device_of(&g_hello),
    };
    let _presence = online.a.next().await;
    online
}

#[tokio::test]
async fn the_socket_needs_a_valid_session() {
    let app = TestApp::spawn().await;
    for session in [
        None,
        Some("garbage"),
        Some(&*tessera_server::secret::new_token()),
    ] {
        match WsClient::connect_with(&app, session, None, &[]).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            }
            Err(other) => panic!("unexpected failure {other}"),
            Ok(_) => panic!("a socket opened without a valid session"),
        }
    }
}

#[tokio::test]
async fn a_request_that_is_not_a_websocket_upgrade_is_refused_and_joins_nothing() {
    let app = TestApp::spawn().await;
    let (admin, grace, _) = circle_of_three(&app).await;
    let session = grace.client.session().expect("logged in").to_owned();
    let url = app.origin.join("api/v1/ws").expect("url");
    let http = reqwest::Client::new();
    let upgrade = |headers: &[(&str, &str)]| {
        let mut request = http.get(url.clone()).bearer_auth(&session);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    // RFC 6455 4.2.1: all four headers, with these values.
    let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    let version = ("sec-websocket-version", "13");
    for headers in [
        vec![],
        vec![("connection", "upgrade"), ("upgrade", "websocket"), version],
        vec![
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "8"),
            key,
        ],
        vec![
            ("connection", "keep-alive"),
            ("upgrade", "websocket"),
            version,
            key,
        ],
        vec![("connection", "upgrade"), ("upgrade", "h2c"), version, key],
    ] {
        let response = upgrade(&headers).await.expect("answers");
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{headers:?}"
        );
        let body = response.text().await.expect("body");
        assert!(
            body.contains("this endpoint needs a WebSocket upgrade"),
            "{headers:?}: {body}"
        );
    }
    // None of them joined: the admin's device finds no other device online.
    let (_a, hello) = WsClient::connect(&app, &admin).await;
    assert!(
        matches!(&hello, ServerFrame::Hello { peers, .. } if peers.is_empty()),
        "{hello:?}"
    );

    // The header lists are read as lists, in any case; the answer is RFC 6455's own example.
    let response = upgrade(&[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        version,
        key,
    ])
    .await
    .expect("answers");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        response.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[tokio::test]
async fn a_page_of_another_origin_cannot_open_the_socket() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let result = WsClient::connect_with(
        &app,
        admin.client.session(),
        None,
        &[("origin", "http://evil.example")],
    )
    .await;
    assert!(
        matches!(result, Err(tungstenite::Error::Http(r)) if r.status() == StatusCode::FORBIDDEN)
    );
    let origin = app.origin.as_str().trim_end_matches('/').to_owned();
    WsClient::connect_with(&app, admin.client.session(), None, &[("origin", &origin)])
        .await
        .expect("the server's own origin may");
}

#[tokio::test]
async fn hello_and_presence_follow_devices_coming_and_going() {
    let app = TestApp::spawn().await;
    let (admin, grace, _) = circle_of_three(&app).await;
    let (mut a, hello) = WsClient::connect(&app, &admin).await;
    let ServerFrame::Hello {
        member,
        peers,
        slot: epoch,
        ..
    } = &hello
    else {
        unreachable!()
    };
    assert_eq!(*member, admin.granted.member);
    assert!(peers.is_empty());
    assert_eq!(*epoch, 0);
    let a_device = device_of(&hello);

    let (g, g_hello) = WsClient::connect(&app, &grace).await;
    let ServerFrame::Hello { peers, .. } = &g_hello else {
        unreachable!()
    };
    assert_eq!(peers.len(), 1);
    assert_eq!(
        (peers[0].member, peers[0].device),
        (admin.granted.member, a_device)
    );
    let g_device = device_of(&g_hello);
    match a.next().await {
        Some(ServerFrame::Presence {
            member,
            device,
            online,
        }) => {
            assert_eq!(
                (member, device, online),
                (grace.granted.member, g_device, true)
            );
        }
        other => panic!("expected presence, got {other:?}"),
    }
    drop(g);
    match a.next().await {
        Some(ServerFrame::Presence { device, online, .. }) => {
            assert_eq!((device, online), (g_device, false))
        }
        other => panic!("expected presence, got {other:?}"),
    }
}

/// The admin's device sends `payload` to another member's device; asserts that it arrives as it
/// was sent, from the admin's device and member.
async fn assert_relayed_unchanged(app: &TestApp, payload: &serde_json::Value) {
    let Online {
        admin,
        mut a,
        a_device,
        mut g,
        g_device,
    } = admin_and_grace_online(app).await;
    a.send_text(&signal(g_device, payload)).await;
    match g.next().await {
        Some(ServerFrame::Signal {
            from,
            member,
            payload: got,
        }) => {
            assert_eq!(from, a_device);
            assert_eq!(member, admin.granted.member);
            let got: serde_json::Value = serde_json::from_str(got.get()).expect("json");
            assert_eq!(&got, payload);
        }
        other => panic!("expected a signal, got {other:?}"),
    }
}

#[tokio::test]
async fn signals_are_relayed_unchanged_within_the_circle() {
    let app = TestApp::spawn().await;
    let payload = json!({"sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0", "nested": [1, {"x": null}]});
    assert_relayed_unchanged(&app, &payload).await;
    let logs = tessera_tests::captured_logs();
    assert!(
        !logs.contains("o=- 1 2 IN IP4"),
        "a payload reached the logs"
    );
}

#[tokio::test]
async fn a_signal_longer_than_a_fragment_arrives_whole() {
    let app = TestApp::spawn().await;
    // Characters of two and three bytes, so that fragments end inside them.
    let text = "é€-".repeat(20 * tessera_server::signal::io::FRAGMENT_BYTES / 6);
    assert_relayed_unchanged(&app, &json!({"sdp": text})).await;
}

#[tokio::test]
async fn a_burst_of_signals_arrives_complete_and_in_order() {
    let app = TestApp::spawn().await;
    let Online {
        mut a,
        mut g,
        g_device,
        ..
    } = admin_and_grace_online(&app).await;
    // More frames than one read of the server's WebSocket buffer and than one gathered write,
    // within the rate limit's burst; every seventh longer than a fragment.
    let count = 90;
    let burst: Vec<String> = (0..count)
        .map(|n| {
            let pad = if n % 7 == 0 {
                "é€".repeat(1000)
            } else {
                String::new()
            };
            signal(g_device, &json!({"n": n, "pad": pad}))
        })
        .collect();
    a.send_texts(&burst).await;
    for n in 0..count {
        match g.next().await {
            Some(ServerFrame::Signal { payload, .. }) => {
                let payload: serde_json::Value = serde_json::from_str(payload.get()).expect("json");
                assert_eq!(payload["n"], n, "signal {n} arrives next");
            }
            other => panic!("expected signal {n}, got {other:?}"),
        }
    }
    assert!(
        a.frame_within(std::time::Duration::from_millis(300))
            .await
            .is_none(),
        "the sender was refused nothing"
    );
}

#[tokio::test]
async fn a_device_that_closes_hears_the_close_back_and_goes_offline() {
    let app = TestApp::spawn().await;
    let Online {
        mut a,
        mut g,
        g_device,
        ..
    } = admin_and_grace_online(&app).await;
    assert!(g.close_and_hear_back().await, "the server answers a close");
    match a.next().await {
        Some(ServerFrame::Presence { device, online, .. }) => {
            assert_eq!(device, g_device);
            assert!(!online, "Grace went offline");
        }
        other => panic!("expected presence, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stopping_server_closes_every_socket_politely_and_stops() {
    let mut app = TestApp::spawn().await;
    let Online { mut a, mut g, .. } = admin_and_grace_online(&app).await;
    app.stop().await;
    assert!(
        a.closed_by_server().await,
        "a WebSocket close, not a dropped connection"
    );
    assert!(g.closed_by_server().await);
    // Nothing listens any more.
    assert!(
        reqwest::get(app.origin.join("/healthz").expect("url"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn signals_never_cross_circles_or_reach_unknown_devices() {
    let app = TestApp::spawn().await;
    let (admin, grace, _) = circle_of_three(&app).await;
    let outsider = app.admin_of_another_circle("Outsider").await;
    let (mut a, _) = WsClient::connect(&app, &admin).await;
    let (mut o, o_hello) = WsClient::connect(&app, &outsider).await;
    let ServerFrame::Hello { peers, .. } = &o_hello else {
        unreachable!()
    };
    assert!(peers.is_empty(), "no presence across circles");
    a.send_text(&signal(device_of(&o_hello), &json!("secret")))
        .await;
    assert_error(a.next().await, "unknown_device");
    a.send_text(&signal(Uuid::new_v4(), &json!(1))).await;
    assert_error(a.next().await, "unknown_device");
    // Grace's arrival is not announced to the outsider, and nothing of A reached it: the next
    // frame it sees is the arrival of its own member's second device.
    let (_g, _) = WsClient::connect(&app, &grace).await;
    let (_o2, _) = WsClient::connect(&app, &outsider).await;
    match o.next().await {
        Some(ServerFrame::Presence { member, .. }) => assert_eq!(member, outsider.granted.member),
        other => panic!("the outsider saw {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_commits_for_one_epoch_are_accepted_once() {
    let app = TestApp::spawn().await;
    let (admin, grace, hedy) = circle_of_three(&app).await;
    let (mut a, _) = WsClient::connect(&app, &admin).await;
    let (mut g, _) = WsClient::connect(&app, &grace).await;
    let (mut h, _) = WsClient::connect(&app, &hedy).await;
    // Drain presence frames.
    for _ in 0..2 {
        a.next().await;
    }
    g.next().await;

    let commit =
        |who: &str| json!({"type": "commit", "epoch": 0, "payload": {"by": who}}).to_string();
    let (ca, cg) = (commit("a"), commit("g"));
    tokio::join!(a.send_text(&ca), g.send_text(&cg));

    // Each committer gets its result and, if the other won, the other's commit.
    let mut accepted = Vec::new();
    let mut relayed = Vec::new();
    for (name, socket) in [("a", &mut a), ("g", &mut g)] {
        loop {
            match socket.next().await {
                Some(ServerFrame::CommitResult {
                    slot: epoch,
                    accepted: ok,
                }) => {
                    assert_eq!(epoch, 0);
                    if ok {
                        accepted.push(name);
                    }
                    break;
                }
                Some(ServerFrame::Commit {
                    slot: epoch,
                    payload,
                    ..
                }) => {
                    assert_eq!(epoch, 0);
                    relayed.push((name, payload.get().to_owned()));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(accepted.len(), 1, "exactly one commit wins epoch 0");
    let winner = accepted[0];
    match h.next().await {
        Some(ServerFrame::Commit {
            slot: epoch,
            payload,
            ..
        }) => {
            assert_eq!(epoch, 0);
            assert_eq!(payload.get(), format!("{{\"by\":\"{winner}\"}}"));
        }
        other => panic!("the third device saw {other:?}"),
    }
    // A stale commit is refused; the next epoch is open.
    h.send_text(&json!({"type": "commit", "epoch": 0, "payload": 1}).to_string())
        .await;
    assert!(matches!(
        h.next().await,
        Some(ServerFrame::CommitResult {
            slot: 0,
            accepted: false
        })
    ));
    h.send_text(&json!({"type": "commit", "epoch": 1, "payload": 2}).to_string())
        .await;
    assert!(matches!(
        h.next().await,
        Some(ServerFrame::CommitResult {
            slot: 1,
            accepted: true
        })
    ));
    let (_late, hello) = WsClient::connect(&app, &admin).await;
    assert!(
        matches!(hello, ServerFrame::Hello { slot: 2, .. }),
        "{hello:?}"
    );
}

#[tokio::test]
async fn revoking_a_member_or_logging_out_closes_their_sockets_saying_which() {
    let app = TestApp::spawn().await;
    let (mut admin, grace, mut hedy) = circle_of_three(&app).await;
    let (mut g, _) = WsClient::connect(&app, &grace).await;
    admin.revoke(grace.granted.member).await.expect("revoke");
    assert!(matches!(g.next().await, Some(ServerFrame::Revoked)));
    assert!(g.next().await.is_none(), "then the server closes");

    let (mut h, _) = WsClient::connect(&app, &hedy).await;
    hedy.client.logout().await.expect("logout");
    assert!(
        matches!(h.next().await, Some(ServerFrame::SessionEnded)),
        "a logout is no revocation"
    );
    assert!(h.next().await.is_none());
}

#[tokio::test]
async fn an_expired_session_is_closed_as_ended_and_a_revoked_member_as_revoked() {
    let app = TestApp::spawn_with(|config| config.ws_session_recheck_secs = 1).await;
    let (admin, grace, hedy) = circle_of_three(&app).await;
    let (mut g, _) = WsClient::connect(&app, &grace).await;
    let (mut h, _) = WsClient::connect(&app, &hedy).await;
    // Grace is revoked behind the router's back (as on another node): the re-check finds her
    // session gone and her membership too.
    let mut connection = app.database().await;
    sqlx::query("UPDATE members SET revoked_at = 1 WHERE id = ?")
        .bind(grace.granted.member.to_string())
        .execute(&mut connection)
        .await
        .expect("revoked in the database");
    // Every session expires: the clock moves past their lifetime.
    app.clock.advance(13 * 3600);
    let (last_g, last_h) = (last_frame(&mut g).await, last_frame(&mut h).await);
    assert!(matches!(last_g, Some(ServerFrame::Revoked)), "{last_g:?}");
    assert!(
        matches!(last_h, Some(ServerFrame::SessionEnded)),
        "an expiry is never a revocation: {last_h:?}"
    );
    assert!(
        g.next().await.is_none() && h.next().await.is_none(),
        "then both close"
    );
    drop(admin);
}

/// The first frame that is not about presence.
async fn last_frame(socket: &mut WsClient) -> Option<ServerFrame> {
    loop {
        match socket.next().await {
            Some(ServerFrame::Presence { .. }) => {}
            other => return other,
        }
    }
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays_up() {
    let app = TestApp::spawn().await;
    let Online {
        mut a,
        mut g,
        g_device,
        ..
    } = admin_and_grace_online(&app).await;
    for (frame, code) in [
        ("not json", "invalid_json"),
        ("[1,2]", "invalid_json"),
        (r#"{"type":"shout","to":"x"}"#, "invalid_json"),
        (r#"{"type":"shout"}"#, "unknown_type"),
        (r#"{"type":"signal","payload":1}"#, "malformed_frame"),
        (r#"{"type":"commit","payload":1}"#, "malformed_frame"),
    ] {
        a.send_text(frame).await;
        assert_error(a.next().await, code);
    }
    a.send_message(Message::binary(vec![1, 2, 3])).await;
    assert_error(a.next().await, "binary_frame");
    let big = "x".repeat(70 * 1024);
    a.send_text(&signal(g_device, &json!(big))).await;
    assert_error(a.next().await, "frame_too_large");
    // Still up: a good frame goes through.
    a.send_text(&signal(g_device, &json!("ok"))).await;
    assert!(matches!(g.next().await, Some(ServerFrame::Signal { .. })));
}

#[tokio::test]
async fn a_frame_past_the_hard_limit_closes_the_connection() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (mut a, _) = WsClient::connect(&app, &admin).await;
    a.send_message(Message::text("x".repeat(300 * 1024))).await;
    assert!(a.next().await.is_none(), "closed");
    // The server is fine.
    WsClient::connect(&app, &admin).await;
}

#[tokio::test]
async fn the_hello_tells_the_limits_the_server_then_holds_the_connection_to() {
    let app = TestApp::spawn_with(|config| {
        config.ws_frames_per_second = 1;
        config.ws_max_frame_bytes = 4096;
    })
    .await;
    let (admin, grace, _) = circle_of_three(&app).await;
    let (mut a, hello) = WsClient::connect(&app, &admin).await;
    let ServerFrame::Hello { limits, .. } = &hello else {
        unreachable!()
    };
    assert_eq!(
        *limits,
        Limits {
            frame_bytes: 4096,
            frames_per_second: 1,
            burst: 2
        }
    );
    let (mut g, g_hello) = WsClient::connect(&app, &grace).await;
    let _presence = a.next().await;
    // The burst named goes through; one more frame at once does not.
    for n in 0..3 {
        a.send_text(&signal(device_of(&g_hello), &json!(n))).await;
    }
    assert!(
        matches!(a.next().await, Some(ServerFrame::Error { code, .. }) if code == FrameErrorCode::RateLimited)
    );
    for n in 0..2 {
        match g.next().await {
            Some(ServerFrame::Signal { payload, .. }) => assert_eq!(payload.get(), n.to_string()),
            other => panic!("expected signal {n}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn flooding_is_refused_then_closed() {
    let app = TestApp::spawn_with(|config| {
        config.ws_frames_per_second = 5;
        config.ws_max_refusals = 3;
    })
    .await;
    let Online {
        admin,
        mut a,
        mut g,
        g_device,
        ..
    } = admin_and_grace_online(&app).await;
    for _ in 0..40 {
        if !a
            .send_message(Message::text(signal(g_device, &json!(0))))
            .await
        {
            break;
        }
    }
    let mut codes = Vec::new();
    while let Some(frame) = a.next().await {
        if let ServerFrame::Error { code, .. } = frame {
            codes.push(code);
        }
    }
    assert!(codes.contains(&FrameErrorCode::RateLimited), "{codes:?}");
    assert_eq!(codes.last(), Some(&FrameErrorCode::Abuse), "{codes:?}");
    // Others are unaffected: the frames within the limit arrived, and grace can still be reached.
    assert!(matches!(g.next().await, Some(ServerFrame::Signal { .. })));
    let (mut again, _) = WsClient::connect(&app, &admin).await;
    again.send_text(&signal(g_device, &json!("after"))).await;
}

#[tokio::test]
async fn connections_per_member_are_bounded_and_device_ids_are_not_shared() {
    let app = TestApp::spawn_with(|config| config.ws_connections_per_member = 2).await;
    let (admin, grace, _) = circle_of_three(&app).await;
    let (one, hello) = WsClient::connect(&app, &admin).await;
    let (_two, _) = WsClient::connect(&app, &admin).await;
    let third = WsClient::connect_with(&app, admin.client.session(), None, &[]).await;
    assert!(
        matches!(third, Err(tungstenite::Error::Http(r)) if r.status() == StatusCode::TOO_MANY_REQUESTS)
    );
    let stolen =
        WsClient::connect_with(&app, grace.client.session(), Some(device_of(&hello)), &[]).await;
    assert!(
        matches!(stolen, Err(tungstenite::Error::Http(r)) if r.status() == StatusCode::CONFLICT)
    );
    // The member's own device may reconnect, replacing its old connection.
    let mut old = one;
    let (_new, new_hello) = {
        let mut client =
            WsClient::connect_with(&app, admin.client.session(), Some(device_of(&hello)), &[])
                .await
                .expect("reconnect");
        let hello = client.next().await;
        (client, hello)
    };
    assert!(
        matches!(new_hello, Some(ServerFrame::Hello { device, .. }) if device == device_of(&hello))
    );
    let mut last = old.next().await;
    while matches!(last, Some(ServerFrame::Presence { .. })) {
        last = old.next().await;
    }
    assert_error(last, "replaced");
}

#[tokio::test]
async fn a_device_that_never_reads_is_dropped_and_others_carry_on() {
    let app = TestApp::spawn_with(|config| config.ws_frames_per_second = 100_000).await;
    let (admin, grace, hedy) = circle_of_three(&app).await;
    let (mut a, _) = WsClient::connect(&app, &admin).await;
    let (_g_never_reads, g_hello) = WsClient::connect(&app, &grace).await;
    let (mut h, h_hello) = WsClient::connect(&app, &hedy).await;
    let big = json!("y".repeat(60 * 1024));
    let frame = signal(device_of(&g_hello), &big);
    // Bounded: at most 4000 frames (240 MB) before the server must give up on the silent reader.
    let mut dropped = false;
    for _ in 0..4000 {
        a.send_text(&frame).await;
        if let Some(ServerFrame::Error { code, .. }) =
            a.frame_within(std::time::Duration::from_millis(1)).await
        {
            assert!(
                matches!(
                    code,
                    FrameErrorCode::PeerUnavailable | FrameErrorCode::UnknownDevice
                ),
                "{code}"
            );
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the silent device was dropped");
    let _ = h.next().await; // presence: grace left
    a.send_text(&signal(device_of(&h_hello), &json!("still here")))
        .await;
    loop {
        match h.next().await {
            Some(ServerFrame::Signal { payload, .. }) => {
                assert_eq!(payload.get(), "\"still here\"");
                break;
            }
            Some(ServerFrame::Presence { .. }) => {}
            other => panic!("hedy saw {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_silent_device_is_closed_after_the_idle_timeout() {
    let app = TestApp::spawn_with(|config| config.ws_idle_timeout_secs = 1).await;
    let admin = app.admin().await;
    let mut silent = WsClient::connect_with(&app, admin.client.session(), None, &[])
        .await
        .expect("opens");
    // Not reading means not answering the server's pings either.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut frames = Vec::new();
    while let Some(frame) = silent.next().await {
        frames.push(frame);
    }
    assert!(
        matches!(frames.first(), Some(ServerFrame::Hello { .. })),
        "{frames:?}"
    );
    let metrics = reqwest::get(format!("{}metrics", app.origin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"tessera_ws_refusals_total{reason="idle_timeout"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_browser_cookie_opens_the_socket_too() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let cookie = format!(
        "{}={}",
        tessera_wire::SESSION_COOKIE,
        admin.client.session().expect("session")
    );
    let mut socket = WsClient::connect_with(&app, None, None, &[("cookie", &cookie)])
        .await
        .expect("the cookie authenticates");
    let hello = socket.next().await;
    assert!(
        matches!(hello, Some(ServerFrame::Hello { member, .. }) if member == admin.granted.member),
        "{hello:?}"
    );
}

#[tokio::test]
async fn arrays_are_not_frames() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (mut a, hello) = WsClient::connect(&app, &admin).await;
    let device = device_of(&hello);
    a.send_text(&json!(["signal", device, 1]).to_string()).await;
    assert_error(a.next().await, "invalid_json");
}

#[tokio::test]
async fn a_signalling_client_replaced_by_its_own_device_stops_instead_of_fighting() {
    use tessera_client::signal::{Backoff, SignalClient, SignalEvent};
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let session = admin.client.session().expect("session").to_owned();
    let device = Uuid::new_v4();
    let mut first = SignalClient::start(
        app.origin.clone(),
        session.clone(),
        device,
        Backoff::default(),
    );
    assert!(matches!(
        event(&mut first).await,
        Some(SignalEvent::Connected(_))
    ));
    let mut second = SignalClient::start(app.origin.clone(), session, device, Backoff::default());
    assert!(matches!(
        event(&mut second).await,
        Some(SignalEvent::Connected(_))
    ));
    assert!(matches!(
        event(&mut first).await,
        Some(SignalEvent::Frame(ServerFrame::Error {
            code: FrameErrorCode::Replaced,
            ..
        }))
    ));
    assert!(
        event(&mut first).await.is_none(),
        "the replaced client stopped"
    );
    // The second keeps working: it relays to itself through the server.
    second
        .send(signal(device, &json!("to myself")))
        .await
        .expect("send");
    match event(&mut second).await {
        Some(SignalEvent::Frame(ServerFrame::Signal { payload, .. })) => {
            assert_eq!(payload.get(), "\"to myself\"");
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A signalling client's next event, failing the test if none comes within 10 s.
async fn event(
    client: &mut tessera_client::signal::SignalClient,
) -> Option<tessera_client::signal::SignalEvent> {
    tokio::time::timeout(std::time::Duration::from_secs(10), client.next_event())
        .await
        .expect("an event in time")
}

/// `member`'s device `device` online, its hello read.
async fn online_as(app: &TestApp, member: &TestMember, device: Uuid) -> WsClient {
    let mut online = WsClient::connect_with(app, member.client.session(), Some(device), &[])
        .await
        .expect("the device connects");
    assert!(matches!(
        online.next().await,
        Some(ServerFrame::Hello { .. })
    ));
    online
}

/// The status a device's connection attempt with `device` gets: 101, or the refusal's.
async fn upgrade_status(app: &TestApp, member: &TestMember, device: Uuid) -> StatusCode {
    match WsClient::connect_with(app, member.client.session(), Some(device), &[]).await {
        Ok(mut socket) => {
            assert!(matches!(
                socket.next().await,
                Some(ServerFrame::Hello { .. })
            ));
            assert!(socket.close_and_hear_back().await);
            StatusCode::SWITCHING_PROTOCOLS
        }
        Err(tungstenite::Error::Http(response)) => response.status(),
        Err(other) => panic!("expected an HTTP answer, got {other}"),
    }
}

#[tokio::test]
async fn a_device_id_is_its_members_alone_online_or_not_and_means_nothing_in_another_circle() {
    let app = TestApp::spawn().await;
    let (admin, grace, _) = circle_of_three(&app).await;
    let outsider = app.admin_of_another_circle("Outsider").await;
    let device = Uuid::new_v4();
    let mut online = online_as(&app, &admin, device).await;

    // Another member of the circle: refused while the device is online, and the same while it
    // is offline, so the answer says nothing of its presence and cannot lock its owner out.
    assert_eq!(
        upgrade_status(&app, &grace, device).await,
        StatusCode::CONFLICT
    );
    assert!(online.close_and_hear_back().await);
    assert_eq!(
        upgrade_status(&app, &grace, device).await,
        StatusCode::CONFLICT,
        "the same answer while the device is offline"
    );
    assert_eq!(
        upgrade_status(&app, &admin, device).await,
        StatusCode::SWITCHING_PROTOCOLS,
        "its owner still connects with it"
    );

    // In another circle the id is another device: no refusal to learn anything from, and the
    // owner's connection is not disturbed.
    let mut online = online_as(&app, &admin, device).await;
    assert_eq!(
        upgrade_status(&app, &outsider, device).await,
        StatusCode::SWITCHING_PROTOCOLS
    );
    assert!(
        online
            .frame_within(std::time::Duration::from_millis(300))
            .await
            .is_none(),
        "the owner's connection heard nothing of it"
    );
    assert!(online.close_and_hear_back().await, "and is still open");
}

#[tokio::test]
async fn a_device_that_keeps_reconnecting_is_announced_a_few_times_and_its_latest_state_last() {
    // Four announcements at once, then one every two seconds.
    let app = TestApp::spawn_with(|config| config.ws_presence_per_minute = 30).await;
    let (admin, grace, _) = circle_of_three(&app).await;
    let (mut a, _) = WsClient::connect(&app, &admin).await;
    let flapping = Uuid::new_v4();
    let cycles = 30;
    for _ in 0..cycles {
        assert_eq!(
            upgrade_status(&app, &grace, flapping).await,
            StatusCode::SWITCHING_PROTOCOLS
        );
    }
    let mut heard = Vec::new();
    while let Some(frame) = a.frame_within(std::time::Duration::from_secs(5)).await {
        match frame {
            ServerFrame::Presence { device, online, .. } => {
                assert_eq!(device, flapping);
                heard.push(online);
            }
            other => panic!("expected presence, got {other:?}"),
        }
    }
    assert!(
        heard.len() < cycles,
        "{} connections and disconnections came to {} announcements",
        2 * cycles,
        heard.len()
    );
    assert_eq!(
        heard.last(),
        Some(&false),
        "the device ended offline: {heard:?}"
    );
}

#[tokio::test]
async fn the_counters_are_refused_to_what_a_reverse_proxy_forwards() {
    let app = TestApp::spawn().await;
    let url = app.origin.join("/metrics").expect("url");
    let direct = reqwest::get(url.clone()).await.expect("answers");
    assert_eq!(
        direct.status(),
        StatusCode::OK,
        "a local scraper reads them"
    );
    for (header, value) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
    ] {
        let forwarded = reqwest::Client::new()
            .get(url.clone())
            .header(header, value)
            .send()
            .await
            .expect("answers");
        assert_eq!(forwarded.status(), StatusCode::NOT_FOUND, "{header}");
        let body = forwarded.text().await.expect("text");
        assert!(!body.contains("tessera_"), "no counter leaks: {body}");
    }
}
