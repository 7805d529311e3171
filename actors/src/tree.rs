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

use crate::model::{Branch, BranchId, ChatId, Message, MessageId, Role};

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
    /// which must stay within its task's size class (see `chat.rs`).
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
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.extras.is_empty() && self.by_id.is_empty() && self.created.is_empty()
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
        let mut pending = messages;
        loop {
            let before = pending.len();
            let mut deferred = Vec::new();
            for message in pending {
                let id = message.id;
                match message.parent_id {
                    Some(p) if tree.find(p).is_none() => deferred.push(message),
                    _ => match tree.attach(message) {
                        Ok(()) => {}
                        Err(TreeError::Full) => return Err(TreeError::Full),
                        Err(_) => pruned.push(id),
                    },
                }
            }
            pending = deferred;
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        pruned.extend(pending.into_iter().map(|m| m.id));
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

    /// A page of the branch's path: up to `limit` messages ending just before `before` (or at
    /// the head), oldest first.
    pub fn page(
        &self,
        branch: BranchId,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Page<'_>, TreeError> {
        let head = self.head_index(self.branch(branch)?.head);
        let path_len = head.map_or(0, |h| self.at(h).depth() as usize + 1);
        let start = match before {
            None => head.unwrap_or(NIL),
            Some(cursor) => {
                let at = self
                    .find(cursor)
                    .ok_or(TreeError::MessageNotFound(cursor))?;
                if !self.is_on_path(head, at) {
                    return Err(TreeError::CursorNotOnPath);
                }
                self.at(at).parent()
            }
        };
        let mut nodes = Vec::with_capacity(limit.min(path_len));
        let mut next = start;
        while next != NIL && nodes.len() < limit {
            let node = self.at(next);
            nodes.push(node);
            next = node.parent();
        }
        nodes.reverse();
        Ok(Page {
            nodes,
            has_more: next != NIL,
            path_len,
        })
    }

    /// The whole path of a branch, root first.
    pub fn path(&self, branch: BranchId) -> Result<Vec<&Node>, TreeError> {
        Ok(self.page(branch, usize::MAX, None)?.nodes)
    }

    /// The newest messages of the path ending at `last`, root side first, within `budget_chars`
    /// characters of content. `last` itself is always kept, however long it is.
    pub fn recent_path(
        &self,
        last: MessageId,
        budget_chars: usize,
    ) -> Result<Vec<&Node>, TreeError> {
        let mut out = Vec::new();
        let mut used = 0usize;
        let mut cursor = self.find(last).ok_or(TreeError::MessageNotFound(last))?;
        while cursor != NIL {
            let node = self.at(cursor);
            let chars = self.content(node).chars().count();
            if !out.is_empty() && used + chars > budget_chars {
                break;
            }
            used += chars;
            out.push(node);
            cursor = node.parent();
        }
        out.reverse();
        Ok(out)
    }

    /// The oldest branch whose path contains `id`: the branch the message was added to (a
    /// message is its branch's head when added; any branch reaching it later was forked since).
    pub fn first_branch_through(&self, id: MessageId) -> Option<BranchId> {
        let at = self.find(id)?;
        self.branches
            .iter()
            .find(|b| self.is_on_path(self.head_index(b.head), at))
            .map(|b| b.id)
    }

    /// `(index, count)` of a message among its siblings (messages with the same parent).
    pub fn sibling_position(&self, id: MessageId) -> Result<(usize, usize), TreeError> {
        Ok(self.sibling_position_of(self.node(id)?))
    }

    /// [`Self::sibling_position`] of a node already at hand: O(siblings).
    pub fn sibling_position_of(&self, node: &Node) -> (usize, usize) {
        let first = match node.parent() {
            NIL => self.first_root,
            p => self.at(p).first_child(),
        };
        let (mut newer, mut count) = (0, 0);
        for sibling in self.siblings_from(first) {
            if sibling.id > node.id {
                newer += 1;
            }
            count += 1;
        }
        (count - newer - 1, count)
    }

    fn at(&self, idx: Idx) -> &Node {
        &self.nodes[idx as usize]
    }

    fn at_mut(&mut self, idx: Idx) -> &mut Node {
        &mut self.nodes[idx as usize]
    }

    /// The position of the message `id`: a binary search by id, after one look at the newest
    /// message. An append checks that its new id is not taken (it is newer than every id) and
    /// finds its parent (most often the newest message): neither needs the search, each step of
    /// which is a cache miss in a chat that has been idle.
    fn find(&self, id: MessageId) -> Option<Idx> {
        let by_id = self.by_id();
        let newest = match by_id.last() {
            Some(&idx) => idx,
            None => self.nodes.len().checked_sub(1)? as Idx,
        };
        match id.cmp(&self.at(newest).id) {
            Ordering::Equal => return Some(newest),
            Ordering::Greater => return None,
            Ordering::Less => {}
        }
        if by_id.is_empty() {
            let pos = self.nodes.binary_search_by(|n| n.id.cmp(&id)).ok()?;
            Some(pos as Idx)
        } else {
            let pos = by_id.binary_search_by(|&i| self.at(i).id.cmp(&id)).ok()?;
            Some(by_id[pos])
        }
    }

    fn head_index(&self, head: Option<MessageId>) -> Option<Idx> {
        head.and_then(|h| self.find(h))
    }

    /// A sibling list from its newest member.
    fn siblings_from(&self, first: Idx) -> impl Iterator<Item = &Node> {
        let mut next = first;
        std::iter::from_fn(move || {
            let node = (next != NIL).then(|| self.at(next))?;
            next = node.next_sibling();
            Some(node)
        })
    }

    /// The ancestor of `idx` (or `idx` itself) at `depth`, which must not exceed its depth:
    /// O(log depth) through the jump pointers.
    fn ancestor_at(&self, idx: Idx, depth: u32) -> Idx {
        let mut idx = idx;
        loop {
            let node = self.at(idx);
            if node.depth() <= depth {
                return idx;
            }
            idx = if node.jump() != NIL && self.at(node.jump()).depth() >= depth {
                node.jump()
            } else {
                node.parent()
            };
        }
    }

    /// Whether the node at `idx` is on the path ending at `head`: O(log depth).
    fn is_on_path(&self, head: Option<Idx>, idx: Idx) -> bool {
        let depth = self.at(idx).depth();
        head.is_some_and(|h| self.at(h).depth() >= depth && self.ancestor_at(h, depth) == idx)
    }

    fn branch_index(&self, id: BranchId) -> Result<usize, TreeError> {
        self.branches
            .iter()
            .position(|b| b.id == id)
            .ok_or(TreeError::BranchNotFound(id))
    }

    /// Adds a message under `parent` (present, or `NIL` for a root), keeping sibling lists and
    /// the id index in order.
    fn link(&mut self, parent: Idx, message: Message) {
        let (depth, jump) = match parent {
            NIL => (0, NIL),
            p => (self.at(p).depth() + 1, self.jump_for(p)),
        };
        let Message {
            id,
            role,
            content,
            created_at,
            model,
            metadata,
            idempotency_key,
            ..
        } = message;
        let model = model.map(|m| self.shared_model(parent, m));
        let has_extra = model.is_some() || metadata.is_some() || idempotency_key.is_some();
        if has_extra {
            let extra = Extra {
                id,
                model,
                metadata,
                idempotency_key,
            };
            let rare = self.rare.get_or_insert_default();
            rare.extra_bytes += extra.bytes();
            let at = rare.extras.partition_point(|e| e.id < id);
            rare.extras.insert(at, extra);
        }
        if id.timestamp() != Some(created_at) {
            let created = &mut self.rare.get_or_insert_default().created;
            let at = created.partition_point(|(c, _)| *c < id);
            created.insert(at, (id, created_at));
        }
        // `attach` keeps the text within u32.
        let text_at = self.text.len() as u32;
        let node = Node::new(
            id,
            text_at,
            parent,
            jump,
            Node::tag_of(depth, role, has_extra),
        );
        self.text.push_str(&content);
        let idx = self.nodes.len() as Idx;
        let in_order = self.nodes.last().is_none_or(|last| last.id < id);
        if !in_order && self.by_id().is_empty() {
            self.rare.get_or_insert_default().by_id = (0..idx).collect();
        }
        if !self.by_id().is_empty() {
            let pos = self.by_id().partition_point(|&i| self.at(i).id < id);
            if let Some(rare) = &mut self.rare {
                rare.by_id.insert(pos, idx);
            }
        }
        self.nodes.push(node);
        self.insert_sibling(idx);
    }

    /// A reply's model label shares the string of the one two messages up (the previous reply)
    /// when they are equal, as they nearly always are.
    fn shared_model(&self, parent: Idx, model: Arc<str>) -> Arc<str> {
        let previous = match parent {
            NIL => NIL,
            p => self.at(p).parent(),
        };
        match (previous != NIL)
            .then(|| self.model(self.at(previous)))
            .flatten()
        {
            Some(earlier) if **earlier == *model => earlier.clone(),
            _ => model,
        }
    }

    /// Puts the node at `idx` into its parent's sibling list (newest first). A new message is
    /// nearly always the newest, so this is usually O(1).
    fn insert_sibling(&mut self, idx: Idx) {
        let (id, parent) = (self.at(idx).id, self.at(idx).parent());
        let first = match parent {
            NIL => self.first_root,
            p => self.at(p).first_child(),
        };
        if first == NIL || self.at(first).id < id {
            self.at_mut(idx).set_link(NEXT_SIBLING, first);
            match parent {
                NIL => self.first_root = idx,
                p => self.at_mut(p).set_link(FIRST_CHILD, idx),
            }
            return;
        }
        let mut prev = first;
        loop {
            let next = self.at(prev).next_sibling();
            if next == NIL || self.at(next).id < id {
                self.at_mut(idx).set_link(NEXT_SIBLING, next);
                self.at_mut(prev).set_link(NEXT_SIBLING, idx);
                return;
            }
            prev = next;
        }
    }

    /// The jump pointer of a new child of `parent`: the parent's jump's jump when the parent's
    /// two jumps span equal distances (merging two skew-binary segments), else the parent.
    fn jump_for(&self, parent: Idx) -> Idx {
        let p = self.at(parent);
        if p.jump() == NIL {
            return parent;
        }
        let j = self.at(p.jump());
        if j.jump() != NIL && p.depth() - j.depth() == j.depth() - self.at(j.jump()).depth() {
            j.jump()
        } else {
            parent
        }
    }

    /// Drops every message that no branch head reaches; returns their ids. Compacts the arena
    /// (positions change), so O(messages) whenever anything goes.
    fn prune_unreachable(&mut self) -> Vec<MessageId> {
        let mut keep = vec![false; self.nodes.len()];
        for branch in &self.branches {
            let mut cursor = self.head_index(branch.head).unwrap_or(NIL);
            while cursor != NIL && !keep[cursor as usize] {
                keep[cursor as usize] = true;
                cursor = self.at(cursor).parent();
            }
        }
        if keep.iter().all(|k| *k) {
            return Vec::new();
        }
        // New positions, in the same relative order. A kept node's ancestors are kept, so its
        // parent and jump always map.
        let mut remap = vec![NIL; keep.len()];
        let mut next = 0;
        for (old, kept) in keep.iter().enumerate() {
            if *kept {
                remap[old] = next;
                next += 1;
            }
        }
        let map = |i: Idx| if i == NIL { NIL } else { remap[i as usize] };
        let mut doomed = Vec::new();
        let old = std::mem::take(&mut self.nodes);
        let old_text = std::mem::take(&mut self.text);
        // Where each old node's content ends: where the next one's starts.
        let ends: Vec<usize> = (0..old.len())
            .map(|i| {
                old.get(i + 1)
                    .map_or(old_text.len(), |n| n.text_at as usize)
            })
            .collect();
        self.nodes.reserve_exact(next as usize);
        for (i, mut node) in old.into_iter().enumerate() {
            if !keep[i] {
                doomed.push(node.id);
                continue;
            }
            let content = &old_text[node.text_at as usize..ends[i]];
            node.text_at = self.text.len() as u32;
            self.text.push_str(content);
            node.set_link(PARENT, map(node.parent()));
            node.set_link(JUMP, map(node.jump()));
            node.set_link(FIRST_CHILD, NIL);
            node.set_link(NEXT_SIBLING, NIL);
            self.nodes.push(node);
        }
        // Relink siblings oldest first, so each goes to the front of its list.
        self.first_root = NIL;
        if let Some(rare) = &mut self.rare {
            rare.by_id.clear();
        }
        let sorted = self.nodes.windows(2).all(|w| w[0].id < w[1].id);
        let order: Vec<Idx> = if sorted {
            (0..self.nodes.len() as Idx).collect()
        } else {
            let mut order: Vec<Idx> = (0..self.nodes.len() as Idx).collect();
            order.sort_by_key(|&i| self.at(i).id);
            order
        };
        for &idx in &order {
            let parent = self.at(idx).parent();
            let first = match parent {
                NIL => std::mem::replace(&mut self.first_root, idx),
                p => {
                    let parent = self.at_mut(p);
                    let first = parent.first_child();
                    parent.set_link(FIRST_CHILD, idx);
                    first
                }
            };
            self.at_mut(idx).set_link(NEXT_SIBLING, first);
        }
        if !sorted {
            self.rare.get_or_insert_default().by_id = order;
        }
        self.text.shrink_to_fit();
        if let Some(rare) = &mut self.rare {
            let mut sorted = doomed.clone();
            sorted.sort_unstable();
            let gone = |e: &Extra| sorted.binary_search(&e.id).is_ok();
            let freed: usize = rare
                .extras
                .iter()
                .filter(|e| gone(e))
                .map(Extra::bytes)
                .sum();
            rare.extra_bytes -= freed;
            rare.extras.retain(|e| !gone(e));
            rare.created
                .retain(|(id, _)| sorted.binary_search(id).is_err());
            if rare.is_empty() {
                self.rare = None;
            }
        }
        doomed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{ChatId, Role};
    use std::sync::Arc;

    struct Fixture {
        chat: ChatId,
        tree: Tree,
        main: BranchId,
    }

    fn branch(chat: ChatId, name: &str, head: Option<MessageId>) -> Branch {
        Branch {
            id: BranchId::new(),
            chat_id: chat,
            name: name.into(),
            head,
            forked_from: None,
            created_at: crate::model::now(),
            updated_at: crate::model::now(),
            fallback: None,
        }
    }

    fn msg(chat: ChatId, parent: Option<MessageId>, text: &str) -> Message {
        let (id, created_at) = MessageId::new_with_time();
        Message {
            id,
            chat_id: chat,
            parent_id: parent,
            role: Role::User,
            content: Arc::from(text),
            created_at,
            model: None,
            metadata: None,
            idempotency_key: None,
        }
    }

    fn fixture() -> Fixture {
        let chat = ChatId::new();
        let main = branch(chat, "main", None);
        let id = main.id;
        Fixture {
            chat,
            tree: Tree::new(main),
            main: id,
        }
    }

    impl Fixture {
        fn push(&mut self, branch: BranchId, text: &str) -> MessageId {
            let head = self.tree.head(branch).unwrap();
            let m = msg(self.chat, head, text);
            let id = m.id;
            self.tree.append(branch, m).unwrap();
            id
        }

        fn texts(&self, branch: BranchId) -> Vec<String> {
            self.tree
                .path(branch)
                .unwrap()
                .iter()
                .map(|m| self.tree.content(m).to_string())
                .collect()
        }

        fn fork_at(&mut self, head: MessageId) -> BranchId {
            let b = branch(self.chat, "fork", Some(head));
            let id = b.id;
            self.tree.add_branch(b).unwrap();
            id
        }
    }

    #[test]
    fn jump_pointers_reach_every_ancestor_on_long_forked_paths() {
        let mut f = fixture();
        let mut main_path = Vec::new();
        for i in 0..300 {
            main_path.push(f.push(f.main, &i.to_string()));
        }
        // A side branch from the middle, grown deep, and a restored copy of the whole tree.
        let side = f.fork_at(main_path[137]);
        let mut side_path = main_path[..138].to_vec();
        for i in 0..200 {
            side_path.push(f.push(side, &format!("s{i}")));
        }
        let messages: Vec<Message> = f.tree.nodes().map(|n| f.tree.message(n)).collect();
        let branches = f.tree.branch_rows();
        let restored = Tree::restore(branches, f.main, messages).unwrap().tree;
        for tree in [&f.tree, &restored] {
            for (branch, path) in [(f.main, &main_path), (side, &side_path)] {
                for (index, want) in path.iter().enumerate() {
                    assert_eq!(
                        tree.at_index(branch, index).unwrap(),
                        *want,
                        "index {index}"
                    );
                }
            }
            // On-path checks through the cursor of a page.
            let page = tree.page(side, 5, Some(main_path[100])).unwrap();
            assert_eq!(page.nodes.last().unwrap().id(), main_path[99]);
            assert_eq!(
                tree.page(side, 5, Some(main_path[200])).unwrap_err(),
                TreeError::CursorNotOnPath
            );
        }
    }

    /// Every resident message pays for a node: a field added here is a cost to every chat.
    #[test]
    fn a_node_stays_36_bytes() {
        assert_eq!(std::mem::size_of::<Node>(), 36);
    }

    /// A chat's one branch and its `ThinVec` header fit mimalloc's 112-byte class.
    #[test]
    fn a_branch_stays_within_its_size_class() {
        assert!(std::mem::size_of::<BranchRef>() + 16 <= 112);
    }

    /// A message's creation time is its id's unless it was made apart from it; then the tree
    /// keeps it aside, to the microsecond.
    #[test]
    fn creation_times_come_from_ids_or_are_kept_aside() {
        let mut f = fixture();
        let own = msg(f.chat, None, "made here");
        let mut imported = msg(f.chat, Some(own.id), "made elsewhere");
        imported.created_at = DateTime::from_timestamp_micros(978_307_200_123_456).unwrap();
        let mut foreign = msg(f.chat, Some(imported.id), "not a v7 id");
        foreign.id = MessageId::from_uuid(uuid::Uuid::from_u128(u128::MAX / 2 + 12_345));
        for m in [&own, &imported, &foreign] {
            f.tree.append(f.main, m.clone()).unwrap();
        }
        assert_eq!(own.id.timestamp(), Some(own.created_at));
        assert_eq!(foreign.id.timestamp(), None);
        for m in [&own, &imported, &foreign] {
            assert_eq!(f.tree.created_at(f.tree.node(m.id).unwrap()), m.created_at);
        }
        let aside = f.tree.rare.as_ref().map(|r| r.created.len());
        assert_eq!(aside, Some(2), "only the two made apart from their ids");
    }

    #[test]
    fn the_packed_fields_round_trip() {
        for role in [Role::User, Role::Assistant, Role::System] {
            for depth in [0, 1, DEPTH_MASK] {
                for extra in [false, true] {
                    let tag = Node::tag_of(depth, role, extra);
                    let mut n = Node::new(MessageId::new(), 0, NIL, 5, tag);
                    assert_eq!((n.depth(), n.role(), n.has_extra()), (depth, role, extra));
                    n.set_link(FIRST_CHILD, NIL - 1);
                    n.set_link(JUMP, 0);
                    assert_eq!((n.depth(), n.role(), n.has_extra()), (depth, role, extra));
                    let links = (n.parent(), n.jump(), n.first_child(), n.next_sibling());
                    assert_eq!(links, (NIL, 0, NIL - 1, NIL));
                }
            }
        }
    }

    /// A node handed to another tree (a clone that has since changed, or an unrelated one) reads
    /// that tree's content for its id, or nothing; it never slices out of bounds.
    #[test]
    fn content_of_a_node_from_another_tree_is_looked_up_by_id() {
        let mut f = fixture();
        let a = f.push(f.main, "first message");
        let b = f.push(f.main, "second");
        let copy = f.tree.clone();
        let mut other = fixture();
        other.push(other.main, "x");
        let foreign = copy.node(b).unwrap();
        assert_eq!(f.tree.content(foreign), "second");
        assert_eq!(other.tree.content(foreign), "");
        assert_eq!(other.tree.content(copy.node(a).unwrap()), "");
    }

    /// Lookups by id, while the nodes are in id order and once they are not (a message with an
    /// older id attached last, as from a store).
    #[test]
    fn messages_are_found_by_id_in_and_out_of_id_order() {
        let mut f = fixture();
        let early = msg(f.chat, None, "made first, attached last");
        let a = f.push(f.main, "a");
        let b = f.push(f.main, "b");
        let between = MessageId::new();
        let c = f.push(f.main, "c");
        let check = |tree: &Tree, known: &[MessageId]| {
            for &id in known {
                assert_eq!(tree.message(tree.node(id).unwrap()).id, id);
            }
            assert!(tree.node(between).is_err());
            assert!(tree.node(MessageId::new()).is_err());
            for &taken in known {
                let mut again = msg(tree.chat(), None, "again");
                again.id = taken;
                assert_eq!(tree.clone().attach(again), Err(TreeError::Duplicate));
            }
        };
        check(&f.tree, &[a, b, c]);
        f.tree.attach(early.clone()).unwrap();
        check(&f.tree, &[early.id, a, b, c]);
        let d = f.push(f.main, "d");
        check(&f.tree, &[early.id, a, b, c, d]);
        assert_eq!(f.texts(f.main), ["a", "b", "c", "d"]);
    }

    /// What is computed from one state of a tree (the read path's cached pages) is kept while
    /// the revision stays: so every change must take a new one, unique among all trees, and
    /// reading must not.
    #[test]
    fn every_change_takes_a_new_revision_and_reads_keep_it() {
        let mut f = fixture();
        let other = fixture();
        let mut seen = vec![other.tree.revision()];
        let mut changed = |tree: &Tree, what: &str| {
            assert!(!seen.contains(&tree.revision()), "{what} kept a revision");
            seen.push(tree.revision());
        };
        changed(&f.tree, "new");
        let a = f.push(f.main, "a");
        changed(&f.tree, "append");
        let b = f.push(f.main, "b");
        changed(&f.tree, "append");
        let fork = f.fork_at(a);
        changed(&f.tree, "add_branch");
        f.tree.set_active(fork).unwrap();
        changed(&f.tree, "set_active");
        f.tree
            .rename_branch(fork, "renamed".into(), crate::model::now())
            .unwrap();
        changed(&f.tree, "rename_branch");
        f.tree.set_head(fork, b, crate::model::now()).unwrap();
        changed(&f.tree, "set_head");
        let edited = branch(f.chat, "edit", None);
        f.tree.edit(b, msg(f.chat, Some(a), "b2"), edited).unwrap();
        changed(&f.tree, "edit");
        f.tree.attach(msg(f.chat, Some(a), "loose")).unwrap();
        changed(&f.tree, "attach");
        f.tree.delete_branch(fork).unwrap();
        changed(&f.tree, "delete_branch");
        assert!(f.tree.set_active(BranchId::new()).is_err());
        changed(&f.tree, "a failed change");

        let before = f.tree.revision();
        let _ = f.tree.page(f.main, 20, None).unwrap();
        let _ = f.tree.path(f.main).unwrap();
        let _ = f.tree.clone();
        assert_eq!(f.tree.revision(), before, "reads change nothing");
        let restored = Tree::restore(vec![branch(f.chat, "main", None)], f.main, vec![]).unwrap();
        changed(&restored.tree, "restore");
    }

    #[test]
    fn new_chat_has_one_empty_active_branch() {
        let f = fixture();
        assert_eq!(f.tree.active(), f.main);
        assert_eq!(f.tree.branches().len(), 1);
        assert_eq!(f.tree.path_len(f.main).unwrap(), 0);
        assert!(f.tree.path(f.main).unwrap().is_empty());
    }

    #[test]
    fn approx_bytes_follows_content_in_and_out() {
        let mut f = fixture();
        let empty = f.tree.approx_bytes();
        let a = f.push(f.main, "short");
        let fork = f.fork_at(a);
        let big = "x".repeat(10_000);
        f.push(fork, &big);
        let with_big = f.tree.approx_bytes();
        assert!(with_big >= empty + 10_005, "{with_big} < {empty} + 10005");
        f.tree.delete_branch(fork).unwrap();
        let after = f.tree.approx_bytes();
        assert!(
            after < with_big - 9_000,
            "deleting the branch freed its message: {after}"
        );
        let restored = Tree::restore(
            f.tree.branch_rows(),
            f.main,
            f.tree.nodes().map(|n| f.tree.message(n)).collect(),
        )
        .unwrap()
        .tree;
        assert_eq!(restored.content_bytes(), f.tree.content_bytes());
    }

    #[test]
    fn recent_path_keeps_the_newest_messages_within_budget() {
        let mut f = fixture();
        f.push(f.main, "aaaa");
        let b = f.push(f.main, "bbbb");
        let fork = f.fork_at(b);
        f.push(f.main, "other branch");
        let c = f.push(fork, "cc");
        let d = f.push(fork, "dddddddddd");
        let texts = |budget| {
            f.tree
                .recent_path(d, budget)
                .unwrap()
                .iter()
                .map(|m| f.tree.content(m).to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(usize::MAX), ["aaaa", "bbbb", "cc", "dddddddddd"]);
        assert_eq!(texts(16), ["bbbb", "cc", "dddddddddd"]);
        assert_eq!(texts(15), ["cc", "dddddddddd"]);
        // The last message is kept even when it alone is over budget.
        assert_eq!(texts(3), ["dddddddddd"]);
        assert_eq!(f.tree.recent_path(c, 0).unwrap().len(), 1);
    }

    #[test]
    fn append_moves_head_and_builds_path() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        let b = f.push(f.main, "b");
        assert_eq!(f.tree.head(f.main).unwrap(), Some(b));
        assert_eq!(f.tree.parent_id(f.tree.node(b).unwrap()), Some(a));
        assert_eq!(f.texts(f.main), ["a", "b"]);
        assert_eq!(f.tree.node(b).unwrap().depth(), 1);
    }

    #[test]
    fn append_refuses_a_message_not_at_head() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        f.push(f.main, "b");
        let stale = msg(f.chat, Some(a), "stale");
        assert_eq!(f.tree.append(f.main, stale), Err(TreeError::NotAtHead));
        assert_eq!(f.tree.message_count(), 2);
    }

    #[test]
    fn fork_shares_history_without_copying() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        f.push(f.main, "b");
        let fork = f.fork_at(a);
        f.push(fork, "c");
        assert_eq!(f.texts(f.main), ["a", "b"]);
        assert_eq!(f.texts(fork), ["a", "c"]);
        assert_eq!(f.tree.message_count(), 3);
        // b and c are siblings under a.
        let c = f.tree.head(fork).unwrap().unwrap();
        assert_eq!(f.tree.sibling_position(c).unwrap(), (1, 2));
    }

    #[test]
    fn fork_by_index_resolves_path_positions() {
        let mut f = fixture();
        let ids: Vec<_> = (0..5).map(|i| f.push(f.main, &i.to_string())).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(f.tree.at_index(f.main, i).unwrap(), *id);
        }
        assert_eq!(
            f.tree.at_index(f.main, 5),
            Err(TreeError::IndexOutOfRange { index: 5, len: 5 })
        );
    }

    #[test]
    fn fork_of_unknown_message_is_refused() {
        let mut f = fixture();
        let b = branch(f.chat, "x", Some(MessageId::new()));
        assert!(matches!(
            f.tree.add_branch(b),
            Err(TreeError::MessageNotFound(_))
        ));
        assert_eq!(f.tree.branches().len(), 1);
    }

    #[test]
    fn edit_makes_a_sibling_on_a_new_branch() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        let b = f.push(f.main, "b");
        let replacement = msg(f.chat, Some(a), "b2");
        let rid = replacement.id;
        let nb = branch(f.chat, "edit", None);
        let nbid = nb.id;
        f.tree.edit(b, replacement, nb).unwrap();
        assert_eq!(f.texts(nbid), ["a", "b2"]);
        assert_eq!(f.texts(f.main), ["a", "b"]);
        assert_eq!(f.tree.sibling_position(b).unwrap(), (0, 2));
        assert_eq!(f.tree.sibling_position(rid).unwrap(), (1, 2));
        assert_eq!(f.tree.branch(nbid).unwrap().forked_from, Some(b));
    }

    #[test]
    fn editing_a_root_makes_a_second_root() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        let nb = branch(f.chat, "edit", None);
        f.tree.edit(a, msg(f.chat, None, "a2"), nb).unwrap();
        assert_eq!(f.tree.sibling_position(a).unwrap(), (0, 2));
    }

    #[test]
    fn delete_branch_prunes_only_what_it_alone_reached() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        let b = f.push(f.main, "b");
        let fork = f.fork_at(a);
        let c = f.push(fork, "c");
        let d = f.push(fork, "d");
        let mut removed = f.tree.delete_branch(fork).unwrap();
        removed.sort();
        let mut expected = vec![c, d];
        expected.sort();
        assert_eq!(removed, expected);
        assert_eq!(f.tree.message_count(), 2);
        let a = f.tree.node(a).unwrap();
        let children: Vec<_> = f.tree.children(a).iter().map(|n| n.id()).collect();
        assert_eq!(children, [b]);
        assert_eq!(f.texts(f.main), ["a", "b"]);
    }

    #[test]
    fn delete_branch_keeps_shared_messages() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        let fork = f.fork_at(a);
        assert!(f.tree.delete_branch(fork).unwrap().is_empty());
        assert_eq!(f.tree.message_count(), 1);
    }

    #[test]
    fn deleting_the_last_branch_is_refused() {
        let mut f = fixture();
        f.push(f.main, "a");
        assert_eq!(f.tree.delete_branch(f.main), Err(TreeError::LastBranch));
        assert_eq!(f.tree.message_count(), 1);
    }

    #[test]
    fn deleting_the_active_branch_activates_another() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        let fork = f.fork_at(a);
        f.tree.set_active(fork).unwrap();
        f.tree.delete_branch(fork).unwrap();
        assert_eq!(f.tree.active(), f.main);
    }

    #[test]
    fn pages_walk_back_from_the_head() {
        let mut f = fixture();
        let ids: Vec<_> = (0..7).map(|i| f.push(f.main, &i.to_string())).collect();
        let p1 = f.tree.page(f.main, 3, None).unwrap();
        let got: Vec<_> = p1.nodes.iter().map(|n| n.id()).collect();
        assert_eq!(got, ids[4..7]);
        assert!(p1.has_more);
        assert_eq!(p1.path_len, 7);
        let p2 = f.tree.page(f.main, 3, Some(ids[4])).unwrap();
        let got: Vec<_> = p2.nodes.iter().map(|n| n.id()).collect();
        assert_eq!(got, ids[1..4]);
        let p3 = f.tree.page(f.main, 3, Some(ids[1])).unwrap();
        assert_eq!(p3.nodes.len(), 1);
        assert!(!p3.has_more);
    }

    #[test]
    fn a_cursor_from_another_branch_is_refused() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        f.push(f.main, "b");
        let fork = f.fork_at(a);
        let c = f.push(fork, "c");
        assert!(matches!(
            f.tree.page(f.main, 10, Some(c)),
            Err(TreeError::CursorNotOnPath)
        ));
    }

    #[test]
    fn restore_rebuilds_the_same_tree_and_repairs_damage() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        f.push(f.main, "b");
        let fork = f.fork_at(a);
        f.push(fork, "c");
        f.tree.set_active(fork).unwrap();

        let mut messages: Vec<Message> = f.tree.nodes().map(|n| f.tree.message(n)).collect();
        // A message no branch reaches (a crash after the message store, before the metadata).
        messages.push(msg(f.chat, Some(a), "stray"));
        // An orphan whose parent never landed.
        messages.push(msg(f.chat, Some(MessageId::new()), "orphan"));
        messages.reverse();
        let restored = Tree::restore(f.tree.branch_rows(), f.tree.active(), messages).unwrap();
        assert_eq!(restored.pruned.len(), 2);
        let t = restored.tree;
        assert_eq!(t.active(), fork);
        assert_eq!(t.message_count(), 3);
        for b in [f.main, fork] {
            let want: Vec<_> = f
                .tree
                .path(b)
                .unwrap()
                .into_iter()
                .map(|n| f.tree.message(n))
                .collect();
            let got: Vec<_> = t
                .path(b)
                .unwrap()
                .into_iter()
                .map(|n| t.message(n))
                .collect();
            assert_eq!(got, want);
        }
    }

    /// Ids made out of creation order (another process's clock, a restore that had to defer a
    /// child) move the tree onto its sorted index; lookups, sibling order and pruning hold.
    #[test]
    fn ids_out_of_creation_order_keep_lookups_sibling_order_and_pruning() {
        let mut f = fixture();
        let root = f.push(f.main, "root");
        let ids: Vec<MessageId> = (0..6).map(|_| MessageId::new()).collect();
        // Siblings under `root`, attached in a scrambled order, each on its own branch.
        let mut branches = Vec::new();
        for &i in &[3usize, 0, 5, 1, 4, 2] {
            let mut m = msg(f.chat, Some(root), &format!("s{i}"));
            m.id = ids[i];
            f.tree.attach(m).unwrap();
            branches.push((i, f.fork_at(ids[i])));
        }
        let root_node = f.tree.node(root).unwrap();
        let children: Vec<_> = f.tree.children(root_node).iter().map(|n| n.id()).collect();
        assert_eq!(children, ids);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(f.tree.node(*id).unwrap().id(), *id);
            assert_eq!(f.tree.sibling_position(*id).unwrap(), (i, 6));
        }
        let all: Vec<_> = f.tree.nodes().map(|n| n.id()).collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
        // Dropping the branches of s0, s3 and s4 prunes exactly those, and the rest still links.
        for (i, b) in &branches {
            if [0, 3, 4].contains(i) {
                assert_eq!(f.tree.delete_branch(*b).unwrap(), [ids[*i]]);
            }
        }
        let root_node = f.tree.node(root).unwrap();
        let children: Vec<_> = f.tree.children(root_node).iter().map(|n| n.id()).collect();
        assert_eq!(children, [ids[1], ids[2], ids[5]]);
        for (i, b) in &branches {
            if ![0, 3, 4].contains(i) {
                assert_eq!(f.texts(*b), ["root".to_string(), format!("s{i}")]);
                assert_eq!(f.tree.at_index(*b, 1).unwrap(), ids[*i]);
            }
        }
        assert_eq!(f.tree.sibling_position(ids[5]).unwrap(), (2, 3));
        assert!(f.tree.node(ids[0]).is_err());
    }

    #[test]
    fn pruning_keeps_every_survivors_content_and_extras() {
        let mut f = fixture();
        let mut kept = Vec::new();
        let mut doomed = Vec::new();
        // Every other message carries a model, metadata and a key, every third a creation time
        // its id does not carry; contents differ in length.
        let with_extras = |mut m: Message, i: usize| {
            if i % 2 == 0 {
                m.model = Some(Arc::from(format!("model-{i}")));
                m.metadata = Some(Arc::new(serde_json::json!({ "i": i })));
                m.idempotency_key = Some(Arc::from(format!("key-{i}")));
            }
            if i % 3 == 0 {
                m.created_at = DateTime::from_timestamp_micros(1_000_000 * i as i64 + 7).unwrap();
            }
            m
        };
        for i in 0..6 {
            let head = f.tree.head(f.main).unwrap();
            let m = with_extras(msg(f.chat, head, &"m".repeat(i + 1)), i);
            kept.push(m.clone());
            f.tree.append(f.main, m).unwrap();
        }
        let fork = f.fork_at(kept[2].id);
        for i in 6..10 {
            let head = f.tree.head(fork).unwrap();
            let m = with_extras(msg(f.chat, head, &"f".repeat(i * 3)), i);
            doomed.push(m.id);
            f.tree.append(fork, m).unwrap();
        }
        // Messages after the fork on main again, so survivors sit on both sides of the doomed.
        for i in 10..13 {
            let head = f.tree.head(f.main).unwrap();
            let m = with_extras(msg(f.chat, head, &format!("late {i}")), i);
            kept.push(m.clone());
            f.tree.append(f.main, m).unwrap();
        }

        let mut removed = f.tree.delete_branch(fork).unwrap();
        removed.sort();
        doomed.sort();
        assert_eq!(removed, doomed);
        for want in &kept {
            let node = f.tree.node(want.id).unwrap();
            assert_eq!(&f.tree.message(node), want);
        }
        for id in &doomed {
            assert!(f.tree.node(*id).is_err());
        }
        // Nothing of the doomed stays behind.
        let with = kept.iter().filter(|m| m.model.is_some()).count();
        assert_eq!(f.tree.extras().len(), with);
        let aside = kept
            .iter()
            .filter(|m| m.id.timestamp() != Some(m.created_at))
            .count();
        assert_eq!(f.tree.rare.as_ref().unwrap().created.len(), aside);
        let restored = Tree::restore(f.tree.branch_rows(), f.main, kept.clone())
            .unwrap()
            .tree;
        assert_eq!(restored.content_bytes(), f.tree.content_bytes());
        assert_eq!(restored.text, f.tree.text);
    }

    #[test]
    fn a_reply_shares_the_previous_replys_model_label() {
        let mut f = fixture();
        let mut model_of = Vec::new();
        for i in 0..3 {
            f.push(f.main, &format!("q{i}"));
            let head = f.tree.head(f.main).unwrap();
            let mut reply = msg(f.chat, head, "a");
            reply.role = Role::Assistant;
            reply.model = Some(Arc::from("openai/gpt"));
            model_of.push(reply.id);
            f.tree.append(f.main, reply).unwrap();
        }
        let models: Vec<_> = model_of
            .iter()
            .map(|id| f.tree.model(f.tree.node(*id).unwrap()).unwrap().clone())
            .collect();
        assert_eq!(&*models[2], "openai/gpt");
        assert!(Arc::ptr_eq(&models[0], &models[1]) && Arc::ptr_eq(&models[1], &models[2]));
    }

    #[test]
    fn first_branch_through_finds_where_a_message_was_added() {
        let mut f = fixture();
        let a = f.push(f.main, "a");
        let side = f.fork_at(a);
        let s1 = f.push(side, "s1");
        let later = f.fork_at(s1);
        f.tree.set_active(later).unwrap();
        assert_eq!(f.tree.first_branch_through(a), Some(f.main));
        assert_eq!(f.tree.first_branch_through(s1), Some(side));
        assert_eq!(f.tree.first_branch_through(MessageId::new()), None);
    }

    #[test]
    fn restore_resets_a_head_whose_message_is_missing() {
        let f = fixture();
        let mut b = f.tree.branch_rows().remove(0);
        b.head = Some(MessageId::new());
        let restored = Tree::restore(vec![b], f.main, Vec::new()).unwrap();
        assert_eq!(restored.reset_branches, vec![f.main]);
        assert_eq!(restored.tree.head(f.main).unwrap(), None);
    }

    /// A crash between the two stores' commits: the branch row moved its head to a message
    /// (and its parent) that never landed; the row's fallback, stored with it, did.
    #[test]
    fn restore_moves_a_missing_head_back_to_its_fallback() {
        let mut f = fixture();
        f.push(f.main, "q");
        let a = f.push(f.main, "a");
        let stored: Vec<Message> = f.tree.nodes().map(|n| f.tree.message(n)).collect();
        let mut row = f.tree.branch_rows().remove(0);
        row.head = Some(MessageId::new());
        row.fallback = Some(a);
        let restored = Tree::restore(vec![row.clone()], f.main, stored.clone()).unwrap();
        assert_eq!(restored.reset_branches, vec![f.main]);
        assert_eq!(restored.tree.head(f.main).unwrap(), Some(a));
        assert!(restored.pruned.is_empty());
        // A fallback that is missing too resets the branch, as without one.
        row.fallback = Some(MessageId::new());
        let restored = Tree::restore(vec![row], f.main, stored).unwrap();
        assert_eq!(restored.tree.head(f.main).unwrap(), None);
    }
}
