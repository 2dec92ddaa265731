//! Files in the engine: offering one (sealed and numbered like a text), taking an offer, and moving
//! the files machine's ([`crate::files`]) packets, IO and events between it and the links.

use uuid::Uuid;
use web_time::Instant;

use crate::files::{CHUNK_BYTES, FileControl, FileOffer, FileRow, FileState, new_key};
use crate::payload::{Content, Malformed};
use crate::roster::Refusal;

use super::{ChatMessage, Engine, EngineError, Event, LATEST_SENT_AT, LinkCommand, Output};

/// What the driver knows of a file it stored for sending: its name, type, size and content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// The id the driver stored it under (the file's and its message's).
    pub id: Uuid,
    /// Its name, without any directory.
    pub name: String,
    /// Its media type, or empty.
    pub mime: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its content ([`crate::files::ContentHash`]).
    pub sha256: Vec<u8>,
}

impl Engine {
    /// Shares a file the driver stored under `file.id` with every other device of the group: the
    /// offer goes like a text, sealed in MLS; the content goes to each device that asks for it.
    ///
    /// # Errors
    /// [`EngineError::NotInGroup`], [`EngineError::TooLarge`] (over the cap),
    /// [`EngineError::BadFile`] (a name that is not a plain file name).
    pub fn send_file(
        &mut self,
        now: Instant,
        unix_ms: i64,
        file: StoredFile,
    ) -> Result<Uuid, EngineError> {
        let key = new_key().map_err(|e| EngineError::Mls(e.to_string()))?;
        let offer = FileOffer {
            name: file.name,
            size: file.size,
            mime: file.mime,
            sha256: file.sha256.into(),
            key,
            chunk: CHUNK_BYTES,
        };
        offer
            .check()
            .map_err(|Malformed(what)| EngineError::BadFile(what))?;
        if offer.over(self.config.files.max_bytes) {
            return Err(EngineError::TooLarge);
        }
        if self.files.row(file.id).is_some() {
            return Err(EngineError::BadFile("a file id already in use"));
        }
        let epoch = self.epoch().ok_or(EngineError::NotInGroup)?;
        let (id, sent_at) = (file.id, unix_ms.clamp(0, LATEST_SENT_AT));
        let seq = self.carry.next_own_seq();
        let content = Content::File {
            id,
            offer: offer.clone(),
            sent_at,
            seq,
        };
        self.send_circle(now, (id, sent_at, seq, epoch), &content)?;
        let info = offer.info();
        self.files.sent(FileRow {
            id,
            member: self.saved.member,
            device: self.saved.device,
            sent_at,
            offer,
            state: FileState::Held,
        });
        self.record_message(
            ChatMessage {
                id,
                member: self.saved.member,
                device: self.saved.device,
                text: String::new(),
                sent_at,
                file: Some(info),
                reply_to: None,
            },
            true,
        );
        self.step(now);
        Ok(id)
    }

    /// Deletes a file this device holds or receives (its message stays in the history); the
    /// driver deletes what it stored ([`crate::files::FileCommand::Discard`]). False when there
    /// is no such file.
    pub fn delete_file(&mut self, now: Instant, file: Uuid) -> bool {
        let deleted = self.files.delete(file);
        self.step(now);
        deleted
    }

    /// A file this device knows of.
    #[must_use]
    pub fn file(&self, file: Uuid) -> Option<&FileRow> {
        self.files.row(file)
    }

    /// Every file this device knows of.
    pub fn files(&self) -> impl Iterator<Item = &FileRow> {
        self.files.rows()
    }

    /// A chunk the driver read for `peer` ([`crate::files::FileCommand::Read`]).
    pub fn handle_file_read(
        &mut self,
        now: Instant,
        peer: Uuid,
        file: Uuid,
        index: u64,
        bytes: &[u8],
    ) {
        self.files.handle_read(now, peer, file, index, bytes);
        // Nothing saved changes: the chunk goes out with no write of the state.
        self.move_files(now);
    }

    /// A chunk from `peer` the driver opened ([`crate::files::FileCommand::Open`]): its content,
    /// or `None` when it did not open (then it is refused, and the file asked for elsewhere).
    pub fn handle_file_opened(
        &mut self,
        now: Instant,
        peer: Uuid,
        file: Uuid,
        index: u64,
        plain: Option<&[u8]>,
    ) {
        let opened = self.files.handle_opened(now, peer, file, index, plain);
        self.refuse_if_malformed("file chunk", opened);
        // As for a chunk opened here: nothing saved changes until its sync.
        self.move_files(now);
    }

    /// The driver made a file's writes durable up to `chunks`
    /// ([`crate::files::FileCommand::Sync`]).
    pub fn handle_file_synced(&mut self, now: Instant, file: Uuid, chunks: u64) {
        self.files.handle_synced(now, file, chunks);
        self.step(now);
    }

    /// The driver could not read or write `file` (`reason`, in words): the file is given up.
    pub fn handle_file_failed(&mut self, now: Instant, file: Uuid, reason: &str) {
        self.files.io_failed(file, reason);
        self.step(now);
    }

    /// An offer from `sender` (MLS opened it), kept and named already: refused when malformed;
    /// kept as being received (or failed, over the cap) and shown.
    pub(super) fn receive_file_offer(
        &mut self,
        sender: (Uuid, Uuid),
        id: Uuid,
        offer: FileOffer,
        sent_at: i64,
    ) {
        let (member, device) = sender;
        let info = offer.info();
        let row = FileRow {
            id,
            member,
            device,
            sent_at,
            offer,
            state: FileState::Held,
        };
        if !self.files.offered(row) {
            self.event(Event::Refused {
                what: "file offer",
                reason: Refusal::Malformed("a file id already in use"),
            });
            return;
        }
        self.record_message(
            ChatMessage {
                id,
                member,
                device,
                text: String::new(),
                sent_at,
                file: Some(info),
                reply_to: None,
            },
            false,
        );
    }

    /// A file control packet from `device`.
    pub(super) fn handle_file_control(&mut self, now: Instant, device: Uuid, control: FileControl) {
        let handled = self.files.handle_control(now, device, control);
        self.refuse_if_malformed("file ask", handled);
    }

    /// A chunk from `device`.
    pub(super) fn handle_file_chunk(
        &mut self,
        now: Instant,
        device: Uuid,
        (file, index, sealed): (Uuid, u64, &[u8]),
    ) {
        let handled = self.files.handle_chunk(now, device, file, index, sealed);
        self.refuse_if_malformed("file chunk", handled);
    }

    /// Says that a peer's `what` was refused, when the files machine found it malformed.
    fn refuse_if_malformed(&mut self, what: &'static str, handled: Result<(), Malformed>) {
        if let Err(Malformed(reason)) = handled {
            self.event(Event::Refused {
                what,
                reason: Refusal::Malformed(reason),
            });
        }
    }

    /// Starts and keeps up transfers over the links that are up, and takes what the files
    /// machine asks for.
    pub(super) fn move_files(&mut self, now: Instant) {
        // Run after every input: most inputs are no file's business.
        if self.files.idle() {
            return;
        }
        let linked: Vec<Uuid> = self
            .links
            .keys()
            .copied()
            .filter(|d| self.link_is_up(*d))
            .collect();
        self.files.poll(now, &linked);
        while let Some(out) = self.files.poll_out() {
            match out {
                crate::files::FileOut::Command(command) => {
                    self.outputs.push_back(Output::File(command));
                }
                crate::files::FileOut::Packet(device, bytes) => {
                    if self.link_is_up(device) {
                        self.link(LinkCommand::Data { device, bytes });
                    }
                }
                crate::files::FileOut::Event(event) => self.event(event),
            }
        }
    }
}
