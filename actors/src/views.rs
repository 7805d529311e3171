//! Read models a chat actor answers with. They serialize straight to the REST API's JSON, so the
//! HTTP layer maps nothing by hand (and, with the `openapi` feature, documents them).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{
    BranchId, ChatId, ChatMeta, ChatRow, Feedback, GenerationId, GenerationStatus, MessageId, Role,
};
use crate::tree::{BranchRef, Node, Page, Tree};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// A message as clients see it, with its place among its siblings (for `< 2/3 >` controls).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MessageView {
    pub id: MessageId,
    pub chat_id: ChatId,
    pub parent_id: Option<MessageId>,
    pub role: Role,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub content: Arc<str>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub model: Option<Arc<str>>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Arc<serde_json::Value>>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    /// 0-based position among messages with the same parent, in creation order.
    pub sibling_index: usize,
    pub sibling_count: usize,
    pub children_count: usize,
    /// The chat owner's rating of an assistant message; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::model::Feedback>))]
    pub feedback: Option<Arc<Feedback>>,
}

impl MessageView {
    pub fn of(tree: &Tree, node: &Node) -> Self {
        let (sibling_index, sibling_count) = tree.sibling_position_of(node);
        Self {
            id: node.id(),
            chat_id: tree.chat(),
            parent_id: tree.parent_id(node),
            role: node.role(),
            content: Arc::from(tree.content(node)),
            model: tree.model(node).cloned(),
            metadata: tree.metadata(node).cloned(),
            created_at: tree.created_at(node),
            sibling_index,
            sibling_count,
            children_count: tree.children_count(node),
            feedback: tree.feedback(node).cloned(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BranchView {
    pub id: BranchId,
    pub chat_id: ChatId,
    pub name: String,
    /// `null` for a branch with no messages yet.
    pub head_message_id: Option<MessageId>,
    /// The message this branch was forked or edited from.
    pub forked_from_message_id: Option<MessageId>,
    /// Messages on the branch's path (root to head).
    pub message_count: usize,
    pub is_active: bool,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl BranchView {
    pub fn of(tree: &Tree, branch: &BranchRef) -> Self {
        Self {
            id: branch.id,
            chat_id: tree.chat(),
            name: branch.name.to_string(),
            head_message_id: branch.head,
            forked_from_message_id: branch.forked_from,
            message_count: tree.path_len(branch.id).unwrap_or(0),
            is_active: tree.active() == branch.id,
            created_at: branch.created_at,
            updated_at: branch.updated_at,
        }
    }
}

/// A chat with its branches.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ChatView {
    pub id: ChatId,
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub description: Option<String>,
    pub active_branch_id: BranchId,
    pub message_count: usize,
    pub branches: Vec<BranchView>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl ChatView {
    pub fn of(row: &ChatRow, tree: &Tree) -> Self {
        Self {
            id: tree.chat(),
            title: row.title().map(str::to_owned),
            system_prompt: row.system_prompt().map(str::to_owned),
            description: row.description().map(str::to_owned),
            active_branch_id: tree.active(),
            message_count: tree.message_count(),
            branches: tree
                .branches()
                .iter()
                .map(|b| BranchView::of(tree, b))
                .collect(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// One entry of a chat listing (read from the metadata store, not from actors).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ChatSummary {
    pub id: ChatId,
    pub title: Option<String>,
    pub description: Option<String>,
    pub active_branch_id: BranchId,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl From<&ChatView> for ChatSummary {
    fn from(chat: &ChatView) -> Self {
        Self {
            id: chat.id,
            title: chat.title.clone(),
            description: chat.description.clone(),
            active_branch_id: chat.active_branch_id,
            created_at: chat.created_at,
            updated_at: chat.updated_at,
        }
    }
}

impl From<&ChatMeta> for ChatSummary {
    fn from(meta: &ChatMeta) -> Self {
        Self {
            id: meta.id,
            title: meta.title.clone(),
            description: meta.description.clone(),
            active_branch_id: meta.active_branch,
            created_at: meta.created_at,
            updated_at: meta.updated_at,
        }
    }
}

/// A page of a user's chats, newest first.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ChatList {
    pub chats: Vec<ChatSummary>,
    /// Older chats exist; pass `next_before` as `before` to get them.
    pub has_more: bool,
    pub next_before: Option<ChatId>,
}

/// A page of a branch's path, oldest first.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MessagePage {
    pub chat_id: ChatId,
    pub branch_id: BranchId,
    pub messages: Vec<MessageView>,
    /// Older messages exist; pass `next_before` as `before` to get them.
    pub has_more: bool,
    pub next_before: Option<MessageId>,
    /// Length of the branch's whole path.
    pub total: usize,
}

impl MessagePage {
    pub fn of(tree: &Tree, branch: BranchId, page: &Page<'_>) -> Self {
        Self {
            chat_id: tree.chat(),
            branch_id: branch,
            messages: page
                .nodes
                .iter()
                .map(|n| MessageView::of(tree, n))
                .collect(),
            has_more: page.has_more,
            next_before: page.next_before(),
            total: page.path_len,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TreeNodeView {
    #[serde(flatten)]
    pub message: MessageView,
    pub children: Vec<MessageId>,
}

/// The whole tree: every node with its links, and every branch.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TreeView {
    pub chat_id: ChatId,
    pub active_branch_id: BranchId,
    pub root_ids: Vec<MessageId>,
    /// In creation order.
    pub nodes: Vec<TreeNodeView>,
    pub branches: Vec<BranchView>,
}

/// What a send created: the user message, then the assistant answer if one was given or asked for.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SendView {
    pub chat_id: ChatId,
    pub branch_id: BranchId,
    pub messages: Vec<MessageView>,
    /// The reply's generation, when the send asked for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<GenerationId>,
}

/// What an edit created.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EditView {
    pub message: MessageView,
    pub branch: BranchView,
    /// The assistant reply, when the edit asked for one.
    pub reply: Option<MessageView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_id: Option<GenerationId>,
}

/// What a regeneration created: a branch from the answered message, holding the new reply.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RegenerateView {
    pub branch: BranchView,
    /// The new reply (absent while it streams).
    pub reply: Option<MessageView>,
    pub generation_id: GenerationId,
}

/// A generation's state.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct GenerationView {
    pub id: GenerationId,
    pub chat_id: ChatId,
    pub branch_id: BranchId,
    /// The message being answered.
    pub reply_to: MessageId,
    /// `provider/model`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub model: Arc<str>,
    pub status: GenerationStatus,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    /// Id of the latest event (resume with `Last-Event-ID` to get the ones after it).
    pub last_event_id: u64,
    /// The stored reply, once there is one.
    pub message_id: Option<MessageId>,
}

/// What deleting a branch did.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BranchDeletedView {
    pub deleted_branch_id: BranchId,
    pub deleted_message_count: usize,
    pub active_branch_id: BranchId,
}

/// What a share link shows: a snapshot of one branch's path, or of the whole tree, as it was
/// when the link was made. It holds no owner, no system prompt, no metadata and no feedback.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SharedChat {
    pub title: Option<String>,
    pub scope: ShareScope,
    /// The shared branch (`branch` scope), or the branch that was active (`tree` scope).
    pub branch_id: BranchId,
    /// `branch`: the path from the root to the branch's head; `tree`: every message, in
    /// creation order (a parent before its children).
    pub messages: Vec<SharedMessage>,
    /// `branch`: the shared branch; `tree`: every branch.
    pub branches: Vec<SharedBranch>,
}

/// Whether a share shows one branch's path or the whole tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ShareScope {
    #[default]
    Branch,
    Tree,
}

impl ShareScope {
    pub const fn as_str(self) -> &'static str {
        match self {
            ShareScope::Branch => "branch",
            ShareScope::Tree => "tree",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SharedMessage {
    pub id: MessageId,
    pub parent_id: Option<MessageId>,
    pub role: Role,
    pub content: String,
    pub model: Option<String>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SharedBranch {
    pub id: BranchId,
    pub name: String,
    pub head_id: Option<MessageId>,
}

impl SharedChat {
    /// A snapshot of `tree`: the path of `branch` (`Branch` scope) or everything (`Tree`).
    pub fn of(
        title: Option<String>,
        tree: &Tree,
        branch: BranchId,
        scope: ShareScope,
    ) -> Result<Self, crate::tree::TreeError> {
        let message = |node: &Node| SharedMessage {
            id: node.id(),
            parent_id: tree.parent_id(node),
            role: node.role(),
            content: tree.content(node).to_owned(),
            model: tree.model(node).map(|m| m.to_string()),
            created_at: tree.created_at(node),
        };
        let shared = |b: &BranchRef| SharedBranch {
            id: b.id,
            name: b.name.to_string(),
            head_id: b.head,
        };
        let (messages, branches) = match scope {
            ShareScope::Branch => (
                tree.path(branch)?.into_iter().map(message).collect(),
                vec![shared(tree.branch(branch)?)],
            ),
            ShareScope::Tree => (
                tree.nodes().map(message).collect(),
                tree.branches().iter().map(shared).collect(),
            ),
        };
        Ok(Self {
            title,
            scope,
            branch_id: branch,
            messages,
            branches,
        })
    }
}

/// Where a message is in its chat: every branch whose path holds it, and a window of that path
/// around it (for a search hit).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Location {
    /// Every branch whose path holds the message; the active one first when it does.
    pub branches: Vec<LocatedBranch>,
    /// Up to `window` messages before it on its path (from the root side), the message, and
    /// up to `window` after it on the first branch above.
    pub path: Vec<MessageView>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LocatedBranch {
    pub id: BranchId,
    pub name: String,
    pub active: bool,
}

impl Location {
    /// `message`'s place in `tree`, with `window` messages either side.
    pub fn of(
        tree: &Tree,
        message: MessageId,
        window: usize,
    ) -> Result<Self, crate::tree::TreeError> {
        tree.node(message)?;
        let active = tree.active();
        let mut branches: Vec<LocatedBranch> = tree
            .branches()
            .iter()
            .filter(|b| tree.on_path(b, message))
            .map(|b| LocatedBranch {
                id: b.id,
                name: b.name.to_string(),
                active: b.id == active,
            })
            .collect();
        branches.sort_by_key(|b| !b.active);
        let path = match branches.first() {
            Some(b) => {
                let nodes = tree.path(b.id)?;
                let at = nodes.iter().position(|n| n.id() == message).unwrap_or(0);
                let from = at.saturating_sub(window);
                let to = (at + window + 1).min(nodes.len());
                nodes[from..to]
                    .iter()
                    .map(|n| MessageView::of(tree, n))
                    .collect()
            }
            None => vec![MessageView::of(tree, tree.node(message)?)],
        };
        Ok(Self { branches, path })
    }
}
