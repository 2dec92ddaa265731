//! Application messages: chat text and display names encrypted for the group, handed to the
//! outbox for each peer, and opened as they arrive over links.

use openmls::prelude::ProcessedMessageContent;
use openmls::prelude::Sender;
use uuid::Uuid;
use web_time::Instant;

use crate::codec::{self};
use crate::identity::DeviceCertificate;
use crate::payload::{Content, decode_packet, encode_packet};
use crate::roster::{Refusal, certificate_of};

use super::{
    ChatMessage, Engine, EngineError, Event, HistoryChange, LATEST_SENT_AT, LinkCommand, Output,
    mls_error, protocol_message, push_bounded, refused,
};

impl Engine {
    /// A message sent or received: kept in the history and shown.
    fn record_message(&mut self, message: ChatMessage, outgoing: bool) {
        self.history.push(HistoryChange::Add {
            message: message.clone(),
            outgoing,
        });
        self.event(Event::Message { message, outgoing });
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
        let id = Uuid::new_v4();
        let message = ChatMessage {
            id,
            member: self.saved.member,
            device: self.saved.device,
            text: text.to_owned(),
            sent_at: unix_ms.clamp(0, LATEST_SENT_AT),
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
        self.record_message(message, true);
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

    pub(super) fn receive_link_message(&mut self, device: Uuid, msg: Vec<u8>) {
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
            Ok((sender, Content::Text { id, text, sent_at })) => self.record_message(
                ChatMessage {
                    id,
                    member: sender.member,
                    device: sender.device,
                    text,
                    sent_at: sent_at.clamp(0, LATEST_SENT_AT),
                },
                false,
            ),
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

    pub(super) fn drain_delivery(&mut self) {
        while let Some((device, packet)) = self.saved.delivery.poll_transmit() {
            self.outputs.push_back(Output::Link(LinkCommand::Data {
                device,
                bytes: encode_packet(&packet),
            }));
        }
        while let Some((device, _, tag)) = self.saved.delivery.poll_acknowledged() {
            if let Some(id) = tag {
                self.history.push(HistoryChange::Delivered {
                    device: self.saved.device,
                    id,
                    peer: device,
                });
                self.event(Event::Delivered { id, device });
            }
        }
        while let Some((device, _, msg)) = self.saved.delivery.poll_delivered() {
            self.receive_link_message(device, msg);
        }
    }
}
