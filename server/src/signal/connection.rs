//! One device's signalling connection: a reader and a writer, run together in one task, over a bounded queue.
//! Bad frames get an error frame; abuse, a slow reader, silence or revocation end the connection.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use governor::{DefaultDirectRateLimiter, Quota};
use tessera_wire::signal::{ClientFrame, Envelope, Limits, ServerFrame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::{DeliveryError, Endpoint, Outbound};
use crate::auth::Caller;
use crate::state::AppState;

/// Frames waiting for a device; past this, the device is too slow and is disconnected.
pub const OUTBOUND_QUEUE: usize = 256;
/// How long the closing frame may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the session is checked again (revocations arrive at once; this catches expiry).
const SESSION_RECHECK: Duration = Duration::from_secs(30);

/// Serialises a server frame once.
fn text(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default())
}

fn error_frame(code: &str, message: &str) -> Utf8Bytes {
    text(&ServerFrame::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    })
}

/// The reader's view of its connection.
struct Session {
    state: AppState,
    endpoint: Endpoint,
    limiter: DefaultDirectRateLimiter,
    strikes: u32,
}

impl Session {
    /// Queues a frame for this device; a full queue ends the connection.
    fn send(&self, frame: Outbound) {
        if self.endpoint.push(frame).is_err() {
            self.state.metrics.refused("slow_consumer");
        }
    }

    /// Refuses a frame; past the allowed number of refusals the connection is closed for abuse.
    fn refuse(&mut self, code: &'static str, message: &str) {
        self.state.metrics.refused(code);
        self.strikes += 1;
        if self.strikes > self.state.config.ws_max_refusals {
            self.state.metrics.refused("abuse");
            self.send(Outbound::Close(error_frame(
                "abuse",
                "too many refused frames; the connection is closed",
            )));
        } else {
            self.send(Outbound::Text(error_frame(code, message)));
        }
    }

    async fn on_text(&mut self, frame: &str) {
        if self.limiter.check().is_err() {
            self.refuse("rate_limited", "too many frames per second; slow down");
            return;
        }
        if frame.len() > self.state.config.ws_max_frame_bytes {
            self.refuse("frame_too_large", "the frame is larger than the limit");
            return;
        }
        // Only objects: serde would also read a struct from an array of its fields.
        let envelope = frame
            .trim_start()
            .starts_with('{')
            .then(|| serde_json::from_str::<Envelope>(frame).ok())
            .flatten();
        let Some(envelope) = envelope else {
            self.refuse("invalid_json", "the frame is not a JSON object with a type");
            return;
        };
        match ClientFrame::try_from(envelope) {
            Ok(ClientFrame::Signal { to, payload }) => self.relay(to, payload),
            Ok(ClientFrame::Commit { epoch, payload }) => self.commit(epoch, payload).await,
            Err(error) => {
                let code = match error {
                    tessera_wire::signal::FrameError::UnknownType(_) => "unknown_type",
                    _ => "malformed_frame",
                };
                self.refuse(code, &error.to_string());
            }
        }
    }

    fn relay(&mut self, to: Uuid, payload: tessera_wire::signal::Payload) {
        let frame = text(&ServerFrame::Signal {
            from: self.endpoint.device,
            member: self.endpoint.member,
            payload,
        });
        match self.state.signals.deliver(self.endpoint.circle, to, frame) {
            Ok(()) => {
                self.state.metrics.frames_relayed.inc();
            }
            Err(DeliveryError::UnknownDevice) => {
                self.refuse("unknown_device", "no such device is online in your circle");
            }
            Err(DeliveryError::PeerUnavailable) => {
                self.state.metrics.refused("peer_unavailable");
                self.send(Outbound::Text(error_frame(
                    "peer_unavailable",
                    "that device does not keep up and was disconnected",
                )));
            }
        }
    }

    async fn commit(&mut self, epoch: u64, payload: tessera_wire::signal::Payload) {
        let accepted = match self
            .state
            .store
            .advance_epoch(self.endpoint.circle, epoch)
            .await
        {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::error!(%error, "sequencer: the store failed");
                self.send(Outbound::Text(error_frame(
                    "internal",
                    "the commit could not be sequenced; retry",
                )));
                return;
            }
        };
        self.state.metrics.commit(accepted);
        if accepted {
            let relay = text(&ServerFrame::Commit {
                from: self.endpoint.device,
                member: self.endpoint.member,
                epoch,
                payload,
            });
            let reached =
                self.state
                    .signals
                    .broadcast(self.endpoint.circle, self.endpoint.device, relay);
            self.state.metrics.frames_relayed.inc_by(reached as u64);
        }
        self.send(Outbound::Text(text(&ServerFrame::CommitResult {
            epoch,
            accepted,
        })));
    }
}

/// Writes queued frames and keepalive pings to the device until cancelled; ends the connection on
/// a failed or slow write. A revocation overtakes everything queued.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Outbound>,
    endpoint: Endpoint,
    ping_every: Duration,
) {
    // Waiting on the tokens is set up once, not per frame.
    let cancelled = endpoint.cancel.cancelled();
    let revoked = endpoint.revoked.cancelled();
    tokio::pin!(cancelled, revoked);
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let farewell = loop {
        let message = tokio::select! {
            biased;
            () = &mut revoked => break Some(text(&ServerFrame::Revoked)),
            () = &mut cancelled => break None,
            next = queue.recv() => match next {
                None => break None,
                Some(Outbound::Text(frame)) => Message::Text(frame),
                Some(Outbound::Close(frame)) => break Some(frame),
            },
            _ = ping.tick() => Message::Ping(Default::default()),
        };
        // No timer per write: a device that stops reading fills its queue and is cancelled, and
        // one that stops answering pings is closed by the reader's idle timeout.
        let written = tokio::select! {
            biased;
            () = &mut revoked => break Some(text(&ServerFrame::Revoked)),
            () = &mut cancelled => break None,
            written = sink.send(message) => written,
        };
        if written.is_err() {
            break None;
        }
    };
    // The last word and a polite close, if the device still reads; one that does not is not waited for.
    if let Some(frame) = farewell {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Text(frame))).await;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(None))).await;
    endpoint.cancel.cancel();
}

/// Reads the device's frames until it leaves, goes silent, is cancelled or loses its session.
async fn read(session: &mut Session, mut stream: SplitStream<WebSocket>) {
    let idle = Duration::from_secs(session.state.config.ws_idle_timeout_secs.max(1));
    let (cancel, revoked) = (
        session.endpoint.cancel.clone(),
        session.endpoint.revoked.clone(),
    );
    let cancelled = cancel.cancelled();
    let revoked_wait = revoked.cancelled();
    tokio::pin!(cancelled, revoked_wait);
    let mut recheck = tokio::time::interval(SESSION_RECHECK);
    recheck.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let silence = tokio::time::sleep(idle);
    tokio::pin!(silence);
    loop {
        tokio::select! {
            () = &mut cancelled => break,
            () = &mut revoked_wait => break,
            () = &mut silence => {
                // The timer is re-armed lazily: hearing from the device only notes the time.
                if last_heard.elapsed() >= idle {
                    session.state.metrics.refused("idle_timeout");
                    break;
                }
                silence.as_mut().reset(last_heard + idle);
            }
            _ = recheck.tick() => {
                let now = session.state.clock.now();
                match session.state.store.session_member(&session.endpoint.session, now).await {
                    Ok(Some(_)) => {}
                    Ok(None) => revoked.cancel(),
                    Err(error) => tracing::warn!(%error, "session re-check failed; will retry"),
                }
            }
            next = stream.next() => {
                last_heard = tokio::time::Instant::now();
                match next {
                    None | Some(Err(_) | Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(frame))) => session.on_text(frame.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        session.refuse("binary_frame", "frames are JSON text");
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
        }
    }
}

/// Serves one device's connection from hello to goodbye.
pub async fn serve(socket: WebSocket, state: AppState, caller: Caller, device: Uuid) {
    let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
    let member = caller.member;
    let endpoint = Endpoint {
        serial: state.signals.next_serial(),
        circle: member.circle,
        member: member.id,
        device,
        session: caller.session_hash,
        outbound,
        cancel: CancellationToken::new(),
        revoked: CancellationToken::new(),
    };
    let (sink, stream) = socket.split();
    let ping_every = Duration::from_secs((state.config.ws_idle_timeout_secs / 3).max(1));
    // One task for both halves: the writer future runs beside the reader (join), not spawned.
    let writer = write(sink, queue, endpoint.clone(), ping_every);
    let refuse_and_close = |code: &'static str, message: &str| {
        state.metrics.refused(code);
        let _ = endpoint.push(Outbound::Close(error_frame(code, message)));
    };

    let epoch = match state.store.circle_epoch(member.circle).await {
        Ok(epoch) => epoch,
        Err(error) => {
            tracing::error!(%error, "signalling: the store failed");
            refuse_and_close(
                "internal",
                "the server cannot serve this connection now; retry",
            );
            writer.await;
            return;
        }
    };
    let per_second =
        NonZeroU32::new(state.config.ws_frames_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1));
    let limits = Limits {
        frame_bytes: state.config.ws_max_frame_bytes,
        frames_per_second: per_second.get(),
        burst: burst.get(),
    };
    let hello = |peers| {
        text(&ServerFrame::Hello {
            member: member.id,
            device,
            peers,
            epoch,
            limits,
        })
    };
    if let Err(error) = state.signals.join(
        endpoint.clone(),
        state.config.ws_connections_per_member,
        &hello,
    ) {
        refuse_and_close("join_refused", &error.to_string());
        writer.await;
        return;
    }
    state.metrics.connections.inc();
    let mut session = Session {
        state: state.clone(),
        endpoint: endpoint.clone(),
        limiter: DefaultDirectRateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
        strikes: 0,
    };
    let presence = |online| {
        text(&ServerFrame::Presence {
            member: member.id,
            device,
            online,
        })
    };
    state
        .signals
        .broadcast(member.circle, device, presence(true));
    tracing::debug!("device connected");

    let reader = async {
        read(&mut session, stream).await;
        if !endpoint.revoked.is_cancelled() {
            endpoint.cancel.cancel();
        }
    };
    tokio::join!(reader, writer);
    if state.signals.leave(device, endpoint.serial) {
        state
            .signals
            .broadcast(member.circle, device, presence(false));
    }
    state.metrics.connections.dec();
    tracing::debug!("device disconnected");
}
