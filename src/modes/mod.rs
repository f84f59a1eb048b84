//! The composition root: the one place that assembles runvisor's parts into the modes it runs in.
//!
//! | mode | parts |
//! |---|---|
//! | [`consume`] | database, broker, executor, consumer-group member (ingress), outbox relay, metrics listener |
//! | [`serve_api`] | database, broker (producer only), HTTP API, outbox relay |
//! | [`dev`] | everything above in one process, on the embedded defaults (SQLite, in-process broker) |
//!
//! Everything else in the crate is a part: it takes what it needs as arguments and starts nothing
//! it was not asked to. The one-shot commands (`run`, `submit`, `runs`, …) are the command line's
//! ([`crate::cli`]).

mod api_server;
mod consume;
mod dev;
mod node;
mod serve;

pub use api_server::ApiServer;
pub use consume::consume;
pub use dev::dev;
pub use node::ExecutorNode;
pub use serve::serve_api;

use sea_orm::DatabaseConnection;

use crate::config::Config;

/// Opens the configured database and brings its schema up to date.
pub async fn connect_and_migrate(config: &Config) -> Result<DatabaseConnection, crate::db::DbError> {
    let db = crate::db::connect(&config.database).await?;
    crate::db::migrate(&db).await?;
    Ok(db)
}

/// Resolves on SIGTERM or SIGINT: how every long-running mode is told to stop.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `runvisor healthcheck`: succeeds when `url` answers 2xx within 5 s.
pub async fn healthcheck(url: &str) -> anyhow::Result<()> {
    let response = reqwest::Client::new().get(url).timeout(std::time::Duration::from_secs(5)).send().await?;
    anyhow::ensure!(response.status().is_success(), "{url} answered {}", response.status());
    Ok(())
}
