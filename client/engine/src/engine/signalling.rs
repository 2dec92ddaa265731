//! Frames to and from the server: paced within its limits, payloads too large for one frame sent
//! in pieces, and relayed signals dispatched to what handles them.

use serde_json::value::{RawValue, to_raw_value};
use tessera_wire::Base64Url;
use tessera_wire::signal::ClientFrame;
use uuid::Uuid;
use web_time::Instant;

use crate::payload::SignalPayload;
use crate::pieces::{self};
use crate::roster::Refusal;

use super::{Engine, Event, Output, push_bounded};

/// An MLS signal that came before this device's Welcome, kept until it can be read.
#[derive(Debug)]
pub(super) struct EarlySignal {
    pub(super) from: Uuid,
    pub(super) member: Uuid,
    pub(super) msg: Base64Url,
}

impl Engine {
    pub(super) fn send(&mut self, frame: ClientFrame) {
        self.pacer.push(frame);
    }

    /// Sends `payload` to `to` through the server: in pieces when one frame cannot hold it.
    pub(super) fn send_signal(&mut self, to: Uuid, payload: &SignalPayload) {
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
    pub(super) fn release_frames(&mut self, now: Instant) {
        while let Some(frame) = self.pacer.pop(now) {
            self.outputs.push_back(Output::Send(frame));
        }
    }

    pub(super) fn receive_signal(
        &mut self,
        now: Instant,
        from: Uuid,
        member: Uuid,
        payload: SignalPayload,
    ) {
        match payload {
            SignalPayload::KeyPackage { kp } => {
                self.receive_key_package(now, from, member, kp.as_slice(), None);
            }
            SignalPayload::Welcome { welcome, next } => {
                self.receive_welcome(now, from, welcome.as_slice(), next, None);
            }
            SignalPayload::Mls { msg } => {
                if self.group.is_none() {
                    // Sent by a member that processed this device's add before its Welcome came.
                    push_bounded(&mut self.early, EarlySignal { from, member, msg });
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
                match self.assembler.receive(now, from, (id, i, n), &part) {
                    Ok(Some(payload)) => self.receive_signal(now, from, member, payload),
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
            } => self.receive_commits(now, from, first, commits),
        }
    }
}
