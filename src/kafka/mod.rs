//! The Kafka transport: how records come in and go out. What they say is [`crate::wire`]'s.
//!
//! - [`offsets`]: the commit point of a partition whose runs finish out of order;
//! - [`ingress`]: the ingress actor and its poll loop;
//! - [`membership`]: group health: partitions nobody live consumes make the executors rejoin;
//! - [`producer`]: monitoring updates, the dead-letter topic, and `runvisor submit`;
//! - [`lag`]: the executors' consumer lag as the broker sees it, for the dashboard.
//!
//! `kafka.brokers = "embedded"` starts rdkafka's in-process mock cluster, so `runvisor run`/`dev`
//! and the faster tests need no broker; everything else speaks to real brokers.

pub mod ingress;
pub mod lag;
pub mod membership;
pub mod offsets;
pub mod producer;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::KafkaConfig;

/// The brokers runvisor talks to; owns the mock cluster when embedded (it stops when dropped).
pub struct Broker {
    bootstrap: String,
    _embedded: Option<MockCluster<'static, DefaultProducerContext>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("bootstrap", &self.bootstrap)
            .field("embedded", &self._embedded.is_some())
            .finish()
    }
}

impl Broker {
    pub fn start(config: &KafkaConfig) -> Result<Broker, KafkaError> {
        if config.is_embedded() {
            let cluster = MockCluster::new(1)?;
            Ok(Broker { bootstrap: cluster.bootstrap_servers(), _embedded: Some(cluster) })
        } else {
            Ok(Broker { bootstrap: config.brokers.clone(), _embedded: None })
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn is_embedded(&self) -> bool {
        self._embedded.is_some()
    }

    /// A client configuration: the passthrough properties, then runvisor's own.
    pub fn client_config(&self, config: &KafkaConfig) -> ClientConfig {
        let mut client = ClientConfig::new();
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        client.set("bootstrap.servers", &self.bootstrap);
        client
    }

    /// Creates the four topics where they are missing.
    pub async fn ensure_topics(&self, config: &KafkaConfig) -> Result<(), KafkaError> {
        if !config.create_topics {
            return Ok(());
        }
        let topics = [&config.requests_topic, &config.cancellations_topic, &config.monitoring_topic, &config.dlq_topic];
        if let Some(cluster) = &self._embedded {
            // The mock cluster does not serve the admin API; it creates topics directly.
            for topic in topics {
                match cluster.create_topic(topic, config.topic_partitions, 1) {
                    Ok(()) | Err(KafkaError::MockCluster(RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err(error) => return Err(error),
                }
            }
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.client_config(config).create()?;
        let new: Vec<NewTopic> =
            topics.iter().map(|t| NewTopic::new(t, config.topic_partitions, TopicReplication::Fixed(1))).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new, &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::AdminOp(code))
                        .inspect_err(|_| tracing::error!(%topic, "cannot create topic"));
                }
            }
        }
        Ok(())
    }
}
