//! Signed revocations: an admin's hardware key signs that a member leaves the circle, and only such
//! a statement makes devices remove that member's devices from the group. A server that stops
//! listing a member without one changes nothing in the group.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tessera_wire::{Base64Url, PublicKeyCredential, PublicKeyInfo, RequestChallengeResponse};
use uuid::Uuid;

use crate::identity::CertificateError;
use crate::signed::KeySignature;

/// Separates a revocation's signature from every other use of a hardware key.
const REVOCATION_DOMAIN: &[u8] = b"tessera revocation v1";

/// What an admin's hardware key signs when it revokes a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationStatement {
    /// The circle.
    pub circle: Uuid,
    /// The member who leaves it.
    pub member: Uuid,
    /// The revoking admin.
    pub issuer: Uuid,
    /// When the admin signed it (Unix seconds).
    pub issued_at: i64,
}

impl RevocationStatement {
    /// The challenge the issuer's hardware key signs: SHA-256 over a domain tag, the three ids as
    /// 16 bytes each and the time big-endian.
    #[must_use]
    pub fn challenge(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(REVOCATION_DOMAIN);
        hash.update(self.circle.as_bytes());
        hash.update(self.member.as_bytes());
        hash.update(self.issuer.as_bytes());
        hash.update(self.issued_at.to_be_bytes());
        hash.finalize().into()
    }
}

/// A revocation statement with its issuer's hardware-key signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocation {
    /// What was signed.
    pub statement: RevocationStatement,
    /// The issuer's hardware key over [`RevocationStatement::challenge`].
    pub signature: KeySignature,
}

/// Why a revocation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// Not a signed revocation.
    #[error("the revocation is malformed")]
    Malformed,
    /// For another circle or another member than the one it is listed under.
    #[error("the revocation is for another circle or member")]
    Misfiled,
    /// The issuer is not an admin the chain admits.
    #[error("the revocation's issuer is not an admin of the circle")]
    IssuerNotAdmin,
    /// The issuer's signature does not hold.
    #[error("the revocation's signature does not hold: {0}")]
    Signature(#[from] CertificateError),
}

impl SignedRevocation {
    /// Has a hardware key sign `statement` for `rp_id`: `sign` answers the request (the browser's
    /// `navigator.credentials.get`, or a software key).
    ///
    /// # Errors
    /// `sign`'s.
    pub fn sign<E>(
        statement: RevocationStatement,
        rp_id: &str,
        sign: impl FnOnce(&RequestChallengeResponse) -> Result<PublicKeyCredential, E>,
    ) -> Result<SignedRevocation, E> {
        let signature = KeySignature::sign(&statement.challenge(), rp_id, sign)?;
        Ok(SignedRevocation {
            statement,
            signature,
        })
    }

    /// The signed revocation as the server keeps it (JSON, opaque to the server).
    #[must_use]
    pub fn to_blob(&self) -> Base64Url {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// The signed revocation of a blob the server handed over.
    ///
    /// # Errors
    /// [`RevocationError::Malformed`].
    pub fn from_blob(blob: &Base64Url) -> Result<SignedRevocation, RevocationError> {
        crate::codec::from_json(blob.as_slice()).map_err(|_| RevocationError::Malformed)
    }

    /// Checks that the revocation is for `member` of `circle` and that one of the issuer's
    /// passkeys signed it for the server's `origin` and `rp_id`. Whether the issuer is an admin
    /// the chain admits is the caller's to know: `issuer_passkeys` are that admin's.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn verify(
        &self,
        (circle, member): (Uuid, Uuid),
        issuer_passkeys: &[PublicKeyInfo],
        origin: &str,
        rp_id: &str,
    ) -> Result<(), RevocationError> {
        if self.statement.circle != circle || self.statement.member != member {
            return Err(RevocationError::Misfiled);
        }
        self.signature
            .verify(&self.statement.challenge(), issuer_passkeys, origin, rp_id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tessera_softkey::testing::{ORIGIN, member};
    use tessera_wire::Role;

    use super::*;

    const RP: &str = "localhost";

    #[test]
    fn an_admins_revocation_holds_for_its_member_only_and_unaltered() {
        let (mut admin_key, admin) = member(Role::Admin);
        let (mut other_key, other) = member(Role::Member);
        let circle = Uuid::new_v4();
        let target = Uuid::new_v4();
        let statement = RevocationStatement {
            circle,
            member: target,
            issuer: admin.id,
            issued_at: 1_800_000_000,
        };
        let signed =
            SignedRevocation::sign(statement.clone(), RP, |r| admin_key.sign_in(r, ORIGIN))
                .expect("the admin signs");
        let blob = signed.to_blob();
        let back = SignedRevocation::from_blob(&blob).expect("it parses");
        assert_eq!(back, signed);
        back.verify((circle, target), &admin.passkeys, ORIGIN, RP)
            .expect("the revocation holds");

        // Listed under another member, or for another circle.
        assert_eq!(
            back.verify((circle, Uuid::new_v4()), &admin.passkeys, ORIGIN, RP),
            Err(RevocationError::Misfiled)
        );
        assert_eq!(
            back.verify((Uuid::new_v4(), target), &admin.passkeys, ORIGIN, RP),
            Err(RevocationError::Misfiled)
        );
        // Checked against another member's keys, for another origin, or altered.
        assert!(matches!(
            back.verify((circle, target), &other.passkeys, ORIGIN, RP),
            Err(RevocationError::Signature(_))
        ));
        assert!(matches!(
            back.verify(
                (circle, target),
                &admin.passkeys,
                "https://elsewhere.example",
                RP
            ),
            Err(RevocationError::Signature(_))
        ));
        let mut altered = back.clone();
        altered.statement.issued_at += 1;
        assert!(matches!(
            altered.verify((circle, target), &admin.passkeys, ORIGIN, RP),
            Err(RevocationError::Signature(_))
        ));
        // A member's key signs a revocation just as well: whether the issuer is an admin is the
        // chain's to say (trust.rs), not the signature's.
        let by_member = SignedRevocation::sign(
            RevocationStatement {
                issuer: other.id,
                ..statement
            },
            RP,
            |r| other_key.sign_in(r, ORIGIN),
        )
        .expect("the member signs");
        by_member
            .verify((circle, target), &other.passkeys, ORIGIN, RP)
            .expect("the signature itself holds");
        assert_eq!(
            SignedRevocation::from_blob(&b"{}".as_slice().into()),
            Err(RevocationError::Malformed)
        );
    }
}
