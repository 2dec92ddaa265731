//! The MLS provider of a device: the circle's ciphersuite's cryptography ([`SuiteCrypto`]) and a
//! key-value store whose contents the engine hands to the local store (SQLite natively, IndexedDB
//! in the browser).

use std::collections::HashMap;

use openmls_rust_crypto::MemoryStorage;
use openmls_traits::OpenMlsProvider;

use crate::crypto::SuiteCrypto;

/// One device's MLS provider.
#[derive(Debug, Default)]
pub struct Provider {
    crypto: SuiteCrypto,
    storage: MemoryStorage,
}

/// Changes to the MLS key-value store since the last [`Provider::take_changes`]: values to write,
/// and keys to delete (`None`).
pub type StorageChanges = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl Provider {
    /// A provider holding `values`, as saved from an earlier run.
    #[must_use]
    pub fn with_values(values: HashMap<Vec<u8>, Vec<u8>>) -> Provider {
        let storage = MemoryStorage::default();
        *storage
            .values
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = values;
        Provider {
            crypto: SuiteCrypto::default(),
            storage,
        }
    }

    /// A copy of the key-value store, for [`Provider::roll_back`].
    #[must_use]
    pub fn checkpoint(&self) -> HashMap<Vec<u8>, Vec<u8>> {
        self.storage
            .values
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts the key-value store back as it was at `checkpoint`: for an operation openmls performs
    /// in steps that the engine refuses midway (a Welcome whose KeyPackage openmls already
    /// deleted before the engine found its certificates wrong).
    pub fn roll_back(&self, checkpoint: HashMap<Vec<u8>, Vec<u8>>) {
        *self
            .storage
            .values
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = checkpoint;
    }

    /// What changed since `saved` (the values last written to the local store); `saved` is
    /// brought up to date in place (only changed values are copied: the store of a large
    /// group holds megabytes).
    #[must_use]
    pub fn changes_since(&self, saved: &mut HashMap<Vec<u8>, Vec<u8>>) -> StorageChanges {
        let values = self
            .storage
            .values
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changes = Vec::new();
        for (key, value) in values.iter() {
            if saved.get(key) != Some(value) {
                saved.insert(key.clone(), value.clone());
                changes.push((key.clone(), Some(value.clone())));
            }
        }
        if saved.len() > values.len() {
            saved.retain(|key, _| {
                let kept = values.contains_key(key);
                if !kept {
                    changes.push((key.clone(), None));
                }
                kept
            });
        }
        changes
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = SuiteCrypto;
    type RandProvider = SuiteCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}
