//! The device's MLS key-value store: openmls's `StorageProvider` over a map of bytes that the
//! engine hands to the local store (SQLite natively, IndexedDB in the browser).
//!
//! Values are encoded by [`crate::codec`] (postcard; natively, the JSON earlier versions saved
//! reads too). Keys are what openmls's own memory store made them (label, the JSON of the id, the
//! storage version), so values saved by earlier versions are found where they were.
//!
//! One value stays JSON: a group's join configuration, whose past-epoch policy openmls decodes
//! from either of two shapes, which only a self-describing format can tell apart.

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openmls_traits::storage::{CURRENT_VERSION, Key, StorageProvider, traits};
use serde::{Serialize, de::DeserializeOwned};

use crate::codec::{CodecError, Earlier, decode, earlier_encoding, encode, from_json};

type Result<T> = std::result::Result<T, CodecError>;

/// One device's MLS values, by storage key.
#[derive(Debug, Default)]
pub struct MlsStore {
    values: RwLock<HashMap<Vec<u8>, Vec<u8>>>,
    /// The keys written or deleted since [`MlsStore::take_touched`]: what a turn's write looks
    /// at, rather than every value.
    touched: RwLock<HashSet<Vec<u8>>>,
}

impl MlsStore {
    /// A store holding `values`, as saved from an earlier run.
    #[must_use]
    pub fn with_values(values: HashMap<Vec<u8>, Vec<u8>>) -> MlsStore {
        MlsStore {
            values: RwLock::new(values),
            touched: RwLock::default(),
        }
    }

    /// The keys written or deleted since the last call.
    pub fn take_touched(&self) -> HashSet<Vec<u8>> {
        std::mem::take(&mut *self.touched.write().unwrap_or_else(PoisonError::into_inner))
    }

    fn touch(&self, key: &[u8]) {
        self.touched
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_vec());
    }

    /// Every value, read-locked.
    pub fn values(&self) -> RwLockReadGuard<'_, HashMap<Vec<u8>, Vec<u8>>> {
        self.values.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts every value back as `values` holds them.
    pub fn replace(&self, values: HashMap<Vec<u8>, Vec<u8>>) {
        let mut current = self.values_mut();
        for key in current.keys().chain(values.keys()) {
            self.touch(key);
        }
        *current = values;
    }

    fn values_mut(&self) -> RwLockWriteGuard<'_, HashMap<Vec<u8>, Vec<u8>>> {
        self.values.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read<V: DeserializeOwned>(&self, label: &[u8], id: &[u8]) -> Result<Option<V>> {
        self.values()
            .get(&slot(label, id))
            .map(|bytes| decode(bytes, Earlier::Json))
            .transpose()
    }

    fn write<V: Serialize + ?Sized>(&self, label: &[u8], id: &[u8], value: &V) -> Result<()> {
        let bytes = encode(value)?;
        let slot = slot(label, id);
        self.touch(&slot);
        self.values_mut().insert(slot, bytes);
        Ok(())
    }

    fn delete(&self, label: &[u8], id: &[u8]) -> Result<()> {
        let slot = slot(label, id);
        self.touch(&slot);
        self.values_mut().remove(&slot);
        Ok(())
    }

    /// The items of the list at `label`/`id`, each encoded on its own.
    fn read_list<V: DeserializeOwned>(&self, label: &[u8], id: &[u8]) -> Result<Vec<V>> {
        let values = self.values();
        let Some(list) = values.get(&slot(label, id)) else {
            return Ok(Vec::new());
        };
        decode::<Vec<Vec<u8>>>(list, Earlier::Json)?
            .iter()
            .map(|item| decode(item, Earlier::Json))
            .collect()
    }

    /// Changes the list at `label`/`id` in place.
    fn update_list(
        &self,
        label: &[u8],
        id: &[u8],
        change: impl FnOnce(&mut Vec<Vec<u8>>),
    ) -> Result<()> {
        let mut values = self.values_mut();
        let slot = slot(label, id);
        let mut list: Vec<Vec<u8>> = match values.get(&slot) {
            Some(bytes) => decode(bytes, Earlier::Json)?,
            None => Vec::new(),
        };
        change(&mut list);
        self.touch(&slot);
        values.insert(slot, encode(&list)?);
        Ok(())
    }

    fn append<V: Serialize>(&self, label: &[u8], id: &[u8], item: &V) -> Result<()> {
        let item = encode(item)?;
        self.update_list(label, id, |list| list.push(item))
    }

    /// Removes `item` from the list, in whichever encoding it was saved.
    fn remove_item<V: Serialize>(&self, label: &[u8], id: &[u8], item: &V) -> Result<()> {
        let encodings = [Some(encode(item)?), earlier_encoding(item, Earlier::Json)];
        self.update_list(label, id, |list| {
            if let Some(at) = list
                .iter()
                .position(|saved| encodings.iter().flatten().any(|e| e == saved))
            {
                list.remove(at);
            }
        })
    }
}

/// The id part of a storage key: JSON, as openmls's memory store made it.
fn id<K: Serialize + ?Sized>(key: &K) -> Result<Vec<u8>> {
    serde_json::to_vec(key).map_err(|e| CodecError::Encode(e.to_string()))
}

/// A storage key: the label, the id, the storage version.
fn slot(label: &[u8], id: &[u8]) -> Vec<u8> {
    let mut slot = Vec::with_capacity(label.len() + id.len() + 2);
    slot.extend_from_slice(label);
    slot.extend_from_slice(id);
    slot.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
    slot
}

/// The id of a member's key pairs for one epoch.
fn epoch_id(
    group_id: &impl Key<CURRENT_VERSION>,
    epoch: &impl Key<CURRENT_VERSION>,
    leaf_index: u32,
) -> Result<Vec<u8>> {
    let mut key = id(group_id)?;
    key.extend(id(epoch)?);
    key.extend(id(&leaf_index)?);
    Ok(key)
}

mod label {
    pub const KEY_PACKAGE: &[u8] = b"KeyPackage";
    pub const PSK: &[u8] = b"Psk";
    pub const ENCRYPTION_KEY_PAIR: &[u8] = b"EncryptionKeyPair";
    pub const SIGNATURE_KEY_PAIR: &[u8] = b"SignatureKeyPair";
    pub const EPOCH_KEY_PAIRS: &[u8] = b"EpochKeyPairs";
    pub const TREE: &[u8] = b"Tree";
    pub const GROUP_CONTEXT: &[u8] = b"GroupContext";
    pub const INTERIM_TRANSCRIPT_HASH: &[u8] = b"InterimTranscriptHash";
    pub const CONFIRMATION_TAG: &[u8] = b"ConfirmationTag";
    pub const JOIN_CONFIG: &[u8] = b"MlsGroupJoinConfig";
    pub const OWN_LEAF_NODES: &[u8] = b"OwnLeafNodes";
    pub const GROUP_STATE: &[u8] = b"GroupState";
    pub const QUEUED_PROPOSAL: &[u8] = b"QueuedProposal";
    pub const PROPOSAL_QUEUE_REFS: &[u8] = b"ProposalQueueRefs";
    pub const OWN_LEAF_NODE_INDEX: &[u8] = b"OwnLeafNodeIndex";
    pub const EPOCH_SECRETS: &[u8] = b"EpochSecrets";
    pub const RESUMPTION_PSK_STORE: &[u8] = b"ResumptionPsk";
    pub const MESSAGE_SECRETS: &[u8] = b"MessageSecrets";
}

impl StorageProvider<CURRENT_VERSION> for MlsStore {
    type Error = CodecError;

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<()> {
        let json = serde_json::to_vec(config).map_err(|e| CodecError::Encode(e.to_string()))?;
        let slot = slot(label::JOIN_CONFIG, &id(group_id)?);
        self.touch(&slot);
        self.values_mut().insert(slot, json);
        Ok(())
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<()> {
        self.append(label::OWN_LEAF_NODES, &id(group_id)?, leaf_node)
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<()> {
        let proposal_id = id(&(group_id, proposal_ref))?;
        self.write(label::QUEUED_PROPOSAL, &proposal_id, proposal)?;
        self.append(label::PROPOSAL_QUEUE_REFS, &id(group_id)?, proposal_ref)
    }

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<()> {
        self.write(label::TREE, &id(group_id)?, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<()> {
        self.write(
            label::INTERIM_TRANSCRIPT_HASH,
            &id(group_id)?,
            interim_transcript_hash,
        )
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<()> {
        self.write(label::GROUP_CONTEXT, &id(group_id)?, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<()> {
        self.write(label::CONFIRMATION_TAG, &id(group_id)?, confirmation_tag)
    }

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<()> {
        self.write(label::GROUP_STATE, &id(group_id)?, group_state)
    }

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<()> {
        self.write(label::MESSAGE_SECRETS, &id(group_id)?, message_secrets)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<()> {
        self.write(
            label::RESUMPTION_PSK_STORE,
            &id(group_id)?,
            resumption_psk_store,
        )
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<()> {
        self.write(label::OWN_LEAF_NODE_INDEX, &id(group_id)?, own_leaf_index)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<()> {
        self.write(label::EPOCH_SECRETS, &id(group_id)?, group_epoch_secrets)
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<()> {
        self.write(
            label::SIGNATURE_KEY_PAIR,
            &id(public_key)?,
            signature_key_pair,
        )
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<()> {
        self.write(label::ENCRYPTION_KEY_PAIR, &id(public_key)?, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<()> {
        self.write(
            label::EPOCH_KEY_PAIRS,
            &epoch_id(group_id, epoch, leaf_index)?,
            key_pairs,
        )
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<()> {
        self.write(label::KEY_PACKAGE, &id(hash_ref)?, key_package)
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<()> {
        self.write(label::PSK, &id(psk_id)?, psk)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>> {
        self.values()
            .get(&slot(label::JOIN_CONFIG, &id(group_id)?))
            .map(|json| from_json(json).map_err(|e| CodecError::Decode(e.to_string())))
            .transpose()
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>> {
        self.read_list(label::OWN_LEAF_NODES, &id(group_id)?)
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>> {
        self.read_list(label::PROPOSAL_QUEUE_REFS, &id(group_id)?)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>> {
        let refs: Vec<ProposalRef> = self.queued_proposal_refs(group_id)?;
        refs.into_iter()
            .map(|proposal_ref| {
                let proposal = self
                    .read(label::QUEUED_PROPOSAL, &id(&(group_id, &proposal_ref))?)?
                    .ok_or_else(|| CodecError::Decode("a queued proposal is missing".into()))?;
                Ok((proposal_ref, proposal))
            })
            .collect()
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>> {
        self.read(label::TREE, &id(group_id)?)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>> {
        self.read(label::GROUP_CONTEXT, &id(group_id)?)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>> {
        self.read(label::INTERIM_TRANSCRIPT_HASH, &id(group_id)?)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>> {
        self.read(label::CONFIRMATION_TAG, &id(group_id)?)
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>> {
        self.read(label::GROUP_STATE, &id(group_id)?)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>> {
        self.read(label::MESSAGE_SECRETS, &id(group_id)?)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>> {
        self.read(label::RESUMPTION_PSK_STORE, &id(group_id)?)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>> {
        self.read(label::OWN_LEAF_NODE_INDEX, &id(group_id)?)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>> {
        self.read(label::EPOCH_SECRETS, &id(group_id)?)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>> {
        self.read(label::SIGNATURE_KEY_PAIR, &id(public_key)?)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>> {
        self.read(label::ENCRYPTION_KEY_PAIR, &id(public_key)?)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>> {
        let pairs = self.read(
            label::EPOCH_KEY_PAIRS,
            &epoch_id(group_id, epoch, leaf_index)?,
        )?;
        Ok(pairs.unwrap_or_default())
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>> {
        self.read(label::KEY_PACKAGE, &id(hash_ref)?)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>> {
        self.read(label::PSK, &id(psk_id)?)
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<()> {
        self.remove_item(label::PROPOSAL_QUEUE_REFS, &id(group_id)?, proposal_ref)?;
        self.delete(label::QUEUED_PROPOSAL, &id(&(group_id, proposal_ref))?)
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::OWN_LEAF_NODES, &id(group_id)?)
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::JOIN_CONFIG, &id(group_id)?)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::TREE, &id(group_id)?)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::CONFIRMATION_TAG, &id(group_id)?)
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::GROUP_STATE, &id(group_id)?)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::GROUP_CONTEXT, &id(group_id)?)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::INTERIM_TRANSCRIPT_HASH, &id(group_id)?)
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::MESSAGE_SECRETS, &id(group_id)?)
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::RESUMPTION_PSK_STORE, &id(group_id)?)
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::OWN_LEAF_NODE_INDEX, &id(group_id)?)
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        self.delete(label::EPOCH_SECRETS, &id(group_id)?)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<()> {
        let refs: Vec<ProposalRef> = self.queued_proposal_refs(group_id)?;
        for proposal_ref in &refs {
            self.delete(label::QUEUED_PROPOSAL, &id(&(group_id, proposal_ref))?)?;
        }
        self.delete(label::PROPOSAL_QUEUE_REFS, &id(group_id)?)
    }

    fn delete_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<()> {
        self.delete(label::SIGNATURE_KEY_PAIR, &id(public_key)?)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<()> {
        self.delete(label::ENCRYPTION_KEY_PAIR, &id(public_key)?)
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<()> {
        self.delete(
            label::EPOCH_KEY_PAIRS,
            &epoch_id(group_id, epoch, leaf_index)?,
        )
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<()> {
        self.delete(label::KEY_PACKAGE, &id(hash_ref)?)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(&self, psk_id: &PskKey) -> Result<()> {
        self.delete(label::PSK, &id(psk_id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls::prelude::{
        BasicCredential, CredentialWithKey, GroupId, MlsGroup, MlsGroupCreateConfig,
        OpenMlsProvider as _,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::{MemoryStorage, OpenMlsRustCrypto};
    use serde::Deserialize;

    use crate::engine::CIPHERSUITE;
    use crate::provider::Provider;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Group(Vec<u8>);
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ref(u32);
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Proposal {
        text: String,
        bytes: Vec<u8>,
    }
    impl Key<CURRENT_VERSION> for Group {}
    impl traits::GroupId<CURRENT_VERSION> for Group {}
    impl Key<CURRENT_VERSION> for Ref {}
    impl openmls_traits::storage::Entity<CURRENT_VERSION> for Ref {}
    impl traits::ProposalRef<CURRENT_VERSION> for Ref {}
    impl openmls_traits::storage::Entity<CURRENT_VERSION> for Proposal {}
    impl traits::QueuedProposal<CURRENT_VERSION> for Proposal {}
    impl traits::GroupState<CURRENT_VERSION> for Proposal {}

    fn proposal(text: &str) -> Proposal {
        Proposal {
            text: text.into(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    fn memory_values(memory: &MemoryStorage) -> HashMap<Vec<u8>, Vec<u8>> {
        memory.values.read().expect("not poisoned").clone()
    }

    #[test]
    fn values_are_postcard_under_the_keys_openmls_memory_store_uses() {
        let ours = MlsStore::default();
        let memory = MemoryStorage::default();
        let group = Group(vec![1, 2, 3]);
        ours.write_group_state(&group, &proposal("state"))
            .expect("writes");
        memory
            .write_group_state(&group, &proposal("state"))
            .expect("writes");
        let ours = ours.values().clone();
        let memory = memory_values(&memory);
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            memory.keys().collect::<Vec<_>>(),
            "the same storage key"
        );
        let (key, value) = ours.iter().next().expect("one value");
        assert_eq!(value[0], 0, "postcard, behind the tag");
        assert!(value.len() < memory[key].len() / 2, "{value:?}");
    }

    #[test]
    fn a_proposal_queue_saved_in_json_by_an_earlier_version_reads_and_changes_here() {
        let group = Group(b"circle".to_vec());
        let memory = MemoryStorage::default();
        memory
            .queue_proposal(&group, &Ref(1), &proposal("one"))
            .expect("queues");
        memory
            .queue_proposal(&group, &Ref(2), &proposal("two"))
            .expect("queues");

        let ours = MlsStore::with_values(memory_values(&memory));
        ours.queue_proposal(&group, &Ref(3), &proposal("three"))
            .expect("queues behind the earlier ones");
        let queued: Vec<(Ref, Proposal)> = ours.queued_proposals(&group).expect("reads");
        assert_eq!(
            queued,
            vec![
                (Ref(1), proposal("one")),
                (Ref(2), proposal("two")),
                (Ref(3), proposal("three"))
            ]
        );

        // A ref saved in JSON is found and removed, and so is one saved here.
        StorageProvider::<CURRENT_VERSION>::remove_proposal(&ours, &group, &Ref(1))
            .expect("removes");
        StorageProvider::<CURRENT_VERSION>::remove_proposal(&ours, &group, &Ref(3))
            .expect("removes");
        let refs: Vec<Ref> = ours.queued_proposal_refs(&group).expect("reads");
        assert_eq!(refs, vec![Ref(2)]);

        StorageProvider::<CURRENT_VERSION>::clear_proposal_queue::<Group, Ref>(&ours, &group)
            .expect("clears");
        assert!(ours.values().is_empty(), "{:?}", ours.values().keys());
    }

    #[test]
    fn a_damaged_value_is_an_error_not_a_panic_or_a_wrong_value() {
        let group = Group(vec![9]);
        let ours = MlsStore::default();
        ours.write_group_state(&group, &proposal("state"))
            .expect("writes");
        let key = ours.values().keys().next().cloned().expect("one value");
        for damaged in [vec![0], vec![0, 200, 1], b"{not json".to_vec(), Vec::new()] {
            ours.replace([(key.clone(), damaged.clone())].into());
            let read: Result<Option<Proposal>> = ours.group_state(&group);
            assert!(
                matches!(read, Err(CodecError::Decode(_))),
                "{damaged:?}: {read:?}"
            );
        }
    }

    #[test]
    fn a_group_saved_by_openmls_memory_store_loads_here_and_goes_on() {
        // A group as an earlier version saved it: openmls' memory store, every value JSON.
        let earlier = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).expect("key");
        signer.store(earlier.storage()).expect("stores");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(b"device".to_vec()).into(),
            signature_key: signer.public().into(),
        };
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .build();
        let id = GroupId::from_slice(b"circle");
        let created =
            MlsGroup::new_with_group_id(&earlier, &signer, &config, id.clone(), credential)
                .expect("creates");
        assert_eq!(created.epoch().as_u64(), 0);

        let provider = Provider::with_values(memory_values(earlier.storage()));
        let mut group = MlsGroup::load(provider.storage(), &id)
            .expect("reads the JSON values")
            .expect("the group is there");
        assert_eq!(group.epoch().as_u64(), 0);
        group
            .self_update(&provider, &signer, Default::default())
            .expect("commits");
        group.merge_pending_commit(&provider).expect("merges");

        let reloaded = MlsGroup::load(provider.storage(), &id)
            .expect("reads")
            .expect("there");
        assert_eq!(reloaded.epoch().as_u64(), 1);
        assert_eq!(
            reloaded.export_secret(provider.crypto(), "t", b"", 16).ok(),
            group.export_secret(provider.crypto(), "t", b"", 16).ok()
        );
        let values = provider.checkpoint();
        assert!(
            values.values().any(|v| v[0] == 0),
            "what changed is postcard now"
        );
    }
}
