//! The writer task: it takes queued writes into batches, commits each batch to the stores
//! (retrying a failing one, fencing the chats of a batch that failed for good), and settles
//! every write's ticket.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::model::{Branch, BranchId, ChatId, ChatMeta, FeedbackRow, Message, MessageId};
use crate::ports::{Batch, MessageDeletes, MetaBatch, StoreError, Stores};

use super::*;

pub(super) struct Writer {
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

/// What one batch in flight hands back: its writes, their row count, and the commit's result;
/// and the writes the store refused because their shard lease had moved on.
pub(super) struct Flushed {
    writes: Vec<Queued>,
    moved: Vec<Queued>,
    rows: usize,
    result: Result<(), StoreError>,
}

pub(super) struct Coalesced {
    batch: Batch,
    rows: usize,
}

impl Writer {
    pub(super) fn new(
        rx: mpsc::Receiver<Command>,
        stores: Stores,
        config: WriterConfig,
        stats: Arc<WriterStats>,
    ) -> Self {
        Self {
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
        }
    }

    /// One batch commits at a time while commits are quick: what arrives meanwhile is the next
    /// batch, as big as the wait made it. Once the batch in flight has taken `overlap_after`
    /// (a store call stalled), another starts beside it, up to `batches_in_flight`, each holding
    /// chats no other batch in flight holds: one slow store call then holds up only its own
    /// batch's writes, not every write queued behind it.
    pub(super) async fn run(mut self) {
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
    pub(super) async fn take(&mut self, first: Option<Command>) -> Vec<Queued> {
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
    pub(super) fn admit(&mut self, write: Queued, writes: &mut Vec<Queued>) -> usize {
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
    pub(super) fn start(&mut self, writes: Vec<Queued>) -> Option<BoxFuture<'static, Flushed>> {
        if writes.is_empty() {
            return None;
        }
        // The queue is FIFO: the first write taken is the one queued longest (held writes were
        // queued before the rest).
        let oldest = writes.iter().map(|(_, _, queued)| *queued).min()?;
        let committer = self.committer.clone();
        self.busy.extend(writes.iter().map(|(w, _, _)| w.chat));
        Some(
            async move {
                let started = std::time::Instant::now();
                let mut writes = writes;
                let mut moved = Vec::new();
                let (result, rows) = loop {
                    let batch = committer.coalesce(&writes);
                    let result = committer.commit(&batch.batch, oldest).await;
                    let Err(StoreError::Fenced(stale)) = &result else {
                        break (result, batch.rows);
                    };
                    // Drop the writes of the stale leases; commit the rest again at once.
                    let (gone, kept): (Vec<_>, Vec<_>) = writes
                        .into_iter()
                        .partition(|(w, _, _)| w.fence.is_some_and(|f| stale.contains(&f)));
                    writes = kept;
                    if gone.is_empty() {
                        break (result, batch.rows);
                    }
                    moved.extend(gone);
                    if writes.is_empty() {
                        break (Ok(()), 0);
                    }
                };
                committer
                    .stats
                    .flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                Flushed {
                    writes,
                    moved,
                    rows,
                    result,
                }
            }
            .boxed(),
        )
    }

    /// Settles a finished batch's writes and frees its chats.
    pub(super) fn finish(&mut self, flushed: Flushed) {
        let stats = &self.committer.stats;
        for (w, _, _) in flushed.writes.iter().chain(&flushed.moved) {
            self.busy.remove(&w.chat);
        }
        for (w, ack, _) in flushed.moved {
            stats.fenced_writes.inc();
            // Later queued writes of that actor carry the same stale fence: refused here.
            let fence = self.fences.entry(w.chat).or_insert(0);
            *fence = (*fence).max(w.generation + 1);
            if let Some(owner) = &w.owner {
                owner.failed(w.generation, true);
            }
            settle(&w, ack, Err(WriteError::Moved));
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
                        owner.failed(w.generation, false);
                    }
                    settle(&w, ack, Err(WriteError::StorageUnavailable));
                }
            }
        }
    }
}

/// Commits batches to the stores; shared by the batches in flight.
pub(super) struct Committer {
    stores: Stores,
    config: WriterConfig,
    stats: Arc<WriterStats>,
}

impl Committer {
    /// One batch of `writes`, with the fallbacks of its branch rows when two stores take it.
    pub(super) fn coalesce(&self, writes: &[Queued]) -> Coalesced {
        let mut batch = coalesce(writes.iter().map(|(w, _, _)| w));
        // One database commits a batch in one transaction: nothing to fall back from.
        if self.stores.unified.is_none() {
            set_fallbacks(&mut batch.batch.meta.branches, &batch.batch.inserts);
        }
        batch
    }

    /// Commits one batch, retrying transient failures: in durable mode until the retry window
    /// of its oldest write (`queued`) has passed, so no client waits much longer than the window
    /// however long the queue; in buffered mode until it succeeds (those writes were
    /// acknowledged).
    pub(super) async fn commit(&self, batch: &Batch, queued: Instant) -> Result<(), StoreError> {
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
    pub(super) async fn commit_once(
        &self,
        batch: &Batch,
    ) -> Result<(), (&'static str, StoreError)> {
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
            // A batch of message deletions alone still has its fences checked.
            if batch.meta.is_empty() && batch.meta.fences.is_empty() {
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

    pub(super) async fn timed<T>(
        &self,
        stage: &str,
        call: impl std::future::Future<Output = T>,
    ) -> T {
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
pub(super) fn settle(
    write: &ChatWrite,
    ack: oneshot::Sender<Result<(), WriteError>>,
    outcome: Result<(), WriteError>,
) {
    if let Some(owner) = &write.owner {
        owner.pending(false);
    }
    let _ = ack.send(outcome);
}

pub(super) fn rows_of(write: &ChatWrite) -> usize {
    write.ops.iter().map(WriteOp::rows).sum()
}

/// Gives each branch row whose head is one of the batch's new messages the head's nearest
/// ancestor outside the batch: stored by an earlier batch (a chat's batches commit one after the
/// other), or `None` if the branch reached no stored message before. The two stores commit a
/// batch at once; if a crash lets the row land without its messages, a restore moves the head
/// back there.
pub(super) fn set_fallbacks(branches: &mut [(Branch, i64)], inserts: &[Message]) {
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
pub(super) fn coalesce<'a>(writes: impl Iterator<Item = &'a ChatWrite>) -> Coalesced {
    let mut inserts: Vec<Message> = Vec::new();
    let mut chats: HashMap<ChatId, ChatMeta> = HashMap::new();
    let mut branches: HashMap<BranchId, (Branch, i64)> = HashMap::new();
    let mut feedback: HashMap<MessageId, FeedbackRow> = HashMap::new();
    let mut meta = MetaBatch::default();
    let mut deletes = MessageDeletes::default();
    let mut fences = BTreeSet::new();
    let mut rows = 0;
    for write in writes {
        fences.extend(write.fence);
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
                    feedback.retain(|_, f| f.chat != *id);
                    meta.deleted_chats.push(*id);
                    deletes.chats.push(*id);
                }
                WriteOp::DeleteMessages(ids) => {
                    deletes.messages.extend_from_slice(ids);
                    meta.unindexed.extend_from_slice(ids);
                }
                WriteOp::Feedback(row) => {
                    feedback.insert(row.message, row.clone());
                }
                WriteOp::Usage(record) => meta.usage.push(record.clone()),
            }
        }
    }
    if !deletes.messages.is_empty() && !inserts.is_empty() {
        let gone: std::collections::HashSet<_> = deletes.messages.iter().copied().collect();
        inserts.retain(|m| !gone.contains(&m.id));
    }
    // The full-text index takes the batch's new messages, with their chats' owners.
    meta.indexed = inserts
        .iter()
        .map(|m| crate::ports::SearchDoc {
            message: m.id,
            chat: m.chat_id,
            owner: chats.get(&m.chat_id).map(|c| c.owner),
            content: m.content.clone(),
        })
        .collect();
    meta.fences = fences.into_iter().collect();
    meta.chats = chats.into_values().collect();
    meta.branches = branches.into_values().collect();
    meta.feedback = feedback.into_values().collect();
    Coalesced {
        batch: Batch {
            inserts,
            meta,
            deletes,
        },
        rows,
    }
}
