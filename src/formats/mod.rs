//! Other products' export formats, to and from Arbor's own (`arbor.chat/1`,
//! `arbor_actors::portable`): ChatGPT's data export and Open WebUI's chat export. Each
//! conversation becomes one `ChatExport` with its whole tree; what Arbor has no field for is
//! kept in the messages' metadata, under the product's name, and written back on export.

pub mod chatgpt;
pub mod openwebui;

use std::collections::{HashMap, HashSet};

use arbor_actors::model::{BranchId, MessageId};
use arbor_actors::portable::{
    ChatExport, ExportedBranch, ExportedChat, ExportedMessage, ImportError, FORMAT,
};
use chrono::{DateTime, TimeZone, Utc};
use sha2::{Digest, Sha256};

/// A product's node id as a message id: the id itself when it is a UUID, otherwise a UUID
/// derived from it (and from `scope`, the conversation), the same on every import.
pub(crate) fn message_id(scope: &str, id: &str) -> MessageId {
    match id.parse::<uuid::Uuid>() {
        Ok(uuid) => MessageId::from_uuid(uuid),
        Err(_) => MessageId::from_uuid(derived(&format!("{scope}/{id}"))),
    }
}

/// A UUID (version 8) from a name: the first 16 bytes of its SHA-256.
pub(crate) fn derived(name: &str) -> uuid::Uuid {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Seconds since the Unix epoch (a float, as ChatGPT writes them; milliseconds when the
/// number is too big to be seconds, as some Open WebUI versions write them).
pub(crate) fn time(value: Option<&serde_json::Value>) -> Option<DateTime<Utc>> {
    let secs = value?.as_f64()?;
    let secs = if secs > 1e11 { secs / 1000.0 } else { secs };
    let millis = (secs * 1000.0).round() as i64;
    Utc.timestamp_millis_opt(millis).single()
}

pub(crate) fn seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

/// The branches of a tree given as nodes with parents: one per leaf (its head), the branch of
/// `current` active (a branch of its own when it is not a leaf). Ids are derived from the
/// heads, so importing the same conversation twice gives the same branch ids.
pub(crate) fn branches(
    scope: &str,
    messages: &[ExportedMessage],
    current: Option<MessageId>,
    at: DateTime<Utc>,
) -> (Vec<ExportedBranch>, BranchId) {
    let parents: HashSet<MessageId> = messages.iter().filter_map(|m| m.parent_id).collect();
    let mut heads: Vec<MessageId> = messages
        .iter()
        .map(|m| m.id)
        .filter(|id| !parents.contains(id))
        .collect();
    let known: HashSet<MessageId> = messages.iter().map(|m| m.id).collect();
    let current = current.filter(|c| known.contains(c));
    match current {
        Some(c) if !heads.contains(&c) => heads.insert(0, c),
        Some(c) => {
            heads.retain(|h| *h != c);
            heads.insert(0, c);
        }
        None => {}
    }
    let branch = |head: Option<MessageId>, name: String| ExportedBranch {
        id: BranchId::from_uuid(derived(&format!(
            "{scope}/branch/{}",
            head.map(|h| h.to_string()).unwrap_or_default()
        ))),
        name,
        head_id: head,
        forked_from_id: None,
        created_at: at,
        updated_at: at,
    };
    let mut out: Vec<ExportedBranch> = heads
        .iter()
        .enumerate()
        .map(|(i, head)| {
            let name = match i {
                0 => "main".to_owned(),
                n => format!("branch {}", n + 1),
            };
            branch(Some(*head), name)
        })
        .collect();
    if out.is_empty() {
        out.push(branch(None, "main".to_owned()));
    }
    let active = out[0].id;
    out.sort_by_key(|b| b.id);
    (out, active)
}

/// A product's conversation as a chat document: its messages, one branch a leaf (`current`'s
/// active), no system prompt or description (neither product has a field for them).
pub(crate) fn document(
    scope: &str,
    title: Option<String>,
    (created, updated): (DateTime<Utc>, DateTime<Utc>),
    mut messages: Vec<ExportedMessage>,
    current: Option<MessageId>,
) -> ChatExport {
    messages.sort_by_key(|m| m.id);
    let (branches, active) = branches(scope, &messages, current, updated);
    ChatExport {
        format: FORMAT.to_owned(),
        chat: ExportedChat {
            id: arbor_actors::model::ChatId::new(),
            title,
            system_prompt: None,
            description: None,
            created_at: created,
            updated_at: updated,
        },
        active_branch_id: active,
        branches,
        messages,
    }
}

/// Each message's children, in id order.
pub(crate) fn children(messages: &[ExportedMessage]) -> HashMap<MessageId, Vec<MessageId>> {
    let mut children: HashMap<MessageId, Vec<MessageId>> = HashMap::new();
    for m in messages {
        if let Some(p) = m.parent_id {
            children.entry(p).or_default().push(m.id);
        }
    }
    for list in children.values_mut() {
        list.sort();
    }
    children
}

/// A product's document that is not the shape its format has.
pub(crate) fn malformed(what: impl Into<String>) -> ImportError {
    ImportError::UnsupportedFormat(what.into())
}
