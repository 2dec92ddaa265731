//! Load generator: messages carried by a third device. Three native devices (the real driver,
//! SQLite stores on disk, str0m over UDP) with the real server in this process, inside a network
//! namespace this benchmark makes: a sender, a recipient and a carrier. Measures the time from the
//! recipient's device starting to the messages shown when its sender is online (direct) and when
//! only the carrier has them (carried), in the same run; then what the carrier spends to keep
//! `KEPT` messages for others: rows and bytes in its store, and the process's resident memory.
//!
//! Run: `cargo bench -p tessera-tests --bench carrying` (environment: `ROUNDS`, `BATCH`, `KEPT`).
//! Every phase is bounded in count and time.

use std::path::Path;
use std::time::{Duration, Instant};

use tessera_client::device::DeviceHandle;
use tessera_tests::native::{Counting, new_device, restart, store_path, wait_in_group};
use tessera_tests::{TestApp, TestMember, env_number};
use tessera_wire::Role;
use uuid::Uuid;

/// The process's resident memory, in KiB.
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The carried rows in a device's store: (rows, bytes of ciphertext), and the file's size.
async fn stored(dir: &Path, device: Uuid) -> (i64, i64, u64) {
    let path = store_path(dir, device);
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true);
    let mut store = sqlx::ConnectOptions::connect(&options)
        .await
        .expect("the store opens");
    let (rows, bytes): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), sum(length(message)) FROM carried")
            .fetch_one(&mut store)
            .await
            .expect("carried rows");
    let size = ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            std::fs::metadata(format!("{}{suffix}", path.display()))
                .ok()
                .map(|m| m.len())
        })
        .sum();
    (rows, bytes.unwrap_or(0), size)
}

async fn device_id(device: &DeviceHandle) -> Uuid {
    device.status().await.expect("status").view.device
}

/// Sends `count` messages from `sender` and waits until `carrier` showed them.
async fn send(sender: &DeviceHandle, carrier: &mut Counting, count: usize, text: &str) {
    let before = *carrier.counted.borrow();
    for _ in 0..count {
        sender.send_text(text).await.expect("send");
    }
    carrier.wait_count(before + count).await;
}

/// Starts the recipient again and times it until it showed `count` more messages.
async fn receive(
    app: &TestApp,
    member: &mut TestMember,
    dir: &Path,
    device: Uuid,
    count: usize,
) -> Duration {
    let started = Instant::now();
    let mut recipient = Counting::start(restart(app, member, dir, device).await);
    recipient.wait_count(count).await;
    let elapsed = started.elapsed();
    recipient.stop().await;
    elapsed
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

#[allow(clippy::too_many_lines)]
async fn carrying() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let mut bob = app.invite(&mut admin, Role::Member, "bob").await;
    let mut cleo = app.invite(&mut admin, Role::Member, "cleo").await;

    let carrier = new_device(&app, &mut admin, dir).await;
    wait_in_group(&carrier).await;
    let carrier_id = device_id(&carrier).await;
    let mut carrier = Counting::start(carrier);
    bob.client.login(&mut bob.key).await.expect("login");
    let sender = new_device(&app, &mut bob, dir).await;
    wait_in_group(&sender).await;
    let sender_id = device_id(&sender).await;
    cleo.client.login(&mut cleo.key).await.expect("login");
    let recipient = new_device(&app, &mut cleo, dir).await;
    wait_in_group(&recipient).await;
    let recipient_id = device_id(&recipient).await;
    // A first message to everyone, so that every link has been up once.
    let mut recipient = Counting::start(recipient);
    sender.send_text("hello").await.expect("send");
    recipient.wait_count(1).await;
    recipient.stop().await;
    let mut sender = Some(sender);

    let rounds = env_number("ROUNDS", 5);
    let batch = env_number("BATCH", 100);
    let text = "x".repeat(100);
    let mut direct = Vec::new();
    let mut carried = Vec::new();
    for _ in 0..rounds {
        for via_carrier in [false, true] {
            let online = match sender.take() {
                Some(online) => online,
                None => restart(&app, &mut bob, dir, sender_id).await,
            };
            send(&online, &mut carrier, batch, &text).await;
            if via_carrier {
                // The sender goes away before the recipient comes: only the carrier has them.
                online.stop().await.expect("the sender stops");
            } else {
                sender = Some(online);
            }
            let elapsed = receive(&app, &mut cleo, dir, recipient_id, batch).await;
            if via_carrier {
                carried.push(elapsed);
            } else {
                direct.push(elapsed);
            }
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (direct_median, carried_median) = (median(&mut direct), median(&mut carried));

    // What the carrier spends on KEPT messages for others (the recipient stays away).
    let kept = env_number("KEPT", 10_000);
    let sender = match sender.take() {
        Some(online) => online,
        None => restart(&app, &mut bob, dir, sender_id).await,
    };
    carrier.stop().await;
    let (_, _, size_before) = stored(dir, carrier_id).await;
    let mut carrier = Counting::start(restart(&app, &mut admin, dir, carrier_id).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let memory_before = resident_kib();
    send(&sender, &mut carrier, kept, &text).await;
    let memory_after = resident_kib();
    carrier.stop().await;
    let (rows, bytes, size_after) = stored(dir, carrier_id).await;
    sender.stop().await.expect("the sender stops");

    println!(
        "recipient start → {batch} × 100-byte messages shown, {rounds} rounds: \
         direct (sender online) median {} ({}), carried (only the carrier has them) median {} ({}); \
         carried / direct {:.2}",
        ms(direct_median),
        direct.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", "),
        ms(carried_median),
        carried
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(", "),
        carried_median.as_secs_f64() / direct_median.as_secs_f64()
    );
    println!(
        "carrier after {kept} more 100-byte messages: {rows} rows kept for others (at most \
         10,000 by default), {bytes} bytes of ciphertext; store file {:+} bytes (with the same \
         messages' history rows); resident memory of the whole process (three devices, the \
         server) {:+} KiB",
        i128::from(size_after) - i128::from(size_before),
        i128::from(memory_after) - i128::from(memory_before),
    );
}

fn main() {
    // WebRTC stays inside a namespace of its own.
    if let Some(passed) = tessera_tests::netns::run_inside(&[]) {
        assert!(passed, "the benchmark failed inside its namespace");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(carrying());
}
