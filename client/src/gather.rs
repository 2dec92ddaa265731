//! Candidates beyond the host one, on the links' UDP socket, sans-IO: a server-reflexive address
//! asked of STUN servers (a Binding request) and a relayed address from one TURN allocation
//! (turn-client-proto), through which the links send to peers they cannot reach directly.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use turn_client_proto::api::{
    Transmit, TurnClientApi as _, TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet,
};
use turn_client_proto::stun::types::TransportType;
use turn_client_proto::stun::types::attribute::XorMappedAddress;
use turn_client_proto::stun::types::message::{
    BINDING, Message, MessageClass, MessageWriteVec, TransactionId,
};
use turn_client_proto::stun::types::prelude::{MessageWrite as _, MessageWriteExt as _};
use turn_client_proto::types::TurnCredentials;
use turn_client_proto::udp::TurnClientUdp;

/// An ICE server the device may use (from `GET /api/v1/turn`), its address resolved.
#[derive(Clone, PartialEq, Eq)]
pub enum IceServer {
    /// A STUN server: asked for this device's address as the internet sees it.
    Stun(SocketAddr),
    /// A TURN server over UDP, with short-lived credentials.
    Turn {
        /// The server.
        server: SocketAddr,
        /// The username (`<expiry>:<tag>`).
        username: String,
        /// The credential.
        credential: String,
    },
}

impl std::fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IceServer::Stun(server) => write!(f, "Stun({server})"),
            IceServer::Turn { server, .. } => write!(f, "Turn({server}, credentials redacted)"),
        }
    }
}

/// How links use ICE servers.
#[derive(Debug, Clone, Default)]
pub struct IcePolicy {
    /// The servers, addresses resolved.
    pub servers: Vec<IceServer>,
    /// Offer peers only the relayed address: they never learn this device's own addresses
    /// (what the browser calls `iceTransportPolicy: "relay"`). Needs a TURN server.
    pub relay_only: bool,
}

/// What an ICE server URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IceUrl {
    /// `stun:host[:port]`.
    Stun {
        /// Host name or address.
        host: String,
        /// Port (3478 when not given).
        port: u16,
    },
    /// `turn:host[:port][?transport=udp]`.
    Turn {
        /// Host name or address.
        host: String,
        /// Port (3478 when not given).
        port: u16,
    },
}

/// Reads an ICE server URL (RFC 7064/7065) that this client can use: `stun:` and `turn:` over
/// UDP. `None` for the others (`stuns:`, `turns:`, `?transport=tcp`), which it cannot.
#[must_use]
pub fn parse_ice_url(url: &str) -> Option<IceUrl> {
    let (scheme, rest) = url.split_once(':')?;
    let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !(query.is_empty() || query == "transport=udp") {
        return None;
    }
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => {
            (host, port.parse().ok()?)
        }
        _ => (address, 3478),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() || host.contains('/') {
        return None;
    }
    match scheme {
        "stun" if query.is_empty() => Some(IceUrl::Stun { host, port }),
        "turn" => Some(IceUrl::Turn { host, port }),
        _ => None,
    }
}

/// A candidate found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// This device's address as a STUN server saw it (when it is not the socket's own).
    Reflexive(SocketAddr),
    /// The address a TURN server relays for this device.
    Relayed(SocketAddr),
    /// A relayed address given up (its allocation was released or lost): links stop using it.
    Withdrawn(SocketAddr),
}

/// What a datagram was.
#[derive(Debug, PartialEq, Eq)]
pub enum Datagram {
    /// Meant for the gatherer (a STUN answer, TURN control); nothing more to do.
    Consumed,
    /// A peer's datagram, relayed by the TURN server: `peer` sent `data` to the relayed address.
    Relayed {
        /// The peer's address.
        peer: SocketAddr,
        /// What it sent.
        data: Vec<u8>,
    },
    /// Not the gatherer's: for the links directly.
    NotMine,
}

/// The first TURN server of `servers` this socket's address family can reach, and the
/// configuration to allocate there with its credentials.
fn turn_config(local: SocketAddr, servers: &[IceServer]) -> Option<(SocketAddr, TurnConfig)> {
    servers.iter().find_map(|server| match server {
        IceServer::Turn {
            server,
            username,
            credential,
        } if server.is_ipv4() == local.is_ipv4() => Some((
            *server,
            TurnConfig::new(TurnCredentials::new(username, credential)),
        )),
        _ => None,
    })
}

/// Tries of a Binding request before a STUN server is given up.
const STUN_TRIES: u32 = 6;

/// A Binding request waiting for its answer.
#[derive(Debug)]
struct Probe {
    server: SocketAddr,
    transaction: TransactionId,
    request: Vec<u8>,
    tries: u32,
    next: Instant,
}

/// The pause before a relay is allocated again, after a release or a loss; it doubles after each
/// refusal, up to 64 s. A TURN server may hold a released allocation for a moment (coturn: about
/// a second) and refuse a new one on the socket meanwhile.
const REALLOCATE_PAUSE: Duration = Duration::from_secs(1);
/// The most the pause doubles.
const REALLOCATE_DOUBLINGS: u32 = 6;

/// Asks STUN servers for the reflexive address and keeps one TURN allocation.
pub struct Gatherer {
    local: SocketAddr,
    /// The zero of the TURN client's clock.
    base: Instant,
    probes: Vec<Probe>,
    turn: Option<(SocketAddr, TurnClientUdp)>,
    /// The TURN server and the latest credentials for it, to allocate (again) with.
    relay_config: Option<(SocketAddr, TurnConfig)>,
    /// When to allocate again (while there is no allocation).
    reallocate_at: Option<Instant>,
    /// Allocations lost or refused since the last one made.
    refusals: u32,
    /// Peer addresses the TURN server should let through to the relayed address.
    permitted: BTreeSet<IpAddr>,
    /// When the TURN client next has work.
    turn_due: Option<Instant>,
    relayed: Option<SocketAddr>,
    reflexive: Option<SocketAddr>,
    found: VecDeque<Found>,
    transmit: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl std::fmt::Debug for Gatherer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gatherer")
            .field("local", &self.local)
            .field("relayed", &self.relayed)
            .field("reflexive", &self.reflexive)
            .finish_non_exhaustive()
    }
}

impl Gatherer {
    /// Starts asking `servers` for candidates of the socket at `local`: every STUN server is
    /// asked, the first TURN server allocates.
    #[must_use]
    pub fn new(local: SocketAddr, servers: &[IceServer], now: Instant) -> Gatherer {
        let mut gatherer = Gatherer {
            local,
            base: now,
            probes: Vec::new(),
            turn: None,
            relay_config: turn_config(local, servers),
            reallocate_at: None,
            refusals: 0,
            permitted: BTreeSet::new(),
            turn_due: None,
            relayed: None,
            reflexive: None,
            found: VecDeque::new(),
            transmit: VecDeque::new(),
        };
        for server in servers {
            match server {
                IceServer::Stun(server) => {
                    let mut request = Message::builder_request(BINDING, MessageWriteVec::new());
                    if request.add_fingerprint().is_err() {
                        continue;
                    }
                    gatherer.probes.push(Probe {
                        server: *server,
                        transaction: request.transaction_id(),
                        request: request.finish(),
                        tries: 0,
                        next: now,
                    });
                }
                IceServer::Turn { .. } => {}
            }
        }
        gatherer.reallocate_at = gatherer.relay_config.is_some().then_some(now);
        gatherer.handle_timeout(now);
        gatherer
    }

    /// Makes a new allocation with the fresh credentials in `servers`: the server's credentials
    /// expire, and a TURN server holds an allocation to the username it was made with. A TURN
    /// server allows one allocation per socket, so the current one is released first and its
    /// relayed address withdrawn; the new one is asked for once the release is answered.
    pub fn renew(&mut self, now: Instant, servers: &[IceServer]) {
        let Some(fresh) = turn_config(self.local, servers) else {
            return;
        };
        self.relay_config = Some(fresh);
        let clock = self.clock(now);
        if let Some(old) = self.relayed.take() {
            self.found.push_back(Found::Withdrawn(old));
        }
        let releasing = self
            .turn
            .as_mut()
            .is_some_and(|(_, client)| client.delete(clock).is_ok());
        if !releasing {
            // None, or nothing to release yet (still asking): start over with the fresh ones.
            self.turn = None;
            self.refusals = 0;
            self.reallocate_at = Some(now);
        }
        self.pump(now);
    }

    fn clock(&self, now: Instant) -> turn_client_proto::stun::Instant {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        turn_client_proto::stun::Instant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    /// The relayed address, once the allocation exists.
    #[must_use]
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// The reflexive address, once a STUN server told one other than the socket's own.
    #[must_use]
    pub fn reflexive(&self) -> Option<SocketAddr> {
        self.reflexive
    }

    /// A datagram from `source` on the socket.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) -> Datagram {
        let clock = self.clock(now);
        if let Some((server, client)) = self.turn.as_mut()
            && *server == source
        {
            let transmit = Transmit::new(data, TransportType::Udp, source, self.local);
            match client.recv(transmit, clock) {
                TurnRecvRet::Handled => {
                    self.pump(now);
                    return Datagram::Consumed;
                }
                TurnRecvRet::PeerData(peer_data) => {
                    return Datagram::Relayed {
                        peer: peer_data.peer,
                        data: peer_data.data().to_vec(),
                    };
                }
                TurnRecvRet::PeerIcmp { .. } => return Datagram::Consumed,
                TurnRecvRet::Ignored(_) => {}
            }
        }
        if let Some(at) = self.probes.iter().position(|p| p.server == source)
            && let Ok(message) = Message::from_bytes(data)
            && message.transaction_id() == self.probes[at].transaction
        {
            self.probes.remove(at);
            if message.has_class(MessageClass::Success)
                && let Ok(mapped) = message.attribute::<XorMappedAddress>()
            {
                let mapped = mapped.addr(message.transaction_id());
                if mapped != self.local && self.reflexive.is_none() {
                    self.reflexive = Some(mapped);
                    self.found.push_back(Found::Reflexive(mapped));
                }
            }
            return Datagram::Consumed;
        }
        Datagram::NotMine
    }

    /// Sends `data` to `peer` through the TURN server. Until the server holds a permission for
    /// the peer's address, one is asked for and the datagram dropped (ICE sends its checks
    /// again).
    pub fn send_relayed(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) {
        let clock = self.clock(now);
        let Some((_, client)) = self.turn.as_mut() else {
            return;
        };
        match client.send_to(TransportType::Udp, peer, data, clock) {
            Ok(Some(build)) => {
                let transmit = build.build();
                self.transmit.push_back((transmit.to, transmit.data));
            }
            Ok(None) => {}
            Err(_) => {
                // No permission yet (or it is pending): ask; an existing request is fine.
                let _ = client.create_permission(TransportType::Udp, peer.ip(), clock);
            }
        }
        self.pump(now);
    }

    /// Lets the TURN server relay between `peer` (a remote candidate's address) and this device,
    /// now or once the allocation exists: without a permission it drops the peer's datagrams.
    pub fn permit(&mut self, now: Instant, peer: IpAddr) {
        // Kept without an allocation too: one made later (again) asks for it.
        if self.relay_config.is_some() && self.permitted.insert(peer) && self.turn.is_some() {
            self.pump(now);
        }
    }

    /// Time passed: requests sent again, the allocation and permissions refreshed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for probe in &mut self.probes {
            if probe.next <= now && probe.tries < STUN_TRIES {
                self.transmit
                    .push_back((probe.server, probe.request.clone()));
                probe.tries += 1;
                probe.next = now + Duration::from_millis(250 << probe.tries.min(5));
            }
        }
        // The last try is given its wait before the server is given up.
        self.probes.retain(|p| p.tries < STUN_TRIES || p.next > now);
        self.pump(now);
    }

    /// Takes what the TURN client has to send and to tell, and when it next has work.
    fn pump(&mut self, now: Instant) {
        let clock = self.clock(now);
        self.turn_due = None;
        if self.turn.is_none()
            && self.reallocate_at.is_some_and(|at| at <= now)
            && let Some((server, config)) = &self.relay_config
        {
            self.reallocate_at = None;
            let client = TurnClientUdp::allocate(self.local, *server, config.clone());
            self.turn = Some((*server, client));
        }
        let Some((_, client)) = self.turn.as_mut() else {
            self.turn_due = self.reallocate_at;
            return;
        };
        while let Some(event) = client.poll_event() {
            if let TurnEvent::AllocationCreated(_, relayed) = event {
                self.relayed = Some(relayed);
                self.found.push_back(Found::Relayed(relayed));
                self.refusals = 0;
            }
        }
        if self.relayed.is_some() {
            for peer in &self.permitted {
                // One already made or asked for is fine.
                let _ = client.create_permission(TransportType::Udp, *peer, clock);
            }
        }
        while let Some(transmit) = client.poll_transmit(clock) {
            self.transmit
                .push_back((transmit.to, transmit.data.as_ref().to_vec()));
        }
        match client.poll(clock) {
            TurnPollRet::WaitUntil(at) => {
                // At the latest a millisecond on: "now" would have it polled without end.
                self.turn_due = Some(at.to_std(self.base).max(now + Duration::from_millis(1)));
            }
            TurnPollRet::Closed => {
                // Released, lost or refused: allocated again after a pause, with the latest
                // credentials (expired ones are refused until the device fetches fresh ones).
                self.turn = None;
                if let Some(old) = self.relayed.take() {
                    self.found.push_back(Found::Withdrawn(old));
                }
                let pause = REALLOCATE_PAUSE * 2u32.pow(self.refusals.min(REALLOCATE_DOUBLINGS));
                self.refusals = self.refusals.saturating_add(1);
                self.reallocate_at = Some(now + pause);
                self.turn_due = self.reallocate_at;
            }
            _ => {}
        }
    }

    /// When [`Gatherer::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.probes
            .iter()
            .map(|p| p.next)
            .chain(self.turn_due)
            .min()
    }

    /// The next datagram to send: destination and contents.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmit.pop_front()
    }

    /// The next candidate found.
    pub fn poll_found(&mut self) -> Option<Found> {
        self.found.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_urls_this_client_can_use_are_read_and_the_others_skipped() {
        let stun = |host: &str, port| {
            Some(IceUrl::Stun {
                host: host.into(),
                port,
            })
        };
        let turn = |host: &str, port| {
            Some(IceUrl::Turn {
                host: host.into(),
                port,
            })
        };
        assert_eq!(
            parse_ice_url("stun:stun.example.org"),
            stun("stun.example.org", 3478)
        );
        assert_eq!(
            parse_ice_url("stun:10.0.0.1:19302"),
            stun("10.0.0.1", 19302)
        );
        assert_eq!(
            parse_ice_url("turn:turn.example.org:3479?transport=udp"),
            turn("turn.example.org", 3479)
        );
        assert_eq!(
            parse_ice_url("turn:[2001:db8::1]:3478"),
            turn("2001:db8::1", 3478)
        );
        for unusable in [
            "turns:turn.example.org:5349",
            "turn:turn.example.org?transport=tcp",
            "stuns:stun.example.org",
            "stun:stun.example.org?transport=udp",
            "turn:",
            "turn:host:notaport",
            "http://example.org",
            "nonsense",
        ] {
            assert_eq!(parse_ice_url(unusable), None, "{unusable}");
        }
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let server = IceServer::Turn {
            server: "127.0.0.1:3478".parse().expect("addr"),
            username: "1700000000:tag".into(),
            credential: "c2VjcmV0".into(),
        };
        let shown = format!("{server:?}");
        assert!(
            !shown.contains("c2VjcmV0") && !shown.contains("tag"),
            "{shown}"
        );
    }

    #[test]
    fn a_turn_server_that_never_answers_is_asked_again_without_end_but_at_a_bounded_rate() {
        let local: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let server: SocketAddr = "127.0.0.1:3478".parse().expect("addr");
        let turn = IceServer::Turn {
            server,
            username: "1700000000:tag".into(),
            credential: "c2VjcmV0".into(),
        };
        let start = Instant::now();
        let mut gatherer = Gatherer::new(local, &[turn], start);
        let mut sent_at = Vec::new();
        let mut now = start;
        while now.duration_since(start) < Duration::from_secs(3600) {
            while let Some((to, _)) = gatherer.poll_transmit() {
                assert_eq!(to, server, "only to the TURN server");
                sent_at.push(now.duration_since(start));
            }
            let at = gatherer
                .poll_timeout()
                .expect("always something to wait for");
            assert!(at > now, "no busy loop at {:?}", now.duration_since(start));
            now = at;
            gatherer.handle_timeout(now);
        }
        assert_eq!(gatherer.relayed(), None);
        // Still asking in the last ten minutes of the hour, and never more often than once a
        // second on average, nor with a silence longer than a retransmission series and the
        // longest pause.
        assert!(
            sent_at.iter().any(|t| *t > Duration::from_secs(3000)),
            "gave up"
        );
        assert!(
            sent_at.len() < 3600,
            "{} requests in an hour",
            sent_at.len()
        );
        let longest = sent_at
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .expect("several");
        assert!(
            longest <= Duration::from_secs(64 + 60),
            "a silence of {longest:?}"
        );
    }

    #[test]
    fn a_stun_server_that_never_answers_is_asked_a_bounded_number_of_times() {
        let local: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let server: SocketAddr = "127.0.0.1:3478".parse().expect("addr");
        let start = Instant::now();
        let mut gatherer = Gatherer::new(local, &[IceServer::Stun(server)], start);
        let mut sent = 0;
        let mut now = start;
        while let Some(at) = gatherer.poll_timeout() {
            assert!(
                at.duration_since(start) < Duration::from_secs(60),
                "still asking"
            );
            now = at.max(now);
            gatherer.handle_timeout(now);
            while gatherer.poll_transmit().is_some() {
                sent += 1;
            }
        }
        while gatherer.poll_transmit().is_some() {
            sent += 1;
        }
        assert_eq!(sent, STUN_TRIES as usize);
        assert_eq!(gatherer.reflexive(), None);
        // Garbage from it, or from anyone, is not the gatherer's.
        assert_eq!(
            gatherer.handle_datagram(now, server, b"garbage"),
            Datagram::NotMine
        );
    }
}
