//! The registry an executor calls through: replaced, not mutated, when the `agents` table changes.
//!
//! Runs take a snapshot ([`LiveRegistry::current`]) and keep using it; a refresh builds a new
//! registry from the table's rows and swaps it in. Refreshes happen every
//! `executor.agents_refresh_ms`, and at once (at most once a second) when a plan names an agent
//! the registry does not know, so an agent created through the API is callable by the next run.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::AgentRegistry;
use crate::config::Config;

/// The least time between two refreshes caused by unknown names: a plan with a misspelt agent
/// must not make every run read the table.
const ON_DEMAND_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct LiveRegistry {
    current: RwLock<Arc<AgentRegistry>>,
    config: Config,
    last_refresh: Mutex<Option<Instant>>,
}

impl LiveRegistry {
    pub fn new(config: &Config, registry: AgentRegistry) -> Self {
        Self { current: RwLock::new(Arc::new(registry)), config: config.clone(), last_refresh: Mutex::new(None) }
    }

    pub fn current(&self) -> Arc<AgentRegistry> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Swaps in a registry built from `rows`.
    pub fn refresh(&self, rows: &[entity::agent::Model]) {
        let next = Arc::new(self.current().rebuild(&self.config, rows));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        *self.last_refresh.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether an on-demand refresh may run now.
    pub fn may_refresh_on_demand(&self) -> bool {
        let last = *self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|at| at.elapsed() >= ON_DEMAND_INTERVAL)
    }
}
