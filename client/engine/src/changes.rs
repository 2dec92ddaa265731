//! Replies, reactions, edits and deletions: what a change to an earlier message of the circle
//! says, who may make it, and a message as its changes leave it ([`show`]), for both clients.
//!
//! A change is a message of the circle of its own (numbered in its sender's stream, queued in
//! every outbox and carried like a text), naming its target by the history's key: the target's
//! sending device and id, with the member who wrote it. Stores keep changes apart from the
//! messages they point at, since carrying may bring a change before its target; [`show`] folds
//! them when the history is read.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::engine::{ChatMessage, LATEST_SENT_AT};

/// The most bytes of a reaction: one emoji, possibly with modifiers and joiners.
pub const REACTION_BYTES: usize = 32;

/// The most different reactions one member shows on one message.
pub const REACTIONS_PER_MEMBER: usize = 16;

/// A message another one points at: the history's key (its sending device and id) and the member
/// who wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageRef {
    /// The member who wrote it.
    pub member: Uuid,
    /// The device that sent it.
    pub device: Uuid,
    /// Its id.
    pub id: Uuid,
}

impl MessageRef {
    /// The reference to `message`.
    #[must_use]
    pub fn to(message: &ChatMessage) -> MessageRef {
        MessageRef {
            member: message.member,
            device: message.device,
            id: message.id,
        }
    }
}

/// What a change does to its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The sender's member reacts with `emoji` (any member).
    React {
        /// The reaction.
        emoji: String,
    },
    /// The sender's member takes back their reaction `emoji`.
    Unreact {
        /// The reaction.
        emoji: String,
    },
    /// The target's text becomes `text` (its author only; not a file's message).
    Edit {
        /// The new text.
        text: String,
    },
    /// The target is deleted for everyone (its author only).
    Delete,
}

/// Why a change cannot be made or taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// A reaction that is empty, too long, or holds spaces or control characters.
    #[error("a reaction is one emoji (at most {REACTION_BYTES} bytes, no spaces)")]
    BadReaction,
    /// An edit to nothing.
    #[error("an edit needs a text: delete the message instead")]
    EmptyEdit,
    /// An edit or deletion of a message another member wrote.
    #[error("only the member who wrote a message edits or deletes it")]
    NotAuthor,
}

impl Change {
    /// Whether the change is well formed, on its own.
    ///
    /// # Errors
    /// [`ChangeError::BadReaction`], [`ChangeError::EmptyEdit`].
    pub fn check(&self) -> Result<(), ChangeError> {
        match self {
            Change::React { emoji } | Change::Unreact { emoji } => {
                let fits = !emoji.is_empty() && emoji.len() <= REACTION_BYTES;
                if fits && !emoji.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    Ok(())
                } else {
                    Err(ChangeError::BadReaction)
                }
            }
            Change::Edit { text } if text.trim().is_empty() => Err(ChangeError::EmptyEdit),
            Change::Edit { .. } | Change::Delete => Ok(()),
        }
    }

    /// Whether `member` may make this change to `target`: anyone reacts; only the target's
    /// author edits or deletes.
    ///
    /// # Errors
    /// [`ChangeError::NotAuthor`], and those of [`Change::check`].
    pub fn allowed(&self, member: Uuid, target: &MessageRef) -> Result<(), ChangeError> {
        self.check()?;
        match self {
            Change::Edit { .. } | Change::Delete if member != target.member => {
                Err(ChangeError::NotAuthor)
            }
            _ => Ok(()),
        }
    }
}

/// A change as the history keeps it: who made it, when, and to what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageChange {
    /// The change's own id (a message of the circle).
    pub id: Uuid,
    /// The member who made it.
    pub member: Uuid,
    /// The device that sent it.
    pub device: Uuid,
    /// The message it changes.
    pub target: MessageRef,
    /// What it does.
    pub change: Change,
    /// When it was made (ms since the Unix epoch, by its sender's clock).
    pub sent_at: i64,
}

impl MessageChange {
    /// The order in which changes apply: by their senders' clocks, ties by device and id.
    fn order(&self) -> (i64, Uuid, Uuid) {
        (self.sent_at.clamp(0, LATEST_SENT_AT), self.device, self.id)
    }
}

/// A reaction on a message and the members who show it, in the order they reacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// Who reacted with it.
    pub members: Vec<Uuid>,
}

/// A message as its changes leave it: what a client shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShownMessage {
    /// The message, its text the latest edit's (empty once deleted).
    #[serde(flatten)]
    pub message: ChatMessage,
    /// Whether its author edited it.
    pub edited: bool,
    /// Whether its author deleted it.
    pub deleted: bool,
    /// Its reactions, in the order they were first made.
    pub reactions: Vec<Reaction>,
}

/// `message` as `changes` leave it. Changes to other messages, and edits or deletions by anyone
/// but its author, count for nothing; later changes (by their senders' clocks) win.
#[must_use]
pub fn show(message: ChatMessage, changes: &[MessageChange]) -> ShownMessage {
    fold(message, changes.iter())
}

/// `message` as those of `changes` that point at it leave it.
fn fold<'a>(
    message: ChatMessage,
    changes: impl Iterator<Item = &'a MessageChange>,
) -> ShownMessage {
    let key = MessageRef::to(&message);
    let mut mine: Vec<&MessageChange> = changes
        .filter(|c| c.target.device == key.device && c.target.id == key.id)
        .filter(|c| c.change.allowed(c.member, &key).is_ok())
        .collect();
    mine.sort_by_key(|c| c.order());
    let mut shown = ShownMessage {
        message,
        edited: false,
        deleted: false,
        reactions: Vec::new(),
    };
    for change in mine {
        match &change.change {
            Change::Delete => shown.deleted = true,
            Change::Edit { text } if shown.message.file.is_none() => {
                shown.message.text.clone_from(text);
                shown.edited = true;
            }
            Change::Edit { .. } => {}
            Change::React { emoji } => react(&mut shown.reactions, change.member, emoji),
            Change::Unreact { emoji } => {
                if let Some(reaction) = shown.reactions.iter_mut().find(|r| r.emoji == *emoji) {
                    reaction.members.retain(|m| *m != change.member);
                }
                shown.reactions.retain(|r| !r.members.is_empty());
            }
        }
    }
    if shown.deleted {
        shown.message.text.clear();
        shown.message.file = None;
        shown.message.reply_to = None;
        shown.edited = false;
        shown.reactions.clear();
    }
    shown
}

fn react(reactions: &mut Vec<Reaction>, member: Uuid, emoji: &str) {
    let made = reactions
        .iter()
        .filter(|r| r.members.contains(&member))
        .count();
    if made >= REACTIONS_PER_MEMBER {
        return;
    }
    match reactions.iter_mut().find(|r| r.emoji == emoji) {
        Some(reaction) if !reaction.members.contains(&member) => reaction.members.push(member),
        Some(_) => {}
        None => reactions.push(Reaction {
            emoji: emoji.to_owned(),
            members: vec![member],
        }),
    }
}

/// Each of `messages` as the changes among `changes` leave it, in their order.
#[must_use]
pub fn show_all(messages: Vec<ChatMessage>, changes: &[MessageChange]) -> Vec<ShownMessage> {
    let mut by_target: HashMap<(Uuid, Uuid), Vec<&MessageChange>> = HashMap::new();
    for change in changes {
        by_target
            .entry((change.target.device, change.target.id))
            .or_default()
            .push(change);
    }
    messages
        .into_iter()
        .map(|m| {
            let mine = by_target.get(&(m.device, m.id)).map(Vec::as_slice);
            fold(m, mine.unwrap_or_default().iter().copied())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADA: Uuid = Uuid::from_u128(1);
    const BOB: Uuid = Uuid::from_u128(2);
    const ADA_DEVICE: Uuid = Uuid::from_u128(11);
    const BOB_DEVICE: Uuid = Uuid::from_u128(12);

    fn message(text: &str) -> ChatMessage {
        ChatMessage {
            id: Uuid::from_u128(100),
            member: ADA,
            device: ADA_DEVICE,
            text: text.to_owned(),
            sent_at: 1_000,
            file: None,
            reply_to: None,
        }
    }

    fn by(member: Uuid, sent_at: i64, target: &ChatMessage, change: Change) -> MessageChange {
        MessageChange {
            id: Uuid::from_u128(u128::try_from(sent_at).expect("a positive time")),
            member,
            device: if member == ADA {
                ADA_DEVICE
            } else {
                BOB_DEVICE
            },
            target: MessageRef::to(target),
            change,
            sent_at,
        }
    }

    fn react(emoji: &str) -> Change {
        Change::React {
            emoji: emoji.to_owned(),
        }
    }

    #[test]
    fn the_latest_edit_of_its_author_is_shown_whatever_order_they_came_in() {
        let original = message("first");
        let edit = |text: &str| Change::Edit {
            text: text.to_owned(),
        };
        let changes = [
            by(ADA, 3_000, &original, edit("third")),
            by(ADA, 2_000, &original, edit("second")),
            by(BOB, 4_000, &original, edit("Bob's words in Ada's mouth")),
        ];
        let shown = show(original, &changes);
        assert_eq!(shown.message.text, "third");
        assert!(shown.edited);
    }

    #[test]
    fn a_deletion_by_its_author_empties_the_message_and_one_by_another_member_counts_for_nothing() {
        let original = message("secret");
        let by_bob = [by(BOB, 2_000, &original, Change::Delete)];
        assert!(!show(original.clone(), &by_bob).deleted);
        let by_ada = [
            by(BOB, 1_500, &original, react("👍")),
            by(ADA, 2_000, &original, Change::Delete),
            by(
                ADA,
                3_000,
                &original,
                Change::Edit {
                    text: "back".into(),
                },
            ),
        ];
        let shown = show(original, &by_ada);
        assert!(shown.deleted);
        assert_eq!(shown.message.text, "");
        assert!(shown.reactions.is_empty());
    }

    #[test]
    fn reactions_are_counted_once_per_member_and_taken_back() {
        let original = message("lunch?");
        let changes = [
            by(BOB, 2_000, &original, react("👍")),
            by(BOB, 2_001, &original, react("👍")),
            by(ADA, 2_002, &original, react("👍")),
            by(ADA, 2_003, &original, react("🎉")),
            by(
                ADA,
                2_004,
                &original,
                Change::Unreact {
                    emoji: "🎉".into()
                },
            ),
        ];
        let shown = show(original, &changes);
        assert_eq!(
            shown.reactions,
            vec![Reaction {
                emoji: "👍".into(),
                members: vec![BOB, ADA]
            }]
        );
    }

    #[test]
    fn a_change_to_another_message_or_under_a_false_author_changes_nothing() {
        let original = message("mine");
        let mut elsewhere = by(ADA, 2_000, &original, Change::Delete);
        elsewhere.target.id = Uuid::from_u128(101);
        // Bob names himself as the author of Ada's message: the store's key is Ada's device,
        // whose messages are Ada's, so the change matches nothing Bob wrote.
        let mut false_author = by(BOB, 2_000, &original, Change::Delete);
        false_author.target.member = BOB;
        let shown = show(original.clone(), &[elsewhere, false_author]);
        assert_eq!(shown.message.text, "mine");
        assert!(!shown.deleted);
    }

    #[test]
    fn a_member_shows_a_bounded_number_of_reactions_on_one_message() {
        let original = message("many");
        let changes: Vec<MessageChange> = (0..40)
            .map(|n| by(BOB, 2_000 + n, &original, react(&format!("e{n}"))))
            .collect();
        assert_eq!(
            show(original, &changes).reactions.len(),
            REACTIONS_PER_MEMBER
        );
    }

    #[test]
    fn malformed_reactions_and_empty_edits_are_refused() {
        for emoji in ["", " ", "a b", "\u{7}", &"x".repeat(REACTION_BYTES + 1)] {
            assert_eq!(
                react(emoji).check(),
                Err(ChangeError::BadReaction),
                "{emoji:?}"
            );
        }
        assert_eq!(react("👍🏽").check(), Ok(()));
        assert_eq!(
            Change::Edit { text: "  ".into() }.check(),
            Err(ChangeError::EmptyEdit)
        );
        let target = MessageRef::to(&message("x"));
        assert_eq!(
            Change::Delete.allowed(BOB, &target),
            Err(ChangeError::NotAuthor)
        );
        assert_eq!(react("👍").allowed(BOB, &target), Ok(()));
    }
}
