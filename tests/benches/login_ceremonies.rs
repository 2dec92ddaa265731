//! Load generator: WebAuthn login ceremonies per second through HTTP (start + finish, SQLite), next to
//! raw ES256 verification with the same `p256` in the same run.
//!
//! The server runs on one tokio thread (plus SQLite's worker threads); the clients on another. The
//! server's CPU time is the process's CPU time minus the client thread's. Bounded in count and time.
//!
//! Run: `cargo bench -p tessera-tests --bench login_ceremonies` (environment: `CEREMONIES`, `CLIENTS`).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use cpu_time::{ProcessTime, ThreadTime};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate as _;
use tessera_tests::{TestApp, TestMember, env_number};
use tessera_wire::Role;

/// The most time any phase may take.
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Raw ES256 verifications per CPU-second on this thread.
fn es256_verifications_per_second() -> f64 {
    let key = SigningKey::try_generate().expect("a key");
    let verifying = VerifyingKey::from(&key);
    let message = [7u8; 100];
    let signature: Signature = key.sign(&message);
    let started = ThreadTime::now();
    let wall = Instant::now();
    let mut count = 0u32;
    while count < 20_000 && wall.elapsed() < Duration::from_secs(3) {
        verifying.verify(&message, &signature).expect("verifies");
        count += 1;
    }
    f64::from(count) / started.elapsed().as_secs_f64()
}

fn main() {
    let ceremonies = env_number("CEREMONIES", 3000);
    let clients = env_number("CLIENTS", 4).max(1);
    let raw = es256_verifications_per_second();
    // Log as a production server does (info level), to nowhere; this also keeps the test harness
    // from capturing debug logs.
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::sink)
        .init();

    // The server, on its own single-threaded runtime.
    let (app_tx, app_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let app = TestApp::spawn().await;
            app_tx
                .send((app.origin.clone(), app.first_invitation.clone()))
                .expect("send");
            let _ = stop_rx.await;
            drop(app);
        });
    });
    let (origin, first_invitation) = app_rx.recv().expect("the server starts");

    // The clients, on another single-threaded runtime: one member (and key) per concurrent client.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let (done, client_cpu, process_cpu, wall) = runtime.block_on(async move {
        let enroll = |link: String| {
            let origin = origin.clone();
            async move {
                let mut client = tessera_client::api::ApiClient::new(origin);
                let token = tessera_client::api::invitation_token(&link).expect("token");
                let (key, granted) = client.enroll(&token, None).await.expect("enroll");
                let root = tessera_client::trust::RootFingerprint::of(
                    granted.member,
                    &key.public_key_info(),
                );
                TestMember {
                    client,
                    key,
                    granted,
                    root,
                }
            }
        };
        let mut admin = enroll(first_invitation).await;
        let mut members = Vec::new();
        for _ in 1..clients {
            let invitation = admin.issue(Role::Member, 3600).await;
            members.push(enroll(invitation.link).await);
        }
        members.push(admin);

        let client_cpu = ThreadTime::now();
        let process_cpu = ProcessTime::now();
        let wall = Instant::now();
        let per_client = ceremonies.div_ceil(clients);
        let tasks = members.into_iter().map(|mut member| {
            tokio::spawn(async move {
                let started = Instant::now();
                let mut done = 0usize;
                let mut client = member.client.clone();
                while done < per_client && started.elapsed() < TIME_LIMIT {
                    client.login(&mut member.key).await.expect("login");
                    done += 1;
                }
                done
            })
        });
        let mut done = 0;
        for task in tasks.collect::<Vec<_>>() {
            done += task.await.expect("client task");
        }
        (
            done,
            client_cpu.elapsed(),
            process_cpu.elapsed(),
            wall.elapsed(),
        )
    });
    let _ = stop_tx.send(());
    server.join().expect("server thread");

    let server_cpu = process_cpu.saturating_sub(client_cpu).as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let done_f = done as f64;
    let per_server_cpu = done_f / server_cpu;
    let per_wall = done_f / wall.as_secs_f64();
    println!("login ceremonies (start + finish over HTTP, SQLite), {done} by {clients} clients:");
    println!(
        "  wall time                 {:>8.2} s  -> {per_wall:>8.0} ceremonies/s",
        wall.as_secs_f64()
    );
    println!(
        "  server CPU                {server_cpu:>8.2} s  -> {per_server_cpu:>8.0} ceremonies per server CPU-second"
    );
    println!(
        "  client CPU (sign, HTTP)   {:>8.2} s",
        client_cpu.as_secs_f64()
    );
    println!("raw ES256 verification (p256, same build): {raw:>8.0} per CPU-second");
    println!(
        "ratio ceremonies per server CPU-second / raw verifications: {:.2}",
        per_server_cpu / raw
    );
}
