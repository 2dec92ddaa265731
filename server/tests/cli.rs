//! The `tessera-server` binary as a process, as operators and clients meet it: `--help`, the first
//! start's one-time admin link, later starts that print nothing secret, `new-circle`, and a restart
//! that signalling clients ride out by reconnecting.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tessera_server::store::{SqliteStore, Store as _};

const BINARY: &str = env!("CARGO_BIN_EXE_tessera-server");

/// A server process this test started; killed (by its own PID) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server on port 0 and returns it with the lines it printed up to and including the banner block.
fn start(data_dir: &Path) -> (Server, Vec<String>) {
    start_on(data_dir, 0)
}

/// Starts the server on a port (0: any) and returns it with the lines it printed up to the banner.
fn start_on(data_dir: &Path, port: u16) -> (Server, Vec<String>) {
    let origin = if port == 0 {
        "http://localhost:8080".to_owned()
    } else {
        format!("http://localhost:{port}")
    };
    let mut child = Command::new(BINARY)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--origin",
            &origin,
            "--data-dir",
        ])
        .arg(data_dir)
        .env_remove("TESSERA_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut lines = Vec::new();
    // Anything secret comes before the "serving" line, which comes last.
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line");
        let serving = line.contains("Tessera is serving");
        lines.push(line);
        if serving {
            break;
        }
    }
    (server, lines)
}

fn join_links(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("/join/"))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn help_explains_every_option_and_its_environment_variable() {
    let output = Command::new(BINARY)
        .arg("--help")
        .output()
        .expect("--help runs");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8");
    for needle in [
        "--listen",
        "TESSERA_LISTEN",
        "--data-dir",
        "TESSERA_DATA_DIR",
        "--origin",
        "TESSERA_ORIGIN",
        "--attestation",
        "TESSERA_ATTESTATION",
        "new-circle",
        "127.0.0.1:8080",
        "./tessera-data",
        "http://localhost:8080",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn a_bad_option_is_refused_with_a_clear_message() {
    let output = Command::new(BINARY)
        .args(["--attestation", "fips-please"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AAGUID"), "{stderr}");
}

#[test]
fn the_first_start_prints_one_admin_link_and_later_starts_print_none() {
    let data = tempfile::tempdir().expect("temp dir");
    let (server, first) = start(data.path());
    let links = join_links(&first);
    assert_eq!(links.len(), 1, "{first:?}");
    assert!(links[0].starts_with("http://localhost:8080/join/"));
    assert_eq!(links[0].len(), "http://localhost:8080/join/".len() + 43);
    drop(server);

    let (server, second) = start(data.path());
    assert!(
        second.iter().any(|l| l.contains("Tessera is serving")),
        "{second:?}"
    );
    assert!(
        join_links(&second).is_empty(),
        "a later start printed a link: {second:?}"
    );
    drop(server);
}

#[tokio::test]
async fn new_circle_creates_another_circle_with_its_own_admin_link() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut links = Vec::new();
    for _ in 0..2 {
        let output = Command::new(BINARY)
            .args([
                "new-circle",
                "--origin",
                "https://tessera.example.org",
                "--data-dir",
            ])
            .arg(data.path())
            .output()
            .expect("new-circle runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).expect("utf-8");
        let found = join_links(&stdout.lines().map(str::to_owned).collect::<Vec<_>>());
        assert_eq!(found.len(), 1, "{stdout}");
        assert!(found[0].starts_with("https://tessera.example.org/join/"));
        links.extend(found);
    }
    assert_ne!(links[0], links[1]);
    let store = SqliteStore::open(data.path()).await.expect("open");
    assert_eq!(store.circle_count().await.expect("count"), 2);
}

#[tokio::test]
async fn signalling_clients_reconnect_by_themselves_after_a_restart() {
    use tessera_client::api::{ApiClient, invitation_token};
    use tessera_client::signal::{Backoff, SignalClient, SignalEvent};
    use tessera_wire::signal::ServerFrame;

    let data = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (server, lines) = start_on(data.path(), port);
    let link = join_links(&lines).pop().expect("the admin link");
    let origin = url::Url::parse(&format!("http://localhost:{port}")).expect("origin");
    let mut admin = ApiClient::new(origin.clone());
    admin
        .enroll(&invitation_token(&link).expect("token"), None)
        .await
        .expect("enroll");
    let session = admin.session().expect("session").to_owned();
    let device = uuid::Uuid::new_v4();
    let backoff = Backoff::new(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_millis(400),
    );
    let mut client = SignalClient::start(origin, session, device, backoff);
    assert!(
        matches!(next(&mut client).await, Some(SignalEvent::Connected(ServerFrame::Hello { device: d, .. })) if d == device)
    );

    drop(server);
    assert!(matches!(
        next(&mut client).await,
        Some(SignalEvent::Disconnected { .. })
    ));
    let (_server, _) = start_on(data.path(), port);
    // Attempts fail while the server is down; the first to succeed brings a fresh hello.
    loop {
        match next(&mut client).await {
            Some(SignalEvent::Disconnected { retry_in, .. }) => {
                assert!(retry_in <= std::time::Duration::from_millis(400));
            }
            Some(SignalEvent::Connected(ServerFrame::Hello { device: d, .. })) => {
                assert_eq!(d, device, "the same device id after the restart");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The session survived the restart (it is in SQLite); ending it stops the client for good.
    admin.logout().await.expect("logout");
    assert!(matches!(
        next(&mut client).await,
        Some(SignalEvent::Frame(ServerFrame::SessionEnded))
    ));
    assert!(next(&mut client).await.is_none(), "the client stopped");
}

/// The signalling client's next event, failing the test if none comes within 20 s.
async fn next(
    client: &mut tessera_client::signal::SignalClient,
) -> Option<tessera_client::signal::SignalEvent> {
    tokio::time::timeout(std::time::Duration::from_secs(20), client.next_event())
        .await
        .expect("an event in time")
}
