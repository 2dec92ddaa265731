//! The MLS provider of a device: the circle's ciphersuite's cryptography ([`SuiteCrypto`]) and
//! the device's MLS key-value store ([`MlsStore`]), whose changes the engine hands to the local
//! store.

use std::collections::HashMap;

use openmls_traits::OpenMlsProvider;

use crate::crypto::SuiteCrypto;
use crate::mls_store::MlsStore;

/// One device's MLS provider.
#[derive(Debug, Default)]
pub struct Provider {
    crypto: SuiteCrypto,
    storage: MlsStore,
}

/// Changes to the MLS key-value store since the last [`Provider::changes_since`]: values to write,
/// and keys to delete (`None`).
pub type StorageChanges = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl Provider {
    /// A provider holding `values`, as saved from an earlier run.
    #[must_use]
    pub fn with_values(values: HashMap<Vec<u8>, Vec<u8>>) -> Provider {
        Provider {
            crypto: SuiteCrypto,
            storage: MlsStore::with_values(values),
        }
    }

    /// A copy of the key-value store, for [`Provider::roll_back`].
    #[must_use]
    pub fn checkpoint(&self) -> HashMap<Vec<u8>, Vec<u8>> {
        self.storage.values().clone()
    }

    /// Puts the key-value store back as it was at `checkpoint`: for an operation openmls performs
    /// in steps that the engine refuses midway (a Welcome whose KeyPackage openmls already
    /// deleted before the engine found its certificates wrong).
    pub fn roll_back(&self, checkpoint: HashMap<Vec<u8>, Vec<u8>>) {
        self.storage.replace(checkpoint);
    }

    /// What changed since `saved` (the values last written to the local store); `saved` is
    /// brought up to date in place. Only the keys written or deleted since the last call are
    /// looked at (the store of a large group holds megabytes, and a turn changes a few values).
    #[must_use]
    pub fn changes_since(&self, saved: &mut HashMap<Vec<u8>, Vec<u8>>) -> StorageChanges {
        let touched = self.storage.take_touched();
        let values = self.storage.values();
        let mut changes = Vec::new();
        for key in touched {
            match values.get(&key) {
                Some(value) if saved.get(&key) != Some(value) => {
                    saved.insert(key.clone(), value.clone());
                    changes.push((key, Some(value.clone())));
                }
                Some(_) => {}
                None => {
                    if saved.remove(&key).is_some() {
                        changes.push((key, None));
                    }
                }
            }
        }
        changes
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = SuiteCrypto;
    type RandProvider = SuiteCrypto;
    type StorageProvider = MlsStore;

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
