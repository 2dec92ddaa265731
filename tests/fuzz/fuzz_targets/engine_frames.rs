//! Server frames (one per line) to a device in a group: whatever a hostile server sends, the
//! engine refuses or acts on without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{drain, now, restored};
use tessera_wire::signal::ServerFrame;

fuzz_target!(|text: &str| {
    let mut engine = restored();
    for line in text.lines().take(64) {
        if let Ok(frame) = serde_json::from_str::<ServerFrame>(line) {
            engine.handle_frame(now(), frame);
            drain(&mut engine);
        }
    }
});
