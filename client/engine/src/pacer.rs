//! Paces the frames a device sends the server, so that a burst (a Welcome in pieces, a catch-up
//! answer, negotiations with many devices at once) stays within the rate the server told in its
//! `hello` instead of being refused frame by frame.

use std::collections::VecDeque;
use std::time::Duration;

use tessera_wire::signal::{ClientFrame, Limits};
use web_time::Instant;

/// The share of the server's rate and burst a device uses, leaving room for clocks that differ.
const SHARE: f64 = 0.8;

/// The most frames let out at once, whatever the server allows: a driver queues at least this
/// many (the native one 128).
pub const MAX_BURST: u32 = 64;

/// A token bucket in front of the frames to the server, keeping their order.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Option<Instant>,
    waiting: VecDeque<ClientFrame>,
}

impl Pacer {
    /// A pacer for a server with `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Pacer {
        let mut pacer = Pacer {
            rate: 1.0,
            capacity: 1.0,
            tokens: 0.0,
            last: None,
            waiting: VecDeque::new(),
        };
        pacer.set_limits(limits);
        pacer.tokens = pacer.capacity;
        pacer
    }

    /// The server told its limits (in a new connection's `hello`).
    pub fn set_limits(&mut self, limits: Limits) {
        self.rate = (f64::from(limits.frames_per_second) * SHARE).max(1.0);
        self.capacity = (f64::from(limits.burst) * SHARE).clamp(1.0, f64::from(MAX_BURST));
        self.tokens = self.tokens.min(self.capacity);
    }

    /// Queues a frame.
    pub fn push(&mut self, frame: ClientFrame) {
        self.waiting.push_back(frame);
    }

    /// The next frame that may go at `now`.
    pub fn pop(&mut self, now: Instant) -> Option<ClientFrame> {
        if self.waiting.is_empty() {
            return None;
        }
        if let Some(last) = self.last {
            let earned = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens < 1.0 {
            return None;
        }
        self.tokens -= 1.0;
        self.waiting.pop_front()
    }

    /// When the next waiting frame may go, if one waits.
    #[must_use]
    pub fn next_at(&self) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        let last = self.last?;
        let missing = (1.0 - self.tokens).max(0.0);
        Some(last + Duration::from_secs_f64(missing / self.rate))
    }

    /// Frames waiting.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> ClientFrame {
        ClientFrame::Commit {
            slot: n,
            payload: serde_json::value::RawValue::from_string("1".into()).expect("json"),
        }
    }

    fn epoch(frame: &ClientFrame) -> u64 {
        match frame {
            ClientFrame::Commit { slot, .. } => *slot,
            ClientFrame::Signal { .. } => unreachable!(),
        }
    }

    #[test]
    fn a_burst_goes_at_once_up_to_the_share_of_the_servers_burst_then_at_its_rate_in_order() {
        let limits = Limits {
            frame_bytes: 1024,
            frames_per_second: 50,
            burst: 60,
        };
        let mut pacer = Pacer::new(limits);
        for n in 0..200 {
            pacer.push(frame(n));
        }
        let start = Instant::now();
        let mut sent = Vec::new();
        while let Some(f) = pacer.pop(start) {
            sent.push(epoch(&f));
        }
        assert_eq!(
            sent,
            (0..48).collect::<Vec<_>>(),
            "80% of the burst at once"
        );
        let next = pacer.next_at().expect("more wait");
        assert_eq!(
            next,
            start + Duration::from_millis(25),
            "a frame per 25 ms at 40/s"
        );
        // The server's bucket (60 + 50/s) is never exceeded: 48 + 40/s.
        let mut now = start;
        let mut times = Vec::new();
        while let Some(at) = pacer.next_at() {
            now = at;
            while let Some(f) = pacer.pop(now) {
                sent.push(epoch(&f));
                times.push(now);
            }
        }
        assert_eq!(sent, (0..200).collect::<Vec<_>>(), "every frame, in order");
        let span = now.duration_since(start).as_secs_f64();
        assert!((3.7..3.9).contains(&span), "152 paced frames took {span} s");
        for (k, at) in times.iter().enumerate() {
            let allowed = 60.0 + 50.0 * at.duration_since(start).as_secs_f64();
            assert!(
                (48 + k + 1) as f64 <= allowed,
                "frame {k} beyond the server's bucket"
            );
        }
        assert_eq!(pacer.waiting(), 0);
        assert_eq!(pacer.next_at(), None);
    }

    #[test]
    fn a_generous_server_still_gets_bursts_no_larger_than_a_driver_queues() {
        let mut pacer = Pacer::new(Limits {
            frame_bytes: 1024,
            frames_per_second: 100_000,
            burst: 200_000,
        });
        for n in 0..1_000 {
            pacer.push(frame(n));
        }
        let now = Instant::now();
        let mut at_once = 0;
        while pacer.pop(now).is_some() {
            at_once += 1;
        }
        assert_eq!(at_once, MAX_BURST);
    }

    #[test]
    fn a_quiet_device_sends_at_once() {
        let mut pacer = Pacer::new(Limits::default());
        let now = Instant::now();
        for n in 0..3 {
            pacer.push(frame(n));
            assert!(pacer.pop(now + Duration::from_secs(n)).is_some());
        }
        assert_eq!(pacer.next_at(), None);
    }
}
