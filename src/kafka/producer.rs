//! What runvisor writes to Kafka: monitoring updates, rejected requests, and submitted requests.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::Broker;
use crate::actors::events::{Event, EventSink};
use crate::config::KafkaConfig;

/// A producer tuned for small messages that should leave at once.
pub fn producer(broker: &Broker, config: &KafkaConfig) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    broker.client_config(config).set("linger.ms", "1").set("acks", "all").set("message.timeout.ms", "30000").create()
}

/// Publishes every event as a monitoring update (CONTRACT.md §6), keyed by run_id. Sends are
/// queued in librdkafka and retried there; the executor never waits for them.
pub struct MonitoringSink {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for MonitoringSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitoringSink").field("topic", &self.topic).finish()
    }
}

impl MonitoringSink {
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        Self { producer, topic }
    }
}

impl EventSink for MonitoringSink {
    fn emit(&self, event: Event) {
        let update = event.to_update();
        let Ok(payload) = serde_json::to_vec(&update) else { return };
        let record = FutureRecord::to(&self.topic).key(update.run_id.as_str()).payload(&payload);
        if let Err((error, _)) = self.producer.send_result(record) {
            tracing::warn!(%error, run_id = %update.run_id, "monitoring update dropped");
        }
    }
}

/// Sends a rejected message to the dead-letter topic with its reason, retrying (with backoff, for
/// as long as it takes) until the broker has it: the request's offset is committed only after.
pub async fn dead_letter(producer: &FutureProducer, topic: &str, key: Option<&[u8]>, payload: &[u8], reason: &str) {
    let send = || async {
        let headers = OwnedHeaders::new().insert(Header { key: "error", value: Some(reason) });
        let mut record = FutureRecord::to(topic).payload(payload).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer.send(record, Duration::from_secs(10)).await.map_err(|(error, _)| error)
    };
    let delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    let _ = send
        .retry(delays)
        .notify(|error, _| tracing::warn!(%error, "cannot write to the dead-letter topic yet; retrying"))
        .await;
}

/// Publishes records and waits until the broker has each (acks=all), within a time limit: what
/// producers of requests (the API, the outbox relay) use.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("timeout", &self.timeout).finish()
    }
}

impl Publisher {
    pub fn new(broker: &Broker, config: &KafkaConfig, timeout: Duration) -> Result<Self, rdkafka::error::KafkaError> {
        // Requests up to kafka.max_message_bytes, plus room for the key and headers (librdkafka's
        // own default, 1,000,000 bytes, is below the 1 MiB the executors accept).
        let max_bytes = (config.max_message_bytes + 4096).max(1_000_000);
        let producer = broker
            .client_config(config)
            .set("linger.ms", "1")
            .set("acks", "all")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .set("message.max.bytes", max_bytes.to_string())
            .create()?;
        Ok(Self { producer, timeout })
    }

    /// Whether a failed send would fail again however often it is tried: the record is too large
    /// for the producer or the broker, or the topic refuses this client.
    pub fn is_permanent(error: &rdkafka::error::KafkaError) -> bool {
        use rdkafka::error::RDKafkaErrorCode as Code;
        matches!(
            error.rdkafka_error_code(),
            Some(
                Code::MessageSizeTooLarge
                    | Code::InvalidMessageSize
                    | Code::MessageBatchTooLarge
                    | Code::TopicAuthorizationFailed
                    | Code::InvalidRecord
            )
        )
    }

    /// Whether the brokers answer a metadata request within `timeout` (readiness checks).
    pub async fn check(&self, timeout: Duration) -> Result<(), rdkafka::error::KafkaError> {
        use rdkafka::producer::Producer as _;
        let producer = self.producer.clone();
        // librdkafka's metadata call blocks its thread.
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).map(|_| ()))
            .await
            .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
    }

    /// Sends one record keyed by `key`; an error says why the broker does not have it.
    pub async fn send(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), rdkafka::error::KafkaError> {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        self.producer.send(record, self.timeout).await.map(|_| ()).map_err(|(error, _)| error)
    }
}

/// Publishes one execution request and waits until the broker has it (`runvisor submit`).
pub async fn submit(config: &KafkaConfig, message: &crate::wire::ExecutionRequestMessage) -> anyhow::Result<()> {
    let broker = Broker::start(config)?;
    let publisher = Publisher::new(&broker, config, Duration::from_secs(30))?;
    publisher.send(&config.requests_topic, &message.run_id, &serde_json::to_vec(message)?).await?;
    Ok(())
}
