//! The ingress actor: Kafka records in, runs out, offsets committed only behind finished work.
//!
//! A poll loop in its own task receives records and hands them to the actor, so the actor is never
//! blocked by the consumer. For each record the actor:
//! - sends undecodable ones to the dead-letter topic (and waits until the broker has them);
//! - records cancellations (CONTRACT.md §2);
//! - starts the run on the executor, or waits out another executor's lease on it.
//!
//! **Where the commit point is, and why nothing is lost.** Offsets are stored for commit only
//! through [`PartitionOffsets`]: a record's offset counts as handled once its run is terminal in
//! the database (or its dead letter is on the broker, or its cancellation is committed). The
//! stored position of a partition is the lowest offset still in flight, so every record at or after
//! it is read again by whoever owns the partition next, after a crash, a restart or a rebalance.
//! Re-reading is safe because a run_id is claimed before it runs: a terminal run is not run again,
//! a live one elsewhere is waited for, an abandoned one is resumed from its recorded attempts.
//! librdkafka's auto-commit only ever commits stored offsets (`enable.auto.offset.store=false`),
//! and a revoked partition's stored offsets are committed synchronously before it moves.
//!
//! **Backpressure.** At most `executor.max_concurrent_runs` runs are in flight; beyond that,
//! records wait in the actor and the assigned partitions are paused (the poll loop keeps polling,
//! so the group membership stays alive), and resumed once half the slots are free.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::membership::{Membership, Timing, watch_groups};
use super::offsets::PartitionOffsets;
use super::producer::dead_letter;
use crate::actors::run::{Disposition, RunOutcome, RunRequest};
use crate::config::Config;
use crate::executor::Executor;
use crate::observability::metrics as names;
use crate::wire::{PlanSource, PlanTexts, Request, decode_request};

/// A partition: (topic, partition).
type PartitionKey = (String, i32);

/// A record as the poll loop hands it over.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub enum IngressMsg {
    Record(Record),
    /// The record's work is done: its offset may be committed.
    Handled {
        partition: PartitionKey,
        generation: u64,
        offset: i64,
    },
    /// A run ended here, or turned out to be someone else's for now.
    RunEnded {
        record: Record,
        generation: u64,
        outcome: RunOutcome,
    },
    /// Try a held run again (its owner's lease should have expired).
    Redispatch {
        record: Record,
        generation: u64,
    },
    Assigned(Vec<PartitionKey>),
    Revoked(Vec<PartitionKey>),
    /// Stop taking records; answer once no run is in flight (or never, if some stay stuck).
    Drain(RpcReplyPort<()>),
    InFlight(RpcReplyPort<usize>),
}

/// Hands rebalances to the ingress actor, and commits before partitions move away.
#[derive(Debug)]
pub struct IngressContext {
    ingress: Mutex<Option<ActorRef<IngressMsg>>>,
}

impl ClientContext for IngressContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of each partition this
    /// member consumes, for `/metrics`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1 is unknown.
                if *partition < 0 || stats.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(names::CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(stats.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for IngressContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Stored offsets only ever cover handled records: commit them while we still may.
            // A lost assignment cannot commit (the partitions already belong to someone else).
            if !consumer.assignment_lost()
                && let Err(error) = consumer.commit_consumer_state(CommitMode::Sync)
            {
                tracing::debug!(%error, "nothing committed before the revocation");
            }
            self.tell(IngressMsg::Revoked(keys(partitions)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            self.tell(IngressMsg::Assigned(keys(partitions)));
        }
    }
}

impl IngressContext {
    fn tell(&self, message: IngressMsg) {
        if let Some(actor) = self.ingress.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = actor.cast(message);
        }
    }
}

fn keys(partitions: &TopicPartitionList) -> Vec<PartitionKey> {
    partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

pub type IngressConsumer = StreamConsumer<IngressContext>;

#[derive(Debug)]
pub struct IngressActor;

pub struct IngressArgs {
    /// Member of `kafka.group_id` on the requests topic: the executors share its partitions.
    pub requests: Arc<IngressConsumer>,
    /// Member of `<group_id>.cancellations` on the cancellations topic: in a group of its own so
    /// that each topic's partitions are balanced on their own (a sticky assignor balancing both
    /// topics together may give one executor every request partition).
    pub cancellations: Arc<IngressConsumer>,
    pub producer: FutureProducer,
    pub executor: Arc<Executor>,
    pub config: Config,
}

impl std::fmt::Debug for IngressArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressArgs").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Partition {
    offsets: PartitionOffsets,
    /// Bumped on every assignment, so work from an earlier ownership is not counted twice.
    generation: u64,
}

pub struct IngressState {
    args: IngressArgs,
    partitions: HashMap<PartitionKey, Partition>,
    generations: u64,
    /// Requests waiting for a free slot.
    waiting: VecDeque<(Record, u64)>,
    runs_in_flight: usize,
    paused: bool,
    draining: Option<RpcReplyPort<()>>,
    /// Inline plans decoded so far, so that the requests of one workflow share one document.
    plans: PlanTexts,
}

impl std::fmt::Debug for IngressState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressState").field("runs_in_flight", &self.runs_in_flight).finish_non_exhaustive()
    }
}

impl Actor for IngressActor {
    type Msg = IngressMsg;
    type State = IngressState;
    type Arguments = IngressArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<IngressMsg>,
        args: IngressArgs,
    ) -> Result<IngressState, ActorProcessingErr> {
        for consumer in [&args.requests, &args.cancellations] {
            *consumer.context().ingress.lock().unwrap_or_else(|p| p.into_inner()) = Some(myself.clone());
        }
        Ok(IngressState {
            args,
            partitions: HashMap::new(),
            generations: 0,
            waiting: VecDeque::new(),
            runs_in_flight: 0,
            paused: false,
            draining: None,
            plans: PlanTexts::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<IngressMsg>,
        message: IngressMsg,
        state: &mut IngressState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            IngressMsg::Record(record) => {
                let key = (record.topic.clone(), record.partition);
                let Some(partition) = state.partitions.get_mut(&key) else {
                    // A record of a partition that was revoked meanwhile: its next owner reads it.
                    return Ok(());
                };
                partition.offsets.begin(record.offset);
                let generation = partition.generation;
                if state.draining.is_some() {
                    return Ok(());
                }
                state.accept(&myself, record, generation);
            }
            IngressMsg::Handled { partition, generation, offset } => state.handled(&partition, generation, offset),
            IngressMsg::RunEnded { record, generation, outcome } => {
                state.runs_in_flight -= 1;
                let key = (record.topic.clone(), record.partition);
                if outcome.is_settled() {
                    state.handled(&key, generation, record.offset);
                } else if state.draining.is_none() {
                    // Held by another executor, or abandoned: try again once the lease is over.
                    let wait = match &outcome.disposition {
                        Disposition::HeldElsewhere { until, .. } => {
                            (*until - chrono::Utc::now().naive_utc()).to_std().unwrap_or_default()
                        }
                        _ => Duration::from_millis(state.args.config.executor.lease_ms),
                    };
                    tracing::info!(run_id = %outcome.run_id, disposition = ?outcome.disposition, wait_ms = wait.as_millis() as u64, "run held elsewhere; will ask again");
                    myself.send_after(wait + Duration::from_millis(100), move || IngressMsg::Redispatch {
                        record,
                        generation,
                    });
                }
                state.start_waiting(&myself);
                state.finish_drain_if_idle();
            }
            IngressMsg::Redispatch { record, generation } => {
                let key = (record.topic.clone(), record.partition);
                if state.draining.is_none() && state.partitions.get(&key).is_some_and(|p| p.generation == generation) {
                    state.accept(&myself, record, generation);
                }
            }
            IngressMsg::Assigned(keys) => {
                tracing::info!(partitions = ?keys, "partitions assigned");
                for key in keys {
                    state.generations += 1;
                    let generation = state.generations;
                    state.partitions.insert(key, Partition { offsets: PartitionOffsets::default(), generation });
                }
                if state.paused {
                    state.pause(true);
                }
            }
            IngressMsg::Revoked(keys) => {
                tracing::info!(partitions = ?keys, "partitions revoked");
                for key in &keys {
                    state.partitions.remove(key);
                }
                // Requests not yet started are left for the partitions' next owner.
                state.waiting.retain(|(record, _)| !keys.contains(&(record.topic.clone(), record.partition)));
            }
            IngressMsg::Drain(reply) => {
                state.waiting.clear();
                state.draining = Some(reply);
                state.pause(true);
                state.finish_drain_if_idle();
            }
            IngressMsg::InFlight(reply) => {
                let _ = reply.send(state.runs_in_flight);
            }
        }
        Ok(())
    }
}

impl IngressState {
    fn max_runs(&self) -> usize {
        self.args.config.executor.max_concurrent_runs
    }

    /// Decides what a record is and starts its work, or queues it while all slots are taken.
    fn accept(&mut self, myself: &ActorRef<IngressMsg>, record: Record, generation: u64) {
        let max_bytes = self.args.config.kafka.max_message_bytes;
        let key = (record.topic.clone(), record.partition);
        match decode_request(&record.payload, max_bytes, &mut self.plans) {
            Err(reason) => {
                tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "request rejected to the dead-letter topic");
                let producer = self.args.producer.clone();
                let dlq = self.args.config.kafka.dlq_topic.clone();
                let myself = myself.clone();
                tokio::spawn(async move {
                    dead_letter(&producer, &dlq, record.key.as_deref(), &record.payload, &reason.to_string()).await;
                    let _ = myself.cast(IngressMsg::Handled { partition: key, generation, offset: record.offset });
                });
            }
            Ok(Request::Cancel(cancel)) => {
                let executor = Arc::clone(&self.args.executor);
                let myself = myself.clone();
                tokio::spawn(async move {
                    let recorded = executor.cancel_and_wait(cancel).await;
                    if recorded.is_ok() {
                        let _ = myself.cast(IngressMsg::Handled { partition: key, generation, offset: record.offset });
                    }
                });
            }
            Ok(request) => {
                if self.runs_in_flight >= self.max_runs() {
                    self.waiting.push_back((record, generation));
                    self.pause(true);
                    return;
                }
                let run = match request {
                    Request::Execute(request) => RunRequest {
                        run_id: request.run_id,
                        definition_id: request.workflow_definition_id,
                        plan: request.plan,
                        input: Arc::new(serde_json::Value::Object(request.input_data)),
                        triggered_by: request.triggered_by,
                    },
                    Request::Rejected { run_id, reason } => {
                        tracing::warn!(%run_id, %reason, "request cannot run; its run fails");
                        RunRequest {
                            run_id,
                            plan: PlanSource::Unusable(reason),
                            definition_id: None,
                            input: Arc::new(serde_json::Value::Object(Default::default())),
                            triggered_by: None,
                        }
                    }
                    Request::Cancel(_) => unreachable!("handled above"),
                };
                let Ok(done) = self.args.executor.submit(run) else { return };
                self.runs_in_flight += 1;
                let myself = myself.clone();
                tokio::spawn(async move {
                    // The executor answers once the run is settled or known to be someone else's.
                    if let Ok(outcome) = done.await {
                        let _ = myself.cast(IngressMsg::RunEnded { record, generation, outcome });
                    }
                });
            }
        }
    }

    fn handled(&mut self, key: &PartitionKey, generation: u64, offset: i64) {
        let Some(partition) = self.partitions.get_mut(key) else { return };
        if partition.generation != generation {
            return;
        }
        if let Some(point) = partition.offsets.finish(offset) {
            let mut list = TopicPartitionList::new();
            if list.add_partition_offset(&key.0, key.1, Offset::Offset(point)).is_ok()
                && let Err(error) = self.consumer_of(&key.0).store_offsets(&list)
            {
                // The partition may have moved meanwhile; its next owner re-reads from the last commit.
                tracing::debug!(%error, topic = %key.0, partition = key.1, "offset not stored");
            }
        }
    }

    fn start_waiting(&mut self, myself: &ActorRef<IngressMsg>) {
        while self.runs_in_flight < self.max_runs() {
            let Some((record, generation)) = self.waiting.pop_front() else { break };
            self.accept(myself, record, generation);
        }
        if self.paused
            && self.draining.is_none()
            && self.waiting.is_empty()
            && self.runs_in_flight <= self.max_runs() / 2
        {
            self.pause(false);
        }
    }

    fn consumer_of(&self, topic: &str) -> &IngressConsumer {
        if topic == self.args.config.kafka.cancellations_topic { &self.args.cancellations } else { &self.args.requests }
    }

    /// Pauses or resumes the request partitions (cancellations keep flowing: they free slots).
    fn pause(&mut self, pause: bool) {
        let consumer = &self.args.requests;
        let Ok(assignment) = consumer.assignment() else { return };
        let result = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
        if let Err(error) = result {
            tracing::warn!(%error, pause, "cannot pause or resume partitions");
        }
        self.paused = pause;
        let paused = if pause { assignment.count() } else { 0 };
        metrics::gauge!(names::PARTITIONS_PAUSED).set(paused as f64);
    }

    fn finish_drain_if_idle(&mut self) {
        if self.runs_in_flight == 0
            && let Some(reply) = self.draining.take()
        {
            let _ = reply.send(());
        }
    }
}

/// How long a fetch may wait on the broker for records, unless `kafka.properties` says. On a broker
/// that answers a waiting fetch as soon as records arrive (Kafka), it only bounds idle polling; on
/// one that answers when the wait is over (tansu 0.6), it adds half of it to a request's latency on
/// average, and every fetch costs the broker CPU. Requests wait 10 ms; cancellations, rarer and
/// less urgent, 100 ms, which takes most of the idle fetching off such a broker.
const REQUESTS_FETCH_WAIT_MS: &str = "10";
const CANCELLATIONS_FETCH_WAIT_MS: &str = "100";

/// The consumer of a group member: auto-commit of *stored* offsets only.
pub fn consumer(
    broker: &super::Broker,
    config: &Config,
    group_id: &str,
    fetch_wait_ms: &'static str,
) -> Result<IngressConsumer, rdkafka::error::KafkaError> {
    let kafka = &config.kafka;
    let property = |key: &str, default: &'static str| kafka.properties.get(key).map_or(default, String::as_str);
    let session_timeout = session_timeout(broker, config).as_millis().to_string();
    // librdkafka's default (eager) assignors stay: on tansu 0.6.0 a cooperative rejoin after the
    // group leader's death leaves the group waiting for the dead leader for good, whereas an eager
    // member's leave and rejoin (see `membership`) makes it reassign.
    let mut client = broker.client_config(kafka);
    client
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_timeout)
        .set("heartbeat.interval.ms", property("heartbeat.interval.ms", "1000"))
        .set("fetch.wait.max.ms", property("fetch.wait.max.ms", fetch_wait_ms))
        .set("statistics.interval.ms", property("statistics.interval.ms", "5000"));
    client.create_with_context(IngressContext { ingress: Mutex::new(None) })
}

/// How long the group coordinator waits for a silent member before reassigning its partitions:
/// `session.timeout.ms` from `kafka.properties`, else 10 s (6 s on the embedded broker, whose
/// group joins are slow).
pub fn session_timeout(broker: &super::Broker, config: &Config) -> Duration {
    let default = if broker.is_embedded() { 6_000 } else { 10_000 };
    let ms = config.kafka.properties.get("session.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(default);
    Duration::from_millis(ms)
}

/// Receives records and hands them to the ingress actor until `stop` turns true.
pub async fn poll_loop(consumer: Arc<IngressConsumer>, ingress: ActorRef<IngressMsg>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            received = consumer.recv() => match received {
                Ok(message) => {
                    let record = Record {
                        topic: message.topic().to_string(),
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    };
                    if ingress.cast(IngressMsg::Record(record)).is_err() {
                        return;
                    }
                }
                Err(error) => tracing::warn!(%error, "kafka consumer error"),
            },
        }
    }
}

/// A running consumer-group member: ingress actor, poll loops and executor.
pub struct GroupMember {
    pub executor: Arc<Executor>,
    pub ingress: ActorRef<IngressMsg>,
    consumers: [Arc<IngressConsumer>; 2],
    stop: watch::Sender<bool>,
    polls: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember").finish_non_exhaustive()
    }
}

impl GroupMember {
    /// Joins the groups and starts taking requests.
    pub async fn start(
        broker: &super::Broker,
        config: &Config,
        executor: Arc<Executor>,
    ) -> anyhow::Result<GroupMember> {
        let kafka = &config.kafka;
        broker.ensure_topics(kafka).await?;
        let requests = Arc::new(consumer(broker, config, &kafka.group_id, REQUESTS_FETCH_WAIT_MS)?);
        requests.subscribe(&[&kafka.requests_topic])?;
        let cancellations =
            Arc::new(consumer(broker, config, &cancellations_group(kafka), CANCELLATIONS_FETCH_WAIT_MS)?);
        cancellations.subscribe(&[&kafka.cancellations_topic])?;
        let producer = super::producer::producer(broker, kafka)?;
        let args = IngressArgs {
            requests: Arc::clone(&requests),
            cancellations: Arc::clone(&cancellations),
            producer,
            executor: Arc::clone(&executor),
            config: config.clone(),
        };
        let (ingress, _) = Actor::spawn(None, IngressActor, args).await?;
        let stop = watch::Sender::new(false);
        let mut polls: Vec<_> = [&requests, &cancellations]
            .into_iter()
            .map(|c| tokio::spawn(poll_loop(Arc::clone(c), ingress.clone(), stop.subscribe())))
            .collect();
        let memberships = vec![
            Membership {
                group_id: kafka.group_id.clone(),
                topic: kafka.requests_topic.clone(),
                consumer: Arc::clone(&requests),
            },
            Membership {
                group_id: cancellations_group(kafka),
                topic: kafka.cancellations_topic.clone(),
                consumer: Arc::clone(&cancellations),
            },
        ];
        let timing = Timing::for_session_timeout(session_timeout(broker, config));
        let persistence = executor.persistence().clone();
        let owner = executor.owner().to_string();
        polls.push(tokio::spawn(watch_groups(memberships, persistence, owner, timing, stop.subscribe())));
        Ok(GroupMember { executor, ingress, consumers: [requests, cancellations], stop, polls })
    }

    pub async fn runs_in_flight(&self) -> usize {
        ractor::call!(self.ingress, IngressMsg::InFlight).unwrap_or(0)
    }

    /// Graceful stop (CONTRACT.md §7.5): take no new requests, let runs in flight finish within
    /// `grace`, release the leases of runs still going, commit what is handled, leave the group.
    ///
    /// The order matters. Leases are released *before* the group is left: the partitions' next
    /// owner is handed the unfinished runs' requests (their offsets were never committed) as soon
    /// as the rebalance ends, and a claim that finds a live lease waits for it to expire.
    pub async fn stop(self, grace: Duration) {
        let drained = tokio::time::timeout(grace, async { ractor::call!(self.ingress, IngressMsg::Drain) }).await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "runs still in flight after the grace period; their leases are released and they resume elsewhere"
            );
        }
        self.stop.send_replace(true);
        for poll in self.polls {
            let _ = poll.await;
        }
        self.executor.shutdown(grace).await;
        // The ingress stores the offsets of runs that ended meanwhile before it stops.
        let _ = self.ingress.stop_and_wait(None, Some(grace)).await;
        for consumer in &self.consumers {
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(%error, "final commit");
            }
            consumer.unsubscribe();
        }
        // Closing a consumer whose group assignment is still pending can block for ever inside
        // librdkafka (librdkafka#4041, rust-rdkafka#509): a SIGTERM right after start would then
        // never exit. Everything that matters is committed and released by now, so the consumers
        // are closed on a thread of their own, which the process does not wait for.
        let consumers = self.consumers;
        let _ = std::thread::Builder::new().name("consumer-close".into()).spawn(move || drop(consumers));
    }
}

/// The cancellations topic's consumer group: one of its own, so each topic is balanced on its own.
fn cancellations_group(kafka: &crate::config::KafkaConfig) -> String {
    format!("{}.cancellations", kafka.group_id)
}
