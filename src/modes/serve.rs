//! `runvisor api`: the HTTP API alone, beside executors in other processes (the platform's
//! topology: an API container and `execution-consumer` containers).

use crate::config::Config;
use crate::kafka::Broker;

use super::{ApiServer, connect_and_migrate};

/// Serves the API until `shutdown` resolves.
pub async fn serve_api(config: &Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    if config.kafka.is_embedded() {
        anyhow::bail!(
            "runvisor api publishes requests for executors in other processes, so it needs a shared broker: \
             set kafka.brokers (RUNVISOR__KAFKA__BROKERS), or run everything in one process with `runvisor dev`"
        );
    }
    let broker = Broker::start(&config.kafka)?;
    broker.ensure_topics(&config.kafka).await?;
    let db = connect_and_migrate(config).await?;
    let server = ApiServer::start(config, db, &broker).await?;
    shutdown.await;
    tracing::info!("stopping: finishing requests in flight");
    server.stop().await;
    Ok(())
}
