//! The branching conversation model: plain data and pure functions, no I/O.
//!
//! A chat is a forest of immutable messages linked by parent ids, plus branches (named pointers to
//! a head message, like git refs) and one active branch. A branch's conversation is the path from
//! its root to its head. Invariants kept by every operation here:
//!
//! - every message's parent is in the tree (or it is a root);
//! - every message is on the path of at least one branch (deleting a branch prunes what only it
//!   reached), so the tree never leaks unreachable nodes;
//! - children and roots are kept in id order, which for UUIDv7 is creation order, so a message's
//!   sibling index is stable;
//! - there is always at least one branch, and the active branch is one of them.
//!
//! Forking is O(1) in the conversation's length: a branch is a pointer, nothing is copied.
//!
//! Layout: a resident chat is mostly idle memory, so nodes are compact (36 bytes, no pointer).
//! They live in one arena and link to each other by position, not by id; their content is one
//! string per tree, in node order. A message is found by id with a binary search, over the arena
//! itself while it is in id order (UUIDv7 ids are made in creation order, so it nearly always is)
//! or else over a sorted index of positions. Siblings form a linked list, newest first, so the
//! usual insertion (the newest message) is O(1). The chat id is the tree's, not each node's, a
//! message's creation time is its id's, and the fields most messages leave empty (model,
//! metadata, idempotency key, a creation time its id does not carry) live out of line.

use std::cmp::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use thin_vec::ThinVec;

use crate::model::{Branch, BranchId, ChatId, Feedback, Message, MessageId, Role};

mod arena;
mod paths;
#[cfg(test)]
mod tests;

/// A node's position in the tree's arena.
type Idx = u32;

/// Bits of a node's position in a link; the rest of each link's word holds part of the tag.
const IDX_BITS: u32 = 25;
const IDX_MASK: u32 = (1 << IDX_BITS) - 1;

/// No node: a root's parent and jump, a leaf's first child, the oldest sibling's next.
const NIL: Idx = IDX_MASK;

/// A message in the tree with its links: 36 bytes, all of them 4-byte aligned. Its content is
/// the tree's text from its `text_at` to the next node's (nodes and text are in the same order);
/// its creation time is its id's (UUIDv7), unless the tree keeps another one aside
/// ([`Tree::created_at`]).
///
/// The four links are positions of 25 bits (so a chat holds at most 2^25 - 2 messages); the 7
/// bits above each hold a quarter of the tag: the depth (25 bits, low first), the role (2) and
/// whether the message has an entry in the tree's extras (1). Ten nodes take 360 bytes, within
/// mimalloc's 384-byte class (at 40 bytes they took the 448-byte one).
#[derive(Clone, Debug)]
pub struct Node {
    id: MessageId,
    /// Where the content starts in the tree's text.
    text_at: u32,
    /// `PARENT`, `JUMP`, `FIRST_CHILD`, `NEXT_SIBLING`, each with its part of the tag.
    links: [u32; 4],
}

/// The parent.
const PARENT: usize = 0;
/// A farther ancestor (skew-binary jump pointer, Myers 1983): with the parent links it reaches
/// any ancestor in O(log depth) steps. `NIL` for a root.
const JUMP: usize = 1;
/// The newest child; the others follow through `NEXT_SIBLING`.
const FIRST_CHILD: usize = 2;
/// The next older sibling.
const NEXT_SIBLING: usize = 3;

/// Bits of a node's tag under the role: the depth.
const DEPTH_BITS: u32 = 25;
const DEPTH_MASK: u32 = (1 << DEPTH_BITS) - 1;
const EXTRA_BIT: u32 = 1 << (DEPTH_BITS + 2);
/// Bits of the tag each link's word holds.
const TAG_PART: u32 = 32 - IDX_BITS;

/// What most messages leave empty, kept aside by message id.
#[derive(Clone, Debug)]
struct Extra {
    id: MessageId,
    model: Option<Arc<str>>,
    metadata: Option<Arc<serde_json::Value>>,
    idempotency_key: Option<Arc<str>>,
}

impl Node {
    fn new(id: MessageId, text_at: u32, parent: Idx, jump: Idx, tag: u32) -> Self {
        let mut node = Self {
            id,
            text_at,
            links: [parent, jump, NIL, NIL],
        };
        for (i, word) in node.links.iter_mut().enumerate() {
            *word |= (tag >> (TAG_PART * i as u32) & ((1 << TAG_PART) - 1)) << IDX_BITS;
        }
        node
    }

    pub fn id(&self) -> MessageId {
        self.id
    }

    fn link(&self, which: usize) -> Idx {
        self.links[which] & IDX_MASK
    }

    fn set_link(&mut self, which: usize, to: Idx) {
        self.links[which] = self.links[which] & !IDX_MASK | to;
    }

    fn parent(&self) -> Idx {
        self.link(PARENT)
    }

    fn jump(&self) -> Idx {
        self.link(JUMP)
    }

    fn first_child(&self) -> Idx {
        self.link(FIRST_CHILD)
    }

    fn next_sibling(&self) -> Idx {
        self.link(NEXT_SIBLING)
    }

    /// The depth, role and extras flag (see [`Self::tag_of`]).
    fn tag(&self) -> u32 {
        self.links.iter().enumerate().fold(0, |tag, (i, word)| {
            tag | (word >> IDX_BITS) << (TAG_PART * i as u32)
        })
    }

    fn tag_of(depth: u32, role: Role, has_extra: bool) -> u32 {
        let role = match role {
            Role::User => 0,
            Role::Assistant => 1,
            Role::System => 2,
        };
        depth | role << DEPTH_BITS | if has_extra { EXTRA_BIT } else { 0 }
    }

    pub fn role(&self) -> Role {
        match (self.tag() >> DEPTH_BITS) & 0b11 {
            0 => Role::User,
            1 => Role::Assistant,
            _ => Role::System,
        }
    }

    fn has_extra(&self) -> bool {
        self.tag() & EXTRA_BIT != 0
    }

    /// The message's 0-based index in any path through it.
    pub fn depth(&self) -> u32 {
        self.tag() & DEPTH_MASK
    }

    pub fn is_root(&self) -> bool {
        self.parent() == NIL
    }
}

impl Extra {
    /// The heap bytes its strings and metadata hold (metadata by its JSON size).
    fn bytes(&self) -> usize {
        self.model.as_ref().map_or(0, |m| m.len())
            + self.idempotency_key.as_ref().map_or(0, |k| k.len())
            + self.metadata.as_ref().map_or(0, |v| v.to_string().len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("message {0} is not in this chat")]
    MessageNotFound(MessageId),
    #[error("branch {0} is not in this chat")]
    BranchNotFound(BranchId),
    #[error("index {index} is outside the branch's path of {len} messages")]
    IndexOutOfRange { index: usize, len: usize },
    #[error("the cursor message is not on this branch's path")]
    CursorNotOnPath,
    #[error("a chat must keep at least one branch")]
    LastBranch,
    #[error("the message's parent does not match the branch head")]
    NotAtHead,
    #[error("id already present")]
    Duplicate,
    #[error("a chat needs at least one branch")]
    NoBranches,
    #[error("the chat is full (at most {} messages, {} on one path)", NIL - 1, DEPTH_MASK)]
    Full,
}

/// One page of a branch's path, read from the head backwards.
#[derive(Debug)]
pub struct Page<'a> {
    /// Oldest first.
    pub nodes: Vec<&'a Node>,
    /// Older messages exist before the first one returned.
    pub has_more: bool,
    /// The branch's whole path length.
    pub path_len: usize,
}

impl Page<'_> {
    /// The cursor for the page before this one: its oldest message, if older ones exist.
    pub fn next_before(&self) -> Option<MessageId> {
        if self.has_more {
            self.nodes.first().map(|n| n.id())
        } else {
            None
        }
    }
}

/// A chat's tree rebuilt from storage, with what could not be placed.
#[derive(Debug)]
pub struct Restored {
    pub tree: Tree,
    /// Messages that were dropped: orphans, duplicates or unreachable from every branch.
    pub pruned: Vec<MessageId>,
    /// Branches whose head was missing: moved back to their stored fallback, or reset to empty
    /// without one (or if it is missing too).
    pub reset_branches: Vec<BranchId>,
}

#[derive(Clone, Debug)]
pub struct Tree {
    /// Every node; links are positions in here. A `ThinVec` (one pointer inline, its length and
    /// capacity in the allocation), like `branches`: the tree is inline in its chat's actor,
    /// which must stay within its task's size class (see `chat/tests.rs`).
    nodes: ThinVec<Node>,
    /// Every message's content, one after the other (in node order).
    text: String,
    /// What most chats never need; boxed so that they do not carry it inline.
    rare: Option<Box<Rare>>,
    /// The newest root; the others follow through `next_sibling`.
    first_root: Idx,
    branches: ThinVec<BranchRef>,
    active: BranchId,
    chat: ChatId,
    /// This state of the tree among every tree's in the process: each change takes a new one
    /// (`stamp`), so what was computed from one state (a page's JSON, `Tree::revision`) is
    /// known to still hold while the revision is the same.
    revision: u64,
}

/// The next tree state's revision.
fn next_revision() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A branch as the tree keeps it: [`Branch`] without the chat id (the tree's own) and with its
/// name boxed. 96 bytes against 120, so that a chat's one branch, with the 16 bytes of its
/// `ThinVec`'s header, fits mimalloc's 112-byte class. [`Tree::branch_row`] gives the stored row.
#[derive(Clone, Debug, PartialEq)]
pub struct BranchRef {
    pub id: BranchId,
    pub name: Box<str>,
    /// `None` only for a branch that has no messages yet (a new chat's `main`).
    pub head: Option<MessageId>,
    /// The message this branch was forked or edited from, for display.
    pub forked_from: Option<MessageId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Branch> for BranchRef {
    fn from(branch: Branch) -> Self {
        Self {
            id: branch.id,
            name: branch.name.into_boxed_str(),
            head: branch.head,
            forked_from: branch.forked_from,
            created_at: branch.created_at,
            updated_at: branch.updated_at,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Rare {
    /// Models, metadata and idempotency keys, in id order, for the messages that have any.
    extras: Vec<Extra>,
    /// Positions sorted by id; empty while `nodes` itself is in id order.
    by_id: Vec<Idx>,
    /// Heap bytes the extras' strings and metadata take (kept as messages come and go).
    extra_bytes: usize,
    /// Creation times that are not their message's id's, by id (messages made elsewhere, or
    /// before ids carried them).
    created: Vec<(MessageId, DateTime<Utc>)>,
    /// The owner's feedback on assistant messages, by id.
    feedback: Vec<(MessageId, Arc<Feedback>)>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.extras.is_empty()
            && self.by_id.is_empty()
            && self.created.is_empty()
            && self.feedback.is_empty()
    }
}

impl Tree {
    /// A new chat: one empty branch, active.
    pub fn new(main: Branch) -> Self {
        Self {
            nodes: ThinVec::new(),
            text: String::new(),
            rare: None,
            first_root: NIL,
            active: main.id,
            chat: main.chat_id,
            branches: thin_vec::thin_vec![main.into()],
            revision: next_revision(),
        }
    }

    /// This state's revision: unique in the process, and new after every change (anything
    /// that takes `&mut self`, failed or not).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn stamp(&mut self) {
        self.revision = next_revision();
    }

    /// Rebuilds a tree from stored rows, repairing what a crash between the two stores may have
    /// left behind (messages no branch reaches, heads whose message never landed).
    pub fn restore(
        mut branches: Vec<Branch>,
        active: BranchId,
        mut messages: Vec<Message>,
    ) -> Result<Restored, TreeError> {
        if branches.is_empty() {
            return Err(TreeError::NoBranches);
        }
        branches.sort_by_key(|b| b.id);
        let fallbacks: Vec<Option<MessageId>> = branches.iter().map(|b| b.fallback).collect();
        let active = if branches.iter().any(|b| b.id == active) {
            active
        } else {
            branches[0].id
        };
        let mut tree = Self {
            nodes: ThinVec::with_capacity(messages.len()),
            text: String::with_capacity(messages.iter().map(|m| m.content.len()).sum()),
            rare: None,
            first_root: NIL,
            chat: branches[0].chat_id,
            branches: branches.into_iter().map(BranchRef::from).collect(),
            active,
            revision: next_revision(),
        };
        messages.sort_by_key(|m| m.id);
        let mut pruned = Vec::new();
        // In id order a parent comes before its children (ids are time-ordered), so one pass
        // attaches everything; messages whose parent comes later (ids made elsewhere: an
        // import of another product's tree) wait for it, and are attached under it as soon as
        // it is, in O(n) however the ids are ordered.
        let mut waiting: std::collections::HashMap<MessageId, Vec<Message>> = Default::default();
        for message in messages {
            let id = message.id;
            match message.parent_id {
                Some(p) if tree.find(p).is_none() => waiting.entry(p).or_default().push(message),
                _ => match tree.attach(message) {
                    Ok(()) => {}
                    Err(TreeError::Full) => return Err(TreeError::Full),
                    Err(_) => pruned.push(id),
                },
            }
        }
        let mut ready: Vec<Message> = Vec::new();
        let attached: Vec<MessageId> = waiting
            .keys()
            .filter(|p| tree.find(**p).is_some())
            .copied()
            .collect();
        for parent in attached {
            ready.extend(waiting.remove(&parent).unwrap_or_default());
        }
        // Siblings attach in id order (each list is in id order; the stack takes its last).
        ready.reverse();
        while let Some(message) = ready.pop() {
            let id = message.id;
            match tree.attach(message) {
                Ok(()) => {
                    if let Some(mut children) = waiting.remove(&id) {
                        children.reverse();
                        ready.extend(children);
                    }
                }
                Err(TreeError::Full) => return Err(TreeError::Full),
                Err(_) => pruned.push(id),
            }
        }
        // Whatever still waits never reaches a root (a missing parent, or a cycle).
        pruned.extend(waiting.into_values().flatten().map(|m| m.id));
        let mut reset_branches = Vec::new();
        for (i, fallback) in fallbacks.into_iter().enumerate() {
            let Some(head) = tree.branches[i].head else {
                continue;
            };
            if tree.find(head).is_none() {
                let fallback = fallback.filter(|f| tree.find(*f).is_some());
                tree.branches[i].head = fallback;
                reset_branches.push(tree.branches[i].id);
            }
        }
        pruned.extend(tree.prune_unreachable());
        Ok(Restored {
            tree,
            pruned,
            reset_branches,
        })
    }

    pub fn chat(&self) -> ChatId {
        self.chat
    }

    pub fn active(&self) -> BranchId {
        self.active
    }

    pub fn branches(&self) -> &[BranchRef] {
        &self.branches
    }

    pub fn branch(&self, id: BranchId) -> Result<&BranchRef, TreeError> {
        self.branches
            .iter()
            .find(|b| b.id == id)
            .ok_or(TreeError::BranchNotFound(id))
    }

    /// A branch's row, as the stores keep it.
    pub fn branch_row(&self, id: BranchId) -> Result<Branch, TreeError> {
        self.branch(id).map(|b| self.row_of(b))
    }

    /// Every branch's row, as the stores keep them.
    pub fn branch_rows(&self) -> Vec<Branch> {
        self.branches.iter().map(|b| self.row_of(b)).collect()
    }

    fn row_of(&self, b: &BranchRef) -> Branch {
        Branch {
            id: b.id,
            chat_id: self.chat,
            name: b.name.to_string(),
            head: b.head,
            forked_from: b.forked_from,
            created_at: b.created_at,
            updated_at: b.updated_at,
            fallback: None,
        }
    }

    pub fn node(&self, id: MessageId) -> Result<&Node, TreeError> {
        self.find(id)
            .map(|i| self.at(i))
            .ok_or(TreeError::MessageNotFound(id))
    }

    /// A message's content.
    pub fn content<'a>(&'a self, node: &Node) -> &'a str {
        let (at, end) = self.text_span(node);
        &self.text[at..end]
    }

    /// The model that produced an assistant message (or the client's label for it).
    pub fn model<'a>(&'a self, node: &Node) -> Option<&'a Arc<str>> {
        self.extra(node)?.model.as_ref()
    }

    pub fn metadata<'a>(&'a self, node: &Node) -> Option<&'a Arc<serde_json::Value>> {
        self.extra(node)?.metadata.as_ref()
    }

    pub fn idempotency_key<'a>(&'a self, node: &Node) -> Option<&'a Arc<str>> {
        self.extra(node)?.idempotency_key.as_ref()
    }

    /// Whether `message` is on `branch`'s path (O(log depth)).
    pub fn on_path(&self, branch: &BranchRef, message: MessageId) -> bool {
        let (Some(head), Some(at)) = (branch.head.and_then(|h| self.find(h)), self.find(message))
        else {
            return false;
        };
        let depth = self.at(at).depth();
        self.at(head).depth() >= depth && self.ancestor_at(head, depth) == at
    }

    /// The owner's feedback on a message.
    pub fn feedback<'a>(&'a self, node: &Node) -> Option<&'a Arc<Feedback>> {
        let all = self.rare.as_ref().map_or(&[][..], |r| &r.feedback);
        if all.is_empty() {
            return None;
        }
        let at = all.binary_search_by(|(id, _)| id.cmp(&node.id)).ok()?;
        Some(&all[at].1)
    }

    /// Sets (or, with `None`, takes back) the feedback on a message of this tree.
    pub fn set_feedback(
        &mut self,
        id: MessageId,
        feedback: Option<Arc<Feedback>>,
    ) -> Result<(), TreeError> {
        self.find(id).ok_or(TreeError::MessageNotFound(id))?;
        let rare = self.rare.get_or_insert_default();
        let at = rare.feedback.binary_search_by(|(m, _)| m.cmp(&id));
        let old = match (at, feedback) {
            (Ok(at), Some(new)) => Some(std::mem::replace(&mut rare.feedback[at].1, new.clone())),
            (Ok(at), None) => Some(rare.feedback.remove(at).1),
            (Err(at), Some(new)) => {
                rare.feedback.insert(at, (id, new));
                None
            }
            (Err(_), None) => None,
        };
        let added = rare
            .feedback
            .binary_search_by(|(m, _)| m.cmp(&id))
            .map_or(0, |at| rare.feedback[at].1.bytes());
        rare.extra_bytes = rare.extra_bytes + added - old.map_or(0, |f| f.bytes());
        if rare.is_empty() {
            self.rare = None;
        }
        Ok(())
    }

    /// The messages that have feedback, with it, in id order.
    pub fn all_feedback(&self) -> &[(MessageId, Arc<Feedback>)] {
        self.rare.as_ref().map_or(&[], |r| &r.feedback)
    }

    /// Where a node's content starts and ends in the text: it ends where the next node's starts.
    /// Empty for a node of another tree whose id this one does not hold.
    fn text_span(&self, node: &Node) -> (usize, usize) {
        // The node's position, from its address in the arena (or, for a node that is not one
        // of this tree's, by id).
        let offset = (node as *const Node as usize).wrapping_sub(self.nodes.as_ptr() as usize);
        let at = offset / std::mem::size_of::<Node>();
        let pos = match self.nodes.get(at) {
            Some(n) if std::ptr::eq(n, node) => Some(at),
            _ => self.find(node.id).map(|i| i as usize),
        };
        let Some(pos) = pos else {
            return (0, 0);
        };
        let start = self.nodes[pos].text_at as usize;
        let end = self
            .nodes
            .get(pos + 1)
            .map_or(self.text.len(), |next| next.text_at as usize);
        (start, end)
    }

    fn extra(&self, node: &Node) -> Option<&Extra> {
        if !node.has_extra() {
            return None;
        }
        let extras = self.extras();
        let at = extras.binary_search_by(|e| e.id.cmp(&node.id)).ok()?;
        Some(&extras[at])
    }

    /// When a message was created: its id's time, or the one kept aside for it.
    pub fn created_at(&self, node: &Node) -> DateTime<Utc> {
        self.created_aside(node)
            .unwrap_or_else(|| node.id.timestamp().unwrap_or_default())
    }

    /// `created_at` as milliseconds since the Unix epoch, when it is the id's own time (no
    /// time kept aside, and a time-ordered id): what `json::page` formats without chrono.
    pub fn created_millis(&self, node: &Node) -> Option<i64> {
        match self.created_aside(node) {
            Some(_) => None,
            None => node.id.timestamp_millis(),
        }
    }

    fn created_aside(&self, node: &Node) -> Option<DateTime<Utc>> {
        let aside = self.rare.as_ref().map_or(&[][..], |r| &r.created);
        let at = aside.binary_search_by(|(id, _)| id.cmp(&node.id)).ok()?;
        Some(aside[at].1)
    }

    fn extras(&self) -> &[Extra] {
        self.rare.as_ref().map_or(&[], |r| &r.extras)
    }

    fn by_id(&self) -> &[Idx] {
        self.rare.as_ref().map_or(&[], |r| &r.by_id)
    }

    /// Heap bytes the messages' content, models, metadata and keys take.
    #[cfg(test)]
    fn content_bytes(&self) -> usize {
        self.text.len() + self.rare.as_ref().map_or(0, |r| r.extra_bytes)
    }

    pub fn message_count(&self) -> usize {
        self.nodes.len()
    }

    /// Approximate memory this tree holds: its nodes and index, branches (names counted at a
    /// typical 16 bytes) and the messages' content. O(1), as the actor refreshes it after every
    /// request; for the operator surface, not for accounting.
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        // A `ThinVec` keeps its length and capacity in its allocation (16 bytes), if it has one.
        let thin = |capacity: usize, each: usize| match capacity {
            0 => 0,
            n => 16 + n * each,
        };
        let nodes = thin(self.nodes.capacity(), size_of::<Node>());
        let rare = self.rare.as_ref().map_or(0, |r| {
            size_of::<Rare>()
                + r.by_id.capacity() * size_of::<Idx>()
                + r.extras.capacity() * size_of::<Extra>()
                + r.created.capacity() * size_of::<(MessageId, DateTime<Utc>)>()
                + r.feedback.capacity() * size_of::<(MessageId, Arc<Feedback>)>()
                + r.extra_bytes
        });
        let branches =
            thin(self.branches.capacity(), size_of::<BranchRef>()) + self.branches.len() * 16;
        size_of::<Self>() + nodes + rare + branches + self.text.capacity()
    }

    /// All nodes, in id (creation) order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        (0..self.nodes.len()).map(|pos| match self.by_id().get(pos) {
            Some(&idx) => self.at(idx),
            None => &self.nodes[pos],
        })
    }

    /// The id of a node's parent.
    pub fn parent_id(&self, node: &Node) -> Option<MessageId> {
        (node.parent() != NIL).then(|| self.at(node.parent()).id)
    }

    /// A node's children, oldest first.
    pub fn children<'a>(&'a self, node: &'a Node) -> Vec<&'a Node> {
        let mut children: Vec<&Node> = self.siblings_from(node.first_child()).collect();
        children.reverse();
        children
    }

    pub fn children_count(&self, node: &Node) -> usize {
        self.siblings_from(node.first_child()).count()
    }

    /// The whole record of a node's message.
    pub fn message(&self, node: &Node) -> Message {
        Message {
            id: node.id,
            chat_id: self.chat(),
            parent_id: self.parent_id(node),
            role: node.role(),
            content: Arc::from(self.content(node)),
            created_at: self.created_at(node),
            model: self.model(node).cloned(),
            metadata: self.metadata(node).cloned(),
            idempotency_key: self.idempotency_key(node).cloned(),
        }
    }

    /// Number of messages on a branch's path.
    pub fn path_len(&self, branch: BranchId) -> Result<usize, TreeError> {
        let head = self.branch(branch)?.head;
        Ok(self
            .head_index(head)
            .map_or(0, |h| self.at(h).depth() as usize + 1))
    }

    /// The messages a new message on `branch` would follow: its parent is the head.
    pub fn head(&self, branch: BranchId) -> Result<Option<MessageId>, TreeError> {
        Ok(self.branch(branch)?.head)
    }

    /// Adds `message` to `branch`: it must be a child of the branch head; the head moves to it.
    pub fn append(&mut self, branch: BranchId, message: Message) -> Result<(), TreeError> {
        self.stamp();
        let idx = self.branch_index(branch)?;
        if message.parent_id != self.branches[idx].head {
            return Err(TreeError::NotAtHead);
        }
        let (id, at) = (message.id, message.created_at);
        self.attach(message)?;
        let b = &mut self.branches[idx];
        b.head = Some(id);
        b.updated_at = at;
        Ok(())
    }

    /// Adds `message` under its parent without moving any branch. The caller must point a branch
    /// at it (or at a descendant) in the same step, or the invariant breaks.
    pub fn attach(&mut self, message: Message) -> Result<(), TreeError> {
        self.stamp();
        if self.find(message.id).is_some() {
            return Err(TreeError::Duplicate);
        }
        let parent = match message.parent_id {
            Some(p) => self.find(p).ok_or(TreeError::MessageNotFound(p))?,
            None => NIL,
        };
        if self.nodes.len() >= (NIL - 1) as usize
            || self.text.len() + message.content.len() > u32::MAX as usize
            || (parent != NIL && self.at(parent).depth() >= DEPTH_MASK)
        {
            return Err(TreeError::Full);
        }
        self.link(parent, message);
        Ok(())
    }

    /// Moves a branch head to an existing message.
    pub fn set_head(
        &mut self,
        branch: BranchId,
        head: MessageId,
        at: DateTime<Utc>,
    ) -> Result<(), TreeError> {
        self.stamp();
        self.node(head)?;
        let idx = self.branch_index(branch)?;
        let b = &mut self.branches[idx];
        b.head = Some(head);
        b.updated_at = at;
        Ok(())
    }

    /// Adds a branch (a fork): its head, if any, must already be in the tree.
    pub fn add_branch(&mut self, branch: Branch) -> Result<(), TreeError> {
        self.stamp();
        if let Some(head) = branch.head {
            self.node(head)?;
        }
        if self.branches.iter().any(|b| b.id == branch.id) {
            return Err(TreeError::Duplicate);
        }
        self.branches.push(branch.into());
        Ok(())
    }

    /// Edits `target`: `replacement` becomes its sibling (same parent, same role) and the head of
    /// the new branch `branch`.
    pub fn edit(
        &mut self,
        target: MessageId,
        replacement: Message,
        mut branch: Branch,
    ) -> Result<(), TreeError> {
        self.stamp();
        let original = self.node(target)?;
        if replacement.parent_id != self.parent_id(original) {
            return Err(TreeError::NotAtHead);
        }
        branch.head = Some(replacement.id);
        branch.forked_from = Some(target);
        self.attach(replacement)?;
        self.branches.push(branch.into());
        Ok(())
    }

    /// The id of the message at 0-based `index` on a branch's path.
    pub fn at_index(&self, branch: BranchId, index: usize) -> Result<MessageId, TreeError> {
        let len = self.path_len(branch)?;
        if index >= len {
            return Err(TreeError::IndexOutOfRange { index, len });
        }
        let head = self
            .head_index(self.branch(branch)?.head)
            .ok_or(TreeError::NoBranches)?;
        Ok(self.at(self.ancestor_at(head, index as u32)).id)
    }

    pub fn set_active(&mut self, branch: BranchId) -> Result<(), TreeError> {
        self.stamp();
        self.branch(branch)?;
        self.active = branch;
        Ok(())
    }

    pub fn rename_branch(
        &mut self,
        branch: BranchId,
        name: String,
        at: DateTime<Utc>,
    ) -> Result<(), TreeError> {
        self.stamp();
        let idx = self.branch_index(branch)?;
        self.branches[idx].name = name.into_boxed_str();
        self.branches[idx].updated_at = at;
        Ok(())
    }

    /// Removes a branch and every message no remaining branch reaches; returns those messages.
    /// If the active branch goes, the most recently updated remaining branch becomes active.
    pub fn delete_branch(&mut self, branch: BranchId) -> Result<Vec<MessageId>, TreeError> {
        self.stamp();
        let idx = self.branch_index(branch)?;
        if self.branches.len() == 1 {
            return Err(TreeError::LastBranch);
        }
        self.branches.remove(idx);
        if self.active == branch {
            if let Some(next) = self.branches.iter().max_by_key(|b| (b.updated_at, b.id)) {
                self.active = next.id;
            }
        }
        Ok(self.prune_unreachable())
    }
}
