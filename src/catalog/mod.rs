//! The catalog: definitions of every kind (segment rules today; funnels,
//! experiments and campaign costs next), as logged, and the compilers that turn
//! them into what the views evaluate.
//!
//! # Definitions go through the log
//! A definition change is a [`Control`] record in the durable log, ordered with
//! the events: it takes effect at the epoch of its record, on every worker, and a
//! replay applies it at the same epoch again. So definitions survive restarts, and
//! what a restart rebuilds is what the live engine had.
//!
//! A control names its **kind**; the [`Compiler`] registered for that kind (by
//! the view that evaluates it, see `serve::views`) checks its name and compiles
//! its body once per record, for every worker. The sequencer only hands the
//! record's controls to [`Catalog::apply`]; it knows no kind. The HTTP layer
//! checks a body with the same compiler before anything is logged, so a bad
//! definition is refused with its reason and never reaches the log.
//!
//! # Compatibility
//! Segment rules are logged as `Define`/`Drop`, exactly as before kinds existed
//! (so a log written by this version still replays on the one before it); they
//! read as kind `segment`. Every other kind is logged as `Put`/`Remove` with its
//! kind.

pub mod segments;

/// The kind of the records written before kinds existed (`Define`/`Drop`): segment
/// rules. The same as [`segments::KIND`] (a test checks it); kept here so the log
/// encoding does not depend on a view's module.
const LEGACY_KIND: &str = "segment";

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shopstream_dataflows::types::{intern, Millis, Time};
use shopstream_dataflows::view::DefinitionChange;

/// Where a definition came from: API definitions are changed through the API,
/// the others through their configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Api,
    /// A definitions file (for segments, `config/segments.toml` or the file
    /// `segments.file` names).
    Config,
    /// Built in, from settings (lifecycle stages, tiers and RFM segments).
    Builtin,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Config => "config",
            Source::Builtin => "builtin",
        }
    }
}

/// A definition change, as logged: of kind `kind`, named `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Wire", into = "Wire")]
pub struct Control {
    pub kind: String,
    pub name: String,
    pub op: Op,
}

/// What a [`Control`] does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Defines or redefines with `body` (a segment's rule text).
    Put { body: String, source: Source },
    /// Drops the definition.
    Remove,
}

impl Control {
    pub fn put(
        kind: &str,
        name: impl Into<String>,
        body: impl Into<String>,
        source: Source,
    ) -> Self {
        Control {
            kind: kind.to_owned(),
            name: name.into(),
            op: Op::Put {
                body: body.into(),
                source,
            },
        }
    }

    pub fn remove(kind: &str, name: impl Into<String>) -> Self {
        Control {
            kind: kind.to_owned(),
            name: name.into(),
            op: Op::Remove,
        }
    }
}

/// The log's encoding of a [`Control`] (bincode numbers the variants in this
/// order: never reorder them).
#[derive(Clone, Serialize, Deserialize)]
enum Wire {
    /// Before kinds: a segment rule.
    Define {
        name: String,
        rule: String,
        source: Source,
    },
    /// Before kinds: a segment dropped.
    Drop {
        name: String,
    },
    Put {
        kind: String,
        name: String,
        body: String,
        source: Source,
    },
    Remove {
        kind: String,
        name: String,
    },
}

impl From<Wire> for Control {
    fn from(w: Wire) -> Self {
        match w {
            Wire::Define { name, rule, source } => Control::put(LEGACY_KIND, name, rule, source),
            Wire::Drop { name } => Control::remove(LEGACY_KIND, name),
            Wire::Put {
                kind,
                name,
                body,
                source,
            } => Control {
                kind,
                name,
                op: Op::Put { body, source },
            },
            Wire::Remove { kind, name } => Control {
                kind,
                name,
                op: Op::Remove,
            },
        }
    }
}

impl From<Control> for Wire {
    fn from(c: Control) -> Self {
        match c.op {
            Op::Put { body, source } if c.kind == LEGACY_KIND => Wire::Define {
                name: c.name,
                rule: body,
                source,
            },
            Op::Remove if c.kind == LEGACY_KIND => Wire::Drop { name: c.name },
            Op::Put { body, source } => Wire::Put {
                kind: c.kind,
                name: c.name,
                body,
                source,
            },
            Op::Remove => Wire::Remove {
                kind: c.kind,
                name: c.name,
            },
        }
    }
}

/// Why a definition is refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no definitions of kind {0:?} (known: {1})")]
    UnknownKind(String, String),
    #[error("name: {0}")]
    Name(String),
    #[error("{0}")]
    Compile(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why the configured definitions cannot be applied at start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{kind} file {path}: {source}")]
    File {
        kind: &'static str,
        path: std::path::PathBuf,
        /// The I/O or TOML error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{origin}: {kind} {name:?}: {reason}")]
    Invalid {
        kind: &'static str,
        origin: String,
        name: String,
        reason: String,
    },
}

/// Checks and compiles the definitions of one kind; registered by the view that
/// evaluates them.
pub trait Compiler: Send + Sync {
    /// The kind's name, as logged (and matched by the view's `feed`).
    fn kind(&self) -> &'static str;

    /// Refuses a name this kind does not accept.
    fn check_name(&self, name: &str) -> Result<(), String>;

    /// Compiles a body into the value the view downcasts.
    fn compile(
        &self,
        body: &str,
    ) -> Result<Arc<dyn Any + Send + Sync>, Box<dyn std::error::Error + Send + Sync>>;

    /// A definition's id in the views: the hash of its name.
    fn id(&self, name: &str) -> u64 {
        intern(name)
    }
}

/// The catalog as a snapshot keeps it ([`Catalog::save`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCatalog {
    /// Every definition, with its kind's name (restored to the compiler's own).
    pub defined: Vec<(String, Definition)>,
    /// Every name ever defined: `(kind, id, name)` (dropped ones still name the
    /// exits the feed publishes).
    pub names: Vec<(String, u64, String)>,
}

/// A definition as defined now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// The compiler's name for the kind (saved beside it, see [`SavedCatalog`]).
    #[serde(skip)]
    pub kind: &'static str,
    pub name: String,
    /// The body as logged (a segment's rule text).
    pub body: String,
    pub source: Source,
    /// The epoch of the record that set this body (answers follow it from then on).
    pub epoch: Time,
    /// The last sequence number before that record's events, and its clock.
    pub seq: u64,
    pub clock: Millis,
    /// The epoch at which the definition was first created (unchanged by a
    /// redefinition).
    pub created_epoch: Time,
}

/// What is defined, by kind and name, and every name ever defined, by id (ids
/// are hashes of names, so this is stable): the exits of a dropped segment are
/// published after the drop and still name it.
#[derive(Debug, Default)]
struct Registry {
    /// kind → name → definition.
    by_name: HashMap<&'static str, BTreeMap<String, Definition>>,
    /// kind → id → name.
    names: HashMap<&'static str, HashMap<u64, String>>,
}

/// The compilers of every kind and what is defined now. Updated by the
/// sequencer as records are logged (or replayed); read by handlers.
pub struct Catalog {
    compilers: Vec<Arc<dyn Compiler>>,
    registry: Mutex<Registry>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<_> = self.compilers.iter().map(|c| c.kind()).collect();
        f.debug_struct("Catalog").field("kinds", &kinds).finish()
    }
}

impl Catalog {
    pub fn new(compilers: Vec<Arc<dyn Compiler>>) -> Self {
        Catalog {
            compilers,
            registry: Mutex::default(),
        }
    }

    /// The compiler of `kind`.
    pub fn compiler(&self, kind: &str) -> Result<&Arc<dyn Compiler>, CatalogError> {
        self.compilers
            .iter()
            .find(|c| c.kind() == kind)
            .ok_or_else(|| {
                let known: Vec<_> = self.compilers.iter().map(|c| c.kind()).collect();
                CatalogError::UnknownKind(kind.to_owned(), known.join(", "))
            })
    }

    /// Checks a control before it is logged: a known kind, a valid name, a body
    /// that compiles.
    pub fn check(&self, c: &Control) -> Result<(), CatalogError> {
        let compiler = self.compiler(&c.kind)?;
        compiler.check_name(&c.name).map_err(CatalogError::Name)?;
        if let Op::Put { body, .. } = &c.op {
            compiler.compile(body).map_err(CatalogError::Compile)?;
        }
        Ok(())
    }

    /// Records a logged record's controls (epoch `epoch`, last sequence number
    /// `seq`, clock `clock`) and compiles them for the workers, in order.
    ///
    /// Controls were checked before they were logged, so a failure here means the
    /// language changed between versions: the definition is dropped (and said so
    /// in the server log) rather than stopping a replay. A kind this version does
    /// not know is skipped the same way.
    pub fn apply(
        &self,
        controls: &[Control],
        epoch: Time,
        seq: u64,
        clock: Millis,
    ) -> Vec<DefinitionChange> {
        let mut out = Vec::with_capacity(controls.len());
        let mut registry = self.registry.lock().expect("poisoned");
        for c in controls {
            let compiler = match self.compiler(&c.kind) {
                Ok(compiler) => compiler,
                Err(e) => {
                    tracing::error!(epoch, name = %c.name, error = %e,
                        "a logged definition is of a kind this version does not know; skipped");
                    continue;
                }
            };
            let kind = compiler.kind();
            let id = compiler.id(&c.name);
            let compiled = match &c.op {
                Op::Put { body, source } => match compiler.compile(body) {
                    Ok(compiled) => {
                        registry.define(
                            id,
                            Definition {
                                kind,
                                name: c.name.clone(),
                                body: body.clone(),
                                source: *source,
                                epoch,
                                seq,
                                clock,
                                created_epoch: epoch,
                            },
                        );
                        Some(compiled)
                    }
                    Err(e) => {
                        tracing::error!(kind, name = %c.name, epoch, error = %e,
                            "a logged definition no longer compiles; it is dropped");
                        registry.remove(kind, &c.name);
                        None
                    }
                },
                Op::Remove => {
                    registry.remove(kind, &c.name);
                    None
                }
            };
            out.push(DefinitionChange { kind, id, compiled });
        }
        out
    }

    /// Everything defined and every name ever defined, for a snapshot.
    pub fn save(&self) -> SavedCatalog {
        let registry = self.registry.lock().expect("poisoned");
        let defined = registry
            .by_name
            .values()
            .flat_map(BTreeMap::values)
            .map(|d| (d.kind.to_owned(), d.clone()))
            .collect();
        let names = registry
            .names
            .iter()
            .flat_map(|(kind, ids)| ids.iter().map(|(id, n)| (kind.to_string(), *id, n.clone())))
            .collect();
        SavedCatalog { defined, names }
    }

    /// Restores a saved catalog (into an empty one, at start) and compiles every
    /// definition for the workers, as [`apply`](Self::apply) does for a record.
    /// A definition that no longer compiles, or of a kind this version does not
    /// know, is dropped and said so, as in a replay.
    pub fn restore(&self, saved: SavedCatalog) -> Vec<DefinitionChange> {
        let mut registry = self.registry.lock().expect("poisoned");
        for (kind, id, name) in saved.names {
            if let Ok(c) = self.compiler(&kind) {
                registry.names.entry(c.kind()).or_default().insert(id, name);
            }
        }
        let mut out = Vec::with_capacity(saved.defined.len());
        for (kind, mut d) in saved.defined {
            let compiler = match self.compiler(&kind) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(name = %d.name, error = %e,
                        "a saved definition is of a kind this version does not know; skipped");
                    continue;
                }
            };
            let (kind, id) = (compiler.kind(), compiler.id(&d.name));
            match compiler.compile(&d.body) {
                Ok(compiled) => {
                    d.kind = kind;
                    registry.define(id, d);
                    out.push(DefinitionChange {
                        kind,
                        id,
                        compiled: Some(compiled),
                    });
                }
                Err(e) => tracing::error!(kind, name = %d.name, error = %e,
                    "a saved definition no longer compiles; it is dropped"),
            }
        }
        out
    }

    /// The definitions of `kind`, in name order (a snapshot).
    pub fn definitions(&self, kind: &str) -> Vec<Definition> {
        let registry = self.registry.lock().expect("poisoned");
        registry
            .by_name
            .get(kind)
            .map_or_else(Vec::new, |defs| defs.values().cloned().collect())
    }

    /// One definition.
    pub fn get(&self, kind: &str, name: &str) -> Option<Definition> {
        let registry = self.registry.lock().expect("poisoned");
        registry.by_name.get(kind)?.get(name).cloned()
    }

    /// The name of definition `id` of `kind`, dropped ones included.
    pub fn name(&self, kind: &str, id: u64) -> Option<String> {
        let registry = self.registry.lock().expect("poisoned");
        registry.names.get(kind)?.get(&id).cloned()
    }

    /// Whether definition `id` of `kind` is defined now.
    pub fn is_defined(&self, kind: &str, id: u64) -> bool {
        let registry = self.registry.lock().expect("poisoned");
        let name = registry.names.get(kind).and_then(|n| n.get(&id));
        let defs = registry.by_name.get(kind);
        name.zip(defs).is_some_and(|(n, d)| d.contains_key(n))
    }

    /// How many definitions of every kind there are.
    pub fn len(&self) -> usize {
        let registry = self.registry.lock().expect("poisoned");
        registry.by_name.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Registry {
    /// Defines (or redefines, keeping when it was first created) `d`, whose id is `id`.
    fn define(&mut self, id: u64, mut d: Definition) {
        let defs = self.by_name.entry(d.kind).or_default();
        if let Some(old) = defs.get(&d.name) {
            d.created_epoch = old.created_epoch;
        }
        self.names
            .entry(d.kind)
            .or_default()
            .insert(id, d.name.clone());
        defs.insert(d.name.clone(), d);
    }

    /// Drops a definition; its id keeps its name.
    fn remove(&mut self, kind: &'static str, name: &str) {
        if let Some(defs) = self.by_name.get_mut(kind) {
            defs.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_before_kinds_read_as_segments() {
        let old = Wire::Define {
            name: "vip".into(),
            rule: "orders > 1".into(),
            source: Source::Api,
        };
        let bytes = bincode::serialize(&old).expect("encode");
        let c: Control = bincode::deserialize(&bytes).expect("decode");
        assert_eq!(
            c,
            Control::put(segments::KIND, "vip", "orders > 1", Source::Api)
        );
        let bytes = bincode::serialize(&Wire::Drop { name: "vip".into() }).expect("encode");
        let c: Control = bincode::deserialize(&bytes).expect("decode");
        assert_eq!(c, Control::remove(segments::KIND, "vip"));
    }

    #[test]
    fn segment_records_are_written_as_before_kinds() {
        assert_eq!(LEGACY_KIND, segments::KIND);
        let c = Control::put(segments::KIND, "vip", "orders > 1", Source::Config);
        let old = Wire::Define {
            name: "vip".into(),
            rule: "orders > 1".into(),
            source: Source::Config,
        };
        assert_eq!(
            bincode::serialize(&c).expect("encode"),
            bincode::serialize(&old).expect("encode"),
            "a version without kinds can replay it"
        );
        let bytes = bincode::serialize(&Control::remove(segments::KIND, "vip")).expect("encode");
        assert_eq!(
            bytes,
            bincode::serialize(&Wire::Drop { name: "vip".into() }).expect("encode")
        );
    }

    #[test]
    fn controls_round_trip_with_their_kind() {
        for c in [
            Control::put("funnel", "checkout", "a -> b", Source::Config),
            Control::remove("segment", "vip"),
        ] {
            let bytes = bincode::serialize(&c).expect("encode");
            assert_eq!(bincode::deserialize::<Control>(&bytes).expect("decode"), c);
        }
    }
}
