//! The signalling client: one WebSocket to the server (`/api/v1/ws`), reopened after every failure
//! with exponential backoff and full jitter, until the session is revoked or the client is dropped.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use tessera_wire::signal::{FrameErrorCode, ServerFrame, WS_PATH};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use url::Url;
use uuid::Uuid;

/// Exponential backoff with full jitter: the n-th wait is uniform in `[0, min(cap, base·2ⁿ)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 0.5 s doubling up to 30 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Waits that start at `base` and never exceed `cap`.
    #[must_use]
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait (before jitter).
    #[must_use]
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait: random in `[0, ceiling]`; the ceiling then doubles.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::thread_rng().r#gen::<f64>())
    }

    /// After a connection that worked: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// What the signalling client reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum SignalEvent {
    /// A connection opened; its first frame, the `hello`, is given.
    Connected(ServerFrame),
    /// A frame from the server. After `revoked`, or an `error` that replaced this connection (the
    /// same device connected again elsewhere), the client stops, so that two processes do not evict
    /// each other in turn.
    Frame(ServerFrame),
    /// The connection dropped; the client reconnects after `retry_in`.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
    /// The server refused the session (logged out, expired, or the member revoked): the client
    /// stopped.
    SessionRefused,
}

/// The `ws://` or `wss://` URL of the signalling endpoint of an origin.
///
/// # Errors
/// When the origin is not http(s).
pub fn signalling_url(origin: &Url, device: Uuid) -> Result<Url, String> {
    let scheme = match origin.scheme() {
        "http" => "ws",
        "https" => "wss",
        other => return Err(format!("unsupported origin scheme {other}")),
    };
    let mut url = origin.join(WS_PATH).map_err(|e| e.to_string())?;
    url.set_scheme(scheme)
        .map_err(|()| "cannot set the scheme".to_owned())?;
    url.query_pairs_mut()
        .append_pair("device", &device.to_string());
    Ok(url)
}

/// A signalling connection that keeps itself open.
#[derive(Debug)]
pub struct SignalClient {
    outgoing: mpsc::Sender<String>,
    events: mpsc::Receiver<SignalEvent>,
    task: JoinHandle<()>,
}

impl Drop for SignalClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Frames waiting to be sent; past this, [`SignalClient::send`] waits. Twice the most frames the
/// engine lets out at once (its pacer's `MAX_BURST`).
const OUTGOING_QUEUE: usize = 128;

enum Ended {
    /// The server refused the session.
    SessionRefused,
    /// The server revoked the member or replaced this connection: its last frame says so.
    Final,
    Dropped(String),
    Closed,
}

/// A connection that stayed up this long resets the backoff; one that drops sooner does not, so
/// that a server that accepts and closes at once is not hammered.
const STABLE_AFTER: Duration = Duration::from_secs(60);

impl SignalClient {
    /// Starts connecting as `device` with the bearer `session`, reconnecting with `backoff`.
    #[must_use]
    pub fn start(origin: Url, session: String, device: Uuid, backoff: Backoff) -> SignalClient {
        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_QUEUE);
        let (events_tx, events) = mpsc::channel(256);
        let task = tokio::spawn(run(
            origin,
            session,
            device,
            backoff,
            outgoing_rx,
            events_tx,
        ));
        SignalClient {
            outgoing,
            events,
            task,
        }
    }

    /// Queues a client frame (JSON text) for the server; frames queued while disconnected go out
    /// after the next connection opens.
    ///
    /// # Errors
    /// When the client has stopped (revoked).
    pub async fn send(&self, frame: String) -> Result<(), String> {
        self.outgoing
            .send(frame)
            .await
            .map_err(|_| "the signalling client has stopped".to_owned())
    }

    /// Queues a client frame without waiting: false when the queue is full (the server has been
    /// away for a while) or the client has stopped; the frame is then dropped.
    pub fn try_send(&self, frame: String) -> bool {
        self.outgoing.try_send(frame).is_ok()
    }

    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn next_event(&mut self) -> Option<SignalEvent> {
        self.events.recv().await
    }
}

async fn run(
    origin: Url,
    session: String,
    device: Uuid,
    mut backoff: Backoff,
    mut outgoing: mpsc::Receiver<String>,
    events: mpsc::Sender<SignalEvent>,
) {
    loop {
        let ended = match connect(&origin, &session, device).await {
            Ok(stream) => {
                let opened = tokio::time::Instant::now();
                let ended = pump(stream, &mut outgoing, &events).await;
                if opened.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                ended
            }
            Err(ended) => ended,
        };
        let reason = match ended {
            Ended::SessionRefused => {
                let _ = events.send(SignalEvent::SessionRefused).await;
                return;
            }
            Ended::Final | Ended::Closed => return,
            Ended::Dropped(reason) => reason,
        };
        let retry_in = backoff.next_wait();
        if events
            .send(SignalEvent::Disconnected { reason, retry_in })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(retry_in).await;
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(origin: &Url, session: &str, device: Uuid) -> Result<Stream, Ended> {
    let url = signalling_url(origin, device).map_err(Ended::Dropped)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Ended::Dropped(e.to_string()))?;
    let bearer = format!("Bearer {session}")
        .parse()
        .map_err(|_| Ended::Dropped("the session is not a valid header".into()))?;
    request.headers_mut().insert("authorization", bearer);
    match tokio_tungstenite::connect_async(request).await {
        Ok((stream, _)) => Ok(stream),
        // No valid session: reconnecting cannot help.
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) if response.status() == 401 => {
            Err(Ended::SessionRefused)
        }
        Err(error) => Err(Ended::Dropped(error.to_string())),
    }
}

/// Moves frames both ways until the connection ends.
async fn pump(
    stream: Stream,
    outgoing: &mut mpsc::Receiver<String>,
    events: &mpsc::Sender<SignalEvent>,
) -> Ended {
    let (mut sink, mut source) = stream.split();
    let mut greeted = false;
    loop {
        tokio::select! {
            frame = outgoing.recv() => match frame {
                None => return Ended::Closed,
                Some(text) => {
                    if let Err(error) = sink.send(Message::text(text)).await {
                        return Ended::Dropped(error.to_string());
                    }
                }
            },
            message = source.next() => match message {
                None => return Ended::Dropped("the server closed the connection".into()),
                Some(Err(error)) => return Ended::Dropped(error.to_string()),
                Some(Ok(Message::Text(text))) => {
                    let Ok(frame) = serde_json::from_str::<ServerFrame>(text.as_str()) else {
                        continue;
                    };
                    let last = matches!(
                        frame,
                        ServerFrame::Revoked
                            | ServerFrame::SessionEnded
                            | ServerFrame::Error { code: FrameErrorCode::Replaced, .. }
                    );
                    let event = match frame {
                        hello @ ServerFrame::Hello { .. } if !greeted => {
                            greeted = true;
                            SignalEvent::Connected(hello)
                        }
                        other => SignalEvent::Frame(other),
                    };
                    if events.send(event).await.is_err() {
                        return Ended::Closed;
                    }
                    if last {
                        return Ended::Final;
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    return Ended::Dropped("the server closed the connection".into());
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_below_the_ceiling() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = backoff.ceiling();
            let wait = backoff.next_wait();
            assert!(wait <= ceiling, "{wait:?} > {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(
            ceilings,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let mut waits = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut backoff = Backoff::default();
            waits.insert(backoff.next_wait().as_micros());
        }
        assert!(waits.len() > 10, "waits are not spread: {waits:?}");
    }

    #[test]
    fn the_signalling_url_follows_the_origin() {
        let device = Uuid::nil();
        let url = signalling_url(
            &Url::parse("https://tessera.example.org").expect("url"),
            device,
        )
        .expect("url");
        assert_eq!(
            url.as_str(),
            "wss://tessera.example.org/api/v1/ws?device=00000000-0000-0000-0000-000000000000"
        );
        let url = signalling_url(&Url::parse("http://localhost:8080/").expect("url"), device)
            .expect("url");
        assert!(url.as_str().starts_with("ws://localhost:8080/api/v1/ws?"));
        assert!(signalling_url(&Url::parse("ftp://x").expect("url"), device).is_err());
    }
}
