//! TURN credentials from `GET /api/v1/turn` against a real coturn (Debian's `turnserver`), inside
//! a network namespace this test makes (loopback only): coturn relays for the credentials the
//! server hands out, and refuses altered or expired ones. coturn's own client
//! (`turnutils_uclient`) allocates a relay and sends through it. And two devices' links that offer
//! only relayed addresses talk through it, with the credentials the server hands out: as links
//! in this process, and as `tessera --relay-only` devices of a real server.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tessera_client::gather::{IcePolicy, IceServer};
use tessera_tests::TestApp;
use tessera_tests::loopback::{Side, run};
use tessera_wire::TurnCredentials;

use crate::support::{Chat, Device, Server, free_port, inside_namespace, unique, wait_converged};

/// The secret coturn and the server share (`static-auth-secret`).
const SECRET: &str = "a-test-secret-shared-with-coturn";

/// coturn, stopped and reaped on drop.
struct Coturn {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Coturn {
    fn start(dir: &Path) -> Coturn {
        // A free UDP port on loopback for coturn to listen on.
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let log = dir.join(format!("coturn-{port}.log"));
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
                // Each request it served, in a file of its own it writes at once (`allocated_for`
                // reads it).
                &format!("--log-file={}", log.display()),
                "--simple-log",
                "--verbose",
                &format!("--pidfile={}", dir.join("turnserver.pid").display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver runs (tests/run installs Debian's coturn)");
        std::thread::sleep(Duration::from_millis(500));
        Coturn { child, port, log }
    }

    /// The usernames (credentials) coturn made allocations for, from its log.
    fn allocated_for(&self) -> std::collections::BTreeSet<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|line| line.contains("ALLOCATE processed, success"))
            .filter_map(|line| line.split_once("user <")?.1.split_once('>'))
            .map(|(user, _)| user.to_owned())
            .collect()
    }

    /// coturn's `turn:` URL.
    fn url(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
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
    let url = coturn.url();
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

/// Credentials from a real server configured with `url` and coturn's secret.
fn credentials_for(url: &str) -> TurnCredentials {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let app = TestApp::spawn_with(|config| {
            config.ice_urls = vec![url.to_owned()];
            config.turn_secret = Some(SECRET.parse().expect("secret"));
        })
        .await;
        let admin = app.admin().await;
        admin.client.turn().await.expect("credentials")
    })
}

/// A relay-only policy for coturn at `server` with the credentials the server hands out now.
fn relay_only_policy(server: std::net::SocketAddr, url: &str) -> IcePolicy {
    let given = credentials_for(url);
    IcePolicy {
        servers: vec![IceServer::Turn {
            server,
            username: given.username,
            credential: given.credential,
        }],
        relay_only: true,
    }
}

/// Two in-process ends with `policy`, each with a relay from coturn, and a link between them
/// through the relays.
fn relayed_link(policy: &IcePolicy) -> (Side, Side) {
    let (mut a, mut b) = (Side::with_ice(policy), Side::with_ice(policy));
    // Both allocate a relay first (bounded: `run` gives up after ten seconds).
    run(&mut a, &mut b, |a, b| {
        a.links.relayed().is_some() && b.links.relayed().is_some()
    });
    assert!(
        a.links.relayed().is_some() && b.links.relayed().is_some(),
        "coturn allocated no relay"
    );
    a.links
        .open(std::time::Instant::now(), b.id)
        .expect("offer");
    run(&mut a, &mut b, |a, b| a.up && b.up);
    assert!(a.up && b.up, "no link through the relay");
    (a, b)
}

#[test]
fn relay_only_links_talk_through_coturn_and_never_send_to_each_other_directly() {
    if !inside_namespace(
        "turn::relay_only_links_talk_through_coturn_and_never_send_to_each_other_directly",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let coturn = Coturn::start(dir.path());
    let server: std::net::SocketAddr = ([127, 0, 0, 1], coturn.port).into();
    let (mut a, mut b) = relayed_link(&relay_only_policy(server, &coturn.url()));
    assert_ne!(a.links.relayed().map(|r| r.port()), Some(coturn.port));
    for n in 0..20u8 {
        assert!(a.links.send(b.id, &[n; 3000]));
        assert!(b.links.send(a.id, &[n; 10]));
    }
    run(&mut a, &mut b, |a, b| {
        a.received.len() == 20 && b.received.len() == 20
    });
    assert_eq!(
        b.received,
        (0..20u8).map(|n| vec![n; 3000]).collect::<Vec<_>>()
    );
    assert_eq!(
        a.received,
        (0..20u8).map(|n| vec![n; 10]).collect::<Vec<_>>()
    );
    // Neither end ever sent a datagram anywhere but to coturn.
    assert_eq!(a.sent_to, [server].into());
    assert_eq!(b.sent_to, [server].into());
}

/// Sends `count` messages each way, marked with `round`, and waits until they all arrive.
fn exchange(a: &mut Side, b: &mut Side, round: u8, count: usize) {
    let (a_had, b_had) = (a.received.len(), b.received.len());
    for n in 0..count {
        assert!(a.links.send(b.id, &[round, n as u8, 1]), "a sends");
        assert!(b.links.send(a.id, &[round, n as u8, 2]), "b sends");
    }
    run(a, b, |a, b| {
        a.received.len() == a_had + count && b.received.len() == b_had + count
    });
    let expected = |from: u8| {
        (0..count)
            .map(|n| vec![round, n as u8, from])
            .collect::<Vec<_>>()
    };
    assert_eq!(b.received[b_had..], expected(1), "round {round} at b");
    assert_eq!(a.received[a_had..], expected(2), "round {round} at a");
}

#[test]
fn fresh_turn_credentials_give_a_new_relay_and_a_new_link_goes_through_it() {
    if !inside_namespace(
        "turn::fresh_turn_credentials_give_a_new_relay_and_a_new_link_goes_through_it",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let coturn = Coturn::start(dir.path());
    let server: std::net::SocketAddr = ([127, 0, 0, 1], coturn.port).into();
    let (mut a, mut b) = relayed_link(&relay_only_policy(server, &coturn.url()));
    exchange(&mut a, &mut b, 0, 10);

    // Fresh credentials (other ones: another member's), as a device fetches them a third of
    // the way through their lifetime: the allocation is made again with them.
    let allocated = coturn.allocated_for().len();
    let fresh = relay_only_policy(server, &coturn.url());
    a.links
        .renew_relay(std::time::Instant::now(), &fresh.servers);
    assert_eq!(a.links.relayed(), None, "the old relay is released first");
    // The link over the released relay ends at once at this end (its only pair is gone); a new
    // one is negotiated with the new relayed address, as the device's engine does on `Down`.
    run(&mut a, &mut b, |a, _| !a.up && a.links.relayed().is_some());
    assert!(!a.up, "the link over the released relay ended");
    // A new allocation (coturn may hand out the same relayed port again).
    assert!(a.links.relayed().is_some(), "a new relay");
    a.links
        .open(std::time::Instant::now(), b.id)
        .expect("offer");
    // b's old link is replaced by the new offer; its `Up` is the one waited for.
    b.up = false;
    run(&mut a, &mut b, |a, b| a.up && b.up);
    assert!(a.up && b.up, "no new link through the new relay");
    exchange(&mut a, &mut b, 1, 10);
    assert_eq!(
        coturn.allocated_for().len(),
        allocated + 1,
        "one more allocation, under the fresh credentials"
    );
    // Through all of it, neither end sent a datagram anywhere but to coturn.
    assert_eq!(a.sent_to, [server].into());
    assert_eq!(b.sent_to, [server].into());
}

/// A real server handing out credentials for coturn, and two `tessera --relay-only` devices of
/// its circle chatting, their group converged. Everything ends when dropped: keep it whole (a
/// pattern with `..` would drop the server and the devices at once).
struct RelayOnlyPair {
    // Dropped in this order: the chats, the devices, then the server.
    a: Chat,
    b: Chat,
    _devices: [Device; 2],
    _server: Server,
}

impl RelayOnlyPair {
    fn start(dir: &Path, ice_urls: &str, env: &[(&str, &str)]) -> RelayOnlyPair {
        let port = free_port();
        let origin = format!("http://localhost:{port}");
        let env: Vec<(&str, &str)> = [("TESSERA_TURN_SECRET", SECRET)]
            .into_iter()
            .chain(env.iter().copied())
            .collect();
        let (server, link) = Server::start_with(
            &dir.join("server"),
            port,
            &origin,
            &["--ice-url", ice_urls],
            &env,
        );
        let mut admin = Device::new(dir, "admin");
        admin.flags.push("--relay-only".into());
        admin.join(
            &link.expect("the admin link"),
            &format!("Admin{}", unique()),
        );
        let invitation = admin.ok(&["admin", "invite"]).trim().to_owned();
        let mut member = Device::new(dir, "member");
        member.flags.push("--relay-only".into());
        member.join(&invitation, &format!("Member{}", unique()));
        let (mut a, mut b) = (admin.chat(), member.chat());
        wait_converged(&mut [&mut a, &mut b], 2);
        RelayOnlyPair {
            a,
            b,
            _devices: [admin, member],
            _server: server,
        }
    }
}

/// The relayed address a chatting device reports (empty without one).
fn relayed_address(chat: &mut Chat) -> String {
    chat.status()["relayed"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn relay_only_cli_devices_get_a_relay_from_the_servers_credentials_and_talk_through_it() {
    if !inside_namespace(
        "turn::relay_only_cli_devices_get_a_relay_from_the_servers_credentials_and_talk_through_it",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let coturn = Coturn::start(dir.path());
    let ice = format!("stun:127.0.0.1:{},{}", coturn.port, coturn.url());
    let mut pair = RelayOnlyPair::start(dir.path(), &ice, &[]);
    let (a, b) = (&mut pair.a, &mut pair.b);
    let relayed = [relayed_address(a), relayed_address(b)];
    for address in &relayed {
        // coturn's relay ports (--min-port/--max-port), not the devices' own sockets.
        let relay_port: u16 = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_default();
        assert!((49152..=49252).contains(&relay_port), "relayed {relayed:?}");
    }
    let text = format!("through the relay {}", unique());
    a.say(&text);
    let got = b.wait_for("the message through the relay", |v| {
        v["event"] == "message" && v["text"] == text.as_str()
    });
    assert_eq!(got["text"], text);
    b.say("and back");
    a.wait_for("the answer through the relay", |v| {
        v["event"] == "message" && v["text"] == "and back"
    });
}

#[test]
fn relay_only_cli_devices_renew_their_relay_before_the_credentials_expire_and_keep_talking() {
    if !inside_namespace(
        "turn::relay_only_cli_devices_renew_their_relay_before_the_credentials_expire_and_keep_talking",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let coturn = Coturn::start(dir.path());
    // Credentials valid for 6 s: a device renews them (and its relay) every 5 s, the shortest.
    let mut pair =
        RelayOnlyPair::start(dir.path(), &coturn.url(), &[("TESSERA_TURN_TTL_SECS", "6")]);
    let (a, b) = (&mut pair.a, &mut pair.b);
    // Each device allocated under its first credentials; past their lifetime, both have
    // allocated again under fresh ones.
    let started = std::time::Instant::now();
    let mut allocated = coturn.allocated_for();
    while started.elapsed() < Duration::from_secs(20) && allocated.len() < 4 {
        std::thread::sleep(Duration::from_millis(500));
        allocated = coturn.allocated_for();
    }
    assert!(allocated.len() >= 4, "allocated for {allocated:?}");
    assert!(!relayed_address(a).is_empty() && !relayed_address(b).is_empty());
    std::thread::sleep(Duration::from_secs(7).saturating_sub(started.elapsed()));
    for round in 0..2 {
        let text = format!("round {round} after renewals {}", unique());
        a.say(&text);
        b.wait_for("the message through the new relay", |v| {
            v["event"] == "message" && v["text"] == text.as_str()
        });
        let answer = format!("answer {round} {}", unique());
        b.say(&answer);
        a.wait_for("the answer through the new relay", |v| {
            v["event"] == "message" && v["text"] == answer.as_str()
        });
    }
}

#[test]
fn relay_only_refuses_to_start_when_the_server_offers_no_turn_server() {
    if !inside_namespace("turn::relay_only_refuses_to_start_when_the_server_offers_no_turn_server")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (_server, link) = Server::start(
        &dir.path().join("server"),
        port,
        &format!("http://localhost:{port}"),
    );
    let mut admin = Device::new(dir.path(), "admin");
    admin.join(&link.expect("the admin link"), "Admin");
    admin.flags.push("--relay-only".into());
    let out = admin.run(&["send", "hello", "--wait", "1"]);
    assert!(!out.status.success(), "it started without a relay");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("relay-only links need a TURN server"),
        "{said}"
    );
}
