//! The sender's pool of shared-memory regions. A region is lent to a
//! `Sample` being filled, then in flight (receivers may read it) until every
//! receiver released it, then free. The next `take` of its size class reuses
//! the most recently freed one: still mapped by the receivers that had it,
//! its pages already faulted in on both sides. That matters more than
//! anything else here: on the VMs we measured, a fresh page costs about
//! 4 µs, so a new 4 MiB region costs ~4 ms against ~0.15 ms to fill a warm
//! one (and its first reader pays ~0.8 ms more to map it).
//!
//! Hence the rules:
//! - **Depth.** Each size class gets up to [`DEPTH`] regions without
//!   waiting (enough for the producer to fill one while consumers read
//!   others). Beyond that, when none is free, `take` answers
//!   [`Take::Wait`]: the caller waits for a release up to what creating a
//!   region of that class cost last time, and only then creates one. A
//!   consumer that keeps up so never makes the producer pay for fresh
//!   memory; a stuck one costs it at most twice the creation time.
//! - **Busy limits** in count and bytes ([`PoolLimits`]): past them `take`
//!   answers [`Take::Full`] and the caller waits (backpressure).
//! - **Free limits** in count and bytes: the oldest free regions go first.
//! - **Idle trim**: a free region unused for `idle` is destroyed, except a
//!   warm reserve of up to [`DEPTH`] per class and `reserve_bytes` in all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rill_proto::shm::Region;

/// How much shared memory one sender may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Regions lent out or in flight.
    pub busy_regions: usize,
    /// Bytes lent out or in flight (a single larger message still goes
    /// when nothing else is in flight).
    pub busy_bytes: usize,
    /// Free regions kept for reuse.
    pub free_regions: usize,
    /// Bytes of free regions kept for reuse.
    pub free_bytes: usize,
    /// A free region unused this long is destroyed (beyond the reserve).
    pub idle: Duration,
    /// Free regions kept past `idle`, smallest size classes first.
    pub reserve_bytes: usize,
}

/// Regions per size class created without first waiting for a release.
pub const DEPTH: usize = 4;

/// The longest `take` asks its caller to wait for a release before creating.
const MAX_PATIENCE: Duration = Duration::from_millis(20);

/// Environment variables that override the defaults.
pub const LIMIT_ENV: &str = "RILL_SHM_LIMIT_MB";
pub const IDLE_ENV: &str = "RILL_SHM_IDLE_MS";
pub const RESERVE_ENV: &str = "RILL_SHM_RESERVE_MB";

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            busy_regions: crate::MAX_BUSY_REGIONS,
            busy_bytes: 1 << 30,
            free_regions: 64,
            free_bytes: 256 << 20,
            idle: Duration::from_secs(5),
            reserve_bytes: 32 << 20,
        }
    }
}

impl PoolLimits {
    /// Defaults, with `RILL_SHM_LIMIT_MB` (bytes in flight),
    /// `RILL_SHM_IDLE_MS` (how long a free region is kept) and
    /// `RILL_SHM_RESERVE_MB` (kept warm past that) applied.
    pub fn from_env() -> Self {
        let mut limits = Self::default();
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(mb) = number(LIMIT_ENV).filter(|mb| *mb > 0) {
            limits.busy_bytes = usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        }
        if let Some(ms) = number(IDLE_ENV) {
            limits.idle = Duration::from_millis(ms);
        }
        if let Some(mb) = number(RESERVE_ENV) {
            limits.reserve_bytes = usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        }
        limits
    }
}

/// What [`Pool::take`] found.
#[derive(Debug)]
pub(crate) enum Take {
    Got(u64, Arc<Region>),
    /// None free, [`DEPTH`] or more of the class in flight: a release is
    /// worth waiting for, up to this long (what creating one cost).
    Wait(Duration),
    /// At the busy limits: wait for releases.
    Full,
}

/// Sender-side region bookkeeping.
#[derive(Debug)]
pub(crate) struct Pool {
    limits: PoolLimits,
    regions: HashMap<u64, Entry>,
    /// Size class -> regions lent out or in flight.
    busy_by_class: HashMap<usize, usize>,
    /// Size class -> how long creating (and faulting in) one took last.
    create_cost: HashMap<usize, Duration>,
    /// Size class -> free region ids, most recently freed last.
    free: HashMap<usize, Vec<u64>>,
    free_count: usize,
    free_bytes: usize,
    busy_bytes: usize,
    next_id: u64,
    /// Counts changes to the free set, so a sleeping flusher can tell
    /// cheaply whether its trim deadline may have changed.
    pub(crate) free_changes: u64,
}

#[derive(Debug)]
struct Entry {
    region: Arc<Region>,
    /// Deliveries not yet released by their receivers.
    refs: u32,
    /// When it became free (`None`: lent out or in flight).
    freed_at: Option<Instant>,
}

/// Size class: the next power of two, at least one page.
fn class_of(len: usize) -> usize {
    len.max(4096).next_power_of_two()
}

impl Pool {
    pub(crate) fn new(limits: PoolLimits) -> Self {
        Self {
            limits,
            regions: HashMap::new(),
            busy_by_class: HashMap::new(),
            create_cost: HashMap::new(),
            free: HashMap::new(),
            free_count: 0,
            free_bytes: 0,
            busy_bytes: 0,
            next_id: 0,
            free_changes: 0,
        }
    }

    /// A region of at least `len` bytes: the warmest free one of its class,
    /// or a new one (`create`: even beyond [`DEPTH`]).
    pub(crate) fn take(&mut self, len: usize, create: bool) -> std::io::Result<Take> {
        let class = class_of(len);
        if let Some(id) = self.free.get_mut(&class).and_then(Vec::pop) {
            self.free_count -= 1;
            self.free_bytes -= class;
            if let Some(entry) = self.regions.get_mut(&id) {
                entry.freed_at = None;
                let region = entry.region.clone();
                self.mark_busy(class, 1);
                return Ok(Take::Got(id, region));
            }
        }
        let busy = self.regions.len() - self.free_count;
        let over_bytes = busy > 0 && self.busy_bytes + class > self.limits.busy_bytes;
        if busy >= self.limits.busy_regions || over_bytes {
            return Ok(Take::Full);
        }
        let in_class = self.busy_by_class.get(&class).copied().unwrap_or(0);
        if !create && in_class >= DEPTH {
            let cost = self.create_cost.get(&class).copied().unwrap_or_default();
            return Ok(Take::Wait(cost.min(MAX_PATIENCE)));
        }
        let started = Instant::now();
        let region = Arc::new(Region::create(class)?);
        self.create_cost.insert(class, started.elapsed());
        self.next_id += 1;
        let id = self.next_id;
        self.regions.insert(id, Entry { region: region.clone(), refs: 0, freed_at: None });
        self.mark_busy(class, 1);
        Ok(Take::Got(id, region))
    }

    fn mark_busy(&mut self, class: usize, delta: isize) {
        self.busy_bytes = self.busy_bytes.saturating_add_signed(delta * class as isize);
        let n = self.busy_by_class.entry(class).or_default();
        *n = n.saturating_add_signed(delta);
    }

    /// The region `id`, if it exists.
    pub(crate) fn region(&self, id: u64) -> Option<&Arc<Region>> {
        self.regions.get(&id).map(|e| &e.region)
    }

    /// A sent region now has `refs` deliveries out; with none it is free
    /// at once. Returns regions destroyed to stay within the free limits.
    pub(crate) fn sent(&mut self, id: u64, refs: u32, now: Instant) -> Vec<u64> {
        match self.regions.get_mut(&id) {
            Some(entry) if refs > 0 => {
                entry.refs = refs;
                Vec::new()
            }
            Some(_) => self.give_back(id, now),
            None => Vec::new(),
        }
    }

    /// `count` deliveries of `id` are done; the last one frees it.
    pub(crate) fn release(&mut self, id: u64, count: u32, now: Instant) -> Vec<u64> {
        let Some(entry) = self.regions.get_mut(&id) else { return Vec::new() };
        if entry.freed_at.is_some() {
            return Vec::new();
        }
        entry.refs = entry.refs.saturating_sub(count);
        if entry.refs == 0 { self.give_back(id, now) } else { Vec::new() }
    }

    /// Region `id` is free again (its last delivery was released, or its
    /// sample was never sent). Returns regions destroyed to stay within the
    /// free limits: their receivers must drop their mappings.
    pub(crate) fn give_back(&mut self, id: u64, now: Instant) -> Vec<u64> {
        let Some(entry) = self.regions.get_mut(&id) else { return Vec::new() };
        if entry.freed_at.is_some() {
            return Vec::new();
        }
        entry.freed_at = Some(now);
        entry.refs = 0;
        self.free_changes += 1;
        let class = entry.region.len();
        self.mark_busy(class, -1);
        self.free.entry(class).or_default().push(id);
        self.free_count += 1;
        self.free_bytes += class;
        let mut destroyed = Vec::new();
        while self.free_count > self.limits.free_regions || self.free_bytes > self.limits.free_bytes {
            match self.oldest_free() {
                Some(oldest) => destroyed.push(self.destroy(oldest)),
                None => break,
            }
        }
        destroyed
    }

    /// Destroys free regions unused for the idle time, except the warm
    /// reserve; returns their ids.
    pub(crate) fn trim(&mut self, now: Instant) -> Vec<u64> {
        let reserve = self.reserve();
        let idle = self.limits.idle;
        let expired: Vec<u64> = self
            .regions
            .iter()
            .filter(|(id, e)| {
                e.freed_at.is_some_and(|at| now.saturating_duration_since(at) >= idle) && !reserve.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        expired.into_iter().map(|id| self.destroy(id)).collect()
    }

    /// When the next free region beyond the reserve may be destroyed.
    pub(crate) fn next_trim(&self) -> Option<Instant> {
        let reserve = self.reserve();
        self.regions
            .iter()
            .filter(|(id, _)| !reserve.contains(id))
            .filter_map(|(_, e)| e.freed_at)
            .min()
            .map(|at| at + self.limits.idle)
    }

    /// True if the pool holds more than the warm reserve could keep, so
    /// trimming may have work once what is in flight comes back.
    pub(crate) fn beyond_reserve(&self) -> bool {
        // Every class with free regions has a `busy_by_class` entry: its
        // regions were all taken once.
        self.busy_bytes + self.free_bytes > self.limits.reserve_bytes
            || self.busy_by_class.iter().any(|(class, busy)| busy + self.free.get(class).map_or(0, Vec::len) > DEPTH)
    }

    /// Free regions kept warm however long they are unused: the most
    /// recently freed, up to [`DEPTH`] per class, smaller classes first,
    /// `reserve_bytes` in all.
    fn reserve(&self) -> Vec<u64> {
        let mut classes: Vec<usize> = self.free.keys().copied().collect();
        classes.sort_unstable();
        let mut reserve = Vec::new();
        let mut bytes = 0;
        for class in classes {
            // Most recently freed last in the list.
            for id in self.free[&class].iter().rev().take(DEPTH) {
                if bytes + class > self.limits.reserve_bytes {
                    return reserve;
                }
                bytes += class;
                reserve.push(*id);
            }
        }
        reserve
    }

    /// Regions lent out or in flight.
    #[cfg(test)]
    pub(crate) fn busy(&self) -> usize {
        self.regions.len() - self.free_count
    }

    /// Bytes of free regions kept for reuse.
    #[cfg(test)]
    pub(crate) fn free_bytes(&self) -> usize {
        self.free_bytes
    }

    #[cfg(test)]
    pub(crate) fn region_count(&self) -> usize {
        self.regions.len()
    }

    fn oldest_free(&self) -> Option<u64> {
        self.regions.iter().filter_map(|(id, e)| Some((e.freed_at?, *id))).min().map(|(_, id)| id)
    }

    /// Removes free region `id` (its memory goes once receivers unmap it).
    fn destroy(&mut self, id: u64) -> u64 {
        self.free_changes += 1;
        if let Some(entry) = self.regions.remove(&id) {
            let class = entry.region.len();
            if let Some(list) = self.free.get_mut(&class) {
                list.retain(|f| *f != id);
            }
            self.free_count -= 1;
            self.free_bytes -= class;
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::new(PoolLimits::default())
    }

    fn got(take: Take) -> Option<u64> {
        match take {
            Take::Got(id, _) => Some(id),
            _ => None,
        }
    }

    /// A region, created even beyond the depth.
    fn take(pool: &mut Pool, len: usize) -> u64 {
        got(pool.take(len, true).unwrap()).expect("within limits")
    }

    #[test]
    fn regions_are_reused_by_size_class() {
        let now = Instant::now();
        let mut pool = pool();
        let Take::Got(a, region) = pool.take(5000, false).unwrap() else { panic!("a new region") };
        assert_eq!(region.len(), 8192);
        assert!(pool.sent(a, 2, now).is_empty());
        assert_eq!(pool.busy(), 1);
        assert!(pool.release(a, 1, now).is_empty());
        assert_eq!(pool.busy(), 1, "one receiver still reads it");
        assert!(pool.release(a, 1, now).is_empty());
        assert_eq!(pool.busy(), 0);
        assert_eq!(take(&mut pool, 8000), a, "a free region of the same class is reused");
        let c = take(&mut pool, 70_000);
        assert_ne!(a, c);
        assert_eq!(pool.region_count(), 2);
        assert_eq!(pool.busy(), 2);
    }

    #[test]
    fn the_most_recently_freed_region_is_reused_first() {
        let now = Instant::now();
        let mut pool = pool();
        let ids: Vec<u64> = (0..3).map(|_| take(&mut pool, 4096)).collect();
        for (i, id) in ids.iter().enumerate() {
            pool.give_back(*id, now + Duration::from_millis(i as u64));
        }
        assert_eq!(take(&mut pool, 4096), ids[2], "warmest first");
    }

    #[test]
    fn beyond_the_depth_a_release_is_waited_for_before_creating() {
        let mut pool = pool();
        for _ in 0..DEPTH {
            assert!(got(pool.take(1 << 20, false).unwrap()).is_some(), "the first DEPTH are created at once");
        }
        match pool.take(1 << 20, false).unwrap() {
            Take::Wait(patience) => assert!(patience <= MAX_PATIENCE),
            other => panic!("expected Wait, got {other:?}"),
        }
        assert!(got(pool.take(4096, false).unwrap()).is_some(), "other classes are not held up");
        assert!(got(pool.take(1 << 20, true).unwrap()).is_some(), "after waiting, the caller creates one");
    }

    #[test]
    fn a_late_or_repeated_release_changes_nothing() {
        let now = Instant::now();
        let mut pool = pool();
        let a = take(&mut pool, 4096);
        pool.sent(a, 1, now);
        pool.release(a, 1, now);
        assert!(pool.release(a, 1, now).is_empty());
        assert!(pool.give_back(a, now).is_empty());
        assert_eq!(pool.busy(), 0);
        assert_eq!(pool.region_count(), 1);
        assert_eq!(take(&mut pool, 4096), a);
        assert_eq!(pool.busy(), 1);
    }

    #[test]
    fn busy_limits_in_count_and_bytes_make_take_wait() {
        let limits = PoolLimits { busy_regions: 3, busy_bytes: 1 << 20, ..PoolLimits::default() };
        let mut pool = Pool::new(limits);
        let big = take(&mut pool, 600_000); // class 1 MiB: the whole byte budget
        assert!(matches!(pool.take(4096, true).unwrap(), Take::Full), "over the byte limit");
        pool.give_back(big, Instant::now());
        let _ = (take(&mut pool, 4096), take(&mut pool, 4096), take(&mut pool, 4096));
        assert!(matches!(pool.take(4096, true).unwrap(), Take::Full), "over the count limit");
        let mut alone = Pool::new(PoolLimits { busy_bytes: 4096, ..PoolLimits::default() });
        assert!(got(alone.take(1 << 20, true).unwrap()).is_some(), "one message larger than the limit still goes");
    }

    #[test]
    fn surplus_free_regions_are_destroyed_oldest_first() {
        let now = Instant::now();
        let mut by_count = Pool::new(PoolLimits { free_regions: 2, ..PoolLimits::default() });
        let ids: Vec<u64> = (0..4).map(|_| take(&mut by_count, 4096)).collect();
        let destroyed: Vec<u64> = ids
            .iter()
            .enumerate()
            .flat_map(|(i, id)| by_count.give_back(*id, now + Duration::from_millis(i as u64)))
            .collect();
        assert_eq!(destroyed, vec![ids[0], ids[1]]);
        assert_eq!(by_count.region_count(), 2);

        let mut by_bytes = Pool::new(PoolLimits { free_bytes: 1 << 20, ..PoolLimits::default() });
        let small = take(&mut by_bytes, 4096);
        let big = take(&mut by_bytes, 1 << 20);
        assert!(by_bytes.give_back(small, now).is_empty());
        assert_eq!(by_bytes.give_back(big, now + Duration::from_millis(1)), vec![small]);
        assert_eq!(by_bytes.free_bytes(), 1 << 20);
    }

    #[test]
    fn idle_free_regions_are_trimmed() {
        let limits = PoolLimits { idle: Duration::from_secs(5), reserve_bytes: 0, ..PoolLimits::default() };
        let mut pool = Pool::new(limits);
        let start = Instant::now();
        let (a, b) = (take(&mut pool, 4096), take(&mut pool, 1 << 20));
        pool.give_back(a, start);
        pool.give_back(b, start + Duration::from_secs(2));
        assert_eq!(pool.next_trim(), Some(start + Duration::from_secs(5)));
        assert!(pool.trim(start + Duration::from_secs(4)).is_empty());
        assert_eq!(pool.trim(start + Duration::from_secs(5)), vec![a]);
        assert_eq!(pool.trim(start + Duration::from_secs(7)), vec![b]);
        assert_eq!((pool.region_count(), pool.free_bytes(), pool.next_trim()), (0, 0, None));
    }

    #[test]
    fn trimming_keeps_a_warm_reserve_of_the_newest_regions_per_class() {
        // Room for the small class's DEPTH regions and one 1 MiB region.
        let limits = PoolLimits {
            idle: Duration::from_secs(1),
            reserve_bytes: (1 << 20) + DEPTH * 4096,
            ..PoolLimits::default()
        };
        let mut pool = Pool::new(limits);
        let start = Instant::now();
        let small: Vec<u64> = (0..DEPTH + 2).map(|_| take(&mut pool, 4096)).collect();
        let big: Vec<u64> = (0..2).map(|_| take(&mut pool, 1 << 20)).collect();
        for (i, id) in small.iter().chain(&big).enumerate() {
            pool.give_back(*id, start + Duration::from_millis(i as u64));
        }
        let mut trimmed = pool.trim(start + Duration::from_secs(10));
        trimmed.sort_unstable();
        let mut expected = vec![small[0], small[1], big[0]];
        expected.sort_unstable();
        assert_eq!(trimmed, expected, "the oldest small ones and the older big one go");
        assert_eq!(pool.next_trim(), None, "what is left is the reserve: nothing more to trim");
        assert_eq!(pool.free_bytes(), (1 << 20) + DEPTH * 4096);
    }

    #[test]
    fn beyond_the_reserve_is_what_trimming_could_act_on() {
        let now = Instant::now();
        let mut pool = Pool::new(PoolLimits { reserve_bytes: 8 << 20, ..PoolLimits::default() });
        let ids: Vec<u64> = (0..DEPTH).map(|_| take(&mut pool, 1 << 20)).collect();
        assert!(!pool.beyond_reserve(), "DEPTH regions of 1 MiB fit in 8 MiB");
        let fifth = take(&mut pool, 1 << 20);
        assert!(pool.beyond_reserve(), "a fifth region of the class does not");
        for id in ids.iter().chain([&fifth]) {
            pool.give_back(*id, now);
        }
        assert_eq!(pool.trim(now + Duration::from_secs(60)).len(), 1);
        assert!(!pool.beyond_reserve());
        let _big = take(&mut pool, 8 << 20);
        assert!(pool.beyond_reserve(), "over the reserve's bytes");
    }
}
