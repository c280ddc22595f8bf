//! The daemon's book of shared-memory regions: who owns each, which
//! receivers mapped it, which deliveries (tokens) still read it. Pure logic;
//! the router carries out the [`ShmAction`]s it returns. This is where the
//! "a buffer returns to its pool when every receiver is done" and "nothing
//! leaks when a node crashes" rules live.

use std::collections::{HashMap, HashSet};
use std::os::fd::{BorrowedFd, OwnedFd, AsFd};

/// A running node process, unique for the daemon's lifetime (a restarted
/// node gets a new one).
pub type Instance = u64;

/// What the router must send as a consequence.
#[derive(Debug, PartialEq, Eq)]
pub enum ShmAction {
    /// Tell the owner its region may be reused.
    Reclaim { owner: Instance, region: u64 },
    /// Tell a receiver to drop its mapping of `key`.
    Unmap { receiver: Instance, key: u64 },
}

#[derive(Debug)]
struct Entry {
    owner: Instance,
    owner_region: u64,
    fd: OwnedFd,
    in_flight: u32,
    mapped_by: HashSet<Instance>,
    /// The owner exited or destroyed the region: remove it once idle.
    orphaned: bool,
}

/// Region bookkeeping.
#[derive(Debug, Default)]
pub struct ShmTable {
    entries: HashMap<u64, Entry>,
    by_owner: HashMap<(Instance, u64), u64>,
    tokens: HashMap<u64, (u64, Instance)>,
    next_key: u64,
    next_token: u64,
}

impl ShmTable {
    /// The daemon-wide key of `owner`'s region, registering `fd` if new.
    /// `None` if the region is unknown and no fd came with it.
    pub fn key_for(&mut self, owner: Instance, owner_region: u64, fd: Option<OwnedFd>) -> Option<u64> {
        if let Some(key) = self.by_owner.get(&(owner, owner_region)) {
            return Some(*key);
        }
        let fd = fd?;
        self.next_key += 1;
        let key = self.next_key;
        self.entries.insert(
            key,
            Entry { owner, owner_region, fd, in_flight: 0, mapped_by: HashSet::new(), orphaned: false },
        );
        self.by_owner.insert((owner, owner_region), key);
        Some(key)
    }

    /// One more receiver will read `key`; returns its token.
    pub fn deliver(&mut self, key: u64, receiver: Instance) -> Option<u64> {
        let entry = self.entries.get_mut(&key)?;
        entry.in_flight += 1;
        self.next_token += 1;
        self.tokens.insert(self.next_token, (key, receiver));
        Some(self.next_token)
    }

    /// Delivery `token` now belongs to process `receiver` (it was queued
    /// for a node that had not attached yet).
    pub fn reassign(&mut self, token: u64, receiver: Instance) {
        if let Some((_, r)) = self.tokens.get_mut(&token) {
            *r = receiver;
        }
    }

    /// The fd to attach when `receiver` has not mapped `key` yet.
    pub fn first_use_fd(&self, key: u64, receiver: Instance) -> Option<BorrowedFd<'_>> {
        let entry = self.entries.get(&key)?;
        (!entry.mapped_by.contains(&receiver)).then(|| entry.fd.as_fd())
    }

    /// `receiver` got the fd of `key` (the packet carrying it went out).
    pub fn mark_mapped(&mut self, key: u64, receiver: Instance) {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.mapped_by.insert(receiver);
        }
    }

    /// A send reached no receiver: the owner may reuse the region at once.
    pub fn unused(&mut self, key: u64) -> Vec<ShmAction> {
        self.settle(key)
    }

    /// A receiver finished reading (or its queue dropped) delivery `token`.
    pub fn release(&mut self, token: u64) -> Vec<ShmAction> {
        let Some((key, _)) = self.tokens.remove(&token) else { return Vec::new() };
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
        self.settle(key)
    }

    /// The owner destroyed one of its (idle) regions.
    pub fn owner_dropped(&mut self, owner: Instance, owner_region: u64) -> Vec<ShmAction> {
        let Some(key) = self.by_owner.get(&(owner, owner_region)).copied() else { return Vec::new() };
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.orphaned = true;
        }
        self.settle(key)
    }

    /// A node process is gone: everything it held is released, everything
    /// it owned is removed once no one reads it.
    pub fn node_gone(&mut self, instance: Instance) -> Vec<ShmAction> {
        let held: Vec<u64> =
            self.tokens.iter().filter(|(_, (_, r))| *r == instance).map(|(token, _)| *token).collect();
        let mut actions = Vec::new();
        for token in held {
            actions.extend(self.release(token));
        }
        let mut touched = Vec::new();
        for (key, entry) in &mut self.entries {
            entry.mapped_by.remove(&instance);
            if entry.owner == instance {
                entry.orphaned = true;
                touched.push(*key);
            }
        }
        for key in touched {
            actions.extend(self.settle(key));
        }
        // Nothing is sent to a node that is gone.
        actions.retain(|a| match a {
            ShmAction::Reclaim { owner, .. } => *owner != instance,
            ShmAction::Unmap { receiver, .. } => *receiver != instance,
        });
        actions
    }

    fn settle(&mut self, key: u64) -> Vec<ShmAction> {
        let Some(entry) = self.entries.get(&key) else { return Vec::new() };
        if entry.in_flight > 0 {
            return Vec::new();
        }
        if !entry.orphaned {
            return vec![ShmAction::Reclaim { owner: entry.owner, region: entry.owner_region }];
        }
        let Some(entry) = self.entries.remove(&key) else { return Vec::new() };
        self.by_owner.remove(&(entry.owner, entry.owner_region));
        entry.mapped_by.into_iter().map(|receiver| ShmAction::Unmap { receiver, key }).collect()
    }

    /// Regions (and so fds) the daemon holds; for tests and leak checks.
    pub fn region_count(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn reclaims_after_every_receiver_released() {
        let mut t = ShmTable::default();
        let key = t.key_for(1, 7, Some(fd())).unwrap();
        assert_eq!(t.key_for(1, 7, None), Some(key));
        let a = t.deliver(key, 2).unwrap();
        let b = t.deliver(key, 3).unwrap();
        assert!(t.first_use_fd(key, 2).is_some());
        t.mark_mapped(key, 2);
        assert!(t.first_use_fd(key, 2).is_none());
        assert_eq!(t.release(a), vec![]);
        assert_eq!(t.release(b), vec![ShmAction::Reclaim { owner: 1, region: 7 }]);
        assert_eq!(t.release(b), vec![], "a token releases once");
    }

    #[test]
    fn crashed_receiver_releases_what_it_held() {
        let mut t = ShmTable::default();
        let key = t.key_for(1, 7, Some(fd())).unwrap();
        t.deliver(key, 2).unwrap();
        t.mark_mapped(key, 2);
        assert_eq!(t.node_gone(2), vec![ShmAction::Reclaim { owner: 1, region: 7 }]);
    }

    #[test]
    fn crashed_owner_region_goes_when_idle_and_receivers_unmap() {
        let mut t = ShmTable::default();
        let key = t.key_for(1, 7, Some(fd())).unwrap();
        let token = t.deliver(key, 2).unwrap();
        t.mark_mapped(key, 2);
        assert_eq!(t.node_gone(1), vec![]);
        assert_eq!(t.region_count(), 1, "still read by receiver 2");
        assert_eq!(t.release(token), vec![ShmAction::Unmap { receiver: 2, key }]);
        assert_eq!(t.region_count(), 0);
    }

    #[test]
    fn dropped_region_is_unmapped_everywhere() {
        let mut t = ShmTable::default();
        let key = t.key_for(1, 7, Some(fd())).unwrap();
        t.mark_mapped(key, 2);
        t.mark_mapped(key, 3);
        let mut actions = t.owner_dropped(1, 7);
        actions.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(actions, vec![ShmAction::Unmap { receiver: 2, key }, ShmAction::Unmap { receiver: 3, key }]);
        assert_eq!(t.key_for(1, 7, None), None);
    }
}
