//! The engine's vocabulary: its configuration and errors, the device key, and what it tells its
//! driver to do (outputs, link commands) and to show (events).

use std::collections::BTreeMap;

use openmls::prelude::Ciphersuite;
use serde::{Deserialize, Serialize};
use tessera_wire::Base64Url;
use tessera_wire::signal::{ClientFrame, FrameErrorCode};
use uuid::Uuid;
use web_time::{Duration, SystemTime, UNIX_EPOCH};

use crate::carry::CarryConfig;
use crate::changes::{ChangeError, MessageChange, MessageRef};
use crate::crypto::DeviceSigner;
use crate::delivery::DeliveryConfig;
use crate::files::{FileCommand, FileInfo, FilesConfig};
use crate::names::NameError;
use crate::payload::RtcSignal;
use crate::roster::Refusal;
use crate::trust::TrustError;

use super::mls_error;

/// The circle's ciphersuite: X25519, AES-128-GCM, SHA-256, Ed25519 device keys.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The latest time a received message may claim to be written at (ms since the Unix epoch): the
/// end of what JavaScript's `Date` can show. A peer's clock is its own; a time outside
/// `0..=LATEST_SENT_AT` is shown as the nearest bound rather than breaking the interfaces.
pub const LATEST_SENT_AT: i64 = 8_640_000_000_000_000;

/// The shortest time between two fetches of TURN credentials.
pub(super) const ICE_RENEW_AT_LEAST: Duration = Duration::from_secs(5);
/// The longest time between two fetches of TURN credentials.
pub(super) const ICE_RENEW_AT_MOST: Duration = Duration::from_secs(24 * 3600);

/// A wall-clock reading as a message's time (ms since the Unix epoch, what [`crate::Engine::send_text`]
/// takes): the drivers read the clock, the engine never does.
#[must_use]
pub fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
    /// How long after a failed directory fetch the next one is asked for.
    pub directory_retry: Duration,
    /// How long after a failed fetch of the ICE servers (or a TURN host that did not resolve) the
    /// next one is asked for.
    pub ice_retry: Duration,
    /// Delivery limits and timings.
    pub delivery: DeliveryConfig,
    /// What a device keeps for others and how it hands it on.
    pub carry: CarryConfig,
    /// File transfers: the cap on a file's size, windows and timings.
    pub files: FilesConfig,
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
            directory_retry: Duration::from_secs(2),
            ice_retry: Duration::from_secs(30),
            delivery: DeliveryConfig::default(),
            carry: CarryConfig::default(),
            files: FilesConfig::default(),
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
    /// The change cannot be made.
    #[error("{0}")]
    Change(#[from] ChangeError),
    /// The display name cannot be used.
    #[error("{0}")]
    Name(#[from] NameError),
    /// The file cannot be sent as it is.
    #[error("the file cannot be sent: malformed {0}")]
    BadFile(&'static str),
    /// The saved state cannot be read.
    #[error("the saved state cannot be read: {0}")]
    Corrupt(String),
    /// MLS failed.
    #[error("MLS failed: {0}")]
    Mls(String),
}

/// A device's MLS signature key, before it is certified by the member's hardware key.
#[derive(Debug)]
pub struct DeviceKey(pub(super) DeviceSigner);

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
        /// One data channel message: a packet, or a bundle of them
        /// ([`crate::payload::Bundler`]).
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
    /// The file it shares, for a file message (`text` is then empty); its content is the
    /// files machine's ([`crate::files`]).
    pub file: Option<FileInfo>,
    /// The message it answers ([`crate::changes`]).
    #[serde(default)]
    pub reply_to: Option<MessageRef>,
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
    /// A message sent by this device (now in the outbox) or received from a peer.
    Message {
        /// The message.
        #[serde(flatten)]
        message: ChatMessage,
        /// Whether this device sent it.
        outgoing: bool,
    },
    /// A change to a message (a reaction, an edit or a deletion), made here or received: kept in
    /// the history, to show again with [`crate::changes::show`].
    MessageChanged {
        /// The change.
        #[serde(flatten)]
        change: MessageChange,
    },
    /// Another member changed their display name: `from` and `to` as members are shown.
    Renamed {
        /// The member.
        member: Uuid,
        /// What they were shown as.
        from: String,
        /// What they are shown as now.
        to: String,
    },
    /// A peer device holds one of this device's messages: it acknowledged it, or (`carried`)
    /// another device carried it there and says so.
    Delivered {
        /// The message.
        id: Uuid,
        /// The device that holds it now.
        device: Uuid,
        /// Whether it reached that device through another one (as that one says).
        carried: bool,
    },
    /// Something from a peer or the server was refused (tampering, a stale directory, a bug).
    Refused {
        /// What it was.
        what: &'static str,
        /// Why.
        #[serde(serialize_with = "as_sentence")]
        reason: Refusal,
    },
    /// The directory lists a member, or a key of a member, that no chain of signed invitations
    /// and endorsements from the circle's root admits: the server's word alone, ignored here.
    /// Said once for each.
    Distrusted {
        /// The member.
        member: Uuid,
        /// The key, when the member is admitted and this key of theirs is not.
        key: Option<Base64Url>,
        /// Whether it is this device's own member (a key added to your account, which you did
        /// not endorse).
        own: bool,
        /// Why.
        #[serde(serialize_with = "as_sentence")]
        reason: TrustError,
    },
    /// A member's keys, as the chain admits them, differ from what this device pinned: keys were
    /// added (endorsed by one of the member's keys, or through a recovery) or removed. Loudest when
    /// it is this device's own account (`own`): a key added that the member did not add means one
    /// of their keys is in someone else's hands.
    KeysChanged {
        /// The member.
        member: Uuid,
        /// Credential ids of keys new since the pin.
        added: Vec<Base64Url>,
        /// Credential ids of pinned keys now gone.
        removed: Vec<Base64Url>,
        /// Whether it is this device's own member.
        own: bool,
    },
    /// The server refused a frame.
    ServerError {
        /// Its code.
        code: FrameErrorCode,
    },
    /// The circle directory could not be fetched; the engine asks for it again shortly.
    DirectoryUnavailable {
        /// Why, in words.
        reason: String,
    },
    /// The server session had ended and the device renewed it with its key: no touch was needed.
    SessionRenewed,
    /// A page of this member's history came from another of their devices (already in the
    /// history rows of this write).
    HistoryProgress {
        /// The device it comes from.
        device: Uuid,
        /// Rows taken from it so far.
        received: u64,
        /// Rows it holds in all (so far and remaining).
        total: u64,
        /// Whether its history is taken whole.
        done: bool,
    },
    /// A file is on its way here: `received` bytes of `size` are written (told a few times a
    /// second, and once whole).
    FileProgress {
        /// The file (the id of the message that offered it).
        id: Uuid,
        /// Bytes received and written.
        received: u64,
        /// The file's size.
        size: u64,
    },
    /// A file is here whole: its content matches its sender's hash and is on disk.
    FileReceived {
        /// The file.
        id: Uuid,
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
    },
    /// A file was not taken, or cannot be sent: why, in words. Nothing of it is shown as whole.
    FileFailed {
        /// The file.
        id: Uuid,
        /// Why.
        reason: String,
    },
    /// This device sent `sent` bytes of a file to `device` (told a few times a second); `done`
    /// once that device says it holds it whole.
    FileSent {
        /// The file.
        id: Uuid,
        /// The device it goes to.
        device: Uuid,
        /// Bytes sent so far.
        sent: u64,
        /// The file's size.
        size: u64,
        /// Whether the device holds it whole.
        done: bool,
    },
    /// The device stopped for good: its driver ends it (once, the engine's last event).
    Stopped {
        /// Why.
        reason: StopReason,
    },
}

/// The device as its user interface shows it (the CLI's status, the page's circle view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    /// This member.
    pub member: Uuid,
    /// This device.
    pub device: Uuid,
    /// Whether this device is in the circle's group.
    pub in_group: bool,
    /// The group's MLS epoch, once in the group.
    pub epoch: Option<u64>,
    /// Whether the signalling connection is up (as of its `hello`).
    pub connected: bool,
    /// Display names learnt inside the group, as members are shown: member → label (a name, with
    /// two words from the member's id when another member's name looks the same:
    /// [`crate::names::labels`]).
    pub names: BTreeMap<Uuid, String>,
    /// This member's own display name as set on this device.
    pub display_name: Option<String>,
    /// The group's devices, this one included.
    pub devices: Vec<GroupDeviceView>,
    /// The circle's safety number as of the last directory (twelve words; none without a root).
    pub safety: Option<String>,
    /// Messages that linked devices hold and this one does not have yet (in the streams it holds
    /// some of): they are on their way, or wait for a device that can carry them.
    pub missing: u64,
    /// Messages this device keeps for other devices.
    pub carrying: usize,
    /// Messages this device dropped from what it keeps (its bounds) before every device was
    /// known to hold them: a device away for long may miss them.
    pub dropped: u64,
}

/// One device of the group, as the view lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDeviceView {
    /// The device.
    pub device: Uuid,
    /// Its member.
    pub member: Uuid,
    /// Whether it is this device.
    pub own: bool,
    /// Whether it is connected to the server (this device always is, to itself).
    pub online: bool,
    /// Whether a peer-to-peer link to it is up.
    pub linked: bool,
    /// Messages waiting for it in the outbox.
    pub waiting: usize,
}

/// Why a device stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The server says the membership (or this session) was revoked.
    Revoked,
    /// The session is no longer valid and the device key could not renew it: logged out, or the
    /// key that certified this device was revoked. The member logs in with a hardware key.
    SessionEnded,
    /// This device was removed from the circle's group.
    Removed,
    /// The same device connected again elsewhere (another process, tab or window).
    Replaced,
}

/// What came of fetching the ICE servers (`GET /api/v1/turn`), which decides when the engine
/// asks for them again ([`Output::FetchIceServers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceOutcome {
    /// The server hands out none: never asked again.
    NotConfigured,
    /// The server could not be asked, or a TURN host did not resolve: asked again after
    /// [`EngineConfig::ice_retry`].
    Unavailable,
    /// ICE servers to use; with TURN credentials valid for `relay_ttl`, asked again a third of
    /// the way through that lifetime (so one failed renewal leaves time for another).
    Offered {
        /// The TURN credentials' lifetime, when a TURN server is among them.
        relay_ttl: Option<Duration>,
    },
}

/// Serializes a refusal as the sentence that explains it.
fn as_sentence<S: serde::Serializer>(
    reason: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
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
    /// Fetch the circle directory and hand it to [`crate::Engine::handle_directory`] (or the failure to
    /// [`crate::Engine::handle_directory_unavailable`]).
    FetchDirectory,
    /// Fetch the ICE servers, use them for links opened from now on, and hand the outcome to
    /// [`crate::Engine::handle_ice_servers`].
    FetchIceServers,
    /// Read up to `limit` rows of the history, newest first, strictly older than `before` in the
    /// order `(sent_at, device, id)` (from the newest when none), and count the rows older than
    /// `before`; hand both to [`crate::Engine::handle_history_read`] for `peer`.
    ReadHistory {
        /// The device of this member that asked.
        peer: Uuid,
        /// Where the page starts.
        before: Option<crate::history::Cursor>,
        /// The most rows to read.
        limit: usize,
    },
    /// The session ended: renew it with the device key (`POST /session/renew/start`, then
    /// [`crate::Engine::session_renewal`] to `POST /session/renew`), use the new session and
    /// connect again, and hand the outcome to [`crate::Engine::handle_session_renewal`].
    RenewSession,
    /// File IO: read chunks to send, write and sync chunks received, delete a file.
    File(FileCommand),
}

impl Output {
    /// Whether acting on this output waits until its turn's write is durable. Everything that
    /// tells anyone anything waits: frames, link packets, events shown, reads of the store. Asking
    /// the server for the directory or ICE servers, and opening a link here (its offer goes out
    /// later, through [`crate::Engine::send_rtc`] and a turn of its own), reveal nothing of what the
    /// write holds and may go at once, so a chain of turns does not wait for the disk at each ask.
    /// So may file IO but deletion: reading chunks (they go out through a turn of their own),
    /// opening received ones, writing and syncing them (the row that counts them is written only
    /// once they are synced).
    #[must_use]
    pub fn waits_for_write(&self) -> bool {
        !matches!(
            self,
            Output::FetchDirectory
                | Output::FetchIceServers
                | Output::Link(LinkCommand::Open { .. })
                | Output::File(
                    FileCommand::Read(_)
                        | FileCommand::Open(_)
                        | FileCommand::Write { .. }
                        | FileCommand::Sync { .. }
                )
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asks_go_before_their_turns_write() {
        let device = Uuid::new_v4();
        for ask in [
            Output::FetchDirectory,
            Output::FetchIceServers,
            Output::Link(LinkCommand::Open { device }),
        ] {
            assert!(!ask.waits_for_write(), "{ask:?} waits");
        }
        for told in [
            Output::Link(LinkCommand::Data {
                device,
                bytes: vec![2, 0, 0, 0, 0, 0, 0, 0, 1],
            }),
            Output::Link(LinkCommand::Close { device }),
            Output::Event(Event::MembersChanged),
            Output::ReadHistory {
                peer: device,
                before: None,
                limit: 1,
            },
            Output::RenewSession,
        ] {
            assert!(told.waits_for_write(), "{told:?} goes before its write");
        }
    }
}
