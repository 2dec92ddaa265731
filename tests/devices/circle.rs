//! Members' devices as they are used: `tessera` CLI processes with software keys, the real server
//! process behind a relay that records (and, when told, alters) every signalling frame, real
//! WebRTC between the devices — all inside a network namespace each test makes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::relay::{Relay, Way};
use crate::support::{
    Chat, Device, Server, free_port, inside_namespace, message_with, unique, wait_converged,
};

/// A circle: the server (behind the relay) and its members' devices, the first one its admin.
pub(crate) struct Circle {
    root: tempfile::TempDir,
    server: Option<Server>,
    pub(crate) relay: Relay,
    port: u16,
    origin: String,
    pub(crate) devices: Vec<Device>,
    /// Display names, one per device, unique to this run.
    names: Vec<String>,
}

impl Circle {
    /// A server and `count` members, each enrolled with a software key through an invitation
    /// (the first from the server's admin link, the others from links the admin issued).
    pub(crate) fn new(count: usize) -> Circle {
        let root = tempfile::tempdir().expect("temp dir");
        let (port, relay_port) = (free_port(), free_port());
        // Devices see the relay as the server: the origin is the relay's.
        let origin = format!("http://localhost:{relay_port}");
        let relay = Relay::start(relay_port, port);
        let (server, link) = Server::start(&root.path().join("server"), port, &origin);
        let mut circle = Circle {
            root,
            server: Some(server),
            relay,
            port,
            origin,
            devices: Vec::new(),
            names: Vec::new(),
        };
        let admin_link = link.expect("the first start prints the admin link");
        for i in 0..count {
            let link = if i == 0 {
                admin_link.clone()
            } else {
                circle.invite()
            };
            circle.enroll(&link);
        }
        circle
    }

    /// The directory the circle's server and devices keep their data under.
    pub(crate) fn dir(&self) -> &Path {
        self.root.path()
    }

    /// An invitation link issued by the admin's device (`tessera admin invite`).
    pub(crate) fn invite(&self) -> String {
        self.devices[0].ok(&["admin", "invite"]).trim().to_owned()
    }

    /// A new device enrolled with `link`; its index.
    pub(crate) fn enroll(&mut self, link: &str) -> usize {
        let index = self.devices.len();
        let name = format!("Name{index}x{}", unique());
        let device = Device::new(self.root.path(), &format!("device{index}"));
        device.join(link, &name);
        self.devices.push(device);
        self.names.push(name);
        index
    }

    pub(crate) fn chat(&self, index: usize) -> Chat {
        self.devices[index].chat()
    }

    pub(crate) fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    pub(crate) fn start_server(&mut self) {
        let (server, link) = Server::start(&self.server_dir(), self.port, &self.origin);
        assert!(link.is_none(), "a restart prints no admin link");
        self.server = Some(server);
    }

    fn server_dir(&self) -> PathBuf {
        self.root.path().join("server")
    }

    /// Everything the server wrote: its log and its data directory's files.
    pub(crate) fn server_traces(&self) -> Vec<(String, Vec<u8>)> {
        let mut traces = Vec::new();
        let mut read_dir = |dir: &Path, pick: &dyn Fn(&str) -> bool| {
            for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_file() && pick(&name) {
                    traces.push((name, std::fs::read(entry.path()).expect("read")));
                }
            }
        };
        read_dir(&self.server_dir(), &|_| true);
        read_dir(self.root.path(), &|name| {
            name.starts_with("server.") && name.ends_with(".log")
        });
        traces
    }
}

/// Counts how often each text arrived.
fn counts(chat: &Chat) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for text in chat.received() {
        *counts.entry(text).or_default() += 1;
    }
    counts
}

/// Asserts that no trace holds any of `secrets`.
pub(crate) fn assert_absent(traces: &[(String, Vec<u8>)], secrets: &[&str]) {
    for (name, bytes) in traces {
        let text = String::from_utf8_lossy(bytes);
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{name} holds {secret:?}, which the server must never see"
            );
        }
    }
}

#[test]
fn three_devices_talk_peer_to_peer_and_the_server_sees_no_text_name_or_address() {
    if !inside_namespace(
        "circle::three_devices_talk_peer_to_peer_and_the_server_sees_no_text_name_or_address",
    ) {
        return;
    }
    let mut circle = Circle::new(3);
    let mut chats: Vec<Chat> = (0..3).map(|i| circle.chat(i)).collect();
    {
        let mut all: Vec<&mut Chat> = chats.iter_mut().collect();
        wait_converged(&mut all, 3);
    }
    let texts: Vec<String> = (0..3)
        .map(|i| format!("secret text {i} {}", unique()))
        .collect();
    for (i, text) in texts.iter().enumerate() {
        chats[i].say(text);
        for (j, chat) in chats.iter_mut().enumerate() {
            if j != i {
                let got = chat.wait_for("the message", message_with(text));
                assert_eq!(got["name"], circle.names[i], "the sender's display name");
            }
        }
        chats[i].wait_for("the second acknowledgement", |v| v["event"] == "delivered");
    }
    for chat in &mut chats {
        chat.drain(Duration::from_secs(1));
    }
    for (i, chat) in chats.iter().enumerate() {
        let expected: BTreeMap<String, usize> = texts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, t)| (t.clone(), 1))
            .collect();
        assert_eq!(counts(chat), expected, "device {i}: every message once");
    }
    for chat in chats {
        let (status, stderr) = chat.quit();
        assert!(status.success(), "chat ended badly: {stderr}");
    }
    circle.stop_server();

    let mut secrets: Vec<&str> = texts.iter().map(String::as_str).collect();
    secrets.extend(circle.names.iter().map(String::as_str));
    let frames = circle.relay.frames();
    assert!(
        frames.iter().any(|f| f.contains("\"t\":\"mls\"")),
        "the relay saw the devices' sealed negotiation"
    );
    assert!(
        frames
            .iter()
            .any(|f| f.contains(r#""t":"piece","id""#) && f.contains(r#"{\"t\":\"welcome\""#)),
        "the third device's Welcome (over 3 KiB) went in pieces"
    );
    let frames = vec![("relayed frames".to_owned(), frames.join("\n").into_bytes())];
    // The WebRTC addresses travel sealed: the server never learns where the devices are.
    assert_absent(&frames, &secrets);
    assert_absent(&frames, &["127.0.0.1", "candidate:", "a=fingerprint"]);
    assert_absent(&circle.server_traces(), &secrets);
}

#[test]
fn links_keep_delivering_while_the_server_is_down_and_devices_reconnect_after() {
    if !inside_namespace(
        "circle::links_keep_delivering_while_the_server_is_down_and_devices_reconnect_after",
    ) {
        return;
    }
    let mut circle = Circle::new(2);
    let (mut a, mut b) = (circle.chat(0), circle.chat(1));
    wait_converged(&mut [&mut a, &mut b], 2);

    circle.stop_server();
    for chat in [&mut a, &mut b] {
        chat.wait_for("the lost server", |v| v["event"] == "disconnected");
    }
    let during = format!("while the server is down {}", unique());
    a.say(&during);
    b.wait_for("the message sent over the link", message_with(&during));
    let reply = format!("reply while down {}", unique());
    b.say(&reply);
    a.wait_for("the reply", message_with(&reply));

    circle.start_server();
    for chat in [&mut a, &mut b] {
        chat.next_matching("the reconnection", |v| v["event"] == "connected");
    }
    // A device that joins after the restart connects too.
    let link = circle.invite();
    let c_index = circle.enroll(&link);
    let mut c = circle.chat(c_index);
    wait_converged(&mut [&mut a, &mut b, &mut c], 3);
    let hello = format!("newcomer after restart {}", unique());
    c.say(&hello);
    a.wait_for("the newcomer's message", message_with(&hello));
    b.wait_for("the newcomer's message", message_with(&hello));
}

/// Sends `texts` in turn from `a` and from `b`, each received by the other before the next.
fn exchange(a: &mut Chat, b: &mut Chat, texts: &[String]) {
    for (i, text) in texts.iter().enumerate() {
        let (sender, other) = if i % 2 == 0 {
            (&mut *a, &mut *b)
        } else {
            (&mut *b, &mut *a)
        };
        sender.say(text);
        other.wait_for("the message", message_with(text));
    }
}

#[test]
fn a_device_that_was_away_receives_every_missed_message_exactly_once() {
    if !inside_namespace(
        "circle::a_device_that_was_away_receives_every_missed_message_exactly_once",
    ) {
        return;
    }
    let circle = Circle::new(3);
    let (mut a, mut b, mut c) = (circle.chat(0), circle.chat(1), circle.chat(2));
    wait_converged(&mut [&mut a, &mut b, &mut c], 3);
    let (status, stderr) = c.quit();
    assert!(status.success(), "{stderr}");

    let missed: Vec<String> = (0..4).map(|i| format!("missed {i} {}", unique())).collect();
    exchange(&mut a, &mut b, &missed);

    let mut c = circle.chat(2);
    for text in &missed {
        c.wait_for("a missed message", message_with(text));
    }
    c.drain(Duration::from_secs(2));
    let got = counts(&c);
    for text in &missed {
        assert_eq!(got.get(text), Some(&1), "{text} exactly once: {got:?}");
    }
    // Per sender, in the order sent.
    let order = c.received();
    let position = |t: &String| order.iter().position(|o| o == t);
    assert!(position(&missed[0]) < position(&missed[2]));
    assert!(position(&missed[1]) < position(&missed[3]));
    let (status, stderr) = c.quit();
    assert!(status.success(), "{stderr}");
    let history = circle.devices[2].ok(&["history"]);
    for text in &missed {
        assert_eq!(history.matches(text.as_str()).count(), 1, "{history}");
    }
}

#[test]
fn a_revoked_member_is_removed_from_the_group_and_reads_nothing_sent_after() {
    if !inside_namespace(
        "circle::a_revoked_member_is_removed_from_the_group_and_reads_nothing_sent_after",
    ) {
        return;
    }
    let circle = Circle::new(3);
    let (mut a, mut b, mut c) = (circle.chat(0), circle.chat(1), circle.chat(2));
    let epoch = wait_converged(&mut [&mut a, &mut b, &mut c], 3);
    let revoked = c.status()["member"].as_str().expect("member id").to_owned();

    circle.devices[0].ok(&["admin", "revoke", &revoked]);
    let (status, stderr) = c.wait_exit();
    assert!(!status.success(), "the revoked device stops");
    assert!(stderr.contains("revoked"), "and says why: {stderr}");

    let after = wait_converged(&mut [&mut a, &mut b], 2);
    assert!(
        after > epoch,
        "the removal is a new epoch ({epoch} → {after})"
    );
    let secret = format!("after the revocation {}", unique());
    a.say(&secret);
    b.wait_for("the message", message_with(&secret));

    // The revoked device cannot come back: its session is gone and so is its place in the group.
    let mut again = circle.chat(2);
    let (status, stderr) = again.wait_exit();
    assert!(!status.success(), "a revoked member cannot chat: {stderr}");
    assert!(!again.received().contains(&secret));
    let history = circle.devices[2].ok(&["history"]);
    assert!(!history.contains(&secret), "{history}");
    let login = circle.devices[2].run(&["login"]);
    assert!(!login.status.success());
    assert!(
        crate::support::text(&login).contains("revoked"),
        "{}",
        crate::support::text(&login)
    );
}

#[test]
fn two_newcomers_at_once_converge_to_one_epoch_and_everyone_talks() {
    if !inside_namespace("circle::two_newcomers_at_once_converge_to_one_epoch_and_everyone_talks") {
        return;
    }
    let circle = Circle::new(4);
    let (mut a, mut b) = (circle.chat(0), circle.chat(1));
    wait_converged(&mut [&mut a, &mut b], 2);
    let (mut c, mut d) = (circle.chat(2), circle.chat(3));
    wait_converged(&mut [&mut a, &mut b, &mut c, &mut d], 4);
    let text = format!("from a newcomer {}", unique());
    d.say(&text);
    for chat in [&mut a, &mut b, &mut c] {
        chat.wait_for("the message", message_with(&text));
    }
}

/// Alters one character in the middle of a base64url string.
fn flip(value: &mut Value) {
    if let Some(text) = value.as_str() {
        let mut bytes = text.as_bytes().to_vec();
        let middle = bytes.len() / 2;
        bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
        *value = Value::String(String::from_utf8(bytes).expect("ascii"));
    }
}

fn refusals(chats: &[&Chat], what: &str) -> usize {
    chats
        .iter()
        .map(|c| {
            c.events("refused")
                .iter()
                .filter(|e| e["what"] == what)
                .count()
        })
        .sum()
}

#[test]
fn a_relay_that_alters_or_substitutes_key_packages_or_sealed_negotiation_is_refused() {
    if !inside_namespace(
        "circle::a_relay_that_alters_or_substitutes_key_packages_or_sealed_negotiation_is_refused",
    ) {
        return;
    }
    let circle = Circle::new(4);
    let (mut a, mut b) = (circle.chat(0), circle.chat(1));
    let epoch = wait_converged(&mut [&mut a, &mut b], 2);

    // 1. A newcomer's KeyPackage altered on its way: refused, nobody added.
    circle.relay.set_tamper(Some(Box::new(|_, way, frame| {
        if way == Way::Up && frame["payload"]["t"] == "key_package" {
            flip(&mut frame["payload"]["kp"]);
        }
        true
    })));
    let mut c = circle.chat(2);
    let c_device = c.status()["device"].as_str().expect("device").to_owned();
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while refusals(&[&a, &b], "KeyPackage") == 0 {
        assert!(std::time::Instant::now() < deadline, "no refusal came");
        a.drain(Duration::from_millis(200));
        b.drain(Duration::from_millis(200));
        let status = a.status();
        assert_eq!(
            status["epoch"].as_u64(),
            Some(epoch),
            "nothing was committed"
        );
    }

    // 2. Another newcomer's announcement carrying the first one's genuine KeyPackage: the
    //    certificate names another device than the sender, so it is refused too.
    let captured: Value = circle
        .relay
        .frames()
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .find(|f| f["payload"]["t"] == "key_package")
        .map(|f| f["payload"]["kp"].clone())
        .expect("the first newcomer announced its KeyPackage");
    let c_for_swap = c_device.clone();
    circle
        .relay
        .set_tamper(Some(Box::new(move |device, way, frame| {
            if way != Way::Up || frame["payload"]["t"] != "key_package" {
                return true;
            }
            if device == c_for_swap {
                return false; // keep the first newcomer quiet meanwhile
            }
            frame["payload"]["kp"] = captured.clone();
            true
        })));
    let before = refusals(&[&a, &b], "KeyPackage");
    let mut d = circle.chat(3);
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while refusals(&[&a, &b], "KeyPackage") == before {
        assert!(std::time::Instant::now() < deadline, "no refusal came");
        a.drain(Duration::from_millis(200));
        b.drain(Duration::from_millis(200));
        let status = b.status();
        assert_eq!(
            status["epoch"].as_u64(),
            Some(epoch),
            "nothing was committed"
        );
        assert_eq!(
            status["group"].as_object().map(serde_json::Map::len),
            Some(2)
        );
    }
    assert!(c.status()["epoch"].is_null() && d.status()["epoch"].is_null());

    // 3. Honest KeyPackages, but every sealed negotiation (SDP, ICE) towards the first newcomer
    //    altered: it is refused, so no link to it opens, while the others link.
    let c_for_mls = c_device.clone();
    circle
        .relay
        .set_tamper(Some(Box::new(move |device, way, frame| {
            if device == c_for_mls && way == Way::Down && frame["payload"]["t"] == "mls" {
                flip(&mut frame["payload"]["msg"]);
            }
            true
        })));
    c.wait_for("a refused sealed negotiation", |v| {
        v["event"] == "refused" && v["what"] == "MLS signal"
    });
    wait_until(&mut d, |s| {
        s["group"].as_object().map(serde_json::Map::len) == Some(4)
            && s["links"].as_array().map(Vec::len) == Some(2)
    });
    let status = c.status();
    assert_eq!(
        status["group"].as_object().map(serde_json::Map::len),
        Some(4)
    );
    assert_eq!(
        status["links"].as_array().map(Vec::len),
        Some(0),
        "no link opened from altered negotiation: {status}"
    );

    // Honest again: everything heals.
    circle.relay.set_tamper(None);
    wait_converged(&mut [&mut a, &mut b, &mut c, &mut d], 4);
    let text = format!("after the tampering {}", unique());
    c.say(&text);
    for chat in [&mut a, &mut b, &mut d] {
        chat.wait_for("the message", message_with(&text));
    }
}

/// Polls a chat's status until `done`, for at most the tests' patience.
fn wait_until(chat: &mut Chat, done: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let status = chat.status();
        if done(&status) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reached: {status}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Ends a device's session on the server behind its back, as a logout from elsewhere would: the
/// session token read from its store, then `POST /api/v1/logout` with it.
fn end_session(device: &Device, origin: &str) {
    let session = session_of(device);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let ended = reqwest::Client::new()
            .post(format!("{origin}/api/v1/logout"))
            .bearer_auth(session)
            .send()
            .await
            .expect("the server answers");
        assert_eq!(ended.status().as_u16(), 204);
    });
}

/// The session a device's store holds.
fn session_of(device: &Device) -> String {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(device.dir.join("device.db"))
            .read_only(true);
        let mut store = sqlx::ConnectOptions::connect(&options)
            .await
            .expect("the device's store opens");
        sqlx::query_scalar("SELECT session FROM profile")
            .fetch_one(&mut store)
            .await
            .expect("a session")
    })
}

#[test]
fn an_always_on_serve_device_adds_newcomers_alone_logs_no_text_and_renews_its_session() {
    if !inside_namespace(
        "circle::an_always_on_serve_device_adds_newcomers_alone_logs_no_text_and_renews_its_session",
    ) {
        return;
    }
    let circle = Circle::new(3);
    let mut serve = circle.devices[0].serve();
    serve.wait_for("the group it creates", |v| v["event"] == "group_created");

    // A newcomer while only the serving device is online: it is added.
    let mut b = circle.chat(1);
    b.wait_for("being added", |v| v["event"] == "joined");
    let secret = format!("text the mailbox must not log {}", unique());
    b.say(&secret);
    b.wait_for("the mailbox's acknowledgement", |v| {
        v["event"] == "delivered"
    });
    let (status, stderr) = b.quit();
    assert!(status.success(), "{stderr}");

    // Its session ends (as one expires): it renews it with its device key, no key file touched,
    // keeps the new one, and serves on.
    let before = session_of(&circle.devices[0]);
    let key_file = std::fs::read(&circle.devices[0].key).ok();
    end_session(&circle.devices[0], &circle.origin);
    serve.wait_for("its session renewed", |v| v["event"] == "session_renewed");
    let mut c = circle.chat(2);
    c.wait_for("being added after the renewal", |v| v["event"] == "joined");
    let (status, stderr) = c.quit();
    assert!(status.success(), "{stderr}");
    assert_ne!(
        session_of(&circle.devices[0]),
        before,
        "the new session is kept"
    );
    assert_eq!(
        std::fs::read(&circle.devices[0].key).ok(),
        key_file,
        "the key was not used"
    );
    assert!(serve.events("logging_in_again").is_empty());

    // A command run alone renews an ended session the same way.
    end_session(&circle.devices[1], &circle.origin);
    let keys = circle.devices[1].ok(&["keys", "list"]);
    assert!(!keys.is_empty(), "the member's keys are listed");

    // SIGTERM ends it cleanly; its log held no message text and no name.
    let (status, stderr) = serve.terminate();
    assert!(status.success(), "serve ended badly: {stderr}");
    let log: String = serve
        .seen
        .iter()
        .map(serde_json::Value::to_string)
        .collect();
    assert!(
        log.contains("\"event\":\"message\""),
        "it logged the message: {log}"
    );
    assert!(!log.contains(&secret), "the log holds a message text");
    for name in &circle.names {
        assert!(!log.contains(name.as_str()), "the log holds a name");
    }
}

/// Waits until the device's group has `size` devices.
fn wait_for_group(chat: &mut Chat, size: usize) {
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let status = chat.status();
        if status["group"].as_object().is_some_and(|g| g.len() == size) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no group of {size}: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_message_reaches_a_member_never_online_with_its_sender_through_a_serve_device() {
    if !inside_namespace(
        "circle::a_message_reaches_a_member_never_online_with_its_sender_through_a_serve_device",
    ) {
        return;
    }
    let mut circle = Circle::new(3);
    let mut serve = circle.devices[0].serve();
    serve.wait_for("the group it creates", |v| v["event"] == "group_created");
    // The sender and the recipient join one after the other, each alone with the mailbox.
    for index in [1, 2] {
        let mut chat = circle.chat(index);
        chat.wait_for("being added", |v| v["event"] == "joined");
        let (status, stderr) = chat.quit();
        assert!(status.success(), "{stderr}");
    }

    let mut sender = circle.chat(1);
    // A message is for the group its sender knows: the sender first learns that the recipient
    // joined while it was away.
    wait_for_group(&mut sender, 3);
    let texts: Vec<String> = (0..3)
        .map(|i| format!("carried {i} {}", unique()))
        .collect();
    for text in &texts {
        sender.say(text);
    }
    for _ in &texts {
        sender.next_matching("the mailbox's acknowledgement", |v| {
            v["event"] == "delivered" && v["carried"] == false
        });
    }
    let (status, stderr) = sender.quit();
    assert!(status.success(), "{stderr}");

    // The mailbox and the server restart while no member's device is online.
    let (status, stderr) = serve.terminate();
    assert!(status.success(), "serve ended badly: {stderr}");
    circle.stop_server();
    circle.start_server();
    let mut serve = circle.devices[0].serve();

    let mut recipient = circle.chat(2);
    for text in &texts {
        recipient.wait_for("a carried message", message_with(text));
    }
    recipient.drain(Duration::from_secs(2));
    let got = counts(&recipient);
    for text in &texts {
        assert_eq!(got.get(text), Some(&1), "{text} exactly once: {got:?}");
    }
    assert_eq!(
        recipient.received(),
        texts,
        "in the order sent, and nothing else"
    );
    let status = recipient.status();
    assert_eq!(status["missing"], 0, "nothing left waiting: {status}");
    let recipient_device = status["device"].clone();
    let (status, stderr) = recipient.quit();
    assert!(status.success(), "{stderr}");

    // The sender, back, learns from the mailbox that the recipient holds its messages.
    let mut sender = circle.chat(1);
    for _ in &texts {
        sender.next_matching("a receipt carried by the mailbox", |v| {
            v["event"] == "delivered" && v["carried"] == true && v["device"] == recipient_device
        });
    }
    let (status, stderr) = sender.quit();
    assert!(status.success(), "{stderr}");
    let (status, stderr) = serve.terminate();
    assert!(status.success(), "serve ended badly: {stderr}");
    let history = circle.devices[2].ok(&["history"]);
    for text in &texts {
        assert_eq!(history.matches(text.as_str()).count(), 1, "{history}");
    }
}

#[test]
fn a_members_new_cli_device_made_by_login_receives_their_history_from_their_other_device() {
    if !inside_namespace(
        "circle::a_members_new_cli_device_made_by_login_receives_their_history_from_their_other_device",
    ) {
        return;
    }
    let circle = Circle::new(2);
    let (mut a, mut b) = (circle.chat(0), circle.chat(1));
    wait_converged(&mut [&mut a, &mut b], 2);
    let texts: Vec<String> = (0..6)
        .map(|i| format!("before the new device {i} {}", unique()))
        .collect();
    exchange(&mut a, &mut b, &texts);

    // The second member's new device: a data directory of its own, her key file, `login`.
    let first = &circle.devices[1];
    let second = Device {
        dir: circle.root.path().join("device1-second"),
        key: first.key.clone(),
        bind: first.bind,
        flags: vec!["--server".into(), circle.origin.clone()],
    };
    let said = second.ok(&["login"]);
    assert!(said.contains("is now your device"), "{said}");
    let mut b2 = second.chat();
    let done = b2.wait_for("her history, whole", |v| {
        v["event"] == "history_progress" && v["done"] == true
    });
    assert!(done["received"].as_u64().is_some_and(|n| n >= 6), "{done}");
    assert!(
        b2.events("refused").is_empty(),
        "{:?}",
        b2.events("refused")
    );
    let (status, stderr) = b2.quit();
    assert!(status.success(), "{stderr}");
    let history = second.ok(&["history"]);
    for text in &texts {
        assert_eq!(history.matches(text.as_str()).count(), 1, "{history}");
    }
    // It found the circle's root from her key, and keeps it: the safety number shows.
    let members = second.ok(&["members"]);
    assert!(members.contains("Safety number"), "{members}");
    for chat in [a, b] {
        let (status, stderr) = chat.quit();
        assert!(status.success(), "{stderr}");
    }
}

#[test]
fn replies_reactions_edits_and_deletions_from_the_command_line_reach_another_device() {
    if !inside_namespace(
        "circle::replies_reactions_edits_and_deletions_from_the_command_line_reach_another_device",
    ) {
        return;
    }
    let circle = Circle::new(2);
    let (mut a, mut b) = (circle.chat(0), circle.chat(1));
    wait_converged(&mut [&mut a, &mut b], 2);
    let question = format!("Lunch at noon? {}", unique());
    a.say(&question);
    let asked = b.wait_for("the question", message_with(&question));
    let id = asked["id"].as_str().expect("id").to_owned();
    let short = &id[..8];
    let (status, stderr) = a.quit();
    assert!(status.success(), "{stderr}");

    // Ada edits and reacts with one-shot commands, naming the message by the start of its id.
    let edited = format!("Lunch at one? {}", unique());
    circle.devices[0].ok(&["edit", short, &edited]);
    b.wait_for("the edit", |v| {
        v["event"] == "message_changed"
            && v["change"]["kind"] == "edit"
            && v["change"]["text"] == edited
    });
    let reacted = circle.devices[0].ok(&["react", short, "🎉"]);
    assert!(reacted.contains("delivered to 1 of 1"), "{reacted}");
    b.wait_for("the reaction", |v| {
        v["event"] == "message_changed" && v["change"]["emoji"] == "🎉"
    });
    // Clear refusals, with nothing sent.
    let unknown = crate::support::text(&circle.devices[0].run(&["react", "ffffffff", "👍"]));
    assert!(
        unknown.contains("no message on this device has an id starting with"),
        "{unknown}"
    );
    let words = crate::support::text(&circle.devices[0].run(&["react", short, "two words"]));
    assert!(words.contains("a reaction is one emoji"), "{words}");

    // Bea answers in her chat, and is not allowed to edit Ada's message.
    let answer = format!("Yes, the usual place {}", unique());
    b.say(&format!("/reply {short} {answer}"));
    let sent = b.wait_for("her answer", message_with(&answer));
    assert_eq!(sent["reply_to"]["id"], asked["id"]);
    b.say(&format!("/edit {short} Bea's words"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !b
        .stderr()
        .contains("only the member who wrote a message edits or deletes it")
    {
        assert!(std::time::Instant::now() < deadline, "{}", b.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }

    circle.devices[0].ok(&["delete", short]);
    b.wait_for("the deletion", |v| {
        v["event"] == "message_changed" && v["change"]["kind"] == "delete"
    });
    let (status, stderr) = b.quit();
    assert!(status.success(), "{stderr}");
    let history = circle.devices[1].ok(&["history"]);
    assert!(history.contains(&format!("{short}] ")), "{history}");
    assert!(history.contains(": (deleted)"), "{history}");
    assert!(
        !history.contains(&question) && !history.contains(&edited),
        "{history}"
    );
    assert!(history.contains(&answer), "{history}");
    // Search finds the answer by any of its words, in any case, and nothing of the deleted one.
    let found = circle.devices[1].ok(&["search", "USUAL", "yes,"]);
    assert!(found.contains(&answer), "{found}");
    let gone = circle.devices[1].ok(&["search", "Lunch"]);
    assert!(
        gone.contains("No message on this device holds every word of that."),
        "{gone}"
    );
}
