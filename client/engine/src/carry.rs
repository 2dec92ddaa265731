//! Messages carried for the circle, sans-IO: every device keeps the chat messages it holds (its
//! own and those it received, as MLS ciphertext, bounded), learns what each linked peer holds,
//! and hands a peer what it lacks, so that a message reaches a device that is never online
//! together with its sender. The engine seals and opens; this module only counts and chooses.
//!
//! A message is named by its **stream** (its sender device's incarnation: a hash of the device's
//! MLS signature key, so a device that lost its state starts a new stream) and its **sequence
//! number** in that stream. Both travel outside the ciphertext for deduplication, and the sequence
//! number again inside it, where MLS authenticates it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use web_time::{Duration, Instant};

use crate::delivery::Seq;

/// A sending device's incarnation (see the module's documentation).
pub type Stream = Uuid;

/// The stream of the device whose MLS signature public key is `signature_key`.
#[must_use]
pub fn stream_of(signature_key: &[u8]) -> Stream {
    let digest = Sha256::new()
        .chain_update(b"tessera message stream v1")
        .chain_update(signature_key)
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// Sequence numbers as disjoint inclusive ranges, sorted and never adjacent: what a device holds
/// of one stream is almost always one range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    /// Whether `n` is in.
    #[must_use]
    pub fn contains(&self, n: u64) -> bool {
        let at = self.0.partition_point(|(_, last)| *last < n);
        self.0.get(at).is_some_and(|(first, _)| *first <= n)
    }

    /// Adds `n`; false when it was in already.
    pub fn insert(&mut self, n: u64) -> bool {
        self.insert_range(n, n)
    }

    /// Adds `first..=last`, merging what it overlaps or touches; false when all of it was in.
    pub fn insert_range(&mut self, first: u64, last: u64) -> bool {
        if first > last {
            return false;
        }
        // The ranges that overlap or touch it are those from `lo` (the first not wholly before
        // `first - 1`) to `hi` (the first wholly after `last + 1`).
        let lo = self.0.partition_point(|(_, l)| l.saturating_add(1) < first);
        let hi = self
            .0
            .partition_point(|(f, _)| last.checked_add(1).is_none_or(|next| *f <= next));
        if lo == hi {
            self.0.insert(lo, (first, last));
            return true;
        }
        let merged = (self.0[lo].0.min(first), self.0[hi - 1].1.max(last));
        if hi == lo + 1 && self.0[lo] == merged {
            return false;
        }
        self.0.splice(lo..hi, [merged]);
        true
    }

    /// Adds every number of `other`.
    pub fn extend(&mut self, other: &Ranges) {
        for &(first, last) in &other.0 {
            self.insert_range(first, last);
        }
    }

    /// How many numbers of `self` from `floor` on are not in `other`.
    #[must_use]
    pub fn count_missing_from(&self, other: &Ranges, floor: u64) -> u64 {
        let mut missing = 0u64;
        for &(first, last) in &self.0 {
            let first = first.max(floor);
            if first > last {
                continue;
            }
            let covered: u64 = other
                .0
                .iter()
                .map(|&(f, l)| {
                    let (f, l) = (f.max(first), l.min(last));
                    if f <= l { l - f + 1 } else { 0 }
                })
                .fold(0, u64::saturating_add);
            missing =
                missing.saturating_add((last - first).saturating_add(1).saturating_sub(covered));
        }
        missing
    }

    /// How many numbers are in.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.0
            .iter()
            .map(|(first, last)| (last - first).saturating_add(1))
            .fold(0, u64::saturating_add)
    }

    /// The smallest number in.
    #[must_use]
    pub fn first(&self) -> Option<u64> {
        self.0.first().map(|(first, _)| *first)
    }

    /// The ranges, lowest first.
    #[must_use]
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Whether the ranges are well formed (sorted, disjoint, not adjacent), as a peer must send
    /// them.
    #[must_use]
    pub fn well_formed(&self) -> bool {
        self.0.iter().all(|(first, last)| first <= last)
            && self
                .0
                .windows(2)
                .all(|w| w[0].1.checked_add(1).is_some_and(|next| next < w[1].0))
    }

    /// The numbers not in, as inclusive ranges, lowest first.
    fn gaps(&self) -> Vec<(u64, u64)> {
        let mut gaps = Vec::with_capacity(self.0.len() + 1);
        let mut next = Some(0);
        for &(first, last) in &self.0 {
            if let Some(n) = next
                && n < first
            {
                gaps.push((n, first - 1));
            }
            next = last.checked_add(1);
        }
        if let Some(n) = next {
            gaps.push((n, u64::MAX));
        }
        gaps
    }

    /// Keeps at most `most` ranges: the lowest are merged into one, counting the gaps between
    /// them as held (given up on).
    fn cap(&mut self, most: usize) {
        if self.0.len() > most && most > 0 {
            let cut = self.0.len() - most;
            let first = self.0[0].0;
            let last = self.0[cut].1;
            self.0.drain(..cut);
            self.0[0] = (first, last);
        }
    }
}

/// What a device tells each peer it links with (a link packet of its own, not through the
/// outbox: it is sent again whenever it changes and on every new link).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holdings {
    /// The MLS epoch the sender joined the group at: nothing older is readable there.
    pub joined: u64,
    /// What the sender holds, by stream.
    pub held: Vec<(Stream, Ranges)>,
    /// What other devices hold of the receiver's own stream, as far as the sender knows: the
    /// receiver's messages that reached them through other devices.
    pub seen: Vec<(Uuid, Ranges)>,
    /// How many messages the sender keeps that the receiver lacks and can read (made since it
    /// joined), by the receiver's last holdings; 0 while those are unknown. It counts what the
    /// receiver cannot count itself: the messages of a stream it holds nothing of yet.
    pub owed: u64,
}

impl Holdings {
    /// Whether a peer's holdings are within what a device reads: at most [`MAX_STREAMS`] streams
    /// and devices, [`MAX_RANGES`] ranges each, all well formed.
    #[must_use]
    pub fn within_bounds(&self) -> bool {
        self.held.len() <= MAX_STREAMS
            && self.seen.len() <= MAX_STREAMS
            && self
                .held
                .iter()
                .map(|(_, r)| r)
                .chain(self.seen.iter().map(|(_, r)| r))
                .all(|r| r.0.len() <= MAX_RANGES && r.well_formed())
    }
}

/// The most streams (and devices) one summary names.
pub const MAX_STREAMS: usize = 256;
/// The most ranges one stream has in a summary (older gaps are given up, see [`Ranges`]).
pub const MAX_RANGES: usize = 16;

/// How much a device keeps for others, and how it hands it on.
#[derive(Debug, Clone)]
pub struct CarryConfig {
    /// The most messages kept; the oldest go first beyond it.
    pub max_messages: usize,
    /// The most bytes of ciphertext kept; the oldest go first beyond it.
    pub max_bytes: usize,
    /// How long (by the senders' clocks, behind the newest message kept) a message is kept.
    pub max_age_ms: i64,
    /// How long a device leaves a message to its sender while the sender is online, before it
    /// carries it to a peer that still lacks it.
    pub grace: Duration,
    /// The most messages carried to one peer and not yet acknowledged.
    pub batch: usize,
    /// The shortest time between two summaries to one peer.
    pub summary_every: Duration,
}

impl Default for CarryConfig {
    fn default() -> Self {
        CarryConfig {
            max_messages: 10_000,
            max_bytes: 64 * 1024 * 1024,
            max_age_ms: 30 * 24 * 3600 * 1000,
            grace: Duration::from_secs(3),
            batch: 256,
            summary_every: Duration::from_millis(500),
        }
    }
}

/// A message kept for others, as the local store keeps it (one row each; IndexedDB keeps it as
/// this serializes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedRow {
    /// Its stream.
    pub stream: Stream,
    /// Its number in the stream.
    pub seq: u64,
    /// The MLS epoch it was made in.
    pub epoch: u64,
    /// When its sender wrote it (its sender's clock, ms since the Unix epoch).
    pub sent_at: i64,
    /// Its message id.
    pub id: Uuid,
    /// The MLS application message.
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
}

/// A change to the stored messages kept for others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarriedChange {
    /// A message to keep.
    Put(CarriedRow),
    /// A message dropped: delete its row.
    Delete {
        /// Its stream.
        stream: Stream,
        /// Its number.
        seq: u64,
    },
}

#[derive(Debug)]
struct Kept {
    row: CarriedRow,
    /// When this device took it (none for what was restored: no grace is owed then).
    taken: Option<Instant>,
}

/// One message to hand a peer: its name and ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The peer.
    pub peer: Uuid,
    /// Its stream.
    pub stream: Stream,
    /// Its number.
    pub seq: u64,
    /// The MLS application message.
    pub message: Vec<u8>,
}

/// A device's carrying state. Its saved part (this device's next number and what it holds) goes
/// in the engine's record; the messages kept go row by row ([`Carry::take_changes`]).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Carry {
    /// This device's next sequence number in its own stream.
    next_seq: u64,
    /// What this device holds (sent, received, or given up on), by stream.
    held: BTreeMap<Stream, Ranges>,
    /// The epoch this device joined the group at.
    joined: Option<u64>,
    /// Messages dropped from the store before every device of the group was known to hold them.
    dropped_unconfirmed: u64,
    #[serde(skip)]
    config: CarryConfig,
    #[serde(skip)]
    kept: BTreeMap<(Stream, u64), Kept>,
    #[serde(skip)]
    kept_bytes: usize,
    /// The kept messages by their senders' time, oldest first: what [`Carry::trim`] drops.
    #[serde(skip)]
    by_age: BTreeSet<(i64, Stream, u64)>,
    /// The store's rows to write (`true`) or delete (`false`).
    #[serde(skip)]
    changes: BTreeMap<(Stream, u64), bool>,
    /// The group's other devices.
    #[serde(skip)]
    devices: BTreeSet<Uuid>,
    /// The last holdings each peer sent.
    #[serde(skip)]
    peers: HashMap<Uuid, Holdings>,
    /// What other devices hold of this device's stream, as far as this device knows.
    #[serde(skip)]
    seen: BTreeMap<Uuid, Ranges>,
    /// Messages handed to each peer and not acknowledged yet.
    #[serde(skip)]
    in_flight: HashMap<Uuid, BTreeSet<(Stream, u64)>>,
    /// Which handover each delivery sequence number towards a peer is.
    #[serde(skip)]
    by_delivery: HashMap<(Uuid, Seq), (Stream, u64)>,
    /// Peers linked now, and when each may next be sent holdings.
    #[serde(skip)]
    linked: BTreeMap<Uuid, Option<Instant>>,
    /// Peers whose holdings changed since they were last sent.
    #[serde(skip)]
    summary_owed: BTreeSet<Uuid>,
    /// When the store is next looked through for what linked peers lack.
    #[serde(skip)]
    check_at: Option<Instant>,
    /// Receipts already told, by peer and message id.
    #[serde(skip)]
    told: HashSet<(Uuid, Uuid)>,
    /// The `owed` count each linked peer was last sent.
    #[serde(skip)]
    told_owed: HashMap<Uuid, u64>,
    /// Whether holdings arrived since receipts were last looked for.
    #[serde(skip)]
    receipts_due: bool,
}

/// The messages of `kept` that `holdings` lack, by stream and number: only the gaps in the
/// holdings are looked through, so a peer that holds nearly everything costs nearly nothing.
fn lacking<'a>(
    held: &'a BTreeMap<Stream, Ranges>,
    kept: &'a BTreeMap<(Stream, u64), Kept>,
    holdings: &'a Holdings,
    streams: impl Fn(&Stream) -> bool + 'a,
) -> impl Iterator<Item = (&'a (Stream, u64), &'a Kept)> + 'a {
    held.keys()
        .filter(move |s| streams(s))
        .flat_map(move |stream| {
            let gaps = holdings
                .held
                .iter()
                .find(|(s, _)| s == stream)
                .map_or_else(|| vec![(0, u64::MAX)], |(_, r)| r.gaps());
            gaps.into_iter()
                .flat_map(move |(first, last)| kept.range((*stream, first)..=(*stream, last)))
        })
}

/// What the engine knows of the group when the store is looked through.
pub struct GroupNow<'a> {
    /// The stream of each group device.
    pub streams: &'a BTreeMap<Stream, Uuid>,
    /// Whether a device is online.
    pub online: &'a dyn Fn(Uuid) -> bool,
    /// This device's stream.
    pub own: Stream,
}

impl Carry {
    /// Sets the limits (after restoring a saved state).
    pub fn set_config(&mut self, config: CarryConfig) {
        self.config = config;
    }

    /// Puts back the kept messages as the local store kept them.
    pub fn restore(&mut self, rows: impl IntoIterator<Item = CarriedRow>) {
        for row in rows {
            self.kept_bytes += row.message.len();
            self.by_age.insert((row.sent_at, row.stream, row.seq));
            self.kept
                .insert((row.stream, row.seq), Kept { row, taken: None });
        }
    }

    /// Notes a message handed to `peer` as delivery's `seq` (rebuilt from the outbox after a
    /// restart too), so that it is not handed again before it is acknowledged.
    pub fn handed(&mut self, peer: Uuid, delivery_seq: Seq, stream: Stream, seq: u64) {
        self.in_flight
            .entry(peer)
            .or_default()
            .insert((stream, seq));
        self.by_delivery.insert((peer, delivery_seq), (stream, seq));
    }

    /// The next number of this device's own stream.
    pub fn next_own_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The device joined (or created) the group at `epoch`.
    pub fn joined_at(&mut self, epoch: u64) {
        self.joined = Some(epoch);
    }

    /// Whether this device holds (`stream`, `seq`).
    #[must_use]
    pub fn holds(&self, stream: Stream, seq: u64) -> bool {
        self.held.get(&stream).is_some_and(|r| r.contains(seq))
    }

    /// Keeps a message this device sent or opened, for the peers that lack it; returns false when
    /// it held it already.
    pub fn keep(&mut self, now: Instant, row: CarriedRow) -> bool {
        if !self.held.entry(row.stream).or_default().insert(row.seq) {
            return false;
        }
        self.owe_summaries();
        self.check_at = Some(now);
        let key = (row.stream, row.seq);
        self.kept_bytes += row.message.len();
        self.by_age.insert((row.sent_at, row.stream, row.seq));
        self.kept.insert(
            key,
            Kept {
                row,
                taken: Some(now),
            },
        );
        self.changes.insert(key, true);
        self.trim();
        true
    }

    /// Counts (`stream`, `seq`) as held without keeping it (its sender's own first copy, or one
    /// refused as unreadable here).
    pub fn mark_held(&mut self, stream: Stream, seq: u64) {
        if self.held.entry(stream).or_default().insert(seq) {
            self.owe_summaries();
        }
    }

    fn owe_summaries(&mut self) {
        self.summary_owed.extend(self.linked.keys().copied());
    }

    /// Drops the oldest messages beyond the bounds.
    fn trim(&mut self) {
        let newest = self.by_age.last().map(|(sent_at, _, _)| *sent_at);
        let oldest_allowed = newest.map(|n| n.saturating_sub(self.config.max_age_ms));
        while let Some(&(sent_at, stream, seq)) = self.by_age.first() {
            let over = self.kept.len() > self.config.max_messages
                || self.kept_bytes > self.config.max_bytes;
            let too_old = oldest_allowed.is_some_and(|limit| sent_at < limit);
            if !over && !too_old {
                return;
            }
            self.drop_kept((stream, seq));
        }
    }

    fn drop_kept(&mut self, key: (Stream, u64)) {
        if let Some(kept) = self.kept.remove(&key) {
            self.kept_bytes -= kept.row.message.len();
            self.by_age.remove(&(kept.row.sent_at, key.0, key.1));
            // A device whose holdings are unknown here may lack it.
            let everyone_has = self.devices.iter().all(|d| {
                self.peers
                    .get(d)
                    .is_some_and(|h| h.held.iter().any(|(s, r)| *s == key.0 && r.contains(key.1)))
            });
            if !everyone_has {
                self.dropped_unconfirmed += 1;
            }
            if self.changes.remove(&key) != Some(true) {
                self.changes.insert(key, false);
            }
        }
    }

    /// The store's row changes since the last call.
    pub fn take_changes(&mut self) -> Vec<CarriedChange> {
        let changes = std::mem::take(&mut self.changes);
        changes
            .into_iter()
            .filter_map(|((stream, seq), put)| {
                if !put {
                    return Some(CarriedChange::Delete { stream, seq });
                }
                let kept = self.kept.get(&(stream, seq))?;
                Some(CarriedChange::Put(kept.row.clone()))
            })
            .collect()
    }

    /// The link to `peer` opened: it is sent this device's holdings.
    pub fn link_up(&mut self, peer: Uuid) {
        self.linked.insert(peer, None);
        self.summary_owed.insert(peer);
        self.told_owed.remove(&peer);
    }

    /// The link to `peer` closed.
    pub fn link_down(&mut self, peer: Uuid) {
        self.linked.remove(&peer);
        self.summary_owed.remove(&peer);
    }

    /// The group's other devices now.
    pub fn set_devices(&mut self, devices: impl IntoIterator<Item = Uuid>) {
        self.devices = devices.into_iter().collect();
    }

    /// `peer` left the group.
    pub fn forget(&mut self, peer: Uuid) {
        self.link_down(peer);
        self.peers.remove(&peer);
        self.seen.remove(&peer);
        self.in_flight.remove(&peer);
        self.by_delivery.retain(|(p, _), _| *p != peer);
    }

    /// A peer's holdings arrived; `own` is this device's stream, for the receipts.
    pub fn handle_holdings(&mut self, now: Instant, peer: Uuid, holdings: Holdings, own: Stream) {
        if let Some((_, mine)) = holdings.held.iter().find(|(s, _)| *s == own) {
            self.seen.insert(peer, mine.clone());
        }
        for (device, ranges) in &holdings.seen {
            if *device != peer {
                self.seen.entry(*device).or_default().extend(ranges);
            }
        }
        self.peers.insert(peer, holdings);
        self.check_at = Some(now);
        self.receipts_due = true;
        if self.told_owed.get(&peer) != Some(&self.owed_to(peer)) {
            self.summary_owed.insert(peer);
        }
    }

    /// How many kept messages `peer` lacks and can read, by its last holdings.
    fn owed_to(&self, peer: Uuid) -> u64 {
        let Some(holdings) = self.peers.get(&peer) else {
            return 0;
        };
        let readable = lacking(&self.held, &self.kept, holdings, |_| true)
            .filter(|(_, kept)| kept.row.epoch >= holdings.joined);
        u64::try_from(readable.count()).unwrap_or(u64::MAX)
    }

    /// A handover was acknowledged by `peer`.
    pub fn acknowledged(&mut self, peer: Uuid, delivery_seq: Seq) {
        if let Some(key) = self.by_delivery.remove(&(peer, delivery_seq)) {
            if let Some(set) = self.in_flight.get_mut(&peer) {
                set.remove(&key);
            }
            if let Some(h) = self.peers.get_mut(&peer) {
                match h.held.iter_mut().find(|(s, _)| *s == key.0) {
                    Some((_, r)) => {
                        r.insert(key.1);
                    }
                    None => {
                        let mut r = Ranges::default();
                        r.insert(key.1);
                        h.held.push((key.0, r));
                    }
                }
            }
        }
    }

    /// A group device went offline: its messages may now be owed to others.
    pub fn sender_left(&mut self, now: Instant) {
        self.check_at = Some(now);
    }

    /// Receipts for this device's own messages that other devices hold, not told yet:
    /// (message id, device).
    pub fn receipts(&mut self, own: Stream) -> Vec<(Uuid, Uuid)> {
        let mut out = Vec::new();
        if !std::mem::take(&mut self.receipts_due) {
            return out;
        }
        for (device, ranges) in &self.seen {
            for ((_, seq), kept) in self.kept.range((own, 0)..=(own, u64::MAX)) {
                if ranges.contains(*seq) && self.told.insert((*device, kept.row.id)) {
                    out.push((kept.row.id, *device));
                }
            }
        }
        out
    }

    /// Notes a receipt told already (a direct acknowledgement).
    pub fn told(&mut self, device: Uuid, id: Uuid) -> bool {
        self.told.insert((device, id))
    }

    /// Holdings owed to linked peers now: (peer, holdings); `streams` names each group device's
    /// stream (device → stream), for the receipts of each peer's own messages.
    pub fn poll_summaries(
        &mut self,
        now: Instant,
        streams: &BTreeMap<Uuid, Stream>,
    ) -> Vec<(Uuid, Holdings)> {
        let due: Vec<Uuid> = self
            .summary_owed
            .iter()
            .copied()
            .filter(|p| {
                self.linked
                    .get(p)
                    .is_some_and(|next| next.is_none_or(|at| at <= now))
            })
            .collect();
        let mut out = Vec::new();
        for peer in due {
            self.summary_owed.remove(&peer);
            self.linked
                .insert(peer, Some(now + self.config.summary_every));
            let holdings = self.holdings_for(peer, streams);
            self.told_owed.insert(peer, holdings.owed);
            out.push((peer, holdings));
        }
        out
    }

    fn holdings_for(&self, peer: Uuid, streams: &BTreeMap<Uuid, Stream>) -> Holdings {
        let mut held: Vec<(Stream, Ranges)> = self
            .held
            .iter()
            .map(|(s, r)| {
                let mut r = r.clone();
                r.cap(MAX_RANGES);
                (*s, r)
            })
            .collect();
        // Streams of the group's devices first: a summary names at most MAX_STREAMS.
        let current: BTreeSet<Stream> = streams.values().copied().collect();
        held.sort_by_key(|(s, _)| !current.contains(s));
        held.truncate(MAX_STREAMS);
        let seen = streams
            .get(&peer)
            .map(|theirs| {
                self.peers
                    .iter()
                    .filter(|(d, _)| **d != peer)
                    .filter_map(|(d, h)| {
                        let (_, r) = h.held.iter().find(|(s, _)| s == theirs)?;
                        let mut r = r.clone();
                        r.cap(MAX_RANGES);
                        Some((*d, r))
                    })
                    .take(MAX_STREAMS)
                    .collect()
            })
            .unwrap_or_default();
        Holdings {
            joined: self.joined.unwrap_or(0),
            held,
            seen,
            owed: self.owed_to(peer),
        }
    }

    /// Messages to hand linked peers now, oldest first within each stream; each is handed once
    /// until acknowledged.
    pub fn poll_handovers(&mut self, now: Instant, group: &GroupNow<'_>) -> Vec<Handover> {
        if self.check_at.is_none_or(|at| at > now) {
            return Vec::new();
        }
        self.check_at = None;
        let mut out = Vec::new();
        let peers: Vec<Uuid> = self.linked.keys().copied().collect();
        for peer in peers {
            let Some(holdings) = self.peers.get(&peer) else {
                continue;
            };
            let in_flight = self.in_flight.entry(peer).or_default();
            let mut room = self.config.batch.saturating_sub(in_flight.len());
            // Its sender's own outbox hands it on; a peer holds its own messages.
            let carried =
                |stream: &Stream| *stream != group.own && group.streams.get(stream) != Some(&peer);
            for (key, kept) in lacking(&self.held, &self.kept, holdings, carried) {
                if room == 0 {
                    break;
                }
                let (stream, seq) = *key;
                let sender = group.streams.get(&stream).copied();
                if kept.row.epoch < holdings.joined || in_flight.contains(key) {
                    continue;
                }
                // While its sender is online, it is left to the sender for a while.
                if let (Some(sender), Some(taken)) = (sender, kept.taken)
                    && (group.online)(sender)
                    && taken + self.config.grace > now
                {
                    let at = taken + self.config.grace;
                    self.check_at = Some(self.check_at.map_or(at, |c| c.min(at)));
                    continue;
                }
                in_flight.insert(*key);
                room -= 1;
                out.push(Handover {
                    peer,
                    stream,
                    seq,
                    message: kept.row.message.clone(),
                });
            }
        }
        out
    }

    /// Whether [`Carry::poll_summaries`], [`Carry::poll_handovers`] or [`Carry::receipts`] has
    /// work now (cheap: the engine asks after every input).
    #[must_use]
    pub fn due(&self, now: Instant) -> bool {
        self.receipts_due
            || self.check_at.is_some_and(|at| at <= now)
            || self.summary_owed.iter().any(|p| {
                self.linked
                    .get(p)
                    .is_some_and(|next| next.is_none_or(|at| at <= now))
            })
    }

    /// When [`Carry::poll_summaries`] or [`Carry::poll_handovers`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let summaries = self
            .summary_owed
            .iter()
            .filter_map(|p| self.linked.get(p).copied().flatten());
        summaries.chain(self.check_at).min()
    }

    /// Messages kept for others now, and their bytes.
    #[must_use]
    pub fn kept(&self) -> (usize, usize) {
        (self.kept.len(), self.kept_bytes)
    }

    /// Messages dropped before every device was known to hold them.
    #[must_use]
    pub fn dropped_unconfirmed(&self) -> u64 {
        self.dropped_unconfirmed
    }

    /// Messages linked peers hold that this device lacks: counted here in the streams it holds
    /// some of (so that a stream from before this device joined counts for nothing), and as the
    /// peers count them ([`Holdings::owed`]), whichever is more.
    #[must_use]
    pub fn missing(&self) -> u64 {
        let mut known: BTreeMap<Stream, Ranges> = BTreeMap::new();
        for holdings in self.peers.values() {
            for (stream, ranges) in &holdings.held {
                if self.held.contains_key(stream) {
                    known.entry(*stream).or_default().extend(ranges);
                }
            }
        }
        let known = known
            .iter()
            .map(|(stream, ranges)| {
                let mine = &self.held[stream];
                ranges.count_missing_from(mine, mine.first().unwrap_or(0))
            })
            .fold(0, u64::saturating_add);
        // What a linked peer says it keeps for this device, counting streams it holds none of.
        let owed = self
            .linked
            .keys()
            .filter_map(|p| self.peers.get(p))
            .map(|h| h.owed)
            .max()
            .unwrap_or(0);
        known.max(owed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_count_and_cap() {
        let mut r = Ranges::default();
        for n in [5, 3, 4, 10, 0, 1, 2, 11, 9] {
            assert!(r.insert(n), "{n} was new");
        }
        assert!(!r.insert(4), "a repeat is not new");
        assert_eq!(r.ranges(), &[(0, 5), (9, 11)]);
        assert_eq!(r.count(), 9);
        assert!(r.contains(0) && r.contains(5) && r.contains(10));
        assert!(!r.contains(6) && !r.contains(8) && !r.contains(12));
        assert!(r.well_formed());
        assert_eq!(r.gaps(), [(6, 8), (12, u64::MAX)]);
        assert_eq!(Ranges::default().gaps(), [(0, u64::MAX)]);
        let mut gappy = Ranges::default();
        for n in (0..40).step_by(2) {
            gappy.insert(n);
        }
        gappy.cap(4);
        assert_eq!(gappy.ranges(), &[(0, 32), (34, 34), (36, 36), (38, 38)]);
        assert!(!Ranges(vec![(3, 2)]).well_formed());
        assert!(!Ranges(vec![(0, 2), (3, 4)]).well_formed(), "adjacent");
        assert!(!Ranges(vec![(5, 6), (0, 1)]).well_formed(), "unsorted");
        let mut top = Ranges::default();
        assert!(top.insert(u64::MAX) && top.insert(u64::MAX - 1));
        assert_eq!(top.ranges(), &[(u64::MAX - 1, u64::MAX)]);
        assert_eq!(top.gaps(), [(0, u64::MAX - 2)], "none past the top");
        let mut all = Ranges::default();
        assert!(
            all.insert_range(0, u64::MAX),
            "a peer's widest claim costs one step"
        );
        assert!(!all.insert_range(7, 9_000));
        assert!(all.gaps().is_empty());
        assert_eq!(all.count(), u64::MAX, "saturates");
        assert_eq!(all.count_missing_from(&r, 0), u64::MAX - 9, "saturates too");
        let mut joined = Ranges(vec![(0, 2), (5, 6), (9, 9)]);
        assert!(joined.insert_range(3, 8));
        assert_eq!(joined.ranges(), &[(0, 9)]);
        assert_eq!(r.count_missing_from(&Ranges(vec![(0, 1), (10, 20)]), 1), 5);
    }

    fn row(stream: Stream, seq: u64, sent_at: i64, bytes: usize) -> CarriedRow {
        CarriedRow {
            stream,
            seq,
            epoch: 1,
            sent_at,
            id: Uuid::new_v4(),
            message: vec![0; bytes],
        }
    }

    #[test]
    fn the_store_keeps_within_its_bounds_dropping_the_oldest_first() {
        let now = Instant::now();
        let mut carry = Carry::default();
        carry.set_config(CarryConfig {
            max_messages: 100,
            max_bytes: 10_000,
            max_age_ms: 1_000_000,
            ..CarryConfig::default()
        });
        // One other device whose holdings are unknown: what is dropped may be lost to it.
        carry.set_devices([Uuid::new_v4()]);
        let stream = Uuid::new_v4();
        for seq in 0..150 {
            assert!(carry.keep(
                now,
                row(stream, seq, 1_000 + i64::try_from(seq).expect("small"), 50)
            ));
        }
        assert_eq!(carry.kept(), (100, 5_000));
        assert!(!carry.holds(Uuid::new_v4(), 0));
        assert!(
            carry.holds(stream, 0),
            "dropped is still held: it is not asked for again"
        );
        assert!(carry.kept.contains_key(&(stream, 149)) && !carry.kept.contains_key(&(stream, 49)));
        assert_eq!(carry.dropped_unconfirmed(), 50);
        for seq in 150..160 {
            carry.keep(now, row(stream, seq, 2_000, 900));
        }
        assert!(
            carry.kept().1 <= 10_000,
            "bytes bounded: {:?}",
            carry.kept()
        );
        // Ancient by the newest sender's clock.
        carry.keep(now, row(stream, 500, 10_000_000, 1));
        assert_eq!(carry.kept().0, 1, "only the newest is young enough");
        let changes = carry.take_changes();
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, CarriedChange::Put(_)))
                .count(),
            1,
            "rows kept and dropped between two writes are never written"
        );
    }

    #[test]
    fn a_peer_is_handed_what_it_lacks_once_after_the_senders_grace() {
        let start = Instant::now();
        let mut carry = Carry::default();
        let (own, sender_stream) = (Uuid::new_v4(), Uuid::new_v4());
        let (sender, peer) = (Uuid::new_v4(), Uuid::new_v4());
        for seq in 0..3 {
            carry.keep(start, row(sender_stream, seq, 1, 10));
        }
        carry.keep(start, row(own, 0, 1, 10));
        carry.link_up(peer);
        let mut theirs = Ranges::default();
        theirs.insert(0);
        carry.handle_holdings(
            start,
            peer,
            Holdings {
                joined: 0,
                held: vec![(sender_stream, theirs)],
                seen: Vec::new(),
                owed: 0,
            },
            own,
        );
        let streams: BTreeMap<Stream, Uuid> = [(sender_stream, sender)].into();
        let online = |d: Uuid| d == sender;
        let group = GroupNow {
            streams: &streams,
            online: &online,
            own,
        };
        assert!(
            carry.poll_handovers(start, &group).is_empty(),
            "the sender is online: its turn"
        );
        let later = start + CarryConfig::default().grace;
        assert_eq!(carry.poll_timeout(), Some(later).min(carry.poll_timeout()));
        let handed = carry.poll_handovers(later, &group);
        let seqs: Vec<u64> = handed.iter().map(|h| h.seq).collect();
        assert_eq!(
            seqs,
            [1, 2],
            "what it lacks, not its own stream's, not what it holds"
        );
        carry.handed(peer, 0, sender_stream, 1);
        carry.handed(peer, 1, sender_stream, 2);
        carry.sender_left(later);
        assert!(
            carry.poll_handovers(later, &group).is_empty(),
            "in flight: not again"
        );
        carry.acknowledged(peer, 0);
        carry.link_down(peer);
        carry.link_up(peer);
        carry.sender_left(later);
        let again: Vec<u64> = carry
            .poll_handovers(later, &group)
            .iter()
            .map(|h| h.seq)
            .collect();
        assert!(
            again.is_empty(),
            "2 is still in flight (its outbox row resends it): {again:?}"
        );
    }
}
