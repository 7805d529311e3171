//! ChatGPT's data export (`conversations.json`): a list of conversations, each a `mapping` of
//! nodes `{id, message, parent, children}` and a `current_node`.
//!
//! Import: every node with a message becomes a message with the node's id (a UUID; any other id
//! gets a UUID derived from it), nodes without one (the `client-created-root`) are left out and
//! their children attached to their parent. Roles `user`, `assistant` and `system` are Arbor's;
//! any other author (`tool`) becomes an assistant message. The text is the content's string
//! parts (or its `text`); the author, a content that is not plain text (multi-part, code,
//! images), and the message's own fields (`metadata`, `status`, `recipient`, ...) are kept in
//! the message's metadata under `chatgpt`. Each leaf heads a branch; `current_node`'s is active.
//! A conversation's mapping has exactly one root node.
//!
//! Export writes a chat back in the same shape, from that metadata where it has it.

use std::collections::{HashMap, HashSet};

use arbor_actors::model::{MessageId, Role};
use arbor_actors::portable::{ChatExport, ExportedMessage, ImportError, MessageStatus};
use chrono::Utc;
use serde_json::{json, Map, Value};

use super::{children, malformed, message_id, seconds, time};

const ROOT: &str = "client-created-root";

/// A mapping node as read: its parent's id and its message, if it has one.
type RawNode = (Option<String>, Option<Map<String, Value>>);

/// Each conversation of an export (a list, or one conversation alone) as a chat document.
pub fn import(value: Value) -> Result<Vec<ChatExport>, ImportError> {
    let conversations = match value {
        Value::Array(list) => list,
        Value::Object(one) => vec![Value::Object(one)],
        _ => return Err(malformed("a ChatGPT export is a list of conversations")),
    };
    conversations.into_iter().map(conversation).collect()
}

fn conversation(value: Value) -> Result<ChatExport, ImportError> {
    let Value::Object(mut conversation) = value else {
        return Err(malformed("a ChatGPT conversation is an object"));
    };
    let Some(Value::Object(mapping)) = conversation.remove("mapping") else {
        return Err(malformed("a ChatGPT conversation has a `mapping` object"));
    };
    let scope = conversation
        .get("conversation_id")
        .or_else(|| conversation.get("id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let created = time(conversation.get("create_time")).unwrap_or_else(Utc::now);
    let updated = time(conversation.get("update_time")).unwrap_or(created);
    // The raw tree: node id → (parent id, message).
    let mut nodes: HashMap<String, RawNode> = HashMap::with_capacity(mapping.len());
    for (key, node) in mapping {
        let Value::Object(mut node) = node else {
            return Err(malformed(format!("node {key} is not an object")));
        };
        let parent = match node.remove("parent") {
            Some(Value::String(p)) => Some(p),
            Some(Value::Null) | None => None,
            Some(_) => return Err(malformed(format!("node {key}'s parent is not a string"))),
        };
        let message = match node.remove("message") {
            Some(Value::Object(m)) => Some(m),
            Some(Value::Null) | None => None,
            Some(_) => return Err(malformed(format!("node {key}'s message is not an object"))),
        };
        nodes.insert(key, (parent, message));
    }
    let roots = nodes.values().filter(|(p, _)| p.is_none()).count();
    if roots > 1 {
        return Err(ImportError::MultipleRoots(roots));
    }
    for (key, (parent, _)) in &nodes {
        if let Some(p) = parent {
            if !nodes.contains_key(p) {
                return Err(ImportError::DanglingParent {
                    message: message_id(&scope, key),
                    parent: message_id(&scope, p),
                });
            }
        }
    }
    // A kept node's parent: the nearest ancestor with a message.
    let kept_parent = |key: &str| -> Result<Option<MessageId>, ImportError> {
        let mut at = nodes.get(key).and_then(|(p, _)| p.clone());
        let mut steps = 0;
        while let Some(id) = at {
            steps += 1;
            if steps > nodes.len() {
                return Err(ImportError::Cycle(message_id(&scope, key)));
            }
            match nodes.get(&id) {
                Some((_, Some(_))) => return Ok(Some(message_id(&scope, &id))),
                Some((parent, None)) => at = parent.clone(),
                None => return Ok(None),
            }
        }
        Ok(None)
    };
    let mut messages = Vec::new();
    for (key, (_, message)) in &nodes {
        let Some(message) = message else {
            continue;
        };
        messages.push(message_from(
            &scope,
            key,
            message,
            kept_parent(key)?,
            created,
        ));
    }
    let current = match conversation.get("current_node").and_then(Value::as_str) {
        // The current node, or its nearest ancestor with a message.
        Some(node) => match nodes.get(node) {
            Some((_, Some(_))) => Some(message_id(&scope, node)),
            Some(_) => kept_parent(node)?,
            None => None,
        },
        None => None,
    };
    let title = conversation
        .get("title")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(super::document(
        &scope,
        title,
        (created, updated),
        messages,
        current,
    ))
}

/// One node's message.
fn message_from(
    scope: &str,
    key: &str,
    message: &Map<String, Value>,
    parent: Option<MessageId>,
    fallback_time: chrono::DateTime<Utc>,
) -> ExportedMessage {
    let mut kept = message.clone();
    kept.remove("id");
    let author_role = message
        .get("author")
        .and_then(|a| a.get("role"))
        .and_then(Value::as_str)
        .unwrap_or("assistant");
    let role = match author_role {
        "user" => Role::User,
        "system" => Role::System,
        _ => Role::Assistant,
    };
    // The author is kept unless the role says all of it.
    let plain_author = message.get("author").is_some_and(|a| {
        a.get("name").is_none_or(Value::is_null)
            && a.get("metadata")
                .is_none_or(|m| m.as_object().is_some_and(Map::is_empty))
            && matches!(author_role, "user" | "assistant" | "system")
    });
    if plain_author {
        kept.remove("author");
    }
    let content = message.get("content");
    let parts: Option<&Vec<Value>> = content
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    let text = match (
        parts,
        content.and_then(|c| c.get("text")).and_then(Value::as_str),
    ) {
        (Some(parts), _) => parts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        (None, Some(text)) => text.to_owned(),
        (None, None) => String::new(),
    };
    // Plain text (one string part) is the content itself; anything else is kept whole.
    let plain_text = content.is_some_and(|c| {
        c.get("content_type").and_then(Value::as_str) == Some("text")
            && parts.is_some_and(|p| p.len() == 1 && p[0].is_string())
            && c.as_object().is_some_and(|o| o.len() == 2)
    });
    if plain_text {
        kept.remove("content");
    }
    let created = time(message.get("create_time")).unwrap_or(fallback_time);
    kept.remove("create_time");
    let model = message
        .get("metadata")
        .and_then(|m| m.get("model_slug"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let metadata = match kept.is_empty() {
        true => None,
        false => Some(json!({ "chatgpt": kept })),
    };
    ExportedMessage {
        id: message_id(scope, key),
        parent_id: parent,
        role,
        content: text,
        model,
        metadata,
        status: MessageStatus::Complete,
        created_at: created,
        feedback: None,
    }
}

/// A chat in ChatGPT's shape: one conversation of `conversations.json`.
pub fn export(chat: &ChatExport) -> Value {
    let kids = children(&chat.messages);
    let roots: Vec<String> = chat
        .messages
        .iter()
        .filter(|m| m.parent_id.is_none())
        .map(|m| m.id.to_string())
        .collect();
    let mut mapping = Map::new();
    mapping.insert(
        ROOT.to_owned(),
        json!({"id": ROOT, "message": null, "parent": null, "children": roots}),
    );
    for m in &chat.messages {
        let kept = m
            .metadata
            .as_ref()
            .and_then(|v| v.get("chatgpt"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut message = Map::new();
        message.insert("id".into(), json!(m.id));
        message.insert(
            "author".into(),
            json!({"role": m.role.as_str(), "name": null, "metadata": {}}),
        );
        message.insert("create_time".into(), json!(seconds(m.created_at)));
        message.insert("update_time".into(), Value::Null);
        message.insert(
            "content".into(),
            json!({"content_type": "text", "parts": [m.content]}),
        );
        message.insert("status".into(), json!("finished_successfully"));
        message.insert("end_turn".into(), Value::Null);
        message.insert("weight".into(), json!(1.0));
        let mut meta = Map::new();
        if let Some(model) = &m.model {
            meta.insert("model_slug".into(), json!(model));
        }
        message.insert("metadata".into(), Value::Object(meta));
        message.insert("recipient".into(), json!("all"));
        // What the import kept overrides what Arbor's fields give.
        message.extend(kept);
        let parent = m.parent_id.map_or(ROOT.to_owned(), |p| p.to_string());
        let children: Vec<String> = kids
            .get(&m.id)
            .map(|c| c.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        mapping.insert(
            m.id.to_string(),
            json!({"id": m.id, "message": message, "parent": parent, "children": children}),
        );
    }
    let head = chat
        .branches
        .iter()
        .find(|b| b.id == chat.active_branch_id)
        .and_then(|b| b.head_id)
        .map_or(ROOT.to_owned(), |h| h.to_string());
    json!({
        "title": chat.chat.title,
        "create_time": seconds(chat.chat.created_at),
        "update_time": seconds(chat.chat.updated_at),
        "mapping": mapping,
        "current_node": head,
        "conversation_id": chat.chat.id,
        "id": chat.chat.id,
        "moderation_results": [],
        "plugin_ids": null,
    })
}

/// The ids of a chat's messages on the active branch's path, root first (for tests).
pub fn current_path(conversation: &Value) -> Vec<String> {
    let mut path = Vec::new();
    let mut seen = HashSet::new();
    let mut at = conversation["current_node"].as_str().map(str::to_owned);
    while let Some(id) = at {
        if !seen.insert(id.clone()) {
            break;
        }
        let node = &conversation["mapping"][&id];
        if !node["message"].is_null() {
            path.push(id);
        }
        at = node["parent"].as_str().map(str::to_owned);
    }
    path.reverse();
    path
}
