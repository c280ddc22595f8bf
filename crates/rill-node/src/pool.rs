//! The sender's pool of shared-memory regions. A region is either free (may
//! be written), lent to a `Sample` being filled, or in flight (receivers may
//! read it); the daemon's `Reclaim` returns it to free.

use std::collections::HashMap;
use std::sync::Arc;

use crate::shm::Region;

/// Free regions kept per size class; more are destroyed.
const FREE_PER_CLASS: usize = 8;

/// Sender-side region bookkeeping.
#[derive(Default, Debug)]
pub(crate) struct Pool {
    regions: HashMap<u64, PoolEntry>,
    free: HashMap<usize, Vec<u64>>,
    next_id: u64,
}

#[derive(Debug)]
struct PoolEntry {
    region: Arc<Region>,
    /// The daemon has the fd already.
    announced: bool,
}

/// Size class: the next power of two, at least one page.
fn class_of(len: usize) -> usize {
    len.max(4096).next_power_of_two()
}

impl Pool {
    /// A region of at least `len` bytes, reused when one is free.
    pub(crate) fn take(&mut self, len: usize) -> std::io::Result<(u64, Arc<Region>)> {
        let class = class_of(len);
        if let Some(id) = self.free.get_mut(&class).and_then(Vec::pop)
            && let Some(entry) = self.regions.get(&id) {
                return Ok((id, entry.region.clone()));
            }
        let region = Arc::new(Region::create(class)?);
        self.next_id += 1;
        let id = self.next_id;
        self.regions.insert(id, PoolEntry { region: region.clone(), announced: false });
        Ok((id, region))
    }

    /// Marks `id` as known to the daemon; true if this is the first time
    /// (then its fd must go along).
    pub(crate) fn announce(&mut self, id: u64) -> bool {
        match self.regions.get_mut(&id) {
            Some(entry) if !entry.announced => {
                entry.announced = true;
                true
            }
            _ => false,
        }
    }

    /// Region `id` is free again. Returns the id if it was destroyed instead
    /// (too many free of its class) and the daemon must be told.
    pub(crate) fn give_back(&mut self, id: u64) -> Option<u64> {
        let entry = self.regions.get(&id)?;
        let class = entry.region.len();
        let free = self.free.entry(class).or_default();
        if free.len() < FREE_PER_CLASS {
            free.push(id);
            return None;
        }
        let entry = self.regions.remove(&id)?;
        entry.announced.then_some(id)
    }

    /// Regions lent out or in flight (not free).
    pub(crate) fn busy(&self) -> usize {
        self.regions.len() - self.free.values().map(Vec::len).sum::<usize>()
    }

    #[cfg(test)]
    pub(crate) fn region_count(&self) -> usize {
        self.regions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_reused_by_size_class() {
        let mut pool = Pool::default();
        let (a, region) = pool.take(5000).unwrap();
        assert_eq!(region.len(), 8192);
        assert!(pool.announce(a));
        assert!(!pool.announce(a));
        assert_eq!(pool.give_back(a), None);
        let (b, _) = pool.take(8000).unwrap();
        assert_eq!(a, b, "a free region of the same class is reused");
        let (c, _) = pool.take(70_000).unwrap();
        assert_ne!(b, c);
        assert_eq!(pool.region_count(), 2);
        assert_eq!(pool.busy(), 2);
    }

    #[test]
    fn surplus_free_regions_are_destroyed() {
        let mut pool = Pool::default();
        let ids: Vec<u64> = (0..FREE_PER_CLASS + 2).map(|_| pool.take(4096).unwrap().0).collect();
        for id in &ids {
            pool.announce(*id);
        }
        let destroyed: Vec<u64> = ids.iter().filter_map(|id| pool.give_back(*id)).collect();
        assert_eq!(destroyed.len(), 2);
        assert_eq!(pool.region_count(), FREE_PER_CLASS);
    }
}
