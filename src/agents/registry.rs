//! The agent registry: every name a plan may call, with its policies.
//!
//! Sources, later ones winning on a name clash: the active rows of the `agents` table, then
//! `[agents.<name>]` in config (CONTRACT.md §5). Built-ins are always there and cannot be shadowed.
//! One `reqwest::Client` (one connection pool) serves every HTTP agent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::breaker::CircuitBreaker;
use super::builtin::Builtin;
use super::http::{HttpAgent, auth_header};
use super::{AgentEntry, AgentHandle, AgentKind};
use crate::config::{AgentConfig, AgentProtocol, AuthType, Config, RetryPolicy};
use crate::plan::AgentCatalog;

#[derive(Debug, Clone)]
pub struct AgentRegistry {
    agents: HashMap<String, AgentHandle>,
    /// What each HTTP agent was built from, so a rebuild can keep the agents that did not change
    /// (with their circuit breakers and concurrency limits) and replace only the others.
    sources: HashMap<String, AgentConfig>,
    client: reqwest::Client,
}

impl AgentRegistry {
    /// The registry for `config`, with the `agents` table's rows (`rows` may be empty).
    pub fn new(config: &Config, rows: &[entity::agent::Model]) -> AgentRegistry {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .expect("a reqwest client with default TLS settings builds");
        Self::build_from(config, rows, client, None)
    }

    /// The registry for newer rows of the `agents` table: agents whose definition is unchanged
    /// keep their handle (breaker state and in-flight limits carry over).
    pub fn rebuild(&self, config: &Config, rows: &[entity::agent::Model]) -> AgentRegistry {
        Self::build_from(config, rows, self.client.clone(), Some(self))
    }

    fn build_from(
        config: &Config,
        rows: &[entity::agent::Model],
        client: reqwest::Client,
        previous: Option<&AgentRegistry>,
    ) -> AgentRegistry {
        let mut sources: HashMap<String, AgentConfig> = HashMap::new();
        let mut agents = HashMap::new();
        for (name, builtin) in Builtin::ALL {
            agents.insert(
                name.to_string(),
                AgentHandle::new(AgentEntry {
                    name: name.to_string(),
                    kind: AgentKind::Builtin(builtin),
                    retry: config.executor.retry,
                    breaker: None,
                    limit: None,
                }),
            );
        }
        for row in rows.iter().filter(|r| r.status == "active") {
            if Builtin::named(&row.name).is_some() {
                tracing::warn!(agent = %row.name, "agents table row ignored: the name belongs to a built-in agent");
                continue;
            }
            match agent_from_row(row) {
                Ok(agent) => {
                    sources.insert(row.name.clone(), agent);
                }
                Err(reason) => tracing::warn!(agent = %row.name, %reason, "agents table row ignored"),
            }
        }
        for (name, agent) in &config.agents {
            sources.insert(name.clone(), agent.clone());
        }
        for (name, source) in &sources {
            let kept = previous
                .filter(|previous| previous.sources.get(name) == Some(source))
                .and_then(|previous| previous.agents.get(name).cloned());
            agents.insert(name.clone(), kept.unwrap_or_else(|| build(name, source, config, &client)));
        }
        AgentRegistry { agents, sources, client }
    }

    pub fn get(&self, name: &str) -> Option<&AgentHandle> {
        self.agents.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(String::as_str)
    }
}

impl AgentCatalog for AgentRegistry {
    fn knows(&self, agent_name: &str) -> bool {
        self.agents.contains_key(agent_name)
    }
}

fn build(name: &str, agent: &AgentConfig, config: &Config, client: &reqwest::Client) -> AgentHandle {
    let auth_config: Map<String, Value> =
        agent.auth_config.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    AgentHandle::new(AgentEntry {
        name: name.to_string(),
        kind: AgentKind::Http(HttpAgent {
            name: name.to_string(),
            url: agent.url.clone(),
            protocol: agent.protocol,
            timeout: Duration::from_millis(agent.timeout_ms),
            auth_header: auth_header(agent.auth_type, &auth_config),
            client: client.clone(),
            max_response_bytes: config.executor.max_agent_response_bytes,
        }),
        retry: agent.retry_config.unwrap_or(config.executor.retry),
        breaker: Some(CircuitBreaker::new(agent.circuit_breaker.unwrap_or(config.executor.circuit_breaker))),
        limit: agent.max_concurrency.map(|n| Arc::new(Semaphore::new(n))),
    })
}

/// Reads a row of the `agents` table as if it were a config entry.
pub(crate) fn agent_from_row(row: &entity::agent::Model) -> Result<AgentConfig, String> {
    if !(row.url.starts_with("http://") || row.url.starts_with("https://")) {
        return Err(format!("url {:?} is not an http(s) URL", row.url));
    }
    let auth_type = match row.auth_type.as_deref().unwrap_or("none") {
        "none" | "" => AuthType::None,
        "bearer" => AuthType::Bearer,
        "apikey" => AuthType::Apikey,
        other => return Err(format!("auth_type {other:?} is not none, bearer or apikey")),
    };
    let auth_config = match &row.auth_config {
        Some(Value::Object(map)) => {
            map.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect()
        }
        _ => Default::default(),
    };
    let retry_config = match &row.retry_config {
        Some(value) if !value.is_null() => {
            Some(serde_json::from_value::<RetryPolicy>(value.clone()).map_err(|e| format!("retry_config: {e}"))?)
        }
        _ => None,
    };
    Ok(AgentConfig {
        url: row.url.clone(),
        protocol: AgentProtocol::Jsonrpc,
        timeout_ms: u64::try_from(row.timeout_ms).unwrap_or(30_000).max(1),
        auth_type,
        auth_config,
        retry_config,
        circuit_breaker: None,
        max_concurrency: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(name: &str, url: &str) -> entity::agent::Model {
        let now = chrono::Utc::now().naive_utc();
        entity::agent::Model {
            id: uuid::Uuid::new_v4(),
            name: name.into(),
            url: url.into(),
            description: None,
            auth_type: Some("bearer".into()),
            auth_config: Some(json!({"token": "t"})),
            timeout_ms: 1500,
            retry_config: Some(json!({"max_retries": 7})),
            status: "active".into(),
            created_by: None,
            updated_by: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn builtins_table_rows_and_config_with_config_winning() {
        let mut config = Config::defaults();
        config.agents.insert("Writer".into(), AgentConfig::at_url("http://127.0.0.1:9/config"));
        let mut inactive = row("Sleeper", "http://127.0.0.1:9/x");
        inactive.status = "disabled".into();
        let rows = [row("Writer", "http://127.0.0.1:9/table"), row("Researcher", "http://127.0.0.1:9/r"), inactive];
        let registry = AgentRegistry::new(&config, &rows);
        for name in ["echo", "sleep", "fail", "panic", "Writer", "Researcher"] {
            assert!(registry.knows(name), "{name}");
        }
        assert!(!registry.knows("Sleeper"));
        let AgentKind::Http(writer) = &registry.get("Writer").unwrap().0.kind else { panic!() };
        assert_eq!(writer.url, "http://127.0.0.1:9/config");
        let researcher = registry.get("Researcher").unwrap();
        assert_eq!(researcher.retry_policy().max_retries, 7);
        assert_eq!(researcher.retry_policy().initial_delay_ms, 1000);
        let AgentKind::Http(http) = &researcher.0.kind else { panic!() };
        assert_eq!(http.timeout, Duration::from_millis(1500));
        assert_eq!(http.auth_header, Some(("Authorization".into(), "Bearer t".into())));
    }

    #[test]
    fn a_rebuild_keeps_unchanged_agents_and_replaces_edited_ones() {
        let config = Config::defaults();
        let before =
            AgentRegistry::new(&config, &[row("Kept", "http://127.0.0.1:9/k"), row("Edited", "http://127.0.0.1:9/a")]);
        let after = before.rebuild(
            &config,
            &[
                row("Kept", "http://127.0.0.1:9/k"),
                row("Edited", "http://127.0.0.1:9/b"),
                row("New", "http://127.0.0.1:9/n"),
            ],
        );
        let same = |name: &str| Arc::ptr_eq(&before.get(name).unwrap().0, &after.get(name).unwrap().0);
        assert!(same("Kept"), "an unchanged agent keeps its handle and breaker");
        assert!(!same("Edited"));
        assert!(after.knows("New"));
        let AgentKind::Http(edited) = &after.get("Edited").unwrap().0.kind else { panic!() };
        assert_eq!(edited.url, "http://127.0.0.1:9/b");
    }
}
