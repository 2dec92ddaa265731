//! Reliable delivery between devices over links that lose, repeat and reorder: message ids, chunking,
//! acknowledgements, an outbox resent until acknowledged, duplicate suppression and per-sender order.
//! Sans-IO: it is fed packets and time, and drained for packets to send and messages to show.

use std::collections::{BTreeMap, HashMap, VecDeque};

use web_time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A message's identity: its sender's sequence number (per sender and receiver, from 0).
pub type Seq = u64;

/// What travels between two devices (inside MLS application messages in the engine).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Packet {
    /// One piece of a message.
    Chunk {
        /// The message.
        seq: Seq,
        /// This piece's position.
        index: u32,
        /// How many pieces the message has.
        count: u32,
        /// The piece.
        bytes: Vec<u8>,
    },
    /// The receiver holds the whole message `seq`.
    Ack {
        /// The message.
        seq: Seq,
    },
}

/// Limits and timings.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Largest piece of a message (data channels carry at most 16 KiB portably; leave room for framing).
    pub chunk_bytes: usize,
    /// Largest message accepted or sent.
    pub max_message_bytes: usize,
    /// How far ahead of the next expected message a receiver keeps messages.
    pub receive_window: u64,
    /// How long an unacknowledged message waits before it is sent again.
    pub resend_after: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            chunk_bytes: 15 * 1024,
            max_message_bytes: 64 * 1024 * 1024,
            receive_window: 1024,
            resend_after: Duration::from_secs(2),
        }
    }
}

/// Why a message cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message is larger than [`DeliveryConfig::max_message_bytes`].
    #[error("the message is larger than {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug, Serialize, Deserialize)]
struct Outgoing {
    chunks: Vec<Vec<u8>>,
    #[serde(skip)]
    due: Option<Instant>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Assembling {
    count: u32,
    pieces: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Peer {
    next_seq: Seq,
    outbox: BTreeMap<Seq, Outgoing>,
    #[serde(skip)]
    link_up: bool,
    next_expected: Seq,
    assembling: BTreeMap<Seq, Assembling>,
    complete: BTreeMap<Seq, Vec<u8>>,
}

/// The delivery state of one device towards all its peers. It serialises (for the local store)
/// without its configuration, its links and the packets not yet taken.
#[derive(Debug, Serialize, Deserialize)]
pub struct Delivery {
    #[serde(skip)]
    config: DeliveryConfig,
    peers: HashMap<Uuid, Peer>,
    #[serde(skip)]
    transmit: VecDeque<(Uuid, Packet)>,
    delivered: VecDeque<(Uuid, Seq, Vec<u8>)>,
    acknowledged: VecDeque<(Uuid, Seq)>,
}

impl Delivery {
    /// A device's delivery state.
    #[must_use]
    pub fn new(config: DeliveryConfig) -> Delivery {
        Delivery {
            config,
            peers: HashMap::new(),
            transmit: VecDeque::new(),
            delivered: VecDeque::new(),
            acknowledged: VecDeque::new(),
        }
    }

    /// Sets the limits and timings (after restoring a saved state).
    pub fn set_config(&mut self, config: DeliveryConfig) {
        self.config = config;
    }

    /// Forgets `peer` (it left the group): its outbox and what was received from it.
    pub fn forget(&mut self, peer: Uuid) {
        self.peers.remove(&peer);
        self.transmit.retain(|(to, _)| *to != peer);
        self.acknowledged.retain(|(to, _)| *to != peer);
    }

    /// Queues a message for `peer`; it is sent while the link is up and resent until acknowledged.
    ///
    /// # Errors
    /// [`SendError::TooLarge`].
    pub fn send(&mut self, now: Instant, peer: Uuid, message: &[u8]) -> Result<Seq, SendError> {
        if message.len() > self.config.max_message_bytes {
            return Err(SendError::TooLarge(self.config.max_message_bytes));
        }
        let chunks: Vec<Vec<u8>> = if message.is_empty() {
            vec![Vec::new()]
        } else {
            message
                .chunks(self.config.chunk_bytes.max(1))
                .map(<[u8]>::to_vec)
                .collect()
        };
        let state = self.peers.entry(peer).or_default();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.outbox.insert(seq, Outgoing { chunks, due: None });
        if state.link_up {
            self.emit(now, peer, seq);
        }
        Ok(seq)
    }

    fn emit(&mut self, now: Instant, peer: Uuid, seq: Seq) {
        let resend_after = self.config.resend_after;
        let Some(outgoing) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.outbox.get_mut(&seq))
        else {
            return;
        };
        outgoing.due = Some(now + resend_after);
        let count = u32::try_from(outgoing.chunks.len()).unwrap_or(u32::MAX);
        for (index, bytes) in outgoing.chunks.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            self.transmit.push_back((
                peer,
                Packet::Chunk {
                    seq,
                    index,
                    count,
                    bytes: bytes.clone(),
                },
            ));
        }
    }

    /// The link to `peer` opened: everything unacknowledged goes out again, oldest first.
    pub fn link_up(&mut self, now: Instant, peer: Uuid) {
        let state = self.peers.entry(peer).or_default();
        state.link_up = true;
        let pending: Vec<Seq> = state.outbox.keys().copied().collect();
        for seq in pending {
            self.emit(now, peer, seq);
        }
    }

    /// The link to `peer` closed: messages wait in the outbox.
    pub fn link_down(&mut self, peer: Uuid) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.link_up = false;
            for outgoing in state.outbox.values_mut() {
                outgoing.due = None;
            }
        }
        self.transmit.retain(|(to, _)| *to != peer);
    }

    /// Resends what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<(Uuid, Seq)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.link_up)
            .flat_map(|(peer, p)| {
                p.outbox
                    .iter()
                    .filter(|(_, o)| o.due.is_some_and(|d| d <= now))
                    .map(|(seq, _)| (*peer, *seq))
            })
            .collect();
        for (peer, seq) in due {
            self.emit(now, peer, seq);
        }
    }

    /// When [`Delivery::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| p.outbox.values().filter_map(|o| o.due))
            .min()
    }

    /// Takes a packet from `peer`. Malformed or out-of-window packets are dropped (the sender resends).
    pub fn handle_packet(&mut self, peer: Uuid, packet: Packet) {
        match packet {
            Packet::Ack { seq } => {
                if let Some(state) = self.peers.get_mut(&peer)
                    && state.outbox.remove(&seq).is_some()
                {
                    self.acknowledged.push_back((peer, seq));
                }
            }
            Packet::Chunk {
                seq,
                index,
                count,
                bytes,
            } => self.take_chunk(peer, seq, index, count, bytes),
        }
    }

    fn take_chunk(&mut self, peer: Uuid, seq: Seq, index: u32, count: u32, bytes: Vec<u8>) {
        let max_chunks = self
            .config
            .max_message_bytes
            .div_ceil(self.config.chunk_bytes.max(1))
            .max(1);
        let sane = count >= 1
            && index < count
            && usize::try_from(count).is_ok_and(|c| c <= max_chunks)
            && bytes.len() <= self.config.chunk_bytes;
        if !sane {
            return;
        }
        let window = self.config.receive_window;
        let max_bytes = self.config.max_message_bytes;
        let state = self.peers.entry(peer).or_default();
        if seq < state.next_expected || state.complete.contains_key(&seq) {
            // Already held: the ack was lost; say it again.
            self.transmit.push_back((peer, Packet::Ack { seq }));
            return;
        }
        if seq >= state.next_expected + window {
            return;
        }
        let assembling = state.assembling.entry(seq).or_insert_with(|| Assembling {
            count,
            ..Assembling::default()
        });
        if assembling.count != count || assembling.bytes + bytes.len() > max_bytes {
            return;
        }
        if !assembling.pieces.contains_key(&index) {
            assembling.bytes += bytes.len();
            assembling.pieces.insert(index, bytes);
        }
        if assembling.pieces.len() < usize::try_from(count).unwrap_or(usize::MAX) {
            return;
        }
        let whole = state
            .assembling
            .remove(&seq)
            .map(|a| a.pieces.into_values().flatten().collect())
            .unwrap_or_default();
        state.complete.insert(seq, whole);
        self.transmit.push_back((peer, Packet::Ack { seq }));
        while let Some(message) = state.complete.remove(&state.next_expected) {
            self.delivered
                .push_back((peer, state.next_expected, message));
            state.next_expected += 1;
        }
    }

    /// The next packet to put on a link.
    pub fn poll_transmit(&mut self) -> Option<(Uuid, Packet)> {
        self.transmit.pop_front()
    }

    /// The next message to show, in each sender's order, each once.
    pub fn poll_delivered(&mut self) -> Option<(Uuid, Seq, Vec<u8>)> {
        self.delivered.pop_front()
    }

    /// The next of this device's messages that a peer acknowledged, each once.
    pub fn poll_acknowledged(&mut self) -> Option<(Uuid, Seq)> {
        self.acknowledged.pop_front()
    }

    /// Messages for `peer` not yet acknowledged.
    #[must_use]
    pub fn unacknowledged(&self, peer: Uuid) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.outbox.len())
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng as _, SeedableRng as _};

    use super::*;

    /// Two devices over a link that loses, repeats and reorders packets, with simulated time.
    struct Lossy {
        a: (Uuid, Delivery),
        b: (Uuid, Delivery),
        rng: StdRng,
        in_flight: Vec<(Uuid, Uuid, Packet)>,
        now: Instant,
        loss: f64,
    }

    impl Lossy {
        fn new(seed: u64, loss: f64) -> Lossy {
            let config = DeliveryConfig {
                chunk_bytes: 100,
                max_message_bytes: 10_000,
                receive_window: 64,
                resend_after: Duration::from_millis(200),
            };
            let now = Instant::now();
            let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
            let mut lossy = Lossy {
                a: (a, Delivery::new(config.clone())),
                b: (b, Delivery::new(config)),
                rng: StdRng::seed_from_u64(seed),
                in_flight: Vec::new(),
                now,
                loss,
            };
            lossy.a.1.link_up(now, b);
            lossy.b.1.link_up(now, a);
            lossy
        }

        /// Moves packets for `steps` rounds of 50 ms; returns what B delivered.
        fn run(&mut self, steps: usize) -> Vec<(Seq, Vec<u8>)> {
            let mut delivered = Vec::new();
            for _ in 0..steps {
                for (from, delivery) in [(self.a.0, &mut self.a.1), (self.b.0, &mut self.b.1)] {
                    while let Some((to, packet)) = delivery.poll_transmit() {
                        self.in_flight.push((from, to, packet));
                    }
                }
                // Lose some, repeat some, and deliver the rest in a random order.
                let mut arriving = Vec::new();
                for packet in self.in_flight.drain(..) {
                    if self.rng.r#gen::<f64>() < self.loss {
                        continue;
                    }
                    if self.rng.r#gen::<f64>() < 0.05 {
                        arriving.push(packet.clone());
                    }
                    arriving.push(packet);
                }
                for i in (1..arriving.len()).rev() {
                    arriving.swap(i, self.rng.gen_range(0..=i));
                }
                for (from, to, packet) in arriving {
                    let target = if to == self.a.0 {
                        &mut self.a.1
                    } else {
                        &mut self.b.1
                    };
                    target.handle_packet(from, packet);
                }
                while let Some((from, seq, message)) = self.b.1.poll_delivered() {
                    assert_eq!(from, self.a.0);
                    delivered.push((seq, message));
                }
                self.now += Duration::from_millis(50);
                self.a.1.handle_timeout(self.now);
                self.b.1.handle_timeout(self.now);
            }
            delivered
        }
    }

    fn message(i: usize) -> Vec<u8> {
        // Sizes from 0 to ~1,000 bytes: many span several 100-byte chunks.
        (0..(i * 37) % 1000).map(|k| (k + i) as u8).collect()
    }

    #[test]
    fn every_message_arrives_once_and_in_order_despite_loss_repeats_and_reordering() {
        for seed in 0..5 {
            let mut link = Lossy::new(seed, 0.2);
            let b = link.b.0;
            for i in 0..100 {
                link.a.1.send(link.now, b, &message(i)).expect("send");
            }
            let delivered = link.run(400);
            assert_eq!(
                delivered.len(),
                100,
                "seed {seed}: every message arrives exactly once"
            );
            for (i, (seq, bytes)) in delivered.iter().enumerate() {
                assert_eq!(*seq, i as u64, "seed {seed}: in order");
                assert_eq!(bytes, &message(i), "seed {seed}: intact");
            }
            assert_eq!(
                link.a.1.unacknowledged(b),
                0,
                "seed {seed}: the outbox empties"
            );
        }
    }

    #[test]
    fn the_outbox_waits_for_the_link_and_resends_after_it_returns() {
        let mut link = Lossy::new(7, 0.0);
        let (a, b) = (link.a.0, link.b.0);
        link.a.1.link_down(b);
        link.a.1.send(link.now, b, b"while offline").expect("send");
        assert!(
            link.run(10).is_empty(),
            "nothing goes out while the link is down"
        );
        assert_eq!(link.a.1.unacknowledged(b), 1, "it waits in the outbox");
        link.a.1.link_up(link.now, b);
        let delivered = link.run(10);
        assert_eq!(delivered, vec![(0, b"while offline".to_vec())]);
        assert_eq!(link.a.1.unacknowledged(b), 0);
        assert_eq!(link.b.1.unacknowledged(a), 0, "acks are not messages");
    }

    #[test]
    fn a_message_sent_again_before_its_ack_is_shown_once() {
        let mut link = Lossy::new(3, 0.0);
        let b = link.b.0;
        link.a.1.send(link.now, b, b"once").expect("send");
        assert_eq!(link.run(2).len(), 1);
        // Reconnects before the ack came back send the same message several times.
        link.a.1.send(link.now, b, b"twice?").expect("send");
        link.a.1.link_up(link.now, b);
        link.a.1.link_up(link.now, b);
        let delivered = link.run(5);
        assert_eq!(delivered, vec![(1, b"twice?".to_vec())], "shown once");
        assert_eq!(link.a.1.unacknowledged(b), 0);
    }

    #[test]
    fn oversized_and_malformed_input_is_refused() {
        let mut delivery = Delivery::new(DeliveryConfig {
            chunk_bytes: 10,
            max_message_bytes: 100,
            receive_window: 4,
            resend_after: Duration::from_secs(1),
        });
        let peer = Uuid::new_v4();
        assert_eq!(
            delivery.send(Instant::now(), peer, &[0; 101]),
            Err(SendError::TooLarge(100))
        );
        for bad in [
            Packet::Chunk {
                seq: 0,
                index: 1,
                count: 1,
                bytes: vec![1],
            },
            Packet::Chunk {
                seq: 0,
                index: 0,
                count: 0,
                bytes: vec![1],
            },
            Packet::Chunk {
                seq: 0,
                index: 0,
                count: 11,
                bytes: vec![1],
            },
            Packet::Chunk {
                seq: 0,
                index: 0,
                count: 1,
                bytes: vec![0; 11],
            },
            Packet::Chunk {
                seq: 4,
                index: 0,
                count: 1,
                bytes: vec![1],
            },
        ] {
            delivery.handle_packet(peer, bad.clone());
            assert!(delivery.poll_delivered().is_none(), "{bad:?} was accepted");
            assert!(
                delivery.poll_transmit().is_none(),
                "{bad:?} was acknowledged"
            );
        }
        // A chunk count that changes midway is ignored, not mixed in.
        delivery.handle_packet(
            peer,
            Packet::Chunk {
                seq: 0,
                index: 0,
                count: 2,
                bytes: vec![1],
            },
        );
        delivery.handle_packet(
            peer,
            Packet::Chunk {
                seq: 0,
                index: 1,
                count: 3,
                bytes: vec![2],
            },
        );
        assert!(delivery.poll_delivered().is_none());
        delivery.handle_packet(
            peer,
            Packet::Chunk {
                seq: 0,
                index: 1,
                count: 2,
                bytes: vec![2],
            },
        );
        assert_eq!(delivery.poll_delivered(), Some((peer, 0, vec![1, 2])));
    }
}
