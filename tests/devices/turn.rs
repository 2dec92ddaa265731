//! TURN credentials from `GET /api/v1/turn` against a real coturn (Debian's `turnserver`), inside
//! a network namespace this test makes (loopback only): coturn relays for the credentials the
//! server hands out, and refuses altered or expired ones. coturn's own client
//! (`turnutils_uclient`) allocates a relay and sends through it.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tessera_tests::TestApp;
use tessera_wire::TurnCredentials;

use crate::support::inside_namespace;

/// The secret coturn and the server share (`static-auth-secret`).
const SECRET: &str = "a-test-secret-shared-with-coturn";

/// coturn, stopped and reaped on drop.
struct Coturn {
    child: Child,
    port: u16,
}

impl Coturn {
    fn start(dir: &Path) -> Coturn {
        // A free UDP port on loopback for coturn to listen on.
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--use-auth-secret",
                &format!("--static-auth-secret={SECRET}"),
                "--realm=tessera.test",
                "--allow-loopback-peers",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--min-port=49152",
                "--max-port=49252",
                "--log-file=stdout",
                &format!("--pidfile={}", dir.join("turnserver.pid").display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver runs (tests/run installs Debian's coturn)");
        std::thread::sleep(Duration::from_millis(500));
        Coturn { child, port }
    }

    /// Whether coturn's client allocates a relay with these credentials and its messages come
    /// back through it.
    fn relays_for(&self, username: &str, password: &str) -> bool {
        Command::new("turnutils_uclient")
            .args(["-y", "-n", "2", "-m", "1", "-l", "100", "-p"])
            .arg(self.port.to_string())
            .args(["-u", username, "-w", password, "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("turnutils_uclient runs")
            .success()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn coturn_relays_for_the_credentials_the_server_hands_out_and_refuses_altered_or_expired_ones() {
    if !inside_namespace(
        "turn::coturn_relays_for_the_credentials_the_server_hands_out_and_refuses_altered_or_expired_ones",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let coturn = Coturn::start(dir.path());
    let url = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (fresh, expired) = runtime.block_on(async {
        let app = TestApp::spawn_with(|config| {
            config.ice_urls = vec![url.clone()];
            config.turn_secret = Some(SECRET.parse().expect("secret"));
            config.turn_ttl_secs = 600;
        })
        .await;
        let admin = app.admin().await;
        let fresh: TurnCredentials = admin.client.turn().await.expect("credentials");
        // The server's clock 20 minutes back: credentials that expired 10 minutes ago.
        app.clock.advance(-20 * 60);
        let expired: TurnCredentials = admin.client.turn().await.expect("credentials");
        (fresh, expired)
    });
    assert_eq!(fresh.urls, vec![url]);
    assert_eq!(fresh.ttl_secs, 600);
    assert!(
        coturn.relays_for(&fresh.username, &fresh.credential),
        "coturn refused the server's credentials"
    );
    let mut altered = fresh.credential.clone().into_bytes();
    altered[0] = if altered[0] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("base64");
    assert!(!coturn.relays_for(&fresh.username, &altered));
    let (_, tag) = fresh.username.split_once(':').expect("expiry:tag");
    let later = format!("{}:{tag}", u64::MAX / 2);
    assert!(
        !coturn.relays_for(&later, &fresh.credential),
        "a username whose expiry was pushed back kept its password"
    );
    assert!(
        !coturn.relays_for(&expired.username, &expired.credential),
        "coturn relayed for expired credentials"
    );
}
