//! An executor node: the executor's supervision tree joined to the consumer group, publishing
//! monitoring updates. `consume` is a node alone; `dev` runs one beside the API.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::config::Config;
use crate::executor::{Executor, ExecutorOptions};
use crate::kafka::Broker;
use crate::kafka::ingress::GroupMember;
use crate::kafka::producer::{MonitoringSink, producer};

/// A running executor and its consumer-group membership.
#[derive(Debug)]
pub struct ExecutorNode {
    member: GroupMember,
}

impl ExecutorNode {
    /// Starts the executor on a migrated database and joins the group on `broker`.
    pub async fn start(config: &Config, broker: &Broker, db: DatabaseConnection) -> anyhow::Result<ExecutorNode> {
        let monitoring = producer(broker, &config.kafka)?;
        let events = Arc::new(MonitoringSink::new(monitoring, config.kafka.monitoring_topic.clone()));
        let options = ExecutorOptions { events: Some(events), tap: None, sweep: true };
        let executor = Arc::new(Executor::start(config, db, options).await?);
        tracing::info!(owner = executor.owner(), brokers = broker.bootstrap(), group = %config.kafka.group_id, "consuming");
        let member = GroupMember::start(broker, config, executor).await?;
        Ok(ExecutorNode { member })
    }

    pub fn executor(&self) -> &Arc<Executor> {
        &self.member.executor
    }

    /// The graceful stop of CONTRACT.md §7.5, within `executor.shutdown_grace_ms`.
    pub async fn stop(self, config: &Config) {
        tracing::info!("stopping: no new requests; waiting for runs in flight");
        self.member.stop(config.shutdown_grace()).await;
    }
}
