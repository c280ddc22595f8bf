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
}

impl<K, T> Default for BoundedQueue<K, T> {
    fn default() -> Self {
        Self { items: VecDeque::new() }
    }
}

impl<K: PartialEq, T> BoundedQueue<K, T> {
    /// Appends `item`. `key: None` means not droppable. When `key` already
    /// holds `capacity` items, its oldest is removed and returned.
    pub fn push(&mut self, key: Option<K>, capacity: usize, item: T) -> Pushed<T> {
        let mut dropped = None;
        if let Some(k) = &key {
            let held = self.items.iter().filter(|(ik, _)| ik.as_ref() == Some(k)).count();
            if held >= capacity.max(1)
                && let Some(pos) = self.items.iter().position(|(ik, _)| ik.as_ref() == Some(k))
            {
                dropped = self.items.remove(pos).map(|(_, t)| t);
            }
        }
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
        self.items.push_front((key, item));
    }

    /// The oldest item, without taking it.
    pub fn peek(&self) -> Option<&T> {
        self.items.front().map(|(_, t)| t)
    }

    /// Takes the oldest item.
    pub fn pop(&mut self) -> Option<(Option<K>, T)> {
        self.items.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Removes everything (e.g. the node went away).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items.drain(..).map(|(_, t)| t)
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
}
