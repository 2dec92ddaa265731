//! Device certificates: a device's MLS signature key bound to its member's hardware key by a WebAuthn
//! assertion whose challenge commits to that key and to the member and device ids; checked by every
//! peer against the passkey public keys of the circle directory.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tessera_wire::{Base64Url, PublicKeyCredential, PublicKeyInfo, RequestChallengeResponse};
use uuid::Uuid;

use crate::signed::{Assertion, signature_request, verify_assertion};

/// Separates this use of a hardware key's signature from every other.
const DOMAIN: &[u8] = b"tessera device certificate v1";

/// A device's MLS signature key, certified by its member's hardware key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCertificate {
    /// The member.
    pub member: Uuid,
    /// The device.
    pub device: Uuid,
    /// The device's MLS signature public key.
    pub device_key: Base64Url,
    /// The hardware key's credential id.
    pub credential_id: Base64Url,
    /// The assertion's authenticator data.
    pub authenticator_data: Base64Url,
    /// The assertion's client data JSON.
    pub client_data_json: Base64Url,
    /// The hardware key's signature over authenticator data ‖ SHA-256(client data).
    pub signature: Base64Url,
}

/// Why a certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// A field is not valid base64url or JSON.
    #[error("the certificate is malformed: {0}")]
    Malformed(&'static str),
    /// The client data is not that of an assertion.
    #[error("the client data is not a WebAuthn assertion")]
    WrongType,
    /// The challenge does not commit to this member, device and key.
    #[error("the challenge does not commit to this member, device and key")]
    WrongChallenge,
    /// The assertion was made for another origin.
    #[error("the assertion was made for another origin")]
    WrongOrigin,
    /// The assertion was made for another relying party.
    #[error("the assertion was made for another relying party")]
    WrongRelyingParty,
    /// The key did not verify its user (PIN or biometric) or saw no presence.
    #[error("the hardware key did not verify its user")]
    UserNotVerified,
    /// The credential is not one of the member's keys in the directory.
    #[error("the hardware key is not one of the member's keys")]
    UnknownKey,
    /// The key's algorithm is not supported here.
    #[error("the hardware key's algorithm {0} is not supported")]
    UnsupportedAlgorithm(String),
    /// The signature does not verify.
    #[error("the hardware key's signature does not verify")]
    BadSignature,
}

/// A hardware key's fingerprint for people to compare out of band: the first 16 bytes of the
/// SHA-256 of its public key (SEC1 bytes), in groups of four hex digits.
#[must_use]
pub fn key_fingerprint(public_key: &[u8]) -> String {
    let digest = Sha256::digest(public_key);
    digest[..16]
        .chunks(2)
        .map(|pair| format!("{:02x}{:02x}", pair[0], pair[1]))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The challenge a hardware key signs to certify `device_key` for `member`'s `device`.
#[must_use]
pub fn certificate_challenge(member: Uuid, device: Uuid, device_key: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(DOMAIN);
    hash.update(member.as_bytes());
    hash.update(device.as_bytes());
    hash.update(device_key);
    hash.finalize().into()
}

/// The request options a client hands its authenticator (the browser's `navigator.credentials.get`
/// or a software key) to certify a device key.
#[must_use]
pub fn certificate_request(
    rp_id: &str,
    member: Uuid,
    device: Uuid,
    device_key: &[u8],
) -> RequestChallengeResponse {
    signature_request(rp_id, &certificate_challenge(member, device, device_key))
}

/// Certifies `device_key` as `member`'s device `device` with whatever answers the WebAuthn
/// request for `rp_id` (a software key, a hardware key through a platform client): the request of
/// [`certificate_request`], the certificate of its answer.
///
/// # Errors
/// The answerer's, when it refuses.
pub fn certify<E>(
    rp_id: &str,
    member: Uuid,
    device: Uuid,
    device_key: &[u8],
    answer: impl FnOnce(&RequestChallengeResponse) -> Result<PublicKeyCredential, E>,
) -> Result<DeviceCertificate, E> {
    let assertion = answer(&certificate_request(rp_id, member, device, device_key))?;
    Ok(DeviceCertificate::from_assertion(
        member, device, device_key, &assertion,
    ))
}

impl DeviceCertificate {
    /// The certificate made of an authenticator's answer to [`certificate_request`] (from a
    /// browser's `navigator.credentials.get` or a software key).
    #[must_use]
    pub fn from_assertion(
        member: Uuid,
        device: Uuid,
        device_key: &[u8],
        assertion: &PublicKeyCredential,
    ) -> DeviceCertificate {
        DeviceCertificate {
            member,
            device,
            device_key: device_key.into(),
            credential_id: assertion.raw_id[..].into(),
            authenticator_data: assertion.response.authenticator_data[..].into(),
            client_data_json: assertion.response.client_data_json[..].into(),
            signature: assertion.response.signature[..].into(),
        }
    }

    /// The certified device key.
    #[must_use]
    pub fn device_key_bytes(&self) -> &[u8] {
        self.device_key.as_slice()
    }

    /// Checks the certificate against the member's passkeys from the circle directory, for the
    /// server's `origin` and `rp_id`. Every check must pass. Returns the passkey that signed.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn verify<'k>(
        &self,
        member_passkeys: &'k [PublicKeyInfo],
        origin: &str,
        rp_id: &str,
    ) -> Result<&'k PublicKeyInfo, CertificateError> {
        let challenge = certificate_challenge(self.member, self.device, self.device_key_bytes());
        let assertion = Assertion {
            credential_id: &self.credential_id,
            authenticator_data: self.authenticator_data.as_slice(),
            client_data_json: self.client_data_json.as_slice(),
            signature: self.signature.as_slice(),
        };
        verify_assertion(assertion, &challenge, member_passkeys, (origin, rp_id))
    }
}

#[cfg(test)]
mod tests {
    use tessera_softkey::testing::{ORIGIN, member};
    use tessera_softkey::{SoftKey, Tamper};
    use tessera_wire::Role;

    use super::*;

    #[test]
    fn a_fingerprint_is_the_start_of_the_keys_sha256_in_groups() {
        // SHA-256 of nothing starts e3b0c442 98fc1c14 9afbf4c8 996fb924.
        assert_eq!(
            key_fingerprint(b""),
            "e3b0 c442 98fc 1c14 9afb f4c8 996f b924"
        );
        assert_ne!(key_fingerprint(&[4; 65]), key_fingerprint(&[5; 65]));
    }

    /// A member's soft key registered through real webauthn-rs, and its directory entry.
    fn member_key() -> (SoftKey, Vec<PublicKeyInfo>, Uuid) {
        let (key, info) = member(Role::Member);
        (key, info.passkeys, info.id)
    }

    #[test]
    fn a_certificate_from_the_members_key_verifies() {
        let (mut key, directory, member) = member_key();
        let device = Uuid::new_v4();
        let cert = certify("localhost", member, device, b"device mls key", |r| {
            key.sign_in(r, ORIGIN)
        })
        .expect("certify");
        assert_eq!(
            cert.verify(&directory, ORIGIN, "localhost"),
            Ok(&directory[0])
        );
        assert_eq!(cert.device_key_bytes(), b"device mls key");
        let json = serde_json::to_string(&cert).expect("serialize");
        let back: DeviceCertificate = serde_json::from_str(&json).expect("parse");
        assert_eq!(
            back.verify(&directory, ORIGIN, "localhost"),
            Ok(&directory[0])
        );
    }

    #[test]
    fn substituted_keys_ids_and_signers_are_refused() {
        let (mut key, directory, member) = member_key();
        let device = Uuid::new_v4();
        let cert = certify("localhost", member, device, b"device mls key", |r| {
            key.sign_in(r, ORIGIN)
        })
        .expect("certify");

        let other_key = DeviceCertificate {
            device_key: b"attacker key"[..].into(),
            ..cert.clone()
        };
        let other_device = DeviceCertificate {
            device: Uuid::new_v4(),
            ..cert.clone()
        };
        let other_member = DeviceCertificate {
            member: Uuid::new_v4(),
            ..cert.clone()
        };
        for forged in [other_key, other_device, other_member] {
            assert_eq!(
                forged.verify(&directory, ORIGIN, "localhost"),
                Err(CertificateError::WrongChallenge)
            );
        }

        let (_, strangers_directory, _) = member_key();
        assert_eq!(
            cert.verify(&strangers_directory, ORIGIN, "localhost"),
            Err(CertificateError::UnknownKey),
            "another member's directory entry does not vouch for it"
        );
        let mut swapped = strangers_directory[0].clone();
        swapped.credential_id = cert.credential_id.clone();
        assert_eq!(
            cert.verify(&[swapped], ORIGIN, "localhost"),
            Err(CertificateError::BadSignature),
            "a directory that substitutes the public key is caught"
        );
        assert_eq!(
            cert.verify(&directory, "http://evil.example", "localhost"),
            Err(CertificateError::WrongOrigin)
        );
        assert_eq!(
            cert.verify(&directory, ORIGIN, "evil.example"),
            Err(CertificateError::WrongRelyingParty)
        );
        let mut bad_signature = cert.clone();
        let mut bytes = cert.signature.0.clone();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        bad_signature.signature = Base64Url(bytes);
        assert_eq!(
            bad_signature.verify(&directory, ORIGIN, "localhost"),
            Err(CertificateError::BadSignature)
        );
    }

    #[test]
    fn a_key_that_did_not_verify_its_user_or_an_unsupported_key_is_refused() {
        let (mut key, directory, member) = member_key();
        let device = Uuid::new_v4();
        let request = certificate_request("localhost", member, device, b"k");
        let tamper = Tamper {
            clear_user_verified: true,
            ..Default::default()
        };
        let assertion = key.sign_in_with(&request, ORIGIN, &tamper).expect("sign");
        let cert = DeviceCertificate::from_assertion(member, device, b"k", &assertion);
        assert_eq!(
            cert.verify(&directory, ORIGIN, "localhost"),
            Err(CertificateError::UserNotVerified)
        );
        let mut eddsa = directory[0].clone();
        eddsa.alg = "EdDSA".into();
        let good = certify("localhost", member, device, b"k", |r| {
            key.sign_in(r, ORIGIN)
        })
        .expect("certify");
        assert_eq!(
            good.verify(&[eddsa], ORIGIN, "localhost"),
            Err(CertificateError::UnsupportedAlgorithm("EdDSA".into()))
        );
        let garbage = DeviceCertificate {
            client_data_json: b"!!"[..].into(),
            ..good
        };
        assert_eq!(
            garbage.verify(&directory, ORIGIN, "localhost"),
            Err(CertificateError::Malformed("client_data_json"))
        );
    }
}
