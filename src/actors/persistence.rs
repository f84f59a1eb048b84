//! The persistence actor: the only code that touches the database while the executor runs.
//!
//! Writers do not send their writes through the actor's mailbox. They append them to a [`Journal`]
//! shared with the actor's supervisor, then wake the actor. The actor commits the journal's head in
//! one transaction (up to `persistence.batch_max` writes) and only then removes those writes and
//! acknowledges them. So:
//! - a write is acknowledged only after the transaction holding it committed;
//! - if the actor crashes or is killed mid-batch, the batch is still at the journal's head, and the
//!   actor its supervisor restarts commits it again; nothing queued or acknowledged is lost;
//! - while a transaction is in flight new writes accumulate, so the next batch is larger: group
//!   commit, which batches under load without delaying a lone write.
//!
//! Replaying a batch that had in fact committed is harmless because every write is idempotent and
//! moves rows only forward: run rows are upserted only while not terminal, attempt rows are inserted
//! if absent and finished only while RUNNING.
//!
//! A database error that may pass (connection lost, server restarting) keeps the batch and retries
//! it with backoff, indefinitely. An error that cannot pass (a constraint violation) is narrowed to
//! the write that causes it by retrying one write at a time; that write is acknowledged with the
//! error and dropped, so one bad write cannot stall everyone else's.
//!
//! Files: this one holds the writes' types, the journal, the handle writers use and the actor's
//! loop; `batch` writes a batch in few multi-row statements (PostgreSQL), `rows` one write at a time,
//! `fence` keeps a previous owner's writes off a run another executor took, and `reads` answers
//! the reads and the claim that need a transaction of their own.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::NaiveDateTime;
use entity::{RunStatus, StepStatus, agent, step_execution, workflow_definition, workflow_run};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

mod batch;
mod fence;
mod reads;
mod rows;

use reads::answer;
use rows::apply;

use super::events::{Event, EventSink, NoEvents};
use crate::config::PersistenceConfig;
use crate::db::is_transient;
use crate::observability::metrics as names;

/// A run row as the executor writes it: inserted if absent, else advanced if not yet terminal.
#[derive(Debug, Clone, PartialEq)]
pub struct RunWrite {
    pub run_id: String,
    pub workflow_id: String,
    pub workflow_name: String,
    pub definition_id: Option<Uuid>,
    /// The run's input, shared with the RunActor: a run writes its row several times.
    pub input: Arc<Value>,
    pub triggered_by: Option<String>,
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub cancelled_by: Option<String>,
    /// The executor writing: the write takes effect only while the run is unclaimed or claimed by
    /// this owner, so an executor that lost its lease cannot overwrite its successor's work.
    pub owner: Option<String>,
    /// For a cancellation: when it was asked for. It takes effect only if the run was not retried
    /// after that, so a late cancellation message cannot cancel the run's next round.
    pub cancel_requested_at: Option<NaiveDateTime>,
    /// An inline plan, stored with a row this write creates so the run can be retried or
    /// resumed without its request (`workflow_runs.workflow_plan`).
    pub plan: Option<Arc<Value>>,
    pub at: NaiveDateTime,
}

/// A claim on a run: insert it RUNNING if absent, or take it if unclaimed or its lease expired.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The row to insert when none exists (status RUNNING).
    pub run: RunWrite,
    pub owner: String,
    pub lease: Duration,
    /// The run's first attempt, written in the claim's own transaction when the claim takes a run
    /// nobody claimed before (and dropped otherwise: a run claimed after others holds their
    /// attempts, and the RunActor decides what to start only once it has read them). Why: it
    /// saves a run one commit, the one between its claim and its first call, and nothing can
    /// happen between the two that the attempt's RUNNING row would get wrong.
    pub first_attempt: Option<AttemptStart>,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The run is ours now; `history` holds the attempts an earlier owner recorded.
    Claimed {
        history: Vec<step_execution::Model>,
        taken_over: bool,
        /// How often the run was retried through the API: attempts of earlier rounds are not
        /// counted against the current round's retry budget.
        retry_round: i32,
        /// When it was last retried (cancellations asked for before are stale).
        retried_at: Option<NaiveDateTime>,
        /// The claim's `first_attempt` is committed with it.
        wrote_first_attempt: bool,
    },
    /// The run already ended: nothing to do.
    Terminal(Box<workflow_run::Model>),
    /// Another executor holds a live lease on it.
    Held { owner: String, until: NaiveDateTime },
}

/// A run this executor holds, as the lease renewal found it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseState {
    pub run_id: String,
    pub status: RunStatus,
    pub owner: Option<String>,
}
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptStart {
    pub id: String,
    pub run_id: String,
    pub step_id: String,
    pub agent_name: String,
    /// The call's input, shared with the RunActor and the StepActor making the call.
    pub input: Arc<Value>,
    pub started_at: NaiveDateTime,
    pub parent_step_id: Option<String>,
    pub branch_name: Option<String>,
    pub join_policy: Option<String>,
    pub loop_iteration_index: Option<i32>,
    pub attempt: i32,
    /// The run's retry round (its `retry_count` when this executor claimed it).
    pub retry_round: i32,
    /// The executor writing: fenced off once another one has claimed the run.
    pub owner: String,
}

/// The end of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub id: String,
    pub run_id: String,
    /// The executor writing: fenced off once another one has claimed the run.
    pub owner: String,
    pub status: StepStatus,
    /// The call's output, shared with the run's record of step outputs.
    pub output: Option<Arc<Value>>,
    pub error: Option<String>,
    pub at: NaiveDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    Run(Box<RunWrite>),
    AttemptStarted(Box<AttemptStart>),
    AttemptEnded(Box<AttemptEnd>),
    /// Ends every RUNNING attempt of a run: used when the actor that owned them is gone.
    AbandonAttempts {
        run_id: String,
        /// The executor writing: fenced off once another one has claimed the run.
        owner: String,
        status: StepStatus,
        message: String,
        at: NaiveDateTime,
    },
    /// Claims a run nobody has claimed: inserts it RUNNING, or takes it if it is PENDING and was
    /// never claimed nor retried, and then inserts the claim's first attempt. Acknowledged with 1
    /// if it did, 0 if the run exists otherwise (then nothing is written, and the full claim,
    /// [`ReadRequest::Claim`], decides). Most runs are claimed this way, in
    /// the same transaction as other runs' writes instead of a transaction of their own.
    ClaimNew(Box<Claim>),
    /// Writes nothing; acknowledged once everything before it is committed.
    Barrier,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    #[error("the database rejected a write: {0}")]
    Rejected(String),
    #[error("the persistence actor is gone")]
    Unavailable,
    #[error("database read failed: {0}")]
    Read(String),
    /// The run is another executor's now (it claimed the run after this one's lease expired):
    /// nothing of this write landed, and the writer must stop its copy of the run.
    #[error("run '{run_id}' was taken over by executor '{holder}'; this executor's write was not applied")]
    Fenced { run_id: String, holder: String },
}

/// A run with its attempts, as stored.
pub type StoredRun = (workflow_run::Model, Vec<step_execution::Model>);

/// Reads the executor needs; answered between write batches.
#[derive(Debug)]
pub enum ReadRequest {
    Agents(RpcReplyPort<Result<Vec<agent::Model>, PersistError>>),
    Definition(Uuid, RpcReplyPort<Result<Option<workflow_definition::Model>, PersistError>>),
    Run(String, RpcReplyPort<Result<Option<StoredRun>, PersistError>>),
    Claim(Box<Claim>, RpcReplyPort<Result<ClaimOutcome, PersistError>>),
    /// Extends `owner`'s leases on its RUNNING runs until `until`, and reports the state of `runs`.
    Renew {
        owner: String,
        until: NaiveDateTime,
        runs: Vec<String>,
        reply: RpcReplyPort<Result<Vec<LeaseState>, PersistError>>,
    },
    /// Ends `owner`'s leases now, so that other executors may take its unfinished runs at once.
    Release {
        owner: String,
        reply: RpcReplyPort<Result<u64, PersistError>>,
    },
    /// Runs nobody has touched since `cutoff`: RUNNING with a lease that expired before it, or
    /// PENDING and not updated since (the sweeper's candidates), oldest first, at most `limit`.
    Orphans {
        cutoff: NaiveDateTime,
        limit: u64,
        reply: RpcReplyPort<Result<Vec<workflow_run::Model>, PersistError>>,
    },
    /// Records the partitions `owner` holds in each consumer group until `until`, and answers, per
    /// group in the same order, the partitions that live members (this one included) hold.
    Membership {
        owner: String,
        until: NaiveDateTime,
        held: Vec<(String, Vec<i32>)>,
        reply: RpcReplyPort<Result<Vec<BTreeSet<i32>>, PersistError>>,
    },
}

#[derive(Debug)]
pub enum PersistMsg {
    /// The journal has writes.
    Wake,
    /// A retry delay after a database error has passed.
    RetryAfterError,
    Read(ReadRequest),
}

/// What became of one write: committed (with the rows it changed), or not applied and why.
type Outcome = Result<u64, PersistError>;

/// Told once a write is committed (with the rows it changed), or rejected.
type Ack = oneshot::Sender<Outcome>;

/// A write queued without waiting: it is settled (committed or rejected) by the time any write
/// queued after it is acknowledged, since the journal commits in order.
pub type Deferred = oneshot::Receiver<Result<u64, PersistError>>;

/// The outcome of a deferred write, if it is settled.
pub fn settled(deferred: &mut Deferred) -> Option<Result<(), PersistError>> {
    match deferred.try_recv() {
        Ok(result) => Some(result.map(|_| ())),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(oneshot::error::TryRecvError::Closed) => Some(Err(PersistError::Unavailable)),
    }
}

struct Pending {
    op: Arc<WriteOp>,
    ack: Option<Ack>,
    /// Reported once the write is committed, so observers never hear of a state the database
    /// does not hold, and hear of it even if the writer's actor died meanwhile.
    event: Option<Event>,
    queued_at: Instant,
}

/// Writes waiting to be committed. It outlives any one persistence actor.
pub struct Journal {
    events: Arc<dyn EventSink>,
    queue: Mutex<VecDeque<Pending>>,
    /// A `Wake` is on its way to the actor; saves sending one per write under load.
    wake_sent: AtomicBool,
    /// Transactions committed and writes they held: the batching the benchmarks report.
    transactions: AtomicU64,
    committed: AtomicU64,
    /// Commits that met a passing database error and were tried again later.
    transient_failures: AtomicU64,
    /// Until when (Unix ms) no other executor can have claimed any run of this one, so writes need
    /// no owner check (see [`fence`]); 0 until the first lease renewal succeeds.
    fence_free_until_ms: AtomicI64,
}

/// What the journal has done so far: batching and the database's health, as an operator reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub transactions: u64,
    pub writes: u64,
    pub transient_failures: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("len", &self.len()).finish()
    }
}

impl Default for Journal {
    fn default() -> Self {
        Self::new(Arc::new(NoEvents))
    }
}

impl Journal {
    /// A journal that reports committed writes' events to `events`.
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        Self {
            events,
            queue: Mutex::default(),
            wake_sent: AtomicBool::new(false),
            transactions: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            transient_failures: AtomicU64::new(0),
            fence_free_until_ms: AtomicI64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> JournalStats {
        JournalStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            writes: self.committed.load(Ordering::Relaxed),
            transient_failures: self.transient_failures.load(Ordering::Relaxed),
        }
    }

    /// Hands every queued write to `commit` and acknowledges it: for a store that keeps nothing
    /// durable ([`super::memory::MemoryStore`]).
    pub(crate) fn commit_all_with(&self, mut commit: impl FnMut(&WriteOp)) {
        self.wake_sent.store(false, Ordering::Release);
        let count = {
            let queue = self.lock();
            queue.iter().for_each(|p| commit(&p.op));
            queue.len()
        };
        acknowledge(self, vec![Ok(1); count]);
    }
}

/// How the rest of the executor writes and reads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PersistenceHandle {
    journal: Arc<Journal>,
    /// The current persistence actor; replaced by its supervisor after a restart.
    actor: Arc<RwLock<Option<ActorRef<PersistMsg>>>>,
    /// Counts the actors installed so far, so observers can wait for a restart.
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl PersistenceHandle {
    pub fn new(journal: Arc<Journal>) -> Self {
        Self { journal, actor: Arc::default(), generation: Arc::new(tokio::sync::watch::Sender::new(0)) }
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    pub(crate) fn set_actor(&self, actor: Option<ActorRef<PersistMsg>>) {
        let installed = actor.is_some();
        *self.actor.write().unwrap_or_else(|p| p.into_inner()) = actor;
        if installed {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Changes each time a (re)started persistence actor takes over.
    pub fn generations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn actor(&self) -> Option<ActorRef<PersistMsg>> {
        self.actor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn enqueue(&self, op: WriteOp, event: Option<Event>, ack: Option<Ack>) {
        self.journal.lock().push_back(Pending { op: Arc::new(op), ack, event, queued_at: Instant::now() });
        if !self.journal.wake_sent.swap(true, Ordering::AcqRel)
            && let Some(actor) = self.actor()
        {
            // If the actor is between crash and restart, the cast fails; the restarted actor wakes
            // itself on start, so the write still goes out.
            let _ = actor.cast(PersistMsg::Wake);
        }
    }

    /// Queues a write and waits until it is committed.
    pub async fn write(&self, op: WriteOp) -> Result<(), PersistError> {
        self.write_deferred(op, None).await.unwrap_or(Err(PersistError::Unavailable)).map(|_| ())
    }

    /// Queues a write, waits until it is committed, and has `event` reported right after.
    pub async fn write_and_report(&self, op: WriteOp, event: Event) -> Result<(), PersistError> {
        self.write_deferred(op, Some(event)).await.unwrap_or(Err(PersistError::Unavailable)).map(|_| ())
    }

    /// Queues a write without waiting; its outcome can be read later (see [`settled`]), and
    /// `event`, if any, is reported once it commits.
    pub fn write_deferred(&self, op: WriteOp, event: Option<Event>) -> Deferred {
        let (tx, rx) = oneshot::channel();
        self.enqueue(op, event, Some(tx));
        rx
    }

    /// Queues a write without waiting for it; `event`, if any, is reported once it commits.
    pub fn write_later(&self, op: WriteOp, event: Option<Event>) {
        self.enqueue(op, event, None);
    }

    /// Waits until every write queued before this call is committed.
    pub async fn flush(&self) -> Result<(), PersistError> {
        self.write(WriteOp::Barrier).await
    }

    /// Asks the persistence actor; if it dies or is being restarted meanwhile, asks its successor.
    /// Every request is safe to repeat (reads, and claims, which an owner may make again).
    async fn read<T>(
        &self,
        request: impl Fn(RpcReplyPort<Result<T, PersistError>>) -> ReadRequest,
    ) -> Result<T, PersistError>
    where
        T: Send + 'static,
    {
        const RESTARTS_WAITED: usize = 50;
        let mut generations = self.generations();
        for _ in 0..RESTARTS_WAITED {
            if let Some(actor) = self.actor()
                && let Ok(answer) = ractor::call!(actor, |port| PersistMsg::Read(request(port)))
            {
                return answer;
            }
            // Between a crash and the restart: wait for the next actor (or give up after a while).
            if tokio::time::timeout(Duration::from_secs(5), generations.changed()).await.is_err()
                && self.actor().is_none()
            {
                break;
            }
        }
        Err(PersistError::Unavailable)
    }

    pub async fn load_agents(&self) -> Result<Vec<agent::Model>, PersistError> {
        self.read(ReadRequest::Agents).await
    }

    pub async fn load_definition(&self, id: Uuid) -> Result<Option<workflow_definition::Model>, PersistError> {
        self.read(|port| ReadRequest::Definition(id, port)).await
    }

    pub async fn load_run(&self, run_id: &str) -> Result<Option<StoredRun>, PersistError> {
        self.read(|port| ReadRequest::Run(run_id.to_string(), port)).await
    }

    /// Claims a run: in one batched insert when it is new (the common case), else in a
    /// transaction of its own that reads the run and its history.
    pub async fn claim(&self, mut claim: Claim) -> Result<ClaimOutcome, PersistError> {
        // The full claim never writes the first attempt: it takes runs with a history.
        let first_attempt = claim.first_attempt.take();
        let full = claim.clone();
        claim.first_attempt = first_attempt;
        let wrote_first_attempt = claim.first_attempt.is_some();
        let fresh = self.write_deferred(WriteOp::ClaimNew(Box::new(claim)), None);
        if fresh.await.unwrap_or(Err(PersistError::Unavailable))? == 1 {
            // A run nobody claimed before has no attempts (they reference the run's row).
            return Ok(ClaimOutcome::Claimed {
                history: Vec::new(),
                taken_over: false,
                retry_round: 0,
                retried_at: None,
                wrote_first_attempt,
            });
        }
        self.read(|port| ReadRequest::Claim(Box::new(full.clone()), port)).await
    }

    pub async fn renew_leases(
        &self,
        owner: &str,
        until: NaiveDateTime,
        runs: Vec<String>,
    ) -> Result<Vec<LeaseState>, PersistError> {
        self.read(|reply| ReadRequest::Renew { owner: owner.to_string(), until, runs: runs.clone(), reply }).await
    }

    pub async fn release_leases(&self, owner: &str) -> Result<u64, PersistError> {
        self.read(|reply| ReadRequest::Release { owner: owner.to_string(), reply }).await
    }

    /// See [`ReadRequest::Orphans`].
    pub async fn orphans(&self, cutoff: NaiveDateTime, limit: u64) -> Result<Vec<workflow_run::Model>, PersistError> {
        self.read(|reply| ReadRequest::Orphans { cutoff, limit, reply }).await
    }

    /// See [`ReadRequest::Membership`].
    pub async fn report_membership(
        &self,
        owner: &str,
        until: NaiveDateTime,
        held: Vec<(String, Vec<i32>)>,
    ) -> Result<Vec<BTreeSet<i32>>, PersistError> {
        self.read(|reply| ReadRequest::Membership { owner: owner.to_string(), until, held: held.clone(), reply }).await
    }

    /// Reports `event` once every write queued before it has committed.
    pub fn report(&self, event: Event) {
        self.enqueue(WriteOp::Barrier, Some(event), None);
    }
}

#[derive(Debug)]
pub struct PersistenceActor;

#[derive(Debug)]
pub struct PersistenceArgs {
    pub db: DatabaseConnection,
    pub journal: Arc<Journal>,
    pub config: PersistenceConfig,
}

#[derive(Debug)]
pub struct PersistenceState {
    args: PersistenceArgs,
    /// Delays between retries after transient errors; `Some` while retrying.
    backoff: Option<ExponentialBackoff>,
    /// A retry timer is pending: ignore wakes until it fires.
    waiting_to_retry: bool,
    /// A flush-interval timer is pending.
    waiting_to_fill: bool,
    /// Commit one write at a time to find the one the database rejects.
    isolating: bool,
}

impl Actor for PersistenceActor {
    type Msg = PersistMsg;
    type State = PersistenceState;
    type Arguments = PersistenceArgs;

    async fn pre_start(
        &self,
        _: ActorRef<PersistMsg>,
        args: PersistenceArgs,
    ) -> Result<PersistenceState, ActorProcessingErr> {
        Ok(PersistenceState { args, backoff: None, waiting_to_retry: false, waiting_to_fill: false, isolating: false })
    }

    async fn post_start(
        &self,
        myself: ActorRef<PersistMsg>,
        state: &mut PersistenceState,
    ) -> Result<(), ActorProcessingErr> {
        // Writes may have queued while no actor was running (first start, or after a crash).
        state.args.journal.wake_sent.store(true, Ordering::Release);
        myself.cast(PersistMsg::Wake)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PersistMsg>,
        message: PersistMsg,
        state: &mut PersistenceState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PersistMsg::Wake => {
                state.args.journal.wake_sent.store(false, Ordering::Release);
                state.waiting_to_fill = false;
                if !state.waiting_to_retry {
                    flush_one_batch(&myself, state).await;
                }
            }
            PersistMsg::RetryAfterError => {
                state.waiting_to_retry = false;
                flush_one_batch(&myself, state).await;
            }
            PersistMsg::Read(request) => answer(&state.args.db, &state.args.journal, request).await,
        }
        Ok(())
    }
}

async fn flush_one_batch(myself: &ActorRef<PersistMsg>, state: &mut PersistenceState) {
    let journal = Arc::clone(&state.args.journal);
    let config = &state.args.config;
    let limit = if state.isolating { 1 } else { config.batch_max };
    let (batch, oldest) = {
        let queue = journal.lock();
        let batch: Vec<Arc<WriteOp>> = queue.iter().take(limit).map(|p| Arc::clone(&p.op)).collect();
        (batch, queue.front().map(|p| p.queued_at))
    };
    if batch.is_empty() {
        return;
    }
    // A small batch may wait up to flush_interval_ms for company.
    let interval = Duration::from_millis(config.flush_interval_ms);
    if batch.len() < limit && !interval.is_zero() {
        let age = oldest.map_or(interval, |at| at.elapsed());
        if age < interval {
            if !state.waiting_to_fill {
                state.waiting_to_fill = true;
                myself.send_after(interval - age, || PersistMsg::Wake);
            }
            return;
        }
    }

    let started = Instant::now();
    let check_owners = chrono::Utc::now().timestamp_millis() >= journal.fence_free_until_ms.load(Ordering::Acquire);
    match commit(&state.args.db, &batch, check_owners).await {
        Ok(changed) => {
            metrics::histogram!(names::COMMIT_DURATION).record(started.elapsed().as_secs_f64());
            metrics::histogram!(names::BATCH_SIZE).record(batch.len() as f64);
            state.backoff = None;
            state.isolating = false;
            journal.transactions.fetch_add(1, Ordering::Relaxed);
            journal.committed.fetch_add(batch.len() as u64, Ordering::Relaxed);
            acknowledge(&journal, changed);
        }
        Err(error) if is_transient(&error) => {
            journal.transient_failures.fetch_add(1, Ordering::Relaxed);
            let delay = state.backoff.get_or_insert_with(retry_delays).next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(%error, writes = journal.len(), retry_in_ms = delay.as_millis() as u64, "database write failed; will retry");
            state.waiting_to_retry = true;
            myself.send_after(delay, || PersistMsg::RetryAfterError);
            return;
        }
        Err(error) if batch.len() > 1 => {
            tracing::warn!(%error, "a write in the batch was rejected; committing one at a time to find it");
            state.isolating = true;
        }
        Err(error) => {
            tracing::error!(%error, op = ?batch[0], "the database rejected a write; it is dropped and its writer told");
            acknowledge(&journal, vec![Err(PersistError::Rejected(error.to_string()))]);
        }
    }
    let queued = journal.len();
    metrics::gauge!(names::JOURNAL_LENGTH).set(queued as f64);
    if queued > 0 && !journal.wake_sent.swap(true, Ordering::AcqRel) {
        let _ = myself.cast(PersistMsg::Wake);
    }
}

/// Removes the first `outcomes.len()` writes, reporting the events of those that committed and
/// answering their writers.
fn acknowledge(journal: &Journal, outcomes: Vec<Outcome>) {
    let done: Vec<Pending> = journal.lock().drain(..outcomes.len()).collect();
    for (pending, outcome) in done.into_iter().zip(outcomes) {
        if let (Some(event), Ok(_)) = (pending.event, &outcome) {
            journal.events.emit(event);
        }
        if let Some(ack) = pending.ack {
            let _ = ack.send(outcome);
        }
    }
}

/// Retries of a request that met a passing error (SQLite reports a read that turns into a write
/// while another connection writes as BUSY at once, without waiting).
fn contention_delays() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(500))
        .with_max_times(30)
        .with_jitter()
}

fn retry_delays() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// Commits `batch` in one transaction; answers what became of each write: the rows it changed,
/// or [`PersistError::Fenced`] for a write of a run another executor has claimed since (checked
/// in the same transaction, see [`fence`]), which is left out.
///
/// `check_owners` is false while this executor's leases are known to be fresh: no claim by another
/// executor can have happened then, and the check (a locking read per transaction) is skipped.
async fn commit(db: &DatabaseConnection, batch: &[Arc<WriteOp>], check_owners: bool) -> Result<Vec<Outcome>, DbErr> {
    if batch.iter().all(|op| matches!(**op, WriteOp::Barrier)) {
        return Ok(vec![Ok(0); batch.len()]);
    }
    let txn = db.begin().await?;
    let holders = if check_owners { fence::holders(&txn, batch).await? } else { Default::default() };
    // The writes that land: the whole batch, unless some are fenced off (then copied without them).
    let fenced: Vec<Option<&str>> = batch.iter().map(|op| fence::fenced_by(op, &holders)).collect();
    let live: std::borrow::Cow<'_, [Arc<WriteOp>]> = if fenced.iter().all(Option::is_none) {
        std::borrow::Cow::Borrowed(batch)
    } else {
        batch.iter().zip(&fenced).filter(|(_, by)| by.is_none()).map(|(op, _)| Arc::clone(op)).collect()
    };
    let changed = if db.get_database_backend() == sea_orm::DbBackend::Postgres && batch::can_group(&live) {
        batch::apply_grouped(&txn, &live).await?
    } else {
        let mut changed = Vec::with_capacity(live.len());
        for op in live.iter() {
            changed.push(apply(&txn, op).await?);
        }
        changed
    };
    txn.commit().await?;
    let mut changed = changed.into_iter();
    Ok(batch
        .iter()
        .zip(fenced)
        .map(|(op, by)| match by {
            Some(holder) => Err(PersistError::Fenced {
                run_id: fence::writer(op).map(|(run_id, _)| run_id.to_string()).unwrap_or_default(),
                holder: holder.to_string(),
            }),
            None => Ok(changed.next().unwrap_or(0)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::supervisor::{PersistenceSupervisor, PersistenceSupervisorArgs};
    use crate::config::DatabaseConfig;
    use serde_json::json;

    async fn sqlite() -> (DatabaseConnection, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
        let db =
            crate::db::connect(&DatabaseConfig { url, max_connections: 2, connect_timeout_ms: 5000 }).await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        (db, dir)
    }

    async fn start(db: DatabaseConnection, batch_max: usize) -> (PersistenceHandle, ActorRef<()>) {
        let handle = PersistenceHandle::new(Arc::new(Journal::default()));
        let config = PersistenceConfig { batch_max, flush_interval_ms: 0 };
        let args = PersistenceSupervisorArgs { db, handle: handle.clone(), config };
        let (supervisor, _) = Actor::spawn(None, PersistenceSupervisor, args).await.unwrap();
        (handle, supervisor)
    }

    pub(super) fn run(run_id: &str, status: RunStatus) -> WriteOp {
        WriteOp::Run(Box::new(RunWrite {
            run_id: run_id.into(),
            workflow_id: "wf".into(),
            workflow_name: "p".into(),
            definition_id: None,
            input: Arc::new(json!({})),
            triggered_by: None,
            status,
            output: status.is_terminal().then(|| json!({"done": true})),
            error: None,
            cancelled_by: None,
            owner: None,
            cancel_requested_at: None,
            plan: None,
            at: chrono::Utc::now().naive_utc(),
        }))
    }

    pub(super) fn attempt(run_id: &str, id: &str) -> WriteOp {
        WriteOp::AttemptStarted(Box::new(AttemptStart {
            id: id.into(),
            run_id: run_id.into(),
            step_id: "s".into(),
            agent_name: "echo".into(),
            input: Arc::new(json!({"x": 1})),
            started_at: chrono::Utc::now().naive_utc(),
            parent_step_id: None,
            branch_name: None,
            join_policy: None,
            loop_iteration_index: None,
            attempt: 1,
            retry_round: 0,
            owner: "me".into(),
        }))
    }

    pub(super) fn end(id: &str, status: StepStatus) -> WriteOp {
        WriteOp::AttemptEnded(Box::new(AttemptEnd {
            id: id.into(),
            run_id: String::new(),
            owner: "me".into(),
            status,
            output: None,
            error: None,
            at: chrono::Utc::now().naive_utc(),
        }))
    }

    #[tokio::test]
    async fn acknowledged_writes_are_committed_and_rows_only_move_forward() {
        let (db, _dir) = sqlite().await;
        let (handle, supervisor) = start(db, 64).await;
        handle.write(run("r1", RunStatus::Running)).await.unwrap();
        handle.write(attempt("r1", "a1")).await.unwrap();
        handle.write(end("a1", StepStatus::Completed)).await.unwrap();
        handle.write(run("r1", RunStatus::Completed)).await.unwrap();
        // Replays and late writes change nothing.
        handle.write(run("r1", RunStatus::Running)).await.unwrap();
        handle.write(attempt("r1", "a1")).await.unwrap();
        handle.write(end("a1", StepStatus::Failed)).await.unwrap();
        let (stored, steps) = handle.load_run("r1").await.unwrap().unwrap();
        assert_eq!(stored.status, RunStatus::Completed);
        assert_eq!(stored.output_data, Some(json!({"done": true})));
        assert!(stored.completed_at.is_some());
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].status, StepStatus::Completed);
        supervisor.stop(None);
    }

    #[tokio::test]
    async fn group_membership_counts_the_partitions_of_live_members_only() {
        let (db, _dir) = sqlite().await;
        let (handle, supervisor) = start(db, 64).await;
        let now = chrono::Utc::now().naive_utc();
        let later = now + chrono::Duration::seconds(30);
        let held = |partitions: Vec<i32>| vec![("g".to_string(), partitions), ("g.c".to_string(), vec![0])];
        handle.report_membership("dead", now - chrono::Duration::seconds(1), held(vec![2, 3])).await.unwrap();
        handle.report_membership("other", later, held(vec![1])).await.unwrap();
        let live = handle.report_membership("me", later, held(vec![0])).await.unwrap();
        assert_eq!(
            live,
            vec![BTreeSet::from([0, 1]), BTreeSet::from([0])],
            "the expired member's partitions are not held"
        );
        // A member rewrites its row: what it held before no longer counts.
        let live = handle.report_membership("other", later, held(vec![2])).await.unwrap();
        assert_eq!(live[0], BTreeSet::from([0, 2]));
        supervisor.stop(None);
    }

    #[tokio::test]
    async fn writes_that_arrive_together_share_transactions() {
        let (db, _dir) = sqlite().await;
        let (handle, supervisor) = start(db, 64).await;
        for i in 0..500 {
            handle.write_later(run(&format!("r{i}"), RunStatus::Running), None);
        }
        handle.flush().await.unwrap();
        let JournalStats { transactions, writes, .. } = handle.journal().stats();
        assert_eq!(writes, 501);
        assert!(transactions <= 501 / 64 + 2, "{transactions} transactions for 501 writes");
        supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_rejected_write_is_reported_to_its_writer_and_the_rest_commit() {
        let (db, _dir) = sqlite().await;
        let (handle, supervisor) = start(db, 64).await;
        handle.write_later(run("r1", RunStatus::Running), None);
        let orphan = handle.write(attempt("no-such-run", "x"));
        let good = handle.write(attempt("r1", "a1"));
        let (orphan, good) = tokio::join!(orphan, good);
        assert!(matches!(orphan, Err(PersistError::Rejected(_))), "{orphan:?}");
        good.unwrap();
        assert_eq!(handle.load_run("r1").await.unwrap().unwrap().1.len(), 1);
        supervisor.stop(None);
    }

    #[tokio::test]
    async fn killing_the_writer_mid_batch_loses_nothing() {
        let (db, _dir) = sqlite().await;
        let (handle, supervisor) = start(db, 16).await;
        let mut generations = handle.generations();
        for i in 0..400 {
            handle.write_later(run(&format!("r{i}"), RunStatus::Running), None);
        }
        // Kill the writer whenever it has work, five times, each time waiting for its replacement.
        let mut kills = 0;
        while kills < 5 && !handle.journal().is_empty() {
            handle.actor().expect("a writer is installed").kill();
            generations.changed().await.unwrap();
            kills += 1;
        }
        handle.flush().await.expect("everything queued commits");
        for i in 0..400 {
            assert!(handle.load_run(&format!("r{i}")).await.unwrap().is_some(), "r{i} lost");
        }
        assert!(kills >= 1);
        supervisor.stop(None);
    }
}
