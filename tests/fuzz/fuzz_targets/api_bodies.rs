//! Every API request body, read as the server reads it (`ApiJson`: serde_json into the wire type);
//! the first byte picks the type.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_wire as wire;

fn read<T: serde::de::DeserializeOwned>(bytes: &[u8]) {
    let _ = serde_json::from_slice::<T>(bytes);
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => read::<wire::EnrollStartRequest>(body),
        1 => read::<wire::RegistrationFinishRequest>(body),
        2 => read::<wire::LoginFinishRequest>(body),
        3 => read::<wire::CreateInvitationRequest>(body),
        4 => read::<wire::MemberDecisionRequest>(body),
        5 => read::<wire::AddPasskeyStartRequest>(body),
        6 => read::<wire::CreateRecoveryRequest>(body),
        _ => read::<wire::MemberInfo>(body),
    }
});
