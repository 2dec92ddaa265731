//! Load generator: two native devices — the real driver (`DeviceHandle`), their SQLite stores on
//! disk, str0m over UDP — with the real server in this process, inside a network namespace this
//! benchmark makes. Measures the time from login to the first peer-to-peer message (a new device,
//! which must first be added to the group, and a device already in it), then application messages
//! per second and MB/s over one link, then a file (stored, then fetched chunk by chunk) with the
//! process's peak memory above what it used before; next to raw openmls and raw str0m in the same
//! run.
//!
//! Run: `cargo bench -p tessera-tests --bench device_link` (environment: `MESSAGES`, `LARGE`,
//! `FILE_MB`).
//! Every phase is bounded in count and time.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage, MlsGroup, MlsGroupCreateConfig,
    MlsMessageBodyIn, MlsMessageIn, ProcessedMessageContent, ProtocolMessage, StagedWelcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use tessera_client::device::DeviceHandle;
use tessera_tests::loopback::{Side, run};
use tessera_tests::native::{Counting, new_device, restart, wait_in_group};
use tessera_tests::{TestApp, env_number};
use tessera_wire::Role;

/// 100-byte application messages per second through raw openmls: encrypt at one member, serialise,
/// parse and decrypt at the other, on one thread (the ciphersuite the engine uses).
fn openmls_messages_per_second() -> f64 {
    let suite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let member = |name: &str| {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(suite.signature_algorithm()).expect("key");
        signer.store(provider.storage()).expect("store");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        (provider, signer, credential)
    };
    let (alice_provider, alice_signer, alice_credential) = member("alice");
    let (bob_provider, bob_signer, bob_credential) = member("bob");
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        .use_ratchet_tree_extension(true)
        .build();
    let mut alice =
        MlsGroup::new(&alice_provider, &alice_signer, &config, alice_credential).expect("group");
    let bob_package = KeyPackage::builder()
        .build(suite, &bob_provider, &bob_signer, bob_credential)
        .expect("key package");
    let (_, welcome, _) = alice
        .add_members(
            &alice_provider,
            &alice_signer,
            &[bob_package.key_package().clone()],
        )
        .expect("add");
    alice.merge_pending_commit(&alice_provider).expect("merge");
    let welcome_bytes = welcome.to_bytes().expect("welcome");
    let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact(welcome_bytes)
        .expect("parse")
        .extract()
    else {
        panic!("not a welcome");
    };
    let mut bob =
        StagedWelcome::new_from_welcome(&bob_provider, config.join_config(), welcome, None)
            .and_then(|staged| staged.into_group(&bob_provider))
            .expect("bob joins");
    let payload = [7u8; 100];
    let started = Instant::now();
    let mut count = 0u32;
    while count < 50_000 && started.elapsed() < Duration::from_secs(3) {
        let bytes = alice
            .create_message(&alice_provider, &alice_signer, &payload)
            .expect("encrypt")
            .to_bytes()
            .expect("bytes");
        let message: ProtocolMessage = match MlsMessageIn::tls_deserialize_exact(bytes)
            .expect("parse")
            .extract()
        {
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            _ => panic!("not a private message"),
        };
        let processed = bob
            .process_message(&bob_provider, message)
            .expect("decrypt");
        assert!(matches!(
            processed.into_content(),
            ProcessedMessageContent::ApplicationMessage(_)
        ));
        count += 1;
    }
    f64::from(count) / started.elapsed().as_secs_f64()
}

/// Messages of `size` bytes over one raw str0m data channel on loopback (both ends on this
/// thread), `count` of them or ten seconds' worth: how many arrived, and in what time.
fn str0m_messages(size: usize, count: usize) -> (usize, Duration) {
    let (mut a, mut b) = (Side::new(), Side::new());
    a.links.open(Instant::now(), b.id).expect("offer");
    run(&mut a, &mut b, |a, b| a.up && b.up);
    assert!(a.up && b.up, "the raw link did not open");
    let message = vec![9u8; size];
    let mut received = 0;
    let started = Instant::now();
    while received < count && started.elapsed() < Duration::from_secs(10) {
        for _ in 0..16 {
            if !a.links.send(b.id, &message) {
                break;
            }
        }
        assert!(
            a.turn().is_empty() && b.turn().is_empty(),
            "no renegotiation"
        );
        received += b.received.drain(..).count();
    }
    (received, started.elapsed())
}

fn megabytes(bytes: usize, elapsed: Duration) -> f64 {
    let bytes = u32::try_from(bytes).map_or(f64::from(u32::MAX), f64::from);
    bytes / 1e6 / elapsed.as_secs_f64()
}

/// Sends `text` `count` times as a program relaying a feed would: up to [`IN_FLIGHT`] sends
/// awaiting their answer at once, each answered once it is stored.
async fn send_many(device: &DeviceHandle, count: usize, text: &str) {
    let mut answers = futures_util::stream::iter(0..count)
        .map(|_| device.send_text(text))
        .buffered(IN_FLIGHT);
    while let Some(answer) = answers.next().await {
        answer.expect("send");
    }
}

/// Sends a sender keeps waiting for their answer at once.
const IN_FLIGHT: usize = 256;

/// Writes `mib` MiB that do not compress to `path`.
fn write_file(path: &std::path::Path, mib: usize) {
    use std::io::Write as _;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let mut block = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block).expect("write");
    }
    file.flush().expect("flush");
}

/// A figure of this process's memory from `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
fn memory(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Starts this process's peak memory (`VmHWM`) afresh from what it uses now.
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn devices() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let mut bob = app.invite(&mut admin, Role::Member, "bob").await;
    let a = new_device(&app, &mut admin, dir.path()).await;
    wait_in_group(&a).await;
    let mut received = Counting::start(a);

    // A new device: login, be added to the group, open the link, send.
    let started = Instant::now();
    bob.client.login(&mut bob.key).await.expect("login");
    let b = new_device(&app, &mut bob, dir.path()).await;
    wait_in_group(&b).await;
    b.send_text("first").await.expect("send");
    received.wait_count(1).await;
    let first_new = started.elapsed();

    // A device already in the group, restarted from its store.
    let device = b.status().await.expect("status").view.device;
    b.stop().await.expect("stop");
    let started = Instant::now();
    let b = restart(&app, &mut bob, dir.path(), device).await;
    b.send_text("again").await.expect("send");
    received.wait_count(2).await;
    let first_existing = started.elapsed();

    let small = env_number("MESSAGES", 1_000);
    let text = "x".repeat(100);
    let started = Instant::now();
    send_many(&b, small, &text).await;
    received.wait_count(2 + small).await;
    let small_elapsed = started.elapsed();

    let large = env_number("LARGE", 100);
    let text = "y".repeat(16 * 1024);
    let started = Instant::now();
    send_many(&b, large, &text).await;
    received.wait_count(2 + small + large).await;
    let large_elapsed = started.elapsed();

    let file_mib = env_number("FILE_MB", 64);
    let path = dir.path().join("bench-file.bin");
    write_file(&path, file_mib);
    reset_peak_memory();
    let idle = memory("VmRSS");
    let started = Instant::now();
    b.send_file(&path, |_| {}).await.expect("send file");
    let stored = started.elapsed();
    let started = Instant::now();
    received.wait_files(1, Duration::from_secs(600)).await;
    let fetched = started.elapsed();
    let peak_above_idle = memory("VmHWM").saturating_sub(idle);

    println!(
        "login → first peer-to-peer message, new device (joins the group first): {:.0} ms",
        first_new.as_secs_f64() * 1e3
    );
    println!(
        "login → first peer-to-peer message, device already in the group: {:.0} ms",
        first_existing.as_secs_f64() * 1e3
    );
    println!(
        "engine over one link, {small} × 100-byte messages: {:.0} msgs/s",
        f64::from(u32::try_from(small).unwrap_or(u32::MAX)) / small_elapsed.as_secs_f64()
    );
    println!(
        "engine over one link, {large} × 16 KiB messages: {:.2} MB/s",
        megabytes(large * 16 * 1024, large_elapsed)
    );
    let file_bytes = file_mib * 1024 * 1024;
    println!(
        "a {file_mib} MiB file: stored and hashed at {:.1} MB/s, then over one link at {:.2} MB/s; \
         peak memory {:.1} MB above idle (both devices and the server, one process)",
        megabytes(file_bytes, stored),
        megabytes(file_bytes, fetched),
        peak_above_idle as f64 / 1e6
    );
    b.stop().await.expect("stop");
}

fn main() {
    // WebRTC stays inside a namespace of its own.
    if let Some(passed) = tessera_tests::netns::run_inside(&[]) {
        assert!(passed, "the benchmark failed inside its namespace");
        return;
    }
    println!(
        "raw openmls, 100-byte messages (encrypt + decrypt): {:.0} msgs/s",
        openmls_messages_per_second()
    );
    let (count, elapsed) = str0m_messages(15 * 1024, 4_000);
    println!(
        "raw str0m, 15 KiB messages over one data channel: {:.1} MB/s",
        megabytes(count * 15 * 1024, elapsed)
    );
    let (count, elapsed) = str0m_messages(300, 50_000);
    println!(
        "raw str0m, 300-byte messages over one data channel: {:.0} msgs/s",
        count as f64 / elapsed.as_secs_f64()
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(devices());
}
