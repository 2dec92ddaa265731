//! WebAuthn ceremony state held in memory by a single-node server: single use, expiring, bounded in number.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{StoreError, StoreResult};
use crate::secret::Digest;

/// At most this many ceremonies wait at once (each is a few KiB); past it, new ones are refused.
pub const MAX_PENDING_CEREMONIES: usize = 100_000;

/// Ceremony states by the digest of their id, with their expiry.
#[derive(Debug, Default)]
pub struct MemoryCeremonies {
    pending: Mutex<HashMap<Digest, (String, i64)>>,
}

impl MemoryCeremonies {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, (String, i64)>> {
        // A panic while holding the lock cannot leave the map inconsistent: recover it.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a ceremony's state until it is taken or expires.
    ///
    /// # Errors
    /// [`StoreError::Busy`] when too many ceremonies are pending.
    pub fn put(&self, id_hash: &Digest, state: &str, expires_at: i64) -> StoreResult<()> {
        let mut pending = self.pending();
        if pending.len() >= MAX_PENDING_CEREMONIES {
            return Err(StoreError::Busy);
        }
        pending.insert(*id_hash, (state.to_owned(), expires_at));
        Ok(())
    }

    /// Takes a ceremony's state once; `None` if unknown, already taken or expired.
    pub fn take(&self, id_hash: &Digest, now: i64) -> Option<String> {
        let (state, expires_at) = self.pending().remove(id_hash)?;
        (expires_at > now).then_some(state)
    }

    /// Forgets expired ceremonies; returns how many.
    pub fn purge(&self, now: i64) -> u64 {
        let mut pending = self.pending();
        let before = pending.len();
        pending.retain(|_, (_, expires_at)| *expires_at > now);
        u64::try_from(before - pending.len()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ceremony_is_taken_once_before_it_expires() {
        let ceremonies = MemoryCeremonies::default();
        ceremonies.put(&[1; 32], "state", 100).expect("put");
        assert_eq!(ceremonies.take(&[1; 32], 50).as_deref(), Some("state"));
        assert_eq!(ceremonies.take(&[1; 32], 50), None, "single use");
        ceremonies.put(&[2; 32], "state", 100).expect("put");
        assert_eq!(ceremonies.take(&[2; 32], 100), None, "expired");
        ceremonies.put(&[3; 32], "state", 100).expect("put");
        assert_eq!(ceremonies.purge(100), 1);
        assert_eq!(ceremonies.take(&[3; 32], 0), None, "purged");
    }
}
