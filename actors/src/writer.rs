//! The write-behind writer: one task that batches the changes of every chat actor and commits
//! them to the stores, in as few transactions as the load allows (group commit).
//!
//! A chat actor applies a change in memory, reserves a slot in the writer's bounded queue *before*
//! doing so (a full queue refuses the change with `Overloaded` rather than queueing unboundedly),
//! and sends the change's rows as one [`ChatWrite`]. It gets back a [`CommitTicket`] that resolves
//! when the batch holding the change has committed; in `durable` mode the HTTP response waits for
//! it, in `buffered` mode it does not.
//!
//! Each batch is committed in two steps, each one transaction per store: message inserts and
//! metadata together (the two stores at once), then message deletions (so nothing stored points
//! at a deleted message). A crash between the two stores' commits can leave metadata pointing at
//! a message that did not land; each branch row that moves its head to a new message carries a
//! fallback, the head's nearest ancestor stored by an earlier batch, and a restore moves such a
//! head back there (`set_fallbacks`, `Tree::restore`). Every step is idempotent (inserts by id,
//! versioned upserts, deletes), so a failed batch is retried whole. When one database holds both
//! stores ([`Stores::unified`]), the steps are one transaction.
//!
//! If a batch fails for good, every chat in it is *fenced*: its later queued writes are refused
//! too (they may build on the failed ones), and its actor is told to reload from the store, so a
//! refused write never stays visible.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::stream::{FuturesUnordered, StreamExt};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::model::{Branch, BranchId, ChatId, ChatMeta, Message, MessageId};
use crate::ports::{Batch, MessageDeletes, MetaBatch, StoreError, Stores};
use crate::registry::ChatHandle;

/// When the client's response is sent relative to the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// After the batch holding the change has committed.
    Durable,
    /// After the in-memory apply; a crash can lose at most the unflushed batches.
    Buffered,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub ack_mode: AckMode,
    /// Flush when a batch holds this many rows.
    pub max_batch_ops: usize,
    /// How long to wait for more changes after the first one before flushing.
    pub linger: Duration,
    /// Batches committing at once (each with chats no other one holds). 1 when one database
    /// takes whole batches ([`Stores::unified`]): its one write connection takes them in turn.
    pub batches_in_flight: usize,
    /// How long the batch in flight commits before another may start beside it.
    pub overlap_after: Duration,
    /// Queued chat writes before new changes are refused with `Overloaded`.
    pub queue_capacity: usize,
    /// How long a write that finds the queue full waits for room before it is refused: flow
    /// control for bursts, so clients slow down to the commit rate instead of retrying 503s.
    pub queue_wait: Duration,
    /// In durable mode, how long a failing batch is retried before its clients get an error.
    /// Buffered batches are retried until they commit: they were acknowledged.
    pub durable_retry_window: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            ack_mode: AckMode::Durable,
            max_batch_ops: 1024,
            linger: Duration::ZERO,
            batches_in_flight: 2,
            overlap_after: Duration::from_millis(5),
            queue_capacity: 16_384,
            queue_wait: Duration::from_millis(100),
            durable_retry_window: Duration::from_secs(5),
        }
    }
}

/// One row-level change.
#[derive(Debug, Clone)]
pub enum WriteOp {
    UpsertChat(ChatMeta),
    /// A branch and the chat version that produced it.
    UpsertBranch(Branch, i64),
    DeleteBranch(BranchId),
    DeleteChat(ChatId),
    InsertMessage(Message),
    DeleteMessages(Vec<MessageId>),
}

impl WriteOp {
    fn rows(&self) -> usize {
        match self {
            WriteOp::DeleteMessages(ids) => ids.len().max(1),
            _ => 1,
        }
    }
}

/// Why a write did not commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the store refused or could not take the write")]
    StorageUnavailable,
    #[error("an earlier write of this chat failed; this one was dropped with it")]
    Fenced,
    #[error("the writer stopped")]
    Stopped,
}

/// Told to a chat actor whose writes failed: reload from the store.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct WriteFailed {
    pub generation: u64,
}

/// Resolves when a write has committed (or failed). Cloneable, so a retried idempotent request
/// can wait on the original's commit.
pub type CommitTicket = Shared<BoxFuture<'static, Result<(), WriteError>>>;

/// A ticket that is already resolved (for operations that wrote nothing).
pub fn committed() -> CommitTicket {
    futures_util::future::ready(Ok(())).boxed().shared()
}

/// All rows of one change of one chat, committed atomically with its batch.
pub struct ChatWrite {
    pub chat: ChatId,
    /// The actor's generation: bumped when it reloads after a failure; older writes are fenced.
    pub generation: u64,
    pub ops: Vec<WriteOp>,
    /// The actor the write comes from: told when the write fails, and its probe counts the
    /// write while it is pending.
    pub owner: Option<ChatHandle>,
}

enum Command {
    Write(Queued),
    Barrier(oneshot::Sender<()>),
}

/// A chat's write, where to report its outcome, and when it was queued.
type Queued = (ChatWrite, oneshot::Sender<Result<(), WriteError>>, Instant);

/// What the operator surface reads: Prometheus instruments plus the live flags.
pub struct WriterStats {
    pub batches: IntCounter,
    pub rows: IntCounter,
    pub failed_batches: IntCounter,
    pub retries: IntCounter,
    /// Store calls that failed, by store (`metadata`, `messages`) and kind.
    pub store_errors: IntCounterVec,
    pub batch_rows: Histogram,
    pub flush_seconds: Histogram,
    /// Each store call of a batch attempt, by stage (`messages`, `metadata`, `deletes`).
    pub stage_seconds: HistogramVec,
    /// From a change's acknowledgement-ready enqueue to its batch's commit.
    pub lag_seconds: Histogram,
    /// A store is failing: the writer is retrying a batch that has not committed yet.
    pub stalled: AtomicBool,
    /// The largest lag since the operator surface last took it (microseconds).
    lag_max_micros: AtomicU64,
}

impl Default for WriterStats {
    fn default() -> Self {
        use crate::metrics::*;
        Self {
            batches: counter(
                "arbor_writer_batches_total",
                "Write-behind batches committed.",
                &[],
            ),
            rows: counter(
                "arbor_writer_rows_total",
                "Rows committed by the write-behind writer.",
                &[],
            ),
            failed_batches: counter(
                "arbor_writer_failed_batches_total",
                "Write-behind batches that failed for good (their chats were fenced and reloaded).",
                &[],
            ),
            retries: counter(
                "arbor_writer_retries_total",
                "Batch attempts retried because a store was unavailable.",
                &[],
            ),
            store_errors: counter_vec(
                "arbor_writer_store_errors_total",
                "Failed store calls of the write-behind writer, by store (metadata, messages; batch when one database takes the whole batch) and error kind.",
                &[],
                &["store", "kind"],
            ),
            batch_rows: histogram(
                "arbor_writer_batch_rows",
                "Rows per committed write-behind batch.",
                &[],
                BATCH_BUCKETS,
            ),
            flush_seconds: histogram(
                "arbor_writer_flush_duration_seconds",
                "Time to commit one write-behind batch to the stores, retries included.",
                &[],
                LATENCY_BUCKETS,
            ),
            stage_seconds: histogram_vec(
                "arbor_writer_stage_duration_seconds",
                "Time of one store call of a write-behind batch, by stage (messages, metadata, deletes; batch when one database takes the whole batch).",
                &["stage"],
                LATENCY_BUCKETS,
            ),
            lag_seconds: histogram(
                "arbor_writer_commit_lag_seconds",
                "Time from a change entering the write-behind queue to its commit.",
                &[],
                LATENCY_BUCKETS,
            ),
            stalled: AtomicBool::new(false),
            lag_max_micros: AtomicU64::new(0),
        }
    }
}

impl WriterStats {
    /// The largest commit lag since the previous call.
    pub fn take_lag_max(&self) -> Duration {
        Duration::from_micros(self.lag_max_micros.swap(0, Ordering::Relaxed))
    }

    fn committed(&self, lag: Duration) {
        self.lag_seconds.observe(lag.as_secs_f64());
        self.lag_max_micros
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
    }
}

impl crate::metrics::Instruments for WriterStats {
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        crate::collectors![
            self.batches,
            self.rows,
            self.failed_batches,
            self.retries,
            self.store_errors,
            self.batch_rows,
            self.flush_seconds,
            self.stage_seconds,
            self.lag_seconds,
        ]
    }
}

/// A cheap, cloneable handle to the writer task.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
    queue_wait: Duration,
    pub stats: Arc<WriterStats>,
    pub ack_mode: AckMode,
}

/// A reserved slot in the writer's queue: taking it cannot fail, so a chat can apply a change in
/// memory knowing the change will reach the writer.
pub struct Slot(mpsc::OwnedPermit<Command>);

impl Slot {
    pub fn send(self, write: ChatWrite) -> CommitTicket {
        if let Some(owner) = &write.owner {
            owner.probe().pending_writes.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = oneshot::channel();
        self.0.send(Command::Write((write, tx, Instant::now())));
        rx.map(|r| r.unwrap_or(Err(WriteError::Stopped)))
            .boxed()
            .shared()
    }
}

impl WriterHandle {
    /// Spawns the writer on the current Tokio runtime.
    pub fn spawn(stores: Stores, config: WriterConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let handle = Self {
            tx,
            queue_wait: config.queue_wait,
            stats: stats.clone(),
            ack_mode: config.ack_mode,
        };
        let mut config = config;
        config.batches_in_flight = match stores.unified {
            Some(_) => 1,
            None => config.batches_in_flight.max(1),
        };
        let writer = Writer {
            rx,
            committer: Arc::new(Committer {
                stores,
                config,
                stats,
            }),
            fences: HashMap::new(),
            busy: HashSet::new(),
            held: VecDeque::new(),
            held_rows: 0,
            barriers: Vec::new(),
        };
        tokio::spawn(writer.run());
        handle
    }

    /// Reserves a queue slot, or `None` when the queue is full (or the writer stopped).
    pub fn reserve(&self) -> Option<Slot> {
        self.tx.clone().try_reserve_owned().ok().map(Slot)
    }

    /// Returns at once while the queue has room; when it is full, waits (at most the configured
    /// `queue_wait`) until a slot frees. Does not hold the slot: the change's own
    /// [`reserve`](Self::reserve) still decides, so a write may be refused after waiting.
    /// A queue full because a store is down is not waited on: no slot frees until it is back.
    pub async fn room(&self) {
        if self.tx.capacity() > 0 || self.queue_wait.is_zero() || self.is_stalled() {
            return;
        }
        let _ = tokio::time::timeout(self.queue_wait, self.tx.reserve()).await;
    }

    /// Resolves once everything queued before it has committed (or failed for good).
    pub fn barrier(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tx = self.tx.clone();
        async move {
            let (done, wait) = oneshot::channel();
            if tx.send(Command::Barrier(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
    }

    /// True while the writer's last attempt failed because a store is unavailable.
    pub fn is_stalled(&self) -> bool {
        self.stats.stalled.load(Ordering::Relaxed)
    }

    /// Chat writes waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The queue's bound.
    pub fn queue_capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

struct Writer {
    rx: mpsc::Receiver<Command>,
    /// The stores, the settings and the instruments, shared with the batches in flight.
    committer: Arc<Committer>,
    /// Chats whose writes below this generation are refused.
    fences: HashMap<ChatId, u64>,
    /// Chats with writes in a batch in flight.
    busy: HashSet<ChatId>,
    /// Writes taken from the queue whose chat was busy, in queue order: each chat's writes
    /// commit in order, one batch at a time, so they wait for their chat's batch to finish.
    held: VecDeque<Queued>,
    held_rows: usize,
    /// Barriers taken from the queue: they resolve when nothing taken before them is left.
    barriers: Vec<oneshot::Sender<()>>,
}

/// What one batch in flight hands back: its writes, their row count, and the commit's result.
struct Flushed {
    writes: Vec<Queued>,
    rows: usize,
    result: Result<(), StoreError>,
}

struct Coalesced {
    batch: Batch,
    rows: usize,
}

impl Writer {
    /// One batch commits at a time while commits are quick: what arrives meanwhile is the next
    /// batch, as big as the wait made it. Once the batch in flight has taken `overlap_after`
    /// (a store call stalled), another starts beside it, up to `batches_in_flight`, each holding
    /// chats no other batch in flight holds: one slow store call then holds up only its own
    /// batch's writes, not every write queued behind it.
    async fn run(mut self) {
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Flushed>> = FuturesUnordered::new();
        let mut open = true;
        // When the newest batch in flight started.
        let mut newest = Instant::now();
        loop {
            if !self.barriers.is_empty() && in_flight.is_empty() && self.held.is_empty() {
                for done in self.barriers.drain(..) {
                    let _ = done.send(());
                }
            }
            let overlap_at = newest + self.committer.config.overlap_after;
            let room = in_flight.is_empty()
                || (in_flight.len() < self.committer.config.batches_in_flight
                    && Instant::now() >= overlap_at);
            // Held writes whose chat came free form a batch of their own first.
            if room
                && self
                    .held
                    .iter()
                    .any(|(w, _, _)| !self.busy.contains(&w.chat))
            {
                let writes = self.take(None).await;
                if let Some(batch) = self.start(writes) {
                    in_flight.push(batch);
                    newest = Instant::now();
                }
                continue;
            }
            if !open && in_flight.is_empty() && self.held.is_empty() {
                return;
            }
            // While a barrier waits, nothing new is taken: what came before it finishes first.
            let receive = room
                && open
                && self.barriers.is_empty()
                && self.held_rows < self.committer.config.max_batch_ops;
            let may_overlap = !room && in_flight.len() < self.committer.config.batches_in_flight;
            tokio::select! {
                Some(flushed) = in_flight.next(), if !in_flight.is_empty() => self.finish(flushed),
                command = self.rx.recv(), if receive => match command {
                    Some(first) => {
                        let writes = self.take(Some(first)).await;
                        if let Some(batch) = self.start(writes) {
                            in_flight.push(batch);
                            newest = Instant::now();
                        }
                    }
                    None => open = false,
                },
                () = tokio::time::sleep_until(overlap_at), if may_overlap => {}
            }
        }
    }

    /// The next batch's writes: the held writes whose chat is free, then `first` and what else
    /// the queue holds (waiting up to `linger` for more), up to `max_batch_ops` rows or a
    /// barrier. Writes of busy chats are held; fenced writes are refused here.
    async fn take(&mut self, first: Option<Command>) -> Vec<Queued> {
        let mut writes = Vec::new();
        let mut rows = 0;
        let held = std::mem::take(&mut self.held);
        self.held_rows = 0;
        for write in held {
            rows += self.admit(write, &mut writes);
        }
        let deadline = Instant::now() + self.committer.config.linger;
        let mut next = first;
        loop {
            let command = match next.take() {
                Some(command) => command,
                // Held writes count too: a hot chat in flight cannot pull the whole queue in.
                None if rows + self.held_rows >= self.committer.config.max_batch_ops
                    || !self.barriers.is_empty() =>
                {
                    break
                }
                None => match self.rx.try_recv() {
                    Ok(command) => command,
                    Err(mpsc::error::TryRecvError::Empty)
                        if !self.committer.config.linger.is_zero() =>
                    {
                        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                            Ok(Some(command)) => command,
                            _ => break,
                        }
                    }
                    Err(_) => break,
                },
            };
            match command {
                Command::Write(write) => rows += self.admit(write, &mut writes),
                // A barrier asks for everything before it now (eviction, shutdown): stop here.
                Command::Barrier(done) => self.barriers.push(done),
            }
        }
        writes
    }

    /// Puts a write in the batch being taken (returning its rows), or holds it when its chat is
    /// in a batch in flight, or refuses it when its chat is fenced.
    fn admit(&mut self, write: Queued, writes: &mut Vec<Queued>) -> usize {
        let (w, ack, queued) = write;
        if self.busy.contains(&w.chat) {
            self.held_rows += rows_of(&w);
            self.held.push_back((w, ack, queued));
            return 0;
        }
        if let Some(&fence) = self.fences.get(&w.chat) {
            if w.generation < fence {
                settle(&w, ack, Err(WriteError::Fenced));
                return 0;
            }
            self.fences.remove(&w.chat);
        }
        let rows = rows_of(&w);
        writes.push((w, ack, queued));
        rows
    }

    /// Starts committing a batch of `writes`, marking its chats busy until it finishes.
    fn start(&mut self, writes: Vec<Queued>) -> Option<BoxFuture<'static, Flushed>> {
        if writes.is_empty() {
            return None;
        }
        // The queue is FIFO: the first write taken is the one queued longest (held writes were
        // queued before the rest).
        let oldest = writes.iter().map(|(_, _, queued)| *queued).min()?;
        let mut batch = coalesce(writes.iter().map(|(w, _, _)| w));
        let committer = self.committer.clone();
        // One database commits a batch in one transaction: nothing to fall back from.
        if committer.stores.unified.is_none() {
            set_fallbacks(&mut batch.batch.meta.branches, &batch.batch.inserts);
        }
        self.busy.extend(writes.iter().map(|(w, _, _)| w.chat));
        Some(
            async move {
                let started = std::time::Instant::now();
                let result = committer.commit(&batch.batch, oldest).await;
                committer
                    .stats
                    .flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                Flushed {
                    writes,
                    rows: batch.rows,
                    result,
                }
            }
            .boxed(),
        )
    }

    /// Settles a finished batch's writes and frees its chats.
    fn finish(&mut self, flushed: Flushed) {
        let stats = &self.committer.stats;
        for (w, _, _) in &flushed.writes {
            self.busy.remove(&w.chat);
        }
        match flushed.result {
            Ok(()) => {
                stats.batches.inc();
                stats.rows.inc_by(flushed.rows as u64);
                stats.batch_rows.observe(flushed.rows as f64);
                for (w, ack, queued) in flushed.writes {
                    stats.committed(queued.elapsed());
                    settle(&w, ack, Ok(()));
                }
            }
            Err(error) => {
                stats.failed_batches.inc();
                tracing::error!(%error, rows = flushed.rows, "write-behind batch failed; fencing its chats");
                for (w, ack, _) in flushed.writes {
                    let fence = self.fences.entry(w.chat).or_insert(0);
                    *fence = (*fence).max(w.generation + 1);
                    if let Some(owner) = &w.owner {
                        owner.addr().do_send(WriteFailed {
                            generation: w.generation,
                        });
                    }
                    settle(&w, ack, Err(WriteError::StorageUnavailable));
                }
            }
        }
    }
}

/// Commits batches to the stores; shared by the batches in flight.
struct Committer {
    stores: Stores,
    config: WriterConfig,
    stats: Arc<WriterStats>,
}

impl Committer {
    /// Commits one batch, retrying transient failures: in durable mode until the retry window
    /// of its oldest write (`queued`) has passed, so no client waits much longer than the window
    /// however long the queue; in buffered mode until it succeeds (those writes were
    /// acknowledged).
    async fn commit(&self, batch: &Batch, queued: Instant) -> Result<(), StoreError> {
        let deadline = queued + self.config.durable_retry_window;
        let mut backoff = Duration::from_millis(20);
        loop {
            let result = self.commit_once(batch).await;
            self.stats.stalled.store(
                matches!(result, Err((_, StoreError::Unavailable(_)))),
                Ordering::Relaxed,
            );
            let result = result.map_err(|(store, e)| {
                self.stats
                    .store_errors
                    .with_label_values(&[store, e.kind()])
                    .inc();
                e
            });
            match result {
                Ok(()) => return Ok(()),
                Err(e @ StoreError::Unavailable(_)) => {
                    let give_up = self.config.ack_mode == AckMode::Durable
                        && Instant::now() + backoff > deadline;
                    if give_up {
                        return Err(e);
                    }
                    self.stats.retries.inc();
                    tracing::warn!(error = %e, ?backoff, "store unavailable; retrying batch");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt; a failure names the store that failed.
    async fn commit_once(&self, batch: &Batch) -> Result<(), (&'static str, StoreError)> {
        if batch.is_empty() {
            return Ok(());
        }
        let stores = &self.stores;
        if let Some(unified) = &stores.unified {
            let committed = self.timed("batch", unified.commit(batch));
            return committed.await.map_err(|e| ("batch", e));
        }
        // Both stores at once: a lone write waits for the slower of the two, not for both in
        // turn. Branch rows carry their fallback (`set_fallbacks`) for a crash between them.
        let insert = async {
            if batch.inserts.is_empty() {
                return Ok(());
            }
            let inserted = self.timed("messages", stores.messages.insert(&batch.inserts));
            inserted.await.map_err(|e| ("messages", e))
        };
        let apply = async {
            if batch.meta.is_empty() {
                return Ok(());
            }
            let applied = self.timed("metadata", stores.metadata.apply(&batch.meta));
            applied.await.map_err(|e| ("metadata", e))
        };
        let (inserted, applied) = futures_util::future::join(insert, apply).await;
        inserted.and(applied)?;
        if !batch.deletes.is_empty() {
            let deleted = self.timed("deletes", stores.messages.delete(&batch.deletes));
            deleted.await.map_err(|e| ("messages", e))?;
        }
        Ok(())
    }

    async fn timed<T>(&self, stage: &str, call: impl std::future::Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = call.await;
        self.stats
            .stage_seconds
            .with_label_values(&[stage])
            .observe(started.elapsed().as_secs_f64());
        out
    }
}

/// Reports a write's outcome to its actor's pending count and to whoever waits on its ticket.
fn settle(
    write: &ChatWrite,
    ack: oneshot::Sender<Result<(), WriteError>>,
    outcome: Result<(), WriteError>,
) {
    if let Some(owner) = &write.owner {
        owner.probe().pending_writes.fetch_sub(1, Ordering::Relaxed);
    }
    let _ = ack.send(outcome);
}

fn rows_of(write: &ChatWrite) -> usize {
    write.ops.iter().map(WriteOp::rows).sum()
}

/// Gives each branch row whose head is one of the batch's new messages the head's nearest
/// ancestor outside the batch: stored by an earlier batch (a chat's batches commit one after the
/// other), or `None` if the branch reached no stored message before. The two stores commit a
/// batch at once; if a crash lets the row land without its messages, a restore moves the head
/// back there.
fn set_fallbacks(branches: &mut [(Branch, i64)], inserts: &[Message]) {
    if inserts.is_empty() || branches.is_empty() {
        return;
    }
    let parents: HashMap<MessageId, Option<MessageId>> =
        inserts.iter().map(|m| (m.id, m.parent_id)).collect();
    for (branch, _) in branches {
        let Some(mut at) = branch.head.and_then(|h| parents.get(&h).copied()) else {
            continue;
        };
        // Each step leaves a new message behind; the bound only guards against a cycle.
        for _ in 0..parents.len() {
            match at.and_then(|p| parents.get(&p)) {
                Some(&up) => at = up,
                None => break,
            }
        }
        branch.fallback = at;
    }
}

/// Folds a batch's writes into one set of rows per store: the newest version of each chat and
/// branch row, and nothing for rows deleted within the same batch.
fn coalesce<'a>(writes: impl Iterator<Item = &'a ChatWrite>) -> Coalesced {
    let mut inserts: Vec<Message> = Vec::new();
    let mut chats: HashMap<ChatId, ChatMeta> = HashMap::new();
    let mut branches: HashMap<BranchId, (Branch, i64)> = HashMap::new();
    let mut meta = MetaBatch::default();
    let mut deletes = MessageDeletes::default();
    let mut rows = 0;
    for write in writes {
        for op in &write.ops {
            rows += op.rows();
            match op {
                WriteOp::InsertMessage(m) => inserts.push(m.clone()),
                WriteOp::UpsertChat(c) => match chats.get(&c.id) {
                    Some(existing) if existing.version >= c.version => {}
                    _ => {
                        chats.insert(c.id, c.clone());
                    }
                },
                WriteOp::UpsertBranch(b, version) => match branches.get(&b.id) {
                    Some((_, existing)) if existing > version => {}
                    _ => {
                        branches.insert(b.id, (b.clone(), *version));
                    }
                },
                WriteOp::DeleteBranch(id) => {
                    branches.remove(id);
                    meta.deleted_branches.push(*id);
                }
                WriteOp::DeleteChat(id) => {
                    chats.remove(id);
                    branches.retain(|_, (b, _)| b.chat_id != *id);
                    inserts.retain(|m| m.chat_id != *id);
                    meta.deleted_chats.push(*id);
                    deletes.chats.push(*id);
                }
                WriteOp::DeleteMessages(ids) => deletes.messages.extend_from_slice(ids),
            }
        }
    }
    if !deletes.messages.is_empty() && !inserts.is_empty() {
        let gone: std::collections::HashSet<_> = deletes.messages.iter().copied().collect();
        inserts.retain(|m| !gone.contains(&m.id));
    }
    meta.chats = chats.into_values().collect();
    meta.branches = branches.into_values().collect();
    Coalesced {
        batch: Batch {
            inserts,
            meta,
            deletes,
        },
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{now, Role};

    fn message(chat: ChatId, parent: Option<MessageId>) -> Message {
        Message {
            id: MessageId::new(),
            chat_id: chat,
            parent_id: parent,
            role: Role::User,
            content: Arc::from("x"),
            created_at: now(),
            model: None,
            metadata: None,
            idempotency_key: None,
        }
    }

    fn branch(chat: ChatId, head: Option<MessageId>) -> (Branch, i64) {
        let branch = Branch {
            id: BranchId::new(),
            chat_id: chat,
            name: "b".into(),
            head,
            forked_from: None,
            created_at: now(),
            updated_at: now(),
            fallback: None,
        };
        (branch, 1)
    }

    #[test]
    fn a_head_among_the_new_messages_falls_back_to_its_nearest_stored_ancestor() {
        let chat = ChatId::new();
        let stored = MessageId::new();
        let q = message(chat, Some(stored));
        let a = message(chat, Some(q.id));
        let first = message(chat, None);
        let edit = message(chat, Some(stored));
        let mut branches = vec![
            // Two new messages on top of a stored one: back to the stored one.
            branch(chat, Some(a.id)),
            // The first message of an empty branch: back to nothing.
            branch(chat, Some(first.id)),
            // A head stored by an earlier batch needs no fallback.
            branch(chat, Some(stored)),
            branch(chat, None),
            // A new branch (an edit) whose head is a new sibling: its stored parent.
            branch(chat, Some(edit.id)),
        ];
        set_fallbacks(&mut branches, &[q, a.clone(), first, edit]);
        let fallbacks: Vec<_> = branches.iter().map(|(b, _)| b.fallback).collect();
        assert_eq!(fallbacks, [Some(stored), None, None, None, Some(stored)]);
    }
}
