//! An admin's signed decisions about a member: a revocation (the member leaves the circle) or a
//! promotion (the member becomes an admin). Only such a statement, signed by the hardware key of an
//! admin the chain admits, makes devices remove a member's devices or take their admin role; the
//! server's word alone changes nothing.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tessera_wire::{Base64Url, PublicKeyCredential, PublicKeyInfo, RequestChallengeResponse};
use uuid::Uuid;

use crate::identity::CertificateError;
use crate::signed::KeySignature;

/// What an admin decides about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The member leaves the circle: devices remove their devices from the group.
    Revoke,
    /// The member becomes an admin.
    Promote,
}

impl Decision {
    /// Separates this decision's signature from every other use of a hardware key.
    fn domain(self) -> &'static [u8] {
        match self {
            Decision::Revoke => b"tessera revocation v1",
            Decision::Promote => b"tessera promotion v1",
        }
    }
}

/// What an admin's hardware key signs when it decides about a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionStatement {
    /// Revoke or promote.
    pub decision: Decision,
    /// The circle.
    pub circle: Uuid,
    /// The member it is about.
    pub member: Uuid,
    /// The deciding admin.
    pub issuer: Uuid,
    /// When the admin signed it (Unix seconds).
    pub issued_at: i64,
}

impl DecisionStatement {
    /// The challenge the issuer's hardware key signs: SHA-256 over the decision's domain tag, the
    /// three ids as 16 bytes each and the time big-endian.
    #[must_use]
    pub fn challenge(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.decision.domain());
        hash.update(self.circle.as_bytes());
        hash.update(self.member.as_bytes());
        hash.update(self.issuer.as_bytes());
        hash.update(self.issued_at.to_be_bytes());
        hash.finalize().into()
    }
}

/// A decision with its issuer's hardware-key signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDecision {
    /// What was signed.
    pub statement: DecisionStatement,
    /// The issuer's hardware key over [`DecisionStatement::challenge`].
    pub signature: KeySignature,
}

/// Why a decision is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecisionError {
    /// Not a signed decision, or not the one expected where it is listed.
    #[error("the admin's statement is malformed")]
    Malformed,
    /// For another circle or another member than the one it is listed under.
    #[error("the admin's statement is for another circle or member")]
    Misfiled,
    /// The issuer is not an admin the chain admits.
    #[error("the statement's issuer is not an admin of the circle")]
    IssuerNotAdmin,
    /// The issuer's signature does not hold.
    #[error("the statement's signature does not hold: {0}")]
    Signature(#[from] CertificateError),
}

impl SignedDecision {
    /// Has a hardware key sign `statement` for `rp_id`: `sign` answers the request (the browser's
    /// `navigator.credentials.get`, or a software key).
    ///
    /// # Errors
    /// `sign`'s.
    pub fn sign<E>(
        statement: DecisionStatement,
        rp_id: &str,
        sign: impl FnOnce(&RequestChallengeResponse) -> Result<PublicKeyCredential, E>,
    ) -> Result<SignedDecision, E> {
        let signature = KeySignature::sign(&statement.challenge(), rp_id, sign)?;
        Ok(SignedDecision {
            statement,
            signature,
        })
    }

    /// The signed decision as the server keeps it (JSON, opaque to the server).
    #[must_use]
    pub fn to_blob(&self) -> Base64Url {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// The signed decision of a blob the server handed over, if it is a `decision`.
    ///
    /// # Errors
    /// [`DecisionError::Malformed`], also for another decision than `decision`.
    pub fn from_blob(
        blob: &Base64Url,
        decision: Decision,
    ) -> Result<SignedDecision, DecisionError> {
        crate::codec::from_json::<SignedDecision>(blob.as_slice())
            .ok()
            .filter(|d| d.statement.decision == decision)
            .ok_or(DecisionError::Malformed)
    }

    /// Checks that the decision is about `member` of `circle` and that one of the issuer's
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
    ) -> Result<(), DecisionError> {
        if self.statement.circle != circle || self.statement.member != member {
            return Err(DecisionError::Misfiled);
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
    fn an_admins_decision_holds_for_its_member_and_kind_only_and_unaltered() {
        let (mut admin_key, admin) = member(Role::Admin);
        let (mut other_key, other) = member(Role::Member);
        let circle = Uuid::new_v4();
        let target = Uuid::new_v4();
        let statement = DecisionStatement {
            decision: Decision::Revoke,
            circle,
            member: target,
            issuer: admin.id,
            issued_at: 1_800_000_000,
        };
        let signed = SignedDecision::sign(statement.clone(), RP, |r| admin_key.sign_in(r, ORIGIN))
            .expect("the admin signs");
        let blob = signed.to_blob();
        let back = SignedDecision::from_blob(&blob, Decision::Revoke).expect("it parses");
        // Not a promotion: the decision is signed too.
        assert_eq!(
            SignedDecision::from_blob(&blob, Decision::Promote),
            Err(DecisionError::Malformed)
        );
        let mut promoted = back.clone();
        promoted.statement.decision = Decision::Promote;
        assert!(matches!(
            promoted.verify((circle, target), &admin.passkeys, ORIGIN, RP),
            Err(DecisionError::Signature(_))
        ));
        assert_eq!(back, signed);
        back.verify((circle, target), &admin.passkeys, ORIGIN, RP)
            .expect("the revocation holds");

        // Listed under another member, or for another circle.
        assert_eq!(
            back.verify((circle, Uuid::new_v4()), &admin.passkeys, ORIGIN, RP),
            Err(DecisionError::Misfiled)
        );
        assert_eq!(
            back.verify((Uuid::new_v4(), target), &admin.passkeys, ORIGIN, RP),
            Err(DecisionError::Misfiled)
        );
        // Checked against another member's keys, for another origin, or altered.
        assert!(matches!(
            back.verify((circle, target), &other.passkeys, ORIGIN, RP),
            Err(DecisionError::Signature(_))
        ));
        assert!(matches!(
            back.verify(
                (circle, target),
                &admin.passkeys,
                "https://elsewhere.example",
                RP
            ),
            Err(DecisionError::Signature(_))
        ));
        let mut altered = back.clone();
        altered.statement.issued_at += 1;
        assert!(matches!(
            altered.verify((circle, target), &admin.passkeys, ORIGIN, RP),
            Err(DecisionError::Signature(_))
        ));
        // A member's key signs a revocation just as well: whether the issuer is an admin is the
        // chain's to say (trust.rs), not the signature's.
        let by_member = SignedDecision::sign(
            DecisionStatement {
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
            SignedDecision::from_blob(&b"{}".as_slice().into(), Decision::Revoke),
            Err(DecisionError::Malformed)
        );
    }
}
