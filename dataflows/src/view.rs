//! The view interface: what the host knows of a view, and all it knows.
//!
//! A view is built once per worker into the worker's one dataflow (by
//! [`crate::views::build`], the registration list), and is then driven through the
//! [`View`] trait alone:
//!
//! 1. **Fed** each epoch, on every worker, in log order, with an [`EpochBatch`]:
//!    the epoch's number, last sequence number and clock, the events of the keys
//!    this worker owns (already interned), and the definitions of every kind that
//!    take effect at it (already compiled by the host's catalog). A view keeps
//!    what it needs of them and ignores the rest.
//! 2. **Told** when epochs complete on this worker ([`View::completed`]): the
//!    probe has passed them, so the view's traces hold them. A view that hands
//!    results to the host (the segment change feed) does it here, through a
//!    service the host provided in the [`Env`].
//! 3. **Compacted** behind the oldest time any reader may still ask for
//!    ([`View::compact`]).
//! 4. **Read** between steps, at a time complete on every worker that the host
//!    pinned: the host routes a read to the worker owning its key (or to every
//!    worker), finds the view of the read's type ([`Views::get`]) and runs the
//!    read function of the view's own type against it. So a read is an ordinary method
//!    of the view, not a variant of a host-wide enum. Workers are fed the events
//!    of the users they own; a view keyed by anything else exchanges its updates
//!    to the owner of its key ([`crate::types::owner`]) before arranging them.
//!
//! Definitions (segment rules today; funnels, experiments, campaign costs next)
//! are compiled by the host once per record, for every worker, and reach the
//! views as a [`DefinitionChange`] with their kind and an opaque compiled value.
//!
//! 5. **Snapshotted and restored** ([`View::snapshot`], [`View::restore`]): so that
//!    a restart does not replay all history, the host asks every view for its
//!    state at a complete epoch `E` (after everything up to `E` was fed and
//!    before anything later is) and, at the next start, hands the saved parts of
//!    every worker back to every worker, at epoch `E`, before the log after `E` is
//!    fed. A view restores what its inputs had accumulated and whatever feeder
//!    state it keeps outside the dataflow; what it derives inside the dataflow is
//!    derived again. Parts are keyed by what they hold, not by worker: a restart
//!    with another number of workers keeps, on each worker, what it owns.
//!
//! 6. **Told of merged identities** ([`EpochBatch::links`]): when the identity
//!    graph merges an anonymous id into a user at epoch `E`, every event from `E`
//!    on arrives keyed by the user already (the host resolves ids before it feeds
//!    them, [`EpochBatch::aliases`]), but what the view accumulated for the
//!    anonymous id before `E` is still under that id. A view keyed by user moves
//!    it to the user *at `E`*, so that a read at `E` answers for the merged
//!    identity: the result depends on the set of events and links, not on whether
//!    a link came before or after the visitor's events. The worker owning the
//!    anonymous id does it (the profile view: once its own state is complete
//!    through `E - 1` there ([`View::poll`]), it reads the id's totals and adds
//!    them to the user's in arrangements of their own, held at `E` until it has).
//!
//! Nothing here does I/O: a view's only channels to the outside are its
//! [`EpochBatch`] in and the services of the [`Env`] out.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use crate::types::{Aliases, Millis, ShopEvent, Sym, Time, UserId};

/// A definition taking effect at an epoch: of kind `kind` (the catalog's name for
/// its compiler), id `id`, compiled (`Some`) or dropped (`None`).
#[derive(Clone)]
pub struct DefinitionChange {
    pub kind: &'static str,
    pub id: u64,
    pub compiled: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for DefinitionChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefinitionChange")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("defined", &self.compiled.is_some())
            .finish()
    }
}

impl DefinitionChange {
    /// The compiled definition as a `T` (`None` for a drop). Panics when the
    /// compiler of this kind produced another type: a registration bug.
    pub fn compiled_as<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.compiled.clone().map(|c| {
            c.downcast::<T>()
                .unwrap_or_else(|_| panic!("definitions of kind {:?}: wrong type", self.kind))
        })
    }
}

/// One epoch as a view on one worker sees it.
#[derive(Clone, Copy, Debug)]
pub struct EpochBatch<'a> {
    pub epoch: Time,
    /// The last sequence number the epoch includes.
    pub seq: u64,
    /// The engine clock after the epoch.
    pub clock: Millis,
    /// The events this worker is to process, in sequence order, each keyed by
    /// the canonical id of its user (as of the end of the epoch): the events of
    /// the users this worker owns, except that an order, refund or cancellation
    /// with an order id goes to the owner of the order id (the order book is kept
    /// by order, so that it need not move when identities merge).
    pub events: &'a [ShopEvent],
    /// The identities merged at this epoch, `(merged id, user)`, in log order
    /// (the same on every worker).
    pub links: &'a [(UserId, UserId)],
    /// Every merge up to and including this epoch's.
    pub aliases: &'a Aliases,
    /// Definitions of every kind taking effect at this epoch, in log order (the
    /// same on every worker).
    pub definitions: &'a [DefinitionChange],
}

/// Where a read runs: the pinned time and the worker answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadCtx {
    /// A time complete on every worker; the view's traces are not compacted past it.
    pub at: Time,
    pub worker: usize,
}

/// A view's worker-side half: its input handles and trace handles on one worker.
pub trait View: Any {
    /// A short name, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Feeds one epoch (see [`EpochBatch`]) and closes it at the view's inputs.
    fn feed(&mut self, epoch: &EpochBatch<'_>);

    /// Epochs before `through` are complete on this worker.
    fn completed(&mut self, _through: Time) {}

    /// Lets the traces forget distinctions before `frontier`: no read goes back
    /// before it.
    fn compact(&mut self, frontier: Time);

    /// Called after every step of the dataflow: a view waiting for its own
    /// progress (the profile view's identity moves wait for the epoch before
    /// theirs) acts here.
    fn poll(&mut self) {}

    /// Gauges worth exporting, as `(metric name, value)`; read after each feed.
    fn gauges(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// This worker's state at `at`, the last epoch fed (and complete), as bytes
    /// [`View::restore`] reads back, on any worker of any number of workers.
    /// Required, not defaulted: a view that forgot it would come back empty after
    /// a restart from a snapshot.
    fn snapshot(&mut self, at: Time) -> Vec<u8>;

    /// Restores, at epoch `at` (before that epoch is fed), what the snapshot
    /// parts of every worker hold for the keys this worker owns (`owner(key,
    /// peers) == worker`).
    fn restore(&mut self, parts: &[Vec<u8>], at: Time, place: Place) -> Result<(), RestoreError>;
}

/// Where a view runs: its worker and how many there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub worker: usize,
    pub peers: usize,
}

impl Place {
    /// Whether this worker owns `key`.
    pub fn owns(&self, key: u64) -> bool {
        crate::types::owner(key, self.peers) == self.worker
    }
}

/// A snapshot part that does not decode (another version, or damage the file's
/// checksum missed).
#[derive(Debug, thiserror::Error)]
#[error("view {view}: snapshot part does not decode: {reason}")]
pub struct RestoreError {
    pub view: &'static str,
    pub reason: String,
}

/// Encodes a view's snapshot part (bincode; a view's state types are serde).
pub fn encode_part<T: serde::Serialize>(state: &T) -> Vec<u8> {
    bincode::serialize(state).expect("view state serializes")
}

/// Decodes a part written by [`encode_part`].
pub fn decode_part<T: serde::de::DeserializeOwned>(
    view: &'static str,
    part: &[u8],
) -> Result<T, RestoreError> {
    bincode::deserialize(part).map_err(|e| RestoreError {
        view,
        reason: e.to_string(),
    })
}

/// The views of one worker, in registration order.
#[derive(Default)]
pub struct Views {
    views: Vec<Box<dyn View>>,
}

impl Views {
    /// Registers a built view; hands back what it exports to views built after
    /// it (its arrangements).
    pub fn add<V: View, Up>(&mut self, (view, exports): (V, Up)) -> Up {
        self.views.push(Box::new(view));
        exports
    }

    /// The view of type `V`, if registered.
    pub fn get<V: View>(&mut self) -> Option<&mut V> {
        self.views
            .iter_mut()
            .find_map(|v| (&mut **v as &mut dyn Any).downcast_mut::<V>())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn View>> {
        self.views.iter_mut()
    }
}

/// Resolves an interned id to its text (e.g. to break ties by name).
pub type Names = Arc<dyn Fn(Sym) -> Option<String> + Send + Sync>;

/// Services and settings the host provides to the views, by type: the one way
/// in for what a view needs from outside the dataflow (settings, the symbol
/// table, a sink for results). The same on every worker.
#[derive(Clone, Default)]
pub struct Env {
    services: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Env {
    /// Provides `value` to whoever asks for a `T` (replacing an earlier one).
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.services.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The `T` provided, if any.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.services
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }

    /// The `T` provided; panics naming the type when the host did not provide it
    /// (a registration bug, found by the first test that starts a worker).
    pub fn expect<T: Clone + Send + Sync + 'static>(&self) -> T {
        self.get().unwrap_or_else(|| {
            panic!(
                "the host provides no {} to the views",
                std::any::type_name::<T>()
            )
        })
    }
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("services", &self.services.len())
            .finish()
    }
}
