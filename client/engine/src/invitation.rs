//! Signed invitations, the links of a membership the server cannot forge: an admin's hardware key
//! signs a statement naming the circle, a fresh invitation key, the role, the expiry and the issuer
//! (and, for a recovery, the member it recovers); the newcomer's device signs the passkey it
//! enrolls with the invitation's secret (an admission); any device checks both against the
//! issuer's passkeys, without the server's word.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tessera_wire::{Base64Url, PublicKeyCredential, PublicKeyInfo, RequestChallengeResponse, Role};
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
    /// For a recovery invitation: the existing member who enrolls a new key with it (the role is
    /// then theirs already, and the statement's role grants nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovers: Option<Uuid>,
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
        match self.recovers {
            None => hash.update([0]),
            Some(member) => {
                hash.update([1]);
                hash.update(member.as_bytes());
            }
        }
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
    /// The signed statement is not one.
    #[error("the invitation's signed statement is malformed")]
    Malformed,
    /// The invitation key is not an Ed25519 public key.
    #[error("the invitation key is malformed")]
    MalformedKey,
    /// The admission was not signed with this invitation's secret, or for another key or member.
    #[error("the admission was not made with this invitation for this key")]
    BadAdmission,
}

impl SignedInvitation {
    /// Has a hardware key sign `statement` for `rp_id`: `sign` answers the request (the browser's
    /// `navigator.credentials.get`, or a software key).
    ///
    /// # Errors
    /// `sign`'s.
    pub fn sign<E>(
        statement: InvitationStatement,
        rp_id: &str,
        sign: impl FnOnce(&RequestChallengeResponse) -> Result<PublicKeyCredential, E>,
    ) -> Result<SignedInvitation, E> {
        let signature = KeySignature::sign(&statement.challenge(), rp_id, sign)?;
        Ok(SignedInvitation {
            statement,
            signature,
        })
    }

    /// The signed statement as the server keeps it (JSON, opaque to the server).
    #[must_use]
    pub fn to_blob(&self) -> Base64Url {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// The signed statement of a blob the server handed over.
    ///
    /// # Errors
    /// [`InvitationError::Malformed`].
    pub fn from_blob(blob: &Base64Url) -> Result<SignedInvitation, InvitationError> {
        crate::codec::from_json(blob.as_slice()).map_err(|_| InvitationError::Malformed)
    }

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

    /// The admission of `member`'s new `passkey` under `invitation`, made at `now` (Unix seconds).
    #[must_use]
    pub fn admit(
        &self,
        invitation: SignedInvitation,
        member: Uuid,
        passkey: PublicKeyInfo,
        now: i64,
    ) -> Admission {
        let signature = self.0.sign(&admission_message(member, &passkey, now));
        Admission {
            invitation,
            member,
            passkey,
            admitted_at: now,
            signature: signature.to_bytes()[..].into(),
        }
    }
}

/// What an invitation key signs: a domain tag, the member, the passkey (credential id, algorithm
/// and public key, each length-prefixed) and the time of the admission.
fn admission_message(member: Uuid, passkey: &PublicKeyInfo, admitted_at: i64) -> Vec<u8> {
    let mut message = ADMISSION_DOMAIN.to_vec();
    message.extend_from_slice(member.as_bytes());
    crate::signed::append_passkey(&mut message, passkey);
    message.extend_from_slice(&admitted_at.to_be_bytes());
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
    /// The admitted passkey.
    pub passkey: PublicKeyInfo,
    /// When the newcomer's device made the admission (Unix seconds): before the invitation
    /// expired.
    pub admitted_at: i64,
    /// The invitation key's Ed25519 signature over the member, the passkey and the time.
    pub signature: Base64Url,
}

impl Admission {
    /// Checks the chain for the admitted passkey: the invitation (see
    /// [`SignedInvitation::verify`], unexpired when the admission was made), then the invitation
    /// key's signature over this member, this passkey and that time.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn verify(
        &self,
        issuer_passkeys: &[PublicKeyInfo],
        (origin, rp_id): (&str, &str),
    ) -> Result<(), InvitationError> {
        self.invitation
            .verify(issuer_passkeys, origin, rp_id, self.admitted_at)?;
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
        let message = admission_message(self.member, &self.passkey, self.admitted_at);
        key.verify_strict(&message, &signature)
            .map_err(|_| InvitationError::BadAdmission)
    }
}

#[cfg(test)]
mod tests {
    use tessera_softkey::testing::{ORIGIN, member};

    use super::*;

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
            recovers: None,
        };
        let signed = SignedInvitation::sign(statement, RP, |r| admin_key.sign_in(r, ORIGIN))
            .expect("the admin's key signs");
        let (_, newcomer) = member(Role::Member);
        (admin.passkeys, signed, secret, newcomer.passkeys[0].clone())
    }

    #[test]
    fn an_invitation_signed_by_the_issuers_key_admits_the_newcomers_passkey() {
        let (issuer, signed, secret, passkey) = invitation();
        let newcomer = Uuid::new_v4();
        assert_eq!(signed.verify(&issuer, ORIGIN, RP, NOW), Ok(()));
        let admission = secret.admit(signed, newcomer, passkey, NOW);
        assert_eq!(admission.verify(&issuer, (ORIGIN, RP)), Ok(()));
        // It travels as JSON and still holds.
        let json = serde_json::to_string(&admission).expect("json");
        let back: Admission = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.verify(&issuer, (ORIGIN, RP)), Ok(()));
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
        let mut recovery = signed.clone();
        recovery.statement.recovers = Some(Uuid::new_v4());
        for altered in [&promoted, &later, &moved, &recovery] {
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
        // An admission moved to another passkey, member or time, or made with another
        // invitation's secret, or after the invitation expired.
        let admission = secret.admit(signed.clone(), newcomer, passkey.clone(), NOW);
        let (_, other) = member(Role::Member);
        let mut swapped = admission.clone();
        swapped.passkey = other.passkeys[0].clone();
        let mut renamed = admission.clone();
        renamed.member = Uuid::new_v4();
        let mut backdated = admission.clone();
        backdated.admitted_at -= 60;
        let thief = InvitationSecret::generate().expect("randomness");
        let stolen = thief.admit(signed.clone(), newcomer, passkey.clone(), NOW);
        for misused in [&swapped, &renamed, &backdated, &stolen] {
            assert_eq!(
                misused.verify(&issuer, (ORIGIN, RP)),
                Err(InvitationError::BadAdmission)
            );
        }
        let late = secret.admit(
            signed.clone(),
            newcomer,
            passkey,
            signed.statement.expires_at,
        );
        assert_eq!(
            late.verify(&issuer, (ORIGIN, RP)),
            Err(InvitationError::Expired)
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
