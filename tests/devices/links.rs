//! Two devices' links (str0m) over real UDP sockets, inside a network namespace this test makes
//! (loopback only): negotiation, the data channel opening on both sides, bulk data in order.

use std::time::{Duration, Instant};

use tessera_tests::loopback::{Side, run};
use uuid::Uuid;

use crate::support::inside_namespace;

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
