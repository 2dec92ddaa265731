//! Files between in-memory devices of the simulated circle, over data channels that lose and
//! reorder packets: every size arrives intact exactly once, a restarted receiver resumes at the
//! chunk, a device that comes later gets the file from whichever device holds it, and what a
//! peer or a sender gets wrong is refused with nothing shown as whole.

#[allow(dead_code)]
mod sim;

use sim::Sim;
use tessera_engine::Event;
use tessera_engine::files::{CHUNK_BYTES, FileControl, FileState, Sealing};
use tessera_engine::payload::{encode_file_chunk, encode_file_control};
use tessera_wire::Role;
use uuid::Uuid;

/// Deterministic content of `len` bytes.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// A circle of `n` devices (each its own member, the first an admin) in one group, linked.
fn circle(seed: u64, n: usize) -> (Sim, Vec<Uuid>) {
    let mut sim = Sim::new(seed);
    let mut devices = vec![sim.member(Role::Admin, "Ada")];
    sim.run(5);
    for i in 1..n {
        devices.push(sim.member(Role::Member, &format!("Member {i}")));
    }
    sim.run(60);
    sim.assert_one_group(&devices);
    (sim, devices)
}

/// Two devices in one group, the first sharing `bytes` as `name`: the circle, both devices,
/// the bytes and the file's id.
fn sharing(seed: u64, name: &str, bytes: Vec<u8>) -> (Sim, Uuid, Uuid, Vec<u8>, Uuid) {
    let (mut sim, devices) = circle(seed, 2);
    let (a, b) = (devices[0], devices[1]);
    let file = sim.send_file(a, name, &bytes);
    (sim, a, b, bytes, file)
}

/// How many times `device` said it received `file` whole.
fn received(sim: &Sim, device: Uuid, file: Uuid) -> usize {
    sim.devices[&device]
        .events
        .iter()
        .filter(|e| matches!(e, Event::FileReceived { id, .. } if *id == file))
        .count()
}

/// How many times `device` showed the message that offered `file`.
fn offers_shown(sim: &Sim, device: Uuid, file: Uuid) -> usize {
    sim.devices[&device]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Message { message, .. } if message.id == file && message.file.is_some()))
        .count()
}

/// The content `device` stored of `file`, to alter under it.
fn stored(sim: &mut Sim, device: Uuid, file: Uuid) -> &mut Vec<u8> {
    &mut sim
        .devices
        .get_mut(&device)
        .expect("device")
        .disk
        .get_mut(&file)
        .expect("stored")
        .0
}

/// What `device` holds of `file` on its disk.
fn on_disk(sim: &Sim, device: Uuid, file: Uuid) -> Option<Vec<u8>> {
    sim.devices[&device].disk.get(&file).map(|(c, _)| c.clone())
}

fn state(sim: &Sim, device: Uuid, file: Uuid) -> Option<FileState> {
    sim.engine(device).file(file).map(|r| r.state.clone())
}

/// Runs until `device` holds `file` whole, at most `rounds` rounds.
fn run_until_held(sim: &mut Sim, device: Uuid, file: Uuid, rounds: usize) {
    for _ in 0..rounds {
        if state(sim, device, file) == Some(FileState::Held) {
            return;
        }
        sim.run(1);
    }
    panic!(
        "{device} does not hold the file after {rounds} rounds: {:?}",
        state(sim, device, file)
    );
}

/// Runs until `device` holds `file` whole and checks it holds `bytes`.
fn arrives_whole(sim: &mut Sim, device: Uuid, file: Uuid, bytes: &[u8], rounds: usize) {
    run_until_held(sim, device, file, rounds);
    assert_eq!(on_disk(sim, device, file).as_deref(), Some(bytes));
}

#[test]
fn files_of_every_size_reach_every_device_intact_exactly_once_over_lossy_links() {
    let (mut sim, devices) = circle(1, 3);
    sim.loss = 0.2;
    let chunk = CHUNK_BYTES as usize;
    let sizes = [0, 1, chunk - 1, chunk, chunk + 1, 3 * 1024 * 1024 + 17];
    let files: Vec<(Uuid, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let bytes = content(*size, i as u8);
            let from = devices[i % 3];
            (sim.send_file(from, &format!("file-{i}.bin"), &bytes), bytes)
        })
        .collect();
    for (file, _) in &files {
        for device in &devices {
            run_until_held(&mut sim, *device, *file, 2_000);
        }
    }
    sim.run(40);
    for (i, (file, bytes)) in files.iter().enumerate() {
        let sender = devices[i % 3];
        for device in devices.iter().filter(|d| **d != sender) {
            assert_eq!(
                on_disk(&sim, *device, *file).as_deref(),
                Some(&bytes[..]),
                "file {i} at {device}"
            );
            assert_eq!(received(&sim, *device, *file), 1, "file {i} told once");
            assert_eq!(offers_shown(&sim, *device, *file), 1, "file {i} shown once");
            let row = sim.engine(*device).file(*file).expect("row");
            assert_eq!((row.offer.size, row.device), (sizes[i] as u64, sender));
            assert_eq!(row.offer.name, format!("file-{i}.bin"));
        }
    }
    // Nothing was refused along the way: losses are asked for again, not taken as tampering.
    for device in &devices {
        assert!(
            sim.refused(*device).is_empty(),
            "{:?}",
            sim.refused(*device)
        );
        eprintln!("{device}: {:?} in its engine", sim.devices[device].busy);
    }
}

#[test]
fn text_keeps_flowing_while_a_large_file_moves() {
    let (mut sim, a, b, _, file) = sharing(2, "big.bin", content(6 * 1024 * 1024, 9));
    sim.run(2);
    sim.send(a, "while it moves");
    sim.run(3);
    assert!(
        sim.received(b).iter().any(|(_, t)| t == "while it moves"),
        "the text waited for the file"
    );
    assert_ne!(
        state(&sim, b, file),
        Some(FileState::Held),
        "the file was already whole: nothing was tested"
    );
    run_until_held(&mut sim, b, file, 1_000);
    sim.run(5);
    // The sender learnt that b holds it whole.
    assert!(sim.devices[&a].events.iter().any(|e| matches!(
        e,
        Event::FileSent { id, device, done: true, .. } if *id == file && *device == b
    )));
}

#[test]
fn a_device_restarted_mid_file_resumes_at_the_chunk() {
    let (mut sim, a, b, bytes, file) = sharing(3, "scan.tiff", content(3 * 1024 * 1024, 4));
    let chunks = bytes.len().div_ceil(CHUNK_BYTES as usize) as u64;
    // Until some chunks are synced at b, then it restarts (losing what was not synced).
    let mut synced = 0;
    for _ in 0..500 {
        sim.run(1);
        if let Some(FileState::Receiving { chunks, .. }) = sim.devices[&b]
            .store
            .files
            .get(&file)
            .map(|r| r.state.clone())
        {
            synced = chunks;
        }
        if synced > 0 {
            break;
        }
    }
    assert!(synced > 0 && synced < chunks, "synced {synced} of {chunks}");
    let read_before = sim.devices[&a].reads;
    sim.restart(b);
    arrives_whole(&mut sim, b, file, &bytes, 2_000);
    assert_eq!(received(&sim, b, file), 1);
    // After the restart the sender read only what b had not synced (and what was in flight).
    let read_after = sim.devices[&a].reads - read_before;
    assert!(
        read_after <= chunks - synced + 2 * 128,
        "{read_after} chunks read again for {} missing",
        chunks - synced
    );
    assert!(read_after < chunks, "the transfer started over");
}

#[test]
fn a_device_that_comes_later_gets_the_file_from_any_device_holding_it() {
    let (mut sim, devices) = circle(4, 3);
    let (a, b, c) = (devices[0], devices[1], devices[2]);
    sim.go_offline(c);
    sim.run(20);
    let bytes = content(200_000, 7);
    let file = sim.send_file(a, "minutes.pdf", &bytes);
    run_until_held(&mut sim, b, file, 500);
    // The sender leaves before c comes back: b carries the offer and serves the content.
    sim.go_offline(a);
    sim.run(10);
    let a_reads = sim.devices[&a].reads;
    sim.connect(c);
    arrives_whole(&mut sim, c, file, &bytes, 1_000);
    assert_eq!(sim.devices[&a].reads, a_reads, "the sender was offline");
    assert!(sim.devices[&b].reads > 0, "b served it");
    assert_eq!(offers_shown(&sim, c, file), 1);
}

#[test]
fn a_sender_that_stops_mid_way_leaves_the_file_unfinished_until_it_returns() {
    let (mut sim, a, b, bytes, file) = sharing(5, "video.mp4", content(2 * 1024 * 1024, 3));
    sim.run(3);
    sim.go_offline(a);
    sim.run(100);
    assert!(
        matches!(state(&sim, b, file), Some(FileState::Receiving { .. })),
        "{:?}",
        state(&sim, b, file)
    );
    assert_eq!(
        received(&sim, b, file),
        0,
        "shown as whole without its content"
    );
    sim.connect(a);
    arrives_whole(&mut sim, b, file, &bytes, 1_000);
}

#[test]
fn content_that_does_not_match_its_hash_is_refused_and_deleted() {
    let (mut sim, a, b, _, file) = sharing(6, "contract.pdf", content(100_000, 1));
    // The sender's stored copy changes under it (a member serving other content does the same):
    // every chunk opens, the whole does not hash to what the offer says.
    stored(&mut sim, a, file)[500] ^= 1;
    sim.run(100);
    assert!(
        matches!(state(&sim, b, file), Some(FileState::Failed { ref reason }) if reason.contains("hash")),
        "{:?}",
        state(&sim, b, file)
    );
    assert_eq!(on_disk(&sim, b, file), None, "the content was not deleted");
    assert_eq!(received(&sim, b, file), 0);
    assert!(sim.devices[&b].events.iter().any(
        |e| matches!(e, Event::FileFailed { id, reason } if *id == file && reason.contains("hash"))
    ));
}

#[test]
fn a_stored_file_shorter_than_offered_is_not_served() {
    let (mut sim, a, b, _, file) = sharing(7, "notes.txt", content(50_000, 2));
    stored(&mut sim, a, file).truncate(10_000);
    sim.run(60);
    assert!(matches!(
        state(&sim, a, file),
        Some(FileState::Failed { .. })
    ));
    assert!(matches!(
        state(&sim, b, file),
        Some(FileState::Receiving { .. })
    ));
    assert_eq!(received(&sim, b, file), 0);
}

#[test]
fn a_file_over_the_receivers_cap_is_shown_refused_and_never_fetched() {
    let (mut sim, devices) = circle(8, 2);
    let (a, b) = (devices[0], devices[1]);
    sim.restart_with(b, |config, _| config.files.max_bytes = 100_000);
    sim.run(40);
    let file = sim.send_file(a, "dump.tar", &content(150_000, 5));
    sim.run(60);
    assert_eq!(offers_shown(&sim, b, file), 1, "the offer is still shown");
    assert!(matches!(
        state(&sim, b, file),
        Some(FileState::Failed { ref reason }) if reason.contains("100000")
    ));
    assert_eq!(sim.devices[&a].reads, 0, "chunks were asked for");
    assert_eq!(on_disk(&sim, b, file), None);
}

#[test]
fn chunks_and_asks_out_of_bounds_are_refused_and_change_nothing() {
    let (mut sim, a, b, bytes, file) = sharing(9, "plan.odt", content(40_000, 8));
    let now = sim.now;
    let refusals = |sim: &Sim, device: Uuid| sim.refused(device).len();
    // At the holder: an ask past the end, an empty one, one far more than a window ahead.
    let before = refusals(&sim, a);
    for (from, count) in [(2, 5), (0, 0), (u64::MAX, 2)] {
        let ask = encode_file_control(&FileControl::Want { file, from, count });
        sim.devices
            .get_mut(&a)
            .expect("a")
            .engine
            .handle_link_data(now, b, &ask);
    }
    for _ in 0..10 {
        let ask = encode_file_control(&FileControl::Want {
            file,
            from: 0,
            count: 3,
        });
        sim.devices
            .get_mut(&a)
            .expect("a")
            .engine
            .handle_link_data(now, b, &ask);
    }
    sim.drain(a);
    let refused = sim.refused(a)[before..].to_vec();
    assert!(
        refused.iter().filter(|r| r.starts_with("file ask")).count() >= 3,
        "{refused:?}"
    );
    // The genuine file still arrives whole.
    arrives_whole(&mut sim, b, file, &bytes, 2_000);
}

#[test]
fn a_chunk_out_of_range_or_that_does_not_open_is_refused_and_the_file_still_arrives() {
    let (mut sim, a, b, bytes, file) = sharing(10, "ledger.xlsx", content(2 * 1024 * 1024, 6));
    // Until a has read chunks for b: they are on their way, b waits for chunk 0 onwards.
    for _ in 0..100 {
        if sim.devices[&a].reads > 0 {
            break;
        }
        sim.run(1);
    }
    assert!(sim.devices[&a].reads > 0, "b never asked");
    let now = sim.now;
    for packet in [
        encode_file_chunk(Uuid::new_v4(), 0, &[0; 100]),
        encode_file_chunk(file, 99_999, &[0; 100]),
        encode_file_chunk(file, 100, &vec![7; CHUNK_BYTES as usize + 16]),
    ] {
        sim.devices
            .get_mut(&b)
            .expect("b")
            .engine
            .handle_link_data(now, a, &packet);
    }
    sim.drain(b);
    let refused = sim.refused(b);
    assert!(
        refused
            .iter()
            .any(|r| r.starts_with("file chunk") && r.contains("out of range")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|r| r.starts_with("file chunk") && r.contains("does not open")),
        "{refused:?}"
    );
    assert_eq!(
        refused.len(),
        2,
        "the unknown file's chunk is dropped unsaid: {refused:?}"
    );
    // Nothing of it was written; the genuine file still arrives whole (from the same device,
    // once it is asked again).
    arrives_whole(&mut sim, b, file, &bytes, 2_000);
    assert_eq!(received(&sim, b, file), 1);
}

#[test]
fn chunks_sealed_and_opened_by_the_drivers_arrive_intact_and_a_forged_one_is_refused() {
    // a seals and opens in its engine (a native device); b and c leave it to their drivers (as
    // a browser page does, with WebCrypto): every pairing moves files, over lossy links.
    let (mut sim, devices) = circle(12, 3);
    let (a, b, c) = (devices[0], devices[1], devices[2]);
    for device in [b, c] {
        sim.restart_with(device, |config, _| config.files.sealing = Sealing::Driver);
    }
    sim.run(60);
    sim.loss = 0.2;
    let from_a = content(1024 * 1024 + 5, 7);
    let from_b = content(700 * 1024, 8);
    let file_a = sim.send_file(a, "from-a.bin", &from_a);
    let file_b = sim.send_file(b, "from-b.bin", &from_b);
    // A chunk c's driver cannot open, in the window c asked of b: refused, asked again.
    for _ in 0..200 {
        if sim.devices[&b].reads > 0 {
            break;
        }
        sim.run(1);
    }
    assert!(sim.devices[&b].reads > 0, "no device asked b for its file");
    let now = sim.now;
    let forged = encode_file_chunk(file_b, 40, &vec![7; CHUNK_BYTES as usize + 16]);
    sim.devices
        .get_mut(&c)
        .expect("c")
        .engine
        .handle_link_data(now, b, &forged);
    sim.drain(c);
    for (file, bytes) in [(file_a, &from_a), (file_b, &from_b)] {
        for device in devices.iter().copied() {
            arrives_whole(&mut sim, device, file, bytes, 3_000);
        }
    }
    sim.run(40);
    for device in [b, c] {
        assert!(
            sim.devices[&device].opens > 0,
            "{device}'s driver opened nothing"
        );
    }
    assert_eq!(sim.devices[&a].opens, 0, "a's engine opens its own chunks");
    let refused = sim.refused(c);
    assert!(!refused.is_empty(), "the forged chunk was taken");
    assert!(
        refused
            .iter()
            .all(|r| r.starts_with("file chunk") && r.contains("does not open")),
        "{refused:?}"
    );
    for device in [a, b] {
        assert!(sim.refused(device).is_empty(), "{:?}", sim.refused(device));
    }
    for device in devices.iter().copied() {
        for file in [file_a, file_b] {
            let here = sim.engine(device).file(file).expect("row");
            if here.device != device {
                assert_eq!(received(&sim, device, file), 1);
            }
        }
    }
}
