//! Statements signed by a member's hardware key: a WebAuthn assertion whose challenge is a hash of
//! the statement, checked against the passkey that made it (ES256). Device certificates are one
//! such statement; the circle's membership statements (signed invitations, docs/engine.md) are
//! others.

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tessera_wire::{Base64Url, PublicKeyCredential, PublicKeyInfo, RequestChallengeResponse};
use webauthn_rs_proto::{PublicKeyCredentialRequestOptions, UserVerificationPolicy};

use crate::identity::CertificateError;

/// A hardware key's assertion over a challenge (the fields of the WebAuthn answer a signature
/// check needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySignature {
    /// The hardware key's credential id.
    pub credential_id: Base64Url,
    /// The assertion's authenticator data.
    pub authenticator_data: Base64Url,
    /// The assertion's client data JSON.
    pub client_data_json: Base64Url,
    /// The signature over authenticator data ‖ SHA-256(client data), DER.
    pub signature: Base64Url,
}

#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: Base64Url,
    origin: String,
}

/// The request options with which a client asks its authenticator (the browser's
/// `navigator.credentials.get`, or a software key) to sign `challenge`: user verification required,
/// any of the member's keys.
#[must_use]
pub fn signature_request(rp_id: &str, challenge: &[u8; 32]) -> RequestChallengeResponse {
    RequestChallengeResponse {
        public_key: PublicKeyCredentialRequestOptions {
            challenge: challenge.to_vec(),
            timeout: Some(120_000),
            rp_id: rp_id.to_owned(),
            allow_credentials: Vec::new(),
            user_verification: UserVerificationPolicy::Required,
            hints: None,
            extensions: None,
        },
        mediation: None,
    }
}

/// Appends a passkey to a message to be signed: its credential id, algorithm and public key, each
/// length-prefixed (four bytes, big-endian).
pub(crate) fn append_passkey(message: &mut Vec<u8>, passkey: &PublicKeyInfo) {
    for part in [
        passkey.credential_id.as_slice(),
        passkey.alg.as_bytes(),
        passkey.public_key.as_slice(),
    ] {
        message.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        message.extend_from_slice(part);
    }
}

impl KeySignature {
    /// Has a hardware key sign `challenge` for `rp_id`: `sign` answers [`signature_request`].
    ///
    /// # Errors
    /// `sign`'s.
    pub fn sign<E>(
        challenge: &[u8; 32],
        rp_id: &str,
        sign: impl FnOnce(&RequestChallengeResponse) -> Result<PublicKeyCredential, E>,
    ) -> Result<KeySignature, E> {
        sign(&signature_request(rp_id, challenge)).map(|a| KeySignature::from_assertion(&a))
    }

    /// The signature an authenticator's answer to [`signature_request`] holds.
    #[must_use]
    pub fn from_assertion(assertion: &PublicKeyCredential) -> KeySignature {
        KeySignature {
            credential_id: assertion.raw_id[..].into(),
            authenticator_data: assertion.response.authenticator_data[..].into(),
            client_data_json: assertion.response.client_data_json[..].into(),
            signature: assertion.response.signature[..].into(),
        }
    }

    /// Checks that one of `passkeys` signed `challenge` for the server's `origin` and `rp_id`, with
    /// the user verified; returns that passkey.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn verify<'k>(
        &self,
        challenge: &[u8; 32],
        passkeys: &'k [PublicKeyInfo],
        origin: &str,
        rp_id: &str,
    ) -> Result<&'k PublicKeyInfo, CertificateError> {
        verify_assertion(
            Assertion {
                credential_id: &self.credential_id,
                authenticator_data: self.authenticator_data.as_slice(),
                client_data_json: self.client_data_json.as_slice(),
                signature: self.signature.as_slice(),
            },
            challenge,
            passkeys,
            (origin, rp_id),
        )
    }
}

/// The parts of an assertion a signature check reads.
pub(crate) struct Assertion<'a> {
    pub(crate) credential_id: &'a Base64Url,
    pub(crate) authenticator_data: &'a [u8],
    pub(crate) client_data_json: &'a [u8],
    pub(crate) signature: &'a [u8],
}

/// Checks an assertion over `challenge` against `passkeys`, for `(origin, rp_id)`: a `webauthn.get`
/// for that origin with that challenge, the RP id's hash, user presence and verification, one of
/// the passkeys (ES256), and its signature. Returns the passkey that signed.
pub(crate) fn verify_assertion<'k>(
    assertion: Assertion<'_>,
    challenge: &[u8; 32],
    passkeys: &'k [PublicKeyInfo],
    (origin, rp_id): (&str, &str),
) -> Result<&'k PublicKeyInfo, CertificateError> {
    let auth_data = assertion.authenticator_data;
    let client_data: ClientData = crate::codec::from_json(assertion.client_data_json)
        .map_err(|_| CertificateError::Malformed("client_data_json"))?;
    if client_data.kind != "webauthn.get" {
        return Err(CertificateError::WrongType);
    }
    if client_data.challenge.as_slice() != challenge {
        return Err(CertificateError::WrongChallenge);
    }
    if client_data.origin.trim_end_matches('/') != origin.trim_end_matches('/') {
        return Err(CertificateError::WrongOrigin);
    }
    // rpIdHash (32) ‖ flags (1) ‖ counter (4).
    if auth_data.len() < 37 {
        return Err(CertificateError::Malformed("authenticator_data"));
    }
    if auth_data[..32] != Sha256::digest(rp_id.as_bytes())[..] {
        return Err(CertificateError::WrongRelyingParty);
    }
    let flags = auth_data[32];
    if flags & 0x01 == 0 || flags & 0x04 == 0 {
        return Err(CertificateError::UserNotVerified);
    }
    let passkey = passkeys
        .iter()
        .find(|p| p.credential_id == *assertion.credential_id)
        .ok_or(CertificateError::UnknownKey)?;
    if passkey.alg != "ES256" {
        return Err(CertificateError::UnsupportedAlgorithm(passkey.alg.clone()));
    }
    let verifying = VerifyingKey::from_sec1_bytes(passkey.public_key.as_slice())
        .map_err(|_| CertificateError::Malformed("public_key"))?;
    let signature =
        Signature::from_der(assertion.signature).map_err(|_| CertificateError::BadSignature)?;
    let mut signed = auth_data.to_vec();
    signed.extend_from_slice(&Sha256::digest(assertion.client_data_json));
    verifying
        .verify(&signed, &signature)
        .map_err(|_| CertificateError::BadSignature)?;
    Ok(passkey)
}
