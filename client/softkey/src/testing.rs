//! Software keys registered through webauthn-rs itself, the relying party the server runs: the
//! helpers the tests of keys, device certificates and ceremonies share (feature `testing`).

use serde::Serialize;
use tessera_wire::{MemberInfo, Role};
use url::Url;
use webauthn_rs::WebauthnBuilder;
#[cfg(feature = "danger-tamper")]
use webauthn_rs::prelude::{AuthenticationResult, DiscoverableKey, WebauthnError};
use webauthn_rs::prelude::{Passkey, PasskeyRegistration, Uuid, Webauthn};
use webauthn_rs_proto::CreationChallengeResponse;

use crate::SoftKey;
#[cfg(feature = "danger-tamper")]
use crate::Tamper;

/// The origin every helper registers for; its RP id is `localhost`.
pub const ORIGIN: &str = "http://localhost:8080";

/// The relying party the server runs, for [`ORIGIN`].
#[must_use]
pub fn relying_party() -> Webauthn {
    let origin = Url::parse(ORIGIN).expect("origin parses");
    WebauthnBuilder::new("localhost", &origin)
        .expect("valid rp")
        .rp_name("Tessera test")
        .build()
        .expect("webauthn builds")
}

/// Sends a value through JSON, as it travels between server and client.
pub fn over_the_wire<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    let json = serde_json::to_string(value).expect("serializes");
    serde_json::from_str(&json).expect("deserializes")
}

/// A new user's registration options, as they reach the client, and the ceremony state.
pub fn registration_options(
    rp: &Webauthn,
) -> (Uuid, CreationChallengeResponse, PasskeyRegistration) {
    let user = Uuid::new_v4();
    let (ccr, state) = rp
        .start_passkey_registration(user, "claire", "Claire", None)
        .expect("registration starts");
    (user, over_the_wire(&ccr), state)
}

/// Registers a new soft key with the relying party.
pub fn enroll(rp: &Webauthn) -> (Uuid, SoftKey, Passkey) {
    let (user, ccr, state) = registration_options(rp);
    let (key, reg) = SoftKey::register(&ccr, ORIGIN).expect("soft key registers");
    let passkey = rp
        .finish_passkey_registration(&over_the_wire(&reg), &state)
        .expect("relying party accepts the registration");
    (user, key, passkey)
}

/// Runs a registration with tampering and returns the relying party's verdict.
#[cfg(feature = "danger-tamper")]
pub fn register_tampered(rp: &Webauthn, tamper: &Tamper) -> Result<Passkey, WebauthnError> {
    let (_, ccr, state) = registration_options(rp);
    let (_, reg) = SoftKey::register_with(&ccr, ORIGIN, tamper).expect("soft key answers");
    rp.finish_passkey_registration(&over_the_wire(&reg), &state)
}

/// Runs a discoverable login and returns the relying party's verdict.
#[cfg(feature = "danger-tamper")]
pub fn login(
    rp: &Webauthn,
    key: &mut SoftKey,
    passkey: &Passkey,
    tamper: &Tamper,
) -> Result<(Uuid, AuthenticationResult), WebauthnError> {
    let (rcr, state) = rp
        .start_discoverable_authentication()
        .expect("authentication starts");
    let credential = key
        .sign_in_with(&over_the_wire(&rcr), ORIGIN, tamper)
        .expect("soft key answers");
    let credential = over_the_wire(&credential);
    let (user, _cred_id) = rp.identify_discoverable_authentication(&credential)?;
    #[allow(deprecated)]
    let result = rp.finish_discoverable_authentication(
        &credential,
        state,
        &[DiscoverableKey::from(passkey)],
    )?;
    Ok((user, result))
}

/// A member with a software key registered through webauthn-rs (and accepted by it), as the circle
/// directory lists them.
///
/// # Panics
/// When webauthn-rs refuses the key: the software key is broken.
#[must_use]
pub fn member(role: Role) -> (SoftKey, MemberInfo) {
    let rp = relying_party();
    let (id, key, _passkey) = enroll(&rp);
    let info = MemberInfo {
        id,
        role,
        created_at: 0,
        passkeys: vec![key.public_key_info()],
        proofs: Vec::new(),
        revocation: None,
    };
    (key, info)
}
