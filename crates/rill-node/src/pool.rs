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
    /// Deliveries not yet released by their receivers.
    refs: u32,
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
            && let Some(entry) = self.regions.get(&id)
        {
            return Ok((id, entry.region.clone()));
        }
        let region = Arc::new(Region::create(class)?);
        self.next_id += 1;
        let id = self.next_id;
        self.regions.insert(id, PoolEntry { region: region.clone(), refs: 0 });
        Ok((id, region))
    }

    /// The region `id`, if it exists.
    pub(crate) fn region(&self, id: u64) -> Option<&Arc<Region>> {
        self.regions.get(&id).map(|e| &e.region)
    }

    /// A sent region now has `refs` deliveries out; with none it is free
    /// at once. Returns a destroyed region id (see [`Pool::give_back`]).
    pub(crate) fn sent(&mut self, id: u64, refs: u32) -> Option<u64> {
        match self.regions.get_mut(&id) {
            Some(entry) if refs > 0 => {
                entry.refs = refs;
                None
            }
            Some(_) => self.give_back(id),
            None => None,
        }
    }

    /// `count` deliveries of `id` are done; the last one frees it.
    pub(crate) fn release(&mut self, id: u64, count: u32) -> Option<u64> {
        let entry = self.regions.get_mut(&id)?;
        entry.refs = entry.refs.saturating_sub(count);
        if entry.refs == 0 { self.give_back(id) } else { None }
    }

    /// Region `id` is free again. Returns the id if it was destroyed instead
    /// (too many free of its class): receivers must drop their mappings.
    pub(crate) fn give_back(&mut self, id: u64) -> Option<u64> {
        let entry = self.regions.get(&id)?;
        let class = entry.region.len();
        let free = self.free.entry(class).or_default();
        if free.contains(&id) {
            return None;
        }
        if free.len() < FREE_PER_CLASS {
            free.push(id);
            return None;
        }
        self.regions.remove(&id).map(|_| id)
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
        assert_eq!(pool.sent(a, 2), None);
        assert_eq!(pool.busy(), 1);
        assert_eq!(pool.release(a, 1), None);
        assert_eq!(pool.busy(), 1, "one receiver still reads it");
        assert_eq!(pool.release(a, 1), None);
        assert_eq!(pool.busy(), 0);
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
        let destroyed: Vec<u64> = ids.iter().filter_map(|id| pool.give_back(*id)).collect();
        assert_eq!(destroyed.len(), 2);
        assert_eq!(pool.region_count(), FREE_PER_CLASS);
    }
}
