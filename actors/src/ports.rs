//! The ports Arbor's core needs from the outside world. Implementations live in the server crate
//! (SQLite, PostgreSQL, MongoDB, OpenAI-protocol HTTP); this crate only sees the traits.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::{
    Branch, BranchId, ChatId, ChatMeta, Feedback, FeedbackRow, GenerationId, Message, MessageId,
    Role, UserId, UserRecord,
};

/// What a store can say went wrong. Only `Unavailable` (connection lost, timeout, server down) is
/// worth retrying; `Conflict` names the unique field that clashed; `Rejected` is the store refusing
/// the data itself, which no retry can change.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("unique constraint on {0}")]
    Conflict(&'static str),
    #[error("the store refused the data: {0}")]
    Rejected(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Cluster mode: these fences of the batch are stale (their shard's lease moved to another
    /// epoch since the changes were made). Nothing of the batch was applied.
    #[error("fenced: stale shard leases {0:?}")]
    Fenced(Vec<Fence>),
}

impl StoreError {
    /// A short stable label (`unavailable`, `conflict`, `rejected`, `corrupt`) for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Conflict(_) => "conflict",
            Self::Rejected(_) => "rejected",
            Self::Corrupt(_) => "corrupt",
            Self::Fenced(_) => "fenced",
        }
    }
}

/// Cluster mode: the shard a chat belongs to and the epoch of that shard's lease its changes were
/// made under. A batch commits only while every fence it carries is still the lease's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fence {
    pub shard: u16,
    pub epoch: i64,
}

impl Fence {
    /// The fence as a chat actor keeps it (`inspect::ActorProbe`): epochs of held leases are
    /// 1 to `u32::MAX`; `None` for any other (an [`Ownership`] never hands those out).
    pub fn compact(self) -> Option<(u16, u32)> {
        let epoch = u32::try_from(self.epoch).ok().filter(|e| *e != 0)?;
        Some((self.shard, epoch))
    }
}

/// Which chats this server may change (cluster mode: the shard leases it holds). Without it,
/// every chat is this server's.
pub trait Ownership: Send + Sync + 'static {
    /// The fence a chat's writes carry while this server holds its shard's lease; `None` when
    /// it does not (the chat is another server's, or its shard is moving).
    fn fence(&self, chat: ChatId) -> Option<Fence>;
    /// An id for a new chat, in a shard this server holds; `None` when it holds none.
    fn new_chat_id(&self) -> Option<ChatId>;
}

/// Per-user limits on replies (the server's rate limits): how often a user may start one, and
/// how many may run at once. The pass is held until the reply's model call ends.
pub trait ReplyGate: Send + Sync + 'static {
    fn admit(&self, user: UserId) -> Result<ReplyPass, ReplyRefused>;
}

/// Why a reply was not admitted: `limit` per `window_secs` of `class` (or, with `window_secs`
/// 0, `limit` at once); another may start in `retry_after_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyRefused {
    pub class: &'static str,
    pub limit: u32,
    pub window_secs: u32,
    pub retry_after_ms: u64,
}

/// Held while a reply runs; dropping it frees the user's place.
pub type ReplyPass = Box<dyn Send + Sync>;

/// Per-user token quotas: asked before a reply is admitted (before the provider is called). A
/// reply that runs past the quota finishes and is counted; the next one is refused.
#[async_trait]
pub trait QuotaGate: Send + Sync + 'static {
    async fn check(&self, user: UserId) -> Result<(), QuotaRefused>;
    /// A reply of `user`'s that used `tokens` was stored (before it is acknowledged).
    async fn spent(&self, user: UserId, tokens: u64);
}

/// Why a quota refused a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefused {
    /// `used` of `limit` tokens this period; the period ends at `resets_at`.
    Exceeded {
        limit: u64,
        used: u64,
        resets_at: chrono::DateTime<chrono::Utc>,
    },
    /// The usage could not be read.
    Unavailable,
}

/// A user's own token quota, set by an admin over the configured default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaSetting {
    /// The configured default applies.
    Default,
    Unlimited,
    /// At most this many tokens (prompt and completion) a period.
    Tokens(u64),
}

/// The metadata changes of one write-behind batch, already coalesced (latest version per row).
#[derive(Debug, Default, Clone)]
pub struct MetaBatch {
    /// The fences of the batch's chats, one per shard: checked in the same transaction as the
    /// changes, which are refused whole ([`StoreError::Fenced`]) if any is stale.
    pub fences: Vec<Fence>,
    pub chats: Vec<ChatMeta>,
    /// Each branch with the chat version that produced it.
    pub branches: Vec<(Branch, i64)>,
    pub deleted_branches: Vec<BranchId>,
    /// Deleting a chat deletes its branches and its feedback rows too.
    pub deleted_chats: Vec<ChatId>,
    /// Feedback set (upserted) or taken back (deleted), the latest per message.
    pub feedback: Vec<FeedbackRow>,
    /// Replies' reported usage: each recorded once per generation (a repeat changes nothing),
    /// and added to its user's day.
    pub usage: Vec<UsageRecord>,
    /// The batch's new messages, for the full-text index (written in the same commit).
    pub indexed: Vec<SearchDoc>,
    /// Messages deleted by the batch, out of the index (deleted chats' go by chat).
    pub unindexed: Vec<MessageId>,
}

/// A message as the full-text index keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchDoc {
    pub message: MessageId,
    pub chat: ChatId,
    /// The chat's owner (from the batch's chat row; `None` if the batch has none, which the
    /// store then looks up).
    pub owner: Option<UserId>,
    pub content: Arc<str>,
}

/// One full-text match, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub message: MessageId,
    pub chat: ChatId,
    /// The content around the match, the matched words between `<mark>` and `</mark>`.
    pub snippet: String,
    /// The engine's relevance (higher is better).
    pub rank: f64,
}

impl MetaBatch {
    pub fn is_empty(&self) -> bool {
        self.chats.is_empty()
            && self.branches.is_empty()
            && self.deleted_branches.is_empty()
            && self.deleted_chats.is_empty()
            && self.feedback.is_empty()
            && self.usage.is_empty()
            && self.indexed.is_empty()
            && self.unindexed.is_empty()
    }
}

/// Message deletions of one batch, applied after the metadata that stopped referencing them.
#[derive(Debug, Default, Clone)]
pub struct MessageDeletes {
    pub messages: Vec<MessageId>,
    pub chats: Vec<ChatId>,
}

impl MessageDeletes {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.chats.is_empty()
    }
}

/// The rows of one write-behind batch, in the order they must reach the stores: message inserts,
/// then the metadata that may point at them, then message deletions.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub inserts: Vec<Message>,
    pub meta: MetaBatch,
    pub deletes: MessageDeletes,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.meta.is_empty() && self.deletes.is_empty()
    }
}

/// One database holding both metadata and messages (the embedded SQLite file) commits a whole
/// batch as one transaction: one commit, and one sync to disk, instead of one per store.
#[async_trait]
pub trait BatchStore: Send + Sync + 'static {
    /// Applies the batch atomically, with the same idempotence as the per-store calls.
    async fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
}

/// The stores a server runs on.
#[derive(Clone)]
pub struct Stores {
    pub metadata: Arc<dyn MetadataStore>,
    pub messages: Arc<dyn MessageStore>,
    /// Both of the above, when one database holds them (SQLite for both): the writer commits
    /// each batch through it in one transaction instead of one per store.
    pub unified: Option<Arc<dyn BatchStore>>,
}

/// The usage a provider reported for one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// One row per generation: a reply retried upstream is recorded once.
    pub generation: GenerationId,
    pub user: UserId,
    pub chat: ChatId,
    /// `provider/model`.
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// How usage is summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Model,
    Chat,
    /// The UTC day, `YYYY-MM-DD`.
    Day,
    /// The user's id.
    User,
}

/// One group's sums.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSum {
    pub key: String,
    pub replies: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A chat's metadata as stored: its row, its branches, and the feedback on its messages.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChat {
    pub meta: ChatMeta,
    pub branches: Vec<Branch>,
    pub feedback: Vec<(MessageId, Arc<Feedback>)>,
}

/// Feedback summed for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackSum {
    /// The rated messages' model (`None`: messages without one).
    pub model: Option<String>,
    pub up: u64,
    pub down: u64,
}

/// A share link as stored: the snapshot it shows, under the SHA-256 of its token (the token
/// itself is never stored).
#[derive(Debug, Clone, PartialEq)]
pub struct ShareRecord {
    pub id: uuid::Uuid,
    pub token_hash: [u8; 32],
    pub chat: ChatId,
    pub owner: UserId,
    /// `branch` or `tree`.
    pub scope: String,
    pub branch: BranchId,
    pub messages: u32,
    /// The `SharedChat` as JSON; `None` when only the summary was read.
    pub snapshot: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Users, chats and branches.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Fails with `Conflict("email")` / `Conflict("username")` on a taken identity.
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// Looks a user up by email or username (case-insensitive).
    async fn user_by_login(&self, login: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Grants or revokes a user's admin role by email or username (case-insensitive; a
    /// username has no `@`, so the two never collide); returns the updated user, or `None` if
    /// no user has that login.
    async fn set_admin(&self, email: &str, admin: bool) -> Result<Option<UserRecord>, StoreError>;
    /// A chat's row and its branches.
    async fn load_chat(&self, id: ChatId) -> Result<Option<StoredChat>, StoreError>;
    /// A user's chats, newest first, strictly older than `before` when given.
    async fn list_chats(
        &self,
        owner: UserId,
        limit: u32,
        before: Option<ChatId>,
    ) -> Result<Vec<ChatMeta>, StoreError>;
    /// Applies a batch in one transaction. Rows carry versions: an older version never
    /// overwrites a newer one. A store that keeps shard leases checks the batch's fences in
    /// the same transaction and fails with [`StoreError::Fenced`] naming the stale shards;
    /// one that keeps none (no cluster mode) ignores them.
    async fn apply(&self, batch: &MetaBatch) -> Result<(), StoreError>;
    /// Records a reply's usage, and adds it to its user's total for its UTC day; a second
    /// record of the same generation changes nothing. (Replies record theirs through the
    /// writer, in the batch that stores them: `MetaBatch::usage`.)
    async fn record_usage(&self, usage: &UsageRecord) -> Result<(), StoreError> {
        let batch = MetaBatch {
            usage: vec![usage.clone()],
            ..MetaBatch::default()
        };
        self.apply(&batch).await
    }
    /// A user's quota setting and the tokens they used from the UTC day `since` on.
    async fn quota_usage(
        &self,
        user: UserId,
        since: chrono::NaiveDate,
    ) -> Result<(QuotaSetting, u64), StoreError>;
    async fn set_quota(&self, user: UserId, quota: QuotaSetting) -> Result<(), StoreError>;
    /// `owner`'s messages (in `chat` only, when given) that match `query` (words, all of which
    /// must match), best first: `limit` of them after skipping `offset`.
    async fn search(
        &self,
        owner: UserId,
        query: &str,
        chat: Option<ChatId>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SearchHit>, StoreError>;
    /// Feedback on every chat's messages, summed per model.
    async fn feedback_by_model(&self) -> Result<Vec<FeedbackSum>, StoreError>;
    /// Every chat, of every owner, in id order after `after` (`arbor reindex`).
    async fn all_chats(
        &self,
        after: Option<ChatId>,
        limit: u32,
    ) -> Result<Vec<ChatMeta>, StoreError>;
    /// Which of `ids` are stored branches (of any chat), each with its chat's owner.
    async fn existing_branches(
        &self,
        ids: &[BranchId],
    ) -> Result<Vec<(BranchId, UserId)>, StoreError>;
    async fn create_share(&self, share: &ShareRecord) -> Result<(), StoreError>;
    /// The share whose token hashes to `token_hash`, snapshot included.
    async fn share_by_token(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<ShareRecord>, StoreError>;
    /// A chat's shares, newest first, without their snapshots.
    async fn list_shares(&self, chat: ChatId) -> Result<Vec<ShareRecord>, StoreError>;
    /// Deletes one of a chat's shares; `false` if the chat has no such share.
    async fn delete_share(&self, chat: ChatId, id: uuid::Uuid) -> Result<bool, StoreError>;
    /// A user's usage (everyone's with `None`) in `[from, to)`, summed by `group`, in key
    /// order.
    async fn usage(
        &self,
        user: Option<UserId>,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        group: UsageGroup,
    ) -> Result<Vec<UsageSum>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Message content.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Inserts messages idempotently by id: a retried batch never duplicates.
    async fn insert(&self, messages: &[Message]) -> Result<(), StoreError>;
    async fn delete(&self, deletes: &MessageDeletes) -> Result<(), StoreError>;
    /// Every message of a chat, in id order.
    async fn load_chat(&self, chat: ChatId) -> Result<Vec<Message>, StoreError>;
    /// Which of `ids` are stored (in any chat).
    async fn existing(&self, ids: &[MessageId]) -> Result<Vec<MessageId>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}

/// One turn of context sent to a model.
#[derive(Debug, Clone)]
pub struct Turn {
    pub role: Role,
    pub content: Arc<str>,
}

/// What a provider is asked to complete.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// Oldest first; the system prompt, if any, first.
    pub turns: Vec<Turn>,
    /// The provider's own model name.
    pub model: String,
}

/// Token counts, when the provider reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// A finished reply.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    /// The model that answered, as the provider names it.
    pub model: String,
    /// Why the model stopped (`stop`, `length`, ...), when reported.
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("unknown model {0}")]
    UnknownModel(String),
    /// The provider's queue is full.
    #[error("the model provider's queue is full")]
    Overloaded,
    /// The provider's circuit breaker is open.
    #[error("the model provider is unavailable")]
    Unavailable,
    /// The provider answered with an error status (`status`), or the connection failed (`None`).
    #[error("the model provider failed{}: {message}", status.map(|s| format!(" with HTTP {s}")).unwrap_or_default())]
    Upstream {
        status: Option<u16>,
        message: String,
        /// The provider's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// No response, or no data for longer than the provider's timeout.
    #[error("the model provider timed out")]
    Timeout,
}

impl LlmError {
    /// A short stable label for metrics: `unknown_model`, `overloaded`, `unavailable`,
    /// `timeout`, `connect` (no HTTP answer), `http_429`, `http_4xx`, `http_5xx`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownModel(_) => "unknown_model",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Upstream { status: None, .. } => "connect",
            Self::Upstream {
                status: Some(429), ..
            } => "http_429",
            Self::Upstream {
                status: Some(s), ..
            } if *s >= 500 => "http_5xx",
            Self::Upstream { .. } => "http_4xx",
        }
    }

    pub fn upstream(status: Option<u16>, message: impl Into<String>) -> Self {
        Self::Upstream {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Worth another attempt: rate limits, server errors, connection failures and timeouts.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Upstream { status, .. } => match status {
                None => true,
                Some(s) => *s == 429 || *s == 408 || *s >= 500,
            },
            Self::Timeout => true,
            _ => false,
        }
    }

    /// A sign the provider is down (counts towards its circuit breaker). A 429 is not: the
    /// provider is up and pacing us.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Upstream { status, .. } => status.is_none_or(|s| s >= 500),
            Self::Timeout => true,
            _ => false,
        }
    }
}

/// Produces assistant replies, streamed.
#[async_trait]
pub trait LlmProvider: Send + Sync + 'static {
    /// Streams a reply to `request`, handing each content delta to `on_delta` as it arrives, and
    /// returns the whole completion. Dropping the future abandons the upstream request.
    async fn stream(
        &self,
        request: &CompletionRequest,
        on_delta: &mut (dyn for<'d> FnMut(&'d str) + Send),
    ) -> Result<Completion, LlmError>;
}
