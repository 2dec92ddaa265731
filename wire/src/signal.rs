//! The signalling protocol on `GET /api/v1/ws`: JSON text frames, each with a `type`. Payloads are
//! opaque to the server: kept as raw JSON, relayed byte for byte, never parsed, stored or logged.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// The WebSocket path (under the origin).
pub const WS_PATH: &str = "/api/v1/ws";

crate::code::codes! {
    /// Why the server refused a frame or closed the connection: the `code` of an `error` frame
    /// (`docs/protocol.md` §3).
    pub enum FrameErrorCode {
        /// Not JSON, not an object, no `type`, or a field of the wrong type.
        InvalidJson = "invalid_json",
        /// A `type` other than `signal` or `commit`.
        UnknownType = "unknown_type",
        /// A field the type needs is missing.
        MalformedFrame = "malformed_frame",
        /// The frame is longer than the limit.
        FrameTooLarge = "frame_too_large",
        /// A binary WebSocket message.
        BinaryFrame = "binary_frame",
        /// More frames than the rate limit allows.
        RateLimited = "rate_limited",
        /// The signal's recipient is not online in the sender's circle.
        UnknownDevice = "unknown_device",
        /// The recipient's queue was full; the signal was dropped.
        PeerUnavailable = "peer_unavailable",
        /// The store failed while sequencing a commit.
        Internal = "internal",
        /// Too many refused frames: the connection is closed.
        Abuse = "abuse",
        /// The same device connected again elsewhere: this connection is closed.
        Replaced = "replaced",
        /// The connection could not register after the upgrade: it is closed.
        JoinRefused = "join_refused",
    }
}

/// An opaque payload: any JSON value, relayed as it came.
pub type Payload = Box<RawValue>;

/// A device that is online: a member may be online from several devices at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerDevice {
    /// The member.
    pub member: Uuid,
    /// The device (one per connection or installation).
    pub device: Uuid,
}

/// The limits a server holds each connection to, told in its `hello` so that clients stay within
/// them: a larger payload goes in pieces, a burst of frames is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest frame the server accepts, in bytes.
    pub frame_bytes: usize,
    /// Frames a connection may send per second, sustained.
    pub frames_per_second: u32,
    /// Frames a connection may send at once after a quiet spell.
    pub burst: u32,
}

impl Default for Limits {
    /// The server's defaults: 64 KiB frames, 50 per second, bursts of 100.
    fn default() -> Limits {
        Limits {
            frame_bytes: 64 * 1024,
            frames_per_second: 50,
            burst: 100,
        }
    }
}

/// Any frame, as it appears on the wire: every field optional. Frames are read through it because
/// serde cannot keep a payload raw inside an internally tagged enum.
#[derive(Debug, Default, Deserialize)]
pub struct Envelope {
    /// The frame's type.
    #[serde(rename = "type")]
    pub kind: String,
    to: Option<Uuid>,
    from: Option<Uuid>,
    member: Option<Uuid>,
    device: Option<Uuid>,
    peers: Option<Vec<PeerDevice>>,
    limits: Option<Limits>,
    epoch: Option<u64>,
    accepted: Option<bool>,
    online: Option<bool>,
    payload: Option<Payload>,
    code: Option<FrameErrorCode>,
    message: Option<String>,
}

/// Why a well-formed JSON frame is not a frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The `type` is not one this side accepts.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// A field the type needs is missing.
    #[error("a {kind} frame needs `{field}`")]
    Missing {
        /// The frame type.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

fn need<T>(value: Option<T>, kind: &'static str, field: &'static str) -> Result<T, FrameError> {
    value.ok_or(FrameError::Missing { kind, field })
}

/// What a client sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "Envelope")]
pub enum ClientFrame {
    /// Relay `payload` to one device of the sender's circle.
    Signal {
        /// The receiving device.
        to: Uuid,
        /// Anything; the server does not look inside.
        payload: Payload,
    },
    /// Propose an MLS commit for sequencer slot `slot`; the first one for a slot is accepted.
    Commit {
        /// The sequencer slot (sent as `epoch`): the circle's count of accepted commits, which
        /// the MLS epoch follows except where a refused commit left a slot skipped.
        #[serde(rename = "epoch")]
        slot: u64,
        /// The commit; the server does not look inside.
        payload: Payload,
    },
}

impl TryFrom<Envelope> for ClientFrame {
    type Error = FrameError;

    fn try_from(e: Envelope) -> Result<Self, FrameError> {
        match e.kind.as_str() {
            "signal" => Ok(ClientFrame::Signal {
                to: need(e.to, "signal", "to")?,
                payload: need(e.payload, "signal", "payload")?,
            }),
            "commit" => Ok(ClientFrame::Commit {
                slot: need(e.epoch, "commit", "epoch")?,
                payload: need(e.payload, "commit", "payload")?,
            }),
            _ => Err(FrameError::UnknownType(e.kind)),
        }
    }
}

/// What the server sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "Envelope")]
pub enum ServerFrame {
    /// First frame of a connection: who you are and who else is online.
    Hello {
        /// The connection's member.
        member: Uuid,
        /// The connection's device.
        device: Uuid,
        /// The circle's other online devices.
        peers: Vec<PeerDevice>,
        /// The sequencer's next slot (sent as `epoch`).
        #[serde(rename = "epoch")]
        slot: u64,
        /// The limits this connection is held to (a server that does not say holds the
        /// defaults).
        limits: Limits,
    },
    /// A device of the circle came online or went offline.
    Presence {
        /// The member.
        member: Uuid,
        /// The device.
        device: Uuid,
        /// Whether it is now online.
        online: bool,
    },
    /// A relayed signal.
    Signal {
        /// The sending device.
        from: Uuid,
        /// The sending member.
        member: Uuid,
        /// As sent.
        payload: Payload,
    },
    /// An accepted commit, relayed to the circle's other online devices.
    Commit {
        /// The committing device.
        from: Uuid,
        /// The committing member.
        member: Uuid,
        /// The slot the commit took (sent as `epoch`; the sequencer is now at `slot + 1`).
        #[serde(rename = "epoch")]
        slot: u64,
        /// As sent.
        payload: Payload,
    },
    /// The sequencer's answer to the committer.
    CommitResult {
        /// The slot of the proposed commit (sent as `epoch`).
        #[serde(rename = "epoch")]
        slot: u64,
        /// Whether it was the first for that slot (merge it) or not (discard it, catch up, retry).
        accepted: bool,
    },
    /// A frame was refused; the connection stays up unless the code says otherwise.
    Error {
        /// Why.
        code: FrameErrorCode,
        /// A sentence for people.
        message: String,
    },
    /// The member was revoked; the server closes the connection.
    Revoked,
    /// The session ended (logged out, expired, or opened by a key since revoked) while the member
    /// stays: log in again. The server closes the connection.
    SessionEnded,
}

impl TryFrom<Envelope> for ServerFrame {
    type Error = FrameError;

    fn try_from(e: Envelope) -> Result<Self, FrameError> {
        Ok(match e.kind.as_str() {
            "hello" => ServerFrame::Hello {
                member: need(e.member, "hello", "member")?,
                device: need(e.device, "hello", "device")?,
                peers: need(e.peers, "hello", "peers")?,
                slot: need(e.epoch, "hello", "epoch")?,
                limits: e.limits.unwrap_or_default(),
            },
            "presence" => ServerFrame::Presence {
                member: need(e.member, "presence", "member")?,
                device: need(e.device, "presence", "device")?,
                online: need(e.online, "presence", "online")?,
            },
            "signal" => ServerFrame::Signal {
                from: need(e.from, "signal", "from")?,
                member: need(e.member, "signal", "member")?,
                payload: need(e.payload, "signal", "payload")?,
            },
            "commit" => ServerFrame::Commit {
                from: need(e.from, "commit", "from")?,
                member: need(e.member, "commit", "member")?,
                slot: need(e.epoch, "commit", "epoch")?,
                payload: need(e.payload, "commit", "payload")?,
            },
            "commit_result" => ServerFrame::CommitResult {
                slot: need(e.epoch, "commit_result", "epoch")?,
                accepted: need(e.accepted, "commit_result", "accepted")?,
            },
            "error" => ServerFrame::Error {
                code: need(e.code, "error", "code")?,
                message: need(e.message, "error", "message")?,
            },
            "revoked" => ServerFrame::Revoked,
            "session_ended" => ServerFrame::SessionEnded,
            _ => return Err(FrameError::UnknownType(e.kind)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_relayed_byte_for_byte() {
        let text = r#"{"type":"signal","to":"6f1c1e4e-5d5e-4a57-9f39-2a3e1f0c9b11","payload":{"sdp": "v=0\r\n",  "n":[1, 2.50]}}"#;
        let frame: ClientFrame = serde_json::from_str(text).expect("parse");
        let ClientFrame::Signal { payload, .. } = frame else {
            panic!("a signal")
        };
        assert_eq!(payload.get(), r#"{"sdp": "v=0\r\n",  "n":[1, 2.50]}"#);
        let out = ServerFrame::Signal {
            from: Uuid::nil(),
            member: Uuid::nil(),
            payload,
        };
        let json = serde_json::to_string(&out).expect("serialize");
        assert!(
            json.contains(r#""payload":{"sdp": "v=0\r\n",  "n":[1, 2.50]}"#),
            "{json}"
        );
        let back: ServerFrame = serde_json::from_str(&json).expect("the client reads it");
        let ServerFrame::Signal { payload, .. } = back else {
            panic!("a signal")
        };
        assert_eq!(payload.get(), r#"{"sdp": "v=0\r\n",  "n":[1, 2.50]}"#);
    }

    #[test]
    fn incomplete_and_unknown_frames_are_told_apart() {
        let envelope: Envelope =
            serde_json::from_str(r#"{"type":"signal","payload":1}"#).expect("json");
        assert_eq!(
            ClientFrame::try_from(envelope).err(),
            Some(FrameError::Missing {
                kind: "signal",
                field: "to"
            })
        );
        let envelope: Envelope = serde_json::from_str(r#"{"type":"hello"}"#).expect("json");
        assert_eq!(
            ClientFrame::try_from(envelope).err(),
            Some(FrameError::UnknownType("hello".into()))
        );
    }

    #[test]
    fn frame_types_are_snake_case() {
        let json = serde_json::to_string(&ServerFrame::CommitResult {
            slot: 3,
            accepted: true,
        })
        .expect("serialize");
        assert_eq!(
            json,
            r#"{"type":"commit_result","epoch":3,"accepted":true}"#
        );
        assert_eq!(
            serde_json::to_string(&ServerFrame::Revoked).expect("serialize"),
            r#"{"type":"revoked"}"#
        );
        assert_eq!(
            serde_json::to_string(&ServerFrame::SessionEnded).expect("serialize"),
            r#"{"type":"session_ended"}"#
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"shout","to":"x"}"#).is_err());
    }
}
