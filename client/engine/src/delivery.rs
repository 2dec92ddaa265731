//! Reliable delivery between devices over links that lose, repeat and reorder: message ids, chunking,
//! acknowledgements, an outbox resent until acknowledged, duplicate suppression and per-sender order,
//! and a window that bounds the bytes in flight per peer so a burst waits in the outbox instead of
//! flooding the link. Sans-IO: it is fed packets and time, and drained for packets to send,
//! messages to show and the outbox rows to store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

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
    /// How long an unacknowledged message waits before it is sent again (once per window of
    /// bytes it spans: a large message is given the time to cross).
    pub resend_after: Duration,
    /// Bytes sent and not yet acknowledged, per peer, past which further messages wait in the
    /// outbox (a larger message still goes, alone).
    pub window_bytes: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            chunk_bytes: 15 * 1024,
            max_message_bytes: 64 * 1024 * 1024,
            receive_window: 1024,
            resend_after: Duration::from_secs(2),
            window_bytes: 1024 * 1024,
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

/// A message in the outbox, as the local store keeps it (one row each; the browser's IndexedDB
/// keeps it as this serializes: `{peer, seq, tag, message}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The device it is for.
    pub peer: Uuid,
    /// Its sequence number towards that device.
    pub seq: Seq,
    /// The caller's name for it, handed back when it is acknowledged.
    pub tag: Option<Uuid>,
    /// The message.
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
}

/// A change to the stored outbox since the last [`Delivery::take_outbox_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxChange {
    /// A message to keep.
    Put(Queued),
    /// A message acknowledged (or its peer gone): delete its row.
    Delete {
        /// The device it was for.
        peer: Uuid,
        /// Its sequence number.
        seq: Seq,
    },
}

#[derive(Debug)]
struct Outgoing {
    tag: Option<Uuid>,
    message: Vec<u8>,
    /// When it is sent again; `None` while it waits (link down, or the window is full).
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
    /// Stored row by row (see [`OutboxChange`]), not with the rest.
    #[serde(skip)]
    outbox: BTreeMap<Seq, Outgoing>,
    /// Bytes of the outbox sent and not yet acknowledged.
    #[serde(skip)]
    in_flight: usize,
    /// The outbox's messages waiting to be sent (due `None`), in order: a send looks at these
    /// only, not at every message in flight.
    #[serde(skip)]
    waiting: BTreeSet<Seq>,
    /// No message of the outbox is due before this (it may be earlier than the earliest due
    /// still there: an acknowledgement does not move it; [`Delivery::handle_timeout`] does).
    #[serde(skip)]
    next_due: Option<Instant>,
    #[serde(skip)]
    link_up: bool,
    next_expected: Seq,
    /// Not stored: nothing of a partial message was acknowledged, so the sender sends it again.
    #[serde(skip)]
    assembling: BTreeMap<Seq, Assembling>,
    complete: BTreeMap<Seq, Vec<u8>>,
}

impl Peer {
    /// Counts nothing as sent any more: every unacknowledged message waits to go (again).
    fn recall(&mut self) {
        self.in_flight = 0;
        self.next_due = None;
        for outgoing in self.outbox.values_mut() {
            outgoing.due = None;
        }
        self.waiting = self.outbox.keys().copied().collect();
    }
}

/// The delivery state of one device towards all its peers. It serialises (for the local store)
/// without its configuration, its links, the packets not yet taken and its outbox, which is
/// stored row by row through [`Delivery::take_outbox_changes`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Delivery {
    #[serde(skip)]
    config: DeliveryConfig,
    peers: HashMap<Uuid, Peer>,
    #[serde(skip)]
    transmit: VecDeque<(Uuid, Packet)>,
    delivered: VecDeque<(Uuid, Seq, Vec<u8>)>,
    acknowledged: VecDeque<(Uuid, Seq, Option<Uuid>)>,
    /// Outbox rows to write (`true`: the message is read from the outbox when taken) or delete
    /// (`false`), by (peer, seq).
    #[serde(skip)]
    outbox_changes: BTreeMap<(Uuid, Seq), bool>,
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
            outbox_changes: BTreeMap::new(),
        }
    }

    /// Sets the limits and timings (after restoring a saved state).
    pub fn set_config(&mut self, config: DeliveryConfig) {
        self.config = config;
    }

    /// Puts back the outbox as the local store kept it (after restoring a saved state); it goes out
    /// when each link comes up.
    pub fn restore_outbox(&mut self, rows: impl IntoIterator<Item = Queued>) {
        for row in rows {
            let state = self.peers.entry(row.peer).or_default();
            state.next_seq = state.next_seq.max(row.seq + 1);
            state.outbox.insert(
                row.seq,
                Outgoing {
                    tag: row.tag,
                    message: row.message,
                    due: None,
                },
            );
            state.waiting.insert(row.seq);
        }
    }

    /// The outbox rows to write and delete since the last call, to store with the state.
    pub fn take_outbox_changes(&mut self) -> Vec<OutboxChange> {
        let changes = std::mem::take(&mut self.outbox_changes);
        changes
            .into_iter()
            .filter_map(|((peer, seq), put)| {
                if !put {
                    return Some(OutboxChange::Delete { peer, seq });
                }
                // Still in the outbox: a message that left it took its put with it (delete_row).
                let outgoing = self.peers.get(&peer)?.outbox.get(&seq)?;
                Some(OutboxChange::Put(Queued {
                    peer,
                    seq,
                    tag: outgoing.tag,
                    message: outgoing.message.clone(),
                }))
            })
            .collect()
    }

    /// Records that the row of (`peer`, `seq`) goes; one never written is simply not written.
    fn delete_row(&mut self, peer: Uuid, seq: Seq) {
        if self.outbox_changes.remove(&(peer, seq)) != Some(true) {
            self.outbox_changes.insert((peer, seq), false);
        }
    }

    /// Forgets `peer` (it left the group): its outbox and what was received from it.
    pub fn forget(&mut self, peer: Uuid) {
        if let Some(state) = self.peers.remove(&peer) {
            for seq in state.outbox.into_keys() {
                self.delete_row(peer, seq);
            }
        }
        self.transmit.retain(|(to, _)| *to != peer);
        self.acknowledged.retain(|(to, _, _)| *to != peer);
    }

    /// Queues a message for `peer`, named `tag` for [`Delivery::poll_acknowledged`]; it is sent
    /// while the link is up and the window allows, and resent until acknowledged.
    ///
    /// # Errors
    /// [`SendError::TooLarge`].
    pub fn send(
        &mut self,
        now: Instant,
        peer: Uuid,
        message: &[u8],
        tag: Option<Uuid>,
    ) -> Result<Seq, SendError> {
        if message.len() > self.config.max_message_bytes {
            return Err(SendError::TooLarge(self.config.max_message_bytes));
        }
        let state = self.peers.entry(peer).or_default();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.outbox.insert(
            seq,
            Outgoing {
                tag,
                message: message.to_vec(),
                due: None,
            },
        );
        state.waiting.insert(seq);
        self.outbox_changes.insert((peer, seq), true);
        self.fill(now, peer);
        Ok(seq)
    }

    /// Sends the waiting messages to `peer`, oldest first, while its link is up and the window
    /// has room (one message always goes when nothing is in flight).
    fn fill(&mut self, now: Instant, peer: Uuid) {
        let config = &self.config;
        let Some(state) = self.peers.get_mut(&peer).filter(|s| s.link_up) else {
            return;
        };
        while let Some(&seq) = state.waiting.first() {
            let Some(outgoing) = state.outbox.get_mut(&seq) else {
                state.waiting.remove(&seq);
                continue;
            };
            let size = outgoing.message.len();
            if state.in_flight > 0 && state.in_flight + size > config.window_bytes {
                break;
            }
            state.waiting.remove(&seq);
            state.in_flight += size;
            let due = now + resend_delay(config, size);
            outgoing.due = Some(due);
            state.next_due = Some(state.next_due.map_or(due, |d| d.min(due)));
            emit(&mut self.transmit, config, peer, seq, &outgoing.message);
        }
    }

    /// The link to `peer` opened: everything unacknowledged goes out again, oldest first, as the
    /// window allows.
    pub fn link_up(&mut self, now: Instant, peer: Uuid) {
        let state = self.peers.entry(peer).or_default();
        state.link_up = true;
        state.recall();
        self.fill(now, peer);
    }

    /// The link to `peer` closed: messages wait in the outbox.
    pub fn link_down(&mut self, peer: Uuid) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.link_up = false;
            state.recall();
        }
        self.transmit.retain(|(to, _)| *to != peer);
    }

    /// Resends what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let config = &self.config;
        for (peer, state) in self.peers.iter_mut().filter(|(_, p)| p.link_up) {
            if state.next_due.is_none_or(|d| d > now) {
                continue;
            }
            state.next_due = None;
            for (seq, outgoing) in &mut state.outbox {
                let Some(mut due) = outgoing.due else {
                    continue;
                };
                if due <= now {
                    due = now + resend_delay(config, outgoing.message.len());
                    outgoing.due = Some(due);
                    emit(&mut self.transmit, config, *peer, *seq, &outgoing.message);
                }
                state.next_due = Some(state.next_due.map_or(due, |d| d.min(due)));
            }
        }
    }

    /// When [`Delivery::handle_timeout`] next has work (or may have: it is not moved on by
    /// acknowledgements, so it may come early and find nothing due).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter(|p| p.link_up)
            .filter_map(|p| p.next_due)
            .min()
    }

    /// Takes a packet from `peer`. Malformed or out-of-window packets are dropped (the sender resends).
    pub fn handle_packet(&mut self, now: Instant, peer: Uuid, packet: Packet) {
        match packet {
            Packet::Ack { seq } => {
                let Some(state) = self.peers.get_mut(&peer) else {
                    return;
                };
                let Some(outgoing) = state.outbox.remove(&seq) else {
                    return;
                };
                state.waiting.remove(&seq);
                if outgoing.due.is_some() {
                    state.in_flight = state.in_flight.saturating_sub(outgoing.message.len());
                }
                self.acknowledged.push_back((peer, seq, outgoing.tag));
                self.delete_row(peer, seq);
                self.fill(now, peer);
            }
            Packet::Chunk {
                seq,
                index,
                count,
                bytes,
            } => self.receive_chunk(peer, seq, index, count, bytes),
        }
    }

    fn receive_chunk(&mut self, peer: Uuid, seq: Seq, index: u32, count: u32, bytes: Vec<u8>) {
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

    /// The next of this device's messages that a peer acknowledged, each once, with its tag.
    pub fn poll_acknowledged(&mut self) -> Option<(Uuid, Seq, Option<Uuid>)> {
        self.acknowledged.pop_front()
    }

    /// Messages for `peer` not yet acknowledged.
    #[must_use]
    pub fn unacknowledged(&self, peer: Uuid) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.outbox.len())
    }

    /// The tags of the messages for `peer` not yet acknowledged.
    #[must_use]
    pub fn awaiting(&self, peer: Uuid) -> HashSet<Uuid> {
        self.peers
            .get(&peer)
            .map(|p| p.outbox.values().filter_map(|o| o.tag).collect())
            .unwrap_or_default()
    }
}

/// How long a message of `size` bytes waits for its acknowledgement before it is sent again.
fn resend_delay(config: &DeliveryConfig, size: usize) -> Duration {
    let windows = u32::try_from(size / config.window_bytes.max(1)).unwrap_or(u32::MAX);
    config
        .resend_after
        .saturating_mul(windows.saturating_add(1))
}

/// Puts the chunks of message `seq` for `peer` on the transmit queue.
fn emit(
    transmit: &mut VecDeque<(Uuid, Packet)>,
    config: &DeliveryConfig,
    peer: Uuid,
    seq: Seq,
    message: &[u8],
) {
    let chunks: Vec<&[u8]> = if message.is_empty() {
        vec![&[]]
    } else {
        message.chunks(config.chunk_bytes.max(1)).collect()
    };
    let count = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    for (index, bytes) in chunks.into_iter().enumerate() {
        transmit.push_back((
            peer,
            Packet::Chunk {
                seq,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                count,
                bytes: bytes.to_vec(),
            },
        ));
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
        /// Pieces of messages A put on the link during [`Lossy::run`].
        chunks_from_a: usize,
    }

    impl Lossy {
        fn new(seed: u64, loss: f64) -> Lossy {
            let config = DeliveryConfig {
                chunk_bytes: 100,
                max_message_bytes: 10_000,
                receive_window: 64,
                resend_after: Duration::from_millis(200),
                window_bytes: 2_000,
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
                chunks_from_a: 0,
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
                        if from == self.a.0 && matches!(packet, Packet::Chunk { .. }) {
                            self.chunks_from_a += 1;
                        }
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
                    target.handle_packet(self.now, from, packet);
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
                link.a.1.send(link.now, b, &message(i), None).expect("send");
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
        link.a
            .1
            .send(link.now, b, b"while offline", None)
            .expect("send");
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
        link.a.1.send(link.now, b, b"once", None).expect("send");
        assert_eq!(link.run(2).len(), 1);
        // Reconnects before the ack came back send the same message several times.
        link.a.1.send(link.now, b, b"twice?", None).expect("send");
        link.a.1.link_up(link.now, b);
        link.a.1.link_up(link.now, b);
        let delivered = link.run(5);
        assert_eq!(delivered, vec![(1, b"twice?".to_vec())], "shown once");
        assert_eq!(link.a.1.unacknowledged(b), 0);
    }

    /// Bytes of chunks on the transmit queue, taken off it.
    fn sent_bytes(delivery: &mut Delivery) -> usize {
        chunk_bytes(&std::iter::from_fn(|| delivery.poll_transmit()).collect::<Vec<_>>())
    }

    fn chunk_bytes(packets: &[(Uuid, Packet)]) -> usize {
        packets
            .iter()
            .map(|(_, p)| match p {
                Packet::Chunk { bytes, .. } => bytes.len(),
                Packet::Ack { .. } => 0,
            })
            .sum()
    }

    #[test]
    fn a_burst_waits_in_the_outbox_beyond_the_window_and_goes_as_acks_return() {
        let mut link = Lossy::new(11, 0.0);
        let b = link.b.0;
        let a = link.a.0;
        // 50 messages of 500 bytes against a 2,000-byte window: four go at once.
        for _ in 0..50 {
            link.a.1.send(link.now, b, &[7; 500], None).expect("send");
        }
        let first: Vec<(Uuid, Packet)> = std::iter::from_fn(|| link.a.1.poll_transmit()).collect();
        assert_eq!(chunk_bytes(&first), 2_000, "only the window goes");
        // Nothing more leaves while nothing is acknowledged.
        link.a
            .1
            .handle_timeout(link.now + Duration::from_millis(100));
        assert_eq!(sent_bytes(&mut link.a.1), 0);
        // The rest go as acknowledgements return: each arrives once and in order, and nothing
        // is sent twice (acknowledgements come back before the 200 ms resend timer).
        link.in_flight
            .extend(first.into_iter().map(|(to, packet)| (a, to, packet)));
        let delivered = link.run(200);
        assert_eq!(delivered.len(), 50);
        assert!(
            delivered
                .iter()
                .enumerate()
                .all(|(i, (seq, _))| *seq == i as u64)
        );
        assert_eq!(link.a.1.unacknowledged(b), 0);
        assert_eq!(
            link.chunks_from_a,
            46 * 5,
            "the other 46, each once (5 pieces each)"
        );
    }

    #[test]
    fn a_message_larger_than_the_window_goes_alone_and_waits_longer_for_its_ack() {
        let mut link = Lossy::new(12, 0.0);
        let b = link.b.0;
        link.a.1.send(link.now, b, &[1; 5_000], None).expect("send");
        link.a.1.send(link.now, b, &[2; 10], None).expect("send");
        assert_eq!(sent_bytes(&mut link.a.1), 5_000, "the large one alone");
        // 5,000 bytes span two windows of 2,000: three resend periods of 200 ms.
        link.a
            .1
            .handle_timeout(link.now + Duration::from_millis(500));
        assert_eq!(sent_bytes(&mut link.a.1), 0, "not resent before its time");
        link.a
            .1
            .handle_timeout(link.now + Duration::from_millis(600));
        assert_eq!(sent_bytes(&mut link.a.1), 5_000, "resent after it");
    }

    #[test]
    fn the_outbox_is_stored_row_by_row_and_restored() {
        let mut link = Lossy::new(13, 0.0);
        let (a, b) = (link.a.0, link.b.0);
        link.a.1.link_down(b);
        let tag = Uuid::new_v4();
        link.a
            .1
            .send(link.now, b, b"first", Some(tag))
            .expect("send");
        link.a.1.send(link.now, b, b"second", None).expect("send");
        let changes = link.a.1.take_outbox_changes();
        assert_eq!(
            changes,
            vec![
                OutboxChange::Put(Queued {
                    peer: b,
                    seq: 0,
                    tag: Some(tag),
                    message: b"first".to_vec(),
                }),
                OutboxChange::Put(Queued {
                    peer: b,
                    seq: 1,
                    tag: None,
                    message: b"second".to_vec(),
                }),
            ]
        );
        assert!(link.a.1.take_outbox_changes().is_empty(), "taken once");
        // The saved state holds no outbox; restored with its rows, the device sends them on.
        let state = crate::codec::encode(&link.a.1).expect("encodes");
        assert!(
            !state.windows(5).any(|w| w == b"first"),
            "the outbox is not in the state"
        );
        let mut restored: Delivery =
            crate::codec::decode(&state, crate::codec::Earlier::Cbor).expect("decodes");
        restored.set_config(link.b.1.config.clone());
        restored.restore_outbox(changes.into_iter().filter_map(|c| match c {
            OutboxChange::Put(row) => Some(row),
            OutboxChange::Delete { .. } => None,
        }));
        link.a.1 = restored;
        link.a.1.link_up(link.now, b);
        let delivered = link.run(5);
        assert_eq!(
            delivered,
            vec![(0, b"first".to_vec()), (1, b"second".to_vec())]
        );
        let mut acknowledged: Vec<_> =
            std::iter::from_fn(|| link.a.1.poll_acknowledged()).collect();
        acknowledged.sort();
        assert_eq!(acknowledged, vec![(b, 0, Some(tag)), (b, 1, None)]);
        assert_eq!(
            link.a.1.take_outbox_changes(),
            vec![
                OutboxChange::Delete { peer: b, seq: 0 },
                OutboxChange::Delete { peer: b, seq: 1 },
            ],
            "acknowledged rows are deleted"
        );
        // A message sent and acknowledged between two writes leaves no row behind.
        link.a.1.send(link.now, b, b"third", None).expect("send");
        link.run(2);
        assert!(link.a.1.take_outbox_changes().is_empty());
        assert_eq!(link.b.1.unacknowledged(a), 0);
    }

    #[test]
    fn oversized_and_malformed_input_is_refused() {
        let mut delivery = Delivery::new(DeliveryConfig {
            chunk_bytes: 10,
            max_message_bytes: 100,
            receive_window: 4,
            resend_after: Duration::from_secs(1),
            window_bytes: 1_000,
        });
        let peer = Uuid::new_v4();
        assert_eq!(
            delivery.send(Instant::now(), peer, &[0; 101], None),
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
            delivery.handle_packet(Instant::now(), peer, bad.clone());
            assert!(delivery.poll_delivered().is_none(), "{bad:?} was accepted");
            assert!(
                delivery.poll_transmit().is_none(),
                "{bad:?} was acknowledged"
            );
        }
        // A chunk count that changes midway is ignored, not mixed in.
        delivery.handle_packet(
            Instant::now(),
            peer,
            Packet::Chunk {
                seq: 0,
                index: 0,
                count: 2,
                bytes: vec![1],
            },
        );
        delivery.handle_packet(
            Instant::now(),
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
            Instant::now(),
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
