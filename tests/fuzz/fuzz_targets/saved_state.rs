//! The device's saved state, damaged: a store on a failing disk, or edited by hand. Restoring
//! refuses it or yields a device that runs; it never panics. The input overwrites bytes of a
//! real saved state (offset, then bytes), or replaces it whole when it starts with 0xff.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_engine::Engine;
use tessera_fuzz::{drain, group_device, now, sim};

fuzz_target!(|data: &[u8]| {
    let mut stored = group_device().store.clone();
    match data.split_first() {
        Some((0xff, whole)) => stored.state = whole.to_vec(),
        Some((_, patch)) if patch.len() >= 2 => {
            let at =
                usize::from(u16::from_be_bytes([patch[0], patch[1]])) % stored.state.len().max(1);
            for (offset, byte) in patch[2..].iter().enumerate() {
                if let Some(slot) = stored.state.get_mut(at + offset) {
                    *slot = *byte;
                }
            }
        }
        _ => return,
    }
    if let Ok(mut engine) = Engine::restore(sim::config(), stored) {
        engine.handle_timeout(now());
        drain(&mut engine);
        let _ = engine.view();
    }
});
