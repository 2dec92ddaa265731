//! WebAuthn ceremony state held in memory by a single-node server: single use, expiring, bounded
//! in number, and shared fairly among address ranges so that no one range can lock others out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use super::{StoreError, StoreResult};
use crate::secret::Digest;

/// By default at most this many ceremonies wait at once (each is a few KiB).
pub const MAX_PENDING_CEREMONIES: usize = 100_000;

/// The share of the table one address range (an IPv4 /24, an IPv6 /64) may hold: one in this
/// many places. A range past its share is refused; a range under it gets a place even when the
/// table is full, taken from the range holding the most.
pub const RANGE_SHARE_DIVISOR: usize = 100;

/// One pending ceremony.
#[derive(Debug)]
struct Pending {
    state: String,
    expires_at: i64,
    range: IpAddr,
    order: u64,
}

/// The ceremonies, with the ids of each range's in the order they began and how many each
/// range holds.
#[derive(Debug, Default)]
struct Table {
    pending: HashMap<Digest, Pending>,
    by_range: HashMap<IpAddr, BTreeMap<u64, Digest>>,
    /// (ceremonies held, range): the last is the range to take a place from.
    load: BTreeSet<(usize, IpAddr)>,
    next_order: u64,
}

impl Table {
    fn held_by(&self, range: IpAddr) -> usize {
        self.by_range.get(&range).map_or(0, BTreeMap::len)
    }

    fn insert(&mut self, id_hash: Digest, state: String, expires_at: i64, range: IpAddr) {
        let held = self.held_by(range);
        let order = self.next_order;
        self.next_order += 1;
        self.load.remove(&(held, range));
        self.load.insert((held + 1, range));
        self.by_range
            .entry(range)
            .or_default()
            .insert(order, id_hash);
        if let Some(replaced) = self.pending.insert(
            id_hash,
            Pending {
                state,
                expires_at,
                range,
                order,
            },
        ) {
            // Ids are random: a repeat replaces its earlier self.
            self.forget(&replaced);
        }
    }

    fn remove(&mut self, id_hash: &Digest) -> Option<Pending> {
        let pending = self.pending.remove(id_hash)?;
        self.forget(&pending);
        Some(pending)
    }

    /// Takes `pending` out of its range's order and count.
    fn forget(&mut self, pending: &Pending) {
        let range = pending.range;
        let held = self.held_by(range);
        if let Some(ids) = self.by_range.get_mut(&range) {
            ids.remove(&pending.order);
            if ids.is_empty() {
                self.by_range.remove(&range);
            }
        }
        self.load.remove(&(held, range));
        let left = self.held_by(range);
        if left > 0 {
            self.load.insert((left, range));
        }
    }

    /// Drops the oldest ceremony of the range holding the most, if it holds more than `than`.
    fn evict_from_heaviest(&mut self, than: usize) -> bool {
        let Some(&(held, range)) = self.load.last() else {
            return false;
        };
        if held <= than {
            return false;
        }
        let oldest = self
            .by_range
            .get(&range)
            .and_then(|ids| ids.values().next().copied());
        oldest.is_some_and(|id| self.remove(&id).is_some())
    }
}

/// Ceremony states by the digest of their id.
#[derive(Debug)]
pub struct MemoryCeremonies {
    table: Mutex<Table>,
    capacity: usize,
    per_range: usize,
}

impl Default for MemoryCeremonies {
    fn default() -> Self {
        MemoryCeremonies::new(MAX_PENDING_CEREMONIES)
    }
}

impl MemoryCeremonies {
    /// A table for at most `capacity` ceremonies, a hundredth of them per address range.
    #[must_use]
    pub fn new(capacity: usize) -> MemoryCeremonies {
        MemoryCeremonies {
            table: Mutex::default(),
            capacity: capacity.max(1),
            per_range: (capacity / RANGE_SHARE_DIVISOR).max(1),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent: recover it.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a ceremony's state, begun from `range`, until it is taken or expires. When the
    /// table is full, the range holding the most (if it holds more than `range` would) loses its
    /// oldest ceremony to make room.
    ///
    /// # Errors
    /// [`StoreError::RangeBusy`] when `range` holds its share already; [`StoreError::Busy`]
    /// when the table is full and no range holds more than `range`.
    pub fn put(
        &self,
        id_hash: &Digest,
        state: &str,
        expires_at: i64,
        range: IpAddr,
    ) -> StoreResult<()> {
        let mut table = self.table();
        let held = table.held_by(range);
        if held >= self.per_range {
            return Err(StoreError::RangeBusy);
        }
        if table.pending.len() >= self.capacity && !table.evict_from_heaviest(held + 1) {
            return Err(StoreError::Busy);
        }
        table.insert(*id_hash, state.to_owned(), expires_at, range);
        Ok(())
    }

    /// Takes a ceremony's state once; `None` if unknown, already taken, expired or evicted.
    pub fn take(&self, id_hash: &Digest, now: i64) -> Option<String> {
        let pending = self.table().remove(id_hash)?;
        (pending.expires_at > now).then_some(pending.state)
    }

    /// Forgets expired ceremonies; returns how many.
    pub fn purge(&self, now: i64) -> u64 {
        let mut table = self.table();
        let expired: Vec<Digest> = table
            .pending
            .iter()
            .filter(|(_, pending)| pending.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            table.remove(id);
        }
        u64::try_from(expired.len()).unwrap_or(u64::MAX)
    }

    /// How many ceremonies wait.
    pub fn len(&self) -> usize {
        self.table().pending.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const CAPACITY: usize = 10_000;

    fn range(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n << 8))
    }

    fn id(n: usize) -> Digest {
        let mut id = [0; 32];
        id[..8].copy_from_slice(&(n as u64).to_le_bytes());
        id
    }

    #[test]
    fn a_ceremony_is_taken_once_before_it_expires() {
        let ceremonies = MemoryCeremonies::default();
        ceremonies
            .put(&[1; 32], "state", 100, range(1))
            .expect("put");
        assert_eq!(ceremonies.take(&[1; 32], 50).as_deref(), Some("state"));
        assert_eq!(ceremonies.take(&[1; 32], 50), None, "single use");
        ceremonies
            .put(&[2; 32], "state", 100, range(1))
            .expect("put");
        assert_eq!(ceremonies.take(&[2; 32], 100), None, "expired");
        ceremonies
            .put(&[3; 32], "state", 100, range(1))
            .expect("put");
        assert_eq!(ceremonies.purge(100), 1);
        assert_eq!(ceremonies.take(&[3; 32], 0), None, "purged");
        assert!(ceremonies.is_empty());
        assert!(
            ceremonies.table().load.is_empty(),
            "no count is left behind"
        );
    }

    #[test]
    fn one_range_gets_its_share_and_no_more() {
        let ceremonies = MemoryCeremonies::new(CAPACITY);
        for n in 0..CAPACITY / RANGE_SHARE_DIVISOR {
            ceremonies
                .put(&id(n), "s", 100, range(1))
                .expect("within the share");
        }
        assert!(matches!(
            ceremonies.put(&id(usize::MAX), "s", 100, range(1)),
            Err(StoreError::RangeBusy)
        ));
        ceremonies
            .put(&id(usize::MAX), "s", 100, range(2))
            .expect("another range is not held back");
        assert!(ceremonies.take(&id(0), 0).is_some());
        ceremonies
            .put(&id(usize::MAX - 1), "s", 100, range(1))
            .expect("a place freed is the range's again");
    }

    #[test]
    fn a_full_table_makes_room_from_the_range_holding_the_most() {
        let ceremonies = MemoryCeremonies::new(CAPACITY);
        let ranges = RANGE_SHARE_DIVISOR;
        for n in 0..CAPACITY {
            let owner = range(u32::try_from(n % ranges).expect("small"));
            ceremonies.put(&id(n), "s", 100, owner).expect("fills");
        }
        assert_eq!(ceremonies.len(), CAPACITY);
        let newcomer = range(1_000_000);
        ceremonies
            .put(&id(usize::MAX), "s", 100, newcomer)
            .expect("a new range gets a place");
        assert_eq!(ceremonies.len(), CAPACITY, "still bounded");
        assert!(ceremonies.take(&id(usize::MAX), 0).is_some());
        let gone: Vec<usize> = (0..CAPACITY)
            .filter(|n| ceremonies.take(&id(*n), 0).is_none())
            .collect();
        // Each range began its ceremonies in turn: a range's oldest is among the first.
        assert!(
            gone.len() == 1 && gone[0] < ranges,
            "the oldest ceremony of a heaviest range made room: {gone:?}"
        );
    }

    #[test]
    fn a_full_table_of_equal_shares_refuses_rather_than_churns() {
        let ceremonies = MemoryCeremonies::new(CAPACITY);
        for n in 0..CAPACITY {
            let owner = range(u32::try_from(n).expect("small"));
            ceremonies.put(&id(n), "s", 100, owner).expect("fills");
        }
        assert!(matches!(
            ceremonies.put(&id(usize::MAX), "s", 100, range(0)),
            Err(StoreError::Busy)
        ));
        assert!(ceremonies.take(&id(0), 0).is_some(), "nothing was evicted");
    }
}
