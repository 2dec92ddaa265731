//! What the engine keeps between runs and what its driver writes to the local store: the saved
//! state, the snapshot of changes written before outputs are acted on, and the stored engine.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use uuid::Uuid;

use crate::delivery::{Delivery, OutboxChange, Queued, Seq};
use crate::identity::DeviceCertificate;
use crate::provider::StorageChanges;

/// What must be written to the local store before the outputs that followed it are acted on.
#[derive(Debug)]
pub struct Snapshot {
    /// The engine's own state (CBOR).
    pub state: Vec<u8>,
    /// Changes to the MLS key-value store.
    pub mls: StorageChanges,
    /// Changes to the outbox, one row per message and peer.
    pub outbox: Vec<OutboxChange>,
}

/// An engine as its local store keeps it: the last snapshot's state, and the MLS key-value pairs
/// and outbox rows as the snapshots' changes left them. What [`Engine::restore`] takes.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// The engine's own state (CBOR).
    pub state: Vec<u8>,
    /// MLS's key-value store.
    pub mls: HashMap<Vec<u8>, Vec<u8>>,
    /// The outbox, by peer and sequence number.
    pub outbox: BTreeMap<(Uuid, Seq), Queued>,
}

impl Stored {
    /// Applies a snapshot, as a store on disk does in one transaction.
    pub fn apply(&mut self, snapshot: Snapshot) {
        self.state = snapshot.state;
        for (key, value) in snapshot.mls {
            match value {
                Some(value) => self.mls.insert(key, value),
                None => self.mls.remove(&key),
            };
        }
        for change in snapshot.outbox {
            match change {
                OutboxChange::Put(row) => {
                    self.outbox.insert((row.peer, row.seq), row);
                }
                OutboxChange::Delete { peer, seq } => {
                    self.outbox.remove(&(peer, seq));
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

/// What the local store keeps of the engine between runs (besides the MLS key-value store),
/// encoded by [`codec`] (postcard: fields by position, not by name). Adding, removing or reordering
/// a field here, in [`Delivery`] or in the types they hold makes saved devices unreadable: such a
/// change needs a new format tag in [`codec`] and a way to read the previous one.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Saved {
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
