//! What a view registers with the host (besides its dataflow in
//! `shopstream_dataflows::views`): the compilers of its kinds of definitions, the
//! services its dataflow and its handlers need, the definitions its configuration
//! asks for at start, and what to close at shutdown. The engine calls views only
//! through this trait and `shopstream_dataflows::view::View`; the list of views is
//! `crate::serve::views`.

use std::sync::Arc;

use shopstream_dataflows::view::Env;

use crate::catalog::{Catalog, Compiler, Control, StartupError};
use crate::config::Config;
use crate::symbols::Symbols;

/// What the engine offers a view when it provides its services.
#[derive(Clone, Copy)]
pub struct HostContext<'a> {
    pub config: &'a Config,
    pub symbols: &'a Arc<Symbols>,
    pub catalog: &'a Arc<Catalog>,
}

/// A view's host half, as the engine sees it.
pub trait ViewHost: Send + Sync {
    /// The view's name (for logs).
    fn name(&self) -> &'static str;

    /// Compilers of the kinds of definitions this view evaluates.
    fn compilers(&self, _config: &Config) -> Vec<Arc<dyn Compiler>> {
        Vec::new()
    }

    /// Puts into `env` what the view's dataflow (on every worker) and its
    /// handlers (through `Engine::service`) need.
    fn provide(&self, _env: &mut Env, _cx: HostContext<'_>) {}

    /// Checks the view's configuration before the log is replayed, so that a bad
    /// setting stops the start at once.
    fn check(&self, _config: &Config) -> Result<(), StartupError> {
        Ok(())
    }

    /// Definition changes the configuration asks for, given what the replayed log
    /// defines; logged before anything is served.
    fn startup(&self, _config: &Config, _catalog: &Catalog) -> Result<Vec<Control>, StartupError> {
        Ok(Vec::new())
    }

    /// Ends what outlives requests (open feeds) at shutdown.
    fn close(&self, _env: &Env) {}

    /// The host half's own state for a snapshot (the change feed, say), taken
    /// while every worker waits at the snapshot's epoch; `None`: it keeps none.
    fn snapshot(&self, _env: &Env) -> Option<Vec<u8>> {
        None
    }

    /// Restores what [`snapshot`](Self::snapshot) saved, before the workers start.
    fn restore(&self, _env: &Env, _saved: &[u8]) -> Result<(), String> {
        Ok(())
    }
}
