//! Signed decisions about a member: an admin's revocation (the member leaves the circle) or
//! promotion (the member becomes an admin), and a key's revocation (one of the member's hardware
//! keys goes, signed by one of the member's own keys, a lost one's included, or by an admin). Only
//! such a statement, signed by a hardware key the chain admits, makes devices remove devices or
//! take an admin role; the server's word alone changes nothing.

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
    /// One of the member's hardware keys is revoked (lost, stolen or retired): devices remove
    /// the devices it certified from the group.
    RevokeKey,
}

impl Decision {
    /// Separates this decision's signature from every other use of a hardware key.
    fn domain(self) -> &'static [u8] {
        match self {
            Decision::Revoke => b"tessera revocation v1",
            Decision::Promote => b"tessera promotion v1",
            Decision::RevokeKey => b"tessera key revocation v1",
        }
    }
}

/// What a hardware key signs when it decides about a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionStatement {
    /// Revoke or promote.
    pub decision: Decision,
    /// The circle.
    pub circle: Uuid,
    /// The member it is about.
    pub member: Uuid,
    /// The deciding admin (or, for a key's revocation, the member themselves).
    pub issuer: Uuid,
    /// When the admin signed it (Unix seconds).
    pub issued_at: i64,
    /// The key a [`Decision::RevokeKey`] revokes (whole, so that a revoked root key is still
    /// known by its fingerprint); none for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PublicKeyInfo>,
    /// For a revocation (of a member or of a key): the proofs the revoked keys signed before
    /// that still hold, as [`proof_digest`]s concatenated in ascending order. A revoked admin's
    /// invitations keep admitting the members they admitted, and a lost key's endorsements
    /// their keys; what the keys sign after the revocation counts for nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeps: Option<Base64Url>,
}

/// What identifies a proof (its blob as the directory lists it) in a revocation's `keeps`:
/// SHA-256 of the blob.
#[must_use]
pub fn proof_digest(blob: &[u8]) -> [u8; 32] {
    Sha256::digest(blob).into()
}

impl DecisionStatement {
    /// The challenge the issuer's hardware key signs: SHA-256 over the decision's domain tag, the
    /// three ids as 16 bytes each, the time big-endian, then the revoked key as endorsements sign
    /// it (each part after its length) and the length of `keeps` (8 bytes big-endian) and
    /// `keeps`, each if present.
    #[must_use]
    pub fn challenge(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.decision.domain());
        hash.update(self.circle.as_bytes());
        hash.update(self.member.as_bytes());
        hash.update(self.issuer.as_bytes());
        hash.update(self.issued_at.to_be_bytes());
        if let Some(key) = &self.key {
            let mut message = Vec::new();
            crate::signed::append_passkey(&mut message, key);
            hash.update(message);
        }
        if let Some(keeps) = &self.keeps {
            hash.update((keeps.as_slice().len() as u64).to_be_bytes());
            hash.update(keeps.as_slice());
        }
        hash.finalize().into()
    }

    /// The digests of the proofs the revocation keeps.
    #[must_use]
    pub fn kept(&self) -> std::collections::HashSet<[u8; 32]> {
        self.keeps
            .iter()
            .flat_map(|k| k.as_slice().chunks_exact(32))
            .filter_map(|k| <[u8; 32]>::try_from(k).ok())
            .collect()
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

    /// The signed decision of a blob the server handed over, if it is a `decision` (naming a key
    /// if and only if it is a key's revocation).
    ///
    /// # Errors
    /// [`DecisionError::Malformed`], also for another decision than `decision`.
    pub fn from_blob(
        blob: &Base64Url,
        decision: Decision,
    ) -> Result<SignedDecision, DecisionError> {
        SignedDecision::any_from_blob(blob)
            .ok()
            .filter(|d| d.statement.decision == decision)
            .ok_or(DecisionError::Malformed)
    }

    /// The signed decision of a blob the server handed over, whichever it is.
    ///
    /// # Errors
    /// [`DecisionError::Malformed`].
    pub fn any_from_blob(blob: &Base64Url) -> Result<SignedDecision, DecisionError> {
        crate::codec::from_json::<SignedDecision>(blob.as_slice())
            .ok()
            .filter(|d| {
                let statement = &d.statement;
                let revokes_key = statement.decision == Decision::RevokeKey;
                statement.key.is_some() == revokes_key
                    && statement.keeps.as_ref().is_none_or(|k| {
                        statement.decision != Decision::Promote && k.as_slice().len() % 32 == 0
                    })
            })
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
            key: None,
            keeps: None,
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
