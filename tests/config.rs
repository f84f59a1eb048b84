//! Configuration layering: built-in defaults → `--config FILE` → `RUNVISOR__…` environment.
//! figment's `Jail` gives each test its own environment and working directory.

// Jail's closures must return figment's own (large) error type.
#![allow(clippy::result_large_err)]

use figment::Jail;
use runvisor::config::{AgentProtocol, AuthType, Config, ConfigError};

#[test]
fn defaults_then_file_then_environment() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "runvisor.toml",
            r#"
            [executor]
            max_concurrent_runs = 50
            max_parallel_steps = 7

            [database]
            url = "postgres://postgres@127.0.0.1:5432/runvisor"

            [agents.Writer]
            url = "http://127.0.0.1:9001/rpc"
            protocol = "simple"
            auth_type = "apikey"
            auth_config = { key = "k", header_name = "X-Key" }
            retry_config = { max_retries = 5 }
            "#,
        )?;
        jail.set_env("RUNVISOR__EXECUTOR__MAX_CONCURRENT_RUNS", "12");
        jail.set_env("RUNVISOR__KAFKA__BROKERS", "127.0.0.1:9092");
        let config = Config::load(Some("runvisor.toml".as_ref())).expect("valid");
        // environment beats file
        assert_eq!(config.executor.max_concurrent_runs, 12);
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        // file beats defaults
        assert_eq!(config.executor.max_parallel_steps, 7);
        assert_eq!(config.database.url, "postgres://postgres@127.0.0.1:5432/runvisor");
        // defaults fill the rest, including inside partial tables
        assert_eq!(config.persistence.batch_max, Config::defaults().persistence.batch_max);
        let writer = &config.agents["Writer"];
        assert_eq!(writer.protocol, AgentProtocol::Simple);
        assert_eq!(writer.auth_type, AuthType::Apikey);
        assert_eq!(writer.timeout_ms, 30_000);
        let retry = writer.retry_config.expect("set");
        assert_eq!((retry.max_retries, retry.initial_delay_ms, retry.backoff_multiplier), (5, 1000, 2.0));
        Ok(())
    });
}

#[test]
fn environment_alone_overrides_defaults() {
    Jail::expect_with(|jail| {
        jail.set_env("RUNVISOR__PERSISTENCE__FLUSH_INTERVAL_MS", "9");
        jail.set_env("RUNVISOR__KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS", "5");
        let config = Config::load(None).expect("valid");
        assert_eq!(config.persistence.flush_interval_ms, 9);
        assert_eq!(config.kafka.properties.get("fetch.wait.max.ms").map(String::as_str), Some("5"));
        assert_eq!(config.database.url, "sqlite://runvisor.db?mode=rwc");
        Ok(())
    });
}

#[test]
fn bad_values_are_rejected_with_key_value_and_rule() {
    Jail::expect_with(|jail| {
        jail.set_env("RUNVISOR__EXECUTOR__MAX_CONCURRENT_RUNS", "0");
        jail.set_env("RUNVISOR__PERSISTENCE__BATCH_MAX", "0");
        let err = Config::load(None).unwrap_err();
        let ConfigError::Invalid(problems) = &err else { panic!("{err}") };
        assert_eq!(
            problems,
            &["executor.max_concurrent_runs = 0: must be ≥ 1", "persistence.batch_max = 0: must be ≥ 1"]
        );
        Ok(())
    });
}

#[test]
fn wrong_types_and_unknown_keys_say_key_value_rule_and_where() {
    Jail::expect_with(|jail| {
        jail.set_env("RUNVISOR__EXECUTOR__MAX_CONCURRENT_RUNS", "lots");
        let err = Config::load(None).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid configuration:\n  executor.max_concurrent_runs = \"lots\": must be a whole number ≥ 0 \
             (environment variable RUNVISOR__EXECUTOR__MAX_CONCURRENT_RUNS)"
        );
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.create_file("typo.toml", "[executor]\nmax_concurent_runs = 5\n")?;
        let err = Config::load(Some("typo.toml".as_ref())).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "executor.max_concurent_runs: unknown setting; did you mean max_concurrent_runs? (in typo.toml, line 2)"
            ),
            "{err}"
        );
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.create_file("agent.toml", "[agents.A]\nurl = \"http://x\"\nprotocol = \"grpc\"\n")?;
        let err = Config::load(Some("agent.toml".as_ref())).unwrap_err().to_string();
        assert!(
            err.ends_with("agents.A.protocol = \"grpc\": must be one of jsonrpc, simple (in agent.toml, line 3)"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn a_named_file_must_exist() {
    Jail::expect_with(|_| {
        let err = Config::load(Some("absent.toml".as_ref())).unwrap_err();
        assert_eq!(err.to_string(), "config file absent.toml does not exist");
        Ok(())
    });
}

#[test]
fn the_default_file_documents_every_setting() {
    // Each key line in config/default.toml has a comment line right above it (or is a table header).
    let text = runvisor::config::DEFAULT_TOML;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        assert!(lines[i - 1].trim().starts_with('#'), "config/default.toml: `{line}` has no comment above it");
    }
}
