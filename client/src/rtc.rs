//! WebRTC data channels to peer devices with str0m, sans-IO: one `Rtc` per peer device, all over
//! one UDP socket (datagrams go to the `Rtc` that accepts them). The engine decides which links to
//! open; their negotiation travels MLS-protected through the engine (`LinkCommand::Rtc`). What
//! the data channel cannot take yet waits in a bounded queue per link and goes out as the SCTP
//! buffer drains (str0m's buffered-amount-low event), instead of being dropped. With ICE servers,
//! every link also offers the server-reflexive and relayed candidates the gatherer finds, and what
//! str0m sends from the relayed address goes through the TURN server.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tessera_engine::payload::RtcSignal;
use uuid::Uuid;

use crate::gather::{Datagram, Found, Gatherer, IcePolicy};

/// The data channel's label.
const LABEL: &str = "tessera";

/// Bytes waiting for the data channel, per link, past which further messages are refused (the
/// engine's outbox sends them again later). The engine's window keeps it far below this.
const QUEUE_LIMIT: usize = 8 * 1024 * 1024;

/// The SCTP buffer's level at which str0m says the channel can take more.
const LOW_WATER: usize = 32 * 1024;

/// What happened on the links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A negotiation step to send to `device` (through the engine, MLS-protected).
    Negotiate {
        /// The peer.
        device: Uuid,
        /// The step.
        signal: RtcSignal,
    },
    /// The data channel to `device` is open.
    Up(Uuid),
    /// The link to `device` closed or failed.
    Down(Uuid),
    /// A message from `device`.
    Data(Uuid, Vec<u8>),
}

/// Why a negotiation step was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The SDP or candidate does not parse.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// An answer with no offer outstanding.
    #[error("an answer for a link that made no offer")]
    UnexpectedAnswer,
    /// str0m refused it.
    #[error("WebRTC refused it: {0}")]
    Rtc(#[from] str0m::RtcError),
}

struct Peer {
    rtc: Rtc,
    channel: Option<ChannelId>,
    pending: Option<SdpPendingOffer>,
    timeout: Option<Instant>,
    up: bool,
    /// Messages the data channel could not take yet, oldest first, and their bytes.
    queue: VecDeque<Vec<u8>>,
    queued: usize,
}

impl Peer {
    fn new(rtc: Rtc, channel: Option<ChannelId>, pending: Option<SdpPendingOffer>) -> Peer {
        Peer {
            rtc,
            channel,
            pending,
            timeout: None,
            up: false,
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// Hands queued messages to the data channel while it takes them; whether any went.
    fn write_queued(&mut self) -> bool {
        let Some(mut channel) = self.channel.and_then(|id| self.rtc.channel(id)) else {
            return false;
        };
        let mut wrote = false;
        while let Some(bytes) = self.queue.front() {
            if !matches!(channel.write(true, bytes), Ok(true)) {
                break;
            }
            self.queued -= bytes.len();
            self.queue.pop_front();
            wrote = true;
        }
        wrote
    }
}

/// Every link of one device, over one UDP socket at `local`.
pub struct Links {
    local: SocketAddr,
    gatherer: Gatherer,
    /// Offer only the relayed candidate.
    relay_only: bool,
    /// The latest time the links were told.
    now: Instant,
    peers: BTreeMap<Uuid, Peer>,
    transmit: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<LinkEvent>,
    /// Datagrams no link claimed yet, kept briefly (see [`Unclaimed`]).
    unclaimed: VecDeque<Unclaimed>,
}

/// A datagram no link claimed when it came: at the start of a link, the peer's first DTLS flight
/// can overtake the ICE check that makes its address this side's, and str0m would only resend it
/// after its one-second DTLS timer. It is offered to the links again after each datagram they
/// take, for [`UNCLAIMED_FOR`], and at most [`UNCLAIMED`] are kept.
struct Unclaimed {
    at: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    bytes: Vec<u8>,
}

/// How many unclaimed datagrams are kept.
const UNCLAIMED: usize = 16;

/// How long an unclaimed datagram is kept.
const UNCLAIMED_FOR: Duration = Duration::from_millis(500);

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("local", &self.local)
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Links {
    /// Links over the UDP socket bound at `local`, with its host candidate only.
    #[must_use]
    pub fn new(local: SocketAddr) -> Links {
        Links::with_ice(local, &IcePolicy::default(), Instant::now())
    }

    /// Links over the UDP socket bound at `local` that also gather candidates from ICE servers.
    #[must_use]
    pub fn with_ice(local: SocketAddr, policy: &IcePolicy, now: Instant) -> Links {
        Links {
            local,
            gatherer: Gatherer::new(local, &policy.servers, now),
            relay_only: policy.relay_only,
            now,
            peers: BTreeMap::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            unclaimed: VecDeque::new(),
        }
    }

    /// The relayed address, once the TURN server allocated one.
    #[must_use]
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.gatherer.relayed()
    }

    /// The candidate a link offers for what the gatherer found, if this policy offers it.
    fn candidate(&self, found: Found) -> Option<Candidate> {
        match found {
            Found::Reflexive(_) if self.relay_only => None,
            Found::Reflexive(addr) => Candidate::server_reflexive(addr, self.local, "udp").ok(),
            Found::Relayed(addr) | Found::Withdrawn(addr) => {
                Candidate::relayed(addr, self.local, "udp").ok()
            }
        }
    }

    /// The candidates found so far besides the host one.
    fn gathered(&self) -> Vec<Candidate> {
        [
            self.gatherer.reflexive().map(Found::Reflexive),
            self.gatherer.relayed().map(Found::Relayed),
        ]
        .into_iter()
        .flatten()
        .filter_map(|found| self.candidate(found))
        .collect()
    }

    /// Adds what the gatherer found to every link and tells each peer (trickled candidates).
    fn take_found(&mut self) {
        while let Some(found) = self.gatherer.poll_found() {
            let Some(candidate) = self.candidate(found) else {
                continue;
            };
            let devices: Vec<Uuid> = self.peers.keys().copied().collect();
            for device in devices {
                let Some(peer) = self.peers.get_mut(&device) else {
                    continue;
                };
                if let Found::Withdrawn(_) = found {
                    // Pairs from it are dropped; a link that used one goes on over another pair
                    // or drops and is negotiated again with the candidates there are now.
                    peer.rtc.direct_api().invalidate_candidate(&candidate);
                } else if let Some(added) = peer.rtc.add_local_candidate(candidate.clone()) {
                    self.events.push_back(LinkEvent::Negotiate {
                        device,
                        signal: RtcSignal::Candidate {
                            candidate: added.to_sdp_string(),
                            sdp_mid: None,
                        },
                    });
                }
                self.drain(device);
            }
        }
    }

    fn new_rtc(&mut self, now: Instant) -> Result<Rtc, LinkError> {
        self.now = now;
        let mut rtc = Rtc::builder().build(now);
        if !self.relay_only {
            let candidate = Candidate::host(self.local, "udp")
                .map_err(|_| LinkError::Malformed("candidate"))?;
            rtc.add_local_candidate(candidate);
        }
        for candidate in self.gathered() {
            rtc.add_local_candidate(candidate);
        }
        Ok(rtc)
    }

    /// Opens a link to `device`: the offer comes out as [`LinkEvent::Negotiate`].
    ///
    /// # Errors
    /// When str0m cannot make an offer.
    pub fn open(&mut self, now: Instant, device: Uuid) -> Result<(), LinkError> {
        self.close(device);
        let mut rtc = self.new_rtc(now)?;
        let mut change = rtc.sdp_api();
        let channel = change.add_channel(LABEL.to_owned());
        let (offer, pending) = change
            .apply()
            .ok_or(LinkError::Malformed("offer: nothing to negotiate"))?;
        self.events.push_back(LinkEvent::Negotiate {
            device,
            signal: RtcSignal::Offer {
                sdp: offer.to_sdp_string(),
            },
        });
        self.peers
            .insert(device, Peer::new(rtc, Some(channel), Some(pending)));
        self.drain(device);
        Ok(())
    }

    /// Applies a negotiation step from `device` (already authenticated by the engine).
    ///
    /// # Errors
    /// When the step does not parse or does not fit the link's state.
    pub fn apply(
        &mut self,
        now: Instant,
        device: Uuid,
        signal: RtcSignal,
    ) -> Result<(), LinkError> {
        self.now = now;
        self.permit_candidates(now, &signal);
        match signal {
            RtcSignal::Offer { sdp } => {
                let offer =
                    SdpOffer::from_sdp_string(&sdp).map_err(|_| LinkError::Malformed("offer"))?;
                self.close(device);
                let mut rtc = self.new_rtc(now)?;
                let answer = rtc.sdp_api().accept_offer(offer)?;
                self.events.push_back(LinkEvent::Negotiate {
                    device,
                    signal: RtcSignal::Answer {
                        sdp: answer.to_sdp_string(),
                    },
                });
                self.peers.insert(device, Peer::new(rtc, None, None));
            }
            RtcSignal::Answer { sdp } => {
                let answer =
                    SdpAnswer::from_sdp_string(&sdp).map_err(|_| LinkError::Malformed("answer"))?;
                let peer = self
                    .peers
                    .get_mut(&device)
                    .ok_or(LinkError::UnexpectedAnswer)?;
                let pending = peer.pending.take().ok_or(LinkError::UnexpectedAnswer)?;
                peer.rtc.sdp_api().accept_answer(pending, answer)?;
            }
            RtcSignal::Candidate { candidate, .. } => {
                let candidate = Candidate::from_sdp_string(&candidate)
                    .map_err(|_| LinkError::Malformed("candidate"))?;
                if let Some(peer) = self.peers.get_mut(&device) {
                    peer.rtc.add_remote_candidate(candidate);
                }
            }
        }
        self.drain(device);
        Ok(())
    }

    /// Lets the TURN server relay to and from every address the peer offers (in an offer's or
    /// answer's candidate lines, or a trickled candidate).
    fn permit_candidates(&mut self, now: Instant, signal: &RtcSignal) {
        let lines: Vec<&str> = match signal {
            RtcSignal::Offer { sdp } | RtcSignal::Answer { sdp } => sdp
                .lines()
                .filter_map(|line| line.strip_prefix("a="))
                .filter(|line| line.starts_with("candidate:"))
                .collect(),
            RtcSignal::Candidate { candidate, .. } => vec![candidate.as_str()],
        };
        for line in lines {
            if let Ok(candidate) = Candidate::from_sdp_string(line) {
                self.gatherer.permit(now, candidate.addr().ip());
            }
        }
    }

    /// Puts `bytes` on the data channel to `device`, or in its queue while the channel's buffer is
    /// full; false when the link is not up or its queue is full (the message is not sent).
    pub fn send(&mut self, device: Uuid, bytes: &[u8]) -> bool {
        let Some(peer) = self.peers.get_mut(&device).filter(|p| p.up) else {
            return false;
        };
        if peer.queued + bytes.len() > QUEUE_LIMIT {
            return false;
        }
        peer.queue.push_back(bytes.to_vec());
        peer.queued += bytes.len();
        if peer.queue.len() == 1 {
            peer.write_queued();
            self.drain(device);
        }
        true
    }

    /// Closes the link to `device`.
    pub fn close(&mut self, device: Uuid) {
        if let Some(mut peer) = self.peers.remove(&device) {
            peer.rtc.disconnect();
        }
    }

    /// A datagram arrived on the socket.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, contents: &[u8]) {
        self.now = now;
        match self.gatherer.handle_datagram(now, source, contents) {
            Datagram::Consumed => self.take_found(),
            Datagram::Relayed { peer, data } => {
                if let Some(relayed) = self.gatherer.relayed() {
                    self.receive(now, peer, relayed, &data);
                }
            }
            Datagram::NotMine => self.receive(now, source, self.local, contents),
        }
    }

    /// A datagram from `source` to our `destination` (the socket, or the relayed address).
    fn receive(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) {
        if self.deliver(now, source, destination, bytes) {
            self.offer_unclaimed(now);
        } else {
            if self.unclaimed.len() == UNCLAIMED {
                self.unclaimed.pop_front();
            }
            self.unclaimed.push_back(Unclaimed {
                at: now,
                source,
                destination,
                bytes: bytes.to_vec(),
            });
        }
    }

    /// Hands a datagram to the link that claims it; false when none does.
    fn deliver(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
    ) -> bool {
        let Ok(contents) = bytes.try_into() else {
            // Not a datagram str0m reads: nothing will ever claim it.
            return true;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let Some(device) = self
            .peers
            .iter()
            .find(|(_, p)| p.rtc.accepts(&input))
            .map(|(d, _)| *d)
        else {
            return false;
        };
        self.feed(device, input);
        true
    }

    /// Offers the unclaimed datagrams to the links again (a link just took one, which may have
    /// made their source its own); drops those kept too long.
    fn offer_unclaimed(&mut self, now: Instant) {
        if self.unclaimed.is_empty() {
            return;
        }
        self.unclaimed
            .retain(|u| now.saturating_duration_since(u.at) < UNCLAIMED_FOR);
        for _ in 0..self.unclaimed.len() {
            let Some(held) = self.unclaimed.pop_front() else {
                break;
            };
            if !self.deliver(now, held.source, held.destination, &held.bytes) {
                self.unclaimed.push_back(held);
            }
        }
    }

    /// Hands `input` to the peer's `Rtc`; one that fails is disconnected.
    fn feed(&mut self, device: Uuid, input: Input<'_>) {
        if let Some(peer) = self.peers.get_mut(&device)
            && peer.rtc.handle_input(input).is_err()
        {
            peer.rtc.disconnect();
        }
        self.drain(device);
    }

    /// Fresh TURN credentials: the relay is allocated again with them (see [`Gatherer::renew`]);
    /// links move to the new relayed address as it is found.
    pub fn renew_relay(&mut self, now: Instant, servers: &[crate::gather::IceServer]) {
        self.now = now;
        self.gatherer.renew(now, servers);
        self.take_found();
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.gatherer.poll_timeout().is_some_and(|t| t <= now) {
            self.gatherer.handle_timeout(now);
            self.take_found();
        }
        let due: Vec<Uuid> = self
            .peers
            .iter()
            .filter(|(_, p)| p.timeout.is_some_and(|t| t <= now))
            .map(|(d, _)| *d)
            .collect();
        for device in due {
            self.feed(device, Input::Timeout(now));
        }
    }

    /// When [`Links::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|p| p.timeout)
            .chain(self.gatherer.poll_timeout())
            .min()
    }

    /// The next datagram to send: destination and contents.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.gatherer
            .poll_transmit()
            .or_else(|| self.transmit.pop_front())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// Drains the peer's `Rtc` until it only has a timeout left (str0m's rule after each change).
    fn drain(&mut self, device: Uuid) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let mut down = false;
        let mut writable = false;
        loop {
            if !peer.rtc.is_alive() {
                down = true;
                break;
            }
            match peer.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    peer.timeout = Some(at);
                    // Queued messages the channel now takes produce more output.
                    if std::mem::take(&mut writable) && peer.write_queued() {
                        continue;
                    }
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    if Some(t.source) == self.gatherer.relayed() {
                        self.gatherer
                            .send_relayed(self.now, t.destination, &t.contents);
                    } else if t.source == self.local {
                        self.transmit
                            .push_back((t.destination, t.contents.to_vec()));
                    }
                    // Else from a relayed address since withdrawn: it is not sent at all (never
                    // from the socket itself, which a relay-only device must not reveal).
                }
                Ok(Output::Event(event)) => match event {
                    Event::ChannelOpen(id, _) => {
                        peer.channel = Some(id);
                        peer.up = true;
                        if let Some(mut channel) = peer.rtc.channel(id) {
                            channel.set_buffered_amount_low_threshold(LOW_WATER);
                        }
                        self.events.push_back(LinkEvent::Up(device));
                    }
                    Event::ChannelBufferedAmountLow(_) => writable = true,
                    Event::ChannelData(data) => {
                        self.events.push_back(LinkEvent::Data(device, data.data));
                    }
                    Event::ChannelClose(_)
                    | Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        down = true;
                        break;
                    }
                    _ => {}
                },
                Err(_) => {
                    down = true;
                    break;
                }
            }
        }
        if down {
            if let Some(mut peer) = self.peers.remove(&device) {
                peer.rtc.disconnect();
            }
            self.events.push_back(LinkEvent::Down(device));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One end of a link on a made-up address, its datagrams passed by hand.
    struct End {
        id: Uuid,
        links: Links,
        up: bool,
    }

    impl End {
        fn new(address: &str, now: Instant) -> End {
            End {
                id: Uuid::new_v4(),
                links: Links::with_ice(
                    address.parse().expect("address"),
                    &IcePolicy::default(),
                    now,
                ),
                up: false,
            }
        }

        /// What it sends now, and what it says (negotiation steps go to `other` at once).
        fn sent(&mut self, other: &mut End, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
            while let Some(event) = self.links.poll_event() {
                match event {
                    LinkEvent::Negotiate { signal, .. } => {
                        other.links.apply(now, self.id, signal).expect("applied");
                    }
                    LinkEvent::Up(_) => self.up = true,
                    LinkEvent::Down(_) => self.up = false,
                    LinkEvent::Data(..) => {}
                }
            }
            std::iter::from_fn(|| self.links.poll_transmit()).collect()
        }
    }

    /// STUN messages start with two zero bits; DTLS records with a content type of 20 to 63.
    fn is_stun(datagram: &[u8]) -> bool {
        datagram.first().is_some_and(|b| *b < 2)
    }

    #[test]
    fn a_dtls_flight_that_overtakes_the_ice_check_is_kept_until_the_check_lands() {
        let start = Instant::now();
        let a_address: SocketAddr = "127.0.0.1:40001".parse().expect("address");
        let b_address: SocketAddr = "127.0.0.1:40002".parse().expect("address");
        let mut a = End::new("127.0.0.1:40001", start);
        let mut b = End::new("127.0.0.1:40002", start);
        a.links.open(start, b.id).expect("offer");
        // Every millisecond of a simulated clock, each side's datagrams reach the other with the
        // non-STUN ones first: a DTLS flight always overtakes the STUN sent with it.
        for ms in 0..200 {
            let now = start + Duration::from_millis(ms);
            for end in [&mut a, &mut b] {
                if end.links.poll_timeout().is_some_and(|t| t <= now) {
                    end.links.handle_timeout(now);
                }
            }
            let from_a = a.sent(&mut b, now);
            let from_b = b.sent(&mut a, now);
            for (to, from, datagrams) in [(&mut b, a_address, from_a), (&mut a, b_address, from_b)]
            {
                let (stun, other): (Vec<_>, Vec<_>) =
                    datagrams.into_iter().partition(|(_, d)| is_stun(d));
                for (_, datagram) in other.into_iter().chain(stun) {
                    to.links.handle_datagram(now, from, &datagram);
                }
            }
            if a.up && b.up {
                return;
            }
        }
        panic!("no link within 200 ms: a DTLS flight was lost and waits for its resend timer");
    }
}
