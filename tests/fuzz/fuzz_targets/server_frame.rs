//! A device's text frame as the server reads it; a signal it accepts must come out of the relay as
//! the same payload in a well-formed `signal` frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_server::signal::connection::{SignalFrame, parse_client_frame};
use tessera_wire::signal::{ClientFrame, ServerFrame};
use uuid::Uuid;

fuzz_target!(|text: &str| {
    if let Ok(ClientFrame::Signal { payload, .. }) = parse_client_frame(text) {
        let (from, member) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let relayed = SignalFrame::new(from, member).around(&payload);
        match serde_json::from_str::<ServerFrame>(relayed.as_str()) {
            Ok(ServerFrame::Signal {
                from: f,
                member: m,
                payload: p,
            }) => {
                assert_eq!((f, m), (from, member));
                assert_eq!(p.get(), payload.get(), "the payload is relayed unchanged");
            }
            other => panic!("the relayed frame does not read back: {other:?}"),
        }
    }
});
