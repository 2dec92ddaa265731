//! Sessions renewed by the device key: a device whose server session ended proves that it is
//! still its member's certified device, and gets a new session without a touch of the hardware
//! key. It signs, with the device key its certificate binds, the server's single-use ceremony id;
//! the server checks the certificate against the member's keys as they stand now (a revoked key
//! or member renews nothing) and the signature against the certified key. This module holds the
//! statement (made by devices, checked by the server) and when a device asks for it.

use ed25519_dalek::{Signature, VerifyingKey};
use openmls_traits::signatures::Signer as _;
use serde::{Deserialize, Serialize};
use tessera_wire::{Base64Url, ErrorCode, PublicKeyInfo};
use uuid::Uuid;
use web_time::{Duration, Instant};

use crate::crypto::DeviceSigner;
use crate::identity::{CertificateError, DeviceCertificate};

/// Separates this use of a device key's signature from every other (MLS signs with the same key
/// under its own labels).
const DOMAIN: &[u8] = b"tessera session renewal v1";

/// The bytes a device key signs to renew its member's session at `origin` in the ceremony
/// `ceremony`: the domain, then origin, ceremony id, member and device, each length-prefixed
/// (four bytes, big-endian).
#[must_use]
pub fn renewal_message(origin: &str, ceremony: &str, member: Uuid, device: Uuid) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    for part in [
        origin.as_bytes(),
        ceremony.as_bytes(),
        member.as_bytes(),
        device.as_bytes(),
    ] {
        message.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        message.extend_from_slice(part);
    }
    message
}

/// A device's request for a new session (`POST /api/v1/session/renew`): its certificate, and its
/// device key's signature over [`renewal_message`] for the ceremony the server started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRenewal {
    /// The ceremony id `POST /api/v1/session/renew/start` answered.
    pub ceremony: String,
    /// The device's certificate, signed by one of its member's hardware keys.
    pub certificate: DeviceCertificate,
    /// The device key's Ed25519 signature over [`renewal_message`].
    pub signature: Base64Url,
}

/// Why a renewal is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalError {
    /// The certificate does not hold against the member's keys.
    #[error("the device's certificate does not hold: {0}")]
    Certificate(#[from] CertificateError),
    /// The certified device key is not an Ed25519 public key.
    #[error("the certified device key is not an Ed25519 key")]
    MalformedKey,
    /// The device key did not sign this ceremony.
    #[error("the device key's signature does not verify")]
    BadSignature,
}

impl SessionRenewal {
    /// Signs the renewal for `ceremony` at `origin` with the device's key.
    pub(crate) fn sign(
        signer: &DeviceSigner,
        certificate: &DeviceCertificate,
        origin: &str,
        ceremony: &str,
    ) -> Result<SessionRenewal, crate::EngineError> {
        let message = renewal_message(origin, ceremony, certificate.member, certificate.device);
        let signature = signer
            .sign(&message)
            .map_err(|e| crate::EngineError::Mls(format!("{e:?}")))?;
        Ok(SessionRenewal {
            ceremony: ceremony.to_owned(),
            certificate: certificate.clone(),
            signature: signature.into(),
        })
    }

    /// Checks the renewal against the member's current passkeys, for the server's `origin` and
    /// `rp_id`: the certificate, then the certified device key's signature over this ceremony.
    /// Returns the passkey that certified the device.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn verify<'k>(
        &self,
        member_passkeys: &'k [PublicKeyInfo],
        origin: &str,
        rp_id: &str,
    ) -> Result<&'k PublicKeyInfo, RenewalError> {
        let passkey = self.certificate.verify(member_passkeys, origin, rp_id)?;
        let key: [u8; 32] = self
            .certificate
            .device_key_bytes()
            .try_into()
            .map_err(|_| RenewalError::MalformedKey)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| RenewalError::MalformedKey)?;
        let signature = Signature::from_slice(self.signature.as_slice())
            .map_err(|_| RenewalError::BadSignature)?;
        let message = renewal_message(
            origin,
            &self.ceremony,
            self.certificate.member,
            self.certificate.device,
        );
        key.verify_strict(&message, &signature)
            .map_err(|_| RenewalError::BadSignature)?;
        Ok(passkey)
    }
}

/// What came of renewing the session (see [`crate::Engine::handle_session_renewal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalOutcome {
    /// The server granted a new session; the driver uses it from now on.
    Renewed,
    /// The server refused: the device's certificate no longer holds (its key was revoked) or
    /// the member logged this device out. The member logs in with their hardware key.
    Refused,
    /// The server says the member was revoked.
    Revoked,
    /// The server could not be asked (network, a server error): asked again shortly.
    Unavailable,
}

impl RenewalOutcome {
    /// What the server's answer to a renewal (either of its two requests) means: its HTTP
    /// `status`, none when it could not be reached, and the error `code` of a refusal.
    #[must_use]
    pub fn of_answer(status: Option<u16>, code: Option<ErrorCode>) -> RenewalOutcome {
        match status {
            None | Some(429 | 500..) => RenewalOutcome::Unavailable,
            Some(200..=299) => RenewalOutcome::Renewed,
            _ if code == Some(ErrorCode::MemberRevoked) => RenewalOutcome::Revoked,
            Some(_) => RenewalOutcome::Refused,
        }
    }
}

/// The least time between two renewals while no connection is accepted with the first: a refusal
/// that was on its way when the session was renewed (a fetch made with the old one) renews again
/// only after this, and not at all once a connection is accepted.
pub(crate) const RENEW_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// Where the device's session stands, as far as renewing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SessionState {
    /// Nothing to do.
    #[default]
    Held,
    /// The driver was asked to renew it; waiting for the outcome.
    Renewing,
    /// Asked again then: the server could not be asked, or a refusal came soon after a renewal.
    RetryAt(Instant),
    /// Renewed at this time, and no connection has been accepted with the new session yet.
    Renewed(Instant),
}

/// What the device does about a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionStep {
    /// Nothing now.
    Wait,
    /// Ask the driver to renew it.
    Renew,
}

impl SessionState {
    /// The server refused the session (expired, or ended).
    pub(crate) fn refused(&mut self, now: Instant) -> SessionStep {
        match *self {
            SessionState::Held => {
                *self = SessionState::Renewing;
                SessionStep::Renew
            }
            SessionState::Renewed(at) if now < at + RENEW_AGAIN_AFTER => {
                *self = SessionState::RetryAt(at + RENEW_AGAIN_AFTER);
                SessionStep::Wait
            }
            SessionState::Renewed(_) => {
                *self = SessionState::Renewing;
                SessionStep::Renew
            }
            SessionState::Renewing | SessionState::RetryAt(_) => SessionStep::Wait,
        }
    }

    /// A connection was accepted with the session: it holds.
    pub(crate) fn accepted(&mut self) {
        if matches!(self, SessionState::Renewed(_) | SessionState::RetryAt(_)) {
            *self = SessionState::Held;
        }
    }

    /// What came of a renewal at `now`; `retry` is when an unavailable server is asked again.
    pub(crate) fn outcome(&mut self, outcome: RenewalOutcome, now: Instant, retry: Instant) {
        *self = match outcome {
            RenewalOutcome::Renewed => SessionState::Renewed(now),
            RenewalOutcome::Unavailable => SessionState::RetryAt(retry),
            RenewalOutcome::Refused | RenewalOutcome::Revoked => SessionState::Held,
        };
    }

    /// Time passed: whether to ask for the renewal again.
    pub(crate) fn due(&mut self, now: Instant) -> SessionStep {
        match *self {
            SessionState::RetryAt(at) if at <= now => {
                *self = SessionState::Renewing;
                SessionStep::Renew
            }
            _ => SessionStep::Wait,
        }
    }

    /// When [`SessionState::due`] next has something to do.
    pub(crate) fn poll_timeout(self) -> Option<Instant> {
        match self {
            SessionState::RetryAt(at) => Some(at),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tessera_softkey::testing::{ORIGIN, member};
    use tessera_wire::Role;

    use super::*;
    use crate::identity::certify;

    const CEREMONY: &str = "a-ceremony-id";

    /// A member's device: its signer, its certificate, and the member's passkeys.
    fn device() -> (DeviceSigner, DeviceCertificate, Vec<PublicKeyInfo>) {
        let (mut key, info) = member(Role::Member);
        let signer = DeviceSigner::generate().expect("key");
        let certificate = certify("localhost", info.id, Uuid::new_v4(), signer.public(), |r| {
            key.sign_in(r, ORIGIN)
        })
        .expect("certify");
        (signer, certificate, info.passkeys)
    }

    #[test]
    fn a_renewal_signed_by_the_certified_key_verifies_and_survives_json() {
        let (signer, certificate, passkeys) = device();
        let renewal = SessionRenewal::sign(&signer, &certificate, ORIGIN, CEREMONY).expect("sign");
        let json = serde_json::to_string(&renewal).expect("json");
        let back: SessionRenewal = serde_json::from_str(&json).expect("parse");
        assert_eq!(
            back.verify(&passkeys, ORIGIN, "localhost"),
            Ok(&passkeys[0])
        );
    }

    #[test]
    fn another_ceremony_origin_key_or_member_key_is_refused() {
        let (signer, certificate, passkeys) = device();
        let renewal = SessionRenewal::sign(&signer, &certificate, ORIGIN, CEREMONY).expect("sign");

        let replayed = SessionRenewal {
            ceremony: "another-ceremony".into(),
            ..renewal.clone()
        };
        assert_eq!(
            replayed.verify(&passkeys, ORIGIN, "localhost"),
            Err(RenewalError::BadSignature)
        );
        let elsewhere =
            SessionRenewal::sign(&signer, &certificate, "https://evil.example", CEREMONY)
                .expect("sign");
        assert_eq!(
            elsewhere.verify(&passkeys, ORIGIN, "localhost"),
            Err(RenewalError::BadSignature)
        );
        // A key that is not the certified one signs in vain.
        let thief = DeviceSigner::generate().expect("key");
        let stolen = SessionRenewal::sign(&thief, &certificate, ORIGIN, CEREMONY).expect("sign");
        assert_eq!(
            stolen.verify(&passkeys, ORIGIN, "localhost"),
            Err(RenewalError::BadSignature)
        );
        // The member's key was revoked: their passkeys no longer hold it.
        let (_, _, others) = device();
        assert_eq!(
            renewal.verify(&others, ORIGIN, "localhost"),
            Err(RenewalError::Certificate(CertificateError::UnknownKey))
        );
        let garbled = SessionRenewal {
            signature: vec![0; 64].into(),
            ..renewal.clone()
        };
        assert_eq!(
            garbled.verify(&passkeys, ORIGIN, "localhost"),
            Err(RenewalError::BadSignature)
        );
    }

    #[test]
    fn the_servers_answer_says_renewed_refused_revoked_or_ask_again() {
        let of = RenewalOutcome::of_answer;
        assert_eq!(of(Some(200), None), RenewalOutcome::Renewed);
        assert_eq!(
            of(Some(403), Some(ErrorCode::MemberRevoked)),
            RenewalOutcome::Revoked
        );
        for refused in [
            (401, ErrorCode::DeviceNotCertified),
            (400, ErrorCode::CeremonyUnknown),
        ] {
            assert_eq!(
                of(Some(refused.0), Some(refused.1)),
                RenewalOutcome::Refused
            );
        }
        for unavailable in [None, Some(429), Some(500), Some(503)] {
            assert_eq!(of(unavailable, None), RenewalOutcome::Unavailable);
        }
    }

    #[test]
    fn a_device_renews_once_per_refusal_and_at_most_every_few_seconds_until_accepted() {
        let now = Instant::now();
        let mut state = SessionState::default();
        assert_eq!(state.refused(now), SessionStep::Renew);
        // Further refusals while renewing ask nothing more.
        assert_eq!(state.refused(now), SessionStep::Wait);
        let retry = now + Duration::from_secs(5);
        state.outcome(RenewalOutcome::Unavailable, now, retry);
        assert_eq!(state.poll_timeout(), Some(retry));
        assert_eq!(state.due(now), SessionStep::Wait);
        assert_eq!(state.due(retry), SessionStep::Renew);
        state.outcome(RenewalOutcome::Renewed, retry, retry);
        // A refusal soon after the renewal (made with the old session) waits, and a connection
        // accepted meanwhile settles it.
        assert_eq!(state.refused(retry), SessionStep::Wait);
        assert_eq!(state.poll_timeout(), Some(retry + RENEW_AGAIN_AFTER));
        state.accepted();
        assert_eq!(state.poll_timeout(), None);
        assert_eq!(state.refused(retry), SessionStep::Renew);
        // Refused again and again without a connection: one renewal per RENEW_AGAIN_AFTER.
        state.outcome(RenewalOutcome::Renewed, retry, retry);
        assert_eq!(state.refused(retry), SessionStep::Wait);
        assert_eq!(state.due(retry + RENEW_AGAIN_AFTER), SessionStep::Renew);
    }
}
