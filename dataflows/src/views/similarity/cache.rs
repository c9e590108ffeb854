//! The cache of the view's ranked lists.

use std::collections::HashMap;

/// A cache that forgets the least recently used half at a time: entries go into
/// the young generation; when it holds half the budget, the old one is dropped
/// and the young one becomes old; a hit in the old one moves back to the young.
/// (Cheap, and keeps what is hot, where clearing everything when full would make
/// a working set just over the budget miss every time.)
pub struct TwoGenerations<K, V> {
    /// Values with their sizes.
    young: HashMap<K, (V, usize)>,
    old: HashMap<K, (V, usize)>,
    young_size: usize,
    budget: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> TwoGenerations<K, V> {
    pub fn new(budget: usize) -> Self {
        TwoGenerations {
            young: HashMap::new(),
            old: HashMap::new(),
            young_size: 0,
            budget,
        }
    }

    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
        self.young_size = 0;
    }

    /// The value of `key` (moved to the young generation).
    pub fn get(&mut self, key: &K) -> Option<V>
    where
        K: Clone,
    {
        if let Some((v, _)) = self.young.get(key) {
            return Some(v.clone());
        }
        let (v, size) = self.old.remove(key)?;
        self.insert(key.clone(), v.clone(), size);
        Some(v)
    }

    pub fn insert(&mut self, key: K, value: V, size: usize) {
        if self.young_size + size > self.budget / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_size = 0;
        }
        self.young_size += size;
        if let Some((_, replaced)) = self.young.insert(key, (value, size)) {
            self.young_size -= replaced;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_forgets_the_least_recently_used_half() {
        let mut c = TwoGenerations::new(4);
        c.insert(1, "a", 1);
        c.insert(2, "b", 1);
        // Young is full (2 of 4): the next insert makes it old.
        c.insert(3, "c", 1);
        assert_eq!(c.get(&1), Some("a")); // from old, back to young
        c.insert(4, "d", 1); // young full again: {3, 1} old, 2 dropped
        assert_eq!(c.get(&2), None);
        assert_eq!(c.get(&1), Some("a"));
        assert_eq!(c.get(&4), Some("d"));
        c.clear();
        assert_eq!(c.get(&4), None);
    }
}
