//! The circle's safety number: twelve words (and their QR code, drawn by each client) that two
//! members compare in person. They are a hash of the circle's root and of every member the chain
//! admits, with their role and keys, so that two devices shown different circles by the server
//! show different words.

use sha2::{Digest as _, Sha256};
use tessera_wire::Role;

use crate::signed::append_passkey;
use crate::trust::{RootFingerprint, TrustedDirectory};

/// Separates the safety number's hash from every other.
const SAFETY_DOMAIN: &[u8] = b"tessera safety number v1";

/// The safety number of the circle `trusted` holds from `root`: the first 132 bits of SHA-256
/// over a domain tag, the root and, in member-id order, each member's id, role and keys (in
/// credential-id order), as twelve words of the BIP-39 English list (11 bits each). It changes
/// when anyone joins, leaves or changes keys.
#[must_use]
pub fn safety_words(root: &RootFingerprint, trusted: &TrustedDirectory) -> String {
    let mut message = SAFETY_DOMAIN.to_vec();
    message.extend_from_slice(&root.0);
    let mut members: Vec<_> = trusted.members.iter().collect();
    members.sort_by_key(|(id, _)| **id);
    for (id, member) in members {
        message.extend_from_slice(id.as_bytes());
        message.push(match member.role {
            Role::Admin => 1,
            Role::Member => 2,
        });
        let mut keys: Vec<_> = member.passkeys.iter().collect();
        keys.sort_by(|a, b| a.credential_id.as_slice().cmp(b.credential_id.as_slice()));
        message.extend_from_slice(&u32::try_from(keys.len()).unwrap_or(u32::MAX).to_be_bytes());
        for key in keys {
            append_passkey(&mut message, key);
        }
    }
    let hash = Sha256::digest(&message);
    // Twelve 11-bit indexes into the BIP-39 English list: the first 132 bits of the hash.
    let words = bip39::Language::English.word_list();
    let bits = u128::from_be_bytes(hash[..16].try_into().unwrap_or_default());
    let last = usize::from(hash[16] >> 4);
    (0..12)
        .map(|i| {
            let index = if i < 11 {
                // Bits 11·i to 11·i + 10, from the most significant.
                usize::try_from((bits >> (117 - 11 * i)) & 0x7ff).unwrap_or_default()
            } else {
                // The last seven bits of the 128, then four of the next byte.
                (usize::try_from(bits & 0x7f).unwrap_or_default() << 4) | last
            };
            words[index]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use tessera_softkey::testing::member;
    use uuid::Uuid;

    use super::*;
    use crate::trust::TrustedMember;

    fn trusted(members: &[(Uuid, Role, Vec<tessera_wire::PublicKeyInfo>)]) -> TrustedDirectory {
        let mut directory = TrustedDirectory::default();
        for (id, role, passkeys) in members {
            directory.members.insert(
                *id,
                TrustedMember {
                    role: *role,
                    passkeys: passkeys.clone(),
                    admitted: passkeys.clone(),
                    invited_by: None,
                },
            );
        }
        directory
    }

    #[test]
    fn the_same_circle_gives_the_same_twelve_words_and_any_change_others() {
        let (_, founder) = member(Role::Admin);
        let (_, ada) = member(Role::Member);
        let (_, spare) = member(Role::Member);
        let root = RootFingerprint::of(founder.id, &founder.passkeys[0]);
        let two_keys = vec![ada.passkeys[0].clone(), spare.passkeys[0].clone()];
        let circle = [
            (founder.id, Role::Admin, founder.passkeys.clone()),
            (ada.id, Role::Member, two_keys.clone()),
        ];
        let words = safety_words(&root, &trusted(&circle));
        assert_eq!(words.split(' ').count(), 12, "{words}");
        assert!(
            words
                .split(' ')
                .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()))
        );

        // Whatever the order the directory listed members and keys in.
        let mut reordered = circle.clone();
        reordered.reverse();
        reordered[0].2.reverse();
        assert_eq!(safety_words(&root, &trusted(&reordered)), words);

        // Another root, role, key set or membership: other words.
        let other_root = RootFingerprint::of(ada.id, &ada.passkeys[0]);
        assert_ne!(safety_words(&other_root, &trusted(&circle)), words);
        let mut promoted = circle.clone();
        promoted[1].1 = Role::Admin;
        assert_ne!(safety_words(&root, &trusted(&promoted)), words);
        let mut one_key = circle.clone();
        one_key[1].2.pop();
        assert_ne!(safety_words(&root, &trusted(&one_key)), words);
        assert_ne!(safety_words(&root, &trusted(&circle[..1])), words);
    }
}
