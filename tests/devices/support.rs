//! What the device tests run: a network namespace of their own, the real `tessera-server` and
//! `tessera` binaries as processes (killed by their own PID), and readers of what they print.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One namespace test at a time: each runs a server and several devices, and the machine has two
/// cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the named test (`module::name`) again inside a fresh network namespace (see
/// `tessera_tests::netns`); returns true when the caller is already inside and should run the test
/// body. Every server, device and WebRTC stack of the test stays inside.
pub fn inside_namespace(test: &str) -> bool {
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    run_inside(test, "the namespace", tessera_tests::netns::run_inside)
}

/// Runs the named test again through `runner` (a namespace, a VM), which answers `None` when
/// this process is the one inside; returns whether the caller should run the test body.
pub fn run_inside(test: &str, place: &str, runner: fn(&[&str]) -> Option<bool>) -> bool {
    match runner(&["--exact", test, "--nocapture", "--test-threads", "1"]) {
        None => true,
        Some(passed) => {
            assert!(passed, "{test} failed inside {place}");
            false
        }
    }
}

/// A binary of this workspace, built next to the test binary (`cargo test --workspace` and
/// `tests/run` build them all first).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe.parent().and_then(Path::parent).expect("target/debug");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run does)",
        path.display()
    );
    path
}

/// Lines a child prints, read on a thread.
fn read_lines(source: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (lines, received) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    received
}

/// Kills a child this test started, by its own PID, and reaps it.
fn end(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The `tessera-server` process, listening on `listen` for the origin `origin`.
pub struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        end(&mut self.child);
    }
}

impl Server {
    /// Starts the server on `127.0.0.1:port` for `origin` with its data in `data`; returns it with
    /// the admin link its first start prints (`None` on later starts).
    pub fn start(data: &Path, port: u16, origin: &str) -> (Server, Option<String>) {
        Server::start_with(data, port, origin, &[], &[])
    }

    /// As [`Server::start`], with more flags and environment variables.
    pub fn start_with(
        data: &Path,
        port: u16,
        origin: &str,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> (Server, Option<String>) {
        // Beside the data directory, so that what the server stores can be read on its own.
        let log = data.with_extension(format!("{}.log", unique()));
        let mut child = Command::new(binary("tessera-server"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--origin", origin])
            .args(["--log", "debug"])
            // Small frames, so that every Welcome past two devices (~1 KB a device) and every
            // catch-up answer with two commits goes in pieces; a commit adding two devices at
            // once (~2.5 KB) still fits.
            .args(["--ws-max-frame-bytes", "3072"])
            .args(flags)
            .envs(env.iter().copied())
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("the server starts");
        let stdout = read_lines(child.stdout.take().expect("stdout"));
        let server = Server { child };
        let mut link = None;
        loop {
            let line = stdout
                .recv_timeout(Duration::from_secs(30))
                .expect("the server prints its banner");
            if line.contains("/join/") {
                link = Some(line.trim().to_owned());
            }
            if line.contains("Tessera is serving") {
                break;
            }
        }
        (server, link)
    }

    /// Stops the server (SIGKILL: nothing graceful helps the devices).
    pub fn stop(mut self) {
        end(&mut self.child);
    }
}

/// A short unique string.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A member's device: its data directory and software key, used through the `tessera` CLI.
#[derive(Debug, Clone)]
pub struct Device {
    pub dir: PathBuf,
    pub key: PathBuf,
    /// The address its peer-link socket binds (`--bind`): loopback unless a test gives each
    /// device an address of its own.
    pub bind: IpAddr,
    /// Global flags every command of this device gets (e.g. `--relay-only`).
    pub flags: Vec<String>,
}

impl Device {
    /// A new device directory under `root` with a fresh blank key (`tessera soft-key new`).
    pub fn new(root: &Path, name: &str) -> Device {
        let device = Device {
            dir: root.join(name),
            key: root.join(format!("{name}.key")),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            flags: Vec::new(),
        };
        let out = device.run(&[
            "soft-key",
            "new",
            "--file",
            &device.key.display().to_string(),
        ]);
        assert!(out.status.success(), "key new: {}", text(&out));
        device
    }

    fn command(&self) -> Command {
        let mut command = tessera_in(&self.dir);
        command
            .arg("--key-file")
            .arg(&self.key)
            .arg("--bind")
            .arg(self.bind.to_string())
            .args(&self.flags);
        command
    }

    /// Runs a `tessera` command to its end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tessera runs")
    }

    /// Runs a `tessera` command that must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tessera {args:?} failed: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Joins with `link` under the display name `name`.
    pub fn join(&self, link: &str, name: &str) {
        self.ok(&["join", link, "--name", name]);
    }

    /// Starts `tessera chat --json`.
    pub fn chat(&self) -> Chat {
        self.spawn(&["chat", "--json"])
    }

    /// Starts `tessera serve` (its log lines are JSON like `chat --json`'s events).
    pub fn serve(&self) -> Chat {
        self.spawn(&["serve"])
    }

    fn spawn(&self, args: &[&str]) -> Chat {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tessera chat starts");
        let stdin = child.stdin.take().expect("stdin");
        let lines = read_lines(child.stdout.take().expect("stdout"));
        let errors = Arc::new(Mutex::new(String::new()));
        let sink = errors.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        Chat {
            child,
            stdin: Some(stdin),
            lines,
            seen: Vec::new(),
            errors,
            name: self.dir.display().to_string(),
        }
    }
}

/// The `tessera` CLI for the device in `dir`, with nothing of this process's environment but
/// `PATH` (its home is `dir` too).
pub fn tessera_in(dir: &Path) -> Command {
    let mut command = Command::new(binary("tessera"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .arg("--data-dir")
        .arg(dir);
    command
}

/// A command's output, for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running `tessera chat --json`: write lines to it, read its events.
pub struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every event it printed so far.
    pub seen: Vec<Value>,
    errors: Arc<Mutex<String>>,
    name: String,
}

impl Drop for Chat {
    fn drop(&mut self) {
        end(&mut self.child);
    }
}

/// How long any one wait of a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

impl Chat {
    /// Types a line (a message or a command).
    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the chat's input is open");
        writeln!(stdin, "{line}").expect("the chat reads its input");
        stdin.flush().expect("flush");
    }

    /// Reads events until one matches; fails the test with everything seen after `PATIENCE`.
    pub fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.seen.iter().find(|v| matches(v)) {
            return found.clone();
        }
        self.next_matching(what, matches)
    }

    /// Reads new events until one matches (ignoring those seen before).
    pub fn next_matching(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let value: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|_| panic!("{}: not JSON: {line}", self.name));
                    self.seen.push(value.clone());
                    if matches(&value) {
                        return value;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "{}: no {what} within {PATIENCE:?}; saw:\n{}\nstderr:\n{}",
                    self.name,
                    self.seen
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Reads whatever arrives within `quiet`.
    pub fn drain(&mut self, quiet: Duration) {
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            if let Ok(value) = serde_json::from_str(&line) {
                self.seen.push(value);
            }
        }
    }

    /// The device's status (`/status`).
    pub fn status(&mut self) -> Value {
        self.say("/status");
        self.next_matching("status", |v| v["event"] == "status")
    }

    /// The texts of the messages received from other devices, in order of arrival.
    pub fn received(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|v| v["event"] == "message" && v["outgoing"] == false)
            .filter_map(|v| v["text"].as_str().map(str::to_owned))
            .collect()
    }

    /// Events of one kind seen so far.
    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter(|v| v["event"] == kind)
            .cloned()
            .collect()
    }

    /// What it wrote to standard error so far.
    pub fn stderr(&self) -> String {
        self.errors.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Types `/quit` and waits for the process to end; its exit status and standard error.
    pub fn quit(mut self) -> (std::process::ExitStatus, String) {
        self.say("/quit");
        self.stdin = None;
        self.wait_exit()
    }

    /// Sends SIGTERM (as systemd stops a service) and waits for the process to end.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, String) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent");
        self.wait_exit()
    }

    /// Kills the process (SIGKILL, as a crash or a pulled plug would) and keeps what it printed
    /// before it died.
    pub fn kill(&mut self) {
        end(&mut self.child);
        self.stdin = None;
        self.drain(Duration::from_millis(200));
    }

    /// Waits (up to `PATIENCE`) for the process to end by itself.
    pub fn wait_exit(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the stderr reader finish.
                std::thread::sleep(Duration::from_millis(100));
                self.drain(Duration::from_millis(10));
                return (status, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit; stderr:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Matches a `message` event with `text`.
pub fn message_with(text: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| v["event"] == "message" && v["text"] == text
}

/// Waits until every chat reports the same epoch, a group of `size` devices and a link to each
/// of the others; returns the epoch.
pub fn wait_converged(chats: &mut [&mut Chat], size: usize) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = chats.iter_mut().map(|c| c.status()).collect();
        let epochs: Vec<Option<u64>> = last.iter().map(|s| s["epoch"].as_u64()).collect();
        let settled = last.iter().all(|s| {
            s["group"].as_object().is_some_and(|g| g.len() == size)
                && s["links"].as_array().is_some_and(|l| l.len() == size - 1)
        });
        if settled && epochs.iter().all(|e| e.is_some() && *e == epochs[0]) {
            return epochs[0].unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "the devices did not converge on a group of {size}: {}",
        last.iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The namespace's packet filter: one nftables table whose set of (from, to) address pairs is
/// dropped, so that a pair of devices loses every datagram between them while both keep the
/// server. Lives as long as the namespace (which the test deletes).
pub struct Net;

impl Net {
    pub fn new() -> Net {
        nft(
            &["-f", "-"],
            Some(
                "table inet chaos {\n\
               set cut { type ipv4_addr . ipv4_addr; }\n\
               chain input { type filter hook input priority 0; ip saddr . ip daddr @cut drop; }\n\
             }\n",
            ),
        );
        Net
    }

    /// Adds (`"add"`) or removes (`"delete"`) the pair `a`, `b` from the cut set, both ways.
    pub fn set(&self, verb: &str, a: IpAddr, b: IpAddr) {
        let elements = format!("{{ {a} . {b}, {b} . {a} }}");
        nft(&[verb, "element", "inet", "chaos", "cut", &elements], None);
    }
}

/// Runs `nft` (Debian's `nftables`, which `tests/run` installs).
fn nft(args: &[&str], input: Option<&str>) {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("nft runs (tests/run installs Debian's nftables)");
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        stdin
            .write_all(text.as_bytes())
            .expect("nft reads its rules");
    }
    let status = child.wait().expect("nft ends");
    assert!(status.success(), "nft {args:?} failed");
}
