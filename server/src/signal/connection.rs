//! One device's signalling connection as an actor: its frames read and acted on (relays, commits),
//! what others send it queued (bounded) for its writer, both run together in one task over the
//! socket layer ([`super::io`]). Bad frames get an error frame; abuse, a slow reader, silence,
//! revocation or the server's shutdown end the connection.

use std::num::NonZeroU32;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::SplitStream;
use governor::{DefaultDirectRateLimiter, Quota};
use tessera_wire::signal::{ClientFrame, Envelope, FrameErrorCode, Limits, ServerFrame};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::{DeliveryError, Endpoint, Outbound};
use super::io::{Socket, shut, write};
use crate::auth::Caller;
use crate::state::AppState;

/// Frames waiting for a device; past this, the device is too slow and is disconnected.
pub const OUTBOUND_QUEUE: usize = 256;
/// Serialises a server frame once.
pub(super) fn text(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default())
}

pub(crate) fn error_frame(code: FrameErrorCode, message: &str) -> Utf8Bytes {
    text(&ServerFrame::Error {
        code,
        message: message.to_owned(),
    })
}

/// A device's text frame as the server reads it, or the refusal's code and message.
///
/// # Errors
/// Not a JSON object with a type ([`FrameErrorCode::InvalidJson`]), an unknown type, or a known
/// type without its fields.
pub fn parse_client_frame(frame: &str) -> Result<ClientFrame, (FrameErrorCode, String)> {
    // Only objects: serde would also read a struct from an array of its fields.
    let envelope = frame
        .trim_start()
        .starts_with('{')
        .then(|| serde_json::from_str::<Envelope>(frame).ok())
        .flatten()
        .ok_or_else(|| {
            (
                FrameErrorCode::InvalidJson,
                "the frame is not a JSON object with a type".to_owned(),
            )
        })?;
    ClientFrame::try_from(envelope).map_err(|error| {
        let code = match error {
            tessera_wire::signal::FrameError::UnknownType(_) => FrameErrorCode::UnknownType,
            _ => FrameErrorCode::MalformedFrame,
        };
        (code, error.to_string())
    })
}

/// The reading half of a connection: what it needs to take the device's frames (the router, its
/// limits, its strikes).
struct Reader {
    state: AppState,
    endpoint: Endpoint,
    limiter: DefaultDirectRateLimiter,
    strikes: u32,
    /// Made at the first relay (an idle connection does not pay for it).
    signal_frame: Option<SignalFrame>,
}

/// The frame of a signal this device relays, serialised once around a mark where each payload
/// goes: the sender's ids are the same in every one, and serialising them (UUIDs, escaped keys)
/// was most of the cost of a relay.
pub struct SignalFrame {
    json: String,
    mark_at: usize,
}

impl SignalFrame {
    /// A JSON string no payload is compared with: it is only found, once, in the template.
    const MARK: &'static str = r#""\u0000payload\u0000""#;

    /// The template for signals from `from`, a device of `member`.
    #[must_use]
    pub fn new(from: Uuid, member: Uuid) -> SignalFrame {
        let mark = serde_json::value::RawValue::from_string(Self::MARK.to_owned())
            .unwrap_or_else(|_| unreachable!("the mark is a JSON string"));
        let json = serde_json::to_string(&ServerFrame::Signal {
            from,
            member,
            payload: mark,
        })
        .unwrap_or_default();
        let mark_at = json.find(Self::MARK).unwrap_or(json.len());
        SignalFrame { json, mark_at }
    }

    /// The frame carrying `payload` (the same text `ServerFrame::Signal` serialises to).
    #[must_use]
    pub fn around(&self, payload: &serde_json::value::RawValue) -> Utf8Bytes {
        let (before, after) = self.json.split_at(self.mark_at);
        let after = after.get(Self::MARK.len()..).unwrap_or_default();
        let mut frame = String::with_capacity(before.len() + payload.get().len() + after.len());
        frame.push_str(before);
        frame.push_str(payload.get());
        frame.push_str(after);
        Utf8Bytes::from(frame)
    }
}

impl Reader {
    /// Queues a frame for this device; a full queue ends the connection.
    fn send(&self, frame: Outbound) {
        if self.endpoint.push(frame).is_err() {
            self.state.metrics.refused("slow_consumer");
        }
    }

    /// Refuses a frame; past the allowed number of refusals the connection is closed for abuse.
    fn refuse(&mut self, code: FrameErrorCode, message: &str) {
        self.state.metrics.refused(code.as_str());
        self.strikes += 1;
        if self.strikes > self.state.config.ws_max_refusals {
            self.state.metrics.refused(FrameErrorCode::Abuse.as_str());
            self.send(Outbound::close(error_frame(
                FrameErrorCode::Abuse,
                "too many refused frames; the connection is closed",
            )));
        } else {
            self.send(Outbound::text(error_frame(code, message)));
        }
    }

    async fn on_text(&mut self, frame: &str) {
        if self.limiter.check().is_err() {
            self.refuse(
                FrameErrorCode::RateLimited,
                "too many frames per second; slow down",
            );
            return;
        }
        if frame.len() > self.state.config.ws_max_frame_bytes {
            self.refuse(
                FrameErrorCode::FrameTooLarge,
                "the frame is larger than the limit",
            );
            return;
        }
        match parse_client_frame(frame) {
            Ok(ClientFrame::Signal { to, payload }) => self.relay(to, payload),
            Ok(ClientFrame::Commit { slot, payload }) => self.commit(slot, payload).await,
            Err((code, message)) => self.refuse(code, &message),
        }
    }

    fn relay(&mut self, to: Uuid, payload: tessera_wire::signal::Payload) {
        let (from, member) = (self.endpoint.device, self.endpoint.member);
        let frame = self
            .signal_frame
            .get_or_insert_with(|| SignalFrame::new(from, member))
            .around(&payload);
        match self.state.signals.deliver(self.endpoint.circle, to, frame) {
            Ok(()) => {
                self.state.metrics.frames_relayed.inc();
            }
            Err(DeliveryError::UnknownDevice) => {
                self.refuse(
                    FrameErrorCode::UnknownDevice,
                    "no such device is online in your circle",
                );
            }
            Err(DeliveryError::PeerUnavailable) => {
                self.state
                    .metrics
                    .refused(FrameErrorCode::PeerUnavailable.as_str());
                self.send(Outbound::text(error_frame(
                    FrameErrorCode::PeerUnavailable,
                    "that device does not keep up and was disconnected",
                )));
            }
        }
    }

    async fn commit(&mut self, slot: u64, payload: tessera_wire::signal::Payload) {
        let accepted = match self
            .state
            .store
            .claim_slot(self.endpoint.circle, slot)
            .await
        {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::error!(%error, "sequencer: the store failed");
                self.send(Outbound::text(error_frame(
                    FrameErrorCode::Internal,
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
                slot,
                payload,
            });
            let reached =
                self.state
                    .signals
                    .broadcast(self.endpoint.circle, self.endpoint.device, relay);
            self.state.metrics.frames_relayed.inc_by(reached as u64);
        }
        self.send(Outbound::text(text(&ServerFrame::CommitResult {
            slot,
            accepted,
        })));
    }
}

/// Reads the device's frames until it leaves, goes silent, is cancelled or loses its reader.
async fn read(reader: &mut Reader, mut stream: SplitStream<Socket>) -> SplitStream<Socket> {
    let idle = Duration::from_secs(reader.state.config.ws_idle_timeout_secs.max(1));
    let (cancel, revoked) = (
        reader.endpoint.cancel.clone(),
        reader.endpoint.revoked.clone(),
    );
    let cancelled = cancel.cancelled();
    let revoked_wait = revoked.cancelled();
    tokio::pin!(cancelled, revoked_wait);
    let mut recheck = tokio::time::interval(Duration::from_secs(
        reader.state.config.ws_session_recheck_secs.max(1),
    ));
    recheck.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let silence = tokio::time::sleep(idle);
    tokio::pin!(silence);
    loop {
        // The device's frames first: while they keep coming, the tokens are checked after each
        // (an atomic load) rather than polled as futures, and the timers wait for a pause.
        tokio::select! {
            biased;
            next = stream.next() => {
                last_heard = tokio::time::Instant::now();
                match next {
                    None | Some(Err(_) | Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(frame))) => reader.on_text(frame.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        reader.refuse(FrameErrorCode::BinaryFrame, "frames are JSON text");
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                }
                if cancel.is_cancelled() || revoked.is_cancelled() {
                    break;
                }
            }
            () = &mut cancelled => break,
            () = &mut revoked_wait => break,
            () = &mut silence => {
                // The timer is re-armed lazily: hearing from the device only notes the time.
                if last_heard.elapsed() >= idle {
                    reader.state.metrics.refused("idle_timeout");
                    break;
                }
                silence.as_mut().reset(last_heard + idle);
            }
            _ = recheck.tick() => {
                let now = reader.state.clock.now();
                match reader.state.store.session_member(&reader.endpoint.session, now).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        // Expired, or ended in a way the router missed: say whether the member
                        // was revoked too, so that a device never reports an expiry as one.
                        let member = reader.state.store.member(reader.endpoint.member).await;
                        if matches!(member, Ok(None)) {
                            reader
                                .endpoint
                                .member_revoked
                                .store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        revoked.cancel();
                    }
                    Err(error) => tracing::warn!(%error, "session re-check failed; will retry"),
                }
            }
        }
    }
    stream
}

/// Serves one device's connection from hello to goodbye.
pub async fn serve(socket: Socket, state: AppState, caller: Caller, device: Uuid) {
    let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
    let member = caller.member;
    let endpoint = Endpoint {
        serial: state.signals.next_serial(),
        circle: member.circle,
        member: member.id,
        device,
        session: caller.session_hash,
        outbound,
        // The server's shutdown cancels it too.
        cancel: state.shutdown.child_token(),
        revoked: CancellationToken::new(),
        member_revoked: std::sync::Arc::default(),
    };
    let (sink, stream) = socket.split();
    let ping_every = Duration::from_secs((state.config.ws_idle_timeout_secs / 3).max(1));
    // One task for both halves: the writer future runs beside the reader (join), not spawned.
    let writer = write(sink, queue, endpoint.clone(), ping_every);
    let refuse_and_close = |code: FrameErrorCode, message: &str| {
        state.metrics.refused(code.as_str());
        let _ = endpoint.push(Outbound::close(error_frame(code, message)));
    };

    let slot = match state.store.next_slot(member.circle).await {
        Ok(slot) => slot,
        Err(error) => {
            tracing::error!(%error, "signalling: the store failed");
            refuse_and_close(
                FrameErrorCode::Internal,
                "the server cannot serve this connection now; retry",
            );
            shut(stream, writer.await).await;
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
            slot,
            limits,
        })
    };
    if let Err(error) = state.signals.join(
        endpoint.clone(),
        state.config.ws_connections_per_member,
        &hello,
    ) {
        refuse_and_close(FrameErrorCode::JoinRefused, &error.to_string());
        shut(stream, writer.await).await;
        return;
    }
    state.metrics.connections.inc();
    let mut reader = Reader {
        state: state.clone(),
        endpoint: endpoint.clone(),
        limiter: DefaultDirectRateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
        strikes: 0,
        signal_frame: None,
    };
    let announce = |online| {
        state
            .presence
            .announce(&state.signals, (member.circle, member.id), device, online);
    };
    announce(true);
    tracing::debug!("device connected");

    let reader = async {
        let stream = read(&mut reader, stream).await;
        if !endpoint.revoked.is_cancelled() {
            endpoint.cancel.cancel();
        }
        stream
    };
    let (stream, sink) = tokio::join!(reader, writer);
    shut(stream, sink).await;
    if state
        .signals
        .leave(endpoint.circle, device, endpoint.serial)
    {
        announce(false);
    }
    state.metrics.connections.dec();
    tracing::debug!("device disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_signal_is_the_frame_serde_makes() {
        let (from, member) = (Uuid::new_v4(), Uuid::new_v4());
        let frame = SignalFrame::new(from, member);
        for payload in [
            r#"{"sdp":"v=0\r\n","nested":[1,{"x":null}]}"#,
            r#""\u0000payload\u0000""#,
            "[]",
            r#""é€""#,
        ] {
            let payload =
                serde_json::value::RawValue::from_string(payload.to_owned()).expect("json");
            let expected = text(&ServerFrame::Signal {
                from,
                member,
                payload: payload.clone(),
            });
            assert_eq!(frame.around(&payload).as_str(), expected.as_str());
        }
    }
}
