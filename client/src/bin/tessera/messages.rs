//! Replies, reactions, edits and deletions from the command line: a stored message named by the
//! start of its id, what the chat's commands and the one-shot commands send, and how a message
//! reads with its changes.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use tessera_client::device::DeviceHandle;
use tessera_client::store::DeviceStore;
use tessera_engine::ChatMessage;
use tessera_engine::changes::{Change, MessageChange, MessageRef, ShownMessage};
use uuid::Uuid;

use crate::circle::name_of;
use crate::files::short;

/// What a command sends to the circle, its target named as people type it.
pub(crate) enum Outgoing {
    /// A message, answering the message named (when one is).
    Text {
        /// The text.
        text: String,
        /// The start of the id of the message it answers.
        reply_to: Option<String>,
    },
    /// A change to the message named.
    Change {
        /// The start of the target's id.
        target: String,
        /// What it does.
        change: Change,
    },
}

impl Outgoing {
    /// A chat line's command (`/reply ID TEXT`, `/react ID EMOJI`, `/unreact ID EMOJI`,
    /// `/edit ID TEXT`, `/delete ID`); none for other lines.
    pub(crate) fn of_chat(command: &str, args: &str) -> Option<Result<Outgoing>> {
        let (id, rest) = args
            .split_once(' ')
            .map_or((args, ""), |(id, rest)| (id, rest.trim()));
        let needs = |what: &str| -> Result<Outgoing> {
            Err(anyhow!(
                "{command} needs {what}: {command} ID {what} (ids as `tessera history` shows them)"
            ))
        };
        let target = id.to_owned();
        Some(match command {
            "/reply" if id.is_empty() || rest.is_empty() => needs("TEXT"),
            "/reply" => Ok(Outgoing::Text {
                text: rest.to_owned(),
                reply_to: Some(target),
            }),
            "/react" | "/unreact" if id.is_empty() || rest.is_empty() => needs("EMOJI"),
            "/react" => Ok(Outgoing::Change {
                target,
                change: Change::React {
                    emoji: rest.to_owned(),
                },
            }),
            "/unreact" => Ok(Outgoing::Change {
                target,
                change: Change::Unreact {
                    emoji: rest.to_owned(),
                },
            }),
            "/edit" if id.is_empty() || rest.is_empty() => needs("TEXT"),
            "/edit" => Ok(Outgoing::Change {
                target,
                change: Change::Edit {
                    text: rest.to_owned(),
                },
            }),
            "/delete" if id.is_empty() => {
                Err(anyhow!("/delete needs the message's id: /delete ID"))
            }
            "/delete" => Ok(Outgoing::Change {
                target,
                change: Change::Delete,
            }),
            _ => return None,
        })
    }
}

impl Outgoing {
    /// Sends it through `device`, its target looked up in `store`; the id of what was sent.
    ///
    /// # Errors
    /// No message or several have that id's start, or the engine refused.
    pub(crate) async fn send(self, device: &DeviceHandle, store: &DeviceStore) -> Result<Uuid> {
        let sent = match self {
            Outgoing::Text { text, reply_to } => {
                let to = match reply_to {
                    Some(prefix) => Some(MessageRef::to(&find(store, &prefix).await?)),
                    None => None,
                };
                device.send_reply(&text, to).await
            }
            Outgoing::Change { target, change } => {
                let target = MessageRef::to(&find(store, &target).await?);
                device.change_message(target, change).await
            }
        };
        sent.map_err(anyhow::Error::msg)
    }
}

/// The stored message whose id starts with `prefix`.
///
/// # Errors
/// No message, or several, start with it.
pub(crate) async fn find(store: &DeviceStore, prefix: &str) -> Result<ChatMessage> {
    let mut found = store.messages_named(prefix, 2).await?;
    match found.len() {
        0 => bail!(
            "no message on this device has an id starting with {prefix:?} (`tessera history` \
             shows their ids)"
        ),
        1 => Ok(found.remove(0)),
        _ => bail!("several messages have an id starting with {prefix:?}: give more of it"),
    }
}

/// The start of a message's id as lines show it, in brackets with its time.
fn tag(message: &ChatMessage) -> String {
    short(message.id)
}

/// A message as the chat prints it when it arrives: `[12:03 3f2a9c1b] Ada: text`, with
/// `↪ 7b1c2d3e` when it answers another.
pub(crate) fn line(message: &ChatMessage, names: &BTreeMap<Uuid, String>, clock: &str) -> String {
    let body = match &message.file {
        Some(file) => crate::files::file_line(message.id, file),
        None => message.text.clone(),
    };
    let answers = message
        .reply_to
        .map(|to| format!("↪ {} ", short(to.id)))
        .unwrap_or_default();
    format!(
        "[{clock} {}] {}: {answers}{body}",
        tag(message),
        name_of(names, message.member)
    )
}

/// A message of the history as its changes leave it, with the text it answers quoted when that
/// is among `shown`.
pub(crate) fn history_line(
    entry: &ShownMessage,
    shown: &[ShownMessage],
    names: &BTreeMap<Uuid, String>,
    clock: &str,
) -> String {
    let message = &entry.message;
    if entry.deleted {
        return format!(
            "[{clock} {}] {}: (deleted)",
            tag(message),
            name_of(names, message.member)
        );
    }
    let mut text = line(message, names, clock);
    if let Some(to) = message.reply_to
        && let Some(quoted) = shown
            .iter()
            .find(|s| s.message.device == to.device && s.message.id == to.id)
    {
        let quote = if quoted.deleted {
            "(deleted)".to_owned()
        } else {
            excerpt(&quoted.message.text, 40)
        };
        let marker = format!("↪ {} ", short(to.id));
        text = text.replacen(
            &marker,
            &format!("↪ {}: \"{quote}\" — ", name_of(names, to.member)),
            1,
        );
    }
    if entry.edited {
        text.push_str(" (edited)");
    }
    if !entry.reactions.is_empty() {
        let reactions: Vec<String> = entry
            .reactions
            .iter()
            .map(|r| format!("{} {}", r.emoji, r.members.len()))
            .collect();
        text.push_str(&format!("  [{}]", reactions.join(", ")));
    }
    text
}

/// A change as the chat prints it: `* Ada reacted 👍 to 3f2a9c1b`.
pub(crate) fn change_line(change: &MessageChange, names: &BTreeMap<Uuid, String>) -> String {
    let who = name_of(names, change.member);
    let target = short(change.target.id);
    match &change.change {
        Change::React { emoji } => format!("* {who} reacted {emoji} to {target}"),
        Change::Unreact { emoji } => format!("* {who} took back {emoji} on {target}"),
        Change::Edit { text } => format!("* {who} edited {target}: {text}"),
        Change::Delete => format!("* {who} deleted {target}"),
    }
}

/// The first `chars` characters of `text` on one line, with `…` when there is more.
fn excerpt(text: &str, chars: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}
