//! The member device's protocol core, sans-IO: fed server frames, the circle directory, peer-link
//! events and time; drained for frames to send, link commands and events to show. One MLS group
//! per circle, ordered by the server's sequencer (docs/protocol.md §7, docs/engine.md).

mod files;
mod links;
mod membership;
mod messages;
mod sequencer;
mod signalling;
mod state;
mod types;

pub use files::StoredFile;
use links::Link;
use membership::{GroupDevice, UncheckedKeyPackage, UncheckedWelcome, Waiting};
use sequencer::{CatchUp, Staged, commit_frame};
use signalling::EarlySignal;
use state::{Held, Pending, Remembered, SavedState, SavedTrust};
pub use state::{HistoryChange, StoreWrite, StoredDevice, Turn};
pub use types::{
    CIPHERSUITE, ChatMessage, DeviceKey, DeviceView, EngineConfig, EngineError, Event,
    GroupDeviceView, IceOutcome, LATEST_SENT_AT, LinkCommand, Output, StopReason, unix_ms,
};
use types::{ICE_RENEW_AT_LEAST, ICE_RENEW_AT_MOST};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{GroupId, MlsGroup, MlsMessageBodyIn, MlsMessageIn, ProtocolMessage};
use openmls_traits::OpenMlsProvider as _;
use tessera_wire::signal::{FrameErrorCode, Limits, ServerFrame};
use tessera_wire::{Base64Url, MemberInfo};
use uuid::Uuid;
use web_time::Instant;

use crate::carry::{Carry, Stream, stream_of};
use crate::codec::{self, Earlier};
use crate::crypto::DeviceSigner;
use crate::delivery::Delivery;
use crate::files::Files;
use crate::history::HistoryImport;
use crate::identity::DeviceCertificate;
use crate::pacer::Pacer;
use crate::payload::{CommitPayload, LinkMessage, SignalPayload, decode_link_message};
use crate::pieces::Assembler;
use crate::provider::Provider;
use crate::renewal::{RenewalOutcome, SessionRenewal, SessionState, SessionStep};
use crate::roster::{Directory, Refusal};
use crate::trust::{
    CheckedProofs, RootFingerprint, RootPin, Trust, TrustedDirectory, UsedInvitations,
};

/// How many items a device keeps of each kind it cannot process yet (KeyPackages before it is in
/// the group, MLS signals before its Welcome, link messages from an epoch ahead of its own).
const MAX_WAITING: usize = 256;

/// Keeps `item` until it can be processed, dropping the oldest beyond [`MAX_WAITING`].
fn push_bounded<T>(queue: &mut Vec<T>, item: T) {
    queue.push(item);
    if queue.len() > MAX_WAITING {
        queue.remove(0);
    }
}

fn mls_error(e: impl std::fmt::Debug) -> EngineError {
    EngineError::Mls(format!("{e:?}"))
}

fn refused(e: impl std::fmt::Debug) -> Refusal {
    Refusal::Mls(format!("{e:?}"))
}

/// The engine of one member device.
pub struct Engine {
    config: EngineConfig,
    provider: Provider,
    signer: DeviceSigner,
    saved: SavedState,
    /// The circle's root and the invitations seen used (saved with `saved`).
    trust: SavedTrust,
    /// Members' keys as first seen and members revoked (saved after `trust`).
    remembered: Remembered,
    /// The circle's messages this device holds and carries for others (saved after
    /// `remembered`; its messages row by row).
    carry: Carry,
    /// This device's message stream ([`crate::carry`]), from its signature key.
    own_stream: Stream,
    /// History taken from this member's other devices (saved after `carry`).
    history_import: HistoryImport,
    /// The files this device holds, receives and serves (saved row by row).
    files: Files,
    /// The proofs whose signatures this device checked in the last directory.
    checked: CheckedProofs,
    /// The circle's safety number as of the last directory.
    safety: Option<String>,
    /// The last directory verified, the root it was verified from, and the verdict.
    last_verdict: Option<(RootPin, Vec<MemberInfo>, TrustedDirectory)>,
    /// What the device reported distrusting already, so that each is said once.
    distrust_reported: BTreeSet<(Uuid, Option<Base64Url>, String)>,
    saved_mls: HashMap<Vec<u8>, Vec<u8>>,
    group: Option<MlsGroup>,
    /// Devices in the group, by device.
    roster: BTreeMap<Uuid, GroupDevice>,
    directory: Option<Directory>,
    directory_version: u64,
    /// A directory fetch is under way.
    directory_requested: bool,
    /// Another fetch is wanted once the one under way ends.
    directory_again: bool,
    /// When the directory is next fetched again.
    directory_due: Option<Instant>,
    /// When a failed directory fetch is tried again.
    directory_retry_at: Option<Instant>,
    /// When the ICE servers are asked for again.
    ice_due: Option<Instant>,
    /// Why the device stopped, once it has.
    stopped: Option<StopReason>,
    /// Where renewing the server session stands.
    session: SessionState,
    /// History changes since the last write.
    history: Vec<HistoryChange>,
    connected: bool,
    server_slot: Option<u64>,
    online: BTreeMap<Uuid, Uuid>,
    announced: BTreeSet<Uuid>,
    announce_at: Option<Instant>,
    waiting: BTreeMap<Uuid, Waiting>,
    /// KeyPackages not checked yet.
    unverified: Vec<UncheckedKeyPackage>,
    /// Welcomes not checked yet.
    welcomes: Vec<UncheckedWelcome>,
    /// The catch-up request waiting for its answer.
    catch_up: Option<CatchUp>,
    /// A staged commit waiting for a fresher directory.
    staged: Option<Staged>,
    /// MLS signals that came before this device's Welcome.
    early: Vec<EarlySignal>,
    links: BTreeMap<Uuid, Link>,
    /// The server's limits, from its latest `hello`.
    limits: Limits,
    /// Frames to the server, within its rate.
    pacer: Pacer,
    /// Signal payloads coming in pieces.
    assembler: Assembler,
    /// The id of the next payload sent in pieces.
    next_pieces: u64,
    outputs: VecDeque<Output>,
    dirty: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("member", &self.saved.member)
            .field("device", &self.saved.device)
            .field("in_group", &self.group.is_some())
            .finish_non_exhaustive()
    }
}

fn read_mls(bytes: &[u8]) -> Result<MlsMessageBodyIn, Refusal> {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map(MlsMessageIn::extract)
        .map_err(|_| Refusal::Malformed("MLS message"))
}

fn protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, Refusal> {
    match read_mls(bytes)? {
        MlsMessageBodyIn::PrivateMessage(m) => Ok(m.into()),
        MlsMessageBodyIn::PublicMessage(m) => Ok(m.into()),
        _ => Err(Refusal::Malformed("MLS protocol message")),
    }
}

impl Engine {
    /// A new device of `member`, with its key certified by the member's hardware key, checking its
    /// circle's membership from `trust`.
    ///
    /// # Errors
    /// [`EngineError::CertificateMismatch`] when the certificate is for another key or device.
    pub fn new(
        config: EngineConfig,
        trust: Trust,
        member: Uuid,
        device: Uuid,
        key: DeviceKey,
        certificate: DeviceCertificate,
    ) -> Result<Engine, EngineError> {
        let bound = certificate.device_key_bytes() == key.public();
        if !bound || certificate.member != member || certificate.device != device {
            return Err(EngineError::CertificateMismatch);
        }
        let provider = Provider::default();
        key.0.store(provider.storage()).map_err(mls_error)?;
        let saved = SavedState {
            member,
            device,
            signature_public: key.public().to_vec(),
            certificate,
            group_id: None,
            next_slot: None,
            recent: BTreeMap::new(),
            held: BTreeMap::new(),
            pending: None,
            key_package: None,
            delivery: Delivery::new(config.delivery.clone()),
            display_name: None,
            names: BTreeMap::new(),
            future: Vec::new(),
        };
        let trust = SavedTrust {
            trust: Some(trust),
            used: UsedInvitations::new(),
        };
        Ok(Engine::assemble(
            config,
            provider,
            key.0,
            (saved, trust),
            None,
        ))
    }

    /// The engine as the local store kept it, write after write.
    ///
    /// # Errors
    /// [`EngineError::Corrupt`] when the parts do not fit together.
    pub fn restore(config: EngineConfig, stored: StoredDevice) -> Result<Engine, EngineError> {
        let StoredDevice {
            state,
            mls,
            outbox,
            carried,
            files,
        } = stored;
        let (mut saved, trust, remembered, mut carry, history_import): (
            SavedState,
            SavedTrust,
            Remembered,
            Carry,
            HistoryImport,
        ) = codec::decode_with_four_tails(&state, Earlier::Cbor)
            .map_err(|e| EngineError::Corrupt(e.to_string()))?;
        carry.set_config(config.carry.clone());
        carry.restore(carried.into_values());
        for row in outbox.values().filter(|row| row.tag.is_none()) {
            if let Ok(LinkMessage::Circle { stream, seq, .. }) = decode_link_message(&row.message) {
                carry.handed(row.peer, row.seq, stream, seq);
            }
        }
        saved.delivery.set_config(config.delivery.clone());
        saved.delivery.restore_outbox(outbox.into_values());
        let saved_mls = mls.clone();
        let provider = Provider::with_values(mls);
        let signer = DeviceSigner::read(provider.storage(), &saved.signature_public)
            .ok_or_else(|| EngineError::Corrupt("the device key is missing".into()))?;
        let group = match &saved.group_id {
            Some(id) => Some(
                MlsGroup::load(provider.storage(), &GroupId::from_slice(id))
                    .map_err(mls_error)?
                    .ok_or_else(|| EngineError::Corrupt("the group is missing".into()))?,
            ),
            None => None,
        };
        let mut engine = Engine::assemble(config, provider, signer, (saved, trust), group);
        engine.saved_mls = saved_mls;
        engine.remembered = remembered;
        engine.carry = carry;
        engine.history_import = history_import;
        engine.files = Files::new(engine.config.files.clone(), files.into_values());
        engine.refresh_roster();
        Ok(engine)
    }

    fn assemble(
        config: EngineConfig,
        provider: Provider,
        signer: DeviceSigner,
        (saved, trust): (SavedState, SavedTrust),
        group: Option<MlsGroup>,
    ) -> Engine {
        let mut carry = Carry::default();
        carry.set_config(config.carry.clone());
        Engine {
            carry,
            files: Files::new(config.files.clone(), []),
            own_stream: stream_of(&saved.signature_public),
            history_import: HistoryImport::default(),
            config,
            provider,
            signer,
            saved,
            trust,
            remembered: Remembered::default(),
            checked: CheckedProofs::default(),
            safety: None,
            last_verdict: None,
            distrust_reported: BTreeSet::new(),
            saved_mls: HashMap::new(),
            group,
            roster: BTreeMap::new(),
            directory: None,
            directory_version: 0,
            directory_requested: false,
            directory_again: false,
            directory_due: None,
            directory_retry_at: None,
            ice_due: None,
            stopped: None,
            session: SessionState::default(),
            history: Vec::new(),
            connected: false,
            server_slot: None,
            online: BTreeMap::new(),
            announced: BTreeSet::new(),
            announce_at: None,
            waiting: BTreeMap::new(),
            unverified: Vec::new(),
            welcomes: Vec::new(),
            catch_up: None,
            early: Vec::new(),
            staged: None,
            links: BTreeMap::new(),
            limits: Limits::default(),
            pacer: Pacer::new(Limits::default()),
            assembler: Assembler::default(),
            next_pieces: 0,
            outputs: VecDeque::new(),
            dirty: true,
        }
    }

    /// The circle's root this device pinned, once it has (see [`crate::trust::RootPin`]).
    #[must_use]
    pub fn root(&self) -> Option<RootFingerprint> {
        match self.trust.trust?.root {
            RootPin::Pinned(root) => Some(root),
            RootPin::FromOwnKey => None,
        }
    }

    /// This device's member.
    #[must_use]
    pub fn member(&self) -> Uuid {
        self.saved.member
    }

    /// This device.
    #[must_use]
    pub fn device(&self) -> Uuid {
        self.saved.device
    }

    /// Whether this device is in the circle's group.
    #[must_use]
    pub fn in_group(&self) -> bool {
        self.group.is_some()
    }

    /// The group's MLS epoch, when in the group.
    #[must_use]
    pub fn epoch(&self) -> Option<u64> {
        self.group.as_ref().map(|g| g.epoch().as_u64())
    }

    /// The devices of the group (this one included): device → member.
    #[must_use]
    pub fn group_devices(&self) -> BTreeMap<Uuid, Uuid> {
        self.roster.iter().map(|(d, g)| (*d, g.member)).collect()
    }

    /// Display names learnt inside the group (this member's as set here), as members are shown:
    /// member → label, told apart when two look alike ([`crate::names::labels`]).
    #[must_use]
    pub fn display_names(&self) -> BTreeMap<Uuid, String> {
        let mut names = self.saved.names.clone();
        if let Some(name) = &self.saved.display_name {
            names.insert(self.saved.member, name.clone());
        }
        crate::names::labels(&names)
    }

    /// Whether the link to `device` is up.
    #[must_use]
    pub fn link_is_up(&self, device: Uuid) -> bool {
        self.links.get(&device) == Some(&Link::Up)
    }

    /// Frames waiting to go to the server within its rate.
    #[must_use]
    pub fn frames_waiting(&self) -> usize {
        self.pacer.waiting()
    }

    /// Messages waiting in the outbox for `device`.
    #[must_use]
    pub fn unacknowledged(&self, device: Uuid) -> usize {
        self.saved.delivery.unacknowledged(device)
    }

    // ---------------------------------------------------------------- inputs

    /// The circle directory, fetched from `GET /api/v1/members`: what it lists counts as far as
    /// the chain from the circle's root admits it (see [`crate::trust`]).
    pub fn handle_directory(&mut self, now: Instant, members: Vec<MemberInfo>) {
        let trusted = self.verify_directory(members);
        self.directory = Some(Directory::new(&trusted));
        self.directory_version += 1;
        self.directory_requested = false;
        self.directory_retry_at = None;
        self.directory_due = Some(now + self.config.directory_refresh);
        if std::mem::take(&mut self.directory_again) {
            self.fetch_directory();
        }
        self.retry_key_packages(now);
        let welcomes = std::mem::take(&mut self.welcomes);
        for w in welcomes {
            self.receive_welcome(now, w.from, &w.bytes, w.next_slot, w.tried);
        }
        self.step(now);
    }

    /// A frame from the server.
    pub fn handle_frame(&mut self, now: Instant, frame: ServerFrame) {
        match frame {
            ServerFrame::Hello {
                member,
                device,
                peers,
                slot,
                limits,
            } => {
                if member != self.saved.member || device != self.saved.device {
                    self.event(Event::Refused {
                        what: "hello",
                        reason: Refusal::WrongRecipient,
                    });
                    return;
                }
                self.connected = true;
                self.session.accepted();
                self.limits = limits;
                self.pacer.set_limits(limits);
                self.server_slot = Some(slot);
                self.online = peers.into_iter().map(|p| (p.device, p.member)).collect();
                self.announced.clear();
                self.catch_up = None;
                if let Some(pending) = &self.saved.pending
                    && pending.slot == slot
                {
                    // The answer was lost with the old connection and the slot is still free.
                    let frame = commit_frame(pending.slot, &pending.commit);
                    self.send(frame);
                }
                for (device, link) in &mut self.links {
                    if matches!(link, Link::Down { .. }) && self.online.contains_key(device) {
                        *link = Link::Down { retry_at: None };
                    }
                }
            }
            ServerFrame::Presence {
                member,
                device,
                online,
            } => {
                if online {
                    self.online.insert(device, member);
                    if let Some(Link::Down { retry_at }) = self.links.get_mut(&device) {
                        *retry_at = None;
                    }
                } else {
                    self.online.remove(&device);
                    self.announced.remove(&device);
                    self.carry.sender_left(now);
                    // A group device going away may be a revoked member's: look again.
                    if self.roster.contains_key(&device) {
                        self.fetch_directory();
                    }
                }
            }
            ServerFrame::Signal {
                from,
                member,
                payload,
            } => match codec::from_json::<SignalPayload>(payload.get()) {
                Ok(payload) => self.receive_signal(now, from, member, payload),
                Err(_) => self.event(Event::Refused {
                    what: "signal",
                    reason: Refusal::Malformed("signal payload"),
                }),
            },
            ServerFrame::Commit { slot, payload, .. } => {
                self.server_slot = Some(self.server_slot.unwrap_or(0).max(slot + 1));
                match codec::from_json::<CommitPayload>(payload.get())
                    .ok()
                    .map(|p| p.mls.into_vec())
                {
                    Some(commit) => self.hold(slot, commit),
                    None => self.event(Event::Refused {
                        what: "commit",
                        reason: Refusal::Malformed("commit payload"),
                    }),
                }
            }
            ServerFrame::CommitResult { slot, accepted } => {
                self.receive_commit_result(now, slot, accepted);
            }
            // Replaced is why the device stops: that event says so, once.
            ServerFrame::Error {
                code: FrameErrorCode::Replaced,
                ..
            } => self.stop(StopReason::Replaced),
            ServerFrame::Error { code, .. } => self.event(Event::ServerError { code }),
            ServerFrame::Revoked => self.stop(StopReason::Revoked),
            ServerFrame::SessionEnded => self.session_refused(now),
        }
        self.step(now);
    }

    /// The signalling connection dropped; peer links go on.
    pub fn handle_disconnected(&mut self, now: Instant) {
        self.connected = false;
        self.catch_up = None;
        self.step(now);
    }

    /// The circle directory could not be fetched (`reason`, in words): asked for again after
    /// [`EngineConfig::directory_retry`].
    pub fn handle_directory_unavailable(&mut self, now: Instant, reason: String) {
        self.directory_requested = false;
        self.directory_again = false;
        self.directory_retry_at = Some(now + self.config.directory_retry);
        self.event(Event::DirectoryUnavailable { reason });
    }

    /// What came of fetching the ICE servers (at start, or for [`Output::FetchIceServers`]):
    /// decides when they are asked for again.
    pub fn handle_ice_servers(&mut self, now: Instant, outcome: IceOutcome) {
        self.ice_due = match outcome {
            IceOutcome::NotConfigured | IceOutcome::Offered { relay_ttl: None } => None,
            IceOutcome::Unavailable => Some(now + self.config.ice_retry),
            IceOutcome::Offered {
                relay_ttl: Some(ttl),
            } => Some(now + (ttl / 3).clamp(ICE_RENEW_AT_LEAST, ICE_RENEW_AT_MOST)),
        };
    }

    /// The server refused this device's session (expired, logged out, or the member revoked while
    /// the device was away): the device asks its driver to renew it ([`Output::RenewSession`]),
    /// once; a refusal soon after a renewal (of a request made with the old session) renews
    /// again only after a while, and not once a connection was accepted.
    pub fn handle_session_ended(&mut self, now: Instant) {
        self.session_refused(now);
        self.step(now);
    }

    /// What came of the renewal [`Output::RenewSession`] asked for: renewed (the driver uses the
    /// new session and connects again), refused (the device stops: the member logs in with their
    /// key), revoked, or unavailable (asked again after [`EngineConfig::directory_retry`]).
    pub fn handle_session_renewal(&mut self, now: Instant, outcome: RenewalOutcome) {
        if self.session != SessionState::Renewing {
            return;
        }
        self.session
            .outcome(outcome, now, now + self.config.directory_retry);
        match outcome {
            RenewalOutcome::Renewed => self.event(Event::SessionRenewed),
            RenewalOutcome::Refused => self.stop(StopReason::SessionEnded),
            RenewalOutcome::Revoked => self.stop(StopReason::Revoked),
            RenewalOutcome::Unavailable => {}
        }
        self.step(now);
    }

    /// This device's request for a new session in the server's ceremony `ceremony` (for
    /// [`Output::RenewSession`]): its certificate and its key's signature.
    ///
    /// # Errors
    /// When the device key cannot sign.
    pub fn session_renewal(&self, ceremony: &str) -> Result<SessionRenewal, EngineError> {
        SessionRenewal::sign(
            &self.signer,
            &self.saved.certificate,
            &self.config.origin,
            ceremony,
        )
    }

    fn session_refused(&mut self, now: Instant) {
        if self.session.refused(now) == SessionStep::Renew {
            self.outputs.push_back(Output::RenewSession);
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.saved.delivery.handle_timeout(now);
        if self.connected && self.directory_due.is_some_and(|due| due <= now) {
            self.directory_due = None;
            self.fetch_directory();
        }
        if self.directory_retry_at.is_some_and(|at| at <= now) {
            self.directory_retry_at = None;
            self.fetch_directory();
        }
        if self.ice_due.is_some_and(|at| at <= now) {
            self.ice_due = None;
            self.outputs.push_back(Output::FetchIceServers);
        }
        if self.session.due(now) == SessionStep::Renew {
            self.outputs.push_back(Output::RenewSession);
        }
        self.step(now);
    }

    /// When [`Engine::handle_timeout`] next has work. Only deadlines it acts on now count (none
    /// once the device stopped; announcing only while connected outside the group, carrying only
    /// inside it, links only to devices online): one it would leave in the past would wake the
    /// driver, and have it write the state, without end.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped.is_some() {
            return None;
        }
        let in_group = self.group.is_some();
        // What `step` announces from: connected, with the directory, outside the group.
        let announcing = !in_group && self.connected && self.directory.is_some();
        let relinks = self.links.iter().filter_map(|(device, link)| match link {
            Link::Down { retry_at } => retry_at.filter(|_| self.online.contains_key(device)),
            Link::Connecting { since } => Some(*since + self.config.link_timeout),
            Link::Up => None,
        });
        let fallbacks = self
            .waiting
            .values()
            .map(|w| w.since + self.config.add_fallback_after);
        [
            self.saved.delivery.poll_timeout(),
            self.carry.poll_timeout().filter(|_| in_group),
            self.files.poll_timeout(),
            self.announce_at.filter(|_| announcing),
            self.catch_up.as_ref().map(|c| c.answer_by),
            self.directory_due.filter(|_| self.connected),
            self.directory_retry_at,
            self.ice_due,
            self.session.poll_timeout(),
            self.pacer.next_at(),
            self.assembler.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .chain(relinks)
        .chain(fallbacks)
        .min()
    }

    /// The engine's next turn: what to write to the local store, then what to do; `None` when
    /// there is nothing of either. A driver writes the turn's write (one transaction) before it
    /// acts on the turn's outputs, and takes turns until there are none (acting feeds the engine).
    ///
    /// # Errors
    /// When the state cannot be encoded.
    pub fn next_turn(&mut self) -> Result<Option<Turn>, EngineError> {
        let outputs = links::bundled(self.outputs.drain(..));
        let write = self.take_write()?;
        if outputs.is_empty() && write.is_none() {
            return Ok(None);
        }
        Ok(Some(Turn { write, outputs }))
    }

    /// Why the device stopped, once it has ([`Event::Stopped`]).
    #[must_use]
    pub fn stopped(&self) -> Option<StopReason> {
        self.stopped
    }

    /// The device as its user interface shows it.
    #[must_use]
    pub fn view(&self) -> DeviceView {
        let me = self.saved.device;
        let devices = self
            .roster
            .iter()
            .map(|(device, g)| GroupDeviceView {
                device: *device,
                member: g.member,
                own: *device == me,
                online: *device == me || self.online.contains_key(device),
                linked: self.link_is_up(*device),
                waiting: self.unacknowledged(*device),
            })
            .collect();
        let (carrying, _) = self.carry.kept();
        DeviceView {
            member: self.saved.member,
            device: me,
            in_group: self.in_group(),
            epoch: self.epoch(),
            connected: self.connected,
            names: self.display_names(),
            display_name: self.saved.display_name.clone(),
            devices,
            safety: self.safety.clone(),
            missing: self.carry.missing(),
            carrying,
            dropped: self.carry.dropped_unconfirmed(),
        }
    }

    /// What to write to the local store, if anything changed since the last write.
    fn take_write(&mut self) -> Result<Option<StoreWrite>, EngineError> {
        if !self.dirty && !self.files.changed() {
            return Ok(None);
        }
        self.dirty = false;
        self.saved.group_id = self
            .group
            .as_ref()
            .map(|g| g.group_id().as_slice().to_vec());
        let state = codec::encode_with_tail(
            &self.saved,
            &(
                &self.trust,
                &self.remembered,
                &self.carry,
                &self.history_import,
            ),
        )
        .map_err(|e| EngineError::Corrupt(e.to_string()))?;
        let mls = self.provider.changes_since(&mut self.saved_mls);
        let outbox = self.saved.delivery.take_outbox_changes();
        let history = std::mem::take(&mut self.history);
        let carried = self.carry.take_changes();
        let files = self.files.take_changes();
        Ok(Some(StoreWrite {
            state,
            mls,
            outbox,
            history,
            carried,
            files,
        }))
    }

    // ---------------------------------------------------------------- the machine

    fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn link(&mut self, command: LinkCommand) {
        self.outputs.push_back(Output::Link(command));
    }

    /// Stops the device, once: its last event says why.
    fn stop(&mut self, reason: StopReason) {
        if self.stopped.is_none() {
            self.stopped = Some(reason);
            self.event(Event::Stopped { reason });
        }
    }

    /// Runs after every input, which may have changed what is saved.
    fn step(&mut self, now: Instant) {
        self.dirty = true;
        if self.stopped.is_some() {
            return;
        }
        if self.directory.is_none() && !self.directory_requested {
            self.fetch_directory();
        }
        self.process_held(now);
        if self.connected && self.directory.is_some() {
            if self.group.is_none() {
                self.join_or_create(now);
            } else {
                self.catch_up_if_behind(now);
                self.commit_changes(now);
            }
        }
        self.drive_links(now);
        self.drain_delivery(now);
        if self.circulate(now) {
            self.drain_delivery(now);
        }
        self.move_files(now);
        self.assembler.expire(now);
        self.release_frames(now);
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde_bytes::ByteBuf;

    use super::*;

    fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).expect("encode");
        out
    }

    #[test]
    fn states_saved_in_cbor_by_earlier_versions_still_read_and_new_ones_are_postcard() {
        // How states were saved first: CBOR, every byte an array element.
        #[derive(Serialize)]
        struct ArrayHeld {
            commit: Vec<u8>,
            tried_with_directory: Option<u64>,
        }
        let old = cbor(&ArrayHeld {
            commit: vec![200; 100],
            tried_with_directory: Some(4),
        });
        let held: Held = codec::decode(&old, Earlier::Cbor).expect("an array-encoded commit reads");
        assert_eq!(held.commit, vec![200; 100]);
        assert_eq!(held.tried_with_directory, Some(4));
        let old_recent: BTreeMap<u64, Vec<u8>> = [(7, vec![9; 50])].into();
        let recent: BTreeMap<u64, ByteBuf> =
            codec::decode(&cbor(&old_recent), Earlier::Cbor).expect("array-encoded recent commits");
        assert_eq!(recent[&7].as_slice(), &[9; 50][..]);
        // Then CBOR byte strings.
        let byte_strings = cbor(&held);
        let back: Held = codec::decode(&byte_strings, Earlier::Cbor).expect("reads");
        assert_eq!(back.commit, held.commit);
        // Now postcard: about the bytes' own size.
        let new = codec::encode(&held).expect("encodes");
        assert!(new.len() <= held.commit.len() + 8, "{} bytes", new.len());
        let back: Held = codec::decode(&new, Earlier::Cbor).expect("reads");
        assert_eq!(back.commit, held.commit);
        assert_eq!(back.tried_with_directory, Some(4));
    }

    #[test]
    fn events_serialize_as_the_cli_and_the_page_show_them() {
        let id = Uuid::new_v4();
        let json = |event: &Event| serde_json::to_value(event).expect("json");
        let message = ChatMessage {
            id,
            member: id,
            device: id,
            text: "hi".into(),
            sent_at: 5,
            file: None,
            reply_to: None,
        };
        assert_eq!(
            json(&Event::Message {
                message,
                outgoing: true
            }),
            serde_json::json!({"event": "message", "id": id, "member": id, "device": id,
                "text": "hi", "sent_at": 5, "file": null, "reply_to": null, "outgoing": true})
        );
        let target = crate::changes::MessageRef {
            member: id,
            device: id,
            id,
        };
        assert_eq!(
            json(&Event::MessageChanged {
                change: crate::changes::MessageChange {
                    id,
                    member: id,
                    device: id,
                    target,
                    change: crate::changes::Change::React {
                        emoji: "👍".into()
                    },
                    sent_at: 6,
                }
            }),
            serde_json::json!({"event": "message_changed", "id": id, "member": id, "device": id,
                "target": {"member": id, "device": id, "id": id},
                "change": {"kind": "react", "emoji": "👍"}, "sent_at": 6})
        );
        assert_eq!(
            json(&Event::Delivered {
                id,
                device: id,
                carried: true
            }),
            serde_json::json!({"event": "delivered", "id": id, "device": id, "carried": true})
        );
        assert_eq!(
            json(&Event::Refused {
                what: "commit",
                reason: Refusal::UnknownMember
            }),
            serde_json::json!({"event": "refused", "what": "commit",
                "reason": "the member is not in the circle directory, or nothing signed admits them"})
        );
        assert_eq!(
            json(&Event::Stopped {
                reason: StopReason::SessionEnded
            }),
            serde_json::json!({"event": "stopped", "reason": "session_ended"})
        );
    }
}
