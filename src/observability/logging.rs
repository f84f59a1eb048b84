//! Logs: `tracing` events on stderr, as readable lines or as JSON objects (`log.format`).
//!
//! Colour only when stderr is a terminal, so files and container logs hold no escape codes. The
//! filter is `log.filter`, or `RUST_LOG` when set. Spans carry `run_id`, `step_id` and `attempt`,
//! so in JSON every event of a run can be selected by its run_id.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; later calls do nothing (tests start several modes).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    };
}
