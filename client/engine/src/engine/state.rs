//! What the engine keeps between runs and what its driver writes to the local store: the saved
//! state, each turn's writes (made before its outputs are acted on), and the stored device it is
//! restored from.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tessera_wire::Base64Url;
use uuid::Uuid;

use crate::carry::{CarriedChange, CarriedRow, Stream};
use crate::delivery::{Delivery, OutboxChange, Queued, Seq};
use crate::files::{FileChange, FileRow};
use crate::identity::DeviceCertificate;
use crate::provider::StorageChanges;
use crate::trust::{Trust, UsedInvitations};

use super::{ChatMessage, Output};
use crate::changes::MessageChange;

/// One turn of the engine for its driver: write `write` to the local store (in one transaction),
/// then act on `outputs` in order. Nothing acknowledged is lost, since nothing is acted on before
/// the state that led to it is stored.
#[derive(Debug)]
pub struct Turn {
    /// What to write first, if anything changed.
    pub write: Option<StoreWrite>,
    /// What to do then.
    pub outputs: Vec<Output>,
}

/// What the local store writes in one transaction: the engine's state and the changes to its
/// rows. Stores apply the rows as they come and decide nothing.
#[derive(Debug, Clone)]
pub struct StoreWrite {
    /// The engine's own state (encoded).
    pub state: Vec<u8>,
    /// Changes to the MLS key-value store.
    pub mls: StorageChanges,
    /// Changes to the outbox, one row per message and peer.
    pub outbox: Vec<OutboxChange>,
    /// Changes to the message history.
    pub history: Vec<HistoryChange>,
    /// Changes to the messages kept for other devices, one row per message.
    pub carried: Vec<CarriedChange>,
    /// Changes to the files, one row per file.
    pub files: Vec<FileChange>,
}

/// A change to the message history, which the device keeps for its user (the engine forgets
/// messages once shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HistoryChange {
    /// Keep this message, once: one already kept under its device and id stays as it is.
    Add {
        /// The message.
        #[serde(flatten)]
        message: ChatMessage,
        /// Whether this device sent it.
        outgoing: bool,
    },
    /// The peer device `peer` holds the message `id` this device (`device`) sent: add it to the
    /// message's delivered set.
    Delivered {
        /// This device, the message's sender.
        device: Uuid,
        /// The message.
        id: Uuid,
        /// The device that acknowledged it.
        peer: Uuid,
    },
    /// Keep this change to a message, once (by its device and id); a deletion also empties the
    /// target's stored text and file and drops its author's earlier edits, where the target is
    /// kept already ([`crate::changes`]).
    Change {
        /// The change.
        #[serde(flatten)]
        change: MessageChange,
    },
}

/// A device as its local store keeps it: the last write's state, and the MLS key-value pairs and
/// outbox rows as the writes left them. What [`crate::Engine::restore`] takes.
#[derive(Debug, Clone, Default)]
pub struct StoredDevice {
    /// The engine's own state (encoded, see [`crate::codec`]).
    pub state: Vec<u8>,
    /// MLS's key-value store.
    pub mls: HashMap<Vec<u8>, Vec<u8>>,
    /// The outbox, by peer and sequence number.
    pub outbox: BTreeMap<(Uuid, Seq), Queued>,
    /// The messages kept for other devices, by stream and number.
    pub carried: BTreeMap<(Stream, u64), CarriedRow>,
    /// The files, by id.
    pub files: BTreeMap<Uuid, FileRow>,
}

impl StoredDevice {
    /// Applies a write, as a store on disk does in one transaction (the history aside: restoring
    /// needs none).
    pub fn apply(&mut self, write: StoreWrite) {
        self.state = write.state;
        for (key, value) in write.mls {
            match value {
                Some(value) => self.mls.insert(key, value),
                None => self.mls.remove(&key),
            };
        }
        for change in write.outbox {
            match change {
                OutboxChange::Put(row) => {
                    self.outbox.insert((row.peer, row.seq), row);
                }
                OutboxChange::Delete { peer, seq } => {
                    self.outbox.remove(&(peer, seq));
                }
            }
        }
        for change in write.carried {
            match change {
                CarriedChange::Put(row) => {
                    self.carried.insert((row.stream, row.seq), row);
                }
                CarriedChange::Delete { stream, seq } => {
                    self.carried.remove(&(stream, seq));
                }
            }
        }
        for change in write.files {
            match change {
                FileChange::Put(row) => {
                    self.files.insert(row.id, row);
                }
                FileChange::Delete(id) => {
                    self.files.remove(&id);
                }
            }
        }
    }
}

/// A device's commit waiting for its slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    pub(super) slot: u64,
    #[serde(with = "serde_bytes")]
    pub(super) commit: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub(super) welcome: Option<Vec<u8>>,
    /// Devices the Welcome goes to once the commit is accepted.
    pub(super) joining: Vec<Uuid>,
    /// A claim: the commit that makes this device's new group the circle's.
    pub(super) claim: bool,
}

/// A relayed commit waiting to be processed, and the directory version it last failed against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Held {
    #[serde(with = "serde_bytes")]
    pub(super) commit: Vec<u8>,
    pub(super) tried_with_directory: Option<u64>,
}

/// What the device trusts its circle's membership from, saved after [`SavedState`] in the same
/// record (a record saved before signed membership ends before it: such a device has no root and
/// admits nobody until it joins again).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct SavedTrust {
    pub(super) trust: Option<Trust>,
    /// Invitation keys seen admitting a key: an invitation admits once.
    #[serde(with = "saved_bytes::used")]
    pub(super) used: UsedInvitations,
}

/// What the device remembers of the directories it checked, saved after [`SavedTrust`] (a record
/// saved before it ends before it; that device starts remembering at its next directory).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Remembered {
    /// Each member's keys as this device first saw them and last accepted (credential ids): a
    /// later change is said (`Event::KeysChanged`).
    #[serde(with = "saved_bytes::keys")]
    pub(super) keys: BTreeMap<Uuid, BTreeSet<Base64Url>>,
    /// Members a signed revocation removed: they stay revoked whatever an older directory,
    /// replayed, says.
    pub(super) revoked: BTreeSet<Uuid>,
}

/// Keys and credential ids saved as bytes, not as the base64 text `Base64Url` writes for the
/// wire: the record is written after every change, and encoding a thousand members' worth of
/// base64 each time dominated a member device's work (`add_device` benchmark).
mod saved_bytes {
    use std::collections::{BTreeMap, BTreeSet};

    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};
    use tessera_wire::Base64Url;
    use uuid::Uuid;

    use crate::trust::UsedInvitations;

    fn back(bytes: ByteBuf) -> Base64Url {
        Base64Url(bytes.into_vec())
    }

    pub(crate) mod used {
        use super::{
            BTreeMap, Base64Url, ByteBuf, Bytes, Deserialize, Deserializer, Serializer,
            UsedInvitations, Uuid, back,
        };

        pub(crate) fn serialize<S: Serializer>(
            used: &UsedInvitations,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.collect_map(used.iter().map(|(key, (member, credential))| {
                (
                    Bytes::new(key.as_slice()),
                    (member, Bytes::new(credential.as_slice())),
                )
            }))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<UsedInvitations, D::Error> {
            let raw: BTreeMap<ByteBuf, (Uuid, ByteBuf)> = Deserialize::deserialize(deserializer)?;
            Ok(raw
                .into_iter()
                .map(|(key, (member, credential))| (back(key), (member, back(credential))))
                .collect::<BTreeMap<Base64Url, _>>())
        }
    }

    pub(crate) mod keys {
        use super::{
            BTreeMap, BTreeSet, Base64Url, ByteBuf, Bytes, Deserialize, Deserializer, Serializer,
            Uuid, back,
        };

        pub(crate) fn serialize<S: Serializer>(
            keys: &BTreeMap<Uuid, BTreeSet<Base64Url>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.collect_map(keys.iter().map(|(member, credentials)| {
                let credentials: Vec<&Bytes> = credentials
                    .iter()
                    .map(|c| Bytes::new(c.as_slice()))
                    .collect();
                (member, credentials)
            }))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<BTreeMap<Uuid, BTreeSet<Base64Url>>, D::Error> {
            let raw: BTreeMap<Uuid, Vec<ByteBuf>> = Deserialize::deserialize(deserializer)?;
            Ok(raw
                .into_iter()
                .map(|(member, credentials)| (member, credentials.into_iter().map(back).collect()))
                .collect())
        }
    }
}

/// What the local store keeps of the engine between runs (besides the MLS key-value store),
/// encoded by [`codec`] (postcard: fields by position, not by name). Adding, removing or reordering
/// a field here, in [`Delivery`] or in the types they hold makes saved devices unreadable: such a
/// change needs a new format tag in [`codec`] and a way to read the previous one.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SavedState {
    pub(super) member: Uuid,
    pub(super) device: Uuid,
    #[serde(with = "serde_bytes")]
    pub(super) signature_public: Vec<u8>,
    pub(super) certificate: DeviceCertificate,
    #[serde(with = "serde_bytes")]
    pub(super) group_id: Option<Vec<u8>>,
    pub(super) next_slot: Option<u64>,
    pub(super) recent: BTreeMap<u64, ByteBuf>,
    pub(super) held: BTreeMap<u64, Held>,
    pub(super) pending: Option<Pending>,
    #[serde(with = "serde_bytes")]
    pub(super) key_package: Option<Vec<u8>>,
    pub(super) delivery: Delivery,
    pub(super) display_name: Option<String>,
    pub(super) names: BTreeMap<Uuid, String>,
    pub(super) future: Vec<(Uuid, Vec<u8>)>,
}
