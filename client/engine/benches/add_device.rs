//! Benchmark: the cost of adding one device to a circle of N member devices (100 and 1,000 by
//! default), with the real engine: the KeyPackage's certificate checked (ES256) at each group
//! device online, the Add committed through the simulated sequencer, the commit processed by the
//! other member device, the Welcome checked by the newcomer (every leaf's certificate) and its
//! first messages. The circle is built in batches first: devices announce and go offline, so the
//! measured add has only the committer, one other member device and the newcomer online.
//!
//! Run: `cargo bench -p tessera-engine --bench add_device` (environment: `MEMBERS`, a
//! comma-separated list of circle sizes). Every phase is bounded in rounds.

#[allow(dead_code)]
#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::{Duration, Instant};

use sim::Sim;
use tessera_engine::payload::SignalPayload;
use tessera_engine::pieces::Assembler;
use tessera_wire::Role;
use uuid::Uuid;

/// Devices created, announced and taken offline before the circle processes them.
const BATCH: usize = 50;

/// The most simulated rounds (50 ms each) any phase may take.
const ROUNDS: usize = 400;

struct Row {
    members: usize,
    build: Duration,
    committer: Duration,
    other: Duration,
    newcomer: Duration,
    commit_bytes: usize,
    welcome_bytes: usize,
    stored_bytes: usize,
    newcomer_outbox: usize,
}

fn main() {
    let sizes: Vec<usize> = std::env::var("MEMBERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1_000]);
    let rows: Vec<Row> = sizes.into_iter().filter(|n| *n >= 2).map(measure).collect();
    println!(
        "\n| members before | build (s) | committer (ms) | other member (ms) | newcomer (ms) | commit (bytes) | Welcome (bytes) | committer's store (bytes) | newcomer's outbox (rows) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
            r.members,
            r.build.as_secs_f64(),
            ms(r.committer),
            ms(r.other),
            ms(r.newcomer),
            r.commit_bytes,
            r.welcome_bytes,
            r.stored_bytes,
            r.newcomer_outbox,
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `sim` until `done` holds, at most [`ROUNDS`] rounds.
fn run_until(sim: &mut Sim, what: &str, done: impl Fn(&Sim) -> bool) {
    for _ in 0..ROUNDS {
        if done(sim) {
            return;
        }
        sim.run(1);
    }
    assert!(done(sim), "{what}: not done within {ROUNDS} rounds");
}

/// The largest Welcome payload (its JSON, the Welcome in base64) among relayed payloads, pieces
/// put together by the engine's own assembler (the relay keeps no senders: each payload id stands
/// for one).
fn largest_welcome(relayed: &[String]) -> usize {
    let mut assembler = Assembler::default();
    let now = web_time::Instant::now();
    relayed
        .iter()
        .filter_map(
            |text| match serde_json::from_str::<SignalPayload>(text).ok()? {
                SignalPayload::Piece { id, i, n, part } => assembler
                    .receive(now, Uuid::from_u128(u128::from(id)), (id, i, n), &part)
                    .ok()
                    .flatten(),
                whole => Some(whole),
            },
        )
        .filter_map(|payload| match payload {
            welcome @ SignalPayload::Welcome { .. } => serde_json::to_string(&welcome).ok(),
            _ => None,
        })
        .map(|json| json.len())
        .max()
        .unwrap_or(0)
}

fn group_size(sim: &Sim, device: Uuid) -> usize {
    sim.engine(device).group_devices().len()
}

fn measure(members: usize) -> Row {
    eprintln!("building a circle of {members} member devices…");
    let started = Instant::now();
    let mut sim = Sim::new(members as u64);
    let admin = sim.member(Role::Admin, "admin");
    run_until(&mut sim, "the group", |s| s.engine(admin).in_group());
    let existing = sim.member(Role::Member, "existing");
    run_until(&mut sim, "the second device", |s| {
        s.engine(existing).in_group() && group_size(s, admin) == 2
    });
    let mut built = 2;
    while built < members {
        let batch = BATCH.min(members - built);
        for _ in 0..batch {
            // It announces, then is away: added by the circle, it never processes its Welcome.
            let device = sim.member(Role::Member, "passive");
            sim.hello_now(device);
            sim.disconnect(device);
        }
        built += batch;
        run_until(&mut sim, "a batch", |s| {
            group_size(s, admin) == built && group_size(s, existing) == built
        });
    }
    let build = started.elapsed();
    // Welcoming a batch sends each newcomer the Welcome in pieces: let that backlog drain (at
    // the server's rate) before measuring.
    run_until(&mut sim, "the frames of the build", |s| {
        s.devices.values().all(|d| d.engine.frames_waiting() == 0)
    });

    // The measured add: only the two member devices and the newcomer are online.
    let (committer, other) = (admin.min(existing), admin.max(existing));
    for device in [committer, other] {
        sim.devices.get_mut(&device).expect("device").busy = Duration::ZERO;
    }
    let relayed_before = sim.relayed.len();
    let newcomer = sim.member(Role::Member, "newcomer");
    run_until(&mut sim, "the newcomer's add", |s| {
        let epoch = s.engine(committer).epoch();
        s.engine(newcomer).in_group()
            && group_size(s, committer) == members + 1
            && s.engine(other).epoch() == epoch
            && s.engine(newcomer).epoch() == epoch
    });
    // Its first messages (its display name to every device) are part of joining.
    run_until(&mut sim, "the newcomer's links", |s| {
        s.engine(newcomer).link_is_up(committer) && s.engine(newcomer).link_is_up(other)
    });
    sim.run(5);
    for device in [committer, other, newcomer] {
        let refused = sim.refused(device);
        assert!(refused.is_empty(), "{device} refused {refused:?}");
    }
    let relayed = &sim.relayed[relayed_before..];
    let largest = |marker: &str| {
        relayed
            .iter()
            .filter(|p| p.contains(marker))
            .map(String::len)
            .max()
            .unwrap_or(0)
    };
    let store = &sim.devices[&committer].store;
    let stored_bytes = store.state.len()
        + store
            .mls
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    Row {
        members,
        build,
        committer: sim.devices[&committer].busy,
        other: sim.devices[&other].busy,
        newcomer: sim.devices[&newcomer].busy,
        commit_bytes: largest("\"mls\""),
        welcome_bytes: largest_welcome(relayed),
        stored_bytes,
        newcomer_outbox: sim.devices[&newcomer].store.outbox.len(),
    }
}
