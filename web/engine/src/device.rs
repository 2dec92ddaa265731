//! This browser as a member device: the engine behind the page's driver (`web/device.js`), its
//! inputs, turns and view turned into plain JavaScript values and back. The mapping lives in plain
//! Rust (tested natively); the `#[wasm_bindgen]` methods only convert.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tessera_engine::carry::{CarriedChange, CarriedRow, Stream};
use tessera_engine::changes::{self, Change, MessageChange, MessageRef};
use tessera_engine::codec::from_json;
use tessera_engine::delivery::{OutboxChange, Queued, Seq};
use tessera_engine::files::{self, FileChange, FileCommand, FileRow, Sealing};
use tessera_engine::history::Cursor;
use tessera_engine::identity::DeviceCertificate;
use tessera_engine::payload::RtcSignal;
use tessera_engine::renewal::RenewalOutcome;
use tessera_engine::search;
use tessera_engine::trust::{RootFingerprint, RootPin, Trust};
use tessera_engine::{
    ChatMessage, Engine, EngineConfig, Event, HistoryChange, IceOutcome, LinkCommand, Output,
    StoreWrite, StoredDevice, Turn, unix_ms,
};
use tessera_wire::signal::ServerFrame;
use tessera_wire::{ErrorCode, MemberInfo};
use uuid::Uuid;
use wasm_bindgen::prelude::{JsValue, wasm_bindgen};
use web_time::{Duration, Instant, SystemTime};

use crate::{WebDeviceKey, uuid};

/// One MLS key-value pair, as the page's `mls` object store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlsRecord {
    /// The key.
    pub key: ByteBuf,
    /// The value.
    pub value: ByteBuf,
}

/// The key of an outbox record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxKey {
    /// The device it was for.
    pub peer: Uuid,
    /// Its sequence number.
    pub seq: Seq,
}

/// The key of a record of what the device keeps for others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CarriedKey {
    /// The message's stream.
    pub stream: Stream,
    /// Its number.
    pub seq: u64,
}

/// One engine write as the page applies it to IndexedDB, in one transaction, before it acts on
/// the turn's outputs: records to put and keys to delete per object store, and the history rows.
#[derive(Debug, Serialize)]
pub struct PageWrite {
    /// The engine's own state, kept under the key `"state"`.
    pub state: ByteBuf,
    /// MLS pairs to put.
    pub mls_put: Vec<MlsRecord>,
    /// MLS keys to delete.
    pub mls_delete: Vec<ByteBuf>,
    /// Outbox records to put (key `[peer, seq]`).
    pub outbox_put: Vec<Queued>,
    /// Outbox records to delete.
    pub outbox_delete: Vec<OutboxKey>,
    /// History rows (`{kind: "add", …message, outgoing}`, `{kind: "delivered", device, id,
    /// peer}` or `{kind: "change", id, member, device, target, change, sent_at}`), applied as
    /// they come.
    pub history: Vec<HistoryChange>,
    /// Records of messages kept for others to put (key `[stream, seq]`).
    pub carried_put: Vec<CarriedRow>,
    /// Records of messages kept for others to delete.
    pub carried_delete: Vec<CarriedKey>,
    /// File records to put (key `id`).
    pub files_put: Vec<FileRecord>,
    /// Ids of file records to delete.
    pub files_delete: Vec<Uuid>,
}

/// One file as the page's `files` object store keeps it: its id and the engine's encoded row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file.
    pub id: Uuid,
    /// The engine's row ([`FileRow::encode`]).
    pub row: ByteBuf,
}

impl From<StoreWrite> for PageWrite {
    fn from(write: StoreWrite) -> PageWrite {
        let mut page = PageWrite {
            state: ByteBuf::from(write.state),
            mls_put: Vec::new(),
            mls_delete: Vec::new(),
            outbox_put: Vec::new(),
            outbox_delete: Vec::new(),
            history: write.history,
            carried_put: Vec::new(),
            carried_delete: Vec::new(),
            files_put: Vec::new(),
            files_delete: Vec::new(),
        };
        for (key, value) in write.mls {
            let key = ByteBuf::from(key);
            match value {
                Some(value) => page.mls_put.push(MlsRecord {
                    key,
                    value: ByteBuf::from(value),
                }),
                None => page.mls_delete.push(key),
            }
        }
        for change in write.outbox {
            match change {
                OutboxChange::Put(row) => page.outbox_put.push(row),
                OutboxChange::Delete { peer, seq } => {
                    page.outbox_delete.push(OutboxKey { peer, seq });
                }
            }
        }
        for change in write.carried {
            match change {
                CarriedChange::Put(row) => page.carried_put.push(row),
                CarriedChange::Delete { stream, seq } => {
                    page.carried_delete.push(CarriedKey { stream, seq });
                }
            }
        }
        for change in write.files {
            match change {
                FileChange::Put(row) => page.files_put.push(FileRecord {
                    id: row.id,
                    row: ByteBuf::from(row.encode()),
                }),
                FileChange::Delete(id) => page.files_delete.push(id),
            }
        }
        page
    }
}

/// What the page read back from IndexedDB: every record of the three stores the engine needs.
#[derive(Debug, Deserialize)]
pub struct PageRecords {
    /// The engine's own state.
    pub state: ByteBuf,
    /// Every MLS pair.
    pub mls: Vec<MlsRecord>,
    /// Every outbox record.
    pub outbox: Vec<Queued>,
    /// Every record of what the device keeps for others (none in a database of an earlier
    /// version).
    #[serde(default)]
    pub carried: Vec<CarriedRow>,
    /// Every file record (none in a database of an earlier version).
    #[serde(default)]
    pub files: Vec<FileRecord>,
}

impl From<PageRecords> for StoredDevice {
    fn from(page: PageRecords) -> StoredDevice {
        StoredDevice {
            state: page.state.into_vec(),
            mls: page
                .mls
                .into_iter()
                .map(|r| (r.key.into_vec(), r.value.into_vec()))
                .collect(),
            outbox: page
                .outbox
                .into_iter()
                .map(|row| ((row.peer, row.seq), row))
                .collect(),
            carried: page
                .carried
                .into_iter()
                .map(|row| ((row.stream, row.seq), row))
                .collect(),
            // A record that does not read is left out: the file is as if never offered.
            files: page
                .files
                .iter()
                .filter_map(|r| FileRow::decode(&r.row).ok())
                .map(|row| (row.id, row))
                .collect(),
        }
    }
}

/// One thing the engine wants the page to do: `{kind, …}`.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PageOutput {
    /// Send this text frame on the signalling socket.
    Send {
        /// The frame.
        frame: String,
    },
    /// Fetch `GET /api/v1/members` and hand it to `handleDirectory` (a failure to
    /// `handleDirectoryUnavailable`, a refused session to `handleSessionEnded`).
    FetchDirectory,
    /// Fetch `GET /api/v1/turn`, use the servers for links opened from now on, and hand what came
    /// of it to `handleIceServers`.
    FetchIceServers,
    /// Read up to `limit` history rows strictly older than `before` (`{sent_at, device, id}`, in
    /// that order; from the newest when `null`), newest first, count the rows older than
    /// `before`, and hand both to `handleHistoryRead` for `peer` (another device of this member).
    ReadHistory {
        /// The device that asked.
        peer: Uuid,
        /// Where the page starts.
        before: Option<Cursor>,
        /// The most rows to read.
        limit: usize,
    },
    /// The session ended: `POST /api/v1/session/renew/start`, sign its ceremony with
    /// `sessionRenewal`, `POST /api/v1/session/renew` (the server sets the new cookie), connect
    /// again, and hand what came of it to `handleSessionRenewal`.
    RenewSession,
    /// Show this (`{kind:"event", event:"message", …}`, the CLI's `--json` shapes); messages and
    /// deliveries also go into the history.
    Event(Event),
    /// A link command as the engine words it: `open` (make an RTCPeerConnection, a data channel
    /// and an offer), `rtc` (apply the peer's step: the shapes `setRemoteDescription` and
    /// `addIceCandidate` take), `data` (put the bytes on the data channel), `close`.
    #[serde(untagged)]
    Link(LinkCommand),
    /// File IO as the engine words it: `read` (chunks to hand to `handleFileRead`), `write`,
    /// `sync` (then `handleFileSynced`), `discard`.
    #[serde(untagged)]
    File(FileCommand),
}

impl From<Output> for PageOutput {
    fn from(output: Output) -> PageOutput {
        match output {
            Output::Send(frame) => PageOutput::Send {
                frame: serde_json::to_string(&frame).unwrap_or_default(),
            },
            Output::Link(command) => PageOutput::Link(command),
            Output::FetchDirectory => PageOutput::FetchDirectory,
            Output::FetchIceServers => PageOutput::FetchIceServers,
            Output::RenewSession => PageOutput::RenewSession,
            Output::ReadHistory {
                peer,
                before,
                limit,
            } => PageOutput::ReadHistory {
                peer,
                before,
                limit,
            },
            Output::Event(event) => PageOutput::Event(event),
            Output::File(command) => PageOutput::File(command),
        }
    }
}

/// One turn of the engine as the page takes it: `{asks, write, outputs}`: what may be done at
/// once ([`tessera_engine::Output::waits_for_write`]), the write (or `null`) to put in IndexedDB,
/// and what to do once it is there.
#[derive(Debug, Serialize)]
pub struct PageTurn {
    /// What may be done before the write.
    pub asks: Vec<PageOutput>,
    /// What to write.
    pub write: Option<PageWrite>,
    /// What to do once it is written.
    pub outputs: Vec<PageOutput>,
}

impl From<Turn> for PageTurn {
    fn from(turn: Turn) -> PageTurn {
        let (asks, outputs): (Vec<_>, Vec<_>) =
            turn.outputs.into_iter().partition(|o| !o.waits_for_write());
        PageTurn {
            asks: asks.into_iter().map(PageOutput::from).collect(),
            write: turn.write.map(PageWrite::from),
            outputs: outputs.into_iter().map(PageOutput::from).collect(),
        }
    }
}

/// Outputs as JavaScript values; one that cannot become one is skipped (and said).
fn js_outputs(outputs: &[PageOutput]) -> js_sys::Array {
    let array = js_sys::Array::new();
    for output in outputs {
        match to_js(output) {
            Ok(value) => {
                array.push(&value);
            }
            Err(error) => console_warn(&format!("an engine output was skipped: {error}")),
        }
    }
    array
}

/// What came of fetching the ICE servers, as the page words it: `"not_configured"` (404),
/// `"unavailable"` (no answer), `"offered"` (with the TURN credentials' `ttl_secs`, if any).
fn ice_outcome(outcome: &str, relay_ttl_secs: Option<f64>) -> Result<IceOutcome, String> {
    match outcome {
        "not_configured" => Ok(IceOutcome::NotConfigured),
        "unavailable" => Ok(IceOutcome::Unavailable),
        "offered" => Ok(IceOutcome::Offered {
            relay_ttl: relay_ttl_secs
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| Duration::from_secs_f64(t.min(1e9))),
        }),
        other => Err(format!("not an ICE outcome: {other:?}")),
    }
}

/// What came of renewing the session, as the page words it.
const RENEWAL_OUTCOMES: [(&str, RenewalOutcome); 4] = [
    ("renewed", RenewalOutcome::Renewed),
    ("refused", RenewalOutcome::Refused),
    ("revoked", RenewalOutcome::Revoked),
    ("unavailable", RenewalOutcome::Unavailable),
];

fn renewal_outcome(outcome: &str) -> Result<RenewalOutcome, String> {
    RENEWAL_OUTCOMES
        .iter()
        .find(|(word, _)| *word == outcome)
        .map(|(_, o)| *o)
        .ok_or_else(|| format!("not a renewal outcome: {outcome:?}"))
}

/// What the server's answer to a renewal means, as the page words it (`handleSessionRenewal`):
/// its HTTP `status` (none when it could not be reached) and the `error` of a refusal.
#[wasm_bindgen(js_name = renewalOutcome)]
#[must_use]
pub fn renewal_outcome_of(status: Option<u16>, error: Option<String>) -> String {
    let outcome = RenewalOutcome::of_answer(status, error.as_deref().map(ErrorCode::parse));
    RENEWAL_OUTCOMES
        .iter()
        .find(|(_, o)| *o == outcome)
        .map_or("unavailable", |(word, _)| word)
        .to_owned()
}

/// History rows as the page stores them (`{id, member, device, text, sent_at, file, reply_to, …}`;
/// other fields are left out) and the changes it keeps for them.
fn stored_history(
    rows: JsValue,
    changes: JsValue,
) -> Result<(Vec<ChatMessage>, Vec<MessageChange>), String> {
    let rows =
        serde_wasm_bindgen::from_value(rows).map_err(|e| format!("not history rows: {e}"))?;
    let changes = serde_wasm_bindgen::from_value(changes)
        .map_err(|e| format!("not changes to messages: {e}"))?;
    Ok((rows, changes))
}

/// The history rows the page read (`{id, member, device, text, sent_at, file, reply_to, …}`) as
/// the changes it holds to them leave them ([`tessera_engine::changes::show`]), in their order:
/// each `{id, member, device, text, sent_at, file, reply_to, edited, deleted, reactions}`, its
/// text the latest edit's, `reactions` as `[{emoji, members}]`. The page keeps the rows' other
/// fields (`outgoing`, `delivered`) itself.
///
/// # Errors
/// When the rows or the changes are not what the page stores.
#[wasm_bindgen(js_name = showMessages)]
pub fn show_messages(rows: JsValue, changes: JsValue) -> Result<JsValue, String> {
    let (messages, changes) = stored_history(rows, changes)?;
    to_js(&changes::show_all(messages, &changes))
}

/// The messages among the history rows the page read (any order) that `query` finds, as their
/// changes leave them ([`tessera_engine::search`]): the newest [`search::RESULTS`] of them, oldest
/// first, each `{id, member, device, text, sent_at, file, reply_to, edited, deleted, reactions}`.
/// Nothing when the query holds no word.
///
/// # Errors
/// When the rows or the changes are not what the page stores.
#[wasm_bindgen(js_name = searchMessages)]
pub fn search_messages(query: &str, rows: JsValue, changes: JsValue) -> Result<JsValue, String> {
    let Some(query) = search::Query::new(query) else {
        return to_js(&Vec::<ChatMessage>::new());
    };
    let (messages, changes) = stored_history(rows, changes)?;
    let mut found: Vec<_> = changes::show_all(messages, &changes)
        .into_iter()
        .filter(|m| query.finds(m))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(Cursor::of(&m.message)));
    found.truncate(search::RESULTS);
    found.reverse();
    to_js(&found)
}

/// Turns a Rust value into the plain JavaScript value the page uses: objects, not `Map`s (what a
/// flattened struct makes), `null` for nothing, byte strings as `Uint8Array`.
fn to_js(value: &impl Serialize) -> Result<JsValue, String> {
    let serializer = serde_wasm_bindgen::Serializer::new()
        .serialize_maps_as_objects(true)
        .serialize_missing_as_null(true);
    value.serialize(&serializer).map_err(|e| e.to_string())
}

#[wasm_bindgen]
extern "C" {
    /// `console.warn`.
    #[wasm_bindgen(js_namespace = console, js_name = warn)]
    fn console_warn(message: &str);
}

/// A count or an offset from the page: a whole number, at most 2^53.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn whole_number(value: f64) -> u64 {
    value.max(0.0) as u64
}

/// One file as the page lists it.
#[derive(Debug, Serialize)]
pub struct PageFile {
    /// The file (and its message).
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type, or empty.
    pub mime: String,
    /// Who sent it.
    pub member: Uuid,
    /// From which device.
    pub device: Uuid,
    /// When (ms since the Unix epoch, by the sender's clock).
    pub sent_at: i64,
    /// `"here"` (whole), `"receiving"` or `"failed"`.
    pub state: &'static str,
    /// Bytes synced so far (the whole size once here).
    pub received: u64,
    /// Why it failed.
    pub reason: Option<String>,
}

impl From<&FileRow> for PageFile {
    fn from(row: &FileRow) -> PageFile {
        use tessera_engine::files::FileState;
        let (state, received, reason) = match &row.state {
            FileState::Held => ("here", row.offer.size, None),
            FileState::Receiving { chunks, .. } => (
                "receiving",
                chunks
                    .saturating_mul(u64::from(row.offer.chunk))
                    .min(row.offer.size),
                None,
            ),
            FileState::Failed { reason } => ("failed", 0, Some(reason.clone())),
        };
        PageFile {
            id: row.id,
            name: row.offer.name.clone(),
            size: row.offer.size,
            mime: row.offer.mime.clone(),
            member: row.member,
            device: row.device,
            sent_at: row.sent_at,
            state,
            received,
            reason,
        }
    }
}

/// SHA-256 of a file's content, fed slice by slice as the page reads it (the engine's
/// [`tessera_engine::files::ContentHash`]).
#[wasm_bindgen]
#[derive(Default)]
pub struct ContentHasher(tessera_engine::files::ContentHash);

#[wasm_bindgen]
impl ContentHasher {
    /// A hash of nothing yet.
    #[wasm_bindgen(constructor)]
    #[must_use]
    pub fn new() -> ContentHasher {
        ContentHasher::default()
    }

    /// Adds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hash of everything added (32 bytes).
    #[must_use]
    pub fn finish(self) -> Vec<u8> {
        self.0.finish()
    }
}

/// The engine's configuration in a page: its defaults, but chunks of files sealed and opened by
/// the page with WebCrypto (the hardware's AES; WebAssembly's is software, a third of a transfer's
/// time).
fn page_config(origin: &str, rp_id: &str) -> EngineConfig {
    let mut config = EngineConfig::new(origin, rp_id);
    config.files.sealing = Sealing::Driver;
    config
}

/// The nonce chunk `index` of a file is sealed with (12 bytes,
/// [`tessera_engine::files::chunk_nonce`]).
#[wasm_bindgen(js_name = chunkNonce)]
#[must_use]
pub fn chunk_nonce(index: f64) -> Vec<u8> {
    files::chunk_nonce(whole_number(index)).to_vec()
}

/// The additional data chunk `index` of a file of `count` chunks is sealed with
/// ([`tessera_engine::files::chunk_aad`]).
///
/// # Errors
/// When `file` is not a UUID.
#[wasm_bindgen(js_name = chunkAad)]
pub fn chunk_aad(file: &str, index: f64, count: f64) -> Result<Vec<u8>, String> {
    let file = uuid(file, "file")?;
    Ok(files::chunk_aad(file, whole_number(index), whole_number(count)).to_vec())
}

/// This browser as a member device.
#[wasm_bindgen]
pub struct WebDevice(Engine);

#[wasm_bindgen]
impl WebDevice {
    /// A new device of `member` with `key`, certified by the member's hardware key
    /// (`certificate`, from [`WebDeviceKey::certify`]), for the server at `origin` / `rp_id`, in
    /// `circle`, whose root is `root` (from the invitation link this browser joined with), or
    /// (none) to be found from the member's key at the first directory.
    ///
    /// # Errors
    /// When an id is not a UUID, the root is damaged, or the certificate is not for this key and
    /// device.
    pub fn create(
        origin: &str,
        rp_id: &str,
        key: WebDeviceKey,
        certificate: &str,
        circle: &str,
        root: Option<String>,
    ) -> Result<WebDevice, String> {
        let certificate: DeviceCertificate =
            from_json(certificate).map_err(|_| "not a device certificate".to_owned())?;
        let (member, device) = (certificate.member, certificate.device);
        let root = match root {
            Some(text) => {
                RootPin::Pinned(RootFingerprint::parse(&text).map_err(|e| e.to_string())?)
            }
            None => RootPin::FromOwnKey,
        };
        let trust = Trust {
            circle: crate::uuid(circle, "circle")?,
            root,
        };
        Engine::new(
            page_config(origin, rp_id),
            trust,
            member,
            device,
            key.0,
            certificate,
        )
        .map(WebDevice)
        .map_err(|e| e.to_string())
    }

    /// The device as IndexedDB kept it: `{state, mls, outbox}` with every record.
    ///
    /// # Errors
    /// When the records are not a device's.
    pub fn restore(origin: &str, rp_id: &str, stored: JsValue) -> Result<WebDevice, String> {
        let stored: PageRecords = serde_wasm_bindgen::from_value(stored)
            .map_err(|e| format!("the saved device cannot be read: {e}"))?;
        Engine::restore(page_config(origin, rp_id), stored.into())
            .map(WebDevice)
            .map_err(|e| e.to_string())
    }

    /// The circle's root this device pinned (base64url), once it has.
    #[must_use]
    pub fn root(&self) -> Option<String> {
        self.0.root().map(|r| r.to_text())
    }

    /// This member's id.
    #[must_use]
    pub fn member(&self) -> String {
        self.0.member().to_string()
    }

    /// This device's id.
    #[must_use]
    pub fn device(&self) -> String {
        self.0.device().to_string()
    }

    /// A text frame from the signalling socket.
    ///
    /// # Errors
    /// When the frame is not one the server sends (it is dropped).
    #[wasm_bindgen(js_name = handleFrame)]
    pub fn handle_frame(&mut self, text: &str) -> Result<(), String> {
        let frame: ServerFrame =
            from_json(text).map_err(|e| format!("not a frame of the server's: {e}"))?;
        self.0.handle_frame(Instant::now(), frame);
        Ok(())
    }

    /// The circle directory (`GET /api/v1/members`, as text).
    ///
    /// # Errors
    /// When it is not a directory.
    #[wasm_bindgen(js_name = handleDirectory)]
    pub fn handle_directory(&mut self, text: &str) -> Result<(), String> {
        let members: Vec<MemberInfo> =
            from_json(text).map_err(|_| "not a circle directory".to_owned())?;
        self.0.handle_directory(Instant::now(), members);
        Ok(())
    }

    /// The circle directory could not be fetched (`reason`, in words): the engine asks again.
    #[wasm_bindgen(js_name = handleDirectoryUnavailable)]
    pub fn handle_directory_unavailable(&mut self, reason: &str) {
        self.0
            .handle_directory_unavailable(Instant::now(), reason.to_owned());
    }

    /// What came of fetching the ICE servers (`"not_configured"`, `"unavailable"`, or
    /// `"offered"` with the TURN credentials' lifetime in seconds): decides the next fetch.
    ///
    /// # Errors
    /// When `outcome` is none of these.
    #[wasm_bindgen(js_name = handleIceServers)]
    pub fn handle_ice_servers(
        &mut self,
        outcome: &str,
        relay_ttl_secs: Option<f64>,
    ) -> Result<(), String> {
        let outcome = ice_outcome(outcome, relay_ttl_secs)?;
        self.0.handle_ice_servers(Instant::now(), outcome);
        Ok(())
    }

    /// The server refused the session (401): the device asks to renew it (`renew_session`).
    #[wasm_bindgen(js_name = handleSessionEnded)]
    pub fn handle_session_ended(&mut self) {
        self.0.handle_session_ended(Instant::now());
    }

    /// The history rows IndexedDB read for `read_history` (newest first: `{id, member, device,
    /// text, sent_at, …}`), the changes it holds to them, and how many rows it holds older than
    /// the ask's start.
    ///
    /// # Errors
    /// When `peer` is not a UUID or the rows are not history rows.
    #[wasm_bindgen(js_name = handleHistoryRead)]
    pub fn handle_history_read(
        &mut self,
        peer: &str,
        rows: JsValue,
        changes: JsValue,
        older: f64,
    ) -> Result<(), String> {
        let (rows, changes) = stored_history(rows, changes)?;
        let older = whole_number(older);
        self.0
            .handle_history_read(Instant::now(), uuid(peer, "device")?, rows, &changes, older);
        Ok(())
    }

    /// The request (JSON) for a new session in the server's ceremony `ceremony`, signed by this
    /// device's key (for `renew_session`).
    ///
    /// # Errors
    /// When the key cannot sign.
    #[wasm_bindgen(js_name = sessionRenewal)]
    pub fn session_renewal(&self, ceremony: &str) -> Result<String, String> {
        let renewal = self
            .0
            .session_renewal(ceremony)
            .map_err(|e| e.to_string())?;
        serde_json::to_string(&renewal).map_err(|e| e.to_string())
    }

    /// What came of renewing the session: `"renewed"`, `"refused"` (the page asks to log in),
    /// `"revoked"` or `"unavailable"` (asked again shortly).
    ///
    /// # Errors
    /// When `outcome` is none of these.
    #[wasm_bindgen(js_name = handleSessionRenewal)]
    pub fn handle_session_renewal(&mut self, outcome: &str) -> Result<(), String> {
        let outcome = renewal_outcome(outcome)?;
        self.0.handle_session_renewal(Instant::now(), outcome);
        Ok(())
    }

    /// The signalling socket closed.
    #[wasm_bindgen(js_name = handleDisconnected)]
    pub fn handle_disconnected(&mut self) {
        self.0.handle_disconnected(Instant::now());
    }

    /// The data channel to `device` opened.
    ///
    /// # Errors
    /// When `device` is not a UUID.
    #[wasm_bindgen(js_name = handleLinkUp)]
    pub fn handle_link_up(&mut self, device: &str) -> Result<(), String> {
        self.0
            .handle_link_up(Instant::now(), uuid(device, "device")?);
        Ok(())
    }

    /// The link to `device` closed or failed.
    ///
    /// # Errors
    /// When `device` is not a UUID.
    #[wasm_bindgen(js_name = handleLinkDown)]
    pub fn handle_link_down(&mut self, device: &str) -> Result<(), String> {
        self.0
            .handle_link_down(Instant::now(), uuid(device, "device")?);
        Ok(())
    }

    /// A message from the data channel to `device`.
    ///
    /// # Errors
    /// When `device` is not a UUID.
    #[wasm_bindgen(js_name = handleLinkData)]
    pub fn handle_link_data(&mut self, device: &str, bytes: &[u8]) -> Result<(), String> {
        self.0
            .handle_link_data(Instant::now(), uuid(device, "device")?, bytes);
        Ok(())
    }

    /// A negotiation step of this side of the link to `device` (`{type:"offer"|"answer", sdp}`
    /// or `{type:"candidate", candidate, sdpMid}`), sent MLS-protected.
    ///
    /// # Errors
    /// When the step is malformed or this device is not in the group.
    #[wasm_bindgen(js_name = sendRtc)]
    pub fn send_rtc(&mut self, device: &str, signal: JsValue) -> Result<(), String> {
        let signal: RtcSignal = serde_wasm_bindgen::from_value(signal)
            .map_err(|e| format!("not a negotiation step: {e}"))?;
        self.0
            .send_rtc(Instant::now(), uuid(device, "device")?, signal)
            .map_err(|e| e.to_string())
    }

    /// Sends `text` to the circle; returns the message's id.
    ///
    /// # Errors
    /// When this device is not in the group yet or the text is too large.
    #[wasm_bindgen(js_name = sendText)]
    pub fn send_text(&mut self, text: &str, reply_to: Option<String>) -> Result<String, String> {
        let reply_to: Option<MessageRef> = reply_to
            .map(|json| from_json(json.as_bytes()))
            .transpose()
            .map_err(|e| format!("not a message to answer: {e}"))?;
        self.0
            .send_reply(Instant::now(), unix_ms(SystemTime::now()), text, reply_to)
            .map(|id| id.to_string())
            .map_err(|e| e.to_string())
    }

    /// Reacts to, edits or deletes the message `target` (JSON `{member, device, id}`) for the
    /// circle: `change` (JSON) is `{kind: "react" | "unreact", emoji}`, `{kind: "edit", text}` or
    /// `{kind: "delete"}`. Returns the change's id.
    ///
    /// # Errors
    /// A malformed target or change, a change this member may not make (an edit or deletion of
    /// another member's message), or this device not in the group yet.
    #[wasm_bindgen(js_name = changeMessage)]
    pub fn change_message(&mut self, target: &str, change: &str) -> Result<String, String> {
        let target: MessageRef =
            from_json(target.as_bytes()).map_err(|e| format!("not a message: {e}"))?;
        let change: Change =
            from_json(change.as_bytes()).map_err(|e| format!("not a change: {e}"))?;
        self.0
            .change_message(Instant::now(), unix_ms(SystemTime::now()), target, change)
            .map(|id| id.to_string())
            .map_err(|e| e.to_string())
    }

    /// Sets this member's display name and tells the group.
    ///
    /// # Errors
    /// When MLS fails.
    #[wasm_bindgen(js_name = setDisplayName)]
    pub fn set_display_name(&mut self, name: &str) -> Result<(), String> {
        self.0
            .set_display_name(Instant::now(), name)
            .map_err(|e| e.to_string())
    }

    /// Shares a file the page stored (in the origin's private file system) under `id`, of
    /// `size` bytes whose content hashes to `sha256` ([`ContentHasher`]); returns its id.
    ///
    /// # Errors
    /// When this device is not in the group yet, the file is over the cap, or its name is not a
    /// plain file name.
    #[wasm_bindgen(js_name = sendFile)]
    pub fn send_file(
        &mut self,
        id: &str,
        name: &str,
        mime: &str,
        size: f64,
        sha256: &[u8],
    ) -> Result<String, String> {
        let file = tessera_engine::StoredFile {
            id: uuid(id, "file")?,
            name: name.to_owned(),
            mime: mime.to_owned(),
            size: whole_number(size),
            sha256: sha256.to_vec(),
        };
        self.0
            .send_file(Instant::now(), unix_ms(SystemTime::now()), file)
            .map(|id| id.to_string())
            .map_err(|e| e.to_string())
    }

    /// Deletes a file from this browser (its message stays); false when there is none.
    ///
    /// # Errors
    /// When `id` is not a UUID.
    #[wasm_bindgen(js_name = deleteFile)]
    pub fn delete_file(&mut self, id: &str) -> Result<bool, String> {
        Ok(self.0.delete_file(Instant::now(), uuid(id, "file")?))
    }

    /// A chunk the page read for `peer` (the `read` file command).
    ///
    /// # Errors
    /// When an id is not a UUID.
    #[wasm_bindgen(js_name = handleFileRead)]
    pub fn handle_file_read(
        &mut self,
        peer: &str,
        file: &str,
        index: f64,
        bytes: &[u8],
    ) -> Result<(), String> {
        let (peer, file) = (uuid(peer, "device")?, uuid(file, "file")?);
        self.0
            .handle_file_read(Instant::now(), peer, file, whole_number(index), bytes);
        Ok(())
    }

    /// A chunk from `peer` the page opened (the `open` file command): its content, or
    /// `undefined` when it did not open.
    ///
    /// # Errors
    /// When an id is not a UUID.
    #[wasm_bindgen(js_name = handleFileOpened)]
    pub fn handle_file_opened(
        &mut self,
        peer: &str,
        file: &str,
        index: f64,
        plain: Option<Vec<u8>>,
    ) -> Result<(), String> {
        let (peer, file) = (uuid(peer, "device")?, uuid(file, "file")?);
        self.0.handle_file_opened(
            Instant::now(),
            peer,
            file,
            whole_number(index),
            plain.as_deref(),
        );
        Ok(())
    }

    /// The page made a file's writes durable up to `chunks` (the `sync` file command).
    ///
    /// # Errors
    /// When `file` is not a UUID.
    #[wasm_bindgen(js_name = handleFileSynced)]
    pub fn handle_file_synced(&mut self, file: &str, chunks: f64) -> Result<(), String> {
        self.0
            .handle_file_synced(Instant::now(), uuid(file, "file")?, whole_number(chunks));
        Ok(())
    }

    /// The page could not read or write a file (`reason`, in words): it is given up.
    ///
    /// # Errors
    /// When `file` is not a UUID.
    #[wasm_bindgen(js_name = handleFileFailed)]
    pub fn handle_file_failed(&mut self, file: &str, reason: &str) -> Result<(), String> {
        self.0
            .handle_file_failed(Instant::now(), uuid(file, "file")?, reason);
        Ok(())
    }

    /// The files this device knows of, for the page: `[{id, name, size, mime, member, device,
    /// sent_at, state: "here"|"receiving"|"failed", received, reason}]`.
    ///
    /// # Errors
    /// When the list cannot be converted.
    pub fn files(&self) -> Result<JsValue, String> {
        let files: Vec<PageFile> = self.0.files().map(PageFile::from).collect();
        to_js(&files)
    }

    /// Time passed.
    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self) {
        self.0.handle_timeout(Instant::now());
    }

    /// Milliseconds until `handleTimeout` next has work; `undefined` for none.
    #[wasm_bindgen(js_name = pollTimeoutMs)]
    #[must_use]
    pub fn poll_timeout_ms(&self) -> Option<f64> {
        self.0.poll_timeout().map(|at| {
            let wait = at.saturating_duration_since(Instant::now());
            f64::from(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX))
        })
    }

    /// The engine's next turn (`{write, outputs}`, see [`PageTurn`]); `undefined` when it has
    /// nothing to write or do. An output that cannot become a JavaScript value is skipped (and
    /// logged), so that no peer's message can stop the device.
    ///
    /// # Errors
    /// When the state cannot be encoded.
    #[wasm_bindgen(js_name = nextTurn)]
    pub fn next_turn(&mut self) -> Result<JsValue, String> {
        let Some(turn) = self.0.next_turn().map_err(|e| e.to_string())? else {
            return Ok(JsValue::UNDEFINED);
        };
        let turn = PageTurn::from(turn);
        let write = match &turn.write {
            Some(write) => to_js(write)?,
            None => JsValue::NULL,
        };
        let value = js_sys::Object::new();
        js_sys::Reflect::set(&value, &"asks".into(), &js_outputs(&turn.asks))
            .map_err(|_| "no turn object")?;
        js_sys::Reflect::set(&value, &"write".into(), &write).map_err(|_| "no turn object")?;
        js_sys::Reflect::set(&value, &"outputs".into(), &js_outputs(&turn.outputs))
            .map_err(|_| "no turn object")?;
        Ok(value.into())
    }

    /// The device as the circle view shows it (the engine's `DeviceView`).
    ///
    /// # Errors
    /// When the view cannot be converted.
    pub fn view(&self) -> Result<JsValue, String> {
        to_js(&self.0.view())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};
    use tessera_softkey::SoftKey;

    use super::*;
    use crate::tests::{ORIGIN, certify_in_page, member};

    /// IndexedDB as the page's driver keeps it: the engine's three object stores.
    #[derive(Default)]
    struct Idb {
        state: Vec<u8>,
        mls: BTreeMap<Vec<u8>, Vec<u8>>,
        outbox: BTreeMap<(Uuid, Seq), Queued>,
        carried: BTreeMap<(Uuid, u64), CarriedRow>,
    }

    impl Idb {
        /// What `save` in web/device.js does with a write, in one transaction.
        fn save(&mut self, write: PageWrite) {
            self.state = write.state.into_vec();
            for r in write.mls_put {
                self.mls.insert(r.key.into_vec(), r.value.into_vec());
            }
            for key in write.mls_delete {
                self.mls.remove(key.as_slice());
            }
            for r in write.outbox_put {
                self.outbox.insert((r.peer, r.seq), r);
            }
            for k in write.outbox_delete {
                self.outbox.remove(&(k.peer, k.seq));
            }
            for r in write.carried_put {
                self.carried.insert((r.stream, r.seq), r);
            }
            for k in write.carried_delete {
                self.carried.remove(&(k.stream, k.seq));
            }
        }

        /// What `load` reads back.
        fn load(&self) -> PageRecords {
            PageRecords {
                state: ByteBuf::from(self.state.clone()),
                mls: self
                    .mls
                    .iter()
                    .map(|(k, v)| MlsRecord {
                        key: ByteBuf::from(k.clone()),
                        value: ByteBuf::from(v.clone()),
                    })
                    .collect(),
                outbox: self.outbox.values().cloned().collect(),
                carried: self.carried.values().cloned().collect(),
                files: Vec::new(),
            }
        }
    }

    fn engine(key: &mut SoftKey, info: &MemberInfo) -> Engine {
        let (device_key, certificate) = certify_in_page(key, info, Uuid::new_v4());
        let circle = Uuid::new_v4().to_string();
        WebDevice::create(ORIGIN, "localhost", device_key, &certificate, &circle, None)
            .expect("a device")
            .0
    }

    /// The engine's next turn as the page takes it: the write, and the outputs (its asks first)
    /// as JSON.
    fn turn(engine: &mut Engine) -> (Option<PageWrite>, Vec<Value>) {
        let turn = PageTurn::from(engine.next_turn().expect("encodes").expect("a turn"));
        let outputs = turn
            .asks
            .iter()
            .chain(&turn.outputs)
            .map(|o| serde_json::to_value(o).expect("json"))
            .collect();
        (turn.write, outputs)
    }

    #[test]
    fn a_device_saved_as_the_page_saves_it_comes_back_the_same() {
        let (mut key, info) = member();
        let mut engine = engine(&mut key, &info);
        let mut idb = Idb::default();
        let now = Instant::now();
        // The circle's first admin's first device: it creates the group once it has the
        // directory and the server's hello.
        let mut admin = info.clone();
        admin.role = tessera_wire::Role::Admin;
        engine.handle_directory(now, vec![admin]);
        engine.handle_frame(
            now,
            serde_json::from_value(json!({
                "type": "hello", "member": info.id, "device": engine.device(), "peers": [],
                "epoch": 0,
            }))
            .expect("hello"),
        );
        engine.set_display_name(now, "Ada").expect("name");
        let (write, seen) = turn(&mut engine);
        assert!(
            engine.in_group(),
            "the first device makes the group: {seen:?}"
        );
        idb.save(write.expect("changed"));
        assert!(!idb.mls.is_empty(), "the MLS store is saved");
        // Outputs are plain values in the shapes the driver matches on.
        assert!(seen.iter().all(|o| o["kind"].is_string()), "{seen:?}");
        let back = Engine::restore(EngineConfig::new(ORIGIN, "localhost"), idb.load().into())
            .expect("back");
        assert_eq!(back.member(), info.id);
        assert_eq!(back.device(), engine.device());
        assert_eq!(back.in_group(), engine.in_group());
        assert_eq!(back.display_names(), engine.display_names());
        // The same view, but for the connection and the safety number: a restored device is
        // connected once it hears the server's hello, and has a safety number once it has a
        // directory.
        let mut view = engine.view();
        assert!(view.connected);
        view.connected = false;
        assert!(view.safety.is_some());
        view.safety = None;
        assert_eq!(back.view(), view);
    }

    #[test]
    fn outputs_and_snapshots_have_the_shapes_the_driver_reads() {
        let device = Uuid::new_v4();
        let open =
            serde_json::to_value(PageOutput::Link(LinkCommand::Open { device })).expect("json");
        assert_eq!(open, json!({"kind": "open", "device": device}));
        let data = serde_json::to_value(PageOutput::Link(LinkCommand::Data {
            device,
            bytes: vec![1, 2],
        }))
        .expect("json");
        assert_eq!(
            data,
            json!({"kind": "data", "device": device, "bytes": [1, 2]})
        );
        let fetch = serde_json::to_value(PageOutput::FetchDirectory).expect("json");
        assert_eq!(fetch, json!({"kind": "fetch_directory"}));
        let ice = serde_json::to_value(PageOutput::FetchIceServers).expect("json");
        assert_eq!(ice, json!({"kind": "fetch_ice_servers"}));
        let event = serde_json::to_value(PageOutput::Event(Event::Delivered {
            id: device,
            device,
            carried: false,
        }))
        .expect("json");
        assert_eq!(
            event,
            json!({"kind": "event", "event": "delivered", "id": device, "device": device,
                "carried": false})
        );
        let rtc = serde_json::to_value(PageOutput::Link(LinkCommand::Rtc {
            device,
            signal: RtcSignal::Candidate {
                candidate: "candidate:1 1 udp 1 10.0.0.1 5 typ host".into(),
                sdp_mid: Some("0".into()),
            },
        }))
        .expect("json");
        assert_eq!(rtc["signal"]["type"], "candidate");
        assert_eq!(rtc["signal"]["sdpMid"], "0");
        let message = tessera_engine::ChatMessage {
            id: device,
            member: device,
            device,
            text: "hi".into(),
            sent_at: 5,
            file: None,
            reply_to: None,
        };
        let snapshot = PageWrite::from(StoreWrite {
            state: vec![1],
            mls: [(vec![2], Some(vec![3])), (vec![4], None)]
                .into_iter()
                .collect(),
            outbox: vec![
                OutboxChange::Put(Queued {
                    peer: device,
                    seq: 7,
                    tag: None,
                    message: vec![5],
                }),
                OutboxChange::Delete {
                    peer: device,
                    seq: 6,
                },
            ],
            history: vec![
                HistoryChange::Add {
                    message,
                    outgoing: true,
                },
                HistoryChange::Delivered {
                    device,
                    id: device,
                    peer: device,
                },
                HistoryChange::Change {
                    change: MessageChange {
                        id: device,
                        member: device,
                        device,
                        target: MessageRef {
                            member: device,
                            device,
                            id: device,
                        },
                        change: Change::Delete,
                        sent_at: 6,
                    },
                },
            ],
            carried: vec![CarriedChange::Delete {
                stream: device,
                seq: 2,
            }],
            files: vec![FileChange::Delete(device)],
        });
        assert_eq!(
            snapshot.carried_delete,
            vec![CarriedKey {
                stream: device,
                seq: 2
            }]
        );
        assert_eq!(snapshot.mls_put.len(), 1);
        assert_eq!(snapshot.mls_delete, vec![ByteBuf::from(vec![4])]);
        assert_eq!(snapshot.outbox_put[0].seq, 7);
        assert_eq!(
            snapshot.outbox_delete,
            vec![OutboxKey {
                peer: device,
                seq: 6
            }]
        );
        assert_eq!(snapshot.files_delete, vec![device]);
        // File commands in the shapes device.js hands its worker.
        let write = serde_json::to_value(PageOutput::File(FileCommand::Write {
            file: device,
            offset: 16_320,
            bytes: vec![1, 2],
        }))
        .expect("json");
        assert_eq!(
            write,
            json!({"kind": "write", "file": device, "offset": 16_320, "bytes": [1, 2]})
        );
        let sync = serde_json::to_value(PageOutput::File(FileCommand::Sync {
            file: device,
            chunks: 3,
            size: None,
        }))
        .expect("json");
        assert_eq!(
            sync,
            json!({"kind": "sync", "file": device, "chunks": 3, "size": null})
        );
        // History rows in the shapes device.js applies.
        assert_eq!(
            serde_json::to_value(&snapshot.history).expect("json"),
            json!([
                {"kind": "add", "id": device, "member": device, "device": device, "text": "hi",
                    "sent_at": 5, "outgoing": true, "file": null, "reply_to": null},
                {"kind": "delivered", "device": device, "id": device, "peer": device},
                {"kind": "change", "id": device, "member": device, "device": device,
                    "target": {"member": device, "device": device, "id": device},
                    "change": {"kind": "delete"}, "sent_at": 6},
            ])
        );
        assert_eq!(
            ice_outcome("offered", Some(600.0)),
            Ok(IceOutcome::Offered {
                relay_ttl: Some(Duration::from_secs(600))
            })
        );
        assert_eq!(
            ice_outcome("offered", None),
            Ok(IceOutcome::Offered { relay_ttl: None })
        );
        assert_eq!(
            ice_outcome("not_configured", None),
            Ok(IceOutcome::NotConfigured)
        );
        assert!(ice_outcome("sometimes", None).is_err());
        assert_eq!(renewal_outcome("renewed"), Ok(RenewalOutcome::Renewed));
        assert_eq!(renewal_outcome("revoked"), Ok(RenewalOutcome::Revoked));
        assert!(renewal_outcome("maybe").is_err());
        assert_eq!(
            renewal_outcome_of(Some(403), Some("member_revoked".into())),
            "revoked"
        );
        assert_eq!(renewal_outcome_of(None, None), "unavailable");
    }

    #[test]
    fn a_device_is_made_only_with_its_own_certificate() {
        let (mut key, info) = member();
        let (_, certificate) = certify_in_page(&mut key, &info, Uuid::new_v4());
        let circle = Uuid::new_v4().to_string();
        let other = WebDeviceKey::generate().expect("key");
        assert!(
            WebDevice::create(ORIGIN, "localhost", other, &certificate, &circle, None).is_err()
        );
        let again = WebDeviceKey::generate().expect("key");
        assert!(WebDevice::create(ORIGIN, "localhost", again, "{}", &circle, None).is_err());
        let (device_key, certificate) = certify_in_page(&mut key, &info, Uuid::new_v4());
        let damaged = Some("not a root".to_owned());
        let refused = WebDevice::create(
            ORIGIN,
            "localhost",
            device_key,
            &certificate,
            &circle,
            damaged,
        );
        assert_eq!(
            refused.err().as_deref(),
            Some("this link is damaged: ask the admin for the whole link")
        );
    }

    #[test]
    fn inputs_that_are_not_what_they_claim_are_refused_and_change_nothing() {
        let (mut key, info) = member();
        let (device_key, certificate) = certify_in_page(&mut key, &info, Uuid::new_v4());
        let circle = Uuid::new_v4().to_string();
        let mut device =
            WebDevice::create(ORIGIN, "localhost", device_key, &certificate, &circle, None)
                .expect("a device");
        while device.0.next_turn().expect("encodes").is_some() {}
        let before = device.0.view();
        for frame in [
            "",
            "not json",
            "{}",
            r#"{"type":"nonsense"}"#,
            r#"{"type":"hello","member":"x"}"#,
            r#"{"type":"signal","from":"00000000-0000-0000-0000-000000000000"}"#,
            "[1,2,3]",
        ] {
            assert!(device.handle_frame(frame).is_err(), "{frame:?} is refused");
        }
        for directory in ["", "{}", r#"[{"id":"x"}]"#, "null"] {
            assert!(
                device.handle_directory(directory).is_err(),
                "{directory:?} is refused"
            );
        }
        for id in ["", "nobody", "00000000-0000-0000-0000-00000000000"] {
            assert!(device.handle_link_up(id).is_err());
            assert!(device.handle_link_down(id).is_err());
            assert!(device.handle_link_data(id, b"x").is_err());
        }
        assert!(
            device.0.next_turn().expect("encodes").is_none(),
            "nothing to do, nothing changed"
        );
        assert_eq!(device.0.view(), before);
        assert!(device.handle_ice_servers("later", Some(1.0)).is_err());
        // Not in the group yet: nothing is sent.
        assert!(device.send_text("hello", None).is_err());
        let target = format!(
            r#"{{"member":"{0}","device":"{0}","id":"{0}"}}"#,
            Uuid::new_v4()
        );
        for (target, change, why) in [
            ("{}", r#"{"kind":"delete"}"#, "not a message"),
            (target.as_str(), r#"{"kind":"shout"}"#, "not a change"),
            (
                target.as_str(),
                r#"{"kind":"react","emoji":""}"#,
                "a reaction is one emoji",
            ),
            (
                target.as_str(),
                r#"{"kind":"delete"}"#,
                "only the member who wrote",
            ),
        ] {
            let refused = device.change_message(target, change).expect_err(change);
            assert!(refused.contains(why), "{change}: {refused}");
        }
        let reply = device
            .send_text("hello", Some("[]".into()))
            .expect_err("a list");
        assert!(reply.contains("not a message to answer"), "{reply}");
    }
}
