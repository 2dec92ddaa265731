//! Files shared in the circle, sans-IO. The offer (name, size, type, content hash and the file's
//! own key) travels sealed in MLS as a message of the circle; the content goes peer to peer as
//! chunks sealed under the file's key (AES-256-GCM), asked for by the receiver a window at a time
//! from a device that holds the file whole, opened and hashed here, written and synced by the
//! driver. What is durable of a transfer (chunks synced, the hash's state over them) is a row of
//! the store, so a restarted device resumes at the chunk (docs/engine.md, "Files").

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead as _, KeyInit as _, Nonce, Payload};
use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::SerializableState as _;
use sha2::{Digest as _, Sha256};
use tessera_wire::Base64Url;
use uuid::Uuid;
use web_time::{Duration, Instant};

use crate::engine::Event;
use crate::payload::{LINK_MESSAGE_BYTES, Malformed, encode_file_chunk, encode_file_control};

/// The largest chunk of content sent in one link message: a chunk packet
/// (`6 ‖ file ‖ index ‖ sealed chunk`) fits [`LINK_MESSAGE_BYTES`].
pub const CHUNK_BYTES: u32 = (LINK_MESSAGE_BYTES - 64) as u32;
/// The smallest chunk an offer may name (a smaller one would only multiply packets).
pub const MIN_CHUNK_BYTES: u32 = 1024;
/// The longest file name, in bytes (what file systems take).
pub const NAME_BYTES: usize = 255;
/// The longest media type, in bytes.
pub const MIME_BYTES: usize = 127;
/// The default cap on a file's size: 2 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

const KEY_BYTES: usize = 32;
const TAG_BYTES: usize = 16;
const AAD_TAG: &[u8] = b"tessera file chunk v1";

/// Limits and timings of file transfers.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// The largest file this device sends or takes (bytes).
    pub max_bytes: u64,
    /// Chunks a receiver asks for ahead of what it has written: its memory and the link's
    /// in-flight data per transfer.
    pub window: u32,
    /// Chunks written between two syncs of a file being received (how much a crash may cost).
    pub sync_every: u64,
    /// How long a transfer waits for a chunk before it asks again.
    pub stall_after: Duration,
    /// How long a device that said it lacks a file is not asked for it again.
    pub lacking_for: Duration,
    /// How often progress is told, per transfer.
    pub progress_every: Duration,
    /// Files received at once; the others wait their turn, oldest first.
    pub concurrent: usize,
    /// Who seals and opens chunks: the engine, or its driver.
    pub sealing: Sealing,
}

/// Who seals and opens a file's chunks. The construction is the same either way
/// ([`ChunkSeal`]); a driver that has the hardware's AES where the engine has none (a browser
/// page's WebCrypto, where WebAssembly runs AES in software) does it itself: then chunks read for
/// a peer come back sealed ([`ReadChunks::seal`]), and chunks received go to the driver to open
/// ([`FileCommand::Open`]) before the engine hashes and writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sealing {
    /// The engine seals and opens.
    #[default]
    Engine,
    /// The driver seals and opens.
    Driver,
}

impl Default for FilesConfig {
    fn default() -> FilesConfig {
        FilesConfig {
            max_bytes: DEFAULT_MAX_BYTES,
            window: 128,
            sync_every: 512,
            stall_after: Duration::from_secs(2),
            lacking_for: Duration::from_secs(30),
            progress_every: Duration::from_millis(250),
            concurrent: 2,
            sealing: Sealing::Engine,
        }
    }
}

/// What the sender says of a file, sealed in MLS: everything needed to fetch, check and name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// The file's name, without any directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type as the sender saw it (`image/png`), or empty.
    pub mime: String,
    /// SHA-256 of its content.
    pub sha256: Base64Url,
    /// The key its chunks are sealed under (AES-256-GCM), fresh for each file.
    pub key: Base64Url,
    /// The size of its chunks; the last may be shorter.
    pub chunk: u32,
}

/// What the user interface shows of a file message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// The file's name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type, or empty.
    pub mime: String,
}

impl FileOffer {
    /// How many chunks the content is cut into.
    #[must_use]
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk.max(1)))
    }

    /// The size of chunk `index`.
    #[must_use]
    pub fn chunk_len(&self, index: u64) -> usize {
        let chunk = u64::from(self.chunk);
        let len = self.size.saturating_sub(index * chunk).min(chunk);
        usize::try_from(len).unwrap_or(0)
    }

    /// What the user interface shows of it.
    #[must_use]
    pub fn info(&self) -> FileInfo {
        FileInfo {
            name: self.name.clone(),
            size: self.size,
            mime: self.mime.clone(),
        }
    }

    /// Checks what a peer offers before anything is kept: a name that is a plain file name, a
    /// media type, a key, a hash and a chunk size of the right shapes. The size is checked
    /// against the device's cap apart ([`FileOffer::over`]), since such an offer is still shown.
    ///
    /// # Errors
    /// What is malformed.
    pub fn check(&self) -> Result<(), Malformed> {
        check_name(&self.name)?;
        let mime_ok = self.mime.len() <= MIME_BYTES
            && self.mime.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if !mime_ok {
            return Err(Malformed("file type"));
        }
        if self.key.as_slice().len() != KEY_BYTES {
            return Err(Malformed("file key"));
        }
        if self.sha256.as_slice().len() != 32 {
            return Err(Malformed("file hash"));
        }
        if !(MIN_CHUNK_BYTES..=CHUNK_BYTES).contains(&self.chunk) {
            return Err(Malformed("file chunk size"));
        }
        Ok(())
    }

    /// Whether the file is larger than `max_bytes`.
    #[must_use]
    pub fn over(&self, max_bytes: u64) -> bool {
        self.size > max_bytes
    }

    /// What the chunks of `file` (the file this offer names) are sealed with.
    #[must_use]
    pub fn chunk_seal(&self, file: Uuid) -> ChunkSeal {
        ChunkSeal {
            file,
            key: self.key.as_slice().to_vec(),
            count: self.chunks(),
        }
    }
}

/// Checks that `name` is a plain file name: not empty, at most [`NAME_BYTES`], no path separator
/// or control character, not `.` or `..`.
///
/// # Errors
/// Why it is not.
pub fn check_name(name: &str) -> Result<(), Malformed> {
    if name.is_empty() || name.len() > NAME_BYTES || name == "." || name == ".." {
        return Err(Malformed("file name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(Malformed(
            "file name (a path separator or a control character)",
        ));
    }
    Ok(())
}

/// The length of a chunk's additional data ([`chunk_aad`]).
pub const AAD_BYTES: usize = AAD_TAG.len() + 16 + 8 + 8;

/// The additional data chunk `index` of a file of `count` chunks is sealed with: a tag, the
/// file, the chunk's place and the count, so that a chunk cannot stand for another one or for a
/// chunk of a shorter file.
#[must_use]
pub fn chunk_aad(file: Uuid, index: u64, count: u64) -> [u8; AAD_BYTES] {
    let mut out = [0u8; AAD_BYTES];
    let tag = AAD_TAG.len();
    out[..tag].copy_from_slice(AAD_TAG);
    out[tag..tag + 16].copy_from_slice(file.as_bytes());
    out[tag + 16..tag + 24].copy_from_slice(&index.to_be_bytes());
    out[tag + 24..].copy_from_slice(&count.to_be_bytes());
    out
}

/// The nonce chunk `index` is sealed with: its index (each file has a key of its own).
#[must_use]
pub fn chunk_nonce(index: u64) -> [u8; 12] {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&index.to_be_bytes());
    bytes
}

/// What a file's chunks are sealed with: AES-256-GCM under the file's key, chunk `index` with
/// the nonce [`chunk_nonce`] and the additional data [`chunk_aad`]. Handed to a driver that seals
/// and opens chunks itself ([`Sealing::Driver`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkSeal {
    /// The file.
    pub file: Uuid,
    /// Its key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// How many chunks it has.
    pub count: u64,
}

impl ChunkSeal {
    /// Seals chunk `index`.
    ///
    /// # Errors
    /// When the chunk is out of range or the key is malformed.
    pub fn seal(&self, index: u64, plain: &[u8]) -> Result<Vec<u8>, Malformed> {
        let (cipher, nonce, aad) = self.cipher(index)?;
        cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| Malformed("file chunk"))
    }

    /// Opens chunk `index`: its content, if it is that chunk of that file, sealed under its key.
    ///
    /// # Errors
    /// When it is not.
    pub fn open(&self, index: u64, sealed: &[u8]) -> Result<Vec<u8>, Malformed> {
        let (cipher, nonce, aad) = self.cipher(index)?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| Malformed("file chunk (it does not open under the file's key)"))
    }

    /// Checks that chunk `index` is one of the file's.
    fn in_range(&self, index: u64) -> Result<(), Malformed> {
        if index >= self.count {
            return Err(Malformed("file chunk (out of range)"));
        }
        Ok(())
    }

    fn cipher(
        &self,
        index: u64,
    ) -> Result<(Aes256Gcm, Nonce<Aes256Gcm>, [u8; AAD_BYTES]), Malformed> {
        self.in_range(index)?;
        let cipher = Aes256Gcm::new_from_slice(&self.key).map_err(|_| Malformed("file key"))?;
        let nonce = Nonce::<Aes256Gcm>::from(chunk_nonce(index));
        Ok((cipher, nonce, chunk_aad(self.file, index, self.count)))
    }
}

/// Seals chunk `index` of `file` under the offer's key.
///
/// # Errors
/// When the chunk is not the size its place in the file says, or the key is malformed.
pub fn seal_chunk(
    offer: &FileOffer,
    file: Uuid,
    index: u64,
    plain: &[u8],
) -> Result<Vec<u8>, Malformed> {
    let seal = offer.chunk_seal(file);
    seal.in_range(index)?;
    if plain.len() != offer.chunk_len(index) {
        return Err(Malformed("file chunk (of the wrong size)"));
    }
    seal.seal(index, plain)
}

/// Opens chunk `index` of `file`: the content, if the chunk is that chunk of that file, sealed
/// under its key, and of its size.
///
/// # Errors
/// When it is not.
pub fn open_chunk(
    offer: &FileOffer,
    file: Uuid,
    index: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, Malformed> {
    let seal = offer.chunk_seal(file);
    seal.in_range(index)?;
    if !sealed_size(offer, index, sealed) {
        return Err(Malformed("file chunk (of the wrong size)"));
    }
    seal.open(index, sealed)
}

/// Whether `sealed` is the size chunk `index` of the offer's file has sealed.
fn sealed_size(offer: &FileOffer, index: u64, sealed: &[u8]) -> bool {
    sealed.len() == offer.chunk_len(index) + TAG_BYTES
}

/// A fresh key for a file.
///
/// # Errors
/// When the system has no randomness.
pub fn new_key() -> Result<Base64Url, getrandom::Error> {
    let mut key = vec![0u8; KEY_BYTES];
    getrandom::fill(&mut key)?;
    Ok(Base64Url(key))
}

/// SHA-256 of a file's content, fed piece by piece (drivers hash what they store, the engine
/// what it receives).
#[derive(Debug, Clone, Default)]
pub struct ContentHash(Sha256);

impl ContentHash {
    /// Adds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hash of everything added.
    #[must_use]
    pub fn finish(self) -> Vec<u8> {
        self.0.finalize().to_vec()
    }

    fn state(&self) -> Vec<u8> {
        self.0.serialize().to_vec()
    }

    fn from_state(bytes: &[u8]) -> Option<ContentHash> {
        let state = bytes.try_into().ok()?;
        Sha256::deserialize(state).ok().map(ContentHash)
    }
}

/// Where a file stands on this device (kept in postcard: no tag field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileState {
    /// Held whole: sent from here, or received, checked and synced.
    Held,
    /// Being received: `chunks` chunks are synced, and `hash` is the content hash's state over
    /// them.
    Receiving {
        /// Chunks synced.
        chunks: u64,
        /// SHA-256's state over them.
        #[serde(with = "serde_bytes")]
        hash: Vec<u8>,
    },
    /// Not taken, and why (over the cap, content not matching its hash).
    Failed {
        /// Why, in words.
        reason: String,
    },
}

/// A file as the store keeps it, one row per file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRow {
    /// The file, and the message that offered it.
    pub id: Uuid,
    /// The member who sent it.
    pub member: Uuid,
    /// The device that sent it.
    pub device: Uuid,
    /// When it was sent (ms since the Unix epoch, by the sender's clock).
    pub sent_at: i64,
    /// What the sender said of it.
    pub offer: FileOffer,
    /// Where it stands here.
    pub state: FileState,
}

impl FileRow {
    /// The row as the store keeps it.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// A row the store kept.
    ///
    /// # Errors
    /// When the bytes are not a row.
    pub fn decode(bytes: &[u8]) -> Result<FileRow, Malformed> {
        postcard::from_bytes(bytes).map_err(|_| Malformed("file row"))
    }
}

/// A change to the files' rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChange {
    /// Keep this row (replacing one of the same id).
    Put(FileRow),
    /// The member deleted the file.
    Delete(Uuid),
}

/// The file IO the engine asks its driver for. Serialized for the page's driver as
/// `{"kind":"write","file":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileCommand {
    /// Read the chunks asked for and hand each to [`crate::Engine::handle_file_read`] for the
    /// device that asked (sealed first, when [`ReadChunks::seal`] says so).
    Read(ReadChunks),
    /// Open a chunk received ([`Sealing::Driver`]) and hand its content, or that it did not
    /// open, to [`crate::Engine::handle_file_opened`]. (`open_chunk` for the page, whose
    /// outputs have an `open` of links.)
    #[serde(rename = "open_chunk")]
    Open(OpenChunk),
    /// Write these bytes at `offset` of the file (creating it).
    Write {
        /// The file.
        file: Uuid,
        /// Where.
        offset: u64,
        /// What.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Make every write to the file so far durable (cutting it to `size` when given: it is
    /// whole), then tell [`crate::Engine::handle_file_synced`] with `chunks`.
    Sync {
        /// The file.
        file: Uuid,
        /// The chunks written so far.
        chunks: u64,
        /// The file's size, once every chunk is written.
        size: Option<u64>,
    },
    /// Delete what is stored of the file.
    Discard {
        /// The file.
        file: Uuid,
    },
}

/// Chunks of a file to read for a peer: `count` chunks of `chunk` bytes from chunk `index` on,
/// of a file of `size` bytes (the last chunk may be shorter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadChunks {
    /// The file.
    pub file: Uuid,
    /// The device that asked.
    pub peer: Uuid,
    /// The first chunk.
    pub index: u64,
    /// How many.
    pub count: u32,
    /// The chunk size.
    pub chunk: u32,
    /// The file's size.
    pub size: u64,
    /// What to seal each chunk with before handing it back, when the driver seals
    /// ([`Sealing::Driver`]).
    pub seal: Option<ChunkSeal>,
}

/// A chunk received from `peer`, for the driver to open ([`Sealing::Driver`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenChunk {
    /// The device it came from.
    pub peer: Uuid,
    /// Its place in the file.
    pub index: u64,
    /// What it is sealed with (the file is `seal.file`).
    pub seal: ChunkSeal,
    /// The sealed chunk.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

impl ReadChunks {
    /// Each chunk asked for: its index, where it starts in the file, and its length.
    pub fn chunks(&self) -> impl Iterator<Item = (u64, u64, usize)> + use<> {
        let (chunk, size) = (u64::from(self.chunk), self.size);
        (self.index..self.index + u64::from(self.count)).map(move |index| {
            let offset = index * chunk;
            let len = size.saturating_sub(offset).min(chunk);
            (index, offset, usize::try_from(len).unwrap_or(0))
        })
    }
}

/// Between two devices about files: `5 ‖ postcard(FileControl)` on the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileControl {
    /// Send chunks `from..from + count` of `file`.
    Want {
        /// The file.
        file: Uuid,
        /// The first chunk.
        from: u64,
        /// How many.
        count: u32,
    },
    /// This device does not hold `file` whole.
    Lacks {
        /// The file.
        file: Uuid,
    },
    /// This device now holds `file` whole (told to the device it came from).
    Holds {
        /// The file.
        file: Uuid,
    },
}

/// What the files machine asks of the engine.
#[derive(Debug)]
pub enum FileOut {
    /// File IO for the driver.
    Command(FileCommand),
    /// A packet for the link to a peer.
    Packet(Uuid, Vec<u8>),
    /// Something to show.
    Event(Event),
}

/// A file being received.
#[derive(Debug)]
struct Transfer {
    count: u64,
    /// The next chunk to hash and write.
    next: u64,
    /// Chunks asked for up to here (from `next`).
    asked: u64,
    /// Chunks opened after a gap, waiting for it (at most a window).
    ahead: BTreeMap<u64, Vec<u8>>,
    source: Option<Uuid>,
    /// When the source last sent a chunk or was asked.
    heard: Instant,
    /// Devices that said they lack the file, until when they are not asked again.
    lacking: BTreeMap<Uuid, Instant>,
    hash: ContentHash,
    /// The sync under way: chunks, and the hash's state over them.
    syncing: Option<(u64, Vec<u8>)>,
    synced: u64,
    told_at: Option<Instant>,
}

impl Transfer {
    /// Asks again from the first chunk not received: what was asked after it is forgotten.
    fn ask_again(&mut self) {
        self.asked = self.next;
        self.ahead.clear();
    }

    /// `peer` lacks the file or sent what does not open: not asked again until `until`, and
    /// another source is found if it was this one.
    fn give_up(&mut self, peer: Uuid, until: Instant) {
        self.lacking.insert(peer, until);
        if self.source == Some(peer) {
            self.source = None;
            self.ask_again();
        }
    }
}

/// What a device sends a peer of a file it holds.
#[derive(Debug, Default)]
struct Serving {
    /// Chunks asked for and not read yet.
    asked: u64,
    /// Bytes sent so far.
    sent: u64,
    told_at: Option<Instant>,
}

/// The files machine: the rows, the transfers under way, what is served to whom.
#[derive(Debug, Default)]
pub struct Files {
    config: FilesConfig,
    rows: BTreeMap<Uuid, FileRow>,
    /// Files being received with no transfer under way, oldest first.
    queued: BTreeSet<(i64, Uuid)>,
    transfers: BTreeMap<Uuid, Transfer>,
    serving: BTreeMap<(Uuid, Uuid), Serving>,
    changes: Vec<FileChange>,
    out: VecDeque<FileOut>,
}

impl Files {
    /// The machine with `config`, and the rows a store kept.
    #[must_use]
    pub fn new(config: FilesConfig, rows: impl IntoIterator<Item = FileRow>) -> Files {
        let rows: BTreeMap<Uuid, FileRow> = rows.into_iter().map(|r| (r.id, r)).collect();
        let queued = rows
            .values()
            .filter(|r| matches!(r.state, FileState::Receiving { .. }))
            .map(|r| (r.sent_at, r.id))
            .collect();
        Files {
            config,
            rows,
            queued,
            ..Files::default()
        }
    }

    /// A file's row.
    #[must_use]
    pub fn row(&self, file: Uuid) -> Option<&FileRow> {
        self.rows.get(&file)
    }

    /// Every file this device knows of.
    pub fn rows(&self) -> impl Iterator<Item = &FileRow> {
        self.rows.values()
    }

    /// Whether a row changed since the last [`Files::take_changes`].
    #[must_use]
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Changes to the rows since the last call.
    pub fn take_changes(&mut self) -> Vec<FileChange> {
        std::mem::take(&mut self.changes)
    }

    /// What to do next, if anything.
    pub fn poll_out(&mut self) -> Option<FileOut> {
        self.out.pop_front()
    }

    fn put(&mut self, row: FileRow) {
        self.changes.push(FileChange::Put(row.clone()));
        self.rows.insert(row.id, row);
    }

    fn event(&mut self, event: Event) {
        self.out.push_back(FileOut::Event(event));
    }

    fn command(&mut self, command: FileCommand) {
        self.out.push_back(FileOut::Command(command));
    }

    fn control(&mut self, peer: Uuid, control: &FileControl) {
        self.out
            .push_back(FileOut::Packet(peer, encode_file_control(control)));
    }

    /// A file this device sends (stored whole by its driver).
    pub fn sent(&mut self, row: FileRow) {
        self.put(row);
    }

    /// A file offered by a peer (checked): kept as being received, or as failed when it is over
    /// the cap. Returns false when the file is known already.
    pub fn offered(&mut self, row: FileRow) -> bool {
        if self.rows.contains_key(&row.id) {
            return false;
        }
        let mut row = row;
        if row.offer.over(self.config.max_bytes) {
            let reason = format!(
                "the file is larger than this device takes ({} bytes)",
                self.config.max_bytes
            );
            self.event(Event::FileFailed {
                id: row.id,
                reason: reason.clone(),
            });
            row.state = FileState::Failed { reason };
        } else {
            row.state = FileState::Receiving {
                chunks: 0,
                hash: ContentHash::default().state(),
            };
            self.queued.insert((row.sent_at, row.id));
        }
        self.put(row);
        true
    }

    /// The member deleted a file: its row goes, and what is stored of it.
    pub fn delete(&mut self, file: Uuid) -> bool {
        let Some(row) = self.rows.remove(&file) else {
            return false;
        };
        self.queued.remove(&(row.sent_at, file));
        self.transfers.remove(&file);
        self.serving.retain(|(_, f), _| *f != file);
        self.changes.push(FileChange::Delete(file));
        self.command(FileCommand::Discard { file });
        true
    }

    /// The link to `peer` went down: what it was asked for or asked is forgotten.
    pub fn link_down(&mut self, peer: Uuid) {
        self.serving.retain(|(p, _), _| *p != peer);
        for transfer in self.transfers.values_mut() {
            if transfer.source == Some(peer) {
                transfer.source = None;
                transfer.ask_again();
            }
        }
    }

    /// A control packet from `peer`, a device of the group.
    ///
    /// # Errors
    /// What is wrong with an ask.
    pub fn handle_control(
        &mut self,
        now: Instant,
        peer: Uuid,
        control: FileControl,
    ) -> Result<(), Malformed> {
        match control {
            FileControl::Want { file, from, count } => self.handle_want(peer, file, from, count),
            FileControl::Lacks { file } => {
                if let Some(t) = self.transfers.get_mut(&file) {
                    t.give_up(peer, now + self.config.lacking_for);
                }
                Ok(())
            }
            FileControl::Holds { file } => {
                if let Some(row) = self.rows.get(&file) {
                    let size = row.offer.size;
                    self.serving.remove(&(peer, file));
                    self.event(Event::FileSent {
                        id: file,
                        device: peer,
                        sent: size,
                        size,
                        done: true,
                    });
                }
                Ok(())
            }
        }
    }

    fn handle_want(
        &mut self,
        peer: Uuid,
        file: Uuid,
        from: u64,
        count: u32,
    ) -> Result<(), Malformed> {
        let Some(row) = self.rows.get(&file).filter(|r| r.state == FileState::Held) else {
            self.control(peer, &FileControl::Lacks { file });
            return Ok(());
        };
        let offer = &row.offer;
        let end = from.checked_add(u64::from(count));
        if count == 0 || end.is_none_or(|end| end > offer.chunks()) {
            return Err(Malformed("file ask (chunks out of range)"));
        }
        let (chunk, size) = (offer.chunk, offer.size);
        let seal = (self.config.sealing == Sealing::Driver).then(|| offer.chunk_seal(file));
        let bound = 4 * u64::from(self.config.window);
        let serving = self.serving.entry((peer, file)).or_default();
        if serving.asked + u64::from(count) > bound {
            return Err(Malformed("file ask (more than a window ahead)"));
        }
        serving.asked += u64::from(count);
        self.command(FileCommand::Read(ReadChunks {
            file,
            peer,
            index: from,
            count,
            chunk,
            size,
            seal,
        }));
        Ok(())
    }

    /// A chunk the driver read for `peer` ([`FileCommand::Read`]): sealed (by the driver
    /// already, when it seals) and sent.
    pub fn handle_read(&mut self, now: Instant, peer: Uuid, file: Uuid, index: u64, bytes: &[u8]) {
        let Some(row) = self.rows.get(&file) else {
            return;
        };
        let Some(serving) = self.serving.get_mut(&(peer, file)) else {
            // The link went down since, or the file was deleted.
            return;
        };
        serving.asked = serving.asked.saturating_sub(1);
        let sealed = match self.config.sealing {
            Sealing::Engine => seal_chunk(&row.offer, file, index, bytes).ok(),
            Sealing::Driver => sealed_size(&row.offer, index, bytes).then(|| bytes.to_vec()),
        };
        let Some(sealed) = sealed else {
            // The stored file is not what was offered (changed under the device): say so once.
            let size = row.offer.size;
            self.serving.remove(&(peer, file));
            self.control(peer, &FileControl::Lacks { file });
            self.event(Event::FileFailed {
                id: file,
                reason: format!("the stored file no longer has its {size} bytes"),
            });
            return;
        };
        serving.sent += row.offer.chunk_len(index) as u64;
        let (sent, size) = (serving.sent, row.offer.size);
        let due = serving
            .told_at
            .is_none_or(|at| now >= at + self.config.progress_every);
        if due {
            serving.told_at = Some(now);
        }
        self.out.push_back(FileOut::Packet(
            peer,
            encode_file_chunk(file, index, &sealed),
        ));
        if due {
            self.event(Event::FileSent {
                id: file,
                device: peer,
                sent,
                size,
                done: false,
            });
        }
    }

    /// A chunk from `peer`.
    ///
    /// # Errors
    /// When it does not open as that chunk of that file.
    pub fn handle_chunk(
        &mut self,
        now: Instant,
        peer: Uuid,
        file: Uuid,
        index: u64,
        sealed: &[u8],
    ) -> Result<(), Malformed> {
        let Some(row) = self.rows.get(&file) else {
            return Ok(());
        };
        if index >= row.offer.chunks() {
            return Err(Malformed("file chunk (out of range)"));
        }
        let Some(t) = self.transfers.get_mut(&file) else {
            return Ok(());
        };
        if t.source != Some(peer) || index < t.next || index >= t.asked {
            // Late, repeated, or from a source given up: the transfer asked again elsewhere.
            return Ok(());
        }
        if self.config.sealing == Sealing::Driver {
            if !sealed_size(&row.offer, index, sealed) {
                t.give_up(peer, now + self.config.lacking_for);
                return Err(Malformed("file chunk (of the wrong size)"));
            }
            t.heard = now;
            let seal = row.offer.chunk_seal(file);
            self.command(FileCommand::Open(OpenChunk {
                peer,
                index,
                seal,
                sealed: sealed.to_vec(),
            }));
            return Ok(());
        }
        match open_chunk(&row.offer, file, index, sealed) {
            Ok(plain) => {
                self.accept(now, file, index, plain);
                Ok(())
            }
            Err(error) => {
                t.give_up(peer, now + self.config.lacking_for);
                Err(error)
            }
        }
    }

    /// A chunk from `peer` the driver opened ([`FileCommand::Open`]): its content, or `None`
    /// when it did not open.
    ///
    /// # Errors
    /// When it did not open, or is not the size of that chunk.
    pub fn handle_opened(
        &mut self,
        now: Instant,
        peer: Uuid,
        file: Uuid,
        index: u64,
        plain: Option<&[u8]>,
    ) -> Result<(), Malformed> {
        let Some(row) = self.rows.get(&file) else {
            return Ok(());
        };
        let len = row.offer.chunk_len(index);
        let Some(t) = self.transfers.get_mut(&file) else {
            return Ok(());
        };
        if t.source != Some(peer) || index < t.next || index >= t.asked {
            // The transfer asked again since (elsewhere, or from a gap).
            return Ok(());
        }
        match plain {
            Some(plain) if plain.len() == len => {
                self.accept(now, file, index, plain.to_vec());
                Ok(())
            }
            _ => {
                t.give_up(peer, now + self.config.lacking_for);
                Err(Malformed(
                    "file chunk (it does not open under the file's key)",
                ))
            }
        }
    }

    /// Chunk `index` of `file`, opened: hashed and written in order, with what follows it.
    fn accept(&mut self, now: Instant, file: Uuid, index: u64, plain: Vec<u8>) {
        let Some(chunk) = self.rows.get(&file).map(|r| u64::from(r.offer.chunk)) else {
            return;
        };
        let Some(t) = self.transfers.get_mut(&file) else {
            return;
        };
        t.heard = now;
        t.ahead.insert(index, plain);
        let mut writes = Vec::new();
        while let Some(plain) = t.ahead.remove(&t.next) {
            t.hash.update(&plain);
            writes.push(FileCommand::Write {
                file,
                offset: t.next * chunk,
                bytes: plain,
            });
            t.next += 1;
        }
        for write in writes {
            self.command(write);
        }
        self.progress(now, file);
    }

    /// The driver made a file's writes durable up to `chunks` ([`FileCommand::Sync`]).
    pub fn handle_synced(&mut self, now: Instant, file: Uuid, chunks: u64) {
        let Some(t) = self.transfers.get_mut(&file) else {
            return;
        };
        let Some((syncing, hash)) = t.syncing.take_if(|(c, _)| *c == chunks) else {
            return;
        };
        t.synced = syncing;
        let whole = syncing == t.count;
        let source = t.source;
        let Some(mut row) = self.rows.get(&file).cloned() else {
            return;
        };
        if whole {
            self.transfers.remove(&file);
            row.state = FileState::Held;
            let (name, size) = (row.offer.name.clone(), row.offer.size);
            self.put(row);
            if let Some(source) = source {
                self.control(source, &FileControl::Holds { file });
            }
            self.event(Event::FileProgress {
                id: file,
                received: size,
                size,
            });
            self.event(Event::FileReceived {
                id: file,
                name,
                size,
            });
        } else {
            row.state = FileState::Receiving {
                chunks: syncing,
                hash,
            };
            self.put(row);
            self.progress(now, file);
        }
    }

    /// After a chunk or a sync: syncs when due, checks the whole file, asks for more.
    fn progress(&mut self, now: Instant, file: Uuid) {
        let Some(row) = self.rows.get(&file) else {
            return;
        };
        let Some(t) = self.transfers.get_mut(&file) else {
            return;
        };
        let offer = &row.offer;
        if t.next == t.count {
            if t.syncing.is_some() {
                return;
            }
            if t.hash.clone().finish() != offer.sha256.as_slice() {
                self.fail(file, "its content does not match the hash its sender gave");
                return;
            }
            t.syncing = Some((t.count, t.hash.state()));
            let (count, size) = (t.count, offer.size);
            self.command(FileCommand::Sync {
                file,
                chunks: count,
                size: Some(size),
            });
            return;
        }
        let mut commands = Vec::new();
        if t.syncing.is_none() && t.next - t.synced >= self.config.sync_every {
            t.syncing = Some((t.next, t.hash.state()));
            commands.push(FileCommand::Sync {
                file,
                chunks: t.next,
                size: None,
            });
        }
        let due = t
            .told_at
            .is_none_or(|at| now >= at + self.config.progress_every);
        let received = (t.next * u64::from(offer.chunk)).min(offer.size);
        let size = offer.size;
        if due {
            t.told_at = Some(now);
        }
        let window = u64::from(self.config.window);
        let ask = match t.source {
            Some(source) if t.asked - t.next <= window / 2 && t.asked < t.count => {
                let from = t.asked;
                let to = (t.next + window).min(t.count);
                t.asked = to;
                t.heard = now;
                u32::try_from(to - from)
                    .ok()
                    .map(|count| (source, from, count))
            }
            _ => None,
        };
        for command in commands {
            self.command(command);
        }
        if due {
            self.event(Event::FileProgress {
                id: file,
                received,
                size,
            });
        }
        if let Some((source, from, count)) = ask {
            self.control(source, &FileControl::Want { file, from, count });
        }
    }

    /// The driver could not read or write a file: it is given up (and what is stored of it
    /// deleted), and the member told why.
    pub fn io_failed(&mut self, file: Uuid, reason: &str) {
        if self.rows.contains_key(&file) {
            self.serving.retain(|(_, f), _| *f != file);
            self.fail(
                file,
                &format!("the file could not be stored or read here: {reason}"),
            );
        }
    }

    fn fail(&mut self, file: Uuid, reason: &str) {
        self.transfers.remove(&file);
        if let Some(mut row) = self.rows.get(&file).cloned() {
            row.state = FileState::Failed {
                reason: reason.to_owned(),
            };
            self.put(row);
        }
        self.command(FileCommand::Discard { file });
        self.event(Event::FileFailed {
            id: file,
            reason: reason.to_owned(),
        });
    }

    /// Whether nothing is under way: no file waits to be fetched or is being fetched, and nothing
    /// waits to be taken from [`Files::poll_out`] (then [`Files::poll`] has nothing to do).
    #[must_use]
    pub fn idle(&self) -> bool {
        self.transfers.is_empty() && self.queued.is_empty() && self.out.is_empty()
    }

    /// Starts transfers (oldest files first, a few at a time) from a linked device that may hold
    /// them, and asks again where a source went quiet. `linked` lists the peers with a link up.
    pub fn poll(&mut self, now: Instant, linked: &[Uuid]) {
        // Files being received that have no transfer yet (restored, or just offered).
        while self.transfers.len() < self.config.concurrent
            && let Some((_, file)) = self.queued.pop_first()
        {
            self.begin(now, file);
        }
        let files: Vec<Uuid> = self.transfers.keys().copied().collect();
        for file in files {
            let Some(sender) = self.rows.get(&file).map(|r| r.device) else {
                continue;
            };
            let Some(t) = self.transfers.get_mut(&file) else {
                continue;
            };
            t.lacking.retain(|_, until| *until > now);
            if t.count == 0 || t.next == t.count {
                self.progress(now, file);
                continue;
            }
            match t.source {
                Some(source) if !linked.contains(&source) => {
                    t.source = None;
                    t.ask_again();
                }
                Some(_) if t.asked > t.next && now >= t.heard + self.config.stall_after => {
                    // Lost on the way (or the source is slow): ask again from the gap.
                    t.ask_again();
                }
                _ => {}
            }
            if t.source.is_none() {
                let candidates = linked.iter().filter(|p| !t.lacking.contains_key(p));
                t.source = if linked.contains(&sender) && !t.lacking.contains_key(&sender) {
                    Some(sender)
                } else {
                    candidates.copied().next()
                };
            }
            if t.source.is_some() {
                self.progress(now, file);
            }
        }
    }

    fn begin(&mut self, now: Instant, file: Uuid) {
        let Some(row) = self.rows.get(&file) else {
            return;
        };
        let FileState::Receiving { chunks, hash } = &row.state else {
            return;
        };
        let Some(hash) = ContentHash::from_state(hash) else {
            self.fail(file, "its saved progress cannot be read");
            return;
        };
        let count = row.offer.chunks();
        let next = (*chunks).min(count);
        self.transfers.insert(
            file,
            Transfer {
                count,
                next,
                asked: next,
                ahead: BTreeMap::new(),
                source: None,
                heard: now,
                lacking: BTreeMap::new(),
                hash,
                syncing: None,
                synced: next,
                told_at: None,
            },
        );
    }

    /// When [`Files::poll`] next has work: a stalled transfer to ask again, a device that lacked
    /// a file to ask again.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transfers
            .values()
            .flat_map(|t| {
                let stall = (t.asked > t.next).then_some(t.heard + self.config.stall_after);
                stall.into_iter().chain(t.lacking.values().copied())
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(size: u64) -> FileOffer {
        FileOffer {
            name: "report.pdf".into(),
            size,
            mime: "application/pdf".into(),
            sha256: Base64Url(vec![0; 32]),
            key: new_key().expect("key"),
            chunk: CHUNK_BYTES,
        }
    }

    #[test]
    fn chunks_open_only_as_themselves() {
        let file = Uuid::new_v4();
        let o = offer(u64::from(CHUNK_BYTES) + 10);
        assert_eq!(o.chunks(), 2);
        assert_eq!(o.chunk_len(1), 10);
        let first = vec![7u8; CHUNK_BYTES as usize];
        let sealed = seal_chunk(&o, file, 0, &first).expect("seal");
        assert_eq!(open_chunk(&o, file, 0, &sealed).expect("opens"), first);
        // Another place, another file, another key, a flipped bit, a cut: refused.
        assert!(open_chunk(&o, file, 1, &sealed).is_err());
        assert!(open_chunk(&o, Uuid::new_v4(), 0, &sealed).is_err());
        let mut other = o.clone();
        other.key = new_key().expect("key");
        assert!(open_chunk(&other, file, 0, &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[100] ^= 1;
        assert!(open_chunk(&o, file, 0, &flipped).is_err());
        assert!(open_chunk(&o, file, 0, &sealed[..sealed.len() - 1]).is_err());
        // A chunk of the same file offered as shorter (a truncation) does not open either.
        let mut shorter = o.clone();
        shorter.size = u64::from(CHUNK_BYTES);
        assert!(open_chunk(&shorter, file, 0, &sealed).is_err());
        // Out of range or of the wrong size is not sealed.
        assert!(seal_chunk(&o, file, 2, &[1]).is_err());
        assert!(seal_chunk(&o, file, 1, &[1; 11]).is_err());
    }

    #[test]
    fn names_are_plain_file_names() {
        for good in ["a", "Q3 report (final).pdf", "фото.jpg", "..hidden", "a..b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(NAME_BYTES + 1);
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "a\nb",
            "a\u{0}b",
            "a\u{9b}b",
            &long,
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let mut o = offer(5);
        assert!(o.check().is_ok());
        o.chunk = 10;
        assert!(o.check().is_err());
        o.chunk = CHUNK_BYTES + 1;
        assert!(o.check().is_err());
        let mut o = offer(5);
        o.key = Base64Url(vec![1; 16]);
        assert!(o.check().is_err());
        let mut o = offer(5);
        o.mime = "text/plain\u{7}".into();
        assert!(o.check().is_err());
    }

    #[test]
    fn rows_read_back_as_written() {
        for state in [
            FileState::Held,
            FileState::Receiving {
                chunks: 3,
                hash: ContentHash::default().state(),
            },
            FileState::Failed {
                reason: "why".into(),
            },
        ] {
            let row = FileRow {
                id: Uuid::new_v4(),
                member: Uuid::new_v4(),
                device: Uuid::new_v4(),
                sent_at: 5,
                offer: offer(7),
                state,
            };
            assert_eq!(FileRow::decode(&row.encode()), Ok(row));
        }
        assert!(FileRow::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn the_hash_resumes_from_its_saved_state() {
        let mut whole = ContentHash::default();
        whole.update(b"hello ");
        let saved = whole.state();
        whole.update(b"world");
        let mut resumed = ContentHash::from_state(&saved).expect("state");
        resumed.update(b"world");
        assert_eq!(resumed.finish(), whole.finish());
        assert!(ContentHash::from_state(&[1, 2, 3]).is_none());
    }
}
