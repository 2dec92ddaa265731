//! Who may be in the group: the circle directory as the engine last fetched it and as it holds from
//! the circle's root, and the checks that tie every MLS leaf (KeyPackage, Welcome tree, commit) to
//! a hardware key the chain admits.

use std::collections::{HashMap, HashSet};

use openmls::prelude::{BasicCredential, Credential, LeafNode};
use tessera_wire::{Base64Url, PublicKeyInfo, Role};
use uuid::Uuid;

use crate::identity::{CertificateError, DeviceCertificate};
use crate::trust::TrustedDirectory;

/// The circle directory (`GET /api/v1/members`) as it holds from the circle's root: the members
/// the chain of signed invitations admits, with the roles admins signed and the keys the chain
/// admits. What the server lists without such a chain is not here. A member leaves the group only
/// by a revocation an admin signed; one the server merely stops listing stays.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    members: HashMap<Uuid, (Role, Vec<PublicKeyInfo>)>,
    revoked: HashSet<Uuid>,
    revoked_keys: HashSet<(Uuid, Base64Url)>,
}

impl Directory {
    /// The directory of what the chain admits among what the server lists (`trusted`).
    #[must_use]
    pub fn new(trusted: &TrustedDirectory) -> Directory {
        Directory {
            members: trusted
                .members
                .iter()
                .map(|(id, m)| (*id, (m.role, m.passkeys.clone())))
                .collect(),
            revoked: trusted.revoked.clone(),
            revoked_keys: trusted.revoked_keys.clone(),
        }
    }

    /// Whether the chain admits `member` and the server lists them.
    #[must_use]
    pub fn contains(&self, member: Uuid) -> bool {
        self.members.contains_key(&member)
    }

    /// Whether a revocation an admin signed removes `member` from the circle.
    #[must_use]
    pub fn revoked(&self, member: Uuid) -> bool {
        self.revoked.contains(&member)
    }

    /// Whether a signed revocation took the key `credential_id` from `member`: the devices it
    /// certified leave the group.
    #[must_use]
    pub fn key_revoked(&self, member: Uuid, credential_id: &Base64Url) -> bool {
        self.revoked_keys.contains(&(member, credential_id.clone()))
    }

    /// Whether a device of `remover` may remove `member`'s device certified by `key`: an admin's
    /// device a revoked member's, and an admin's or the member's own device one whose key was
    /// revoked.
    #[must_use]
    pub fn may_remove(&self, remover: Uuid, member: Uuid, key: &Base64Url) -> bool {
        let admin = self.is_admin(remover);
        (admin && self.revoked(member))
            || ((admin || remover == member) && self.key_revoked(member, key))
    }

    /// Whether `member` is an admin the chain admits.
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
    /// The member is not in the circle directory (revoked, or the directory is stale), or no
    /// chain of signed invitations admits them.
    #[error("the member is not in the circle directory, or nothing signed admits them")]
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

impl Refusal {
    /// Whether a directory fetched later may hold what this refusal missed: a member, or a key
    /// of a member, enrolled after this device's directory was fetched.
    #[must_use]
    pub fn awaits_directory(&self) -> bool {
        matches!(
            self,
            Refusal::UnknownMember | Refusal::Certificate(CertificateError::UnknownKey)
        )
    }
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
