//! The native device: a thin tokio driver around the sans-IO engine. It moves bytes and does the
//! IO the engine asks for: the signalling connection, the circle directory and ICE server fetches,
//! one UDP socket carrying every WebRTC link, user commands and time. Each of the engine's turns
//! is written to the local store (by the writer, `crate::writer`, while the engine goes on) before
//! its outputs are acted on. The device's policy (what to retry and when, what to keep, why it
//! stops) is the engine's.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use tessera_engine::changes::{Change, MessageRef};
use tessera_engine::renewal::RenewalOutcome;
use tessera_engine::{
    DeviceView, Engine, EngineError, Event, IceOutcome, LinkCommand, Output, StopReason,
    StoredFile, unix_ms,
};
use tessera_wire::{ErrorCode, MemberInfo, SessionGranted};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::api::{ApiClient, ApiClientError};
use crate::files::{FileDir, FileDone, FileWorker};
use crate::gather::{IcePolicy, IceServer, IceUrl, parse_ice_url};
use crate::rtc::{LinkEvent, Links};
use crate::signal::{Backoff, SignalClient, SignalEvent};
use crate::store::{DeviceStore, HistoryPage, StoreError, TurnError};
use crate::writer::Writer;

/// Why the device stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The local store failed: the device stops rather than act on what it could not save.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine's state could not be encoded.
    #[error("the engine failed: {0}")]
    Engine(#[from] EngineError),
    /// The UDP socket for peer links failed.
    #[error("the peer-link socket failed: {0}")]
    Socket(#[from] std::io::Error),
    /// Relay-only links were asked for, and there is no TURN server to relay through.
    #[error("relay-only links need a TURN server: {0}")]
    NoRelay(String),
}

impl From<TurnError> for DeviceError {
    fn from(error: TurnError) -> DeviceError {
        match error {
            TurnError::Engine(e) => DeviceError::Engine(e),
            TurnError::Store(e) => DeviceError::Store(e),
        }
    }
}

/// Why the device stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop.
    Requested,
    /// The engine stopped it ([`Event::Stopped`]): revoked, session ended, removed or replaced.
    By(StopReason),
}

/// What the device reports to its user interface.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Update {
    /// Something the engine reported (already in the local store).
    Engine(Event),
    /// The signalling connection opened.
    Connected,
    /// The signalling connection dropped; peer links go on.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// When the next attempt is made.
        retry_in: Duration,
    },
    /// A link to a peer device opened.
    LinkUp(Uuid),
    /// A link to a peer device closed.
    LinkDown(Uuid),
}

/// The device as its user interface sees it: the engine's view, and the address a TURN server
/// relays for this device, once allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The engine's view of the device and its group.
    pub view: DeviceView,
    /// The relayed address, once allocated.
    pub relayed: Option<SocketAddr>,
}

impl Status {
    /// The group's devices, this one included: device → member.
    #[must_use]
    pub fn group(&self) -> BTreeMap<Uuid, Uuid> {
        self.view
            .devices
            .iter()
            .map(|d| (d.device, d.member))
            .collect()
    }

    /// The group's other devices online at the server: device → member.
    #[must_use]
    pub fn online(&self) -> BTreeMap<Uuid, Uuid> {
        self.others()
            .filter(|d| d.online)
            .map(|d| (d.device, d.member))
            .collect()
    }

    /// The peer devices with a link up.
    #[must_use]
    pub fn links(&self) -> Vec<Uuid> {
        self.others()
            .filter(|d| d.linked)
            .map(|d| d.device)
            .collect()
    }

    /// Messages waiting for an acknowledgement, per other device of the group.
    #[must_use]
    pub fn waiting(&self) -> BTreeMap<Uuid, usize> {
        self.others().map(|d| (d.device, d.waiting)).collect()
    }

    fn others(&self) -> impl Iterator<Item = &tessera_engine::GroupDeviceView> {
        self.view.devices.iter().filter(|d| !d.own)
    }
}

enum Command {
    Send(
        String,
        Option<MessageRef>,
        oneshot::Sender<Result<Uuid, EngineError>>,
    ),
    Change(
        MessageRef,
        Change,
        oneshot::Sender<Result<Uuid, EngineError>>,
    ),
    SendFile(StoredFile, oneshot::Sender<Result<Uuid, EngineError>>),
    DeleteFile(Uuid, oneshot::Sender<Result<(), EngineError>>),
    SetName(String, oneshot::Sender<Result<(), EngineError>>),
    Status(oneshot::Sender<Status>),
    Stop,
}

/// Where the device reaches the server and binds its peer-link socket.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The server's API client, holding the session.
    pub api: ApiClient,
    /// The local address the WebRTC links use (their host candidate).
    pub bind: IpAddr,
    /// The signalling client's reconnection backoff.
    pub backoff: Backoff,
    /// Offer peers only a TURN-relayed address, never this device's own.
    pub relay_only: bool,
}

/// How long a device waits for the server's ICE servers.
const ICE_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The ICE servers the server offers (`GET /api/v1/turn`), addresses resolved, and what came of
/// asking (see [`offered_ice`]).
///
/// # Errors
/// [`DeviceError::NoRelay`] when `relay_only` and no TURN server can be used.
pub async fn ice_policy(
    api: &ApiClient,
    relay_only: bool,
) -> Result<(IcePolicy, IceOutcome), DeviceError> {
    let (servers, outcome) = offered_ice(api).await;
    if relay_only && !servers.iter().any(|s| matches!(s, IceServer::Turn { .. })) {
        return Err(DeviceError::NoRelay(
            "the server offers none this client can use (a turn: URL over UDP)".into(),
        ));
    }
    Ok((
        IcePolicy {
            servers,
            relay_only,
        },
        outcome,
    ))
}

/// The ICE servers the server offers, addresses resolved (none when it offers none or cannot be
/// reached: links then offer the host address only), and the outcome the engine decides the
/// next fetch by: unavailable when the server did not answer or a `turn:` host did not resolve.
pub async fn offered_ice(api: &ApiClient) -> (Vec<IceServer>, IceOutcome) {
    // A server that does not answer must not hold the device (and its links) back.
    let offered = match tokio::time::timeout(ICE_FETCH_TIMEOUT, api.turn()).await {
        Ok(Ok(offered)) => offered,
        Ok(Err(error)) if error.code() == Some(ErrorCode::TurnNotConfigured) => {
            return (Vec::new(), IceOutcome::NotConfigured);
        }
        Ok(Err(error)) => {
            tracing::info!(%error, "no ICE servers for now");
            return (Vec::new(), IceOutcome::Unavailable);
        }
        Err(_) => {
            tracing::info!("no ICE servers for now: the server did not answer in time");
            return (Vec::new(), IceOutcome::Unavailable);
        }
    };
    let mut servers = Vec::new();
    let mut unresolved_turn = false;
    for url in &offered.urls {
        let Some(parsed) = parse_ice_url(url) else {
            tracing::info!(
                url,
                "an ICE server this client cannot use (TLS or TCP), skipped"
            );
            continue;
        };
        let (IceUrl::Stun { host, port } | IceUrl::Turn { host, port }) = &parsed;
        let Some(address) = tokio::net::lookup_host((host.as_str(), *port))
            .await
            .ok()
            .and_then(|mut found| found.next())
        else {
            tracing::warn!(url, "an ICE server's host does not resolve, skipped");
            unresolved_turn |= matches!(parsed, IceUrl::Turn { .. });
            continue;
        };
        servers.push(match parsed {
            IceUrl::Turn { .. } => IceServer::Turn {
                server: address,
                username: offered.username.clone(),
                credential: offered.credential.clone(),
            },
            IceUrl::Stun { .. } => IceServer::Stun(address),
        });
    }
    let outcome = if servers.iter().any(|s| matches!(s, IceServer::Turn { .. })) {
        IceOutcome::Offered {
            relay_ttl: Some(Duration::from_secs(offered.ttl_secs)),
        }
    } else if unresolved_turn {
        IceOutcome::Unavailable
    } else {
        IceOutcome::Offered { relay_ttl: None }
    };
    (servers, outcome)
}

/// A running device: send it commands, read its updates; dropping it stops the device.
#[derive(Debug)]
pub struct DeviceHandle {
    commands: mpsc::Sender<Command>,
    files: FileDir,
    updates: mpsc::UnboundedReceiver<Update>,
    task: Option<JoinHandle<Result<Stopped, DeviceError>>>,
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

const STOPPED: &str = "the device has stopped";

impl DeviceHandle {
    /// Starts `engine` (fresh or restored) with its store, connecting as described.
    ///
    /// # Errors
    /// When the peer-link socket cannot be bound.
    pub async fn start(
        mut engine: Engine,
        store: DeviceStore,
        files: FileDir,
        connection: Connection,
    ) -> Result<DeviceHandle, DeviceError> {
        let socket = UdpSocket::bind(SocketAddr::new(connection.bind, 0)).await?;
        let local = socket.local_addr()?;
        let (ice, outcome) = ice_policy(&connection.api, connection.relay_only).await?;
        engine.handle_ice_servers(Instant::now(), outcome);
        let session = connection.api.session().unwrap_or_default().to_owned();
        let signal = SignalClient::start(
            connection.api.origin().clone(),
            session,
            engine.device(),
            connection.backoff.clone(),
        );
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let (directory_tx, directory_rx) = mpsc::channel(4);
        let (ice_tx, ice_rx) = mpsc::channel(1);
        let (renewal_tx, renewal_rx) = mpsc::channel(2);
        let (history_tx, history_rx) = mpsc::channel(4);
        let (file_worker, file_done) = FileWorker::start(files.clone());
        let driver = Driver {
            files: file_worker,
            engine,
            writer: Writer::start(store.clone()),
            store,
            api: connection.api,
            links: Links::with_ice(local, &ice, Instant::now()),
            socket,
            signal: Some(signal),
            backoff: connection.backoff,
            updates: updates_tx,
            directory_tx,
            ice_tx,
            renewal_tx,
            history_tx,
            replies: Vec::new(),
        };
        let task = tokio::spawn(driver.run(
            commands_rx,
            directory_rx,
            ice_rx,
            (renewal_rx, history_rx, file_done),
        ));
        Ok(DeviceHandle {
            commands,
            files,
            updates,
            task: Some(task),
        })
    }

    /// Sends `text` to the circle; its id, once the message is in the outbox (and stored).
    ///
    /// # Errors
    /// The engine's refusal (not in the group yet, too large), or the device stopped.
    pub async fn send_text(&self, text: &str) -> Result<Uuid, String> {
        self.send_reply(text, None).await
    }

    /// Sends `text` to the circle as an answer to `reply_to` (none: a message of its own); its
    /// id, once the message is in the outbox (and stored).
    ///
    /// # Errors
    /// The engine's refusal (not in the group yet, too large), or the device stopped.
    pub async fn send_reply(
        &self,
        text: &str,
        reply_to: Option<MessageRef>,
    ) -> Result<Uuid, String> {
        self.ask(|reply| Command::Send(text.to_owned(), reply_to, reply))
            .await?
            .map_err(|e| e.to_string())
    }

    /// Reacts to, edits or deletes the message `target` for the circle; the change's id, once it
    /// is in the outbox (and stored).
    ///
    /// # Errors
    /// The engine's refusal (a malformed reaction, an empty edit, another member's message, not
    /// in the group yet), or the device stopped.
    pub async fn change_message(&self, target: MessageRef, change: Change) -> Result<Uuid, String> {
        self.ask(|reply| Command::Change(target, change, reply))
            .await?
            .map_err(|e| e.to_string())
    }

    /// Shares the file at `path` with the circle: stores a copy in the data directory (telling
    /// `progress` the bytes copied), then offers it; its id once the offer is in the outbox (and
    /// stored). The content goes to each device that asks for it while this device runs.
    ///
    /// # Errors
    /// The file cannot be read or stored, the engine's refusal (not in the group yet, over the
    /// cap, a name that cannot be sent), or the device stopped.
    pub async fn send_file(
        &self,
        path: &std::path::Path,
        progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<Uuid, String> {
        let (files, path) = (self.files.clone(), path.to_owned());
        let stored = tokio::task::spawn_blocking(move || files.store(&path, progress))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let id = stored.id;
        let sent = self
            .ask(|reply| Command::SendFile(stored, reply))
            .await
            .and_then(|r| r.map_err(|e| e.to_string()));
        if sent.is_err() {
            let _ = std::fs::remove_file(self.files.path(id));
        }
        sent
    }

    /// Deletes a file from this device (its message stays).
    ///
    /// # Errors
    /// The engine's refusal (no such file), or the device stopped.
    pub async fn delete_file(&self, id: Uuid) -> Result<(), String> {
        self.ask(|reply| Command::DeleteFile(id, reply))
            .await?
            .map_err(|e| e.to_string())
    }

    /// Sets this member's display name, shared inside the group only.
    ///
    /// # Errors
    /// The engine's refusal, or the device stopped.
    pub async fn set_display_name(&self, name: &str) -> Result<(), String> {
        self.ask(|reply| Command::SetName(name.to_owned(), reply))
            .await?
            .map_err(|e| e.to_string())
    }

    /// The device's current status.
    ///
    /// # Errors
    /// When the device stopped.
    pub async fn status(&self) -> Result<Status, String> {
        self.ask(Command::Status).await
    }

    /// Sends the command `make` builds around a reply channel and waits for the reply.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| STOPPED.to_owned())?;
        answer.await.map_err(|_| STOPPED.to_owned())
    }

    /// The next update; `None` once the device stopped and every update was read.
    pub async fn next_update(&mut self) -> Option<Update> {
        self.updates.recv().await
    }

    /// Stops the device (its state is already stored) and says why it stopped.
    ///
    /// # Errors
    /// When the device had stopped on an error.
    pub async fn stop(mut self) -> Result<Stopped, DeviceError> {
        let _ = self.commands.send(Command::Stop).await;
        self.finished().await
    }

    /// Waits until the device stops by itself (revoked, replaced, or an error).
    ///
    /// # Errors
    /// When the device stopped on an error.
    pub async fn finished(&mut self) -> Result<Stopped, DeviceError> {
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(Stopped::Requested)),
            None => Ok(Stopped::Requested),
        }
    }
}

/// How many datagrams (or commands) that are ready at once are fed to the engine before it
/// settles: under load, one write covers a batch instead of each packet. Smaller than
/// [`COMMAND_QUEUE`], so a full queue is served in more than one batch.
const BATCH: usize = 128;

/// Commands of the user interface waiting for the device; past this, senders wait.
const COMMAND_QUEUE: usize = 256;

/// The largest datagram read from the socket (WebRTC keeps under the path MTU).
const DATAGRAM: usize = 2048;

/// The circle directory, or why it could not be fetched.
type Fetched = Result<Vec<MemberInfo>, ApiClientError>;

/// Fresh ICE servers, and what came of asking.
type IceRenewal = (Vec<IceServer>, IceOutcome);

/// A step of renewing the session with the device key, as the server answered it.
enum RenewalStep {
    /// The ceremony id to sign (`POST /session/renew/start`).
    Ceremony(Result<String, ApiClientError>),
    /// The new session (`POST /session/renew`).
    Granted(Result<SessionGranted, ApiClientError>),
}

/// A page of the history read for another device of this member: the device, the rows and how
/// many are older than the ask's start.
type HistoryRead = (Uuid, Result<HistoryPage, StoreError>);

struct Driver {
    engine: Engine,
    /// The thread doing the engine's file IO.
    files: FileWorker,
    store: DeviceStore,
    api: ApiClient,
    links: Links,
    socket: UdpSocket,
    /// The signalling connection; none once it ended, until a renewed session starts another.
    signal: Option<SignalClient>,
    backoff: Backoff,
    updates: mpsc::UnboundedSender<Update>,
    directory_tx: mpsc::Sender<Fetched>,
    ice_tx: mpsc::Sender<IceRenewal>,
    renewal_tx: mpsc::Sender<RenewalStep>,
    history_tx: mpsc::Sender<HistoryRead>,
    /// Answers to commands of the user interface, sent once the turn they changed is stored.
    replies: Vec<Reply>,
    /// The engine's writes, and what waits for each: a turn's outputs, answers to commands.
    writer: Writer<Durable>,
}

/// What waits for the engine's writes before it happens.
enum Durable {
    /// A turn's outputs.
    Outputs(Vec<Output>),
    /// Answers to the commands taken before.
    Replies(Vec<Reply>),
}

/// An answer to a command, held until the engine's state it reports on is written.
enum Reply {
    Sent(
        oneshot::Sender<Result<Uuid, EngineError>>,
        Result<Uuid, EngineError>,
    ),
    Done(
        oneshot::Sender<Result<(), EngineError>>,
        Result<(), EngineError>,
    ),
}

impl Reply {
    fn send(self) {
        // The interface may have stopped waiting; the command took effect all the same.
        match self {
            Reply::Sent(reply, answer) => drop(reply.send(answer)),
            Reply::Done(reply, answer) => drop(reply.send(answer)),
        }
    }
}

/// The next event of the signalling connection, or never while there is none.
async fn next_signal(signal: &mut Option<SignalClient>) -> Option<SignalEvent> {
    match signal {
        Some(client) => client.next_event().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut directory: mpsc::Receiver<Fetched>,
        mut ice: mpsc::Receiver<IceRenewal>,
        (mut renewals, mut history, mut file_done): (
            mpsc::Receiver<RenewalStep>,
            mpsc::Receiver<HistoryRead>,
            mpsc::UnboundedReceiver<FileDone>,
        ),
    ) -> Result<Stopped, DeviceError> {
        let mut buffer = vec![0u8; DATAGRAM];
        loop {
            self.settle().await?;
            if let Some(reason) = self.engine.stopped() {
                self.finish().await?;
                return Ok(Stopped::By(reason));
            }
            let wake = [self.engine.poll_timeout(), self.links.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                received = self.socket.recv_from(&mut buffer) => {
                    let (length, source) = received?;
                    self.links.handle_datagram(Instant::now(), source, &buffer[..length]);
                    // Take what else has arrived before settling: one write for the batch.
                    for _ in 1..BATCH {
                        let Ok((length, source)) = self.socket.try_recv_from(&mut buffer) else {
                            break;
                        };
                        self.links.handle_datagram(Instant::now(), source, &buffer[..length]);
                    }
                }
                durable = self.writer.durable() => durable?,
                done = file_done.recv() => {
                    let mut next = done;
                    for _ in 0..BATCH {
                        let Some(done) = next else { break };
                        self.handle_file_done(done);
                        next = file_done.try_recv().ok();
                    }
                }
                event = next_signal(&mut self.signal) => self.handle_signal_event(event),
                step = renewals.recv() => {
                    if let Some(step) = step {
                        self.handle_renewal(step).await?;
                    }
                }
                read = history.recv() => {
                    if let Some((peer, read)) = read {
                        let page = read?;
                        self.engine.handle_history_read(
                            Instant::now(),
                            peer,
                            page.rows,
                            &page.changes,
                            page.older,
                        );
                    }
                }
                fetched = directory.recv() => {
                    let now = Instant::now();
                    match fetched {
                        Some(Ok(members)) => self.engine.handle_directory(now, members),
                        Some(Err(error)) if error.code() == Some(ErrorCode::Unauthorized) => {
                            self.engine.handle_session_ended(now);
                        }
                        Some(Err(error)) => {
                            self.engine.handle_directory_unavailable(now, error.to_string());
                        }
                        None => {}
                    }
                }
                renewed = ice.recv() => {
                    if let Some((servers, outcome)) = renewed {
                        let now = Instant::now();
                        self.links.renew_relay(now, &servers);
                        self.engine.handle_ice_servers(now, outcome);
                    }
                }
                command = commands.recv() => {
                    // This command and what else is queued, up to a batch, before settling.
                    let mut next = command;
                    for taken in 1..=BATCH {
                        let Some(command) = next.filter(|c| !matches!(c, Command::Stop)) else {
                            self.finish().await?;
                            return Ok(Stopped::Requested);
                        };
                        self.handle_command(command);
                        // Nothing is taken from the queue past the batch: what is taken is answered.
                        if taken == BATCH {
                            break;
                        }
                        next = match commands.try_recv() {
                            Ok(more) => Some(more),
                            Err(_) => break,
                        };
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    self.links.handle_timeout(now);
                    self.engine.handle_timeout(now);
                }
            }
        }
    }

    fn handle_signal_event(&mut self, event: Option<SignalEvent>) {
        let now = Instant::now();
        match event {
            Some(SignalEvent::Connected(hello)) => {
                self.report(Update::Connected);
                self.engine.handle_frame(now, hello);
            }
            Some(SignalEvent::Frame(frame)) => self.engine.handle_frame(now, frame),
            Some(SignalEvent::Disconnected { reason, retry_in }) => {
                self.engine.handle_disconnected(now);
                self.report(Update::Disconnected { reason, retry_in });
            }
            // The signalling client ended on its own: nothing more will come from it.
            Some(SignalEvent::SessionRefused) | None => {
                self.signal = None;
                self.engine.handle_session_ended(now);
            }
        }
    }

    /// A step of the renewal the engine asked for ([`Output::RenewSession`]): signs the ceremony,
    /// or takes the new session (kept in the profile, used by the API client and a new
    /// signalling connection), or tells the engine why it failed.
    async fn handle_renewal(&mut self, step: RenewalStep) -> Result<(), DeviceError> {
        let now = Instant::now();
        match step {
            RenewalStep::Ceremony(Ok(ceremony)) => {
                let renewal = self.engine.session_renewal(&ceremony)?;
                let (mut api, answer) = (self.api.clone(), self.renewal_tx.clone());
                api.set_session(None);
                tokio::spawn(async move {
                    let granted = api.renew_session(&renewal).await;
                    let _ = answer.send(RenewalStep::Granted(granted)).await;
                });
            }
            RenewalStep::Granted(Ok(granted)) => {
                let session = granted.session.unwrap_or_default();
                self.store.save_session(&session, granted.role).await?;
                self.api.set_session(Some(session.clone()));
                self.signal = Some(SignalClient::start(
                    self.api.origin().clone(),
                    session,
                    self.engine.device(),
                    self.backoff.clone(),
                ));
                self.engine
                    .handle_session_renewal(now, RenewalOutcome::Renewed);
            }
            RenewalStep::Ceremony(Err(error)) | RenewalStep::Granted(Err(error)) => {
                tracing::info!(%error, "the session was not renewed");
                let outcome =
                    RenewalOutcome::of_answer(error.status().map(|s| s.as_u16()), error.code());
                self.engine.handle_session_renewal(now, outcome);
            }
        }
        Ok(())
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Send(text, reply_to, reply) => {
                let sent = self
                    .engine
                    .send_reply(now, unix_ms(SystemTime::now()), &text, reply_to);
                self.replies.push(Reply::Sent(reply, sent));
            }
            Command::Change(target, change, reply) => {
                let changed =
                    self.engine
                        .change_message(now, unix_ms(SystemTime::now()), target, change);
                self.replies.push(Reply::Sent(reply, changed));
            }
            Command::SendFile(file, reply) => {
                let sent = self.engine.send_file(now, unix_ms(SystemTime::now()), file);
                self.replies.push(Reply::Sent(reply, sent));
            }
            Command::DeleteFile(file, reply) => {
                let deleted = if self.engine.delete_file(now, file) {
                    Ok(())
                } else {
                    Err(EngineError::BadFile("file id: no such file here"))
                };
                self.replies.push(Reply::Done(reply, deleted));
            }
            Command::SetName(name, reply) => {
                let named = self.engine.set_display_name(now, &name);
                self.replies.push(Reply::Done(reply, named));
            }
            Command::Status(reply) => {
                let _ = reply.send(Status {
                    view: self.engine.view(),
                    relayed: self.links.relayed(),
                });
            }
            Command::Stop => {}
        }
    }

    /// Runs the engine and the links until neither has anything left to do: every turn of the
    /// engine is handed to the writer, and its outputs are acted on once its write is durable;
    /// link events go back to the engine; datagrams go out. The commands taken are answered once
    /// what they changed is durable.
    async fn settle(&mut self) -> Result<(), DeviceError> {
        loop {
            let mut busy = false;
            while let Some(turn) = self.engine.next_turn()? {
                busy = true;
                // What may go before the write does, unless an earlier turn's outputs still wait
                // (an open must not overtake a close held for its write).
                let (asks, outputs) = if self.writer.idle() {
                    turn.outputs.into_iter().partition(|o| !o.waits_for_write())
                } else {
                    (Vec::new(), turn.outputs)
                };
                for output in asks {
                    self.act(output);
                }
                self.writer
                    .submit(turn.write, Durable::Outputs(outputs))
                    .await?;
            }
            if !self.replies.is_empty() {
                let replies = std::mem::take(&mut self.replies);
                self.writer.submit(None, Durable::Replies(replies)).await?;
            }
            while let Some(durable) = self.writer.released() {
                match durable {
                    Durable::Outputs(outputs) => {
                        busy = true;
                        for output in outputs {
                            self.act(output);
                        }
                    }
                    Durable::Replies(replies) => replies.into_iter().for_each(Reply::send),
                }
            }
            while let Some(event) = self.links.poll_event() {
                busy = true;
                self.handle_link_event(event);
            }
            while let Some((destination, datagram)) = self.links.poll_transmit() {
                // A datagram that cannot go out is lost like any other; WebRTC retransmits.
                let _ = self.socket.send_to(&datagram, destination).await;
            }
            if !busy {
                return Ok(());
            }
        }
    }

    /// Settles until every write is durable and nothing waits for one: the device may stop.
    async fn finish(&mut self) -> Result<(), DeviceError> {
        loop {
            self.settle().await?;
            if self.writer.idle() {
                return Ok(());
            }
            self.writer.flush().await?;
        }
    }

    fn act(&mut self, output: Output) {
        let now = Instant::now();
        match output {
            Output::Send(frame) => {
                if let Ok(text) = serde_json::to_string(&frame) {
                    // Queued while the server is away; the engine repeats what still matters.
                    if let Some(signal) = &self.signal {
                        let _ = signal.try_send(text);
                    }
                }
            }
            Output::Link(LinkCommand::Open { device }) => {
                if self.links.open(now, device).is_err() {
                    self.engine.handle_link_down(now, device);
                }
            }
            Output::Link(LinkCommand::Rtc { device, signal }) => {
                if self.links.apply(now, device, signal).is_err() {
                    self.links.close(device);
                    self.engine.handle_link_down(now, device);
                }
            }
            Output::Link(LinkCommand::Data { device, bytes }) => {
                // A packet the link cannot take now is resent by the outbox.
                let _ = self.links.send(device, &bytes);
            }
            Output::Link(LinkCommand::Close { device }) => self.links.close(device),
            Output::Event(event) => self.report(Update::Engine(event)),
            Output::FetchDirectory => {
                let (api, answer) = (self.api.clone(), self.directory_tx.clone());
                tokio::spawn(async move {
                    let _ = answer.send(api.members().await).await;
                });
            }
            Output::FetchIceServers => {
                let (api, answer) = (self.api.clone(), self.ice_tx.clone());
                tokio::spawn(async move {
                    let _ = answer.send(offered_ice(&api).await).await;
                });
            }
            Output::ReadHistory {
                peer,
                before,
                limit,
            } => {
                let (store, answer) = (self.store.clone(), self.history_tx.clone());
                tokio::spawn(async move {
                    let read = store.history_page(before, limit).await;
                    let _ = answer.send((peer, read)).await;
                });
            }
            Output::File(command) => self.files.submit(command),
            Output::RenewSession => {
                // The ended session is not sent along.
                let mut api = self.api.clone();
                api.set_session(None);
                let answer = self.renewal_tx.clone();
                tokio::spawn(async move {
                    let ceremony = api.renewal_start().await;
                    let _ = answer.send(RenewalStep::Ceremony(ceremony)).await;
                });
            }
        }
    }

    fn handle_file_done(&mut self, done: FileDone) {
        let now = Instant::now();
        match done {
            FileDone::Read {
                peer,
                file,
                index,
                bytes,
            } => self.engine.handle_file_read(now, peer, file, index, &bytes),
            FileDone::Opened {
                peer,
                file,
                index,
                plain,
            } => self
                .engine
                .handle_file_opened(now, peer, file, index, plain.as_deref()),
            FileDone::Synced { file, chunks } => self.engine.handle_file_synced(now, file, chunks),
            FileDone::Failed { file, reason } => {
                tracing::warn!(%file, %reason, "file IO failed");
                self.engine.handle_file_failed(now, file, &reason);
            }
        }
    }

    fn handle_link_event(&mut self, event: LinkEvent) {
        let now = Instant::now();
        match event {
            LinkEvent::Negotiate { device, signal } => {
                if self.engine.send_rtc(now, device, signal).is_err() {
                    self.links.close(device);
                }
            }
            LinkEvent::Up(device) => {
                self.report(Update::LinkUp(device));
                self.engine.handle_link_up(now, device);
            }
            LinkEvent::Down(device) => {
                self.report(Update::LinkDown(device));
                self.engine.handle_link_down(now, device);
            }
            LinkEvent::Data(device, bytes) => self.engine.handle_link_data(now, device, &bytes),
        }
    }

    fn report(&self, update: Update) {
        // The interface may have gone; the device carries on until stopped.
        let _ = self.updates.send(update);
    }
}
