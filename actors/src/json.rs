//! The JSON of a page of messages, written by hand: the read path's response, and its largest
//! cost. serde_json scans every byte of every string it writes for characters to escape, keys,
//! ids and timestamps included, and goes through serde's machinery for each field. Here only the
//! values that can hold such characters (content, model, metadata) go through serde_json; keys
//! are literals, and ids, timestamps and numbers are formatted straight into the buffer, from the
//! tree itself (no `MessageView` copies). The bytes are exactly `serde_json::to_vec` of the same
//! page's `MessagePage` (tested against it, for every field).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::model::{BranchId, MessageId};
use crate::tree::{Page, Tree};

/// A typical message's JSON in a page (ids, timestamp and keys ~330 bytes, plus content).
const MESSAGE_BYTES: usize = 400;

/// An id's JSON: 36 characters in quotes.
type UuidText = [u8; 38];

/// A page of `branch`'s path as JSON, written straight from the tree: byte for byte what
/// `MessagePage`'s `Serialize` writes for the same page (`MessagePage::of`), without building it.
/// The chat's actor writes it, so no message is copied out of the tree for it.
pub fn page(tree: &Tree, branch: BranchId, page: &Page<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(160 + page.nodes.len() * MESSAGE_BYTES);
    let chat = uuid_text(tree.chat().as_uuid());
    out.extend_from_slice(b"{\"chat_id\":");
    out.extend_from_slice(&chat);
    out.extend_from_slice(b",\"branch_id\":");
    out.extend_from_slice(&uuid_text(branch.as_uuid()));
    out.extend_from_slice(b",\"messages\":[");
    // Each message after the first is the child of the one before it: its parent's id is
    // already written once.
    let mut previous: Option<(MessageId, UuidText)> = None;
    for (i, node) in page.nodes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let id = node.id();
        let text = uuid_text(id.as_uuid());
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(&text);
        out.extend_from_slice(b",\"chat_id\":");
        out.extend_from_slice(&chat);
        out.extend_from_slice(b",\"parent_id\":");
        match (tree.parent_id(node), &previous) {
            (Some(parent), Some((before, before_text))) if parent == *before => {
                out.extend_from_slice(before_text)
            }
            (parent, _) => optional_uuid(&mut out, parent.as_ref().map(MessageId::as_uuid)),
        }
        out.extend_from_slice(b",\"role\":\"");
        out.extend_from_slice(node.role().as_str().as_bytes());
        out.extend_from_slice(b"\",\"content\":");
        through_serde_json(&mut out, tree.content(node))?;
        out.extend_from_slice(b",\"model\":");
        through_serde_json(&mut out, &tree.model(node))?;
        out.extend_from_slice(b",\"metadata\":");
        through_serde_json(&mut out, &tree.metadata(node))?;
        out.extend_from_slice(b",\"created_at\":");
        timestamp(&mut out, &tree.created_at(node))?;
        let (sibling_index, sibling_count) = tree.sibling_position_of(node);
        out.extend_from_slice(b",\"sibling_index\":");
        number(&mut out, sibling_index);
        out.extend_from_slice(b",\"sibling_count\":");
        number(&mut out, sibling_count);
        out.extend_from_slice(b",\"children_count\":");
        number(&mut out, tree.children_count(node));
        out.push(b'}');
        previous = Some((id, text));
    }
    out.extend_from_slice(b"],\"has_more\":");
    out.extend_from_slice(if page.has_more { b"true" } else { b"false" });
    out.extend_from_slice(b",\"next_before\":");
    optional_uuid(
        &mut out,
        page.next_before().as_ref().map(MessageId::as_uuid),
    );
    out.extend_from_slice(b",\"total\":");
    number(&mut out, page.path_len);
    out.push(b'}');
    Ok(out)
}

/// A value that may need escaping, the way serde_json writes it.
fn through_serde_json<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    serde_json::to_writer(out, value)
}

fn uuid_text(id: &Uuid) -> UuidText {
    let mut text = [b'"'; 38];
    id.hyphenated().encode_lower(&mut text[1..37]);
    text
}

fn optional_uuid(out: &mut Vec<u8>, id: Option<&Uuid>) {
    match id {
        Some(id) => out.extend_from_slice(&uuid_text(id)),
        None => out.extend_from_slice(b"null"),
    }
}

fn number(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn timestamp(out: &mut Vec<u8>, time: &DateTime<Utc>) -> Result<(), serde_json::Error> {
    let mut text = [0u8; 32];
    match crate::rfc3339::format(time, &mut text) {
        Some(len) => {
            out.push(b'"');
            out.extend_from_slice(&text[..len]);
            out.push(b'"');
            Ok(())
        }
        // What `rfc3339::serialize` falls back to (chrono's own text).
        None => through_serde_json(out, time),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::model::{now, Branch, BranchId, ChatId, Message, Role};
    use crate::tree::Tree;
    use crate::views::MessagePage;

    fn message(chat: ChatId, parent: Option<MessageId>, role: Role, content: &str) -> Message {
        let (id, created_at) = MessageId::new_with_time();
        Message {
            id,
            chat_id: chat,
            parent_id: parent,
            role,
            content: Arc::from(content),
            created_at,
            model: None,
            metadata: None,
            idempotency_key: None,
        }
    }

    /// Every page of a chat whose messages use every field, with text that needs escaping,
    /// against serde_json's bytes for the same page.
    #[test]
    fn writes_what_serde_json_writes() {
        let chat = ChatId::new();
        let main = Branch {
            id: BranchId::new(),
            chat_id: chat,
            name: "main".into(),
            head: None,
            forked_from: None,
            created_at: now(),
            updated_at: now(),
            fallback: None,
        };
        let branch = main.id;
        let mut tree = Tree::new(main);
        let mut parent = None;
        let contents = [
            "plain",
            "quotes \" and \\ backslash / slash",
            "controls \u{1} \u{1f} \u{7f} \n \r \t \u{8} \u{c}",
            "non-ASCII é ✓ 🌳 \u{2028}",
            "",
        ];
        for (i, content) in contents.iter().enumerate() {
            let role = if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            };
            let mut m = message(chat, parent, role, content);
            if i == 1 {
                m.model = Some(Arc::from("model \"x\" ✓"));
                m.metadata = Some(Arc::new(json!({
                    "finish_reason": "stop",
                    "usage": {"total_tokens": 7, "big": u64::MAX, "ratio": 0.25},
                    "$odd.key": ["\u{0}", null, true],
                })));
            }
            if i == 2 {
                // Timestamps not taken from the id: whole seconds, and outside what the fast
                // formatter writes (chrono's text then).
                m.created_at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
            }
            if i == 3 {
                m.created_at = Utc.with_ymd_and_hms(12026, 1, 2, 3, 4, 5).unwrap();
            }
            parent = Some(m.id);
            tree.append(branch, m).unwrap();
        }
        // A sibling of the second message, so sibling positions and child counts vary.
        let first = tree.path(branch).unwrap()[0].id();
        tree.attach(message(chat, Some(first), Role::System, "sibling"))
            .unwrap();
        // Every page size, and pages further back (`before`), so a page's first message has
        // a parent outside it.
        for limit in [0, 1, 3, 20] {
            let mut before = None;
            loop {
                let page = tree.page(branch, limit, before).unwrap();
                let expected = serde_json::to_vec(&MessagePage::of(&tree, branch, &page)).unwrap();
                assert_eq!(
                    String::from_utf8(super::page(&tree, branch, &page).unwrap()).unwrap(),
                    String::from_utf8(expected).unwrap(),
                    "limit {limit}, before {before:?}"
                );
                before = page.next_before();
                if before.is_none() {
                    break;
                }
            }
        }
    }
}
