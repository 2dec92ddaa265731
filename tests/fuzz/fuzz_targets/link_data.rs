//! A packet on the peer link from the group's other device (a delivery chunk carrying an MLS
//! application message, or an acknowledgement): refused or delivered, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{drain, group_device, now, restored};

fuzz_target!(|packet: &[u8]| {
    let device = group_device();
    let mut engine = restored();
    engine.handle_link_data(now(), device.peer, packet);
    drain(&mut engine);
});
