//! The member device's protocol core, sans-IO: fed server frames, the circle directory, peer-link
//! events and time; drained for frames to send, link commands and events to show. One MLS group
//! per circle, ordered by the server's sequencer (docs/protocol.md §7 and §14).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{BasicCredential, Sender};
use openmls::prelude::{
    Ciphersuite, CredentialWithKey, GroupId, KeyPackage, KeyPackageIn, LeafNode, LeafNodeIndex,
    MlsGroup, MlsGroupCreateConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    PURE_CIPHERTEXT_WIRE_FORMAT_POLICY, ProcessedMessageContent, ProtocolMessage, ProtocolVersion,
    SenderRatchetConfiguration, StagedCommit, StagedWelcome,
};
use openmls_traits::OpenMlsProvider as _;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use serde_json::value::{RawValue, to_raw_value};
use tessera_wire::signal::{ClientFrame, FrameErrorCode, Limits, ServerFrame};
use tessera_wire::{Base64Url, MemberInfo};
use uuid::Uuid;
use web_time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::codec::{self, Earlier};
use crate::crypto::DeviceSigner;
use crate::delivery::{Delivery, DeliveryConfig, OutboxChange, Queued, Seq};
use crate::identity::DeviceCertificate;
use crate::pacer::Pacer;
use crate::payload::{
    CommitPayload, Content, RtcSignal, Sealed, SignalPayload, decode_packet, encode_packet,
};
use crate::pieces::{self, Assembler};
use crate::provider::{Provider, StorageChanges};
use crate::roster::{Directory, Refusal, certificate_of, verify_leaf, verify_leaf_node};

/// The circle's ciphersuite: X25519, AES-128-GCM, SHA-256, Ed25519 device keys.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past epochs' secrets a device keeps, so that messages sent just before a commit
/// (or waiting in an outbox across one) can still be read.
const PAST_EPOCHS: usize = 16;

/// The latest time a received message may claim to be written at (ms since the Unix epoch): the
/// end of what JavaScript's `Date` can show. A peer's clock is its own; a time outside
/// `0..=LATEST_SENT_AT` is shown as the nearest bound rather than breaking the interfaces.
pub const LATEST_SENT_AT: i64 = 8_640_000_000_000_000;

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

/// Timings and limits of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The server's origin, as the hardware key saw it (`https://tessera.example`).
    pub origin: String,
    /// The WebAuthn relying party id (the origin's host).
    pub rp_id: String,
    /// How many accepted commits a device keeps for peers that catch up.
    pub recent_commits: usize,
    /// How often a device outside the group announces its KeyPackage again.
    pub announce_every: Duration,
    /// How long a catch-up request waits for its answer before the next peer is asked.
    pub catch_up_timeout: Duration,
    /// How long a KeyPackage waits for the designated device before any member adds it.
    pub add_fallback_after: Duration,
    /// How long after a link failed its initiator tries again.
    pub relink_after: Duration,
    /// How long a link may take to open before it is tried again.
    pub link_timeout: Duration,
    /// How often a connected device fetches the circle directory again, to learn of revoked
    /// members whose devices were offline when it happened.
    pub directory_refresh: Duration,
    /// Delivery limits and timings.
    pub delivery: DeliveryConfig,
}

impl EngineConfig {
    /// Defaults for a server at `origin` with RP id `rp_id`.
    #[must_use]
    pub fn new(origin: impl Into<String>, rp_id: impl Into<String>) -> EngineConfig {
        EngineConfig {
            origin: origin.into(),
            rp_id: rp_id.into(),
            recent_commits: 256,
            announce_every: Duration::from_secs(5),
            catch_up_timeout: Duration::from_secs(5),
            add_fallback_after: Duration::from_secs(10),
            relink_after: Duration::from_secs(2),
            link_timeout: Duration::from_secs(10),
            directory_refresh: Duration::from_secs(60),
            delivery: DeliveryConfig::default(),
        }
    }
}

/// Why the engine cannot do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The device is not in the circle's group yet.
    #[error("this device is not in the circle's group yet")]
    NotInGroup,
    /// The certificate is not for this device's key.
    #[error("the device certificate is not for this device's key")]
    CertificateMismatch,
    /// The message is too large.
    #[error("the message is too large")]
    TooLarge,
    /// The saved state cannot be read.
    #[error("the saved state cannot be read: {0}")]
    Corrupt(String),
    /// MLS failed.
    #[error("MLS failed: {0}")]
    Mls(String),
}

fn mls_error(e: impl std::fmt::Debug) -> EngineError {
    EngineError::Mls(format!("{e:?}"))
}

fn refused(e: impl std::fmt::Debug) -> Refusal {
    Refusal::Mls(format!("{e:?}"))
}

/// A device's MLS signature key, before it is certified by the member's hardware key.
#[derive(Debug)]
pub struct DeviceKey(DeviceSigner);

impl DeviceKey {
    /// A fresh Ed25519 key.
    ///
    /// # Errors
    /// When the system has no randomness.
    pub fn generate() -> Result<DeviceKey, EngineError> {
        DeviceSigner::generate().map(DeviceKey).map_err(mls_error)
    }

    /// The public key, which the hardware key certifies.
    #[must_use]
    pub fn public(&self) -> &[u8] {
        self.0.public()
    }
}

/// What the engine asks its driver to do with peer links (WebRTC data channels). Serialized for
/// the page's driver as `{"kind":"open","device":…}` (the bytes of `data` as a byte string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LinkCommand {
    /// Open a link to `device`; the initiator makes the offer, the other waits for it.
    Open {
        /// The peer.
        device: Uuid,
    },
    /// A negotiation step from `device`, authenticated by MLS: apply it to that link (an offer
    /// creates the link on the answering side).
    Rtc {
        /// The peer.
        device: Uuid,
        /// The step.
        signal: RtcSignal,
    },
    /// Put these bytes on the link's data channel.
    Data {
        /// The peer.
        device: Uuid,
        /// One packet.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Close the link: the peer left the group.
    Close {
        /// The peer.
        device: Uuid,
    },
}

/// A chat message, sent or received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The message's id.
    pub id: Uuid,
    /// The sending member.
    pub member: Uuid,
    /// The sending device.
    pub device: Uuid,
    /// The text.
    pub text: String,
    /// When it was written (ms since the Unix epoch, by the sender's clock).
    pub sent_at: i64,
}

/// What happened, for the user interface and the history. Serialized as the CLI's `--json` lines
/// and the page's events show it: `{"event":"delivered","id":…,"device":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// This device created the circle's group (the circle's first device).
    GroupCreated,
    /// This device joined the group through a Welcome.
    Joined,
    /// The group's devices or display names changed.
    MembersChanged,
    /// This device was removed from the group.
    Removed,
    /// A message sent by this device (now in the outbox) or received from a peer.
    Message {
        /// The message.
        #[serde(flatten)]
        message: ChatMessage,
        /// Whether this device sent it.
        outgoing: bool,
    },
    /// A peer device acknowledged one of this device's messages.
    Delivered {
        /// The message.
        id: Uuid,
        /// The device that holds it now.
        device: Uuid,
    },
    /// Something from a peer or the server was refused (tampering, a stale directory, a bug).
    Refused {
        /// What it was.
        what: &'static str,
        /// Why.
        #[serde(serialize_with = "as_sentence")]
        reason: Refusal,
    },
    /// The server refused a frame.
    ServerError {
        /// Its code.
        code: FrameErrorCode,
    },
    /// The server says the membership or the session was revoked.
    Revoked,
}

/// Serializes a refusal as the sentence that explains it.
fn as_sentence<S: serde::Serializer>(reason: &Refusal, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(reason)
}

/// What the engine wants done.
#[derive(Debug)]
pub enum Output {
    /// Send this frame to the server.
    Send(ClientFrame),
    /// A link command.
    Link(LinkCommand),
    /// Show or record this.
    Event(Event),
    /// Fetch the circle directory and hand it to [`Engine::handle_directory`].
    FetchDirectory,
}

/// What must be written to the local store before the outputs that followed it are acted on.
#[derive(Debug)]
pub struct Snapshot {
    /// The engine's own state (CBOR).
    pub state: Vec<u8>,
    /// Changes to the MLS key-value store.
    pub mls: StorageChanges,
    /// Changes to the outbox, one row per message and peer.
    pub outbox: Vec<OutboxChange>,
}

/// An engine as its local store keeps it: the last snapshot's state, and the MLS key-value pairs
/// and outbox rows as the snapshots' changes left them. What [`Engine::restore`] takes.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// The engine's own state (CBOR).
    pub state: Vec<u8>,
    /// MLS's key-value store.
    pub mls: HashMap<Vec<u8>, Vec<u8>>,
    /// The outbox, by peer and sequence number.
    pub outbox: BTreeMap<(Uuid, Seq), Queued>,
}

impl Stored {
    /// Applies a snapshot, as a store on disk does in one transaction.
    pub fn apply(&mut self, snapshot: Snapshot) {
        self.state = snapshot.state;
        for (key, value) in snapshot.mls {
            match value {
                Some(value) => self.mls.insert(key, value),
                None => self.mls.remove(&key),
            };
        }
        for change in snapshot.outbox {
            match change {
                OutboxChange::Put(row) => {
                    self.outbox.insert((row.peer, row.seq), row);
                }
                OutboxChange::Delete { peer, seq } => {
                    self.outbox.remove(&(peer, seq));
                }
            }
        }
    }
}

/// A device's commit waiting for its slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    slot: u64,
    #[serde(with = "serde_bytes")]
    commit: Vec<u8>,
    #[serde(with = "serde_bytes")]
    welcome: Option<Vec<u8>>,
    /// Devices the Welcome goes to once the commit is accepted.
    joining: Vec<Uuid>,
    /// A claim: the commit that makes this device's new group the circle's.
    claim: bool,
}

/// A relayed commit waiting to be processed, and the directory version it last failed against.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    #[serde(with = "serde_bytes")]
    commit: Vec<u8>,
    tried_with_directory: Option<u64>,
}

/// A relayed commit, decrypted and staged, with its sender.
#[derive(Debug)]
struct Staged {
    commit: Box<StagedCommit>,
    sender: DeviceCertificate,
    sender_leaf: LeafNodeIndex,
}

/// A verified KeyPackage waiting to be added.
#[derive(Debug, Clone)]
struct Waiting {
    key_package: KeyPackage,
    since: Instant,
}

/// The state of a link as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down { retry_at: Option<Instant> },
    Connecting { since: Instant },
    Up,
}

/// What the local store keeps of the engine between runs (besides the MLS key-value store),
/// encoded by [`codec`] (postcard: fields by position, not by name). Adding, removing or reordering
/// a field here, in [`Delivery`] or in the types they hold makes saved devices unreadable: such a
/// change needs a new format tag in [`codec`] and a way to read the previous one.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    member: Uuid,
    device: Uuid,
    #[serde(with = "serde_bytes")]
    signature_public: Vec<u8>,
    certificate: DeviceCertificate,
    #[serde(with = "serde_bytes")]
    group_id: Option<Vec<u8>>,
    next_slot: Option<u64>,
    recent: BTreeMap<u64, ByteBuf>,
    held: BTreeMap<u64, Held>,
    pending: Option<Pending>,
    #[serde(with = "serde_bytes")]
    key_package: Option<Vec<u8>>,
    delivery: Delivery,
    display_name: Option<String>,
    names: BTreeMap<Uuid, String>,
    future: Vec<(Uuid, Vec<u8>)>,
}

/// The engine of one member device.
pub struct Engine {
    config: EngineConfig,
    provider: Provider,
    signer: DeviceSigner,
    saved: Saved,
    saved_mls: HashMap<Vec<u8>, Vec<u8>>,
    group: Option<MlsGroup>,
    /// Devices in the group: device → (member, leaf).
    roster: BTreeMap<Uuid, (Uuid, LeafNodeIndex)>,
    directory: Option<Directory>,
    directory_version: u64,
    directory_requested: bool,
    /// When the directory is next fetched again.
    directory_due: Option<Instant>,
    connected: bool,
    server_slot: Option<u64>,
    online: BTreeMap<Uuid, Uuid>,
    announced: BTreeSet<Uuid>,
    announce_at: Option<Instant>,
    waiting: BTreeMap<Uuid, Waiting>,
    /// KeyPackages not checked yet: sender device, member, bytes, and the directory version an
    /// unknown member was last looked up in.
    unverified: Vec<(Uuid, Uuid, Vec<u8>, Option<u64>)>,
    /// Welcomes not checked yet: sender, bytes, next slot, directory version last tried.
    welcomes: Vec<(Uuid, Vec<u8>, u64, Option<u64>)>,
    catch_up: Option<(Uuid, Instant, BTreeSet<Uuid>)>,
    /// A staged commit waiting for a fresher directory.
    staged: Option<(u64, Staged)>,
    /// MLS signals that came before this device's Welcome.
    early: Vec<(Uuid, Uuid, Base64Url)>,
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The group's settings; a device that joins by Welcome uses the same ones.
fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(PAST_EPOCHS)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(1_000, 100_000))
        .build()
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
    /// A new device of `member`, with its key certified by the member's hardware key.
    ///
    /// # Errors
    /// [`EngineError::CertificateMismatch`] when the certificate is for another key or device.
    pub fn new(
        config: EngineConfig,
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
        let saved = Saved {
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
        Ok(Engine::assemble(config, provider, key.0, saved, None))
    }

    /// The engine as the local store kept it, snapshot after snapshot.
    ///
    /// # Errors
    /// [`EngineError::Corrupt`] when the parts do not fit together.
    pub fn restore(config: EngineConfig, stored: Stored) -> Result<Engine, EngineError> {
        let Stored { state, mls, outbox } = stored;
        let mut saved: Saved = codec::decode(&state, Earlier::Cbor)
            .map_err(|e| EngineError::Corrupt(e.to_string()))?;
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
        let mut engine = Engine::assemble(config, provider, signer, saved, group);
        engine.saved_mls = saved_mls;
        engine.refresh_roster();
        Ok(engine)
    }

    fn assemble(
        config: EngineConfig,
        provider: Provider,
        signer: DeviceSigner,
        saved: Saved,
        group: Option<MlsGroup>,
    ) -> Engine {
        Engine {
            config,
            provider,
            signer,
            saved,
            saved_mls: HashMap::new(),
            group,
            roster: BTreeMap::new(),
            directory: None,
            directory_version: 0,
            directory_requested: false,
            directory_due: None,
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
        self.roster.iter().map(|(d, (m, _))| (*d, *m)).collect()
    }

    /// The devices online at the server (as of the last hello and presence).
    #[must_use]
    pub fn online_devices(&self) -> BTreeMap<Uuid, Uuid> {
        self.online.clone()
    }

    /// Display names learnt inside the group: member → name.
    #[must_use]
    pub fn display_names(&self) -> BTreeMap<Uuid, String> {
        let mut names = self.saved.names.clone();
        if let Some(name) = &self.saved.display_name {
            names.insert(self.saved.member, name.clone());
        }
        names
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

    /// The circle directory, fetched from `GET /api/v1/members`.
    pub fn handle_directory(&mut self, now: Instant, members: Vec<MemberInfo>) {
        self.directory = Some(Directory::new(members));
        self.directory_version += 1;
        self.directory_requested = false;
        self.directory_due = Some(now + self.config.directory_refresh);
        self.retry_key_packages(now);
        let welcomes = std::mem::take(&mut self.welcomes);
        for (from, welcome, next, tried) in welcomes {
            self.take_welcome(now, from, &welcome, next, tried);
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
                epoch,
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
                self.limits = limits;
                self.pacer.set_limits(limits);
                self.server_slot = Some(epoch);
                self.online = peers.into_iter().map(|p| (p.device, p.member)).collect();
                self.announced.clear();
                self.catch_up = None;
                if let Some(pending) = &self.saved.pending
                    && pending.slot == epoch
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
                Ok(payload) => self.take_signal(now, from, member, payload),
                Err(_) => self.event(Event::Refused {
                    what: "signal",
                    reason: Refusal::Malformed("signal payload"),
                }),
            },
            ServerFrame::Commit { epoch, payload, .. } => {
                self.server_slot = Some(self.server_slot.unwrap_or(0).max(epoch + 1));
                match codec::from_json::<CommitPayload>(payload.get())
                    .ok()
                    .map(|p| p.mls.into_vec())
                {
                    Some(commit) => self.hold(epoch, commit),
                    None => self.event(Event::Refused {
                        what: "commit",
                        reason: Refusal::Malformed("commit payload"),
                    }),
                }
            }
            ServerFrame::CommitResult { epoch, accepted } => {
                self.take_commit_result(now, epoch, accepted);
            }
            ServerFrame::Error { code, .. } => self.event(Event::ServerError { code }),
            ServerFrame::Revoked => self.event(Event::Revoked),
        }
        self.step(now);
    }

    /// The signalling connection dropped; peer links go on.
    pub fn handle_disconnected(&mut self, now: Instant) {
        self.connected = false;
        self.catch_up = None;
        self.step(now);
    }

    /// The link to `device` opened.
    pub fn handle_link_up(&mut self, now: Instant, device: Uuid) {
        if !self.roster.contains_key(&device) {
            self.link(LinkCommand::Close { device });
            return;
        }
        self.links.insert(device, Link::Up);
        self.saved.delivery.link_up(now, device);
        self.step(now);
    }

    /// The link to `device` closed or failed.
    pub fn handle_link_down(&mut self, now: Instant, device: Uuid) {
        self.saved.delivery.link_down(device);
        if self.links.contains_key(&device) {
            self.links.insert(
                device,
                Link::Down {
                    retry_at: Some(now + self.config.relink_after),
                },
            );
        }
        self.step(now);
    }

    /// Bytes from the link to `device`.
    pub fn handle_link_data(&mut self, now: Instant, device: Uuid, bytes: &[u8]) {
        if !self.roster.contains_key(&device) {
            return;
        }
        match decode_packet(bytes) {
            Ok(packet) => {
                self.saved.delivery.handle_packet(now, device, packet);
            }
            Err(_) => self.event(Event::Refused {
                what: "link packet",
                reason: Refusal::Malformed("link packet"),
            }),
        }
        self.step(now);
    }

    /// A negotiation step of this device's side of the link to `device` (from the WebRTC stack),
    /// sent to it MLS-protected through the server.
    ///
    /// # Errors
    /// [`EngineError::NotInGroup`], or MLS failing.
    pub fn send_rtc(
        &mut self,
        now: Instant,
        device: Uuid,
        signal: RtcSignal,
    ) -> Result<(), EngineError> {
        let sent = self.send_sealed(
            device,
            &Sealed::Rtc {
                to: device,
                rtc: signal,
            },
        );
        self.step(now);
        sent
    }

    /// Sends `sealed` to `device` through the server, MLS-protected.
    fn send_sealed(&mut self, device: Uuid, sealed: &Sealed) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(sealed).map_err(|e| EngineError::Mls(e.to_string()))?;
        let msg = self.encrypt(&bytes)?;
        self.send_signal(device, &SignalPayload::Mls { msg: msg.into() });
        Ok(())
    }

    /// Sends `text` to every other device of the group, peer to peer; it waits in the outbox for
    /// devices that are away.
    ///
    /// # Errors
    /// [`EngineError::NotInGroup`], [`EngineError::TooLarge`].
    pub fn send_text(&mut self, now: Instant, text: &str) -> Result<Uuid, EngineError> {
        let id = Uuid::new_v4();
        let message = ChatMessage {
            id,
            member: self.saved.member,
            device: self.saved.device,
            text: text.to_owned(),
            sent_at: now_ms(),
        };
        self.broadcast(
            now,
            &Content::Text {
                id,
                text: message.text.clone(),
                sent_at: message.sent_at,
            },
            Some(id),
        )?;
        self.event(Event::Message {
            message,
            outgoing: true,
        });
        self.step(now);
        Ok(id)
    }

    /// Sets this member's display name on this device and tells the group.
    ///
    /// # Errors
    /// MLS failing.
    pub fn set_display_name(&mut self, now: Instant, name: &str) -> Result<(), EngineError> {
        self.saved.display_name = Some(name.to_owned());
        let told = if self.group.is_some() {
            self.broadcast(
                now,
                &Content::Profile {
                    name: name.to_owned(),
                },
                None,
            )
        } else {
            Ok(())
        };
        self.step(now);
        told
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.saved.delivery.handle_timeout(now);
        if self.connected && self.directory_due.is_some_and(|due| due <= now) {
            self.directory_due = None;
            self.fetch_directory();
        }
        self.step(now);
    }

    /// When [`Engine::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let relinks = self.links.values().filter_map(|l| match l {
            Link::Down { retry_at } => *retry_at,
            Link::Connecting { since } => Some(*since + self.config.link_timeout),
            Link::Up => None,
        });
        let fallbacks = self
            .waiting
            .values()
            .map(|w| w.since + self.config.add_fallback_after);
        [
            self.saved.delivery.poll_timeout(),
            self.announce_at,
            self.catch_up.as_ref().map(|c| c.1),
            self.directory_due.filter(|_| self.connected),
            self.pacer.next_at(),
            self.assembler.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .chain(relinks)
        .chain(fallbacks)
        .min()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// What to write to the local store, if anything changed since the last snapshot. Write it
    /// before acting on the outputs drained since, so that nothing acknowledged is lost.
    ///
    /// # Errors
    /// When the state cannot be encoded.
    pub fn take_snapshot(&mut self) -> Result<Option<Snapshot>, EngineError> {
        if !self.dirty {
            return Ok(None);
        }
        self.dirty = false;
        self.saved.group_id = self
            .group
            .as_ref()
            .map(|g| g.group_id().as_slice().to_vec());
        let state = codec::encode(&self.saved).map_err(|e| EngineError::Corrupt(e.to_string()))?;
        let mls = self.provider.changes_since(&mut self.saved_mls);
        let outbox = self.saved.delivery.take_outbox_changes();
        Ok(Some(Snapshot { state, mls, outbox }))
    }

    // ---------------------------------------------------------------- the machine

    fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn link(&mut self, command: LinkCommand) {
        self.outputs.push_back(Output::Link(command));
    }

    fn send(&mut self, frame: ClientFrame) {
        self.pacer.push(frame);
    }

    /// Sends `payload` to `to` through the server: in pieces when one frame cannot hold it.
    fn send_signal(&mut self, to: Uuid, payload: &SignalPayload) {
        let Ok(json) = serde_json::to_string(payload) else {
            return;
        };
        // A signal frame's bytes besides its payload.
        let envelope = to_raw_value(&())
            .ok()
            .and_then(|payload| serde_json::to_string(&ClientFrame::Signal { to, payload }).ok())
            .map_or(0, |frame| frame.len() - "null".len());
        let payloads = if envelope + json.len() <= self.limits.frame_bytes {
            vec![json]
        } else {
            // A piece's bytes besides its part, for the largest numbers a piece may carry.
            let empty = serde_json::to_string(&SignalPayload::Piece {
                id: u64::MAX,
                i: u32::MAX,
                n: u32::MAX,
                part: String::new(),
            })
            .map_or(0, |piece| piece.len());
            let room = self.limits.frame_bytes.saturating_sub(envelope + empty);
            self.next_pieces = self.next_pieces.wrapping_add(1);
            pieces::split(&json, self.next_pieces, room)
                .iter()
                .filter_map(|piece| serde_json::to_string(piece).ok())
                .collect()
        };
        for json in payloads {
            if let Ok(payload) = RawValue::from_string(json) {
                self.send(ClientFrame::Signal { to, payload });
            }
        }
    }

    /// Lets out the frames to the server that its rate allows now.
    fn release_frames(&mut self, now: Instant) {
        while let Some(frame) = self.pacer.pop(now) {
            self.outputs.push_back(Output::Send(frame));
        }
    }

    fn fetch_directory(&mut self) {
        if !self.directory_requested {
            self.directory_requested = true;
            self.outputs.push_back(Output::FetchDirectory);
        }
    }

    fn hold(&mut self, slot: u64, commit: Vec<u8>) {
        if self.saved.next_slot.is_none_or(|next| slot >= next) {
            self.saved.held.entry(slot).or_insert(Held {
                commit,
                tried_with_directory: None,
            });
            // A device outside the group keeps only what a Welcome may need.
            while self.saved.held.len() > self.config.recent_commits {
                self.saved.held.pop_first();
            }
        }
    }

    fn credential_with_key(&self) -> CredentialWithKey {
        let identity =
            serde_json::to_vec(&self.saved.certificate).unwrap_or_else(|_| unreachable!());
        CredentialWithKey {
            credential: BasicCredential::new(identity).into(),
            signature_key: self.saved.signature_public.clone().into(),
        }
    }

    fn encrypt(&mut self, bytes: &[u8]) -> Result<Vec<u8>, EngineError> {
        let group = self.group.as_mut().ok_or(EngineError::NotInGroup)?;
        group
            .create_message(&self.provider, &self.signer, bytes)
            .map_err(mls_error)?
            .to_bytes()
            .map_err(mls_error)
    }

    fn broadcast(
        &mut self,
        now: Instant,
        content: &Content,
        id: Option<Uuid>,
    ) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(content).map_err(|e| EngineError::Mls(e.to_string()))?;
        let msg = self.encrypt(&bytes)?;
        let peers: Vec<Uuid> = self
            .roster
            .keys()
            .copied()
            .filter(|d| *d != self.saved.device)
            .collect();
        for device in peers {
            self.send_to(now, device, &msg, id)?;
        }
        Ok(())
    }

    fn send_to(
        &mut self,
        now: Instant,
        device: Uuid,
        msg: &[u8],
        id: Option<Uuid>,
    ) -> Result<(), EngineError> {
        self.saved
            .delivery
            .send(now, device, msg, id)
            .map_err(|_| EngineError::TooLarge)?;
        Ok(())
    }

    fn refresh_roster(&mut self) {
        let before: BTreeSet<Uuid> = self.roster.keys().copied().collect();
        self.roster = self
            .group
            .iter()
            .flat_map(MlsGroup::members)
            .filter_map(|m| {
                certificate_of(&m.credential)
                    .ok()
                    .map(|c| (c.device, (c.member, m.index)))
            })
            .collect();
        let after: BTreeSet<Uuid> = self.roster.keys().copied().collect();
        if before != after {
            for gone in before.difference(&after) {
                self.saved.delivery.forget(*gone);
                if self.links.remove(gone).is_some() {
                    self.link(LinkCommand::Close { device: *gone });
                }
            }
            let me = self.saved.device;
            for new in after.difference(&before).filter(|d| **d != me) {
                self.links
                    .entry(*new)
                    .or_insert(Link::Down { retry_at: None });
            }
            self.event(Event::MembersChanged);
        }
    }

    fn take_signal(&mut self, now: Instant, from: Uuid, member: Uuid, payload: SignalPayload) {
        match payload {
            SignalPayload::KeyPackage { kp } => {
                self.take_key_package(now, from, member, kp.as_slice(), None);
            }
            SignalPayload::Welcome { welcome, next } => {
                self.take_welcome(now, from, welcome.as_slice(), next, None);
            }
            SignalPayload::Mls { msg } => {
                if self.group.is_none() {
                    // Sent by a member that processed this device's add before its Welcome came.
                    push_bounded(&mut self.early, (from, member, msg));
                    return;
                }
                if let Err(reason) = self.open_sealed(now, from, member, msg.as_slice()) {
                    self.event(Event::Refused {
                        what: "MLS signal",
                        reason,
                    });
                }
            }
            SignalPayload::NeedCommits { from: first } => self.answer_catch_up(from, first),
            SignalPayload::Piece { id, i, n, part } => {
                match self.assembler.take(now, from, (id, i, n), &part) {
                    Ok(Some(payload)) => self.take_signal(now, from, member, payload),
                    Ok(None) => {}
                    Err(reason) => self.event(Event::Refused {
                        what: "signal",
                        reason: Refusal::Malformed(reason.0),
                    }),
                }
            }
            SignalPayload::Commits {
                from: first,
                commits,
            } => self.take_commits(now, from, first, commits),
        }
    }

    /// Whether something refused for an unknown member, first tried with directory `tried`,
    /// waits for a fresh directory: it has not been tried with one fetched after that yet. Once
    /// it has, the refusal stands (a newer directory does not make it try again, so a member
    /// nobody knows cannot make this device fetch the directory without end).
    fn awaits_directory(&self, tried: Option<u64>) -> bool {
        tried.is_none_or(|version| version == self.directory_version)
    }

    fn take_key_package(
        &mut self,
        now: Instant,
        from: Uuid,
        member: Uuid,
        bytes: &[u8],
        tried: Option<u64>,
    ) {
        let Some(directory) = self.directory.as_ref().filter(|_| self.group.is_some()) else {
            // Kept until this device is in the group and knows the directory: it may be the one
            // designated to add them.
            self.unverified.retain(|(d, ..)| *d != from);
            push_bounded(&mut self.unverified, (from, member, bytes.to_vec(), tried));
            return;
        };
        let checked = (|| {
            let MlsMessageBodyIn::KeyPackage(kp) = read_mls(bytes)? else {
                return Err(Refusal::Malformed("KeyPackage"));
            };
            let kp: KeyPackage =
                KeyPackageIn::validate(kp, self.provider.crypto(), ProtocolVersion::Mls10)
                    .map_err(refused)?;
            let certificate = verify_leaf_node(
                directory,
                kp.leaf_node(),
                &self.config.origin,
                &self.config.rp_id,
            )?;
            if certificate.device != from || certificate.member != member {
                return Err(Refusal::WrongSender);
            }
            Ok(kp)
        })();
        match checked {
            Ok(kp) => {
                let already = self.group.as_ref().is_some_and(|g| {
                    g.members()
                        .any(|m| m.signature_key == kp.leaf_node().signature_key().as_slice())
                });
                if !already {
                    self.waiting.entry(from).or_insert(Waiting {
                        key_package: kp,
                        since: now,
                    });
                }
            }
            Err(Refusal::UnknownMember) if self.awaits_directory(tried) => {
                // Perhaps a member who enrolled after the directory was fetched.
                let version = Some(tried.unwrap_or(self.directory_version));
                self.unverified
                    .push((from, member, bytes.to_vec(), version));
                self.fetch_directory();
            }
            Err(reason) => self.event(Event::Refused {
                what: "KeyPackage",
                reason,
            }),
        }
    }

    fn retry_key_packages(&mut self, now: Instant) {
        let unverified = std::mem::take(&mut self.unverified);
        for (from, member, kp, tried) in unverified {
            self.take_key_package(now, from, member, &kp, tried);
        }
    }

    fn take_welcome(
        &mut self,
        now: Instant,
        from: Uuid,
        bytes: &[u8],
        next: u64,
        tried: Option<u64>,
    ) {
        if self.group.is_some() || self.saved.key_package.is_none() {
            return;
        }
        let Some(directory) = &self.directory else {
            self.welcomes.push((from, bytes.to_vec(), next, tried));
            return;
        };
        // openmls deletes the KeyPackage a Welcome is for before the engine checks who sent it:
        // a refused (forged, or not yet verifiable) Welcome must leave it, or the genuine one
        // could never be read.
        let checkpoint = self.provider.checkpoint();
        let joined = (|| {
            let MlsMessageBodyIn::Welcome(welcome) = read_mls(bytes)? else {
                return Err(Refusal::Malformed("Welcome"));
            };
            let staged = StagedWelcome::new_from_welcome(
                &self.provider,
                create_config().join_config(),
                welcome,
                None,
            )
            .map_err(refused)?;
            for member in staged.members() {
                verify_leaf(
                    directory,
                    &member.credential,
                    &member.signature_key,
                    &self.config.origin,
                    &self.config.rp_id,
                )?;
            }
            let sender = staged.welcome_sender().map_err(refused)?;
            if certificate_of(sender.credential())?.device != from {
                return Err(Refusal::WrongSender);
            }
            staged.into_group(&self.provider).map_err(refused)
        })();
        let group = match joined {
            Ok(group) => group,
            Err(reason) => {
                self.provider.roll_back(checkpoint);
                if matches!(reason, Refusal::UnknownMember) && self.awaits_directory(tried) {
                    let version = Some(tried.unwrap_or(self.directory_version));
                    self.welcomes.push((from, bytes.to_vec(), next, version));
                    self.fetch_directory();
                } else {
                    self.event(Event::Refused {
                        what: "Welcome",
                        reason,
                    });
                }
                return;
            }
        };
        self.group = Some(group);
        self.saved.next_slot = Some(next);
        self.saved.key_package = None;
        self.saved.held.retain(|slot, _| *slot >= next);
        self.waiting.clear();
        self.refresh_roster();
        self.event(Event::Joined);
        self.retry_key_packages(now);
        for (from, member, msg) in std::mem::take(&mut self.early) {
            self.take_signal(now, from, member, SignalPayload::Mls { msg });
        }
        if let Some(name) = self.saved.display_name.clone() {
            let _ = self.broadcast(now, &Content::Profile { name }, None);
        }
    }

    fn open_sealed(
        &mut self,
        now: Instant,
        from: Uuid,
        member: Uuid,
        msg: &[u8],
    ) -> Result<(), Refusal> {
        let (sender, content) = self.decrypt(msg)?;
        if sender.device != from || sender.member != member {
            return Err(Refusal::WrongSender);
        }
        let sealed: Sealed =
            codec::from_json(&content).map_err(|_| Refusal::Malformed("sealed payload"))?;
        match sealed {
            Sealed::Rtc { to, rtc } => {
                if to != self.saved.device {
                    return Err(Refusal::WrongRecipient);
                }
                if matches!(rtc, RtcSignal::Offer { .. }) {
                    self.links.insert(from, Link::Connecting { since: now });
                }
                self.link(LinkCommand::Rtc {
                    device: from,
                    signal: rtc,
                });
            }
            Sealed::LinkWanted { to } => {
                if to != self.saved.device {
                    return Err(Refusal::WrongRecipient);
                }
                match self.links.get(&from) {
                    // The peer lost this link (it restarted, or the link died on its side first):
                    // open a new one now rather than when this side notices.
                    Some(Link::Up) => {
                        self.saved.delivery.link_down(from);
                        self.links.insert(from, Link::Down { retry_at: None });
                    }
                    Some(Link::Down { .. }) => {
                        self.links.insert(from, Link::Down { retry_at: None });
                    }
                    Some(Link::Connecting { .. }) | None => {}
                }
            }
        }
        Ok(())
    }

    /// Decrypts an application message of the group; returns its sender's certificate.
    fn decrypt(&mut self, msg: &[u8]) -> Result<(DeviceCertificate, Vec<u8>), Refusal> {
        let group = self
            .group
            .as_mut()
            .ok_or(Refusal::Mls("not in the group".into()))?;
        let message = protocol_message(msg)?;
        let processed = group
            .process_message(&self.provider, message)
            .map_err(refused)?;
        let Sender::Member(_) = processed.sender() else {
            return Err(Refusal::NotAllowed(
                "application messages come from members",
            ));
        };
        let certificate = certificate_of(processed.credential())?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Ok((certificate, app.into_bytes())),
            _ => Err(Refusal::Malformed("application message")),
        }
    }

    fn take_link_message(&mut self, device: Uuid, msg: Vec<u8>) {
        let ahead = self
            .group
            .as_ref()
            .is_some_and(|g| protocol_message(&msg).is_ok_and(|m| m.epoch() > g.epoch()));
        if ahead {
            // Made after a commit this device has not processed yet: keep it until then.
            push_bounded(&mut self.saved.future, (device, msg));
            return;
        }
        let opened = self.decrypt(&msg).and_then(|(sender, bytes)| {
            if sender.device != device {
                return Err(Refusal::WrongSender);
            }
            let content: Content =
                codec::from_json(&bytes).map_err(|_| Refusal::Malformed("content"))?;
            Ok((sender, content))
        });
        match opened {
            Ok((sender, Content::Text { id, text, sent_at })) => self.event(Event::Message {
                message: ChatMessage {
                    id,
                    member: sender.member,
                    device: sender.device,
                    text,
                    sent_at: sent_at.clamp(0, LATEST_SENT_AT),
                },
                outgoing: false,
            }),
            Ok((sender, Content::Profile { name })) => {
                self.saved.names.insert(sender.member, name);
                self.event(Event::MembersChanged);
            }
            Err(reason) => self.event(Event::Refused {
                what: "link message",
                reason,
            }),
        }
    }

    fn answer_catch_up(&mut self, to: Uuid, first: u64) {
        let Some(next) = self.saved.next_slot else {
            return;
        };
        let commits: Option<Vec<Base64Url>> = (first..next)
            .map(|slot| {
                self.saved
                    .recent
                    .get(&slot)
                    .map(|c| Base64Url::from(c.as_slice()))
            })
            .collect();
        let commits = commits.unwrap_or_default();
        self.send_signal(
            to,
            &SignalPayload::Commits {
                from: first,
                commits,
            },
        );
    }

    fn take_commits(&mut self, now: Instant, from: Uuid, first: u64, commits: Vec<Base64Url>) {
        let Some((asked, _, _)) = &self.catch_up else {
            return;
        };
        if *asked != from {
            return;
        }
        if commits.is_empty() {
            // That peer cannot help: ask the next one at once.
            if let Some(c) = self.catch_up.as_mut() {
                c.1 = now;
            }
            return;
        }
        for (slot, commit) in (first..).zip(commits) {
            self.hold(slot, commit.into_vec());
        }
        self.catch_up = None;
    }

    fn take_commit_result(&mut self, now: Instant, slot: u64, accepted: bool) {
        let Some(pending) = self.saved.pending.clone() else {
            return;
        };
        if pending.slot != slot {
            return;
        }
        if accepted {
            self.merge_own(now, pending);
        } else if pending.claim {
            // Another device created the circle's group first: drop this one and ask to join.
            self.saved.pending = None;
            self.drop_group();
        }
        // A refused change waits for the slot's winner (section 7, step 3).
    }

    fn merge_own(&mut self, now: Instant, pending: Pending) {
        let Some(group) = self.group.as_mut() else {
            return;
        };
        if let Err(e) = group.merge_pending_commit(&self.provider) {
            self.event(Event::Refused {
                what: "own commit",
                reason: refused(e),
            });
            return;
        }
        self.saved.pending = None;
        self.saved.next_slot = Some(pending.slot + 1);
        self.saved.held.remove(&pending.slot);
        self.remember(pending.slot, pending.commit.clone());
        if pending.claim {
            self.event(Event::GroupCreated);
            self.retry_key_packages(now);
        }
        if let Some(welcome) = &pending.welcome {
            for device in &pending.joining {
                self.send_signal(
                    *device,
                    &SignalPayload::Welcome {
                        welcome: welcome.as_slice().into(),
                        next: pending.slot + 1,
                    },
                );
            }
        }
        for device in &pending.joining {
            self.waiting.remove(device);
        }
        self.after_epoch_change(now, &pending.joining);
    }

    fn remember(&mut self, slot: u64, commit: Vec<u8>) {
        self.saved.recent.insert(slot, ByteBuf::from(commit));
        while self.saved.recent.len() > self.config.recent_commits {
            self.saved.recent.pop_first();
        }
    }

    fn after_epoch_change(&mut self, now: Instant, joined: &[Uuid]) {
        self.refresh_roster();
        // Tell newcomers this member's name.
        if let Some(name) = self.saved.display_name.clone() {
            let content = serde_json::to_vec(&Content::Profile { name }).unwrap_or_default();
            if !joined.is_empty()
                && let Ok(msg) = self.encrypt(&content)
            {
                for device in joined {
                    let _ = self.send_to(now, *device, &msg, None);
                }
            }
        }
        // Messages that were ahead of this device may be readable now.
        let future = std::mem::take(&mut self.saved.future);
        for (device, msg) in future {
            self.take_link_message(device, msg);
        }
    }

    fn drop_group(&mut self) {
        if let Some(mut group) = self.group.take() {
            let _ = group.delete(self.provider.storage());
        }
        self.saved.next_slot = None;
        self.saved.future.clear();
        self.waiting.clear();
        self.refresh_roster();
    }

    /// Processes slot `slot`'s commit. Returns false when it must wait (for the directory).
    fn process_slot(&mut self, now: Instant, slot: u64, held: Held) -> bool {
        if let Some(pending) = self.saved.pending.clone()
            && pending.slot == slot
        {
            if pending.commit == held.commit {
                self.merge_own(now, pending);
                return true;
            }
            if let Some(group) = self.group.as_mut() {
                let _ = group.clear_pending_commit(self.provider.storage());
            }
            self.saved.pending = None;
        }
        let staged = match self.staged.take() {
            Some((s, staged)) if s == slot => Ok(staged),
            _ => self.stage_commit(&held.commit),
        };
        let retry = self.awaits_directory(held.tried_with_directory);
        let outcome = staged.and_then(|staged| match self.authorize(&staged) {
            Ok(()) => Ok(staged.commit),
            Err(Refusal::UnknownMember) if retry => {
                self.staged = Some((slot, staged));
                Err(Refusal::UnknownMember)
            }
            Err(reason) => Err(reason),
        });
        match outcome {
            Ok(staged) => {
                let removed_me = staged.self_removed();
                let joined: Vec<Uuid> = staged
                    .add_proposals()
                    .filter_map(|a| {
                        certificate_of(a.add_proposal().key_package().leaf_node().credential())
                            .ok()
                            .map(|c| c.device)
                    })
                    .collect();
                let merged = self
                    .group
                    .as_mut()
                    .map(|g| g.merge_staged_commit(&self.provider, *staged));
                self.saved.next_slot = Some(slot + 1);
                self.remember(slot, held.commit);
                if removed_me {
                    self.drop_group();
                    for link in std::mem::take(&mut self.links).into_keys() {
                        self.link(LinkCommand::Close { device: link });
                    }
                    self.event(Event::Removed);
                    return true;
                }
                match merged {
                    Some(Ok(())) => {
                        for device in &joined {
                            self.waiting.remove(device);
                        }
                        self.after_epoch_change(now, &joined);
                    }
                    Some(Err(e)) => self.event(Event::Refused {
                        what: "commit",
                        reason: refused(e),
                    }),
                    None => {}
                }
                true
            }
            Err(Refusal::UnknownMember) if retry => {
                self.saved.held.insert(
                    slot,
                    Held {
                        commit: held.commit,
                        tried_with_directory: Some(
                            held.tried_with_directory.unwrap_or(self.directory_version),
                        ),
                    },
                );
                self.fetch_directory();
                false
            }
            Err(reason) => {
                // Every honest device reaches the same verdict on the same bytes: skip the slot.
                self.saved.next_slot = Some(slot + 1);
                self.event(Event::Refused {
                    what: "commit",
                    reason,
                });
                true
            }
        }
    }

    /// Decrypts and stages a relayed commit (once: MLS consumes the secrets it is read with).
    fn stage_commit(&mut self, commit: &[u8]) -> Result<Staged, Refusal> {
        let group = self
            .group
            .as_mut()
            .ok_or(Refusal::Mls("not in the group".into()))?;
        let message = protocol_message(commit)?;
        if message.epoch() != group.epoch() {
            return Err(Refusal::Mls(format!(
                "made in epoch {}, the group is in {}",
                message.epoch().as_u64(),
                group.epoch().as_u64()
            )));
        }
        let processed = group
            .process_message(&self.provider, message)
            .map_err(refused)?;
        let Sender::Member(sender_leaf) = *processed.sender() else {
            return Err(Refusal::NotAllowed("commits come from members"));
        };
        let sender = certificate_of(processed.credential())?;
        let ProcessedMessageContent::StagedCommitMessage(commit) = processed.into_content() else {
            return Err(Refusal::Malformed("commit"));
        };
        Ok(Staged {
            commit,
            sender,
            sender_leaf,
        })
    }

    /// Checks that every leaf a staged commit brings is bound to a hardware key of a current
    /// member and that its sender may make its changes.
    fn authorize(&self, staged: &Staged) -> Result<(), Refusal> {
        let no_directory = Directory::default();
        let directory = self.directory.as_ref().unwrap_or(&no_directory);
        let group = self
            .group
            .as_ref()
            .ok_or(Refusal::Mls("not in the group".into()))?;
        let (sender, sender_leaf) = (&staged.sender, staged.sender_leaf);
        let staged = &staged.commit;
        let check = |leaf: &LeafNode| {
            verify_leaf_node(directory, leaf, &self.config.origin, &self.config.rp_id)
        };
        let mut added_devices = BTreeMap::new();
        for add in staged.add_proposals() {
            let c = check(add.add_proposal().key_package().leaf_node())?;
            added_devices.insert(c.device, c.member);
        }
        if let Some(leaf) = staged.update_path_leaf_node() {
            let c = check(leaf)?;
            if c.device != sender.device {
                return Err(Refusal::NotBound);
            }
        }
        for remove in staged.remove_proposals() {
            let removed = remove.remove_proposal().removed();
            let Some(target) = group.member(removed).and_then(|c| certificate_of(c).ok()) else {
                return Err(Refusal::Malformed("removal of an unknown leaf"));
            };
            let revoked = !directory.contains(target.member);
            let rejoined = added_devices.get(&target.device) == Some(&target.member);
            let itself = removed == sender_leaf;
            if !(rejoined || itself || (revoked && directory.is_admin(sender.member))) {
                if !revoked {
                    // Perhaps revoked since the directory was fetched.
                    return Err(Refusal::UnknownMember);
                }
                return Err(Refusal::NotAllowed(
                    "only an admin device removes a revoked member",
                ));
            }
        }
        Ok(())
    }

    /// Runs after every input, which may have changed what is saved.
    fn step(&mut self, now: Instant) {
        self.dirty = true;
        if self.directory.is_none() {
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
        self.drain_delivery();
        self.assembler.expire(now);
        self.release_frames(now);
    }

    fn process_held(&mut self, now: Instant) {
        loop {
            let Some(next) = self.saved.next_slot else {
                return;
            };
            if self.group.is_none() {
                return;
            }
            self.saved.held.retain(|slot, _| *slot >= next);
            let Some(held) = self.saved.held.remove(&next) else {
                return;
            };
            if !self.process_slot(now, next, held) {
                return;
            }
        }
    }

    fn caught_up(&self) -> bool {
        match (self.saved.next_slot, self.server_slot) {
            (Some(next), Some(server)) => next >= server && self.saved.held.is_empty(),
            _ => false,
        }
    }

    fn catch_up_if_behind(&mut self, now: Instant) {
        let (Some(next), Some(server)) = (self.saved.next_slot, self.server_slot) else {
            return;
        };
        if next >= server || self.saved.held.contains_key(&next) {
            return;
        }
        let timed_out = self.catch_up.as_ref().is_some_and(|c| c.1 <= now);
        if self.catch_up.is_some() && !timed_out {
            return;
        }
        let mut asked = self.catch_up.take().map(|c| c.2).unwrap_or_default();
        let candidate = self
            .online
            .keys()
            .copied()
            .find(|d| self.roster.contains_key(d) && !asked.contains(d));
        match candidate {
            Some(peer) => {
                asked.insert(peer);
                self.send_signal(peer, &SignalPayload::NeedCommits { from: next });
                self.catch_up = Some((peer, now + self.config.catch_up_timeout, asked));
            }
            None if !asked.is_empty() => {
                // Nobody online holds the missing commits: leave the stale group and be
                // welcomed again.
                self.drop_group();
            }
            None => {}
        }
    }

    fn join_or_create(&mut self, now: Instant) {
        let admin = self
            .directory
            .as_ref()
            .is_some_and(|d| d.is_admin(self.saved.member));
        if self.server_slot == Some(0) && admin && self.saved.pending.is_none() {
            if let Err(e) = self.create_group() {
                self.event(Event::Refused {
                    what: "group creation",
                    reason: refused(e),
                });
            }
            return;
        }
        if self.saved.pending.is_some() {
            return;
        }
        let kp = match &self.saved.key_package {
            Some(kp) => kp.clone(),
            None => match self.new_key_package() {
                Ok(kp) => kp,
                Err(e) => {
                    self.event(Event::Refused {
                        what: "KeyPackage",
                        reason: refused(e),
                    });
                    return;
                }
            },
        };
        let again = self.announce_at.is_some_and(|at| at <= now);
        if again {
            self.announced.clear();
        }
        let targets: Vec<Uuid> = self
            .online
            .keys()
            .copied()
            .filter(|d| !self.announced.contains(d))
            .collect();
        for device in targets {
            self.announced.insert(device);
            self.send_signal(
                device,
                &SignalPayload::KeyPackage {
                    kp: kp.clone().into(),
                },
            );
        }
        if again || self.announce_at.is_none() {
            self.announce_at = Some(now + self.config.announce_every);
        }
    }

    fn new_key_package(&mut self) -> Result<Vec<u8>, EngineError> {
        let bundle = KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential_with_key(),
            )
            .map_err(mls_error)?;
        let bytes = MlsMessageOut::from(bundle.key_package().clone())
            .to_bytes()
            .map_err(mls_error)?;
        self.saved.key_package = Some(bytes.clone());
        Ok(bytes)
    }

    fn create_group(&mut self) -> Result<(), EngineError> {
        let mut group = MlsGroup::new(
            &self.provider,
            &self.signer,
            &create_config(),
            self.credential_with_key(),
        )
        .map_err(mls_error)?;
        let bundle = group
            .commit_builder()
            .force_self_update(true)
            .load_psks(self.provider.storage())
            .map_err(mls_error)?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .map_err(mls_error)?
            .stage_commit(&self.provider)
            .map_err(mls_error)?;
        let commit = bundle.into_commit().to_bytes().map_err(mls_error)?;
        self.group = Some(group);
        self.saved.next_slot = Some(0);
        self.propose(0, commit, None, Vec::new(), true);
        self.refresh_roster();
        Ok(())
    }

    fn propose(
        &mut self,
        slot: u64,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        joining: Vec<Uuid>,
        claim: bool,
    ) {
        let frame = commit_frame(slot, &commit);
        self.saved.pending = Some(Pending {
            slot,
            commit,
            welcome,
            joining,
            claim,
        });
        self.send(frame);
    }

    /// Adds waiting KeyPackages (this device if it is the designated one, any device after a
    /// while) and, on an admin device, removes the leaves of revoked members.
    fn commit_changes(&mut self, now: Instant) {
        if self.saved.pending.is_some() || !self.caught_up() {
            return;
        }
        let Some(next) = self.saved.next_slot else {
            return;
        };
        let me = self.saved.device;
        let designated = self
            .online
            .keys()
            .copied()
            .chain([me])
            .filter(|d| self.roster.contains_key(d))
            .min()
            == Some(me);
        let fallback = self.config.add_fallback_after;
        let adds: Vec<(Uuid, KeyPackage)> = self
            .waiting
            .iter()
            .filter(|(_, w)| designated || w.since + fallback <= now)
            .map(|(d, w)| (*d, w.key_package.clone()))
            .collect();
        let no_directory = Directory::default();
        let directory = self.directory.as_ref().unwrap_or(&no_directory);
        let admin = directory.is_admin(self.saved.member);
        let revoked: Vec<LeafNodeIndex> = self
            .roster
            .values()
            .filter(|(member, _)| admin && !directory.contains(*member))
            .map(|(_, leaf)| *leaf)
            .collect();
        // As many adds as one commit frame holds: a commit carries every KeyPackage it adds.
        let mut take = adds.len();
        loop {
            let chosen = &adds[..take];
            let mut removals: Vec<LeafNodeIndex> = self
                .roster
                .iter()
                // A rejoining device's old leaf goes with its new KeyPackage's add.
                .filter(|(device, _)| chosen.iter().any(|(d, _)| d == *device))
                .map(|(_, (_, leaf))| *leaf)
                .chain(revoked.iter().copied())
                .collect();
            removals.sort_unstable();
            removals.dedup();
            if chosen.is_empty() && removals.is_empty() {
                return;
            }
            let Some((commit, welcome)) = self.build_own_commit(chosen, removals) else {
                return;
            };
            let frame_bytes =
                serde_json::to_string(&commit_frame(next, &commit)).map_or(usize::MAX, |f| f.len());
            if take > 1 && frame_bytes > self.limits.frame_bytes {
                // Too large for one frame: half the adds now, the rest next.
                if let Some(group) = self.group.as_mut() {
                    let _ = group.clear_pending_commit(self.provider.storage());
                }
                take /= 2;
                continue;
            }
            let joining = chosen.iter().map(|(d, _)| *d).collect();
            self.propose(next, commit, welcome, joining, false);
            return;
        }
    }

    /// Builds and stages a commit of these adds and removals: the commit and its Welcome. A
    /// failure is told as a refusal of this device's own commit.
    fn build_own_commit(
        &mut self,
        adds: &[(Uuid, KeyPackage)],
        removals: Vec<LeafNodeIndex>,
    ) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let group = self.group.as_mut()?;
        let built = group
            .commit_builder()
            .propose_adds(adds.iter().map(|(_, kp)| kp.clone()))
            .propose_removals(removals)
            .load_psks(self.provider.storage())
            .map_err(mls_error)
            .and_then(|b| {
                b.build(
                    self.provider.rand(),
                    self.provider.crypto(),
                    &self.signer,
                    |_| true,
                )
                .map_err(mls_error)
            })
            .and_then(|b| b.stage_commit(&self.provider).map_err(mls_error));
        let bundle = match built {
            Ok(bundle) => bundle,
            Err(e) => {
                // A KeyPackage openmls will not add (e.g. already used): forget them all.
                self.waiting.clear();
                self.event(Event::Refused {
                    what: "own commit",
                    reason: Refusal::Mls(e.to_string()),
                });
                return None;
            }
        };
        let welcome = bundle.to_welcome_msg().and_then(|w| w.to_bytes().ok());
        match bundle.into_commit().to_bytes() {
            Ok(commit) => Some((commit, welcome)),
            Err(e) => {
                self.event(Event::Refused {
                    what: "own commit",
                    reason: refused(e),
                });
                None
            }
        }
    }

    fn drive_links(&mut self, now: Instant) {
        let me = self.saved.device;
        let mut opens = Vec::new();
        for link in self.links.values_mut() {
            if let Link::Connecting { since } = *link
                && since + self.config.link_timeout <= now
            {
                *link = Link::Down { retry_at: None };
            }
        }
        let mut asks = Vec::new();
        for (device, link) in &mut self.links {
            let Link::Down { retry_at } = link else {
                continue;
            };
            if !self.online.contains_key(device) {
                continue;
            }
            if me < *device {
                // This side opens.
                if retry_at.is_none_or(|at| at <= now) {
                    *link = Link::Connecting { since: now };
                    opens.push(*device);
                }
            } else {
                // The other side opens: give it time to, then ask (it may hold a link this
                // device lost, and would not notice for many seconds).
                match retry_at {
                    None => *retry_at = Some(now + self.config.relink_after),
                    Some(at) if *at <= now => {
                        *link = Link::Connecting { since: now };
                        asks.push(*device);
                    }
                    Some(_) => {}
                }
            }
        }
        for device in opens {
            self.link(LinkCommand::Open { device });
        }
        for device in asks {
            let _ = self.send_sealed(device, &Sealed::LinkWanted { to: device });
        }
    }

    fn drain_delivery(&mut self) {
        while let Some((device, packet)) = self.saved.delivery.poll_transmit() {
            self.outputs.push_back(Output::Link(LinkCommand::Data {
                device,
                bytes: encode_packet(&packet),
            }));
        }
        while let Some((device, _, tag)) = self.saved.delivery.poll_acknowledged() {
            if let Some(id) = tag {
                self.event(Event::Delivered { id, device });
            }
        }
        while let Some((device, _, msg)) = self.saved.delivery.poll_delivered() {
            self.take_link_message(device, msg);
        }
    }
}

fn commit_frame(slot: u64, commit: &[u8]) -> ClientFrame {
    let payload = to_raw_value(&CommitPayload { mls: commit.into() })
        .unwrap_or_else(|_| unreachable!("a commit payload is JSON"));
    ClientFrame::Commit {
        epoch: slot,
        payload,
    }
}

#[cfg(test)]
mod tests {
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
        };
        assert_eq!(
            json(&Event::Message {
                message,
                outgoing: true
            }),
            serde_json::json!({"event": "message", "id": id, "member": id, "device": id,
                "text": "hi", "sent_at": 5, "outgoing": true})
        );
        assert_eq!(
            json(&Event::Delivered { id, device: id }),
            serde_json::json!({"event": "delivered", "id": id, "device": id})
        );
        assert_eq!(
            json(&Event::Refused {
                what: "commit",
                reason: Refusal::UnknownMember
            }),
            serde_json::json!({"event": "refused", "what": "commit",
                "reason": "the member is not in the circle directory"})
        );
        assert_eq!(
            json(&Event::Revoked),
            serde_json::json!({"event": "revoked"})
        );
    }
}
