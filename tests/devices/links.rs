//! Two devices' links (str0m) over real UDP sockets, inside a network namespace this test makes
//! (loopback only): negotiation, the data channel opening on both sides, bulk data in order.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tessera_client::rtc::{LinkEvent, Links};
use uuid::Uuid;

use crate::support::inside_namespace;

struct Side {
    id: Uuid,
    socket: UdpSocket,
    links: Links,
    up: bool,
    received: Vec<Vec<u8>>,
}

impl Side {
    fn new() -> Side {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let local: SocketAddr = socket.local_addr().expect("addr");
        Side {
            id: Uuid::new_v4(),
            socket,
            links: Links::new(local),
            up: false,
            received: Vec::new(),
        }
    }

    /// Sends what is queued, reads what arrived, fires timers; returns negotiation steps.
    fn turn(&mut self) -> Vec<(Uuid, tessera_engine::payload::RtcSignal)> {
        let now = Instant::now();
        if self.links.poll_timeout().is_some_and(|t| t <= now) {
            self.links.handle_timeout(now);
        }
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            self.links.handle_datagram(Instant::now(), from, &buf[..n]);
        }
        while let Some((to, bytes)) = self.links.poll_transmit() {
            let _ = self.socket.send_to(&bytes, to);
        }
        let mut steps = Vec::new();
        while let Some(event) = self.links.poll_event() {
            match event {
                LinkEvent::Negotiate { device, signal } => steps.push((device, signal)),
                LinkEvent::Up(_) => self.up = true,
                LinkEvent::Down(_) => self.up = false,
                LinkEvent::Data(_, bytes) => self.received.push(bytes),
            }
        }
        steps
    }
}

/// Runs both sides until `done` or ten seconds.
fn run(a: &mut Side, b: &mut Side, done: impl Fn(&Side, &Side) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(a, b) && Instant::now() < deadline {
        for (to, signal) in a.turn() {
            assert_eq!(to, b.id);
            b.links
                .apply(Instant::now(), a.id, signal)
                .expect("b applies");
        }
        for (to, signal) in b.turn() {
            assert_eq!(to, a.id);
            a.links
                .apply(Instant::now(), b.id, signal)
                .expect("a applies");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_data_channel_opens_and_carries_bulk_data_in_order() {
    if !inside_namespace("links::a_data_channel_opens_and_carries_bulk_data_in_order") {
        return;
    }
    let (mut a, mut b) = (Side::new(), Side::new());
    a.links.open(Instant::now(), b.id).expect("offer");
    run(&mut a, &mut b, |a, b| a.up && b.up);
    assert!(a.up && b.up, "the channel did not open on both sides");

    let messages: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            let mut m = vec![u8::try_from(i % 251).expect("byte"); 15 * 1024];
            m[..4].copy_from_slice(&i.to_be_bytes());
            m
        })
        .collect();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.received.len() < messages.len() && Instant::now() < deadline {
        while sent < messages.len() && a.links.send(b.id, &messages[sent]) {
            sent += 1;
            if sent % 16 == 0 {
                break;
            }
        }
        assert!(
            a.turn().is_empty() && b.turn().is_empty(),
            "no renegotiation"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(b.received, messages, "every message, intact and in order");
}

#[test]
fn malformed_and_unexpected_negotiation_is_refused() {
    let mut a = Side::new();
    let peer = Uuid::new_v4();
    use tessera_engine::payload::RtcSignal;
    for bad in [
        RtcSignal::Offer {
            sdp: "not sdp".into(),
        },
        RtcSignal::Answer { sdp: "v=0".into() },
        RtcSignal::Candidate {
            candidate: "garbage".into(),
            sdp_mid: None,
        },
    ] {
        assert!(
            a.links.apply(Instant::now(), peer, bad.clone()).is_err(),
            "{bad:?} accepted"
        );
    }
    assert!(!a.links.send(peer, b"no link"), "no link, nothing sent");
}
