//! Two ends of a WebRTC link (str0m) over real UDP sockets in this thread, each negotiation step
//! handed straight to the other end: for the link tests and the raw-str0m benchmark. Run them
//! inside a network namespace (`crate::netns`).

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tessera_client::gather::IcePolicy;
use tessera_client::rtc::{LinkEvent, Links};
use uuid::Uuid;

/// One end: its own UDP socket on 127.0.0.1 and its `Links`.
pub struct Side {
    /// The device id the other end knows it by.
    pub id: Uuid,
    socket: UdpSocket,
    /// The links (one, to the other end).
    pub links: Links,
    /// Whether the data channel is open.
    pub up: bool,
    /// The messages received so far.
    pub received: Vec<Vec<u8>>,
    /// Every address this end sent a datagram to.
    pub sent_to: BTreeSet<SocketAddr>,
}

impl Default for Side {
    fn default() -> Side {
        Side::new()
    }
}

impl Side {
    /// A new end on a fresh socket.
    ///
    /// # Panics
    /// When the socket cannot be bound.
    #[must_use]
    pub fn new() -> Side {
        Side::with_ice(&IcePolicy::default())
    }

    /// A new end on a fresh socket whose links use ICE servers as `policy` says.
    ///
    /// # Panics
    /// When the socket cannot be bound.
    #[must_use]
    pub fn with_ice(policy: &IcePolicy) -> Side {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let local: SocketAddr = socket.local_addr().expect("addr");
        Side {
            id: Uuid::new_v4(),
            socket,
            links: Links::with_ice(local, policy, Instant::now()),
            up: false,
            received: Vec::new(),
            sent_to: BTreeSet::new(),
        }
    }

    /// Sends what is queued, reads what arrived, fires timers; returns negotiation steps.
    pub fn turn(&mut self) -> Vec<(Uuid, tessera_engine::payload::RtcSignal)> {
        let now = Instant::now();
        if self.links.poll_timeout().is_some_and(|t| t <= now) {
            self.links.handle_timeout(now);
        }
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            self.links.handle_datagram(Instant::now(), from, &buf[..n]);
        }
        while let Some((to, bytes)) = self.links.poll_transmit() {
            self.sent_to.insert(to);
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

/// Runs both sides, passing each one's negotiation to the other, until `done` or ten seconds.
///
/// # Panics
/// When a side refuses the other's negotiation.
pub fn run(a: &mut Side, b: &mut Side, done: impl Fn(&Side, &Side) -> bool) {
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
