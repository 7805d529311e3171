//! Open WebUI's chat export: a list of chats, each with `chat.history.messages` (an object of
//! messages `{id, parentId, childrenIds, role, content, timestamp, model, ...}`) and
//! `chat.history.currentId`.
//!
//! Import: each message keeps its id (a UUID; any other id gets a UUID derived from it), role
//! (`user`, `assistant`, `system`; any other becomes an assistant message) and content (text;
//! any other content is kept in metadata, as JSON text in the content); `model` is the model.
//! Its other fields (`models`, `files`, `done`, `info`, ...) are kept in the message's metadata
//! under `openwebui`. Each leaf heads a branch; `currentId`'s is active.
//!
//! Export writes a chat back in the same shape, from that metadata where it has it.

use arbor_actors::model::{MessageId, Role};
use arbor_actors::portable::{ChatExport, ExportedMessage, ImportError, MessageStatus};
use chrono::Utc;
use serde_json::{json, Map, Value};

use super::{children, malformed, message_id, seconds, time};

/// Fields a message's own columns hold; the rest is kept in its metadata.
const OWN: [&str; 7] = [
    "id",
    "parentId",
    "childrenIds",
    "role",
    "content",
    "timestamp",
    "model",
];

/// Each chat of an export (a list, or one chat alone) as a chat document.
pub fn import(value: Value) -> Result<Vec<ChatExport>, ImportError> {
    let chats = match value {
        Value::Array(list) => list,
        Value::Object(one) => vec![Value::Object(one)],
        _ => return Err(malformed("an Open WebUI export is a list of chats")),
    };
    chats.into_iter().map(chat).collect()
}

fn chat(value: Value) -> Result<ChatExport, ImportError> {
    let Value::Object(outer) = value else {
        return Err(malformed("an Open WebUI chat is an object"));
    };
    // The export's rows wrap the chat (`{id, title, chat: {...}, created_at}`); a bare chat
    // object is read too.
    let inner = match outer.get("chat") {
        Some(Value::Object(inner)) => inner.clone(),
        _ => outer.clone(),
    };
    let scope = outer
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let created = time(outer.get("created_at"))
        .or_else(|| time(inner.get("timestamp")))
        .unwrap_or_else(Utc::now);
    let updated = time(outer.get("updated_at")).unwrap_or(created);
    let history = inner.get("history").and_then(Value::as_object);
    let Some(Value::Object(raw)) = history.and_then(|h| h.get("messages")) else {
        return Err(malformed("an Open WebUI chat has `chat.history.messages`"));
    };
    let mut messages = Vec::with_capacity(raw.len());
    for (key, message) in raw {
        let Value::Object(message) = message else {
            return Err(malformed(format!("message {key} is not an object")));
        };
        let id = message
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or(key.as_str());
        let parent = match message.get("parentId") {
            Some(Value::String(p)) => {
                if !raw.contains_key(p) {
                    return Err(ImportError::DanglingParent {
                        message: message_id(&scope, id),
                        parent: message_id(&scope, p),
                    });
                }
                Some(message_id(&scope, p))
            }
            _ => None,
        };
        let role = match message.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("system") => Role::System,
            _ => Role::Assistant,
        };
        let mut kept: Map<String, Value> = message
            .iter()
            .filter(|(k, _)| !OWN.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !matches!(
            message.get("role").and_then(Value::as_str),
            Some("user" | "assistant" | "system")
        ) {
            kept.insert(
                "role".into(),
                message.get("role").cloned().unwrap_or(Value::Null),
            );
        }
        let content = match message.get("content") {
            Some(Value::String(text)) => text.clone(),
            None | Some(Value::Null) => String::new(),
            Some(other) => {
                kept.insert("content".into(), other.clone());
                other.to_string()
            }
        };
        messages.push(ExportedMessage {
            id: message_id(&scope, id),
            parent_id: parent,
            role,
            content,
            model: message
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned),
            metadata: (!kept.is_empty()).then(|| json!({ "openwebui": kept })),
            status: MessageStatus::Complete,
            created_at: time(message.get("timestamp")).unwrap_or(created),
            feedback: None,
        });
    }
    let current: Option<MessageId> = history
        .and_then(|h| h.get("currentId"))
        .and_then(Value::as_str)
        .map(|c| message_id(&scope, c));
    let title = outer
        .get("title")
        .or_else(|| inner.get("title"))
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

/// A chat in Open WebUI's shape: a one-chat export (a list, as Open WebUI writes it).
pub fn export(chat: &ChatExport) -> Value {
    let kids = children(&chat.messages);
    let mut messages = Map::new();
    let mut models: Vec<String> = Vec::new();
    for m in &chat.messages {
        if let Some(model) = &m.model {
            if !models.contains(model) {
                models.push(model.clone());
            }
        }
    }
    for m in &chat.messages {
        let mut message = Map::new();
        message.insert("id".into(), json!(m.id));
        message.insert("parentId".into(), json!(m.parent_id));
        let children: Vec<String> = kids
            .get(&m.id)
            .map(|c| c.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        message.insert("childrenIds".into(), json!(children));
        message.insert("role".into(), json!(m.role.as_str()));
        message.insert("content".into(), json!(m.content));
        message.insert("timestamp".into(), json!(m.created_at.timestamp()));
        match (&m.model, m.role) {
            (Some(model), _) => {
                message.insert("model".into(), json!(model));
            }
            (None, Role::User) => {
                message.insert("models".into(), json!(models));
            }
            _ => {}
        }
        if m.role == Role::Assistant {
            message.insert("done".into(), json!(true));
        }
        if let Some(kept) = m
            .metadata
            .as_ref()
            .and_then(|v| v.get("openwebui"))
            .and_then(Value::as_object)
        {
            message.extend(kept.clone());
        }
        messages.insert(m.id.to_string(), Value::Object(message));
    }
    let head = chat
        .branches
        .iter()
        .find(|b| b.id == chat.active_branch_id)
        .and_then(|b| b.head_id);
    // The current path, root first, as Open WebUI also keeps it.
    let mut path = Vec::new();
    let mut at = head;
    while let Some(id) = at {
        path.push(
            messages
                .get(&id.to_string())
                .cloned()
                .unwrap_or(Value::Null),
        );
        at = chat
            .messages
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.parent_id);
    }
    path.reverse();
    json!([{
        "id": chat.chat.id,
        "user_id": null,
        "title": chat.chat.title,
        "chat": {
            "id": "",
            "title": chat.chat.title,
            "models": models,
            "params": {},
            "history": {"messages": messages, "currentId": head},
            "messages": path,
            "tags": [],
            "timestamp": chat.chat.created_at.timestamp_millis(),
            "files": [],
        },
        "updated_at": seconds(chat.chat.updated_at) as i64,
        "created_at": seconds(chat.chat.created_at) as i64,
        "share_id": null,
        "archived": false,
        "pinned": false,
        "meta": {},
        "folder_id": null,
    }])
}
