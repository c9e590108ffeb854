//! The identity graph (issue 10, step 2 of `docs/identity.md`): which anonymous
//! ids belong to which user, decided in log order by the sequencer.
//!
//! A link ties an anonymous id to a user: the `anonymousId` of an identify or
//! track that also has a `userId`, or an `alias`'s `previousId` (`Event::link`).
//! The rules, applied to links in sequence order:
//! * the **first** link of an anonymous id wins; a later link of it to another
//!   user is a **conflict**: reported (with the user it named), not merged;
//! * a user has at most `identity.max_ids_per_user` linked ids; a link beyond
//!   that is **refused** (one shared device cannot merge a million visitors);
//! * a user id is never linked to another user (a `userId` named as a link is a
//!   conflict), so every identity has one canonical id: its user.
//!
//! Every decision depends only on earlier links, and entries are never changed
//! after they are made, so the graph at a past point (`as_of = S`) is the entries
//! with `seq <= S`: a read answers at the same `as_of` as the views do. The
//! sequencer applies links as it logs (and replays) them, before the epoch
//! reaches the workers, and hands each epoch its merges (`Epoch::links`): every
//! worker keeps them as `Aliases`, resolves each event's user to its canonical id
//! with them, and the views move what a merged id accumulated to its user at the
//! merge's epoch (`shopstream_dataflows::view`, item 6).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use shopstream_dataflows::types::Millis;

use crate::event::Str;

/// When a link was made: the sequence number of its event and the event's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedAt {
    pub seq: u64,
    pub ts: Millis,
}

/// What became of one link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The anonymous id now belongs to the user.
    Linked,
    /// The id already belongs to `to` (or is a user itself): not merged.
    Conflict { to: Str },
    /// The user has `identity.max_ids_per_user` ids already.
    Refused,
}

impl Outcome {
    /// For metrics and answers: `linked`, `conflict`, `refused`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Linked => "linked",
            Outcome::Conflict { .. } => "conflict",
            Outcome::Refused => "refused",
        }
    }
}

/// One link as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub id: Str,
    pub user: Str,
    pub at: LinkedAt,
    pub outcome: Outcome,
}

/// The graph: every link in log order, and indexes by id and by user.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IdentityGraph {
    max_ids_per_user: usize,
    links: Vec<Link>,
    /// Anonymous id → index of the link that merged it.
    owner: HashMap<Str, usize>,
    /// Id (anonymous or user) → indexes of every link naming it, in order.
    by_id: HashMap<Str, Vec<usize>>,
    /// User → number of ids merged into it.
    merged: HashMap<Str, usize>,
    /// Ids seen as a user of some link (they are never merged into another).
    users: std::collections::HashSet<Str>,
}

/// What a read of one id answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The canonical id: the user the id belongs to, or the id itself.
    pub canonical: Str,
    /// Ids merged into the canonical user, with when (in link order).
    pub ids: Vec<(Str, LinkedAt)>,
    /// Links naming this id or its user that were not merged, with why.
    pub unmerged: Vec<Link>,
}

impl IdentityGraph {
    pub fn new(max_ids_per_user: usize) -> Self {
        IdentityGraph {
            max_ids_per_user,
            ..IdentityGraph::default()
        }
    }

    /// Applies the link of an event of `user` at `at`, and says what became of it.
    pub fn link(&mut self, id: &Str, user: &Str, at: LinkedAt) -> &Outcome {
        self.users.insert(user.clone());
        let outcome = match self.owner.get(id) {
            Some(&i) if self.links[i].user == *user => {
                // The same link again (another identify of the same session).
                return &self.links[i].outcome;
            }
            Some(&i) => Outcome::Conflict {
                to: self.links[i].user.clone(),
            },
            None if self.users.contains(id) || self.owner.contains_key(user) => {
                // A user named as someone's anonymous id, or a user that is
                // itself merged: merging would chain identities.
                Outcome::Conflict {
                    to: self
                        .owner
                        .get(user)
                        .map_or_else(|| id.clone(), |&i| self.links[i].user.clone()),
                }
            }
            None if self.merged.get(user).copied().unwrap_or(0) >= self.max_ids_per_user => {
                Outcome::Refused
            }
            None => Outcome::Linked,
        };
        let index = self.links.len();
        if outcome == Outcome::Linked {
            self.owner.insert(id.clone(), index);
            *self.merged.entry(user.clone()).or_default() += 1;
        }
        self.by_id.entry(id.clone()).or_default().push(index);
        self.by_id.entry(user.clone()).or_default().push(index);
        self.links.push(Link {
            id: id.clone(),
            user: user.clone(),
            at,
            outcome,
        });
        &self.links[index].outcome
    }

    /// The identity of `id` as of sequence number `as_of` (links after it are not
    /// seen). `None`: no link names it.
    pub fn read(&self, id: &str, as_of: u64) -> Option<Identity> {
        let visible = |i: &usize| self.links[*i].at.seq <= as_of;
        let canonical = self
            .owner
            .get(id)
            .filter(|i| visible(i))
            .map_or_else(|| Str::from(id), |&i| self.links[i].user.clone());
        let direct = |key: &str| {
            self.by_id
                .get(key)
                .into_iter()
                .flatten()
                .copied()
                .filter(visible)
                .collect::<Vec<usize>>()
        };
        // Links naming the id, its user, or any id merged into that user.
        let mut naming = direct(canonical.as_str());
        naming.extend(direct(id));
        let merged: Vec<Str> = naming
            .iter()
            .map(|i| &self.links[*i])
            .filter(|l| l.outcome == Outcome::Linked && l.user == canonical)
            .map(|l| l.id.clone())
            .collect();
        for m in &merged {
            naming.extend(direct(m));
        }
        if naming.is_empty() {
            return None;
        }
        naming.sort_unstable();
        naming.dedup();
        let mut ids = Vec::new();
        let mut unmerged = Vec::new();
        for i in naming {
            let l = &self.links[i];
            if l.outcome == Outcome::Linked && l.user == canonical {
                ids.push((l.id.clone(), l.at));
            } else if l.outcome != Outcome::Linked {
                unmerged.push(l.clone());
            }
        }
        Some(Identity {
            canonical,
            ids,
            unmerged,
        })
    }

    /// Every merge, `(id, user)`, in link order.
    pub fn merges(&self) -> impl Iterator<Item = (&Str, &Str)> {
        self.links
            .iter()
            .filter(|l| l.outcome == Outcome::Linked)
            .map(|l| (&l.id, &l.user))
    }

    /// Links recorded (for metrics).
    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The graph for a snapshot: its links (the indexes are rebuilt).
    pub fn save(&self) -> Vec<u8> {
        bincode::serialize(&self.links).expect("links serialize")
    }

    /// Restores saved links into an empty graph, replaying them so that the
    /// indexes (and the current limit) apply as they did.
    pub fn restore(&mut self, saved: &[u8]) -> Result<(), String> {
        let links: Vec<Link> = bincode::deserialize(saved).map_err(|e| e.to_string())?;
        for l in links {
            // Outcomes are kept as they were decided, not decided again.
            let index = self.links.len();
            self.users.insert(l.user.clone());
            if l.outcome == Outcome::Linked {
                self.owner.insert(l.id.clone(), index);
                *self.merged.entry(l.user.clone()).or_default() += 1;
            }
            self.by_id.entry(l.id.clone()).or_default().push(index);
            self.by_id.entry(l.user.clone()).or_default().push(index);
            self.links.push(l);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> LinkedAt {
        LinkedAt {
            seq,
            ts: seq as i64,
        }
    }

    #[test]
    fn the_first_link_wins_conflicts_are_reported_and_the_cap_refuses() {
        let mut g = IdentityGraph::new(2);
        let s = |x: &str| Str::from(x);
        assert_eq!(*g.link(&s("a1"), &s("u1"), at(1)), Outcome::Linked);
        assert_eq!(*g.link(&s("a1"), &s("u1"), at(2)), Outcome::Linked, "again");
        assert_eq!(
            *g.link(&s("a1"), &s("u2"), at(3)),
            Outcome::Conflict { to: s("u1") }
        );
        assert_eq!(*g.link(&s("a2"), &s("u1"), at(4)), Outcome::Linked);
        assert_eq!(*g.link(&s("a3"), &s("u1"), at(5)), Outcome::Refused);
        // A user is never merged into another user.
        assert_eq!(
            *g.link(&s("u2"), &s("u1"), at(6)),
            Outcome::Conflict { to: s("u2") }
        );
        let by_anon = g.read("a1", u64::MAX).expect("known");
        assert_eq!(by_anon.canonical, "u1");
        assert_eq!(
            by_anon
                .ids
                .iter()
                .map(|(i, _)| i.as_str())
                .collect::<Vec<_>>(),
            ["a1", "a2"]
        );
        let by_user = g.read("u1", u64::MAX).expect("known");
        assert_eq!(by_user.ids, by_anon.ids);
        assert_eq!(by_user.unmerged.len(), 3, "{:?}", by_user.unmerged);
        // As of seq 3, a2 was not linked yet; as of 0, nothing is known.
        assert_eq!(g.read("u1", 3).expect("known").ids.len(), 1);
        assert_eq!(g.read("a1", 0), None);
        assert_eq!(g.read("nobody", u64::MAX), None);
        // A snapshot of the graph answers the same.
        let mut back = IdentityGraph::new(2);
        back.restore(&g.save()).expect("restores");
        assert_eq!(back.read("u1", u64::MAX), g.read("u1", u64::MAX));
        assert_eq!(back.read("a1", 3), g.read("a1", 3));
    }

    proptest::proptest! {
        /// A read as of `k` answers what a graph of only the first `k` links
        /// answers (entries never change once made), and a restored snapshot
        /// answers what the graph does, for every id.
        #[test]
        fn a_past_point_is_the_graph_of_the_links_before_it(
            links in proptest::collection::vec((0u8..6, 0u8..4), 0..40),
        ) {
            let name = |anon: bool, k: u8| Str::from(if anon { format!("a{k}") } else { format!("u{k}") });
            let mut full = IdentityGraph::new(2);
            for (n, (a, u)) in links.iter().enumerate() {
                full.link(&name(true, *a), &name(false, *u), at(n as u64 + 1));
            }
            let mut restored = IdentityGraph::new(2);
            restored.restore(&full.save()).expect("restores");
            let ids: Vec<Str> = (0..6).map(|k| name(true, k)).chain((0..4).map(|k| name(false, k))).collect();
            for k in 0..=links.len() {
                let mut prefix = IdentityGraph::new(2);
                for (n, (a, u)) in links[..k].iter().enumerate() {
                    prefix.link(&name(true, *a), &name(false, *u), at(n as u64 + 1));
                }
                for id in &ids {
                    proptest::prop_assert_eq!(full.read(id, k as u64), prefix.read(id, u64::MAX), "{} as of {}", id, k);
                    proptest::prop_assert_eq!(restored.read(id, k as u64), full.read(id, k as u64));
                }
            }
        }
    }
}
