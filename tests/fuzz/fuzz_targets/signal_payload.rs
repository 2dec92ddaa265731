//! A signal payload from the group's other device, relayed by the server: MLS messages, sealed
//! link negotiation, pieces, catch-up requests. Refused or acted on, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use tessera_fuzz::{drain, group_device, now, restored};
use tessera_wire::signal::ServerFrame;

fuzz_target!(|text: &str| {
    let Ok(payload) = RawValue::from_string(text.to_owned()) else {
        return;
    };
    let device = group_device();
    let mut engine = restored();
    engine.handle_frame(
        now(),
        ServerFrame::Signal {
            from: device.peer,
            member: device.peer_member,
            payload,
        },
    );
    drain(&mut engine);
});
