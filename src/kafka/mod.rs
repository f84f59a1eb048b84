//! Everything that crosses Kafka.
//!
//! - [`messages`]: the wire formats of CONTRACT.md §2 and §6 and how raw bytes become requests.

pub mod messages;
