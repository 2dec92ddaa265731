//! Test helpers: spawn the real server on port 0 with a fresh database, and drive it with real clients and software keys.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tessera_client::api::{ApiClient, invitation_token};
use tessera_client::authenticator::SoftKey;
use tessera_server::clock::Clock;
use tessera_server::store::Store;
use tessera_server::{Application, Config};
use tessera_wire::{Role, SessionGranted};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

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
            .with_env_filter("debug,sqlx=warn,hyper=warn,h2=warn,reqwest=warn,tower=warn")
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
    server: JoinHandle<std::io::Result<()>>,
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
        let server = tokio::spawn(app.run());
        TestApp {
            origin,
            first_invitation,
            clock,
            store,
            data_dir,
            server,
        }
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

    /// Enrolls a member with an invitation link and a fresh software key.
    ///
    /// # Panics
    /// When enrollment fails.
    pub async fn enroll(&self, link: &str, label: &str) -> TestMember {
        let mut client = self.client();
        let token = invitation_token(link).expect("an invitation link");
        let (key, granted) = client
            .enroll(&token, Some(label))
            .await
            .expect("enrollment succeeds");
        TestMember {
            client,
            key,
            granted,
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

    /// Has `admin` invite a newcomer with `role`, who then enrolls.
    ///
    /// # Panics
    /// When issuing or enrolling fails.
    pub async fn invite(&self, admin: &TestMember, role: Role, label: &str) -> TestMember {
        let invitation = admin
            .client
            .create_invitation(role, 3600)
            .await
            .expect("the admin issues an invitation");
        self.enroll(&invitation.url, label).await
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
