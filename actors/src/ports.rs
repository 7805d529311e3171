//! The ports Arbor's core needs from the outside world. Implementations live in the server crate
//! (SQLite, PostgreSQL, MongoDB, OpenAI-protocol HTTP); this crate only sees the traits.

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{
    Branch, BranchId, ChatId, ChatMeta, Message, MessageId, Role, UserId, UserRecord,
};

/// What a store can say went wrong. `Unavailable` is retried by the writer; `Conflict` names the
/// unique field that clashed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("unique constraint on {0}")]
    Conflict(&'static str),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// The metadata changes of one write-behind batch, already coalesced (latest version per row).
#[derive(Debug, Default, Clone)]
pub struct MetaBatch {
    pub chats: Vec<ChatMeta>,
    /// Each branch with the chat version that produced it.
    pub branches: Vec<(Branch, i64)>,
    pub deleted_branches: Vec<BranchId>,
    pub deleted_chats: Vec<ChatId>,
}

impl MetaBatch {
    pub fn is_empty(&self) -> bool {
        self.chats.is_empty()
            && self.branches.is_empty()
            && self.deleted_branches.is_empty()
            && self.deleted_chats.is_empty()
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

/// Users, chats and branches.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Fails with `Conflict("email")` / `Conflict("username")` on a taken identity.
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// Looks a user up by email or username (case-insensitive).
    async fn user_by_login(&self, login: &str) -> Result<Option<UserRecord>, StoreError>;
    /// A chat's row and its branches.
    async fn load_chat(&self, id: ChatId) -> Result<Option<(ChatMeta, Vec<Branch>)>, StoreError>;
    /// A user's chats, newest first, strictly older than `before` when given.
    async fn list_chats(
        &self,
        owner: UserId,
        limit: u32,
        before: Option<ChatId>,
    ) -> Result<Vec<ChatMeta>, StoreError>;
    /// Applies a batch in one transaction. Rows carry versions: an older version never
    /// overwrites a newer one.
    async fn apply(&self, batch: &MetaBatch) -> Result<(), StoreError>;
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
    async fn ping(&self) -> Result<(), StoreError>;
}

/// One turn of context sent to a model.
#[derive(Debug, Clone)]
pub struct Turn {
    pub role: Role,
    pub content: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// Oldest first; the system prompt, if any, first.
    pub turns: Vec<Turn>,
    /// The model the client asked for, if any.
    pub model: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    /// The model name to record on the assistant message.
    pub model: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("unknown model {0}")]
    UnknownModel(String),
    #[error("provider failed: {0}")]
    Upstream(String),
}

/// Produces assistant replies.
#[async_trait]
pub trait LlmProvider: Send + Sync + 'static {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError>;
}
