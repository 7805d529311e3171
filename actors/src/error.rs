//! Errors a chat operation can end with. The server maps each variant to one HTTP status and one
//! stable error code.

use crate::model::{BranchId, MessageId};
use crate::ports::{LlmError, QuotaRefused, ReplyRefused};
use crate::tree::TreeError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChatError {
    /// Unknown chat, or a chat the caller does not own (indistinguishable on purpose).
    #[error("chat not found")]
    ChatNotFound,
    #[error("message {0} not found in this chat")]
    MessageNotFound(MessageId),
    #[error("branch {0} not found in this chat")]
    BranchNotFound(BranchId),
    #[error("message index {index} is out of range for a path of {len} messages")]
    IndexOutOfRange { index: usize, len: usize },
    #[error("the `before` cursor is not on this branch's path")]
    CursorNotOnPath,
    #[error("a chat must keep at least one branch")]
    LastBranch,
    /// The chat holds as many messages as a chat can, or the path is as deep as one can be.
    #[error("{0}")]
    ChatFull(String),
    #[error("a reply is already being generated on this branch")]
    GenerationInProgress,
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyMismatch,
    #[error("{0}")]
    Invalid(String),
    /// An import kept ids that are stored already (in another chat, or an earlier import).
    #[error("{} of the document's ids are stored already (for example {}); import with new ids", .0.len(), .0.first().map(String::as_str).unwrap_or_default())]
    IdsTaken(Vec<String>),
    /// Feedback is for assistant messages.
    #[error("message {0} is not an assistant message; only replies take feedback")]
    NotRateable(MessageId),
    #[error("the chat is overloaded; retry later")]
    Overloaded,
    #[error("storage is unavailable")]
    StorageUnavailable,
    /// A per-user limit refused the request: `limit` per `window_secs` of `class` (or, with
    /// `window_secs` 0, `limit` at once); another may go in `retry_after_ms`.
    #[error("too many {class} requests; retry later")]
    RateLimited {
        class: &'static str,
        limit: u32,
        window_secs: u32,
        retry_after_ms: u64,
    },
    /// The user's token quota for the period is used up.
    #[error("the token quota of {limit} tokens for this period is used up ({used} used)")]
    QuotaExceeded {
        limit: u64,
        used: u64,
        resets_at: chrono::DateTime<chrono::Utc>,
    },
    /// Cluster mode: this server does not hold the lease of the chat's shard (any more).
    #[error("the chat is on another server or moving between servers; retry")]
    Moved,
    #[error("the model is unknown: {0}")]
    UnknownModel(String),
    #[error("the model provider's queue is full; retry later")]
    LlmOverloaded,
    #[error("the model provider is unavailable; retry later")]
    LlmUnavailable,
    /// The provider answered with an error status (`status`) or could not be reached (`None`).
    #[error("the model provider failed{}", status.map(|s| format!(" with HTTP {s}")).unwrap_or_default())]
    Upstream { status: Option<u16>, detail: String },
    #[error("the model provider timed out")]
    UpstreamTimeout,
    #[error("generation not found")]
    GenerationNotFound,
    /// Details are for the log, never for the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<TreeError> for ChatError {
    fn from(e: TreeError) -> Self {
        match e {
            TreeError::MessageNotFound(id) => ChatError::MessageNotFound(id),
            TreeError::BranchNotFound(id) => ChatError::BranchNotFound(id),
            TreeError::IndexOutOfRange { index, len } => ChatError::IndexOutOfRange { index, len },
            TreeError::CursorNotOnPath => ChatError::CursorNotOnPath,
            TreeError::LastBranch => ChatError::LastBranch,
            full @ TreeError::Full => ChatError::ChatFull(full.to_string()),
            other => ChatError::Internal(other.to_string()),
        }
    }
}

impl From<LlmError> for ChatError {
    fn from(e: LlmError) -> Self {
        match e {
            LlmError::UnknownModel(m) => ChatError::UnknownModel(m),
            LlmError::Overloaded => ChatError::LlmOverloaded,
            LlmError::Unavailable => ChatError::LlmUnavailable,
            LlmError::Upstream {
                status, message, ..
            } => ChatError::Upstream {
                status,
                detail: message,
            },
            LlmError::Timeout => ChatError::UpstreamTimeout,
        }
    }
}

impl From<ReplyRefused> for ChatError {
    fn from(r: ReplyRefused) -> Self {
        Self::RateLimited {
            class: r.class,
            limit: r.limit,
            window_secs: r.window_secs,
            retry_after_ms: r.retry_after_ms,
        }
    }
}

impl From<QuotaRefused> for ChatError {
    fn from(r: QuotaRefused) -> Self {
        match r {
            QuotaRefused::Exceeded {
                limit,
                used,
                resets_at,
            } => Self::QuotaExceeded {
                limit,
                used,
                resets_at,
            },
            QuotaRefused::Unavailable => Self::StorageUnavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full chat is the client's limit to hear about (409 `chat_full`), not an internal error.
    #[test]
    fn a_full_tree_is_a_full_chat() {
        let error = ChatError::from(TreeError::Full);
        assert!(
            matches!(&error, ChatError::ChatFull(m) if m.contains("at most")),
            "{error:?}"
        );
    }
}
