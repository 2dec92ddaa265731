//! What devices say to one another: the payloads of the server's `signal` and `commit` frames, the
//! sealed content of MLS application messages, and the framing of packets on a peer link. Defined
//! once here for the native and the browser engine alike.

use serde::{Deserialize, Serialize};
use tessera_wire::Base64Url;
use uuid::Uuid;

use crate::carry::{Holdings, Stream};
use crate::changes::{Change, MessageRef};
use crate::delivery::Packet;
use crate::files::{FileControl, FileOffer};

/// The payload of a `signal` frame. The server relays it without reading it; everything in it is
/// either public by nature (a KeyPackage, a commit the server already relayed, a slot number) or
/// MLS-protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum SignalPayload {
    /// A device outside the group asks to be added: its MLS KeyPackage (TLS-encoded MLSMessage),
    /// whose credential carries the device certificate.
    KeyPackage {
        /// The KeyPackage.
        kp: Base64Url,
    },
    /// A Welcome into the group (TLS-encoded MLSMessage) and the sequencer slot that follows the
    /// commit that added the device.
    Welcome {
        /// The Welcome.
        welcome: Base64Url,
        /// The next sequencer slot after the adding commit.
        next: u64,
    },
    /// An MLS application message (a PrivateMessage) holding a [`Sealed`].
    Mls {
        /// The message.
        msg: Base64Url,
    },
    /// Ask a peer for the accepted commits from slot `from` on.
    NeedCommits {
        /// The first slot wanted.
        from: u64,
    },
    /// Accepted commits by slot, from `from` on, as the sequencer relayed them.
    Commits {
        /// The slot of the first commit.
        from: u64,
        /// The commits, one per slot.
        commits: Vec<Base64Url>,
    },
    /// Piece `i` of `n` of another payload too large for one server frame: the pieces' `part`s,
    /// joined in order, are that payload's JSON text (see [`crate::pieces`]).
    Piece {
        /// Tells one payload's pieces from another's, per sender.
        id: u64,
        /// Which piece, from 0.
        i: u32,
        /// How many pieces.
        n: u32,
        /// The piece's share of the payload's JSON text.
        part: String,
    },
}

/// The payload of a `commit` frame: the MLS commit (TLS-encoded MLSMessage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitPayload {
    /// The commit.
    pub mls: Base64Url,
}

/// What an MLS application message sent through the server holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Sealed {
    /// WebRTC negotiation for the link between the sender and `to`.
    Rtc {
        /// The device the negotiation is for (a relay cannot redirect it to another).
        to: Uuid,
        /// The negotiation step.
        rtc: RtcSignal,
    },
    /// The sender has no link to `to` and asks it to open one: only the device with the lower id
    /// opens links, and it may still hold a link the sender lost when it restarted.
    LinkWanted {
        /// The device asked (a relay cannot redirect the request to another).
        to: Uuid,
    },
}

/// One step of WebRTC negotiation, in the browser's JSON shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RtcSignal {
    /// An SDP offer.
    Offer {
        /// The session description.
        sdp: String,
    },
    /// An SDP answer.
    Answer {
        /// The session description.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The candidate line (`candidate:…`).
        candidate: String,
        /// The media stream id it belongs to.
        #[serde(default, rename = "sdpMid")]
        sdp_mid: Option<String>,
    },
}

/// What an MLS application message sent over a peer link holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Content {
    /// A chat message.
    Text {
        /// The message's id (the same for every recipient).
        id: Uuid,
        /// The text.
        text: String,
        /// When it was written, milliseconds since the Unix epoch, by the sender's clock.
        sent_at: i64,
        /// Its number in its sender's stream ([`crate::carry`]), authenticated here and named
        /// outside the ciphertext too ([`LinkMessage::Circle`]). Absent in messages of earlier
        /// versions, which are not carried.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// The message it answers, quoted where it is shown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<MessageRef>,
    },
    /// A change to an earlier message of the circle: a reaction, an edit or a deletion
    /// ([`crate::changes`]). Named and carried like a text.
    Change {
        /// The change's id.
        id: Uuid,
        /// The message it changes.
        target: MessageRef,
        /// What it does.
        change: Change,
        /// When it was made, milliseconds since the Unix epoch, by the sender's clock.
        sent_at: i64,
        /// Its number in its sender's stream.
        seq: u64,
    },
    /// A file shared with the circle: what it is and its key ([`crate::files`]); the content
    /// follows over the links, sealed under that key. Named and carried like a text.
    File {
        /// The message's id, which is also the file's.
        id: Uuid,
        /// The file.
        #[serde(flatten)]
        offer: FileOffer,
        /// When it was sent, milliseconds since the Unix epoch, by the sender's clock.
        sent_at: i64,
        /// Its number in its sender's stream.
        seq: u64,
    },
    /// The sender's display name, chosen by the member and known only inside the group.
    Profile {
        /// The name.
        name: String,
    },
}

/// Why bytes from a peer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0}")]
pub struct Malformed(pub &'static str);

const CHUNK: u8 = 1;
const ACK: u8 = 2;
const HOLDINGS: u8 = 3;
const BUNDLE: u8 = 4;
const FILE_CONTROL: u8 = 5;
const FILE_CHUNK: u8 = 6;

/// The largest data channel message a device sends: 16 KiB, what every WebRTC stack takes.
pub const LINK_MESSAGE_BYTES: usize = 16 * 1024;

/// A packet on a data channel: delivery's, or what the sending device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPacket {
    /// A piece or an acknowledgement of a message ([`crate::delivery`]).
    Delivery(Packet),
    /// What the sender holds ([`crate::carry`]): `3 ‖ postcard(Holdings)`.
    Holdings(Holdings),
    /// About a file ([`crate::files`]): `5 ‖ postcard(FileControl)`.
    FileControl(FileControl),
    /// A chunk of a file, sealed under its key: `6 ‖ file (16 bytes) ‖ index u64 ‖ sealed`.
    FileChunk {
        /// The file.
        file: Uuid,
        /// Which chunk.
        index: u64,
        /// The chunk, sealed.
        sealed: Vec<u8>,
    },
}

/// The largest file control packet: far more than any takes.
const FILE_CONTROL_BYTES: usize = 256;

/// A file control packet ([`LinkPacket::FileControl`]).
#[must_use]
pub fn encode_file_control(control: &FileControl) -> Vec<u8> {
    postcard::to_extend(control, vec![FILE_CONTROL]).unwrap_or_else(|_| vec![FILE_CONTROL])
}

/// A chunk packet ([`LinkPacket::FileChunk`]).
#[must_use]
pub fn encode_file_chunk(file: Uuid, index: u64, sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(25 + sealed.len());
    out.push(FILE_CHUNK);
    out.extend_from_slice(file.as_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(sealed);
    out
}

/// The largest holdings packet sent: one data channel message (16 KiB portably) with room to spare.
pub const HOLDINGS_BYTES: usize = 15 * 1024;

/// A holdings packet, with as many of its streams and devices as fit [`HOLDINGS_BYTES`] (those
/// listed first are kept).
#[must_use]
pub fn encode_holdings(holdings: &Holdings) -> Vec<u8> {
    let mut holdings = holdings.clone();
    loop {
        let bytes =
            postcard::to_extend(&holdings, vec![HOLDINGS]).unwrap_or_else(|_| vec![HOLDINGS]);
        if bytes.len() <= HOLDINGS_BYTES || (holdings.held.is_empty() && holdings.seen.is_empty()) {
            return bytes;
        }
        if holdings.seen.pop().is_none() {
            holdings.held.pop();
        }
    }
}

/// Packets for one peer put together in as few data channel messages as hold them: one packet
/// goes as it is, several as a bundle `4 ‖ (length u16 ‖ packet)…` (big-endian) of at most
/// [`LINK_MESSAGE_BYTES`]. Every link message costs the WebRTC stack the same work whatever its
/// size; a burst of small messages and their acknowledgements travel in a few.
#[derive(Debug, Default)]
pub struct Bundler {
    packets: Vec<Vec<u8>>,
    /// The packets' bytes with their length fields.
    bytes: usize,
}

impl Bundler {
    /// Adds `packet`; returns the data channel message the packets before it fill, if it does not
    /// fit with them.
    pub fn push(&mut self, packet: Vec<u8>) -> Option<Vec<u8>> {
        let full =
            !self.packets.is_empty() && 1 + self.bytes + 2 + packet.len() > LINK_MESSAGE_BYTES;
        let message = if full { self.take() } else { None };
        self.bytes += 2 + packet.len();
        self.packets.push(packet);
        message
    }

    /// The data channel message of the packets added since the last, if any.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        self.bytes = 0;
        let mut packets = std::mem::take(&mut self.packets);
        if packets.len() <= 1 {
            return packets.pop();
        }
        let mut out = Vec::with_capacity(LINK_MESSAGE_BYTES);
        out.push(BUNDLE);
        for packet in &packets {
            // A packet too long for the length field is never bundled: it stands alone above.
            let length = u16::try_from(packet.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&length.to_be_bytes());
            out.extend_from_slice(packet);
        }
        Some(out)
    }
}

/// Reads a data channel message: one packet, or the packets of a bundle ([`Bundler`]), in order.
/// A bundle with anything malformed in it is refused whole.
///
/// # Errors
/// When the bytes are not a packet or a bundle of packets.
pub fn decode_link_data(bytes: &[u8]) -> Result<Vec<LinkPacket>, Malformed> {
    let Some((&BUNDLE, mut rest)) = bytes.split_first() else {
        return decode_link_packet(bytes).map(|packet| vec![packet]);
    };
    if bytes.len() > LINK_MESSAGE_BYTES {
        return Err(Malformed("bundle"));
    }
    let mut packets = Vec::new();
    while !rest.is_empty() {
        let (length, body) = rest.split_at_checked(2).ok_or(Malformed("bundle"))?;
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        let (packet, after) = body.split_at_checked(length).ok_or(Malformed("bundle"))?;
        if packet.first() == Some(&BUNDLE) {
            return Err(Malformed("a bundle inside a bundle"));
        }
        packets.push(decode_link_packet(packet)?);
        rest = after;
    }
    if packets.len() < 2 {
        return Err(Malformed("bundle"));
    }
    Ok(packets)
}

/// Reads a packet from a data channel.
///
/// # Errors
/// When the bytes are not a packet.
pub fn decode_link_packet(bytes: &[u8]) -> Result<LinkPacket, Malformed> {
    match bytes.split_first() {
        Some((&HOLDINGS, body)) if body.len() < HOLDINGS_BYTES => {
            match postcard::take_from_bytes(body) {
                Ok((holdings, [])) => Ok(LinkPacket::Holdings(holdings)),
                _ => Err(Malformed("holdings")),
            }
        }
        Some((&FILE_CONTROL, body)) if body.len() < FILE_CONTROL_BYTES => {
            match postcard::take_from_bytes(body) {
                Ok((control, [])) => Ok(LinkPacket::FileControl(control)),
                _ => Err(Malformed("file control")),
            }
        }
        Some((&FILE_CHUNK, body)) if body.len() > 24 && bytes.len() <= LINK_MESSAGE_BYTES => {
            let (file, rest) = body.split_at(16);
            let (index, sealed) = rest.split_at(8);
            Ok(LinkPacket::FileChunk {
                file: Uuid::from_slice(file).map_err(|_| Malformed("file chunk"))?,
                index: u64::from_be_bytes(index.try_into().map_err(|_| Malformed("file chunk"))?),
                sealed: sealed.to_vec(),
            })
        }
        Some((&(FILE_CONTROL | FILE_CHUNK), _)) => Err(Malformed("file packet")),
        _ => decode_packet(bytes).map(LinkPacket::Delivery),
    }
}

const CIRCLE: u8 = 1;
const HISTORY: u8 = 2;

/// A message delivery carries between two devices: an MLS application message, named for the
/// circle's history or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMessage<'a> {
    /// An MLS message (starting with its version, `0 1`) of the link's own peer: a display name,
    /// or a message of an earlier version.
    Own(&'a [u8]),
    /// A chat message of the circle, named by its stream and number, from its sender or carried
    /// by another device: `1 ‖ stream (16 bytes) ‖ seq u64 ‖ MLS message`.
    Circle {
        /// Its sender's stream.
        stream: Stream,
        /// Its number there.
        seq: u64,
        /// The MLS application message.
        mls: &'a [u8],
    },
    /// History between two devices of one member ([`crate::history`]): `2 ‖
    /// postcard(HistoryMessage)`; the body after the type.
    History(&'a [u8]),
}

/// A history message between two devices of one member ([`LinkMessage::History`]).
#[must_use]
pub fn encode_history_message(message: &crate::history::HistoryMessage) -> Vec<u8> {
    postcard::to_extend(message, vec![HISTORY]).unwrap_or_else(|_| vec![HISTORY])
}

/// A chat message named for the circle ([`LinkMessage::Circle`]).
#[must_use]
pub fn encode_circle_message(stream: Stream, seq: u64, mls: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(25 + mls.len());
    out.push(CIRCLE);
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(mls);
    out
}

/// Reads a message delivery carried.
///
/// # Errors
/// When it is neither shape.
pub fn decode_link_message(bytes: &[u8]) -> Result<LinkMessage<'_>, Malformed> {
    match bytes.split_first() {
        Some((&CIRCLE, rest)) if rest.len() > 24 => {
            let (stream, rest) = rest.split_at(16);
            let (seq, mls) = rest.split_at(8);
            Ok(LinkMessage::Circle {
                stream: Uuid::from_slice(stream).map_err(|_| Malformed("link message"))?,
                seq: u64::from_be_bytes(seq.try_into().map_err(|_| Malformed("link message"))?),
                mls,
            })
        }
        Some((&HISTORY, body)) => Ok(LinkMessage::History(body)),
        Some((0, _)) => Ok(LinkMessage::Own(bytes)),
        _ => Err(Malformed("link message")),
    }
}

/// A packet as it goes on a data channel: `1 ‖ seq u64 ‖ index u32 ‖ count u32 ‖ bytes` for a
/// chunk, `2 ‖ seq u64` for an acknowledgement (big-endian).
#[must_use]
pub fn encode_packet(packet: &Packet) -> Vec<u8> {
    match packet {
        Packet::Chunk {
            seq,
            index,
            count,
            bytes,
        } => {
            let mut out = Vec::with_capacity(17 + bytes.len());
            out.push(CHUNK);
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
            out.extend_from_slice(bytes);
            out
        }
        Packet::Ack { seq } => {
            let mut out = Vec::with_capacity(9);
            out.push(ACK);
            out.extend_from_slice(&seq.to_be_bytes());
            out
        }
    }
}

/// Reads a packet from a data channel.
///
/// # Errors
/// When the bytes are not a packet.
pub fn decode_packet(bytes: &[u8]) -> Result<Packet, Malformed> {
    let u64_at = |at: usize| -> Result<u64, Malformed> {
        let field = bytes.get(at..at + 8).ok_or(Malformed("packet"))?;
        Ok(u64::from_be_bytes(
            field.try_into().map_err(|_| Malformed("packet"))?,
        ))
    };
    let u32_at = |at: usize| -> Result<u32, Malformed> {
        let field = bytes.get(at..at + 4).ok_or(Malformed("packet"))?;
        Ok(u32::from_be_bytes(
            field.try_into().map_err(|_| Malformed("packet"))?,
        ))
    };
    match bytes.first() {
        Some(&CHUNK) => Ok(Packet::Chunk {
            seq: u64_at(1)?,
            index: u32_at(9)?,
            count: u32_at(13)?,
            bytes: bytes.get(17..).ok_or(Malformed("packet"))?.to_vec(),
        }),
        Some(&ACK) if bytes.len() == 9 => Ok(Packet::Ack { seq: u64_at(1)? }),
        _ => Err(Malformed("packet")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_garbage_is_refused() {
        for packet in [
            Packet::Ack { seq: 7 },
            Packet::Chunk {
                seq: u64::MAX,
                index: 2,
                count: 3,
                bytes: b"piece".to_vec(),
            },
            Packet::Chunk {
                seq: 0,
                index: 0,
                count: 1,
                bytes: Vec::new(),
            },
        ] {
            assert_eq!(decode_packet(&encode_packet(&packet)), Ok(packet));
        }
        for garbage in [
            &[][..],
            &[0],
            &[2, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &[3; 9],
        ] {
            assert!(decode_packet(garbage).is_err(), "{garbage:?} accepted");
        }
        let mut ack = encode_packet(&Packet::Ack { seq: 1 });
        ack.push(0);
        assert!(decode_packet(&ack).is_err(), "an ack with trailing bytes");
    }

    #[test]
    fn packets_are_bundled_within_one_link_message_in_order_and_bad_bundles_are_refused() {
        let acks: Vec<Packet> = (0..3_000).map(|seq| Packet::Ack { seq }).collect();
        let mut bundler = Bundler::default();
        let mut messages: Vec<Vec<u8>> = acks
            .iter()
            .filter_map(|ack| bundler.push(encode_packet(ack)))
            .collect();
        messages.extend(bundler.take());
        assert!(bundler.take().is_none(), "nothing is left over");
        // 3,000 acks of 9 bytes (11 with their length) fill three link messages, not 3,000.
        assert_eq!(messages.len(), 3);
        assert!(messages.iter().all(|m| m.len() <= LINK_MESSAGE_BYTES));
        let read: Vec<LinkPacket> = messages
            .iter()
            .flat_map(|m| decode_link_data(m).expect("a bundle"))
            .collect();
        let sent: Vec<LinkPacket> = acks.into_iter().map(LinkPacket::Delivery).collect();
        assert_eq!(read, sent);

        // One packet goes as it is; a packet as large as a link message goes alone.
        let chunk = Packet::Chunk {
            seq: 1,
            index: 0,
            count: 1,
            bytes: vec![7; LINK_MESSAGE_BYTES - 17],
        };
        let ack = encode_packet(&Packet::Ack { seq: 9 });
        assert_eq!(bundler.push(ack.clone()), None);
        assert_eq!(bundler.push(encode_packet(&chunk)), Some(ack.clone()));
        assert_eq!(bundler.take(), Some(encode_packet(&chunk)));
        assert_eq!(
            decode_link_data(&ack),
            Ok(vec![LinkPacket::Delivery(Packet::Ack { seq: 9 })])
        );

        let bundle = |parts: &[&[u8]]| {
            let mut out = vec![BUNDLE];
            for part in parts {
                out.extend_from_slice(&u16::try_from(part.len()).expect("short").to_be_bytes());
                out.extend_from_slice(part);
            }
            out
        };
        let good = bundle(&[&ack, &ack]);
        assert_eq!(decode_link_data(&good).map(|p| p.len()), Ok(2));
        let mut truncated = good.clone();
        truncated.pop();
        let mut oversized = bundle(&[&ack, &ack]);
        oversized.resize(LINK_MESSAGE_BYTES + 1, 0);
        for garbage in [
            truncated,
            oversized,
            vec![BUNDLE],
            vec![BUNDLE, 0],
            bundle(&[&ack]),
            bundle(&[&ack, &[2, 0]]),
            bundle(&[&ack, &good]),
            bundle(&[&ack, &[]]),
        ] {
            assert!(decode_link_data(&garbage).is_err(), "{garbage:?} accepted");
        }
    }

    #[test]
    fn link_messages_and_holdings_round_trip_and_garbage_is_refused() {
        let stream = Uuid::new_v4();
        let named = encode_circle_message(stream, 7, &[0, 1, 9]);
        assert_eq!(
            decode_link_message(&named),
            Ok(LinkMessage::Circle {
                stream,
                seq: 7,
                mls: &[0, 1, 9]
            })
        );
        assert_eq!(
            decode_link_message(&[0, 1, 5]),
            Ok(LinkMessage::Own(&[0, 1, 5]))
        );
        let ask = crate::history::HistoryMessage::Ask { before: None };
        let history = encode_history_message(&ask);
        let Ok(LinkMessage::History(body)) = decode_link_message(&history) else {
            panic!("a history message");
        };
        assert_eq!(postcard::from_bytes(body), Ok(ask));
        for garbage in [&[][..], &[1; 24], &[3, 0, 0]] {
            assert!(
                decode_link_message(garbage).is_err(),
                "{garbage:?} accepted"
            );
        }
        let mut ranges = crate::carry::Ranges::default();
        ranges.insert_range(0, 41);
        let holdings = Holdings {
            joined: 3,
            held: vec![(stream, ranges.clone())],
            seen: vec![(Uuid::new_v4(), ranges)],
            owed: 7,
        };
        assert_eq!(
            decode_link_packet(&encode_holdings(&holdings)),
            Ok(LinkPacket::Holdings(holdings.clone()))
        );
        let mut trailing = encode_holdings(&holdings);
        trailing.push(0);
        assert!(decode_link_packet(&trailing).is_err());
        // Too many streams for one packet: those listed first are kept, within the bound.
        let many = Holdings {
            joined: 0,
            held: (0..2_000)
                .map(|_| (Uuid::new_v4(), holdings.held[0].1.clone()))
                .collect(),
            seen: Vec::new(),
            owed: 0,
        };
        let bytes = encode_holdings(&many);
        assert!(bytes.len() <= HOLDINGS_BYTES);
        let Ok(LinkPacket::Holdings(kept)) = decode_link_packet(&bytes) else {
            panic!("not holdings");
        };
        assert!(!kept.held.is_empty() && kept.held[..] == many.held[..kept.held.len()]);
    }

    #[test]
    fn payloads_have_their_documented_shape() {
        let kp =
            serde_json::to_value(SignalPayload::KeyPackage { kp: vec![0].into() }).expect("json");
        assert_eq!(kp, serde_json::json!({"t": "key_package", "kp": "AA"}));
        let rtc: RtcSignal =
            serde_json::from_str(r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 10.0.0.1 5 typ host","sdpMid":"0"}"#)
                .expect("json");
        assert!(matches!(rtc, RtcSignal::Candidate { sdp_mid: Some(ref m), .. } if m == "0"));
    }
}
