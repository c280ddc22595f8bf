//! A FIFO with a bound per key (per input) that drops the oldest item of that
//! key when full. Items that are not droppable (`Stop`, `InputClosed`) are
//! always kept and do not count against any bound. Both the daemon (when a
//! node does not drain its socket) and the node (between `next_event` calls)
//! use it, so the drop-oldest rule lives in one place.

use std::collections::VecDeque;

/// Result of [`BoundedQueue::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// Stored; nothing dropped.
    Kept,
    /// Stored; this older item of the same key was dropped to make room.
    DroppedOldest(T),
}

/// FIFO with per-key capacity and drop-oldest.
#[derive(Debug)]
pub struct BoundedQueue<K, T> {
    items: VecDeque<(Option<K>, T)>,
    /// Items held per key, so a push need not count the whole queue (a key
    /// is an input: few of them; a key leaves when its count drops to 0).
    counts: Vec<(K, usize)>,
}

impl<K, T> Default for BoundedQueue<K, T> {
    fn default() -> Self {
        Self { items: VecDeque::new(), counts: Vec::new() }
    }
}

impl<K: PartialEq + Clone, T> BoundedQueue<K, T> {
    /// Appends `item`. `key: None` means not droppable. When `key` already
    /// holds `capacity` items, its oldest is removed and returned.
    pub fn push(&mut self, key: Option<K>, capacity: usize, item: T) -> Pushed<T> {
        let mut dropped = None;
        if let Some(k) = &key
            && self.held(k) >= capacity.max(1)
            && let Some(pos) = self.items.iter().position(|(ik, _)| ik.as_ref() == Some(k))
        {
            dropped = self.remove_at(pos);
        }
        self.count(key.as_ref(), 1);
        self.items.push_back((key, item));
        match dropped {
            Some(t) => Pushed::DroppedOldest(t),
            None => Pushed::Kept,
        }
    }

    /// Puts an urgent item (Stop) ahead of everything queued.
    pub fn push_urgent(&mut self, item: T) {
        self.items.push_front((None, item));
    }

    /// Puts an item back at the front (it was taken but could not be sent).
    pub fn push_front(&mut self, key: Option<K>, item: T) {
        self.count(key.as_ref(), 1);
        self.items.push_front((key, item));
    }

    /// The oldest item, without taking it.
    pub fn peek(&self) -> Option<&T> {
        self.items.front().map(|(_, t)| t)
    }

    /// Takes the oldest item.
    pub fn pop(&mut self) -> Option<(Option<K>, T)> {
        let (key, item) = self.items.pop_front()?;
        self.count(key.as_ref(), -1);
        Some((key, item))
    }

    /// Takes the oldest item of `key`, wherever it is.
    pub fn pop_key(&mut self, key: &K) -> Option<T> {
        let pos = self.items.iter().position(|(ik, _)| ik.as_ref() == Some(key))?;
        self.remove_at(pos)
    }

    /// Items held under `key`.
    pub fn held(&self, key: &K) -> usize {
        self.counts.iter().find(|(k, _)| k == key).map_or(0, |(_, n)| *n)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Removes everything (e.g. the node went away).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.counts.clear();
        self.items.drain(..).map(|(_, t)| t)
    }

    fn remove_at(&mut self, pos: usize) -> Option<T> {
        let (key, item) = self.items.remove(pos)?;
        self.count(key.as_ref(), -1);
        Some(item)
    }

    fn count(&mut self, key: Option<&K>, delta: isize) {
        let Some(key) = key else { return };
        match self.counts.iter().position(|(k, _)| k == key) {
            Some(i) => {
                let n = &mut self.counts[i].1;
                *n = n.saturating_add_signed(delta);
                if *n == 0 {
                    self.counts.swap_remove(i);
                }
            }
            None if delta > 0 => self.counts.push((key.clone(), delta as usize)),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_oldest_of_the_same_key_only() {
        let mut q = BoundedQueue::default();
        assert_eq!(q.push(Some("a"), 2, 1), Pushed::Kept);
        assert_eq!(q.push(Some("b"), 2, 10), Pushed::Kept);
        assert_eq!(q.push(Some("a"), 2, 2), Pushed::Kept);
        assert_eq!(q.push(Some("a"), 2, 3), Pushed::DroppedOldest(1));
        let order: Vec<_> = q.drain().collect();
        assert_eq!(order, vec![10, 2, 3]);
    }

    #[test]
    fn undroppable_items_survive_and_do_not_count() {
        let mut q = BoundedQueue::default();
        q.push(Some("a"), 1, 1);
        q.push(None, 1, 100);
        q.push(None, 1, 101);
        assert_eq!(q.push(Some("a"), 1, 2), Pushed::DroppedOldest(1));
        let order: Vec<_> = q.drain().collect();
        assert_eq!(order, vec![100, 101, 2]);
    }

    #[test]
    fn counts_follow_pops_and_returns() {
        let mut q = BoundedQueue::default();
        q.push(Some("a"), 3, 1);
        q.push(Some("b"), 3, 2);
        q.push(Some("a"), 3, 3);
        assert_eq!((q.held(&"a"), q.held(&"b")), (2, 1));
        let (key, item) = q.pop().unwrap();
        assert_eq!((key, item), (Some("a"), 1));
        q.push_front(key, item);
        assert_eq!(q.held(&"a"), 2);
        assert_eq!(q.pop_key(&"b"), Some(2));
        assert_eq!(q.held(&"b"), 0);
        assert_eq!(q.push(Some("a"), 2, 4), Pushed::DroppedOldest(1));
        assert_eq!(q.drain().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(q.held(&"a"), 0);
    }
}
