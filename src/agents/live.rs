//! The registry an executor calls through: replaced, not mutated, when the `agents` table changes.
//!
//! Runs take a snapshot ([`LiveRegistry::current`]) and keep using it; a refresh builds a new
//! registry from the table's rows and swaps it in. Refreshes happen every
//! `executor.agents_refresh_ms`, and at once when a plan names an agent the registry does not know
//! (at most once a second per name), so an agent created through the API is callable by the next
//! run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::AgentRegistry;
use crate::config::Config;

/// The least time between two refreshes caused by the same unknown name: a plan with a misspelt
/// agent must not make every run read the table, but a name the last read did not know yet (an
/// agent created a moment ago) must not wait for the next periodic refresh.
const ON_DEMAND_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct LiveRegistry {
    current: RwLock<Arc<AgentRegistry>>,
    config: Config,
    /// Unknown names and when each last caused a refresh.
    asked: Mutex<HashMap<String, Instant>>,
}

impl LiveRegistry {
    pub fn new(config: &Config, registry: AgentRegistry) -> Self {
        Self { current: RwLock::new(Arc::new(registry)), config: config.clone(), asked: Mutex::default() }
    }

    pub fn current(&self) -> Arc<AgentRegistry> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Swaps in a registry built from `rows`.
    pub fn refresh(&self, rows: &[entity::agent::Model]) {
        let next = Arc::new(self.current().rebuild(&self.config, rows));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Whether the unknown names a plan uses may cause a refresh now: yes for a name that has not
    /// caused one within the last second (and it is then recorded as having done so).
    pub fn may_refresh_for<'a>(&self, unknown: impl IntoIterator<Item = &'a str>) -> bool {
        let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        asked.retain(|_, at| now.duration_since(*at) < ON_DEMAND_INTERVAL);
        let mut refresh = false;
        for name in unknown {
            if !asked.contains_key(name) {
                asked.insert(name.to_string(), now);
                refresh = true;
            }
        }
        refresh
    }
}
