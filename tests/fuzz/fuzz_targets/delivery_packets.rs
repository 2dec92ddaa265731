//! Delivery packets (chunks and acknowledgements) from two peers, between sends and link drops:
//! every payload is handed up at most once per peer and sequence number, and nothing panics.

#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tessera_engine::delivery::{Delivery, DeliveryConfig};
use tessera_engine::payload::decode_packet;
use uuid::Uuid;
use web_time::{Duration, Instant};

#[derive(Debug, Arbitrary)]
enum Step {
    Packet { peer: bool, bytes: Vec<u8> },
    Send { to_second: bool, bytes: Vec<u8> },
    LinkUp { peer: bool },
    LinkDown { peer: bool },
    Later { ms: u16 },
}

fuzz_target!(|steps: Vec<Step>| {
    let peers = [Uuid::from_u128(1), Uuid::from_u128(2)];
    let pick = |second: bool| peers[usize::from(second)];
    let mut delivery = Delivery::new(DeliveryConfig::default());
    let mut now = Instant::now();
    let mut handed_up = BTreeSet::new();
    for step in steps.iter().take(256) {
        match step {
            Step::Packet { peer, bytes } => {
                if let Ok(packet) = decode_packet(bytes) {
                    delivery.handle_packet(now, pick(*peer), packet);
                }
            }
            Step::Send { to_second, bytes } => {
                let _ = delivery.send(now, pick(*to_second), bytes, None);
            }
            Step::LinkUp { peer } => delivery.link_up(now, pick(*peer)),
            Step::LinkDown { peer } => delivery.link_down(pick(*peer)),
            Step::Later { ms } => {
                now += Duration::from_millis(u64::from(*ms));
                delivery.handle_timeout(now);
            }
        }
        while delivery.poll_transmit().is_some() {}
        while delivery.poll_acknowledged().is_some() {}
        while let Some((peer, seq, _)) = delivery.poll_delivered() {
            assert!(
                handed_up.insert((peer, seq)),
                "{seq:?} from {peer} handed up twice"
            );
        }
    }
});
