//! What operators see of resident chat actors, read without messaging them.
//!
//! Each actor shares an [`ActorProbe`] with its registry handle: the handle stamps the last
//! activity and counts the mailbox, the writer counts the actor's uncommitted writes, and the
//! actor refreshes its sizes after every change. Listing thousands of actors is then a walk over
//! the registry that never waits on a busy mailbox.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU8, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{BranchId, ChatId, UserId};
use crate::ports::Fence;
use crate::tree::Tree;
use crate::views::GenerationView;

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Fixed cost of a resident actor beyond what `Tree::approx_bytes` counts: the task (actix's
/// context and mailbox, the actor), the handle with this probe, the registry's cache and live
/// entries. An estimate from the memory benchmark (a 10-message chat: 2,236 B in mimalloc blocks,
/// of which its tree counts ~1,040; BENCHMARKS.md, "Memory per idle chat"), not accounting.
const ACTOR_OVERHEAD_BYTES: usize = 1200;

/// Why a resident actor left memory (the `reason` label of `arbor_chat_evictions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EvictReason {
    /// Idle longer than `actors.idle_timeout_secs`.
    Idle = 0,
    /// The resident bound (`actors.max_resident`) was reached; least recently used goes first.
    Capacity = 1,
    /// An operator evicted it.
    Admin = 2,
    /// The chat was deleted.
    Deleted = 3,
    /// The server is shutting down.
    Shutdown = 4,
    /// The actor stopped on its own (a reload from a failing store, say).
    Stopped = 5,
    /// Cluster mode: the lease of its chat's shard moved to another server.
    Moved = 6,
}

impl EvictReason {
    pub const ALL: [Self; 7] = [
        Self::Idle,
        Self::Capacity,
        Self::Admin,
        Self::Deleted,
        Self::Shutdown,
        Self::Stopped,
        Self::Moved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Capacity => "capacity",
            Self::Admin => "admin",
            Self::Deleted => "deleted",
            Self::Shutdown => "shutdown",
            Self::Stopped => "stopped",
            Self::Moved => "moved",
        }
    }

    fn from_u8(v: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| *r as u8 == v)
            .unwrap_or(Self::Stopped)
    }
}

/// The live, shared facts about one resident actor (its chat id is the registry's key).
#[derive(Debug)]
pub struct ActorProbe {
    pub owner: UserId,
    pub resident_since: DateTime<Utc>,
    last_activity_ms: AtomicI64,
    /// Requests sent to the actor and not yet answered.
    pub(crate) depth: AtomicU32,
    /// Writes queued by the actor and not yet committed (shared with the writer).
    pub(crate) pending_writes: AtomicU32,
    messages: AtomicU32,
    branches: AtomicU32,
    /// Saturates at 4 GiB: a figure for operators.
    tree_bytes: AtomicU32,
    /// Cluster mode: the shard lease the actor serves its chat under (its writes carry it), set
    /// once at start; epoch 0 is none. Kept here, in what was the probe's padding, rather than in
    /// the actor, which has no byte to spare (`chat/`): a held lease's epoch is at least 1, and
    /// one above `u32::MAX` is never served (`Fence::compact`).
    fence_epoch: u32,
    fence_shard: u16,
    evict_reason: AtomicU8,
    /// What the actor has come to (`DELETED`, `FLUSHED`): set once, never cleared. Kept here,
    /// in the probe's padding, rather than in the actor, which has no byte to spare (`chat/`).
    ends: AtomicU8,
}

/// The chat was deleted (or found gone): the actor answers nothing more and stops.
const DELETED: u8 = 1;
/// The actor flushed its writes before stopping.
const FLUSHED: u8 = 2;

impl ActorProbe {
    pub(crate) fn new(owner: UserId, tree: &Tree, fence: Option<Fence>) -> Self {
        let now = Utc::now();
        let (fence_shard, fence_epoch) = fence.and_then(Fence::compact).unwrap_or((0, 0));
        let probe = Self {
            owner,
            resident_since: now,
            last_activity_ms: AtomicI64::new(now.timestamp_millis()),
            depth: AtomicU32::new(0),
            pending_writes: AtomicU32::new(0),
            messages: AtomicU32::new(0),
            branches: AtomicU32::new(0),
            tree_bytes: AtomicU32::new(0),
            fence_epoch,
            fence_shard,
            evict_reason: AtomicU8::new(EvictReason::Stopped as u8),
            ends: AtomicU8::new(0),
        };
        probe.observe(tree);
        probe
    }

    pub(crate) fn mark_deleted(&self) {
        self.ends.fetch_or(DELETED, Ordering::Relaxed);
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.ends.load(Ordering::Relaxed) & DELETED != 0
    }

    pub(crate) fn mark_flushed(&self) {
        self.ends.fetch_or(FLUSHED, Ordering::Relaxed);
    }

    pub(crate) fn is_flushed(&self) -> bool {
        self.ends.load(Ordering::Relaxed) & FLUSHED != 0
    }

    /// A request reached the actor's handle.
    pub(crate) fn touch(&self) {
        self.last_activity_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Refreshes the sizes after a change (all O(1)).
    pub(crate) fn observe(&self, tree: &Tree) {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.messages
            .store(count(tree.message_count()), Ordering::Relaxed);
        self.branches
            .store(count(tree.branches().len()), Ordering::Relaxed);
        self.tree_bytes
            .store(count(tree.approx_bytes()), Ordering::Relaxed);
    }

    /// Cluster mode: the shard lease the actor serves under.
    pub fn fence(&self) -> Option<Fence> {
        (self.fence_epoch != 0).then_some(Fence {
            shard: self.fence_shard,
            epoch: i64::from(self.fence_epoch),
        })
    }

    pub(crate) fn set_evict_reason(&self, reason: EvictReason) {
        self.evict_reason.store(reason as u8, Ordering::Relaxed);
    }

    pub(crate) fn evict_reason(&self) -> EvictReason {
        EvictReason::from_u8(self.evict_reason.load(Ordering::Relaxed))
    }

    pub fn mailbox_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed) as usize
    }

    pub fn pending_writes(&self) -> usize {
        self.pending_writes.load(Ordering::Relaxed) as usize
    }

    pub fn approx_memory_bytes(&self) -> usize {
        ACTOR_OVERHEAD_BYTES + self.tree_bytes.load(Ordering::Relaxed) as usize
    }

    pub fn snapshot(&self, chat: ChatId) -> ActorInfo {
        ActorInfo {
            chat_id: chat,
            owner_id: self.owner,
            resident_since: self.resident_since,
            last_activity: Utc
                .timestamp_millis_opt(self.last_activity_ms.load(Ordering::Relaxed))
                .single()
                .unwrap_or(self.resident_since),
            mailbox_depth: self.mailbox_depth(),
            pending_writes: self.pending_writes(),
            message_count: self.messages.load(Ordering::Relaxed) as usize,
            branch_count: self.branches.load(Ordering::Relaxed) as usize,
            approx_memory_bytes: self.approx_memory_bytes(),
        }
    }
}

/// One resident chat actor, as `GET /api/v1/admin/actors` lists it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ActorInfo {
    pub chat_id: ChatId,
    pub owner_id: UserId,
    /// When this actor was activated (created or loaded from the stores).
    pub resident_since: DateTime<Utc>,
    /// The last request routed to it.
    pub last_activity: DateTime<Utc>,
    /// Requests waiting in (or being handled from) its mailbox.
    pub mailbox_depth: usize,
    /// Its writes queued in the write-behind writer and not yet committed.
    pub pending_writes: usize,
    pub message_count: usize,
    pub branch_count: usize,
    /// Approximate heap the actor holds: its tree, content and fixed overhead.
    pub approx_memory_bytes: usize,
}

/// One actor in detail: what the list shows, plus its active branch and running replies.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ActorDetail {
    #[serde(flatten)]
    pub info: ActorInfo,
    pub title: Option<String>,
    pub active_branch_id: BranchId,
    pub active_branch_name: String,
    /// The chat's version (bumped by every metadata change).
    pub version: i64,
    /// Replies being generated in this chat right now.
    pub generations_in_flight: Vec<GenerationView>,
}

/// Totals over every resident actor.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ActorTotals {
    pub resident: usize,
    pub messages: usize,
    pub branches: usize,
    pub mailbox_depth: usize,
    pub mailbox_depth_max: usize,
    pub pending_writes: usize,
    pub approx_memory_bytes: usize,
}

impl ActorTotals {
    pub(crate) fn add(&mut self, probe: &ActorProbe) {
        let depth = probe.mailbox_depth();
        self.resident += 1;
        self.messages += probe.messages.load(Ordering::Relaxed) as usize;
        self.branches += probe.branches.load(Ordering::Relaxed) as usize;
        self.mailbox_depth += depth;
        self.mailbox_depth_max = self.mailbox_depth_max.max(depth);
        self.pending_writes += probe.pending_writes();
        self.approx_memory_bytes += probe.approx_memory_bytes();
    }
}

/// How to order the actor list.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ActorSort {
    /// Most recently used first (`order=asc`: idlest first).
    #[default]
    LastActivity,
    /// Largest approximate memory first.
    Size,
    /// Most messages first.
    Messages,
    /// Deepest mailbox first.
    MailboxDepth,
    /// Most uncommitted writes first.
    PendingWrites,
    /// Most recently activated first (`order=asc`: longest resident first).
    ResidentSince,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    #[default]
    Desc,
    Asc,
}

/// A page of resident actors.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ActorPage {
    pub actors: Vec<ActorInfo>,
    /// Resident actors in all.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// The `offset` of the next page, if there is one.
    pub next_offset: Option<usize>,
    /// The server these actors are resident on (the one that answered): in cluster mode each
    /// node lists its own chats, those whose shard leases it holds.
    pub node: Option<uuid::Uuid>,
}

impl ActorPage {
    /// Sorts a snapshot and cuts one page from it. Ties (same timestamp, same size) fall back to
    /// the chat id, so pages are stable.
    pub fn of(
        mut actors: Vec<ActorInfo>,
        sort: ActorSort,
        order: SortOrder,
        offset: usize,
        limit: usize,
    ) -> Self {
        match sort {
            ActorSort::LastActivity => actors.sort_by_key(|a| (a.last_activity, a.chat_id)),
            ActorSort::Size => actors.sort_by_key(|a| (a.approx_memory_bytes, a.chat_id)),
            ActorSort::Messages => actors.sort_by_key(|a| (a.message_count, a.chat_id)),
            ActorSort::MailboxDepth => actors.sort_by_key(|a| (a.mailbox_depth, a.chat_id)),
            ActorSort::PendingWrites => actors.sort_by_key(|a| (a.pending_writes, a.chat_id)),
            ActorSort::ResidentSince => actors.sort_by_key(|a| (a.resident_since, a.chat_id)),
        }
        if matches!(order, SortOrder::Desc) {
            actors.reverse();
        }
        let total = actors.len();
        let page: Vec<ActorInfo> = actors.into_iter().skip(offset).take(limit).collect();
        let next_offset = (offset + page.len() < total).then_some(offset + page.len());
        Self {
            actors: page,
            total,
            offset,
            limit,
            next_offset,
            node: None,
        }
    }
}
