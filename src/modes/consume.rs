//! `runvisor consume`: one executor, one member of the consumer group, until told to stop.

use crate::config::Config;
use crate::kafka::Broker;

use super::{ExecutorNode, connect_and_migrate};

/// Runs an executor until `shutdown` resolves, then stops it gracefully.
pub async fn consume(config: &Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let broker = Broker::start(&config.kafka)?;
    let db = connect_and_migrate(config).await?;
    let node = ExecutorNode::start(config, &broker, db).await?;
    shutdown.await;
    node.stop(config).await;
    Ok(())
}
