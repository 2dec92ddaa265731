//! Application messages: chat text and display names encrypted for the group, handed to the
//! outbox for each peer, opened as they arrive over links, and carried on to the devices that
//! lack them ([`crate::carry`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use openmls::prelude::ProcessedMessageContent;
use openmls::prelude::Sender;
use uuid::Uuid;
use web_time::Instant;

use crate::carry::{CarriedRow, GroupNow, Stream, stream_of};
use crate::changes::{self, Change, ChangeError, MessageChange, MessageRef};
use crate::codec::{self};
use crate::history::{self, Cursor, HistoryMessage, PAGE_ROWS};
use crate::identity::DeviceCertificate;
use crate::names;
use crate::payload::{
    Content, LinkMessage, LinkPacket, Malformed, decode_link_data, decode_link_message,
    encode_circle_message, encode_history_message, encode_holdings, encode_packet,
};
use crate::roster::{Refusal, certificate_of};

use super::{
    ChatMessage, Engine, EngineError, Event, HistoryChange, LATEST_SENT_AT, LinkCommand, Output,
    mls_error, protocol_message, push_bounded, refused,
};

impl Engine {
    /// A message sent or received: kept in the history and shown.
    pub(super) fn record_message(&mut self, message: ChatMessage, outgoing: bool) {
        self.history.push(HistoryChange::Add {
            message: message.clone(),
            outgoing,
        });
        self.event(Event::Message { message, outgoing });
    }

    /// Bytes from the link to `device`: a packet, or a bundle of them.
    pub fn handle_link_data(&mut self, now: Instant, device: Uuid, bytes: &[u8]) {
        if !self.roster.contains_key(&device) {
            return;
        }
        match decode_link_data(bytes) {
            Ok(packets) => {
                // A file's chunks and asks change nothing of the saved state (their rows are
                // written when a sync makes them durable): they move the files alone, with no
                // write of the state for each.
                let files_only = packets.iter().all(|p| {
                    matches!(p, LinkPacket::FileChunk { .. } | LinkPacket::FileControl(_))
                });
                for packet in packets {
                    self.handle_link_packet(now, device, packet);
                }
                if files_only {
                    self.move_files(now);
                    return;
                }
            }
            Err(reason) => self.event(Event::Refused {
                what: "link packet",
                reason: Refusal::Malformed(reason.0),
            }),
        }
        self.step(now);
    }

    fn handle_link_packet(&mut self, now: Instant, device: Uuid, packet: LinkPacket) {
        match packet {
            LinkPacket::Delivery(packet) => {
                self.saved.delivery.handle_packet(now, device, packet);
            }
            LinkPacket::Holdings(holdings) if holdings.within_bounds() => {
                self.carry
                    .handle_holdings(now, device, holdings, self.own_stream);
            }
            LinkPacket::Holdings(_) => self.event(Event::Refused {
                what: "link packet",
                reason: Refusal::Malformed("holdings beyond their bounds"),
            }),
            LinkPacket::FileControl(control) => self.handle_file_control(now, device, control),
            LinkPacket::FileChunk {
                file,
                index,
                sealed,
            } => self.handle_file_chunk(now, device, (file, index, &sealed)),
        }
    }

    /// Sends `text` to every other device of the group, peer to peer; it waits in the outbox for
    /// devices that are away.
    ///
    /// # Errors
    /// [`EngineError::NotInGroup`], [`EngineError::TooLarge`].
    pub fn send_text(
        &mut self,
        now: Instant,
        unix_ms: i64,
        text: &str,
    ) -> Result<Uuid, EngineError> {
        self.send_reply(now, unix_ms, text, None)
    }

    /// Sends `text` as [`Engine::send_text`] does, answering the message `reply_to` (quoted where
    /// it is shown).
    ///
    /// # Errors
    /// [`EngineError::NotInGroup`], [`EngineError::TooLarge`].
    pub fn send_reply(
        &mut self,
        now: Instant,
        unix_ms: i64,
        text: &str,
        reply_to: Option<MessageRef>,
    ) -> Result<Uuid, EngineError> {
        let id = Uuid::new_v4();
        let message = ChatMessage {
            id,
            member: self.saved.member,
            device: self.saved.device,
            text: text.to_owned(),
            sent_at: unix_ms.clamp(0, LATEST_SENT_AT),
            file: None,
            reply_to,
        };
        let epoch = self.epoch().ok_or(EngineError::NotInGroup)?;
        let seq = self.carry.next_own_seq();
        let content = Content::Text {
            id,
            text: message.text.clone(),
            sent_at: message.sent_at,
            seq: Some(seq),
            reply_to,
        };
        self.send_circle(now, (id, message.sent_at, seq, epoch), &content)?;
        self.record_message(message, true);
        self.step(now);
        Ok(id)
    }

    /// Reacts to, edits or deletes the message `target` for every device of the group; the change
    /// is a message of the circle, delivered and carried like a text. Returns the change's id.
    ///
    /// # Errors
    /// [`EngineError::Change`] (a malformed reaction, an empty edit, an edit or deletion of
    /// another member's message), [`EngineError::NotInGroup`], [`EngineError::TooLarge`].
    pub fn change_message(
        &mut self,
        now: Instant,
        unix_ms: i64,
        target: MessageRef,
        change: Change,
    ) -> Result<Uuid, EngineError> {
        change.allowed(self.saved.member, &target)?;
        self.send_change(now, unix_ms, target, change)
    }

    /// Sends `change` as a modified client would, unchecked: for tests of the receivers' checks.
    ///
    /// # Errors
    /// [`EngineError::NotInGroup`], [`EngineError::TooLarge`].
    #[cfg(feature = "danger-hostile-member")]
    pub fn change_message_unchecked(
        &mut self,
        now: Instant,
        unix_ms: i64,
        target: MessageRef,
        change: Change,
    ) -> Result<Uuid, EngineError> {
        self.send_change(now, unix_ms, target, change)
    }

    fn send_change(
        &mut self,
        now: Instant,
        unix_ms: i64,
        target: MessageRef,
        change: Change,
    ) -> Result<Uuid, EngineError> {
        let id = Uuid::new_v4();
        let sent_at = unix_ms.clamp(0, LATEST_SENT_AT);
        let epoch = self.epoch().ok_or(EngineError::NotInGroup)?;
        let seq = self.carry.next_own_seq();
        let content = Content::Change {
            id,
            target,
            change: change.clone(),
            sent_at,
            seq,
        };
        self.send_circle(now, (id, sent_at, seq, epoch), &content)?;
        self.record_change(MessageChange {
            id,
            member: self.saved.member,
            device: self.saved.device,
            target,
            change,
            sent_at,
        });
        self.step(now);
        Ok(id)
    }

    /// A change made here or received: kept in the history and shown.
    fn record_change(&mut self, change: MessageChange) {
        self.history.push(HistoryChange::Change {
            change: change.clone(),
        });
        self.event(Event::MessageChanged { change });
    }

    /// Seals a message of the circle, `seq` in this device's stream and made in `epoch`, queues
    /// it for every other device and keeps it for carrying.
    pub(super) fn send_circle(
        &mut self,
        now: Instant,
        (id, sent_at, seq, epoch): (Uuid, i64, u64, u64),
        content: &Content,
    ) -> Result<(), EngineError> {
        let msg = self.seal(content)?;
        let stream = self.own_stream;
        self.send_to_all(now, &encode_circle_message(stream, seq, &msg), Some(id))?;
        self.carry.keep(
            now,
            CarriedRow {
                stream,
                seq,
                epoch,
                sent_at,
                id,
                message: msg,
            },
        );
        Ok(())
    }

    /// Sets this member's display name on this device and tells the group.
    ///
    /// # Errors
    /// [`EngineError::Name`] (empty, too long, hidden characters), MLS failing.
    pub fn set_display_name(&mut self, now: Instant, name: &str) -> Result<(), EngineError> {
        let name = names::check(name)?;
        self.saved.display_name = Some(name.clone());
        self.tell_name(now, name)
    }

    /// Sends `name` as this member's display name, unchecked, as a modified client would: for
    /// tests of the receivers' checks.
    ///
    /// # Errors
    /// MLS failing.
    #[cfg(feature = "danger-hostile-member")]
    pub fn set_display_name_unchecked(
        &mut self,
        now: Instant,
        name: &str,
    ) -> Result<(), EngineError> {
        self.tell_name(now, name.to_owned())
    }

    fn tell_name(&mut self, now: Instant, name: String) -> Result<(), EngineError> {
        let told = if self.group.is_some() {
            self.broadcast(now, &Content::Profile { name }, None)
        } else {
            Ok(())
        };
        self.step(now);
        told
    }

    /// A member's display name came from `sender` (one of their devices): kept, a change of it
    /// said, one that is no name refused.
    fn receive_name(&mut self, sender: &DeviceCertificate, name: &str) {
        let Ok(name) = names::check(name) else {
            self.event(Event::Refused {
                what: "display name",
                reason: Refusal::Malformed("display name"),
            });
            return;
        };
        let member = sender.member;
        let before = self.display_names().get(&member).cloned();
        let previous = self.saved.names.insert(member, name);
        let after = self.display_names().get(&member).cloned();
        if member != self.saved.member
            && previous.is_some()
            && let (Some(from), Some(to)) = (before, after)
            && from != to
        {
            self.event(Event::Renamed { member, from, to });
        }
        self.event(Event::MembersChanged);
    }

    pub(super) fn encrypt(&mut self, bytes: &[u8]) -> Result<Vec<u8>, EngineError> {
        let group = self.group.as_mut().ok_or(EngineError::NotInGroup)?;
        group
            .create_message(&self.provider, &self.signer, bytes)
            .map_err(mls_error)?
            .to_bytes()
            .map_err(mls_error)
    }

    pub(super) fn broadcast(
        &mut self,
        now: Instant,
        content: &Content,
        id: Option<Uuid>,
    ) -> Result<(), EngineError> {
        let msg = self.seal(content)?;
        self.send_to_all(now, &msg, id)
    }

    /// `content` as an MLS application message for the group.
    fn seal(&mut self, content: &Content) -> Result<Vec<u8>, EngineError> {
        let bytes = serde_json::to_vec(content).map_err(|e| EngineError::Mls(e.to_string()))?;
        self.encrypt(&bytes)
    }

    /// Queues `msg` for every other device of the group.
    fn send_to_all(
        &mut self,
        now: Instant,
        msg: &[u8],
        id: Option<Uuid>,
    ) -> Result<(), EngineError> {
        let peers: Vec<Uuid> = self
            .roster
            .keys()
            .copied()
            .filter(|d| *d != self.saved.device)
            .collect();
        for device in peers {
            self.send_to(now, device, msg, id)?;
        }
        Ok(())
    }

    pub(super) fn send_to(
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

    /// Decrypts an application message of the group; returns its sender's certificate.
    pub(super) fn decrypt(&mut self, msg: &[u8]) -> Result<(DeviceCertificate, Vec<u8>), Refusal> {
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

    /// A message delivery brought over the link to `device`: a chat message of the circle (from
    /// its sender or carried), or something of the peer's own.
    pub(super) fn receive_link_message(&mut self, now: Instant, device: Uuid, bytes: Vec<u8>) {
        let (label, msg) = match decode_link_message(&bytes) {
            Ok(LinkMessage::Circle { stream, seq, mls }) => (Some((stream, seq)), mls),
            Ok(LinkMessage::Own(mls)) => (None, mls),
            Ok(LinkMessage::History(body)) => {
                self.receive_history(now, device, body);
                return;
            }
            Err(reason) => {
                self.event(Event::Refused {
                    what: "link message",
                    reason: Refusal::Malformed(reason.0),
                });
                return;
            }
        };
        if let Some((stream, seq)) = label
            && self.carry.holds(stream, seq)
        {
            // Another copy of a message this device has: MLS would refuse to open it twice.
            return;
        }
        let ahead = self
            .group
            .as_ref()
            .is_some_and(|g| protocol_message(msg).is_ok_and(|m| m.epoch() > g.epoch()));
        if ahead {
            // Made after a commit this device has not processed yet: keep it until then.
            push_bounded(&mut self.saved.future, (device, bytes));
            return;
        }
        let epoch = protocol_message(msg).map_or(0, |m| m.epoch().as_u64());
        let opened = self.decrypt(msg).and_then(|(sender, plain)| {
            if label.is_none() && sender.device != device {
                return Err(Refusal::WrongSender);
            }
            let content: Content =
                codec::from_json(&plain).map_err(|_| Refusal::Malformed("content"))?;
            Ok((sender, content))
        });
        match opened {
            Ok((
                sender,
                Content::Text {
                    id,
                    text,
                    sent_at,
                    seq,
                    reply_to,
                },
            )) => {
                let sent_at = sent_at.clamp(0, LATEST_SENT_AT);
                if let Some(seq) = seq {
                    if !self.keep_from(now, &sender, (seq, epoch, label), (id, sent_at), msg) {
                        return;
                    }
                } else if label.is_some() {
                    self.event(Event::Refused {
                        what: "carried message",
                        reason: Refusal::Malformed("a carried message without its number"),
                    });
                    return;
                }
                self.record_message(
                    ChatMessage {
                        id,
                        member: sender.member,
                        device: sender.device,
                        text,
                        sent_at,
                        file: None,
                        reply_to,
                    },
                    false,
                );
            }
            Ok((
                sender,
                Content::Change {
                    id,
                    target,
                    change,
                    sent_at,
                    seq,
                },
            )) => {
                if let Err(error) = change.allowed(sender.member, &target) {
                    let reason = match error {
                        ChangeError::NotAuthor => Refusal::NotAllowed(
                            "only the member who wrote a message edits or deletes it",
                        ),
                        ChangeError::BadReaction => Refusal::Malformed("reaction"),
                        ChangeError::EmptyEdit => Refusal::Malformed("edit"),
                    };
                    self.event(Event::Refused {
                        what: "change to a message",
                        reason,
                    });
                    return;
                }
                let sent_at = sent_at.clamp(0, LATEST_SENT_AT);
                if !self.keep_from(now, &sender, (seq, epoch, label), (id, sent_at), msg) {
                    return;
                }
                self.record_change(MessageChange {
                    id,
                    member: sender.member,
                    device: sender.device,
                    target,
                    change,
                    sent_at,
                });
            }
            Ok((
                sender,
                Content::File {
                    id,
                    offer,
                    sent_at,
                    seq,
                },
            )) => {
                if let Err(Malformed(what)) = offer.check() {
                    self.event(Event::Refused {
                        what: "file offer",
                        reason: Refusal::Malformed(what),
                    });
                    return;
                }
                let sent_at = sent_at.clamp(0, LATEST_SENT_AT);
                if !self.keep_from(now, &sender, (seq, epoch, label), (id, sent_at), msg) {
                    return;
                }
                self.receive_file_offer((sender.member, sender.device), id, offer, sent_at);
            }
            Ok((_, Content::Profile { .. })) if label.is_some() => self.event(Event::Refused {
                what: "carried message",
                reason: Refusal::Malformed("a display name is not carried"),
            }),
            Ok((sender, Content::Profile { name })) => self.receive_name(&sender, &name),
            Err(reason) => self.event(Event::Refused {
                what: "link message",
                reason,
            }),
        }
    }

    /// Keeps a message of the circle that `sender` numbered `seq` in its stream, as
    /// [`Engine::keep_circle_message`] does; false when it was kept already.
    fn keep_from(
        &mut self,
        now: Instant,
        sender: &DeviceCertificate,
        (seq, epoch, label): (u64, u64, Option<(Stream, u64)>),
        (id, sent_at): (Uuid, i64),
        msg: &[u8],
    ) -> bool {
        let stream = stream_of(sender.device_key_bytes());
        self.keep_circle_message(now, (stream, seq, epoch, label), (id, sent_at), msg)
    }

    /// Keeps a message of the circle opened from `msg` for carrying, as `(stream, seq)` made in
    /// `epoch`, having come under the name `label` (none when its sender sent it as its own).
    /// Says so when the name was another's; false when it was kept already.
    fn keep_circle_message(
        &mut self,
        now: Instant,
        (stream, seq, epoch, label): (Stream, u64, u64, Option<(Stream, u64)>),
        (id, sent_at): (Uuid, i64),
        msg: &[u8],
    ) -> bool {
        if label.is_some_and(|named| named != (stream, seq)) {
            // Named as another message than it is: a carrier altered the name. The message
            // itself is genuine (MLS opened it) and is kept as what it is.
            self.event(Event::Refused {
                what: "carried message",
                reason: Refusal::Malformed("a message named as another"),
            });
        }
        let row = CarriedRow {
            stream,
            seq,
            epoch,
            sent_at,
            id,
            message: msg.to_vec(),
        };
        self.carry.keep(now, row)
    }

    /// Hands linked peers what they lack and tells them what this device holds; returns whether
    /// anything was queued for delivery.
    pub(super) fn circulate(&mut self, now: Instant) -> bool {
        if self.group.is_none() || !self.carry.due(now) {
            return false;
        }
        let streams: BTreeMap<Uuid, Stream> =
            self.roster.iter().map(|(d, g)| (*d, g.stream)).collect();
        for (peer, holdings) in self.carry.poll_summaries(now, &streams) {
            if self.link_is_up(peer) {
                self.outputs.push_back(Output::Link(LinkCommand::Data {
                    device: peer,
                    bytes: encode_holdings(&holdings),
                }));
            }
        }
        let by_stream: BTreeMap<Stream, Uuid> = streams.iter().map(|(d, s)| (*s, *d)).collect();
        let online = &self.online;
        let is_online = |device: Uuid| online.contains_key(&device);
        let group = GroupNow {
            streams: &by_stream,
            online: &is_online,
            own: self.own_stream,
        };
        let handovers = self.carry.poll_handovers(now, &group);
        let queued = !handovers.is_empty();
        for h in handovers {
            let bytes = encode_circle_message(h.stream, h.seq, &h.message);
            if let Ok(delivery_seq) = self.saved.delivery.send(now, h.peer, &bytes, None) {
                self.carry.handed(h.peer, delivery_seq, h.stream, h.seq);
            }
        }
        let own = self.own_stream;
        let mut awaiting: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
        for (id, device) in self.carry.receipts(own) {
            // News only while the device has not acknowledged it itself: a message it took
            // directly, or was never sent, is no receipt to tell.
            let awaited = awaiting
                .entry(device)
                .or_insert_with(|| self.saved.delivery.awaiting(device));
            if !awaited.contains(&id) {
                continue;
            }
            self.history.push(HistoryChange::Delivered {
                device: self.saved.device,
                id,
                peer: device,
            });
            self.event(Event::Delivered {
                id,
                device,
                carried: true,
            });
        }
        queued
    }

    pub(super) fn drain_delivery(&mut self, now: Instant) {
        while let Some((device, packet)) = self.saved.delivery.poll_transmit() {
            self.outputs.push_back(Output::Link(LinkCommand::Data {
                device,
                bytes: encode_packet(&packet),
            }));
        }
        while let Some((device, seq, tag)) = self.saved.delivery.poll_acknowledged() {
            self.carry.acknowledged(device, seq);
            if let Some(id) = tag {
                self.history.push(HistoryChange::Delivered {
                    device: self.saved.device,
                    id,
                    peer: device,
                });
                if self.carry.told(device, id) {
                    self.event(Event::Delivered {
                        id,
                        device,
                        carried: false,
                    });
                }
            }
        }
        while let Some((device, _, msg)) = self.saved.delivery.poll_delivered() {
            self.receive_link_message(now, device, msg);
        }
    }
}

impl Engine {
    /// Whether `device` is another device of this member, in the group (its certificate checked
    /// against the member's keys when it joined).
    pub(super) fn is_own_device(&self, device: Uuid) -> bool {
        device != self.saved.device
            && self
                .roster
                .get(&device)
                .is_some_and(|d| d.member == self.saved.member)
    }

    /// Queues a history message for `device` (another device of this member) in its outbox.
    pub(super) fn send_history(&mut self, now: Instant, device: Uuid, message: &HistoryMessage) {
        // A page holds at most what the outbox takes: no history message is too large.
        let _ = self.send_to(now, device, &encode_history_message(message), None);
    }

    /// A history message over the link to `device`: an ask from another device of this member
    /// (answered from the store, [`Output::ReadHistory`]), or a page of that device's history.
    fn receive_history(&mut self, now: Instant, device: Uuid, body: &[u8]) {
        let Ok(message) = postcard::from_bytes::<HistoryMessage>(body) else {
            self.event(Event::Refused {
                what: "history message",
                reason: Refusal::Malformed("history message"),
            });
            return;
        };
        if !self.is_own_device(device) {
            self.event(Event::Refused {
                what: "history message",
                reason: Refusal::NotAllowed("history goes between a member's own devices only"),
            });
            return;
        }
        match message {
            HistoryMessage::Ask { before } => self.outputs.push_back(Output::ReadHistory {
                peer: device,
                before,
                limit: PAGE_ROWS,
            }),
            HistoryMessage::Page { rows, remaining } => {
                match self.history_import.take(device, rows, remaining) {
                    Ok(taken) => {
                        for message in taken.rows {
                            let outgoing = message.device == self.saved.device;
                            self.history.push(HistoryChange::Add { message, outgoing });
                        }
                        self.event(Event::HistoryProgress {
                            device,
                            received: taken.received,
                            total: taken.total,
                            done: taken.done,
                        });
                        if let Some(ask) = taken.ask_again {
                            self.send_history(now, device, &ask);
                        }
                    }
                    Err(error) => self.event(Event::Refused {
                        what: "history page",
                        reason: Refusal::Malformed(error.what()),
                    }),
                }
            }
        }
    }

    /// The rows the store read for [`Output::ReadHistory`] (newest first, older than the ask's
    /// start), the changes it holds to them, and how many rows it holds older than that start:
    /// the page goes to `peer`, if it is still another device of this member. Rows go as their
    /// changes leave them: edited text, deleted ones left out (when a whole read was deleted, the
    /// store is asked for the rows past it).
    pub fn handle_history_read(
        &mut self,
        now: Instant,
        peer: Uuid,
        rows: Vec<ChatMessage>,
        changes: &[MessageChange],
        older: u64,
    ) {
        if self.is_own_device(peer) {
            let oldest = rows.last().map(Cursor::of);
            let read = rows.len() as u64;
            let shown: Vec<ChatMessage> = changes::show_all(rows, changes)
                .into_iter()
                .filter(|s| !s.deleted)
                .map(|s| s.message)
                .collect();
            match oldest {
                Some(before) if shown.is_empty() => self.outputs.push_back(Output::ReadHistory {
                    peer,
                    before: Some(before),
                    limit: PAGE_ROWS,
                }),
                _ => {
                    let skipped = read - shown.len() as u64;
                    let page = history::page(shown, older.saturating_sub(skipped));
                    self.send_history(now, peer, &page);
                }
            }
        }
        self.step(now);
    }
}
