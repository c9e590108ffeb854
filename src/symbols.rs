//! The reverse map of interned strings, for rendering answers.
//!
//! Views only ever see 64-bit ids ([`shopstream_dataflows::types::intern`]); the
//! strings behind category, brand, item, event-name and trait ids live here, beside
//! the views. Workers register the strings of the events they feed (replay
//! included), so the map is rebuilt from the log on restart. User ids are not
//! stored: a query arrives with the user's string and hashes it.
//!
//! Sharded `RwLock`s: nearly every lookup finds the string already present and
//! takes only a read lock.

use std::sync::RwLock;

use shopstream_dataflows::types::{intern, IdMap, IdSet, Sym};

const SHARDS: usize = 16;

#[derive(Default)]
pub struct Symbols {
    shards: [RwLock<IdMap<Box<str>>>; SHARDS],
}

impl Symbols {
    /// Interns `s`, remembering its text; returns its id (never 0).
    pub fn intern(&self, s: &str) -> Sym {
        let id = intern(s);
        let shard = &self.shards[(id as usize) % SHARDS];
        if shard.read().expect("poisoned").contains_key(&id) {
            return id;
        }
        shard
            .write()
            .expect("poisoned")
            .entry(id)
            .or_insert_with(|| s.into());
        id
    }

    /// As [`intern`](Self::intern), but first asks `known`, a set private to the
    /// caller (a worker), so that strings seen before touch no shared lock.
    pub fn intern_local(&self, s: &str, known: &mut IdSet) -> Sym {
        let id = intern(s);
        self.remember(id, s, known);
        id
    }

    /// Records that `id` (which is `intern(s)`) stands for `s`, unless `known`
    /// already says so.
    pub fn remember(&self, id: Sym, s: &str, known: &mut IdSet) {
        if known.insert(id) {
            self.intern(s);
        }
    }

    /// The text behind `id`, if it was ever interned here.
    pub fn resolve(&self, id: Sym) -> Option<String> {
        let shard = &self.shards[(id as usize) % SHARDS];
        shard
            .read()
            .expect("poisoned")
            .get(&id)
            .map(|s| s.to_string())
    }

    /// Calls `f` with the text behind `id` (`None` if never interned), without
    /// copying it.
    pub fn with_resolved<T>(&self, id: Sym, f: impl FnOnce(Option<&str>) -> T) -> T {
        let shard = &self.shards[(id as usize) % SHARDS];
        let guard = shard.read().expect("poisoned");
        f(guard.get(&id).map(|s| &**s))
    }

    /// Every `(id, text)` held, for a snapshot.
    pub fn save(&self) -> Vec<(Sym, String)> {
        let mut out = Vec::with_capacity(self.len());
        for shard in &self.shards {
            let shard = shard.read().expect("poisoned");
            out.extend(shard.iter().map(|(id, s)| (*id, s.to_string())));
        }
        out
    }

    /// Restores what [`save`](Self::save) returned.
    pub fn restore(&self, saved: Vec<(Sym, String)>) {
        for (id, text) in saved {
            self.shards[(id as usize) % SHARDS]
                .write()
                .expect("poisoned")
                .insert(id, text.into_boxed_str());
        }
    }

    /// Number of strings held (for metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("poisoned").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
