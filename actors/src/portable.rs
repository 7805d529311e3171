//! Arbor's own export format, `arbor.chat/1`: one chat, its whole tree, as one JSON document.
//! Export is lossless: importing a document and exporting the new chat gives the same document
//! but for the chat's id (message and branch ids are kept). The whole document is checked here
//! (pure, before anything is stored), and each way it can be wrong has its own code.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Branch, BranchId, ChatId, Feedback, Message, MessageId, Role};
use crate::tree::{Node, Tree};

/// A whole chat to create at once (`Chats::import`): from a document, or a share link.
#[derive(Debug, Clone)]
pub struct ImportedChat {
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub description: Option<String>,
    pub branches: Vec<Branch>,
    pub active: BranchId,
    pub messages: Vec<Message>,
    /// The chat's own times (now when `None`).
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// Feedback on its messages.
    pub feedback: Vec<(MessageId, Feedback)>,
    /// Whether the ids came from elsewhere (an export) rather than made for this import:
    /// then none may be stored already (`ChatError::IdsTaken`).
    pub keeps_ids: bool,
}

/// The format and version an export names.
pub const FORMAT: &str = "arbor.chat/1";

/// One chat, exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChatExport {
    /// `arbor.chat/1`.
    pub format: String,
    pub chat: ExportedChat,
    pub active_branch_id: BranchId,
    /// In id order.
    pub branches: Vec<ExportedBranch>,
    /// In id (creation) order.
    pub messages: Vec<ExportedMessage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExportedChat {
    pub id: ChatId,
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub description: Option<String>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExportedBranch {
    pub id: BranchId,
    pub name: String,
    /// `null` for a branch with no messages yet.
    pub head_id: Option<MessageId>,
    pub forked_from_id: Option<MessageId>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: DateTime<Utc>,
}

/// Whether a message is whole: `incomplete` for a reply cut short (cancelled, or stopped by a
/// shutdown), which its metadata also says (`"incomplete": true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Complete,
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExportedMessage {
    pub id: MessageId,
    pub parent_id: Option<MessageId>,
    pub role: Role,
    pub content: String,
    pub model: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<serde_json::Value>,
    /// Derived from `metadata.incomplete`; an import reads the metadata, not this.
    pub status: MessageStatus,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<Feedback>,
}

impl ChatExport {
    /// The export of a chat's row and tree.
    pub fn of(chat: ExportedChat, tree: &Tree) -> Self {
        let message = |node: &Node| {
            let metadata = tree.metadata(node).map(|m| (**m).clone());
            let incomplete = metadata
                .as_ref()
                .and_then(|m| m.get("incomplete"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            ExportedMessage {
                id: node.id(),
                parent_id: tree.parent_id(node),
                role: node.role(),
                content: tree.content(node).to_owned(),
                model: tree.model(node).map(|m| m.to_string()),
                metadata,
                status: match incomplete {
                    true => MessageStatus::Incomplete,
                    false => MessageStatus::Complete,
                },
                created_at: tree.created_at(node),
                feedback: tree.feedback(node).map(|f| (**f).clone()),
            }
        };
        Self {
            format: FORMAT.to_owned(),
            chat,
            active_branch_id: tree.active(),
            branches: tree
                .branches()
                .iter()
                .map(|b| ExportedBranch {
                    id: b.id,
                    name: b.name.to_string(),
                    head_id: b.head,
                    forked_from_id: b.forked_from,
                    created_at: b.created_at,
                    updated_at: b.updated_at,
                })
                .collect(),
            messages: tree.nodes().map(message).collect(),
        }
    }
}

/// What an import may hold.
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    pub max_messages: usize,
    pub max_branches: usize,
    pub max_message_chars: usize,
    pub max_title_chars: usize,
    pub max_branch_name_chars: usize,
    pub max_system_prompt_chars: usize,
    pub max_description_chars: usize,
}

/// Why a document cannot be imported; each has its own stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("unsupported format {0:?}; expected {FORMAT:?}")]
    UnsupportedFormat(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    InvalidText(String),
    #[error("id {0} appears more than once")]
    DuplicateId(String),
    #[error("message {message}'s parent {parent} is not in the document")]
    DanglingParent {
        message: MessageId,
        parent: MessageId,
    },
    #[error("message {0} is its own ancestor")]
    Cycle(MessageId),
    #[error("the document has {0} root messages where its format allows one")]
    MultipleRoots(usize),
    #[error("branch {branch}'s head {head} is not in the document")]
    HeadNotInTree { branch: BranchId, head: MessageId },
    #[error("message {0} is on no branch's path")]
    Unreachable(MessageId),
    #[error("the active branch {0} is not among the branches")]
    ActiveBranchMissing(BranchId),
    #[error("a chat needs at least one branch")]
    NoBranches,
}

impl ChatExport {
    /// Checks the whole document and turns it into a chat to create: every id kept but the
    /// chat's (or, with `new_ids`, every id new: `ids` maps old to new).
    pub fn into_import(
        self,
        limits: &ImportLimits,
        new_ids: bool,
    ) -> Result<(ImportedChat, HashMap<String, String>), ImportError> {
        if self.format != FORMAT {
            return Err(ImportError::UnsupportedFormat(self.format));
        }
        self.check(limits)?;
        let mut ids: HashMap<String, String> = HashMap::new();
        let mut message_ids: HashMap<MessageId, MessageId> = HashMap::new();
        let mut branch_ids: HashMap<BranchId, BranchId> = HashMap::new();
        if new_ids {
            // New ids in the old ones' order, so siblings keep their order.
            let mut old: Vec<MessageId> = self.messages.iter().map(|m| m.id).collect();
            old.sort();
            for id in old {
                let new = MessageId::new();
                ids.insert(id.to_string(), new.to_string());
                message_ids.insert(id, new);
            }
            let mut old: Vec<BranchId> = self.branches.iter().map(|b| b.id).collect();
            old.sort();
            for id in old {
                let new = BranchId::new();
                ids.insert(id.to_string(), new.to_string());
                branch_ids.insert(id, new);
            }
        }
        let message = |id: MessageId| message_ids.get(&id).copied().unwrap_or(id);
        let branch = |id: BranchId| branch_ids.get(&id).copied().unwrap_or(id);
        let placeholder = self.chat.id;
        let mut feedback = Vec::new();
        let messages = self
            .messages
            .into_iter()
            .map(|m| {
                let id = message(m.id);
                if let Some(f) = m.feedback {
                    feedback.push((id, f));
                }
                Message {
                    id,
                    chat_id: placeholder,
                    parent_id: m.parent_id.map(message),
                    role: m.role,
                    content: m.content.into(),
                    created_at: m.created_at,
                    model: m.model.map(Into::into),
                    metadata: m.metadata.map(Arc::new),
                    idempotency_key: None,
                }
            })
            .collect();
        let branches = self
            .branches
            .into_iter()
            .map(|b| Branch {
                id: branch(b.id),
                chat_id: placeholder,
                name: b.name,
                head: b.head_id.map(message),
                forked_from: b.forked_from_id.map(message),
                created_at: b.created_at,
                updated_at: b.updated_at,
                fallback: None,
            })
            .collect();
        let imported = ImportedChat {
            title: self.chat.title,
            system_prompt: self.chat.system_prompt,
            description: self.chat.description,
            branches,
            active: branch(self.active_branch_id),
            messages,
            created_at: Some(self.chat.created_at),
            updated_at: Some(self.chat.updated_at),
            feedback,
            keeps_ids: !new_ids,
        };
        Ok((imported, ids))
    }

    /// Every rule of a well-formed tree, and the limits.
    pub fn check(&self, limits: &ImportLimits) -> Result<(), ImportError> {
        let too_large = |what: String| Err(ImportError::TooLarge(what));
        if self.messages.len() > limits.max_messages {
            return too_large(format!(
                "{} messages; an import holds at most {}",
                self.messages.len(),
                limits.max_messages
            ));
        }
        if self.branches.len() > limits.max_branches {
            return too_large(format!(
                "{} branches; an import holds at most {}",
                self.branches.len(),
                limits.max_branches
            ));
        }
        let text = |what: &str, value: Option<&str>, max: usize| -> Result<(), ImportError> {
            let Some(value) = value else {
                return Ok(());
            };
            if value.contains('\0') {
                return Err(ImportError::InvalidText(format!(
                    "{what} holds a NUL character"
                )));
            }
            if value.chars().count() > max {
                return Err(ImportError::TooLarge(format!(
                    "{what} is over {max} characters"
                )));
            }
            Ok(())
        };
        text(
            "the title",
            self.chat.title.as_deref(),
            limits.max_title_chars,
        )?;
        text(
            "the system prompt",
            self.chat.system_prompt.as_deref(),
            limits.max_system_prompt_chars,
        )?;
        text(
            "the description",
            self.chat.description.as_deref(),
            limits.max_description_chars,
        )?;
        if self.branches.is_empty() {
            return Err(ImportError::NoBranches);
        }
        let mut seen: HashSet<uuid::Uuid> = HashSet::with_capacity(self.messages.len());
        let mut parents: HashMap<MessageId, Option<MessageId>> =
            HashMap::with_capacity(self.messages.len());
        for m in &self.messages {
            if !seen.insert(*m.id.as_uuid()) {
                return Err(ImportError::DuplicateId(m.id.to_string()));
            }
            text(
                &format!("message {}", m.id),
                Some(&m.content),
                limits.max_message_chars,
            )?;
            parents.insert(m.id, m.parent_id);
        }
        for b in &self.branches {
            if !seen.insert(*b.id.as_uuid()) {
                return Err(ImportError::DuplicateId(b.id.to_string()));
            }
            text(
                &format!("branch {}'s name", b.id),
                Some(&b.name),
                limits.max_branch_name_chars,
            )?;
            if b.name.trim().is_empty() {
                return Err(ImportError::InvalidText(format!(
                    "branch {} has no name",
                    b.id
                )));
            }
        }
        for m in &self.messages {
            if let Some(parent) = m.parent_id {
                if !parents.contains_key(&parent) {
                    return Err(ImportError::DanglingParent {
                        message: m.id,
                        parent,
                    });
                }
            }
        }
        // Every message reaches a root: walk up, remembering what is known to.
        let mut rooted: HashSet<MessageId> = HashSet::with_capacity(parents.len());
        for m in &self.messages {
            let mut walked = Vec::new();
            let mut at = Some(m.id);
            while let Some(id) = at {
                if rooted.contains(&id) {
                    break;
                }
                if walked.len() > parents.len() {
                    return Err(ImportError::Cycle(m.id));
                }
                walked.push(id);
                at = parents.get(&id).copied().flatten();
            }
            rooted.extend(walked);
        }
        if !self.branches.iter().any(|b| b.id == self.active_branch_id) {
            return Err(ImportError::ActiveBranchMissing(self.active_branch_id));
        }
        // Every message is on some branch's path.
        let mut reached: HashSet<MessageId> = HashSet::with_capacity(parents.len());
        for b in &self.branches {
            let Some(head) = b.head_id else {
                continue;
            };
            if !parents.contains_key(&head) {
                return Err(ImportError::HeadNotInTree { branch: b.id, head });
            }
            let mut at = Some(head);
            while let Some(id) = at {
                if !reached.insert(id) {
                    break;
                }
                at = parents.get(&id).copied().flatten();
            }
        }
        if let Some(m) = self.messages.iter().find(|m| !reached.contains(&m.id)) {
            return Err(ImportError::Unreachable(m.id));
        }
        Ok(())
    }
}
