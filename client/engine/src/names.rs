//! Display names members choose for themselves, checked and told apart: what a name may hold, and
//! the label each member is shown under, so that no member passes for another by taking their
//! name or one that looks the same.
//!
//! Names travel inside the group (`profile` messages) and are the members' to choose. Two
//! members whose names look alike (the same letters up to case, spacing and the characters
//! Unicode lists as confusable, UTS #39 skeletons) are both shown with two words drawn from their
//! member ids, which the circle's signed invitations fix and no member chooses.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// The most characters of a display name.
pub const NAME_CHARS: usize = 64;

/// Separates the words that tell members apart from every other hash.
const WORDS_DOMAIN: &[u8] = b"tessera member words v1";

/// Why a display name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing but spaces.
    #[error("a display name cannot be empty")]
    Empty,
    /// Over [`NAME_CHARS`].
    #[error("a display name has at most {NAME_CHARS} characters")]
    TooLong,
    /// Control characters, or characters that are invisible or turn the text's direction (they
    /// make a name look like another).
    #[error("a display name cannot hold invisible, control or direction-changing characters")]
    Hidden,
}

/// `name` as it is kept and sent: trimmed, checked.
///
/// # Errors
/// [`NameError`].
pub fn check(name: &str) -> Result<String, NameError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > NAME_CHARS {
        return Err(NameError::TooLong);
    }
    if name.chars().any(hidden) {
        return Err(NameError::Hidden);
    }
    Ok(name.to_owned())
}

/// Control characters, and those that show nothing or reorder what follows.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
            | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}'
            | '\u{E0000}'..='\u{E0FFF}')
}

/// What a name looks like, for telling look-alikes apart: the UTS #39 skeleton (confusable
/// characters mapped to one representative) of its skeleton in lower case with spaces collapsed.
/// The skeleton comes first too, so that a capital I still passes for an l.
fn look(name: &str) -> String {
    let shape: String = unicode_security::confusable_detection::skeleton(name).collect();
    let folded = shape
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    unicode_security::confusable_detection::skeleton(&folded).collect()
}

/// Two words of the BIP-39 English list drawn from a member id: what tells apart members whose
/// names look alike.
#[must_use]
pub fn member_words(member: Uuid) -> String {
    let hash = Sha256::new()
        .chain_update(WORDS_DOMAIN)
        .chain_update(member.as_bytes())
        .finalize();
    let words = bip39::Language::English.word_list();
    let bits = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
    let first = usize::try_from(bits >> 21).unwrap_or_default();
    let second = usize::try_from((bits >> 10) & 0x7ff).unwrap_or_default();
    format!("{} {}", words[first], words[second])
}

/// The label each member is shown under: their name, or, when another member's name looks the
/// same, their name and their two words (`Ada Lovelace (maple river)`).
#[must_use]
pub fn labels(names: &BTreeMap<Uuid, String>) -> BTreeMap<Uuid, String> {
    let mut looks: BTreeMap<String, usize> = BTreeMap::new();
    for name in names.values() {
        *looks.entry(look(name)).or_default() += 1;
    }
    names
        .iter()
        .map(|(member, name)| {
            let label = if looks.get(&look(name)).copied().unwrap_or(0) > 1 {
                format!("{name} ({})", member_words(*member))
            } else {
                name.clone()
            };
            (*member, label)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded_and_hidden_characters_refused() {
        assert_eq!(check("  Ada Lovelace "), Ok("Ada Lovelace".to_owned()));
        assert_eq!(check("   "), Err(NameError::Empty));
        assert_eq!(check(&"a".repeat(NAME_CHARS + 1)), Err(NameError::TooLong));
        assert_eq!(check(&"é".repeat(NAME_CHARS)).map(|n| n.len()), Ok(128));
        for hidden in [
            "Ada\u{200B}Lovelace",
            "Ada \u{202E}ecalevoL",
            "Ada\nLovelace",
            "Ada\u{2066}",
            "\u{FEFF}Ada",
        ] {
            assert_eq!(check(hidden), Err(NameError::Hidden), "{hidden:?}");
        }
    }

    #[test]
    fn look_alike_names_are_told_apart_by_words_no_member_chooses() {
        let (ada, mallory, bea) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        for lookalike in [
            "Ada Lovelace",
            "ada  lovelace",
            "Аda Lovelace", // a Cyrillic А
            "Ada Lovelаce", // a Cyrillic а
            "Ada LoveIace", // a capital I for the l
        ] {
            let names = BTreeMap::from([
                (ada, "Ada Lovelace".to_owned()),
                (mallory, lookalike.to_owned()),
                (bea, "Bea".to_owned()),
            ]);
            let shown = labels(&names);
            assert_eq!(
                shown[&ada],
                format!("Ada Lovelace ({})", member_words(ada)),
                "{lookalike:?}"
            );
            assert_eq!(
                shown[&mallory],
                format!("{lookalike} ({})", member_words(mallory))
            );
            assert_ne!(member_words(ada), member_words(mallory));
            assert_eq!(shown[&bea], "Bea", "a name no one shares is shown as it is");
        }
        let apart = BTreeMap::from([(ada, "Ada".to_owned()), (mallory, "Adam".to_owned())]);
        assert_eq!(labels(&apart), apart);
    }

    #[test]
    fn a_members_words_are_two_of_the_bip39_list_and_stable() {
        let words = member_words(Uuid::from_u128(7));
        assert_eq!(words, member_words(Uuid::from_u128(7)));
        let list = bip39::Language::English.word_list();
        assert!(words.split(' ').all(|w| list.contains(&w)), "{words}");
        assert_eq!(words.split(' ').count(), 2);
    }
}
