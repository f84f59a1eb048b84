//! The executors' consumer lag as any process can see it: per partition of the requests topic, the
//! broker's high watermark minus the offset the executors' consumer group last committed.
//!
//! Executors report their own lag (`runvisor_consumer_lag`, from librdkafka's statistics), but only
//! for the partitions they hold and only on their own `/metrics`. The dashboard runs in the API
//! process, so it asks the broker: a consumer in the executors' group that never subscribes (so it
//! never joins the group or moves its offsets) reads the committed offsets and the watermarks.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One partition's lag. `committed` is `None` when the group has committed nothing there yet: then
/// every record from the low watermark on counts as waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    pub committed: Option<i64>,
    pub high_watermark: i64,
    pub lag: i64,
}

/// The group's lag on `topic`, each broker request bounded by `timeout`. Blocking (librdkafka's
/// calls are): run it on a blocking thread.
pub fn group_lag(
    client: &ClientConfig,
    group_id: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionLag>, KafkaError> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut wanted = TopicPartitionList::new();
    for partition in &partitions {
        wanted.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(wanted, timeout)?;
    let mut lags = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let committed = match committed.find_partition(topic, partition).map(|p| p.offset()) {
            Some(Offset::Offset(offset)) => Some(offset),
            _ => None,
        };
        let lag = (high - committed.unwrap_or(low)).max(0);
        lags.push(PartitionLag { partition, committed, high_watermark: high, lag });
    }
    Ok(lags)
}
