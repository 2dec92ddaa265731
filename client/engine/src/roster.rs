//! Who may be in the group: the circle directory as the engine last fetched it, and the checks that
//! tie every MLS leaf (KeyPackage, Welcome tree, commit) to a hardware key of a current member.

use std::collections::HashMap;

use openmls::prelude::{BasicCredential, Credential, LeafNode};
use tessera_wire::{MemberInfo, PublicKeyInfo, Role};
use uuid::Uuid;

use crate::identity::{CertificateError, DeviceCertificate};

/// The circle directory (`GET /api/v1/members`): the current members, their roles and passkeys.
/// A member missing from it has been revoked (or never existed).
#[derive(Debug, Clone, Default)]
pub struct Directory {
    members: HashMap<Uuid, (Role, Vec<PublicKeyInfo>)>,
}

impl Directory {
    /// The directory as the server lists it.
    #[must_use]
    pub fn new(members: Vec<MemberInfo>) -> Directory {
        Directory {
            members: members
                .into_iter()
                .map(|m| (m.id, (m.role, m.passkeys)))
                .collect(),
        }
    }

    /// Whether `member` is a current member.
    #[must_use]
    pub fn contains(&self, member: Uuid) -> bool {
        self.members.contains_key(&member)
    }

    /// Whether `member` is a current admin.
    #[must_use]
    pub fn is_admin(&self, member: Uuid) -> bool {
        self.members
            .get(&member)
            .is_some_and(|(role, _)| *role == Role::Admin)
    }
}

/// Why a leaf, a KeyPackage, a Welcome, a commit or a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Bytes that are not what they claim to be.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The credential does not hold a device certificate.
    #[error("the credential holds no device certificate")]
    NoCertificate,
    /// The certificate is for another key than the leaf's signature key.
    #[error("the device certificate is for another key than the one it travels with")]
    NotBound,
    /// The member is not in the circle directory (revoked, or the directory is stale).
    #[error("the member is not in the circle directory")]
    UnknownMember,
    /// The certificate does not verify against the member's passkeys.
    #[error("the device certificate does not verify: {0}")]
    Certificate(#[from] CertificateError),
    /// The server named another sender than the one MLS authenticates.
    #[error("the message's MLS sender is not the device it came from")]
    WrongSender,
    /// Addressed to another device.
    #[error("the message is addressed to another device")]
    WrongRecipient,
    /// MLS refused it.
    #[error("MLS refused it: {0}")]
    Mls(String),
    /// A change this sender may not make.
    #[error("a change its sender may not make: {0}")]
    NotAllowed(&'static str),
}

/// The device certificate a credential carries, unchecked.
///
/// # Errors
/// [`Refusal::NoCertificate`].
pub fn certificate_of(credential: &Credential) -> Result<DeviceCertificate, Refusal> {
    let basic =
        BasicCredential::try_from(credential.clone()).map_err(|_| Refusal::NoCertificate)?;
    crate::codec::from_json(basic.identity()).map_err(|_| Refusal::NoCertificate)
}

/// Checks a leaf: its credential holds a certificate for its own signature key, made by a
/// passkey of a current member of the directory for this server's origin and RP id.
///
/// # Errors
/// The first check that fails.
pub fn verify_leaf(
    directory: &Directory,
    credential: &Credential,
    signature_key: &[u8],
    origin: &str,
    rp_id: &str,
) -> Result<DeviceCertificate, Refusal> {
    let certificate = certificate_of(credential)?;
    if certificate.device_key_bytes() != signature_key {
        return Err(Refusal::NotBound);
    }
    let (_, passkeys) = directory
        .members
        .get(&certificate.member)
        .ok_or(Refusal::UnknownMember)?;
    certificate.verify(passkeys, origin, rp_id)?;
    Ok(certificate)
}

/// [`verify_leaf`] for a leaf node (of a KeyPackage or a commit).
///
/// # Errors
/// The first check that fails.
pub fn verify_leaf_node(
    directory: &Directory,
    leaf: &LeafNode,
    origin: &str,
    rp_id: &str,
) -> Result<DeviceCertificate, Refusal> {
    verify_leaf(
        directory,
        leaf.credential(),
        leaf.signature_key().as_slice(),
        origin,
        rp_id,
    )
}
