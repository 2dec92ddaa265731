//! Signal payloads larger than the server's frame limit: split into [`SignalPayload::Piece`]s by
//! the sender, put together again, within bounds, by the receiver.
//!
//! A Welcome carries the group's whole ratchet tree, about 1 KB per device (each leaf holds a
//! device certificate), so past a few dozen devices it no longer fits one 64 KiB frame; an
//! answer to a catch-up request may not either. The server relays a connection's frames in
//! order, so pieces arrive in order: anything else is refused.

use std::time::Duration;

use uuid::Uuid;
use web_time::Instant;

use crate::payload::{Malformed, SignalPayload};

/// The largest payload put together from pieces (a Welcome into a group of 10,000 devices).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// Senders whose payloads may be in pieces at once; the oldest unfinished one is dropped beyond.
pub const MAX_UNFINISHED: usize = 8;

/// How long an unfinished payload waits for its next piece before it is dropped.
pub const PIECE_TIMEOUT: Duration = Duration::from_secs(60);

/// The smallest share of a payload one piece carries, whatever the frame limit.
const MIN_PART_BYTES: usize = 1024;

/// Bytes `c` takes once escaped inside a JSON string.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Splits a payload's JSON text into pieces whose `part`s, escaped as JSON strings, take at most
/// `part_bytes` each (at least [`MIN_PART_BYTES`]).
#[must_use]
pub fn split(json: &str, id: u64, part_bytes: usize) -> Vec<SignalPayload> {
    let budget = part_bytes.max(MIN_PART_BYTES);
    let mut parts = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (at, c) in json.char_indices() {
        let cost = escaped_len(c);
        if used + cost > budget {
            parts.push(&json[start..at]);
            start = at;
            used = 0;
        }
        used += cost;
    }
    parts.push(&json[start..]);
    let n = u32::try_from(parts.len()).unwrap_or(u32::MAX);
    parts
        .into_iter()
        .zip(0..)
        .map(|(part, i)| SignalPayload::Piece {
            id,
            i,
            n,
            part: part.to_owned(),
        })
        .collect()
}

/// A payload coming in pieces from one sender.
#[derive(Debug)]
struct Unfinished {
    from: Uuid,
    id: u64,
    n: u32,
    received: u32,
    text: String,
    last: Instant,
}

/// Puts pieces together: one payload per sender at a time, at most [`MAX_UNFINISHED`] senders,
/// [`MAX_PAYLOAD_BYTES`] each, each dropped after [`PIECE_TIMEOUT`] without a piece.
#[derive(Debug, Default)]
pub struct Assembler {
    unfinished: Vec<Unfinished>,
}

impl Assembler {
    /// Receives piece `i` of `n` of payload `id` from `from`: the whole payload once its last piece
    /// is in.
    ///
    /// # Errors
    /// A piece out of order, of an unknown payload, or past the size bound: that sender's
    /// unfinished payload is dropped.
    pub fn receive(
        &mut self,
        now: Instant,
        from: Uuid,
        piece: (u64, u32, u32),
        part: &str,
    ) -> Result<Option<SignalPayload>, Malformed> {
        let (id, i, n) = piece;
        if i == 0 {
            // A sender starts a new payload only once its last one is finished or abandoned.
            self.unfinished.retain(|u| u.from != from);
            if n == 0 {
                return Err(Malformed("payload piece"));
            }
            if self.unfinished.len() >= MAX_UNFINISHED {
                self.unfinished.remove(0);
            }
            self.unfinished.push(Unfinished {
                from,
                id,
                n,
                received: 0,
                text: String::new(),
                last: now,
            });
        }
        let Some(at) = self.unfinished.iter().position(|u| u.from == from) else {
            return Err(Malformed("payload piece"));
        };
        let entry = &mut self.unfinished[at];
        if entry.id != id
            || entry.n != n
            || entry.received != i
            || entry.text.len() + part.len() > MAX_PAYLOAD_BYTES
        {
            self.unfinished.remove(at);
            return Err(Malformed("payload piece"));
        }
        entry.text.push_str(part);
        entry.received += 1;
        entry.last = now;
        if entry.received < entry.n {
            return Ok(None);
        }
        let done = self.unfinished.remove(at);
        match crate::codec::from_json::<SignalPayload>(&done.text) {
            Ok(SignalPayload::Piece { .. }) | Err(_) => Err(Malformed("payload in pieces")),
            Ok(payload) => Ok(Some(payload)),
        }
    }

    /// Drops what waited too long for its next piece.
    pub fn expire(&mut self, now: Instant) {
        self.unfinished.retain(|u| u.last + PIECE_TIMEOUT > now);
    }

    /// When [`Assembler::expire`] next drops something.
    #[must_use]
    pub fn next_expiry(&self) -> Option<Instant> {
        self.unfinished.iter().map(|u| u.last + PIECE_TIMEOUT).min()
    }

    /// Bytes held in unfinished payloads.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.unfinished.iter().map(|u| u.text.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A piece's id, index, count and part.
    type Part = (u64, u32, u32, String);

    fn parts(pieces: &[SignalPayload]) -> Vec<Part> {
        pieces
            .iter()
            .map(|p| match p {
                SignalPayload::Piece { id, i, n, part } => (*id, *i, *n, part.clone()),
                other => panic!("not a piece: {other:?}"),
            })
            .collect()
    }

    fn welcome(size: usize) -> SignalPayload {
        SignalPayload::Welcome {
            welcome: vec![0x5a; size * 3 / 4].into(),
            next: 7,
        }
    }

    #[test]
    fn a_payload_split_and_put_together_is_the_same_and_every_part_fits() {
        let payload = welcome(100_000);
        let json = serde_json::to_string(&payload).expect("json");
        let pieces = split(&json, 9, 8_000);
        let escaped = serde_json::to_string(&json).expect("json").len() - 2;
        let fewest = escaped.div_ceil(8_000);
        assert!(
            (fewest..=fewest + 1).contains(&pieces.len()),
            "{} pieces",
            pieces.len()
        );
        let mut assembler = Assembler::default();
        let from = Uuid::new_v4();
        let now = Instant::now();
        let mut out = None;
        for (id, i, n, part) in parts(&pieces) {
            let escaped = serde_json::to_string(&part).expect("json").len() - 2;
            assert!(escaped <= 8_000, "part {i} takes {escaped} bytes escaped");
            assert!(out.is_none(), "finished before its last piece");
            out = assembler
                .receive(now, from, (id, i, n), &part)
                .expect("piece");
        }
        assert_eq!(out, Some(payload));
        assert_eq!(assembler.held_bytes(), 0);
    }

    #[test]
    fn parts_count_escapes_and_never_cut_a_character() {
        let text = "\"quoted\"\\ and \u{1} and ünïcödé 🗝 ".repeat(400);
        let json = serde_json::to_string(&SignalPayload::Piece {
            id: 0,
            i: 0,
            n: 1,
            part: text,
        })
        .expect("json");
        let pieces = split(&json, 1, 1_024);
        let parts = parts(&pieces);
        for (.., part) in &parts {
            let escaped = serde_json::to_string(part).expect("json").len() - 2;
            assert!(escaped <= 1_024, "{escaped} bytes escaped");
        }
        let joined: String = parts.iter().map(|(.., p)| p.as_str()).collect();
        assert_eq!(joined, json);
    }

    #[test]
    fn a_small_payload_is_one_piece() {
        let json = serde_json::to_string(&welcome(10)).expect("json");
        let pieces = split(&json, 3, 64 * 1024);
        assert_eq!(parts(&pieces), vec![(3, 0, 1, json)]);
    }

    /// Feeds `pieces` from `from`, expecting the last step's result.
    fn feed(
        assembler: &mut Assembler,
        from: Uuid,
        pieces: &[Part],
    ) -> Result<Option<SignalPayload>, Malformed> {
        let now = Instant::now();
        let mut last = Ok(None);
        for (id, i, n, part) in pieces {
            last = assembler.receive(now, from, (*id, *i, *n), part);
        }
        last
    }

    #[test]
    fn pieces_out_of_order_duplicated_or_mixed_are_refused_and_dropped() {
        let json = serde_json::to_string(&welcome(5_000)).expect("json");
        let good = parts(&split(&json, 5, 1_024));
        assert!(good.len() >= 4);
        let from = Uuid::new_v4();
        let cases: Vec<(&str, Vec<Part>)> = vec![
            ("skipped", vec![good[0].clone(), good[2].clone()]),
            (
                "repeated",
                vec![good[0].clone(), good[1].clone(), good[1].clone()],
            ),
            ("no start", vec![good[1].clone()]),
            ("another id", {
                let mut p = good[1].clone();
                p.0 = 6;
                vec![good[0].clone(), p]
            }),
            ("another count", {
                let mut p = good[1].clone();
                p.2 += 1;
                vec![good[0].clone(), p]
            }),
            ("zero pieces", vec![(5, 0, 0, String::new())]),
        ];
        for (what, pieces) in cases {
            let mut assembler = Assembler::default();
            assert!(
                feed(&mut assembler, from, &pieces).is_err(),
                "{what}: accepted"
            );
            assert_eq!(assembler.held_bytes(), 0, "{what}: kept");
        }
        // A restart (piece 0 again) replaces an unfinished payload: the new one completes.
        let mut assembler = Assembler::default();
        let mut restarted = vec![good[0].clone(), good[1].clone()];
        restarted.extend(good.iter().cloned());
        assert_eq!(
            feed(&mut assembler, from, &restarted).expect("whole"),
            Some(welcome(5_000))
        );
    }

    #[test]
    fn a_payload_in_pieces_must_be_a_payload_and_not_pieces_again() {
        let inner = serde_json::to_string(&split("{}", 1, 1_024)[0]).expect("json");
        for text in ["not json", "{\"t\":\"unknown\"}", inner.as_str()] {
            let mut assembler = Assembler::default();
            let pieces = parts(&split(text, 2, 1_024));
            assert!(
                feed(&mut assembler, Uuid::new_v4(), &pieces).is_err(),
                "{text} accepted"
            );
        }
    }

    #[test]
    fn memory_is_bounded_per_sender_in_senders_and_in_time() {
        let mut assembler = Assembler::default();
        let now = Instant::now();
        let big = "x".repeat(1024 * 1024);
        let from = Uuid::new_v4();
        let mut refused = false;
        for i in 0..20 {
            if assembler.receive(now, from, (1, i, 100), &big).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "more than {MAX_PAYLOAD_BYTES} bytes kept");
        assert_eq!(assembler.held_bytes(), 0);
        for _ in 0..(MAX_UNFINISHED + 5) {
            let part = "y".repeat(1_000);
            assert_eq!(
                assembler.receive(now, Uuid::new_v4(), (1, 0, 2), &part),
                Ok(None)
            );
        }
        assert_eq!(assembler.held_bytes(), MAX_UNFINISHED * 1_000);
        assert_eq!(assembler.next_expiry(), Some(now + PIECE_TIMEOUT));
        assembler.expire(now + PIECE_TIMEOUT - Duration::from_millis(1));
        assert_eq!(assembler.held_bytes(), MAX_UNFINISHED * 1_000);
        assembler.expire(now + PIECE_TIMEOUT);
        assert_eq!(assembler.held_bytes(), 0);
        assert_eq!(assembler.next_expiry(), None);
    }
}
