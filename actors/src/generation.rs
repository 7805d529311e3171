//! Generations: one generated reply each, from the request to the stored assistant message.
//!
//! A [`Generation`] records every event of a reply in order (the message being answered, token
//! deltas, then the stored assistant message or an error), so any number of clients can follow
//! it live, and a client that lost its connection can resume after the last event it saw. The
//! [`Generations`] table also holds the one-reply-per-branch locks: it lives outside the chat
//! actors, so a lock survives the eviction or restart of its chat's actor.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::ChatError;
pub use crate::model::GenerationStatus;
use crate::model::{BranchId, ChatId, GenerationId, MessageId, UserId};
use crate::ports::Usage;
use crate::views::{GenerationView, MessageView};

/// One event of a generation. Ids start at 1 and have no gaps.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone)]
pub enum EventKind {
    /// The message being answered (first event).
    UserMessage(MessageView),
    /// A piece of the reply's content.
    Delta(Arc<str>),
    /// The stored reply (last event of a completed or cancelled generation).
    AssistantMessage {
        message: MessageView,
        usage: Option<Usage>,
        status: GenerationStatus,
    },
    /// Why the generation failed (last event of a failed generation).
    Error(ChatError),
}

/// A stored reply: complete, or the partial content of a cancelled generation.
pub struct StoredReply {
    pub message: MessageView,
    pub usage: Option<Usage>,
    pub cancelled: bool,
}

/// How a generation ended, as the client waiting for it sees it.
pub type Outcome = Result<MessageView, ChatError>;

struct Log {
    events: Vec<Arc<Event>>,
    status: GenerationStatus,
    outcome: Option<Outcome>,
    finished_at: Option<Instant>,
}

/// A reply being generated (or recently generated).
pub struct Generation {
    pub id: GenerationId,
    pub chat: ChatId,
    pub owner: UserId,
    pub branch: BranchId,
    /// The message being answered.
    pub reply_to: MessageId,
    /// `provider/model`.
    pub model: Arc<str>,
    pub created_at: DateTime<Utc>,
    cancel: CancellationToken,
    log: Mutex<Log>,
    /// Bumped after every change of `log`.
    changed: watch::Sender<u64>,
}

impl Generation {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic while holding this lock cannot leave the log half-written (every change is a
        // single push or assignment), so a poisoned lock is still consistent.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_locked(&self, log: &mut Log, kind: EventKind) {
        let id = log.events.len() as u64 + 1;
        log.events.push(Arc::new(Event { id, kind }));
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Appends an event, unless the generation already ended.
    pub fn push(&self, kind: EventKind) {
        {
            let mut log = self.log();
            if log.status != GenerationStatus::Running {
                return;
            }
            self.push_locked(&mut log, kind);
        }
        self.notify();
    }

    pub fn push_delta(&self, delta: &str) {
        self.push(EventKind::Delta(Arc::from(delta)));
    }

    /// Ends the generation with its stored reply (or its error); the last event says which.
    pub fn finish(&self, ended: Result<StoredReply, ChatError>) {
        {
            let mut log = self.log();
            if log.status != GenerationStatus::Running {
                return;
            }
            let (status, kind, outcome) = match ended {
                Ok(StoredReply {
                    message,
                    usage,
                    cancelled,
                }) => {
                    let status = if cancelled {
                        GenerationStatus::Cancelled
                    } else {
                        GenerationStatus::Completed
                    };
                    let kind = EventKind::AssistantMessage {
                        message: message.clone(),
                        usage,
                        status,
                    };
                    (status, kind, Ok(message))
                }
                Err(e) => (
                    GenerationStatus::Failed,
                    EventKind::Error(e.clone()),
                    Err(e),
                ),
            };
            self.push_locked(&mut log, kind);
            log.status = status;
            log.outcome = Some(outcome);
            log.finished_at = Some(Instant::now());
        }
        self.notify();
    }

    /// Asks the generation to stop; its partial reply is stored, marked incomplete.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Events after `after` (an event id; 0 for all), and whether the generation has ended.
    pub fn events_after(&self, after: u64) -> (Vec<Arc<Event>>, bool) {
        let log = self.log();
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(log.events.len());
        (
            log.events[start..].to_vec(),
            log.status != GenerationStatus::Running,
        )
    }

    /// Follows the generation: the next events after `after`, waiting for them if needed.
    pub fn follow(self: Arc<Self>, after: u64) -> Follower {
        Follower {
            changed: self.changed.subscribe(),
            generation: self,
            after,
        }
    }

    /// Waits until the generation has ended; returns the stored reply or the error.
    pub async fn outcome(&self) -> Outcome {
        let mut changed = self.changed.subscribe();
        loop {
            changed.borrow_and_update();
            if let Some(outcome) = &self.log().outcome {
                return outcome.clone();
            }
            if changed.changed().await.is_err() {
                return Err(ChatError::Internal("generation dropped".into()));
            }
        }
    }

    pub fn view(&self) -> GenerationView {
        let log = self.log();
        GenerationView {
            id: self.id,
            chat_id: self.chat,
            branch_id: self.branch,
            reply_to: self.reply_to,
            model: self.model.clone(),
            status: log.status,
            created_at: self.created_at,
            last_event_id: log.events.len() as u64,
            message_id: match &log.outcome {
                Some(Ok(message)) => Some(message.id),
                _ => None,
            },
        }
    }
}

/// A reader of a generation's events.
pub struct Follower {
    generation: Arc<Generation>,
    changed: watch::Receiver<u64>,
    after: u64,
}

impl Follower {
    /// The next events, waiting for at least one; `None` once the generation has ended and every
    /// event was read.
    pub async fn next(&mut self) -> Option<Vec<Arc<Event>>> {
        loop {
            self.changed.borrow_and_update();
            let (events, ended) = self.generation.events_after(self.after);
            if let Some(last) = events.last() {
                self.after = last.id;
                return Some(events);
            }
            if ended || self.changed.changed().await.is_err() {
                return None;
            }
        }
    }
}

#[derive(Default)]
struct Table {
    all: HashMap<GenerationId, Arc<Generation>>,
    /// The running generation of each busy branch.
    busy: HashMap<(ChatId, BranchId), GenerationId>,
    /// Ended generations, oldest end first.
    ended: VecDeque<(Instant, GenerationId)>,
}

/// Every running and recently ended generation, and the per-branch locks.
pub struct Generations {
    table: Mutex<Table>,
    /// How long an ended generation's events stay available for resuming.
    retention: Duration,
    /// Ended generations kept at most (the oldest go first), whatever their age.
    max_retained: usize,
}

impl Generations {
    pub fn new(retention: Duration, max_retained: usize) -> Self {
        Self {
            table: Mutex::default(),
            retention,
            max_retained,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a generation on a branch, or fails if the branch already has one running.
    pub fn begin(
        &self,
        chat: ChatId,
        owner: UserId,
        branch: BranchId,
        reply_to: MessageId,
        model: Arc<str>,
    ) -> Result<Arc<Generation>, ChatError> {
        let mut table = self.table();
        if table.busy.contains_key(&(chat, branch)) {
            return Err(ChatError::GenerationInProgress);
        }
        let generation = Arc::new(Generation {
            id: GenerationId::new(),
            chat,
            owner,
            branch,
            reply_to,
            model,
            created_at: crate::model::now(),
            cancel: CancellationToken::new(),
            log: Mutex::new(Log {
                events: Vec::new(),
                status: GenerationStatus::Running,
                outcome: None,
                finished_at: None,
            }),
            changed: watch::channel(0).0,
        });
        table.busy.insert((chat, branch), generation.id);
        table.all.insert(generation.id, generation.clone());
        Ok(generation)
    }

    /// Whether a branch has a reply being generated.
    pub fn busy(&self, chat: ChatId, branch: BranchId) -> bool {
        self.table().busy.contains_key(&(chat, branch))
    }

    /// Frees the generation's branch (idempotent).
    pub fn release(&self, id: GenerationId, chat: ChatId, branch: BranchId) {
        let mut table = self.table();
        if table.busy.get(&(chat, branch)) == Some(&id) {
            table.busy.remove(&(chat, branch));
        }
    }

    pub fn get(&self, id: GenerationId) -> Option<Arc<Generation>> {
        self.table().all.get(&id).cloned()
    }

    /// Generations still running.
    pub fn running(&self) -> Vec<Arc<Generation>> {
        let table = self.table();
        table
            .busy
            .values()
            .filter_map(|id| table.all.get(id).cloned())
            .collect()
    }

    /// Records that a generation ended (after [`Generation::finish`]); beyond `max_retained`
    /// ended generations, the oldest is forgotten.
    pub fn ended(&self, id: GenerationId) {
        let mut table = self.table();
        table.ended.push_back((Instant::now(), id));
        while table.ended.len() > self.max_retained {
            if let Some((_, old)) = table.ended.pop_front() {
                table.all.remove(&old);
            }
        }
    }

    /// Forgets ended generations older than the retention period.
    pub fn sweep(&self) {
        let mut table = self.table();
        while let Some(&(at, id)) = table.ended.front() {
            if at.elapsed() < self.retention {
                break;
            }
            table.ended.pop_front();
            table.all.remove(&id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn begin(table: &Generations, chat: ChatId, branch: BranchId) -> Arc<Generation> {
        table
            .begin(
                chat,
                UserId::new(),
                branch,
                MessageId::new(),
                Arc::from("p/m"),
            )
            .unwrap()
    }

    #[test]
    fn one_generation_per_branch_until_released() {
        let table = Generations::new(Duration::from_secs(60), 10);
        let (chat, a, b) = (ChatId::new(), BranchId::new(), BranchId::new());
        let first = begin(&table, chat, a);
        assert!(matches!(
            table.begin(chat, UserId::new(), a, MessageId::new(), Arc::from("p/m")),
            Err(ChatError::GenerationInProgress)
        ));
        begin(&table, chat, b);
        assert!(table.busy(chat, a));
        table.release(first.id, chat, a);
        assert!(!table.busy(chat, a));
        begin(&table, chat, a);
    }

    #[tokio::test]
    async fn followers_resume_after_any_event_and_see_the_end() {
        let table = Generations::new(Duration::from_secs(60), 10);
        let g = begin(&table, ChatId::new(), BranchId::new());
        g.push_delta("a");
        g.push_delta("b");
        let mut late = g.clone().follow(1);
        let events = late.next().await.unwrap();
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [2]);

        let waiter = tokio::spawn({
            let g = g.clone();
            async move {
                let mut all = g.follow(0);
                let mut ids = Vec::new();
                while let Some(events) = all.next().await {
                    ids.extend(events.iter().map(|e| e.id));
                }
                ids
            }
        });
        g.push_delta("c");
        g.finish(Err(ChatError::UpstreamTimeout));
        g.push_delta("ignored after the end");
        assert_eq!(waiter.await.unwrap(), [1, 2, 3, 4]);
        assert!(matches!(g.outcome().await, Err(ChatError::UpstreamTimeout)));
        assert_eq!(g.view().status, GenerationStatus::Failed);
        assert!(late.next().await.is_some());
        assert!(late.next().await.is_none());
    }

    #[test]
    fn ended_generations_go_after_retention_or_beyond_the_cap() {
        let table = Generations::new(Duration::from_millis(50), 2);
        let running = begin(&table, ChatId::new(), BranchId::new());
        let ended: Vec<_> = (0..3)
            .map(|_| {
                let g = begin(&table, ChatId::new(), BranchId::new());
                g.finish(Err(ChatError::UpstreamTimeout));
                table.ended(g.id);
                g
            })
            .collect();
        assert!(
            table.get(ended[0].id).is_none(),
            "over the cap: the oldest goes"
        );
        table.sweep();
        assert!(table.get(ended[1].id).is_some(), "still within retention");
        std::thread::sleep(Duration::from_millis(60));
        table.sweep();
        assert!(table.get(running.id).is_some());
        assert!(ended.iter().all(|g| table.get(g.id).is_none()));
    }
}
