//! Signed invitations, the first links of a membership the server cannot forge (issue 15, in
//! progress; nothing uses them yet): an admin's hardware key signs a statement naming the circle, a
//! fresh invitation key, the role, the expiry and the issuer; the newcomer's device signs the
//! passkey it enrolls with the invitation's secret (an admission); any device checks both against
//! the issuer's passkeys, without the server's word.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tessera_wire::{Base64Url, PublicKeyInfo, Role};
use uuid::Uuid;

use crate::identity::CertificateError;
use crate::signed::KeySignature;

/// Separates an invitation statement's signature from every other use of a hardware key.
const STATEMENT_DOMAIN: &[u8] = b"tessera invitation v1";
/// Separates an admission's signature from every other use of an invitation key.
const ADMISSION_DOMAIN: &[u8] = b"tessera admission v1";

/// What an admin's hardware key signs when it invites someone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationStatement {
    /// The circle the invitation is for.
    pub circle: Uuid,
    /// The invitation's public key (Ed25519); its secret travels in the link's fragment only.
    pub invitation_key: Base64Url,
    /// The role the newcomer gets.
    pub role: Role,
    /// When the invitation stops admitting anyone (Unix seconds).
    pub expires_at: i64,
    /// The issuing admin.
    pub issuer: Uuid,
}

impl InvitationStatement {
    /// The challenge the issuer's hardware key signs: SHA-256 over a domain tag and every field in
    /// a fixed layout (ids as 16 bytes, the role as one byte, the expiry big-endian, the key last).
    #[must_use]
    pub fn challenge(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(STATEMENT_DOMAIN);
        hash.update(self.circle.as_bytes());
        hash.update([match self.role {
            Role::Admin => 1,
            Role::Member => 2,
        }]);
        hash.update(self.expires_at.to_be_bytes());
        hash.update(self.issuer.as_bytes());
        hash.update(self.invitation_key.as_slice());
        hash.finalize().into()
    }
}

/// An invitation statement with its issuer's hardware-key signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedInvitation {
    /// What was signed.
    pub statement: InvitationStatement,
    /// The issuer's hardware key over [`InvitationStatement::challenge`].
    pub signature: KeySignature,
}

/// Why an invitation or an admission is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvitationError {
    /// The issuer's signature does not hold.
    #[error("the invitation's signature does not hold: {0}")]
    Signature(#[from] CertificateError),
    /// The invitation has expired.
    #[error("the invitation has expired")]
    Expired,
    /// The invitation key is not an Ed25519 public key.
    #[error("the invitation key is malformed")]
    MalformedKey,
    /// The admission was not signed with this invitation's secret, or for another key or member.
    #[error("the admission was not made with this invitation for this key")]
    BadAdmission,
}

impl SignedInvitation {
    /// Checks that one of the issuer's passkeys signed the statement for the server's `origin`
    /// and `rp_id`, and that it has not expired at `now` (Unix seconds). Whether the issuer is an
    /// admin of the circle is the caller's to know.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn verify(
        &self,
        issuer_passkeys: &[PublicKeyInfo],
        origin: &str,
        rp_id: &str,
        now: i64,
    ) -> Result<(), InvitationError> {
        self.signature
            .verify(&self.statement.challenge(), issuer_passkeys, origin, rp_id)?;
        if now >= self.statement.expires_at {
            return Err(InvitationError::Expired);
        }
        Ok(())
    }
}

/// An invitation's secret: made by the issuing device, handed to the newcomer in the link's
/// fragment, used once to sign the passkey the newcomer enrolls.
pub struct InvitationSecret(SigningKey);

impl std::fmt::Debug for InvitationSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InvitationSecret(…)")
    }
}

impl InvitationSecret {
    /// A fresh secret.
    ///
    /// # Errors
    /// When the system has no randomness.
    pub fn generate() -> Result<InvitationSecret, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(InvitationSecret(SigningKey::from_bytes(&seed)))
    }

    /// The secret as the link's fragment carries it (32 bytes).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The secret of the link's fragment.
    #[must_use]
    pub fn from_bytes(bytes: &[u8; 32]) -> InvitationSecret {
        InvitationSecret(SigningKey::from_bytes(bytes))
    }

    /// The public key the invitation statement names.
    #[must_use]
    pub fn public_key(&self) -> Base64Url {
        self.0.verifying_key().to_bytes()[..].into()
    }

    /// The admission of `member`'s new `passkey` under `invitation`.
    #[must_use]
    pub fn admit(
        &self,
        invitation: SignedInvitation,
        member: Uuid,
        passkey: &PublicKeyInfo,
    ) -> Admission {
        let signature = self.0.sign(&admission_message(member, passkey));
        Admission {
            invitation,
            member,
            signature: signature.to_bytes()[..].into(),
        }
    }
}

/// What an invitation key signs: a domain tag, the member, and the passkey's credential id and
/// public key, each length-prefixed.
fn admission_message(member: Uuid, passkey: &PublicKeyInfo) -> Vec<u8> {
    let mut message = ADMISSION_DOMAIN.to_vec();
    message.extend_from_slice(member.as_bytes());
    for part in [
        passkey.credential_id.as_slice(),
        passkey.alg.as_bytes(),
        passkey.public_key.as_slice(),
    ] {
        message.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        message.extend_from_slice(part);
    }
    message
}

/// A member's passkey admitted by a signed invitation: the chain from the issuer's hardware key to
/// the newcomer's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The invitation, signed by its issuer.
    pub invitation: SignedInvitation,
    /// The admitted member.
    pub member: Uuid,
    /// The invitation key's Ed25519 signature over the member and the passkey.
    pub signature: Base64Url,
}

impl Admission {
    /// Checks the chain for `passkey`: the invitation (see [`SignedInvitation::verify`], at the
    /// time the passkey was enrolled, `enrolled_at`), then the invitation key's signature over this
    /// member and this passkey.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn verify(
        &self,
        passkey: &PublicKeyInfo,
        issuer_passkeys: &[PublicKeyInfo],
        (origin, rp_id): (&str, &str),
        enrolled_at: i64,
    ) -> Result<(), InvitationError> {
        self.invitation
            .verify(issuer_passkeys, origin, rp_id, enrolled_at)?;
        let key: [u8; 32] = self
            .invitation
            .statement
            .invitation_key
            .as_slice()
            .try_into()
            .map_err(|_| InvitationError::MalformedKey)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| InvitationError::MalformedKey)?;
        let signature = ed25519_dalek::Signature::from_slice(self.signature.as_slice())
            .map_err(|_| InvitationError::BadAdmission)?;
        key.verify_strict(&admission_message(self.member, passkey), &signature)
            .map_err(|_| InvitationError::BadAdmission)
    }
}

#[cfg(test)]
mod tests {
    use tessera_softkey::testing::{ORIGIN, member};

    use super::*;
    use crate::signed::signature_request;

    const RP: &str = "localhost";
    const NOW: i64 = 1_800_000_000;

    /// An admin, a signed invitation for a member, its secret, and a newcomer's key.
    fn invitation() -> (
        Vec<PublicKeyInfo>,
        SignedInvitation,
        InvitationSecret,
        PublicKeyInfo,
    ) {
        let (mut admin_key, admin) = member(Role::Admin);
        let secret = InvitationSecret::generate().expect("randomness");
        let statement = InvitationStatement {
            circle: Uuid::new_v4(),
            invitation_key: secret.public_key(),
            role: Role::Member,
            expires_at: NOW + 3600,
            issuer: admin.id,
        };
        let assertion = admin_key
            .sign_in(&signature_request(RP, &statement.challenge()), ORIGIN)
            .expect("the admin's key signs");
        let signed = SignedInvitation {
            statement,
            signature: KeySignature::from_assertion(&assertion),
        };
        let (_, newcomer) = member(Role::Member);
        (admin.passkeys, signed, secret, newcomer.passkeys[0].clone())
    }

    #[test]
    fn an_invitation_signed_by_the_issuers_key_admits_the_newcomers_passkey() {
        let (issuer, signed, secret, passkey) = invitation();
        let newcomer = Uuid::new_v4();
        assert_eq!(signed.verify(&issuer, ORIGIN, RP, NOW), Ok(()));
        let admission = secret.admit(signed, newcomer, &passkey);
        assert_eq!(
            admission.verify(&passkey, &issuer, (ORIGIN, RP), NOW),
            Ok(())
        );
        // It travels as JSON and still holds.
        let json = serde_json::to_string(&admission).expect("json");
        let back: Admission = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.verify(&passkey, &issuer, (ORIGIN, RP), NOW), Ok(()));
    }

    #[test]
    fn a_forged_altered_expired_or_misused_invitation_admits_nobody() {
        let (issuer, signed, secret, passkey) = invitation();
        let newcomer = Uuid::new_v4();
        // Any field changed after signing: the signature no longer holds.
        let mut promoted = signed.clone();
        promoted.statement.role = Role::Admin;
        let mut later = signed.clone();
        later.statement.expires_at += 86_400;
        let mut moved = signed.clone();
        moved.statement.circle = Uuid::new_v4();
        for altered in [&promoted, &later, &moved] {
            assert_eq!(
                altered.verify(&issuer, ORIGIN, RP, NOW),
                Err(InvitationError::Signature(CertificateError::WrongChallenge))
            );
        }
        // Signed by a key that is not the issuer's (a server that invents one).
        let (_, stranger) = member(Role::Admin);
        assert_eq!(
            signed.verify(&stranger.passkeys, ORIGIN, RP, NOW),
            Err(InvitationError::Signature(CertificateError::UnknownKey))
        );
        // For another relying party.
        assert_eq!(
            signed.verify(&issuer, ORIGIN, "evil.example", NOW),
            Err(InvitationError::Signature(
                CertificateError::WrongRelyingParty
            ))
        );
        // Expired.
        assert_eq!(
            signed.verify(&issuer, ORIGIN, RP, signed.statement.expires_at),
            Err(InvitationError::Expired)
        );
        // An admission for another passkey, another member, or by another invitation's secret.
        let admission = secret.admit(signed.clone(), newcomer, &passkey);
        let (_, other) = member(Role::Member);
        assert_eq!(
            admission.verify(&other.passkeys[0], &issuer, (ORIGIN, RP), NOW),
            Err(InvitationError::BadAdmission)
        );
        let mut renamed = admission.clone();
        renamed.member = Uuid::new_v4();
        assert_eq!(
            renamed.verify(&passkey, &issuer, (ORIGIN, RP), NOW),
            Err(InvitationError::BadAdmission)
        );
        let thief = InvitationSecret::generate().expect("randomness");
        let stolen = thief.admit(signed, newcomer, &passkey);
        assert_eq!(
            stolen.verify(&passkey, &issuer, (ORIGIN, RP), NOW),
            Err(InvitationError::BadAdmission)
        );
    }

    #[test]
    fn the_secret_survives_the_links_fragment_and_never_shows_in_debug() {
        let secret = InvitationSecret::generate().expect("randomness");
        let back = InvitationSecret::from_bytes(&secret.to_bytes());
        assert_eq!(back.public_key(), secret.public_key());
        assert!(!format!("{secret:?}").contains(&Base64Url::encode(&secret.to_bytes())));
    }
}
