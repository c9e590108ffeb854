//! The deduplication horizon: the last message ids logged.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;

use shopstream_dataflows::types::IdMap;

/// Remembers the last `horizon` message ids, with the sequence number each was
/// logged at (a duplicate is acknowledged as that event).
pub(super) struct Dedup {
    horizon: usize,
    seen: IdMap<u64>,
    order: VecDeque<u64>,
    /// Ids the current group pushed out of the horizon, oldest first, so that a
    /// group that could not be logged puts them back (they were logged).
    evicted: Vec<(u64, u64)>,
}

impl Dedup {
    /// The horizon, oldest first, with each id's sequence number.
    pub(super) fn save(&self) -> Vec<(u64, u64)> {
        self.order
            .iter()
            .filter_map(|id| self.seen.get(id).map(|seq| (*id, *seq)))
            .collect()
    }

    /// Restores a saved horizon (the newest `horizon` of it).
    pub(super) fn restore(&mut self, saved: &[(u64, u64)]) {
        for (id, seq) in saved {
            let _ = self.insert(*id, *seq);
        }
    }

    pub(super) fn new(horizon: usize) -> Self {
        Dedup {
            horizon,
            seen: IdMap::with_capacity_and_hasher(horizon.min(1 << 20), Default::default()),
            order: VecDeque::new(),
            evicted: Vec::new(),
        }
    }
    /// Records `id` as logged at `seq`; if it is already within the horizon, the
    /// sequence number of the first copy instead.
    pub(super) fn insert(&mut self, id: u64, seq: u64) -> Result<(), u64> {
        if self.horizon == 0 {
            return Ok(());
        }
        match self.seen.entry(id) {
            Entry::Occupied(first) => return Err(*first.get()),
            Entry::Vacant(slot) => {
                slot.insert(seq);
            }
        }
        self.order.push_back(id);
        if self.order.len() > self.horizon {
            if let Some(old) = self.order.pop_front() {
                if let Some(seq) = self.seen.remove(&old) {
                    self.evicted.push((old, seq));
                }
            }
        }
        Ok(())
    }

    /// Starts a group commit: what it evicts is remembered until the next one.
    pub(super) fn begin_group(&mut self) {
        self.evicted.clear();
    }

    /// Forgets `ids`, the newest inserted (in insertion order), when their record
    /// could not be logged, and puts back the ids they pushed out of the horizon:
    /// the horizon is then what it was before the group, as a replay rebuilds it.
    pub(super) fn forget_newest(&mut self, ids: &[u64]) {
        for id in ids.iter().rev() {
            if self.order.back() == Some(id) {
                self.order.pop_back();
                self.seen.remove(id);
            }
        }
        for (id, seq) in self.evicted.drain(..).rev() {
            if self.seen.insert(id, seq).is_none() {
                self.order.push_front(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding: a group that could not be logged forgot its own ids but
    /// left out the logged ids it had pushed out of a full horizon, so a retry of
    /// one of those was logged twice.
    #[test]
    fn a_failed_group_leaves_the_horizon_as_it_was() {
        let mut d = Dedup::new(3);
        for (id, seq) in [(1, 1), (2, 2), (3, 3)] {
            d.insert(id, seq).expect("new");
        }
        d.begin_group();
        d.insert(4, 4).expect("new");
        d.insert(5, 5).expect("new");
        assert_eq!(d.insert(1, 9), Ok(()), "1 was pushed out");
        d.forget_newest(&[4, 5, 1]);
        assert_eq!(d.save(), vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(d.insert(2, 9), Err(2), "still deduplicated");
    }
}
