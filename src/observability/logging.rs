//! Logs: `tracing` events on stderr, as readable lines or as JSON objects (`log.format`).
//!
//! Colour only when stderr is a terminal and `NO_COLOR` is unset, so files and container logs
//! hold no escape codes. The filter is `log.filter`, or `RUST_LOG` when set. Spans carry `run_id`,
//! `step_id` and `attempt`, so in JSON every event of a run can be selected by its run_id.
//!
//! Panics are logged as one event, not a backtrace on stderr: most are inside actors whose
//! supervisors handle them (a StepActor's panic is a failed attempt, retried per policy), so they
//! are news for the log, not a crash of the process.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// What one-shot commands (`run`, `runs`, `submit`, …) log unless `RUST_LOG` says otherwise:
/// warnings, and migrations being applied. librdkafka's own chatter about an unreachable broker is
/// left out: the command says so in one line.
const ONE_SHOT_FILTER: &str = "warn,runvisor::db=info,librdkafka=off,rdkafka=off";

/// Installs the global subscriber and the panic hook; later calls do nothing (tests start several
/// modes in one process).
pub fn init(config: &LogConfig, one_shot: bool) {
    let configured = if one_shot { ONE_SHOT_FILTER } else { config.filter.as_str() };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(configured))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let installed = match config.format {
        LogFormat::Human => builder.with_ansi(colour).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    };
    if installed.is_ok() {
        std::panic::set_hook(Box::new(log_panic));
    }
}

fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
    let thread = std::thread::current();
    match thread.name() {
        Some("main") => tracing::error!(panic = %message, %location, "runvisor panicked"),
        _ => tracing::warn!(panic = %message, %location, "a task panicked; its supervisor handles it"),
    }
}
