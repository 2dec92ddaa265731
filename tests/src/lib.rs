//! Test helpers: spawn the real server on port 0 with a fresh database, and drive it with real clients and software keys.

pub mod loopback;
pub mod native;
pub mod netns;
pub mod vm;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tessera_client::api::{ApiClient, ApiClientResult};
use tessera_client::authenticator::SoftKey;
use tessera_client::membership::{self, InvitationLink, Joined, Signer};
use tessera_client::trust::{RootFingerprint, RootPin, Trust};
use tessera_engine::decision::{Decision, DecisionStatement, SignedDecision};
use tessera_server::clock::Clock;
use tessera_server::store::Store;
use tessera_server::{Application, Config};
use tessera_wire::{Role, SessionGranted};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

/// The server's answer to what a member's device did: its refusal, or what came of it.
///
/// # Panics
/// When the device failed before the server answered (a key refused, a link did not parse).
pub fn refusal<T>(result: Result<T, membership::MembershipError>) -> ApiClientResult<T> {
    match result {
        Ok(done) => Ok(done),
        Err(membership::MembershipError::Api(error)) => Err(error),
        Err(other) => panic!("the request never reached the server: {other}"),
    }
}

/// Every log line the servers of this test binary wrote (all tests share it).
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = self.0.lock() {
            logs.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = LogSink(buffer.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                "debug,openmls=warn,sqlx=warn,hyper=warn,h2=warn,reqwest=warn,tower=warn",
            )
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .try_init();
        buffer
    })
    .clone()
}

/// Everything the servers of this test binary have logged so far, at debug level.
#[must_use]
pub fn captured_logs() -> String {
    let buffer = capture_logs();
    let logs = buffer.lock().map(|l| l.clone()).unwrap_or_default();
    String::from_utf8_lossy(&logs).into_owned()
}

/// A running server with its own database in a temporary directory.
pub struct TestApp {
    /// `http://localhost:<port>`, the WebAuthn origin.
    pub origin: Url,
    /// The first circle's admin invitation link.
    pub first_invitation: String,
    /// The server's clock (tests move it forward).
    pub clock: Arc<Clock>,
    /// The server's store (tests inspect it).
    pub store: Arc<dyn Store>,
    data_dir: tempfile::TempDir,
    server: JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A logged-in member: their client (holding the session), key and session.
pub struct TestMember {
    /// The client, holding the bearer session.
    pub client: ApiClient,
    /// The member's software key.
    pub key: SoftKey,
    /// What enrollment granted.
    pub granted: SessionGranted,
    /// The circle's root the member's device pinned at enrollment.
    pub root: RootFingerprint,
}

impl TestMember {
    /// The member's device's signer: their ids, their circle's root and their key.
    pub fn signer(&mut self) -> Signer<'_> {
        Signer {
            circle: self.granted.circle,
            member: self.granted.member,
            root: self.root,
            key: &mut self.key,
        }
    }

    /// Issues an invitation signed with the member's key (an admin's), as their device does:
    /// for a newcomer with `role`, or a recovery of `recovers`, valid `ttl_secs`.
    ///
    /// # Errors
    /// The server's refusal.
    ///
    /// # Panics
    /// When the key refuses.
    pub async fn try_invite(
        &mut self,
        role: Role,
        recovers: Option<uuid::Uuid>,
        ttl_secs: u64,
    ) -> ApiClientResult<membership::Invitation> {
        let now = tessera_engine::unix_ms(std::time::SystemTime::now()) / 1000;
        let client = self.client.clone();
        refusal(membership::invite(&client, self.signer(), role, recovers, (ttl_secs, now)).await)
    }

    /// Issues a signed invitation for a newcomer with `role`, valid `ttl_secs`: what the server
    /// made of it, and the whole link.
    ///
    /// # Panics
    /// When the key or the server refuses.
    pub async fn issue(&mut self, role: Role, ttl_secs: u64) -> membership::Invitation {
        self.try_invite(role, None, ttl_secs)
            .await
            .expect("the admin issues an invitation")
    }

    /// Issues a signed invitation valid an hour: the whole link.
    ///
    /// # Panics
    /// When the key or the server refuses.
    pub async fn invite(&mut self, role: Role, recovers: Option<uuid::Uuid>) -> String {
        self.try_invite(role, recovers, 3600)
            .await
            .expect("the admin issues a signed invitation")
            .link
    }

    /// Adds a new software key, endorsed by the member's key, as `tessera keys add` does.
    ///
    /// # Errors
    /// The server's refusal.
    ///
    /// # Panics
    /// When a key refuses.
    pub async fn add_spare(
        &mut self,
        label: Option<&str>,
    ) -> ApiClientResult<(SoftKey, tessera_wire::PasskeyInfo)> {
        let mut spare = SoftKey::blank().expect("a blank key");
        let client = self.client.clone();
        let info = refusal(membership::add_key(&client, self.signer(), &mut spare, label).await)?;
        Ok((spare, info))
    }

    /// Revokes `member` as an admin's device does, with a revocation this member's key signs.
    ///
    /// # Errors
    /// The server's refusal.
    pub async fn revoke(
        &mut self,
        member: uuid::Uuid,
    ) -> Result<(), tessera_client::api::ApiClientError> {
        self.decide(Decision::Revoke, member).await
    }

    /// Promotes `member` to admin as an admin's device does, with a promotion this member's key
    /// signs.
    ///
    /// # Errors
    /// The server's refusal.
    pub async fn promote(
        &mut self,
        member: uuid::Uuid,
    ) -> Result<(), tessera_client::api::ApiClientError> {
        self.decide(Decision::Promote, member).await
    }

    /// `decision` about `member`, signed by this member's key, handed to the server.
    ///
    /// # Panics
    /// When the key refuses.
    async fn decide(
        &mut self,
        decision: Decision,
        member: uuid::Uuid,
    ) -> Result<(), tessera_client::api::ApiClientError> {
        let issued_at = tessera_engine::unix_ms(std::time::SystemTime::now()) / 1000;
        let ids = (self.granted.circle, member, self.granted.member);
        let statement = match decision {
            Decision::Revoke => {
                let listed = self.client.members().await?;
                tessera_engine::trust::revocation(&listed, ids, None, issued_at)
            }
            _ => DecisionStatement {
                decision,
                circle: self.granted.circle,
                member,
                issuer: self.granted.member,
                issued_at,
                key: None,
                keeps: None,
            },
        };
        let origin = self.client.origin().origin().ascii_serialization();
        let rp_id = self.key.rp_id().to_owned();
        let signed = SignedDecision::sign(statement, &rp_id, |r| self.key.sign_in(r, &origin))
            .expect("the key signs the decision");
        match decision {
            Decision::Revoke => self.client.revoke_member(member, signed.to_blob()).await,
            Decision::Promote => self.client.promote_member(member, signed.to_blob()).await,
            Decision::RevokeKey => panic!("a key's revocation goes through revoke_key"),
        }
    }

    /// Revokes the member's key `id` through `client` (logged in as the member), with the
    /// revocation `key` (one of the member's) signs, as `tessera keys revoke` does.
    ///
    /// # Errors
    /// What the server or the key refuses.
    pub async fn revoke_key(
        &self,
        client: &tessera_client::api::ApiClient,
        key: &mut tessera_softkey::SoftKey,
        id: &str,
    ) -> Result<(), membership::MembershipError> {
        let signer = Signer {
            circle: self.granted.circle,
            member: self.granted.member,
            root: self.root,
            key,
        };
        let now = tessera_engine::unix_ms(std::time::SystemTime::now()) / 1000;
        membership::revoke_key(client, signer, id, now).await
    }

    /// What the member's devices check the circle's membership from.
    #[must_use]
    pub fn trust(&self) -> Trust {
        Trust {
            circle: self.granted.circle,
            root: RootPin::Pinned(self.root),
        }
    }
}

impl TestApp {
    /// Spawns the server with the test defaults.
    ///
    /// # Panics
    /// When the server cannot start.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    /// Spawns the server after `adjust` changes the test configuration.
    ///
    /// # Panics
    /// When the server cannot start.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        capture_logs();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let address = listener.local_addr().expect("local address");
        let origin = Url::parse(&format!("http://localhost:{}", address.port())).expect("origin");
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let mut config = Config::for_tests(data_dir.path().to_owned(), origin.clone());
        config.listen = address;
        adjust(&mut config);
        let clock = Arc::new(Clock::default());
        let app = Application::build_on(config, clock.clone(), listener)
            .await
            .expect("the server builds");
        let first_invitation = app
            .first_invitation()
            .expect("a fresh database creates the first circle")
            .to_owned();
        let store = app.state().store.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        TestApp {
            origin,
            first_invitation,
            clock,
            store,
            data_dir,
            server,
            stop: Some(stop),
        }
    }

    /// Stops the server as Ctrl-C or SIGTERM would, and waits until it has.
    ///
    /// # Panics
    /// When it does not stop in time or fails.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.server)
            .await
            .expect("the server stops in time")
            .expect("the server task ends");
    }

    /// A client without a session.
    #[must_use]
    pub fn client(&self) -> ApiClient {
        ApiClient::new(self.origin.clone())
    }

    /// The data directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// A connection of its own to the server's database, to write behind the server's back as
    /// an operator (or another node) would.
    ///
    /// # Panics
    /// When the database cannot be opened.
    pub async fn database(&self) -> sqlx::SqliteConnection {
        let database = self.data_dir().join(tessera_server::store::DATABASE_FILE);
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&database);
        sqlx::ConnectOptions::connect(&options)
            .await
            .expect("the database opens")
    }

    /// Enrolls a member with an invitation link and a fresh software key.
    ///
    /// # Panics
    /// When enrollment fails.
    pub async fn enroll(&self, link: &str, label: &str) -> TestMember {
        let mut client = self.client();
        let link = InvitationLink::parse(link).expect("an invitation link");
        let mut key = SoftKey::blank().expect("a blank key");
        let now = tessera_engine::unix_ms(std::time::SystemTime::now()) / 1000;
        let Joined { granted, root } =
            membership::join(&mut client, &link, Some(label), &mut key, now)
                .await
                .expect("enrollment succeeds");
        TestMember {
            client,
            key,
            granted,
            root,
        }
    }

    /// Enrolls the first circle's admin.
    ///
    /// # Panics
    /// When enrollment fails.
    pub async fn admin(&self) -> TestMember {
        let link = self.first_invitation.clone();
        self.enroll(&link, "Founding Admin").await
    }

    /// Creates another circle on the same server (as `tessera-server new-circle` does) and
    /// enrolls its first admin as `label`.
    ///
    /// # Panics
    /// When the circle cannot be created or enrollment fails.
    pub async fn admin_of_another_circle(&self, label: &str) -> TestMember {
        let origin = self.origin.as_str().trim_end_matches('/');
        let other =
            tessera_server::circle::create_circle(self.store.as_ref(), origin, self.clock.now())
                .await
                .expect("another circle");
        self.enroll(&other.url, label).await
    }

    /// Has `admin` invite a newcomer with `role`, who then enrolls.
    ///
    /// # Panics
    /// When issuing or enrolling fails.
    pub async fn invite(&self, admin: &mut TestMember, role: Role, label: &str) -> TestMember {
        let link = admin.invite(role, None).await;
        self.enroll(&link, label).await
    }

    /// The bytes of every file in the data directory (database, WAL, shared memory).
    ///
    /// # Panics
    /// When the directory cannot be read.
    #[must_use]
    pub fn database_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(self.data_dir()).expect("read the data directory") {
            let path = entry.expect("directory entry").path();
            if path.is_file() {
                bytes.extend(std::fs::read(&path).expect("read a database file"));
            }
        }
        bytes
    }
}

/// Whether `haystack` contains `needle` as bytes.
#[must_use]
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// A signalling connection of a test device, over a real WebSocket.
pub struct WsClient {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// How long a test waits for a frame before it fails.
const FRAME_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl WsClient {
    /// Opens `/api/v1/ws` with a bearer session (and optionally a device id and extra headers).
    ///
    /// # Errors
    /// The handshake's error, e.g. an HTTP 401.
    pub async fn connect_with(
        app: &TestApp,
        session: Option<&str>,
        device: Option<uuid::Uuid>,
        headers: &[(&'static str, &str)],
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut url = format!(
            "ws://127.0.0.1:{}{}",
            app.origin.port().unwrap_or(80),
            tessera_wire::signal::WS_PATH
        );
        if let Some(device) = device {
            url.push_str(&format!("?device={device}"));
        }
        let mut request = url.into_client_request()?;
        if let Some(session) = session {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {session}").parse().expect("header"),
            );
        }
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("header"));
        }
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(WsClient { stream })
    }

    /// Opens the member's connection and reads its hello.
    ///
    /// # Panics
    /// When the connection fails or the first frame is not a hello.
    pub async fn connect(
        app: &TestApp,
        member: &TestMember,
    ) -> (WsClient, tessera_wire::signal::ServerFrame) {
        let mut client = WsClient::connect_with(app, member.client.session(), None, &[])
            .await
            .expect("the socket opens");
        let hello = client.next().await.expect("a hello");
        assert!(
            matches!(hello, tessera_wire::signal::ServerFrame::Hello { .. }),
            "{hello:?}"
        );
        (client, hello)
    }

    /// Sends a text frame.
    ///
    /// # Panics
    /// When the socket is closed.
    pub async fn send_text(&mut self, text: &str) {
        use futures_util::SinkExt as _;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("send");
    }

    /// Sends text frames in one write: they reach the server together, as a burst.
    ///
    /// # Panics
    /// When the socket is closed.
    pub async fn send_texts(&mut self, texts: &[String]) {
        use futures_util::SinkExt as _;
        for text in texts {
            self.stream
                .feed(tokio_tungstenite::tungstenite::Message::text(text.as_str()))
                .await
                .expect("send");
        }
        self.stream.flush().await.expect("send");
    }

    /// Sends a raw WebSocket message; returns whether the socket took it.
    pub async fn send_message(&mut self, message: tokio_tungstenite::tungstenite::Message) -> bool {
        use futures_util::SinkExt as _;
        self.stream.send(message).await.is_ok()
    }

    /// Closes the socket; whether the server answered with its own close frame (RFC 6455 5.5.1)
    /// before the connection ended.
    ///
    /// # Panics
    /// When nothing happens in time.
    pub async fn close_and_hear_back(&mut self) -> bool {
        use futures_util::SinkExt as _;
        use tokio_tungstenite::tungstenite::Message;
        if self.stream.send(Message::Close(None)).await.is_err() {
            return false;
        }
        self.closed_by_server().await
    }

    /// Whether the server ends the connection politely: with a WebSocket close (after any frames
    /// still coming), not by dropping it.
    ///
    /// # Panics
    /// When nothing happens in time.
    pub async fn closed_by_server(&mut self) -> bool {
        use futures_util::StreamExt as _;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let message = tokio::time::timeout(FRAME_WAIT, self.stream.next())
                .await
                .expect("the connection ends in time");
            match message {
                Some(Ok(Message::Close(_))) => return true,
                None | Some(Err(_)) => return false,
                Some(Ok(_)) => {}
            }
        }
    }

    /// A frame if one arrives within `wait`; `None` otherwise (or when closed).
    pub async fn frame_within(
        &mut self,
        wait: std::time::Duration,
    ) -> Option<tessera_wire::signal::ServerFrame> {
        use futures_util::StreamExt as _;
        match tokio::time::timeout(wait, self.stream.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                serde_json::from_str(text.as_str()).ok()
            }
            _ => None,
        }
    }

    /// The next server frame; `None` when the server closed the connection.
    ///
    /// # Panics
    /// When nothing arrives in time or a frame does not parse.
    pub async fn next(&mut self) -> Option<tessera_wire::signal::ServerFrame> {
        use futures_util::StreamExt as _;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let message = tokio::time::timeout(FRAME_WAIT, self.stream.next())
                .await
                .expect("a frame arrives in time");
            match message {
                None | Some(Err(_) | Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(text.as_str()).expect("a server frame"));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// A benchmark's size from the environment variable `name`, else `default`.
#[must_use]
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
