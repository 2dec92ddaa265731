//! Writes seed inputs for the targets whose inputs are text or bytes, taken from a real group of
//! two as the engine's simulation forms it: `cargo run --example seed` in tests/fuzz.

use std::path::Path;

use tessera_fuzz::group_device;
use uuid::Uuid;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("the corpus directory");
    std::fs::write(dir.join(name), bytes).expect("a seed written");
}

fn main() {
    let device = group_device();
    let (peer, member) = (device.peer, device.peer_member);
    for (n, payload) in device.payloads.iter().enumerate() {
        write("signal_payload", &format!("seed-{n}"), payload.as_bytes());
        let frame = format!(
            r#"{{"type":"signal","from":"{peer}","member":"{member}","payload":{payload}}}"#
        );
        write(
            "engine_frames",
            &format!("seed-signal-{n}"),
            frame.as_bytes(),
        );
        let to = Uuid::from_u128(9);
        let client = format!(r#"{{"type":"signal","to":"{to}","payload":{payload}}}"#);
        write("server_frame", &format!("seed-{n}"), client.as_bytes());
    }
    let device_id = Uuid::from_u128(3);
    let frames = [
        format!(
            r#"{{"type":"hello","member":"{member}","device":"{device_id}","peers":[{{"member":"{member}","device":"{peer}"}}],"epoch":3}}"#
        ),
        format!(r#"{{"type":"presence","member":"{member}","device":"{peer}","online":false}}"#),
        r#"{"type":"commit_result","epoch":2,"accepted":false}"#.to_owned(),
        r#"{"type":"error","code":"replaced","message":"x"}"#.to_owned(),
        r#"{"type":"revoked"}"#.to_owned(),
    ];
    write("engine_frames", "seed-frames", frames.join("\n").as_bytes());
    write(
        "server_frame",
        "seed-commit",
        br#"{"type":"commit","epoch":4,"payload":{"x":1}}"#,
    );
    for (n, packet) in device.packets.iter().enumerate() {
        write("link_data", &format!("seed-{n}"), packet);
    }
    let mut whole = vec![0xff];
    whole.extend_from_slice(&device.store.state);
    write("saved_state", "seed-whole", &whole);
    write("saved_state", "seed-patch", &[0, 0, 40, 0xff, 0xff]);
    println!(
        "seeds: {} payloads, {} packets, a saved state of {} bytes",
        device.payloads.len(),
        device.packets.len(),
        device.store.state.len()
    );
}
