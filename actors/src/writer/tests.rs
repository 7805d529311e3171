#![allow(clippy::unwrap_used)]

use super::batch::set_fallbacks;
use super::*;
use crate::model::{now, Role};

fn message(chat: ChatId, parent: Option<MessageId>) -> Message {
    Message {
        id: MessageId::new(),
        chat_id: chat,
        parent_id: parent,
        role: Role::User,
        content: Arc::from("x"),
        created_at: now(),
        model: None,
        metadata: None,
        idempotency_key: None,
    }
}

fn branch(chat: ChatId, head: Option<MessageId>) -> (Branch, i64) {
    let branch = Branch {
        id: BranchId::new(),
        chat_id: chat,
        name: "b".into(),
        head,
        forked_from: None,
        created_at: now(),
        updated_at: now(),
        fallback: None,
    };
    (branch, 1)
}

#[test]
fn a_head_among_the_new_messages_falls_back_to_its_nearest_stored_ancestor() {
    let chat = ChatId::new();
    let stored = MessageId::new();
    let q = message(chat, Some(stored));
    let a = message(chat, Some(q.id));
    let first = message(chat, None);
    let edit = message(chat, Some(stored));
    let mut branches = vec![
        // Two new messages on top of a stored one: back to the stored one.
        branch(chat, Some(a.id)),
        // The first message of an empty branch: back to nothing.
        branch(chat, Some(first.id)),
        // A head stored by an earlier batch needs no fallback.
        branch(chat, Some(stored)),
        branch(chat, None),
        // A new branch (an edit) whose head is a new sibling: its stored parent.
        branch(chat, Some(edit.id)),
    ];
    set_fallbacks(&mut branches, &[q, a.clone(), first, edit]);
    let fallbacks: Vec<_> = branches.iter().map(|(b, _)| b.fallback).collect();
    assert_eq!(fallbacks, [Some(stored), None, None, None, Some(stored)]);
}
