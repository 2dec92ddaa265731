//! Load generator for signalling relays: Tessera's `/api/v1/ws` next to a bare tokio-tungstenite
//! relay and the PeerJS server (npm `peer`), driven the same way, each as a separate process on loopback.
//!
//! For each server and each connection count (1,000 and 10,000 by default) it measures:
//! - RSS per idle connection (the server's VmRSS before and after opening them; "before" is taken
//!   after 16 connections came and went, and also shown from before those),
//! - relayed messages per server CPU-second (pairs of connections sending as fast as they can),
//! - p50/p99 latency at a fixed offered load.
//!
//! With `SOAK_SECS` set it runs a soak instead, Tessera only: `SOAK_CONNECTIONS` (10,000) held
//! for that long while signals flow (`OFFERED_PER_SECOND`) and `SOAK_CHURN` connections a second
//! close and reconnect; the server's RSS, open file descriptors, threads and tasks are printed
//! every minute, at the end, and once every connection is closed again.
//!
//! Bounded in count and time; every process it starts is ended by its PID.
//! Run: `cargo build --release --bin tessera-server && cargo bench -p tessera-tests --bench signalling_load`
//! (environment: `CONNECTIONS=1000,10000`, `PAIRS`, `MESSAGES`, `OFFERED_PER_SECOND`, `CIRCLE_SIZE`,
//! `TARGETS=tessera` to skip PeerJS, `TESSERA_SERVER_BIN`; `SOAK_SECS=600` for the soak).

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt as _, StreamExt as _};
use tessera_client::api::{ApiClient, invitation_token};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;
use uuid::Uuid;

/// The most any one phase may take.
const PHASE_LIMIT: Duration = Duration::from_secs(60);
/// Devices per Tessera circle by default (one admin with this many devices); a circle of 10,000
/// devices would be far beyond the design, so connections are spread over circles of this size.
const CIRCLE_SIZE: usize = 100;

/// The circle size in use (`CIRCLE_SIZE`, or the environment's, rounded up to an even number).
fn circle_size() -> usize {
    env_number("CIRCLE_SIZE", CIRCLE_SIZE).max(2).div_ceil(2) * 2
}
/// Frames a sender may have in flight to its partner before it waits (closed-loop load).
const WINDOW: u64 = 64;

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn env_number(name: &str, default: usize) -> usize {
    env_list(name, &[default])[0]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A server process this generator started; ended by its PID when dropped.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU time of the process.
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux.
    }

    /// Open file descriptors.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// Threads.
    fn threads(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Resident memory in bytes.
    fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

/// How to talk to one kind of server.
enum Flavour {
    /// Tessera: bearer sessions, device ids chosen by the client.
    Tessera { sessions: Vec<String> },
    /// PeerJS: ids and tokens in the query.
    PeerJs,
}

struct Target {
    name: &'static str,
    server: Server,
    port: u16,
    flavour: Flavour,
}

fn device_id(index: usize) -> Uuid {
    Uuid::from_u128(0x7e55_e7a0_0000_4000_8000_0000_0000_0000 | index as u128)
}

impl Target {
    fn request(&self, index: usize) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        match &self.flavour {
            Flavour::Tessera { sessions } => {
                let url = format!(
                    "ws://127.0.0.1:{}/api/v1/ws?device={}",
                    self.port,
                    device_id(index)
                );
                let mut request = url.into_client_request().expect("request");
                let session = &sessions[index / circle_size()];
                request.headers_mut().insert(
                    "authorization",
                    format!("Bearer {session}").parse().expect("header"),
                );
                request
            }
            Flavour::PeerJs => format!(
                "ws://127.0.0.1:{}/peerjs?key=peerjs&id=p{index}&token=t",
                self.port
            )
            .into_client_request()
            .expect("request"),
        }
    }

    /// A message from connection `from` to connection `to` carrying `stamp`, about 100 bytes of payload.
    fn message(&self, to: usize, stamp: u64) -> String {
        let payload = format!(
            r#"{{"t":{stamp},"sdp":"candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host"}}"#
        );
        match self.flavour {
            Flavour::Tessera { .. } => {
                format!(
                    r#"{{"type":"signal","to":"{}","payload":{payload}}}"#,
                    device_id(to)
                )
            }
            Flavour::PeerJs => format!(r#"{{"type":"OFFER","dst":"p{to}","payload":{payload}}}"#),
        }
    }
}

/// Starts the real server on a fresh data directory; returns it, its port and the first admin link.
fn start_tessera(binary: &PathBuf, data: &std::path::Path) -> (Server, u16, String) {
    let port = free_port();
    let mut child = Command::new(binary)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--origin",
            &format!("http://localhost:{port}"),
            "--ceremony-rate-per-minute",
            "1000000",
            "--invitation-rate-per-minute",
            "1000000",
            "--ws-connections-per-member",
            "1000",
            "--ws-frames-per-second",
            "1000000",
            "--ws-idle-timeout-secs",
            "900",
            "--log",
            "warn",
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tessera-server starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut link = String::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.contains("/join/") {
            line.trim().clone_into(&mut link);
        }
        if line.contains("Tessera is serving") {
            break;
        }
    }
    (Server { child }, port, link)
}

fn start_peerjs(root: &std::path::Path) -> (Server, u16) {
    let load = root.join("tests/load");
    if !load.join("node_modules/peer").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&load)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci in tests/load failed");
    }
    let port = free_port();
    let child = Command::new("node")
        .arg(load.join("node_modules/peer/dist/bin/peerjs.js"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--concurrent_limit",
            "20000",
            "--alive_timeout",
            "900000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node starts the PeerJS server");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "PeerJS did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server { child }, port)
}

/// Creates one circle per `CIRCLE_SIZE` connections, enrolls each circle's admin, and returns
/// their sessions (the first circle's link comes from the server's first start).
async fn tessera_sessions(
    binary: &PathBuf,
    data: &std::path::Path,
    port: u16,
    first_invitation: String,
    connections: usize,
) -> Vec<String> {
    let origin = Url::parse(&format!("http://localhost:{port}")).expect("origin");
    let mut links = vec![first_invitation];
    while links.len() < connections.div_ceil(circle_size()) {
        let output = Command::new(binary)
            .args(["new-circle", "--origin", origin.as_str(), "--data-dir"])
            .arg(data)
            .output()
            .expect("new-circle");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let link = stdout
            .lines()
            .find(|l| l.contains("/join/"))
            .expect("a link");
        links.push(link.trim().to_owned());
    }
    let mut sessions = Vec::new();
    for link in links {
        let mut admin = ApiClient::new(origin.clone());
        let token = invitation_token(&link).expect("token");
        admin.enroll(&token, None).await.expect("an admin enrolls");
        sessions.push(admin.session().expect("session").to_owned());
    }
    sessions
}

/// What the readers observed.
struct Observed {
    relayed: AtomicU64,
    /// Frames received per connection (for the senders' windows).
    received: Vec<AtomicU64>,
    latencies_us: std::sync::Mutex<Vec<u64>>,
    recording: std::sync::atomic::AtomicBool,
}

impl Observed {
    fn new(connections: usize) -> Observed {
        Observed {
            relayed: AtomicU64::new(0),
            received: (0..connections).map(|_| AtomicU64::new(0)).collect(),
            latencies_us: std::sync::Mutex::default(),
            recording: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

fn stamp_of(text: &str) -> Option<u64> {
    let start = text.find(r#""t":"#)? + 4;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Opens connections `from..to` (64 handshakes at a time); returns their sinks, and spawns readers.
async fn open(
    target: &Target,
    range: std::ops::Range<usize>,
    observed: &Arc<Observed>,
    epoch: Instant,
    sinks: &mut Vec<Arc<Mutex<Sink>>>,
) {
    let indices: Vec<usize> = range.collect();
    for chunk in indices.chunks(64) {
        let handshakes = chunk
            .iter()
            .map(|&i| tokio_tungstenite::connect_async(target.request(i)));
        for (result, &index) in futures_util::future::join_all(handshakes)
            .await
            .into_iter()
            .zip(chunk)
        {
            let (stream, _) = result.expect("a connection opens");
            let (sink, mut reader) = stream.split();
            let observed = observed.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = reader.next().await {
                    if let Message::Text(text) = message {
                        let text = text.as_str();
                        if text.contains(r#""t":"#) {
                            observed.relayed.fetch_add(1, Ordering::Relaxed);
                            observed.received[index].fetch_add(1, Ordering::Relaxed);
                            if observed.recording.load(Ordering::Relaxed)
                                && let Some(sent) = stamp_of(text)
                            {
                                let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
                                if let Ok(mut l) = observed.latencies_us.lock() {
                                    l.push(now.saturating_sub(sent));
                                }
                            }
                        }
                    }
                }
            });
            sinks.push(Arc::new(Mutex::new(sink)));
        }
    }
}

async fn wait_for(observed: &Observed, count: u64) -> bool {
    let started = Instant::now();
    while observed.relayed.load(Ordering::Relaxed) < count {
        if started.elapsed() > PHASE_LIMIT {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Sends `messages` over `pairs` pairs as fast as the generator can; returns (relayed, server CPU, wall).
async fn throughput(
    target: &Target,
    sinks: &[Arc<Mutex<Sink>>],
    observed: &Arc<Observed>,
    pairs: usize,
    messages: usize,
) -> (u64, Duration, Duration) {
    let before = observed.relayed.load(Ordering::Relaxed);
    let cpu = target.server.cpu();
    let wall = Instant::now();
    let per_pair = messages / pairs;
    // Pairs (2p, 2p+1) never straddle a circle: the circle size is even.
    let mut tasks = Vec::new();
    for p in 0..pairs {
        let (from, to) = (2 * p, 2 * p + 1);
        let sink = sinks[from].clone();
        let frame = target.message(to, 0);
        let observed = observed.clone();
        tasks.push(tokio::spawn(async move {
            let mut sink = sink.lock().await;
            let start = observed.received[to].load(Ordering::Relaxed);
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < per_pair as u64 && started.elapsed() < PHASE_LIMIT {
                let arrived = observed.received[to].load(Ordering::Relaxed) - start;
                let room = (arrived + WINDOW)
                    .saturating_sub(sent)
                    .min(per_pair as u64 - sent);
                if room == 0 {
                    tokio::task::yield_now().await;
                    continue;
                }
                for _ in 0..room {
                    if sink.feed(Message::text(frame.clone())).await.is_err() {
                        return;
                    }
                }
                sent += room;
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let expected = before + (per_pair * pairs) as u64;
    let complete = wait_for(observed, expected).await;
    let relayed = observed.relayed.load(Ordering::Relaxed) - before;
    if !complete {
        eprintln!(
            "  ({} of {} relayed within the time limit)",
            relayed,
            per_pair * pairs
        );
    }
    (
        relayed,
        target.server.cpu().saturating_sub(cpu),
        wall.elapsed(),
    )
}

/// Offers `rate` messages per second for `seconds` over `pairs` pairs; returns (p50, p99) in µs.
async fn latency(
    target: &Target,
    sinks: &[Arc<Mutex<Sink>>],
    observed: &Arc<Observed>,
    pairs: usize,
    rate: usize,
    epoch: Instant,
) -> (u64, u64) {
    if let Ok(mut l) = observed.latencies_us.lock() {
        l.clear();
    }
    observed.recording.store(true, Ordering::Relaxed);
    let before = observed.relayed.load(Ordering::Relaxed);
    let ticks_per_second = 100;
    let per_tick = (rate / ticks_per_second).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    for t in 0..(3 * ticks_per_second) {
        tick.tick().await;
        for k in 0..per_tick {
            let p = (t * per_tick + k) % pairs;
            let stamp = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
            let frame = target.message(2 * p + 1, stamp);
            let mut sink = sinks[2 * p].lock().await;
            if sink.send(Message::text(frame)).await.is_ok() {
                sent += 1;
            }
        }
    }
    wait_for(observed, before + sent).await;
    observed.recording.store(false, Ordering::Relaxed);
    let mut latencies = observed
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    (at(0.50), at(0.99))
}

/// Connections opened and closed before the base memory is taken.
const WARM_UP: usize = 16;

/// Opens [`WARM_UP`] connections at once, closes them and lets the server clean up.
async fn warm_up(target: &Target, observed: &Arc<Observed>, epoch: Instant) {
    let mut sinks = Vec::new();
    open(target, 0..WARM_UP, observed, epoch, &mut sinks).await;
    for sink in sinks {
        let _ = sink.lock().await.close().await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
}

#[allow(clippy::cast_precision_loss)]
async fn measure(target: &Target, counts: &[usize], pairs: usize, messages: usize, rate: usize) {
    let observed = Arc::new(Observed::new(counts.iter().copied().max().unwrap_or(0)));
    let epoch = Instant::now();
    let mut sinks = Vec::new();
    // Let the server settle, then take its memory before any connection, and again after a few
    // came and went: the first connections also grow what every server has once (Tessera's SQLite
    // pool opens its connections, each with a thread), which is not a cost per connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cold_rss = target.server.rss();
    warm_up(target, &observed, epoch).await;
    let base_rss = target.server.rss();
    for &count in counts {
        let opened = sinks.len();
        open(target, opened..count, &observed, epoch, &mut sinks).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rss = target.server.rss();
        let per_connection = rss.saturating_sub(base_rss) as f64 / count as f64;
        let per_connection_cold = rss.saturating_sub(cold_rss) as f64 / count as f64;
        let (relayed, cpu, wall) = throughput(target, &sinks, &observed, pairs, messages).await;
        let per_cpu = relayed as f64 / cpu.as_secs_f64().max(0.001);
        let (p50, p99) = latency(target, &sinks, &observed, pairs, rate, epoch).await;
        println!(
            "{:<8} {:>6} conns | idle RSS {:>6.1} KB/conn ({:>5.1} without the warm-up; base {:>5.1} MB) | {:>7} msgs in {:>5.2} s wall, {:>5.2} s server CPU -> {:>7.0} msgs per server CPU-s | at {rate}/s: p50 {:>6.2} ms, p99 {:>6.2} ms",
            target.name,
            count,
            per_connection / 1024.0,
            per_connection_cold / 1024.0,
            base_rss as f64 / 1_048_576.0,
            relayed,
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            per_cpu,
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
        );
    }
}

/// The server's live tasks, from its `/metrics`.
async fn tasks(port: u16) -> u64 {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text.lines()
        .find_map(|l| l.strip_prefix("tessera_runtime_tasks "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One line of the soak's report.
#[allow(clippy::cast_precision_loss)]
async fn soak_report(target: &Target, when: &str, observed: &Observed, started: Instant) {
    println!(
        "{when:<18} {:>5.0} s | relayed {:>9} | RSS {:>7.1} MB | fds {:>6} | threads {:>3} | tasks {:>6} | server CPU {:>6.1} s",
        started.elapsed().as_secs_f64(),
        observed.relayed.load(Ordering::Relaxed),
        target.server.rss() as f64 / 1_048_576.0,
        target.server.fds(),
        target.server.threads(),
        tasks(target.port).await,
        target.server.cpu().as_secs_f64(),
    );
}

/// The soak: `connections` held for `secs` while `rate` signals a second flow between pairs of
/// them and `churn` connections a second close and open again.
async fn soak(target: &Target, connections: usize, secs: u64, rate: usize, churn: usize) {
    let observed = Arc::new(Observed::new(connections));
    let epoch = Instant::now();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    warm_up(target, &observed, epoch).await;
    soak_report(target, "before", &observed, started).await;
    let mut sinks = Vec::new();
    open(target, 0..connections, &observed, epoch, &mut sinks).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    soak_report(target, "connected", &observed, started).await;
    let pairs = connections / 2;
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (mut next_pair, mut next_churn, mut sent) = (0, 0, 0u64);
    let mut last_report = Instant::now();
    let soak_started = Instant::now();
    while soak_started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        for _ in 0..per_tick {
            let p = next_pair % pairs;
            next_pair += 1;
            let frame = target.message(2 * p + 1, 0);
            let mut sink = sinks[2 * p].lock().await;
            if sink.send(Message::text(frame)).await.is_ok() {
                sent += 1;
            }
        }
        // Every second, `churn` connections (never a sender this tick) close and come back.
        if next_pair % (per_tick * 100) < per_tick {
            for _ in 0..churn {
                let index = next_churn % connections;
                next_churn += 1;
                let _ = sinks[index].lock().await.close().await;
                let mut fresh = Vec::new();
                open(target, index..index + 1, &observed, epoch, &mut fresh).await;
                if let Some(sink) = fresh.pop() {
                    sinks[index] = sink;
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            soak_report(target, "soaking", &observed, started).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    soak_report(target, "end of the soak", &observed, started).await;
    println!("signals sent {sent}, connections churned {next_churn}");
    for sink in &sinks {
        let _ = sink.lock().await.close().await;
    }
    drop(sinks);
    tokio::time::sleep(Duration::from_secs(5)).await;
    soak_report(target, "all closed", &observed, started).await;
}

/// A bare relay, the floor to compare against: tokio-tungstenite with a 4 KiB read buffer, one
/// task per connection, no authentication, no limits. Speaks the PeerJS flavour (`id` in the query,
/// `dst` in the frame). Runs in a child process of this generator (`bare-relay PORT`).
#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
fn bare_relay(port: u16) {
    use std::collections::HashMap;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

    type Peers =
        Arc<std::sync::Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<Message>>>>;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let peers: Peers = Arc::default();
        while let Ok((socket, _)) = listener.accept().await {
            let peers = peers.clone();
            tokio::spawn(async move {
                let mut id = String::new();
                let callback = |request: &Request, response: Response| {
                    id = request
                        .uri()
                        .query()
                        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("id=")))
                        .unwrap_or_default()
                        .to_owned();
                    Ok(response)
                };
                let config = WebSocketConfig::default().read_buffer_size(4096);
                let Ok(stream) =
                    tokio_tungstenite::accept_hdr_async_with_config(socket, callback, Some(config))
                        .await
                else {
                    return;
                };
                let (mut sink, mut source) = stream.split();
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                if let Ok(mut p) = peers.lock() {
                    p.insert(id.clone(), tx);
                }
                let writer = tokio::spawn(async move {
                    while let Some(message) = rx.recv().await {
                        if sink.send(message).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(Message::Text(text))) = source.next().await {
                    let dst = serde_json::from_str::<serde_json::Value>(text.as_str())
                        .ok()
                        .and_then(|v| v.get("dst").and_then(|d| d.as_str()).map(str::to_owned));
                    if let (Some(dst), Ok(p)) = (dst, peers.lock())
                        && let Some(peer) = p.get(&dst)
                    {
                        let _ = peer.send(Message::Text(text));
                    }
                }
                if let Ok(mut p) = peers.lock() {
                    p.remove(&id);
                }
                writer.abort();
            });
        }
    });
}

fn start_bare_relay() -> (Server, u16) {
    let port = free_port();
    let child = Command::new(std::env::current_exe().expect("this generator"))
        .args(["bare-relay", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the bare relay starts");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the bare relay did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Server { child }, port)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(port) = args
        .iter()
        .position(|a| a == "bare-relay")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse().ok())
    {
        bare_relay(port);
        return;
    }
    let counts = env_list("CONNECTIONS", &[1000, 10_000]);
    let pairs = env_number("PAIRS", 100);
    let messages = env_number("MESSAGES", 200_000);
    let rate = env_number("OFFERED_PER_SECOND", 5000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let binary = std::env::var("TESSERA_SERVER_BIN")
        .map_or_else(|_| target_dir.join("release/tessera-server"), PathBuf::from);
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --release --bin tessera-server` first (or set TESSERA_SERVER_BIN)",
        binary.display()
    );
    // One core for the generator; the servers get the other.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "signalling relay load: {pairs} sending pairs, {messages} messages per throughput run, ~100-byte payloads, Tessera circles of {} devices",
        circle_size()
    );
    if let Some(secs) = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        let connections = env_number("SOAK_CONNECTIONS", 10_000);
        let churn = env_number("SOAK_CHURN", 10);
        let rate = env_number("OFFERED_PER_SECOND", 1000);
        println!(
            "signalling soak: {connections} connections for {secs} s, {rate} signals/s, {churn} reconnections/s"
        );
        runtime.block_on(async {
            let data = tempfile::tempdir().expect("temp dir");
            let (server, port, first) = start_tessera(&binary, data.path());
            let sessions = tessera_sessions(&binary, data.path(), port, first, connections).await;
            let tessera = Target {
                name: "tessera",
                server,
                port,
                flavour: Flavour::Tessera { sessions },
            };
            soak(&tessera, connections, secs, rate, churn).await;
        });
        return;
    }
    runtime.block_on(async {
        let data = tempfile::tempdir().expect("temp dir");
        let (server, port, first) = start_tessera(&binary, data.path());
        let most = counts.iter().copied().max().unwrap_or(0);
        let sessions = tessera_sessions(&binary, data.path(), port, first, most).await;
        let tessera = Target {
            name: "tessera",
            server,
            port,
            flavour: Flavour::Tessera { sessions },
        };
        measure(&tessera, &counts, pairs, messages, rate).await;
        drop(tessera);

        let (server, port) = start_bare_relay();
        let bare = Target {
            name: "bare",
            server,
            port,
            flavour: Flavour::PeerJs,
        };
        measure(&bare, &counts, pairs, messages, rate).await;
        drop(bare);
        if std::env::var("TARGETS").is_ok_and(|t| !t.contains("peerjs")) {
            return;
        }

        let (server, port) = start_peerjs(&root);
        let peerjs = Target {
            name: "peerjs",
            server,
            port,
            flavour: Flavour::PeerJs,
        };
        measure(&peerjs, &counts, pairs, messages, rate).await;
    });
}
