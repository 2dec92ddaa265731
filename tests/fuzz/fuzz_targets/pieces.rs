//! Signal payloads in pieces from several senders, in any order and size: the assembler hands out
//! only whole payloads, each within its bound, and never panics.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tessera_engine::pieces::{Assembler, MAX_PAYLOAD_BYTES};
use uuid::Uuid;
use web_time::{Duration, Instant};

#[derive(Debug, Arbitrary)]
struct Piece {
    sender: u8,
    id: u64,
    i: u32,
    n: u32,
    part: String,
    later_ms: u16,
}

fuzz_target!(|pieces: Vec<Piece>| {
    let mut assembler = Assembler::default();
    let mut now = Instant::now();
    for piece in pieces.iter().take(256) {
        now += Duration::from_millis(u64::from(piece.later_ms));
        let from = Uuid::from_u128(u128::from(piece.sender % 12));
        if let Ok(Some(payload)) =
            assembler.receive(now, from, (piece.id, piece.i, piece.n), &piece.part)
        {
            let whole = serde_json::to_string(&payload).expect("a payload serialises");
            assert!(
                whole.len() <= 2 * MAX_PAYLOAD_BYTES,
                "a payload past its bound"
            );
        }
    }
});
