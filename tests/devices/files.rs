//! Files between `tessera` devices in the test's namespace: a 100 MB file from one CLI to another,
//! its link cut mid-way for longer than the link survives, arrives whole with the sender's hash;
//! the server and the relayed frames never hold its name.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use tessera_engine::files::ContentHash;

use crate::circle::{Circle, assert_absent};
use crate::support::{Net, inside_namespace, unique, wait_converged};

/// The file's size.
const SIZE: usize = 100 * 1024 * 1024;

/// Writes `size` bytes that do not compress (xorshift) to `path`; their SHA-256.
fn write_file(path: &Path, size: usize) -> Vec<u8> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut hash = ContentHash::default();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut block = vec![0u8; 1024 * 1024];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let n = left.min(block.len());
        hash.update(&block[..n]);
        file.write_all(&block[..n]).expect("write");
        left -= n;
    }
    file.flush().expect("flush");
    hash.finish()
}

fn sha256_of(path: &Path) -> Vec<u8> {
    let mut hash = ContentHash::default();
    let mut file = std::fs::File::open(path).expect("open");
    let mut block = vec![0u8; 1024 * 1024];
    loop {
        let n = std::io::Read::read(&mut file, &mut block).expect("read");
        if n == 0 {
            return hash.finish();
        }
        hash.update(&block[..n]);
    }
}

fn address(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[test]
fn a_100_mb_file_crosses_a_link_cut_mid_way_and_arrives_whole() {
    if !inside_namespace("files::a_100_mb_file_crosses_a_link_cut_mid_way_and_arrives_whole") {
        return;
    }
    let mut circle = Circle::new(2);
    let (ada, bea) = (address(2), address(3));
    circle.devices[0].bind = ada;
    circle.devices[1].bind = bea;
    let net = Net::new();
    let mut sender = circle.chat(0);
    let mut receiver = circle.chat(1);
    wait_converged(&mut [&mut sender, &mut receiver], 2);

    let name = format!("ledger-{}.bin", unique());
    let path = circle.dir().join(&name);
    let hash = write_file(&path, SIZE);
    sender.say(&format!("/file {}", path.display()));
    let shared = sender.wait_for("the file shared", |v| v["event"] == "file_shared");
    let id = shared["id"].as_str().expect("id").to_owned();
    let offer = receiver.wait_for("the offer", |v| {
        v["event"] == "message" && v["file"]["name"] == name.as_str()
    });
    assert_eq!(offer["id"], id.as_str());
    assert_eq!(offer["file"]["size"], SIZE);

    // A fifth of the way, the link is cut for longer than it survives.
    let is_progress =
        |v: &serde_json::Value| v["event"] == "file_progress" && v["id"] == id.as_str();
    receiver.next_matching("a fifth of the file", |v| {
        is_progress(v) && v["received"].as_u64().is_some_and(|r| r >= SIZE as u64 / 5)
    });
    let before_cut = receiver
        .events("file_progress")
        .iter()
        .filter(|v| v["id"] == id.as_str())
        .filter_map(|v| v["received"].as_u64())
        .max()
        .expect("progress");
    assert!(
        before_cut < SIZE as u64,
        "the file was whole before the cut: nothing was tested"
    );
    // Cut for longer than the link's consent checks allow (the link dies and is negotiated
    // again, or, should it outlive the cut, carries on): the transfer must go on from there.
    net.set("add", ada, bea);
    let cut_at = receiver.seen.len();
    std::thread::sleep(Duration::from_secs(40));
    net.set("delete", ada, bea);
    let got = receiver.wait_for("the whole file", |v| {
        v["event"] == "file_received" && v["id"] == id.as_str()
    });
    assert_eq!(got["name"], name.as_str());
    let after: Vec<u64> = receiver.seen[cut_at..]
        .iter()
        .filter(|v| is_progress(v))
        .filter_map(|v| v["received"].as_u64())
        .collect();
    assert!(
        after.iter().all(|r| *r >= before_cut) && after.windows(2).all(|w| w[0] <= w[1]),
        "the transfer started over after the cut at {before_cut}: {after:?}"
    );
    sender.wait_for("the receiver's word that it holds it", |v| {
        v["event"] == "file_sent" && v["id"] == id.as_str() && v["done"] == true
    });
    let failures = receiver.events("file_failed");
    assert!(failures.is_empty(), "{failures:?}");

    for chat in [sender, receiver] {
        let (status, stderr) = chat.quit();
        assert!(status.success(), "chat ended badly: {stderr}");
    }
    // Saved where the member asks, by the start of its id, with the sender's hash.
    let out = circle.dir().join("saved.bin");
    let saved = circle.devices[1].ok(&["get", &id[..8], "--out", &out.display().to_string()]);
    assert!(saved.contains(&name), "{saved}");
    assert_eq!(
        sha256_of(&out),
        hash,
        "the saved file differs from the sent one"
    );
    let listed = circle.devices[1].ok(&["files"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&name) && l.contains("here")),
        "{listed}"
    );
    // Saving it again over the same path is refused, not overwritten.
    let again = circle.devices[1].run(&["get", &id[..8], "--out", &out.display().to_string()]);
    assert!(!again.status.success(), "saved over an existing file");

    circle.stop_server();
    let frames = circle.relay.frames();
    let frames = vec![("relayed frames".to_owned(), frames.join("\n").into_bytes())];
    assert_absent(&frames, &[&name]);
    assert_absent(&circle.server_traces(), &[&name]);
}
