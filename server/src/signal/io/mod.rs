//! The device's socket, below the connection actor: the upgraded stream read and written in bursts
//! ([`burst`]), frames written in batches and long texts in fragments, keepalive pings, the last
//! word and a polite close. What a connection costs in memory while idle (about 10 KB) is decided
//! here; the connection's logic (`connection.rs`) sees frames in and a queue out.

pub mod burst;

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt as _;
use futures_util::stream::{SplitSink, SplitStream};
use hyper_util::rt::TokioIo;
use tessera_wire::signal::ServerFrame;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use super::connection::text;
use super::hub::{Endpoint, Outbound};
use burst::BurstIo;

/// How long the closing frame may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longer frames go out in fragments of this size. tungstenite's write buffer keeps the capacity
/// of the longest frame it wrote for the life of the connection: a hello listing a hundred peers
/// (~9 KB) or a relayed Welcome piece (up to the frame limit) would otherwise stay allocated for
/// every idle device.
pub const FRAGMENT_BYTES: usize = 1024;
/// The most frames written in one flush.
const WRITE_BATCH: usize = 64;

/// A device's WebSocket, upgraded from its HTTP request.
pub type Socket = WebSocketStream<BurstIo<TokioIo<hyper::upgrade::Upgraded>>>;

/// The last frame of a connection ended by a revocation: which one ended.
fn farewell_of(endpoint: &Endpoint) -> Utf8Bytes {
    if endpoint
        .member_revoked
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        text(&ServerFrame::Revoked)
    } else {
        text(&ServerFrame::SessionEnded)
    }
}

/// Writes queued frames and keepalive pings to the device until cancelled; ends the connection on
/// a failed or slow write. A revocation overtakes everything queued.
pub(super) async fn write(
    mut sink: SplitSink<Socket, Message>,
    mut queue: mpsc::Receiver<Outbound>,
    endpoint: Endpoint,
    ping_every: Duration,
) -> SplitSink<Socket, Message> {
    // Waiting on the tokens is set up once, not per frame.
    let cancelled = endpoint.cancel.cancelled();
    let revoked = endpoint.revoked.cancelled();
    tokio::pin!(cancelled, revoked);
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let farewell = loop {
        let first = tokio::select! {
            biased;
            () = &mut revoked => break Some(farewell_of(&endpoint)),
            () = &mut cancelled => break None,
            next = queue.recv() => match next {
                None => break None,
                Some(Outbound::Text(frame)) => Message::Text(unshare(frame)),
                Some(Outbound::Close(frame)) => break Some(unshare(frame)),
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        // The write first: most are done at once, and the tokens are only polled (their waiter
        // lists locked) for a write that waits on the device. No timer per write: a device that
        // stops reading fills its queue and is cancelled, and one that stops answering pings is
        // closed by the reader's idle timeout.
        let written = tokio::select! {
            biased;
            written = write_ready(&mut sink, first, &mut queue) => written,
            () = &mut revoked => break Some(farewell_of(&endpoint)),
            () = &mut cancelled => break None,
        };
        match written {
            Ok(None) => {}
            Ok(Some(last)) => break Some(last),
            Err(_) => break None,
        }
    };
    // The last word and a polite close, if the device still reads; one that does not is not waited for.
    if let Some(frame) = farewell {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, send(&mut sink, Message::Text(frame))).await;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        // Ours; or, when the device closed first, tungstenite refuses it and flushing writes the
        // answer it queued instead.
        let _ = sink.send(Message::Close(None)).await;
        sink.flush().await
    })
    .await;
    endpoint.cancel.cancel();
    sink
}

/// Sends what the socket still holds and closes it, within the closing time: tungstenite writes
/// its reply to a device's close without flushing it, and [`BurstIo`] keeps unflushed writes.
pub(super) async fn shut(stream: SplitStream<Socket>, sink: SplitSink<Socket, Message>) {
    if let Ok(mut socket) = stream.reunite(sink) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.get_mut().shutdown()).await;
    }
}

/// The frame itself when this device was its only recipient, else a copy of the handle (the
/// text is not copied either way).
fn unshare(frame: Arc<Utf8Bytes>) -> Utf8Bytes {
    Arc::try_unwrap(frame).unwrap_or_else(|shared| Utf8Bytes::clone(&shared))
}

/// Writes `first` and the frames already queued behind it (up to [`WRITE_BATCH`]) in one flush,
/// which [`BurstIo`] makes one system call. A closing frame in the queue ends the batch and is
/// returned, for the caller to send last.
async fn write_ready<S>(
    sink: &mut S,
    first: Message,
    queue: &mut mpsc::Receiver<Outbound>,
) -> Result<Option<Utf8Bytes>, S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    feed(sink, first).await?;
    let mut last = None;
    for _ in 1..WRITE_BATCH {
        match queue.try_recv() {
            Ok(Outbound::Text(frame)) => feed(sink, Message::Text(unshare(frame))).await?,
            Ok(Outbound::Close(frame)) => {
                last = Some(unshare(frame));
                break;
            }
            Err(_) => break,
        }
    }
    sink.flush().await?;
    Ok(last)
}

/// Sends one message.
async fn send<S>(sink: &mut S, message: Message) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    feed(sink, message).await?;
    sink.flush().await
}

/// Queues one message without flushing; a text longer than [`FRAGMENT_BYTES`] goes as a first
/// frame and continuation frames (RFC 6455 5.4), which browsers and WebSocket libraries put back
/// together.
async fn feed<S>(sink: &mut S, message: Message) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let text = match message {
        Message::Text(text) if text.len() > FRAGMENT_BYTES => Bytes::from(text),
        other => return sink.feed(other).await,
    };
    let mut start = 0;
    while start < text.len() {
        let end = (start + FRAGMENT_BYTES).min(text.len());
        let opcode = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let fragment = Frame::message(
            text.slice(start..end),
            OpCode::Data(opcode),
            end == text.len(),
        );
        sink.feed(Message::Frame(fragment)).await?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// The frames a server-side socket wrote, as (FIN, opcode, payload) (server frames are
    /// unmasked, RFC 6455 5.2).
    fn frames(mut wire: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while let [first, second, rest @ ..] = wire {
            let (len, rest) = match second & 0x7f {
                126 => (
                    usize::from(u16::from_be_bytes([rest[0], rest[1]])),
                    &rest[2..],
                ),
                127 => panic!("no frame here is that long"),
                short => (usize::from(short), rest),
            };
            frames.push((first & 0x80 != 0, first & 0x0f, rest[..len].to_vec()));
            wire = &rest[len..];
        }
        frames
    }

    #[tokio::test]
    async fn long_texts_go_in_fragments_short_ones_in_one_frame() {
        let (server_side, mut client_side) = tokio::io::duplex(1 << 20);
        let mut socket = WebSocketStream::from_raw_socket(server_side, Role::Server, None).await;
        let long: String = "é€x".repeat(FRAGMENT_BYTES);
        send(&mut socket, Message::text("short"))
            .await
            .expect("sends");
        send(&mut socket, Message::text(long.clone()))
            .await
            .expect("sends");
        drop(socket);
        let mut wire = Vec::new();
        client_side.read_to_end(&mut wire).await.expect("reads");

        let frames = frames(&wire);
        assert_eq!(frames[0], (true, 0x1, b"short".to_vec()), "one text frame");
        let long_frames = &frames[1..];
        assert!(long_frames.len() > 1, "{} frames", long_frames.len());
        assert_eq!(
            (long_frames[0].0, long_frames[0].1),
            (false, 0x1),
            "text, more to come"
        );
        for (i, (fin, opcode, payload)) in long_frames.iter().enumerate().skip(1) {
            assert_eq!(*opcode, 0x0, "continuation");
            assert_eq!(*fin, i == long_frames.len() - 1, "only the last is final");
            assert!(payload.len() <= FRAGMENT_BYTES);
        }
        let whole: Vec<u8> = long_frames.iter().flat_map(|f| f.2.clone()).collect();
        assert_eq!(
            whole,
            long.as_bytes(),
            "put together, the text is unchanged"
        );
    }
}
