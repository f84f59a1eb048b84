//! Configuration: one typed [`Config`], layered and then validated.
//!
//! The layers, later ones winning:
//! 1. `config/default.toml`, compiled into the binary so `runvisor` runs from any directory;
//! 2. the file given with `--config`;
//! 3. environment variables `RUNVISOR__<SECTION>__<KEY>` (figment lower-cases the key path, so
//!    `RUNVISOR__EXECUTOR__MAX_CONCURRENT_RUNS=50` sets `executor.max_concurrent_runs`).
//!
//! Unknown keys are rejected rather than ignored: a misspelt setting that silently keeps its default
//! is the kind of mistake an operator only finds in production. After layering, [`Config::validate`]
//! checks every value and reports all problems at once, each as `key = value: what is allowed`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

/// The built-in defaults; every setting appears here with a comment.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The prefix of environment variables that override settings.
pub const ENV_PREFIX: &str = "RUNVISOR__";

/// Names of the built-in agents (CONTRACT.md §5); configured agents may not shadow them.
pub const BUILTIN_AGENTS: [&str; 4] = ["echo", "sleep", "fail", "panic"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// Every problem, one per line, each as `key = value: what is allowed (where it was set)`:
    /// values of the wrong type, unknown keys (with the closest known one), TOML that does not
    /// parse, and values out of range.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub executor: ExecutorConfig,
    pub persistence: PersistenceConfig,
    pub api: ApiConfig,
    pub outbox: OutboxConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// HTTP agents by name. They override rows of the `agents` table with the same name.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite:…`.
    pub url: String,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, or [`KafkaConfig::EMBEDDED`] for an in-process broker.
    pub brokers: String,
    pub group_id: String,
    pub requests_topic: String,
    pub cancellations_topic: String,
    pub monitoring_topic: String,
    pub dlq_topic: String,
    pub max_message_bytes: usize,
    pub create_topics: bool,
    pub topic_partitions: i32,
    /// Passed to librdkafka; runvisor's own settings win where both set a property that its
    /// guarantees depend on (offset commits), and the README lists those. Underscores in names are
    /// read as dots, so `RUNVISOR__KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS=5` sets `fetch.wait.max.ms`
    /// (librdkafka's names have no underscores; environment variable names cannot hold dots).
    #[serde(default, deserialize_with = "librdkafka_properties")]
    pub properties: BTreeMap<String, String>,
}

/// Reads a table of librdkafka properties whose values may arrive typed (figment parses `5` in an
/// environment variable as a number) and whose names may use `_` for `.`.
fn librdkafka_properties<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (name.replace('_', "."), value)
        })
        .collect())
}

impl KafkaConfig {
    pub const EMBEDDED: &'static str = "embedded";

    pub fn is_embedded(&self) -> bool {
        self.brokers == Self::EMBEDDED
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    pub max_concurrent_runs: usize,
    pub max_parallel_steps: usize,
    pub shutdown_grace_ms: u64,
    /// How long a claim on a run holds without renewal; renewed every third of it.
    pub lease_ms: u64,
    /// How often the agent registry re-reads the `agents` table (an unknown name also makes it
    /// look at once), so agents added or edited through the API are called without a restart.
    pub agents_refresh_ms: u64,
    /// The most an HTTP agent's answer may weigh; a larger one fails the attempt as it arrives.
    /// Under `executor`, not `agents`, because `agents.<name>` is the namespace of agent names.
    pub max_agent_response_bytes: usize,
    /// This executor's name in `workflow_runs.owner_id`; empty = generated at start (unique per
    /// process, so a restarted executor never mistakes a dead one's claims for its own).
    pub owner_id: String,
    pub retry: RetryPolicy,
    pub circuit_breaker: CircuitBreakerConfig,
    pub sweeper: SweeperConfig,
}

/// The sweeper of orphaned runs (`actors::sweeper`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweeperConfig {
    /// How often to look; 0 turns the sweeper off.
    pub interval_ms: u64,
    /// Untouched for this many leases = orphaned. Long enough that a live executor cut off from
    /// the database for a while, or a request waiting behind a backlog, is not taken for dead
    /// (the claim would sort it out, but a sweep of healthy runs is wasted work).
    pub after_leases: u32,
    /// Runs resumed per look at most, so that a large backlog of orphans is taken in steps.
    pub batch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistenceConfig {
    pub batch_max: usize,
    pub flush_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: String,
    /// Where the agents, workflows and runs routes sit (the platform's `API_PREFIX`).
    pub prefix: String,
    /// Larger request bodies are refused with 413 before they are read.
    pub max_body_bytes: usize,
    /// When set, every route but `/health*` needs `Authorization: Bearer <token>`.
    pub auth_token: String,
    /// How often the dashboard's live pages look for changes in the database (only while a page
    /// is open): the delay a change may take to show.
    pub live_poll_ms: u64,
    pub cors: CorsConfig,
}

/// CORS as the platform configures it (`CORS_ORIGINS`, `CORS_ALLOW_CREDENTIALS`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Comma-separated origins allowed to call the API from a browser; `*` allows any.
    pub origins: String,
    pub allow_credentials: bool,
    /// Comma-separated methods, or `*`.
    pub allow_methods: String,
    /// Comma-separated request headers, or `*`.
    pub allow_headers: String,
}

impl CorsConfig {
    /// The configured origins, trimmed, without empty entries.
    pub fn origin_list(&self) -> Vec<String> {
        split_list(&self.origins)
    }
}

/// A comma-separated setting as a list.
pub fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_string).collect()
}

/// The request outbox (see `runvisor::service::outbox`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// How often a relay looks for requests left unpublished.
    pub relay_interval_ms: u64,
    /// Requests younger than this are left to the process that wrote them.
    pub grace_ms: u64,
    /// How long one publish may wait for the broker's acknowledgement.
    pub publish_timeout_ms: u64,
    /// A request still unpublished after this fails its run; 0 = keep trying for ever.
    pub give_up_after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `runvisor consume` serves `/metrics` and `/health` here; empty = not at all. (`api` and
    /// `dev` serve `/metrics` on the API's address.)
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter (`RUST_LOG` wins when set), e.g. `info,runvisor=debug`.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event; coloured only when stderr is a terminal.
    Human,
    /// One JSON object per event, with the span fields (run_id, step_id, attempt).
    Json,
}

/// How often and how patiently an agent call is retried (CONTRACT.md §5). The same shape is read
/// from config and from the `agents.retry_config` column, so absent fields take the contract's
/// defaults rather than failing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts; 0 is read as 1.
    pub max_retries: u32,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub backoff_multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 3, initial_delay_ms: 1000, max_delay_ms: 30_000, backoff_multiplier: 2.0 }
    }
}

impl RetryPolicy {
    /// Attempts allowed in total, never fewer than one.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.max(1)
    }

    fn problems(&self, key: &str, out: &mut Vec<String>) {
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            out.push(format!("{key}.backoff_multiplier = {}: must be a number ≥ 1.0", self.backoff_multiplier));
        }
        if self.max_delay_ms < self.initial_delay_ms {
            out.push(format!(
                "{key}.max_delay_ms = {}: must be ≥ initial_delay_ms ({})",
                self.max_delay_ms, self.initial_delay_ms
            ));
        }
    }
}

/// A per-agent circuit breaker (CONTRACT.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    pub failure_threshold: u32,
    pub failure_rate_threshold: f64,
    pub timeout_seconds: u64,
    pub half_open_max_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, failure_rate_threshold: 0.5, timeout_seconds: 60, half_open_max_calls: 3 }
    }
}

impl CircuitBreakerConfig {
    fn problems(&self, key: &str, out: &mut Vec<String>) {
        if self.failure_threshold == 0 {
            out.push(format!("{key}.failure_threshold = 0: must be ≥ 1"));
        }
        if !(self.failure_rate_threshold > 0.0 && self.failure_rate_threshold <= 1.0) {
            out.push(format!("{key}.failure_rate_threshold = {}: must be in (0, 1]", self.failure_rate_threshold));
        }
        if self.timeout_seconds == 0 {
            out.push(format!("{key}.timeout_seconds = 0: must be ≥ 1"));
        }
        if self.half_open_max_calls == 0 {
            out.push(format!("{key}.half_open_max_calls = 0: must be ≥ 1"));
        }
    }
}

/// The wire protocol of an HTTP agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentProtocol {
    /// JSON-RPC 2.0 `message/send` (A2A).
    #[default]
    Jsonrpc,
    /// `{"task_id", "input"}` → `{"status", "output", "error"}`.
    Simple,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    #[default]
    None,
    Bearer,
    Apikey,
}

/// One `[agents.<name>]` entry, the same fields as a row of the `agents` table (CONTRACT.md §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub url: String,
    #[serde(default)]
    pub protocol: AgentProtocol,
    #[serde(default = "default_agent_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub auth_type: AuthType,
    /// `{"token"}` for bearer, `{"key", "header_name"}` for apikey.
    #[serde(default)]
    pub auth_config: BTreeMap<String, String>,
    /// Falls back to `executor.retry`.
    #[serde(default)]
    pub retry_config: Option<RetryPolicy>,
    /// Falls back to `executor.circuit_breaker`.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Calls to this agent in flight at once across all runs; unlimited when absent.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
}

fn default_agent_timeout_ms() -> u64 {
    30_000
}

impl AgentConfig {
    /// An agent at `url` with every other field at its default.
    pub fn at_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            protocol: AgentProtocol::default(),
            timeout_ms: default_agent_timeout_ms(),
            auth_type: AuthType::None,
            auth_config: BTreeMap::new(),
            retry_config: None,
            circuit_breaker: None,
            max_concurrency: None,
        }
    }

    fn problems(&self, key: &str, out: &mut Vec<String>) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            out.push(format!("{key}.url = {:?}: must be an http:// or https:// URL", self.url));
        }
        if self.timeout_ms == 0 {
            out.push(format!("{key}.timeout_ms = 0: must be ≥ 1"));
        }
        if self.max_concurrency == Some(0) {
            out.push(format!("{key}.max_concurrency = 0: must be ≥ 1 (leave it out for no limit)"));
        }
        let needs = match self.auth_type {
            AuthType::None => None,
            AuthType::Bearer => Some(("token", "bearer")),
            AuthType::Apikey => Some(("key", "apikey")),
        };
        if let Some((field, auth_type)) = needs
            && self.auth_config.get(field).is_none_or(|v| v.is_empty())
        {
            out.push(format!("{key}.auth_config.{field}: required when auth_type = \"{auth_type}\""));
        }
        if let Some(retry) = &self.retry_config {
            retry.problems(&format!("{key}.retry_config"), out);
        }
        if let Some(breaker) = &self.circuit_breaker {
            breaker.problems(&format!("{key}.circuit_breaker"), out);
        }
    }
}

impl Config {
    /// The layered sources, before extraction. `file` must exist when given.
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            // figment skips a missing file silently; an operator who named one meant it.
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(figment.merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    /// Defaults → `file` → environment, validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::from_figment(Self::figment(file)?)
    }

    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|error| ConfigError::Invalid(describe(error)))?;
        config.validate()?;
        Ok(config)
    }

    /// The built-in defaults alone, ignoring files and environment: what tests and `runvisor run`
    /// start from before overriding a field or two.
    pub fn defaults() -> Config {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_TOML)))
            .expect("config/default.toml is valid; tests/config.rs checks it")
    }

    /// Every problem with the values, each naming its key, the value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut out = Vec::new();
        let db = &self.database;
        if !(db.url.starts_with("postgres://") || db.url.starts_with("postgresql://") || db.url.starts_with("sqlite:"))
        {
            out.push(format!("database.url = {:?}: must start with postgres://, postgresql:// or sqlite:", db.url));
        }
        at_least_one(&mut out, "database.max_connections", db.max_connections as u64);
        at_least_one(&mut out, "database.connect_timeout_ms", db.connect_timeout_ms);

        let kafka = &self.kafka;
        for (key, value) in [
            ("kafka.brokers", &kafka.brokers),
            ("kafka.group_id", &kafka.group_id),
            ("kafka.requests_topic", &kafka.requests_topic),
            ("kafka.cancellations_topic", &kafka.cancellations_topic),
            ("kafka.monitoring_topic", &kafka.monitoring_topic),
            ("kafka.dlq_topic", &kafka.dlq_topic),
        ] {
            if value.trim().is_empty() {
                out.push(format!("{key} = {value:?}: must not be empty"));
            }
        }
        if kafka.max_message_bytes < 1024 {
            out.push(format!("kafka.max_message_bytes = {}: must be ≥ 1024", kafka.max_message_bytes));
        }
        if kafka.topic_partitions < 1 {
            out.push(format!("kafka.topic_partitions = {}: must be ≥ 1", kafka.topic_partitions));
        }

        let exec = &self.executor;
        at_least_one(&mut out, "executor.max_concurrent_runs", exec.max_concurrent_runs as u64);
        at_least_one(&mut out, "executor.max_parallel_steps", exec.max_parallel_steps as u64);
        if exec.lease_ms < 1000 {
            out.push(format!("executor.lease_ms = {}: must be ≥ 1000", exec.lease_ms));
        }
        at_least_one(&mut out, "executor.agents_refresh_ms", exec.agents_refresh_ms);
        if exec.max_agent_response_bytes < 1024 {
            out.push(format!("executor.max_agent_response_bytes = {}: must be ≥ 1024", exec.max_agent_response_bytes));
        }
        if exec.owner_id.len() > 64 {
            out.push(format!("executor.owner_id = {:?}: must be at most 64 characters", exec.owner_id));
        }
        exec.retry.problems("executor.retry", &mut out);
        exec.circuit_breaker.problems("executor.circuit_breaker", &mut out);
        if exec.sweeper.after_leases < 2 {
            out.push(format!(
                "executor.sweeper.after_leases = {}: must be ≥ 2 (a live executor renews every third of a lease)",
                exec.sweeper.after_leases
            ));
        }
        at_least_one(&mut out, "executor.sweeper.batch", exec.sweeper.batch);

        at_least_one(&mut out, "persistence.batch_max", self.persistence.batch_max as u64);

        if self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            out.push(format!("api.listen = {:?}: must be an address like 127.0.0.1:8000", self.api.listen));
        }
        if !self.api.prefix.is_empty() && (!self.api.prefix.starts_with('/') || self.api.prefix.ends_with('/')) {
            out.push(format!(
                "api.prefix = {:?}: must start with / and not end with one, e.g. \"/api/v1\"",
                self.api.prefix
            ));
        }
        if self.api.max_body_bytes < 1024 {
            out.push(format!("api.max_body_bytes = {}: must be ≥ 1024", self.api.max_body_bytes));
        }
        if self.api.cors.origin_list().iter().any(|o| o != "*" && axum::http::HeaderValue::from_str(o).is_err()) {
            out.push(format!("api.cors.origins = {:?}: must be comma-separated origins or *", self.api.cors.origins));
        }
        at_least_one(&mut out, "outbox.relay_interval_ms", self.outbox.relay_interval_ms);
        at_least_one(&mut out, "outbox.publish_timeout_ms", self.outbox.publish_timeout_ms);
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            out.push(format!(
                "metrics.listen = {:?}: must be an address like 0.0.0.0:9464, or empty for none",
                self.metrics.listen
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            out.push(format!("log.filter = {:?}: must be a tracing filter like \"info,sqlx=warn\"", self.log.filter));
        }

        for (name, agent) in &self.agents {
            let key = format!("agents.{name}");
            if BUILTIN_AGENTS.contains(&name.as_str()) {
                out.push(format!("{key}: the name {name:?} belongs to a built-in agent"));
            }
            agent.problems(&key, &mut out);
        }

        if out.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(out)) }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.executor.shutdown_grace_ms)
    }

    /// `executor.owner_id`, or a name unique to this process.
    pub fn owner_id(&self) -> String {
        if self.executor.owner_id.is_empty() {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "executor".into());
            let mut host: String = host.chars().take(24).collect();
            host.push_str(&format!("-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]));
            host
        } else {
            self.executor.owner_id.clone()
        }
    }
}

/// figment's errors in the form of the others: `key = value: what is allowed (where)`.
fn describe(error: figment::Error) -> Vec<String> {
    use figment::error::{Actual, Kind};
    error
        .into_iter()
        .map(|error| {
            let key = error.path.join(".");
            let place = place(&error);
            match &error.kind {
                Kind::UnknownField(field, known) => {
                    let key = if key.is_empty() || key.ends_with(field.as_str()) {
                        if key.is_empty() { field.clone() } else { key.clone() }
                    } else {
                        format!("{key}.{field}")
                    };
                    let hint = crate::wording::did_you_mean(field, known.iter().copied())
                        .map(|k| format!("; did you mean {k}?"))
                        .unwrap_or_default();
                    format!("{key}: unknown setting{hint}{place}")
                }
                Kind::InvalidType(actual, wanted) | Kind::InvalidValue(actual, wanted) => {
                    let value = match actual {
                        Actual::Str(s) => format!("{s:?}"),
                        Actual::Signed(n) => n.to_string(),
                        Actual::Unsigned(n) => n.to_string(),
                        Actual::Float(n) => n.to_string(),
                        Actual::Bool(b) => b.to_string(),
                        Actual::Map => "a table".into(),
                        Actual::Seq => "a list".into(),
                        other => other.to_string(),
                    };
                    format!("{key} = {value}: must be {}{place}", crate::wording::expected(wanted))
                }
                Kind::UnknownVariant(value, allowed) => {
                    format!("{key} = {value:?}: must be one of {}{place}", allowed.join(", "))
                }
                Kind::MissingField(field) => {
                    let key = if key.is_empty() { field.to_string() } else { format!("{key}.{field}") };
                    format!("{key}: required{place}")
                }
                other => format!("{key}: {}{place}", crate::wording::humanize(&other.to_string())),
            }
        })
        .collect()
}

/// Where a bad value came from: the file (and the line of the key, when it can be found) or the
/// environment variable.
fn place(error: &figment::Error) -> String {
    let Some(metadata) = &error.metadata else { return String::new() };
    match &metadata.source {
        Some(figment::Source::File(path)) => {
            let key = error.path.last().map(String::as_str).unwrap_or_default();
            let line = std::fs::read_to_string(path).ok().and_then(|text| {
                text.lines().position(|l| {
                    let l = l.trim_start();
                    l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
                        || l.strip_prefix(&format!("\"{key}\"")).is_some_and(|rest| rest.trim_start().starts_with('='))
                })
            });
            match line {
                Some(line) => format!(" (in {}, line {})", path.display(), line + 1),
                None => format!(" (in {})", path.display()),
            }
        }
        _ if metadata.name.contains("environment") => {
            let variable: Vec<String> = error.path.iter().map(|k| k.to_uppercase()).collect();
            format!(" (environment variable {ENV_PREFIX}{})", variable.join("__"))
        }
        Some(figment::Source::Code(_)) | None => " (in the built-in defaults)".into(),
        Some(other) => format!(" (in {other})"),
    }
}

fn at_least_one(out: &mut Vec<String>, key: &str, value: u64) {
    if value == 0 {
        out.push(format!("{key} = 0: must be ≥ 1"));
    }
}

impl fmt::Display for Config {
    /// The effective configuration as TOML, for `runvisor config` and start-up logs. Secrets are
    /// masked: the database password, the API token, agents' auth_config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.clone();
        shown.database.url = crate::db::redact(&shown.database.url);
        if !shown.api.auth_token.is_empty() {
            shown.api.auth_token = "***".into();
        }
        for agent in shown.agents.values_mut() {
            for value in agent.auth_config.values_mut() {
                *value = "***".into();
            }
        }
        match toml::to_string_pretty(&shown) {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(f, "{shown:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_embedded() {
        let config = Config::defaults();
        assert!(config.kafka.is_embedded());
        assert!(config.database.url.starts_with("sqlite:"));
        assert_eq!(config.executor.retry, RetryPolicy::default());
        assert_eq!(config.executor.circuit_breaker, CircuitBreakerConfig::default());
    }

    #[test]
    fn every_problem_is_reported_with_key_value_and_rule() {
        let mut config = Config::defaults();
        config.executor.max_concurrent_runs = 0;
        config.database.url = "mysql://x".into();
        config.executor.retry.backoff_multiplier = 0.5;
        config.agents.insert(
            "Writer".into(),
            AgentConfig {
                timeout_ms: 0,
                auth_type: AuthType::Bearer,
                max_concurrency: Some(0),
                ..AgentConfig::at_url("ftp://x")
            },
        );
        let Err(ConfigError::Invalid(problems)) = config.validate() else { panic!("expected problems") };
        let expected = [
            "executor.max_concurrent_runs = 0: must be ≥ 1",
            "database.url = \"mysql://x\": must start with postgres://, postgresql:// or sqlite:",
            "executor.retry.backoff_multiplier = 0.5: must be a number ≥ 1.0",
            "agents.Writer.url = \"ftp://x\": must be an http:// or https:// URL",
            "agents.Writer.timeout_ms = 0: must be ≥ 1",
            "agents.Writer.max_concurrency = 0: must be ≥ 1 (leave it out for no limit)",
            "agents.Writer.auth_config.token: required when auth_type = \"bearer\"",
        ];
        for line in expected {
            assert!(problems.iter().any(|p| p == line), "missing {line:?} in {problems:#?}");
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    }

    #[test]
    fn builtin_names_cannot_be_configured() {
        let mut config = Config::defaults();
        config.agents.insert("echo".into(), AgentConfig::at_url("http://127.0.0.1:1"));
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("agents.echo: the name \"echo\" belongs to a built-in agent"), "{err}");
    }

    #[test]
    fn display_masks_secrets() {
        let mut config = Config::defaults();
        config.agents.insert(
            "A".into(),
            AgentConfig {
                auth_type: AuthType::Bearer,
                auth_config: BTreeMap::from([("token".to_string(), "s3cret".to_string())]),
                ..AgentConfig::at_url("http://127.0.0.1:1")
            },
        );
        let shown = config.to_string();
        assert!(!shown.contains("s3cret"));
        assert!(shown.contains("max_concurrent_runs = 1000"), "{shown}");
    }
}
