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
//! In cluster mode each write carries the [`Fence`] of its chat's shard lease, and the metadata
//! store checks them in the batch's transaction. If some are stale (the lease moved on), the
//! batch is refused whole; the writer drops the writes of the stale fences (their clients get
//! [`WriteError::Moved`], their actors stop) and commits the rest again at once.
//!
//! If a batch fails for good, every chat in it is *fenced*: its later queued writes are refused
//! too (they may build on the failed ones), and its actor is told to reload from the store, so a
//! refused write never stays visible.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::model::{Branch, BranchId, ChatId, ChatMeta, FeedbackRow, Message, MessageId};
use crate::ports::{Fence, Stores};

mod batch;
mod stats;
#[cfg(test)]
mod tests;

use self::batch::Writer;
pub use self::stats::WriterStats;

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
    /// Feedback on a message set or taken back (a metadata row).
    Feedback(FeedbackRow),
    /// A reply's reported usage (metadata rows: the record and its user's day).
    Usage(crate::ports::UsageRecord),
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
    /// Cluster mode: the chat's shard lease moved to another epoch (another server owns the
    /// chat now); nothing of the write was stored.
    #[error("the chat's shard moved to another server")]
    Moved,
}

/// Where a write comes from, as the writer sees it: it counts the write while it is pending and
/// hears when it failed for good. The chat actor's handle implements it (`chat::ChatHandle`);
/// the writer knows nothing else of actors.
pub trait WriteOwner: Send + Sync {
    /// One more write of this owner is queued (`true`), or one has settled (`false`).
    fn pending(&self, queued: bool);
    /// A write made under actor generation `generation` failed for good: the owner must drop
    /// what it applied in memory (the chat actor reloads from the store, or stops when the
    /// write was refused because its chat `moved` to another server).
    fn failed(&self, generation: u64, moved: bool);
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
    /// Cluster mode: the shard lease the change was made under.
    pub fence: Option<Fence>,
    pub ops: Vec<WriteOp>,
    /// The actor the write comes from: told when the write fails, and counts the write while
    /// it is pending.
    pub owner: Option<Arc<dyn WriteOwner>>,
}

enum Command {
    Write(Queued),
    Barrier(oneshot::Sender<()>),
}

/// A chat's write, where to report its outcome, and when it was queued.
type Queued = (ChatWrite, oneshot::Sender<Result<(), WriteError>>, Instant);

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
            owner.pending(true);
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
        let writer = Writer::new(rx, stores, config, stats);
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
