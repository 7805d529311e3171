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

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;

use chrono::{DateTime, Utc};

use crate::model::{Branch, BranchId, Message, MessageId};

/// A message in the tree with its links.
#[derive(Clone, Debug)]
pub struct Node {
    pub message: Message,
    /// Child ids in creation order.
    pub children: Children,
    /// Distance from the root: the message's 0-based index in any path through it.
    pub depth: u32,
    /// A farther ancestor (skew-binary jump pointer, Myers 1983): with the parent links it
    /// reaches any ancestor in O(log depth) steps. `None` for a root.
    jump: Option<MessageId>,
}

/// A node's child ids in id (creation) order: inline while there is at most one, which is most
/// messages, so a plain conversation allocates nothing per message for its links.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Children {
    #[default]
    Empty,
    One(MessageId),
    Many(Vec<MessageId>),
}

impl Children {
    pub fn as_slice(&self) -> &[MessageId] {
        match self {
            Children::Empty => &[],
            Children::One(id) => std::slice::from_ref(id),
            Children::Many(ids) => ids,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub fn to_vec(&self) -> Vec<MessageId> {
        self.as_slice().to_vec()
    }

    fn insert(&mut self, id: MessageId) {
        match self {
            Children::Empty => *self = Children::One(id),
            Children::One(first) => {
                let first = *first;
                let (a, b) = if first < id { (first, id) } else { (id, first) };
                *self = Children::Many(vec![a, b]);
            }
            Children::Many(ids) => insert_sorted(ids, id),
        }
    }

    fn sort(&mut self) {
        if let Children::Many(ids) = self {
            ids.sort();
        }
    }

    fn remove(&mut self, id: MessageId) {
        match self {
            Children::One(only) if *only == id => *self = Children::Empty,
            Children::Many(ids) => {
                ids.retain(|c| *c != id);
                match ids.as_slice() {
                    [] => *self = Children::Empty,
                    [only] => *self = Children::One(*only),
                    _ => {}
                }
            }
            _ => {}
        }
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

/// A chat's tree rebuilt from storage, with what could not be placed.
#[derive(Debug)]
pub struct Restored {
    pub tree: Tree,
    /// Messages that were dropped: orphans or unreachable from every branch.
    pub pruned: Vec<MessageId>,
    /// Branches whose head was missing and were reset to empty.
    pub reset_branches: Vec<BranchId>,
}

#[derive(Clone, Debug)]
pub struct Tree {
    /// By id. foldhash rather than SipHash: ids are server-made UUIDs, and every read of a path
    /// is a chain of lookups here. Boxed, so the table's spare slots (a hash table is never
    /// full) cost a pointer each rather than a whole node.
    nodes: HashMap<MessageId, Box<Node>, RandomState>,
    roots: Vec<MessageId>,
    branches: Vec<Branch>,
    active: BranchId,
    /// Heap bytes the messages' strings and metadata take (kept as messages come and go).
    content_bytes: usize,
}

impl Tree {
    /// A new chat: one empty branch, active.
    pub fn new(main: Branch) -> Self {
        let active = main.id;
        Self {
            nodes: HashMap::default(),
            roots: Vec::new(),
            branches: vec![main],
            active,
            content_bytes: 0,
        }
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
        let active = if branches.iter().any(|b| b.id == active) {
            active
        } else {
            branches[0].id
        };
        let mut tree = Self {
            nodes: HashMap::with_capacity_and_hasher(messages.len(), RandomState::default()),
            roots: Vec::new(),
            branches,
            active,
            content_bytes: 0,
        };
        messages.sort_by_key(|m| m.id);
        let mut pending = messages;
        loop {
            let before = pending.len();
            let mut deferred = Vec::new();
            for message in pending {
                match message.parent_id {
                    Some(p) if !tree.nodes.contains_key(&p) => deferred.push(message),
                    _ => tree.link(message),
                }
            }
            pending = deferred;
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        let mut pruned: Vec<MessageId> = pending.into_iter().map(|m| m.id).collect();
        if !pruned.is_empty() {
            // Children were linked in arrival order; a deferred pass may have broken id order.
            tree.sort_links();
        }
        let mut reset_branches = Vec::new();
        for branch in &mut tree.branches {
            if let Some(head) = branch.head {
                if !tree.nodes.contains_key(&head) {
                    branch.head = None;
                    reset_branches.push(branch.id);
                }
            }
        }
        pruned.extend(tree.prune_unreachable());
        Ok(Restored {
            tree,
            pruned,
            reset_branches,
        })
    }

    pub fn active(&self) -> BranchId {
        self.active
    }

    pub fn branches(&self) -> &[Branch] {
        &self.branches
    }

    pub fn branch(&self, id: BranchId) -> Result<&Branch, TreeError> {
        self.branches
            .iter()
            .find(|b| b.id == id)
            .ok_or(TreeError::BranchNotFound(id))
    }

    pub fn node(&self, id: MessageId) -> Result<&Node, TreeError> {
        self.nodes
            .get(&id)
            .map(Box::as_ref)
            .ok_or(TreeError::MessageNotFound(id))
    }

    pub fn message_count(&self) -> usize {
        self.nodes.len()
    }

    /// Approximate memory this tree holds: its table of nodes, their links, branches (names
    /// counted at a typical 16 bytes) and the messages' content. O(1), as the actor refreshes it
    /// after every request; for the operator surface, not for accounting.
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let table = self.nodes.capacity() * (size_of::<(MessageId, Box<Node>)>() + 1)
            + self.nodes.len() * size_of::<Node>();
        let links = self.roots.capacity() * size_of::<MessageId>();
        let branches = self.branches.capacity() * (size_of::<Branch>() + 16);
        size_of::<Self>() + table + links + branches + self.content_bytes
    }

    /// All nodes, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(Box::as_ref)
    }

    /// Number of messages on a branch's path.
    pub fn path_len(&self, branch: BranchId) -> Result<usize, TreeError> {
        let head = self.branch(branch)?.head;
        Ok(head.map_or(0, |h| self.nodes[&h].depth as usize + 1))
    }

    /// The messages a new message on `branch` would follow: its parent is the head.
    pub fn head(&self, branch: BranchId) -> Result<Option<MessageId>, TreeError> {
        Ok(self.branch(branch)?.head)
    }

    /// Adds `message` to `branch`: it must be a child of the branch head; the head moves to it.
    pub fn append(&mut self, branch: BranchId, message: Message) -> Result<(), TreeError> {
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
        if self.nodes.contains_key(&message.id) {
            return Err(TreeError::Duplicate);
        }
        if let Some(parent) = message.parent_id {
            if !self.nodes.contains_key(&parent) {
                return Err(TreeError::MessageNotFound(parent));
            }
        }
        self.link(message);
        Ok(())
    }

    /// Moves a branch head to an existing message.
    pub fn set_head(
        &mut self,
        branch: BranchId,
        head: MessageId,
        at: DateTime<Utc>,
    ) -> Result<(), TreeError> {
        self.node(head)?;
        let idx = self.branch_index(branch)?;
        let b = &mut self.branches[idx];
        b.head = Some(head);
        b.updated_at = at;
        Ok(())
    }

    /// Adds a branch (a fork): its head, if any, must already be in the tree.
    pub fn add_branch(&mut self, branch: Branch) -> Result<(), TreeError> {
        if let Some(head) = branch.head {
            self.node(head)?;
        }
        if self.branches.iter().any(|b| b.id == branch.id) {
            return Err(TreeError::Duplicate);
        }
        self.branches.push(branch);
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
        let original = self.node(target)?;
        if replacement.parent_id != original.message.parent_id {
            return Err(TreeError::NotAtHead);
        }
        branch.head = Some(replacement.id);
        branch.forked_from = Some(target);
        self.attach(replacement)?;
        self.branches.push(branch);
        Ok(())
    }

    /// The id of the message at 0-based `index` on a branch's path.
    pub fn at_index(&self, branch: BranchId, index: usize) -> Result<MessageId, TreeError> {
        let len = self.path_len(branch)?;
        if index >= len {
            return Err(TreeError::IndexOutOfRange { index, len });
        }
        let head = self.branch(branch)?.head.ok_or(TreeError::NoBranches)?;
        Ok(self.ancestor_at(head, index as u32))
    }

    /// The ancestor of `id` (or `id` itself) at `depth`, which must not exceed `id`'s depth:
    /// O(log depth) through the jump pointers.
    fn ancestor_at(&self, id: MessageId, depth: u32) -> MessageId {
        let mut id = id;
        loop {
            let node = &self.nodes[&id];
            if node.depth <= depth {
                return id;
            }
            id = match node.jump {
                Some(jump) if self.nodes[&jump].depth >= depth => jump,
                _ => node
                    .message
                    .parent_id
                    .expect("a node deeper than the target depth has a parent"),
            };
        }
    }

    pub fn set_active(&mut self, branch: BranchId) -> Result<(), TreeError> {
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
        let idx = self.branch_index(branch)?;
        self.branches[idx].name = name;
        self.branches[idx].updated_at = at;
        Ok(())
    }

    /// Removes a branch and every message no remaining branch reaches; returns those messages.
    /// If the active branch goes, the most recently updated remaining branch becomes active.
    pub fn delete_branch(&mut self, branch: BranchId) -> Result<Vec<MessageId>, TreeError> {
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
        let head = self.branch(branch)?.head;
        let path_len = self.path_len(branch)?;
        let start = match before {
            None => head,
            Some(cursor) => {
                let node = self.node(cursor)?;
                if !self.is_on_path(head, node) {
                    return Err(TreeError::CursorNotOnPath);
                }
                node.message.parent_id
            }
        };
        let mut nodes = Vec::with_capacity(limit.min(path_len));
        let mut next = start;
        while let Some(id) = next {
            if nodes.len() == limit {
                break;
            }
            let node: &Node = &self.nodes[&id];
            nodes.push(node);
            next = node.message.parent_id;
        }
        nodes.reverse();
        Ok(Page {
            nodes,
            has_more: next.is_some(),
            path_len,
        })
    }

    /// The whole path of a branch, root first.
    pub fn path(&self, branch: BranchId) -> Result<Vec<&Message>, TreeError> {
        let page = self.page(branch, usize::MAX, None)?;
        Ok(page.nodes.into_iter().map(|n| &n.message).collect())
    }

    /// The newest messages of the path ending at `last`, root side first, within `budget_chars`
    /// characters of content. `last` itself is always kept, however long it is.
    pub fn recent_path(
        &self,
        last: MessageId,
        budget_chars: usize,
    ) -> Result<Vec<&Message>, TreeError> {
        let mut out = Vec::new();
        let mut used = 0usize;
        let mut cursor = Some(last);
        while let Some(id) = cursor {
            let message = &self.node(id)?.message;
            let chars = message.content.chars().count();
            if !out.is_empty() && used + chars > budget_chars {
                break;
            }
            used += chars;
            out.push(message);
            cursor = message.parent_id;
        }
        out.reverse();
        Ok(out)
    }

    /// The oldest branch whose path contains `id`: the branch the message was added to (a
    /// message is its branch's head when added; any branch reaching it later was forked since).
    pub fn first_branch_through(&self, id: MessageId) -> Option<BranchId> {
        let node = self.nodes.get(&id)?;
        self.branches
            .iter()
            .find(|b| self.is_on_path(b.head, node))
            .map(|b| b.id)
    }

    /// `(index, count)` of a message among its siblings (messages with the same parent).
    pub fn sibling_position(&self, id: MessageId) -> Result<(usize, usize), TreeError> {
        Ok(self.sibling_position_of(self.node(id)?))
    }

    /// [`Self::sibling_position`] of a node already at hand.
    pub fn sibling_position_of(&self, node: &Node) -> (usize, usize) {
        let id = node.message.id;
        let siblings = match node.message.parent_id {
            Some(p) => self.nodes[&p].children.as_slice(),
            None => &self.roots,
        };
        let index = siblings.binary_search(&id).unwrap_or(0);
        (index, siblings.len())
    }

    /// Whether `node` is on the path ending at `head`: O(log depth).
    fn is_on_path(&self, head: Option<MessageId>, node: &Node) -> bool {
        head.is_some_and(|head| {
            self.nodes[&head].depth >= node.depth
                && self.ancestor_at(head, node.depth) == node.message.id
        })
    }

    fn branch_index(&self, id: BranchId) -> Result<usize, TreeError> {
        self.branches
            .iter()
            .position(|b| b.id == id)
            .ok_or(TreeError::BranchNotFound(id))
    }

    /// Inserts a node whose parent (if any) is present, keeping sibling lists in id order.
    fn link(&mut self, message: Message) {
        let id = message.id;
        let (depth, jump) = match message.parent_id {
            Some(p) => {
                let jump = self.jump_for(p);
                let parent = self
                    .nodes
                    .get_mut(&p)
                    .expect("link is only called with a present parent");
                parent.children.insert(id);
                (parent.depth + 1, Some(jump))
            }
            None => {
                insert_sorted(&mut self.roots, id);
                (0, None)
            }
        };
        self.content_bytes += message_bytes(&message);
        self.nodes.insert(
            id,
            Box::new(Node {
                message,
                children: Children::Empty,
                depth,
                jump,
            }),
        );
    }

    /// The jump pointer of a new child of `parent`: the parent's jump's jump when the parent's
    /// two jumps span equal distances (merging two skew-binary segments), else the parent.
    fn jump_for(&self, parent: MessageId) -> MessageId {
        let p = &self.nodes[&parent];
        let Some(j) = p.jump else { return parent };
        let jn = &self.nodes[&j];
        match jn.jump {
            Some(jj) if p.depth - jn.depth == jn.depth - self.nodes[&jj].depth => jj,
            _ => parent,
        }
    }

    fn sort_links(&mut self) {
        self.roots.sort();
        for node in self.nodes.values_mut() {
            node.children.sort();
        }
    }

    /// Drops every message that no branch head reaches; returns their ids.
    fn prune_unreachable(&mut self) -> Vec<MessageId> {
        let mut reachable: HashSet<MessageId> = HashSet::with_capacity(self.nodes.len());
        for branch in &self.branches {
            let mut cursor = branch.head;
            while let Some(id) = cursor {
                if !reachable.insert(id) {
                    break;
                }
                cursor = self.nodes[&id].message.parent_id;
            }
        }
        if reachable.len() == self.nodes.len() {
            return Vec::new();
        }
        let doomed: Vec<MessageId> = self
            .nodes
            .keys()
            .filter(|id| !reachable.contains(id))
            .copied()
            .collect();
        for id in &doomed {
            if let Some(node) = self.nodes.remove(id) {
                self.content_bytes -= message_bytes(&node.message);
                match node.message.parent_id {
                    Some(p) => {
                        if let Some(parent) = self.nodes.get_mut(&p) {
                            parent.children.remove(*id);
                        }
                    }
                    None => self.roots.retain(|c| c != id),
                }
            }
        }
        doomed
    }
}

/// The heap bytes a message's strings and metadata hold (metadata by its JSON size).
fn message_bytes(m: &Message) -> usize {
    m.content.len()
        + m.model.as_deref().map_or(0, str::len)
        + m.idempotency_key.as_deref().map_or(0, str::len)
        + m.metadata.as_deref().map_or(0, |v| v.to_string().len())
}

fn insert_sorted(list: &mut Vec<MessageId>, id: MessageId) {
    // New ids are almost always the largest (UUIDv7), so this is usually a push.
    match list.last() {
        Some(last) if *last > id => {
            let pos = list.binary_search(&id).unwrap_or_else(|p| p);
            list.insert(pos, id);
        }
        _ => list.push(id),
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
        }
    }

    fn msg(chat: ChatId, parent: Option<MessageId>, text: &str) -> Message {
        Message {
            id: MessageId::new(),
            chat_id: chat,
            parent_id: parent,
            role: Role::User,
            content: Arc::from(text),
            created_at: crate::model::now(),
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
                .map(|m| m.content.to_string())
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
        let messages: Vec<Message> = f.tree.nodes().map(|n| n.message.clone()).collect();
        let branches = f.tree.branches().to_vec();
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
            assert_eq!(page.nodes.last().unwrap().message.id, main_path[99]);
            assert_eq!(
                tree.page(side, 5, Some(main_path[200])).unwrap_err(),
                TreeError::CursorNotOnPath
            );
        }
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
            f.tree.branches().to_vec(),
            f.main,
            f.tree.nodes().map(|n| n.message.clone()).collect(),
        )
        .unwrap()
        .tree;
        assert_eq!(restored.content_bytes, f.tree.content_bytes);
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
                .map(|m| m.content.to_string())
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
        assert_eq!(f.tree.node(b).unwrap().message.parent_id, Some(a));
        assert_eq!(f.texts(f.main), ["a", "b"]);
        assert_eq!(f.tree.node(b).unwrap().depth, 1);
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
        assert_eq!(f.tree.node(a).unwrap().children.as_slice(), [b]);
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
        let got: Vec<_> = p1.nodes.iter().map(|n| n.message.id).collect();
        assert_eq!(got, ids[4..7]);
        assert!(p1.has_more);
        assert_eq!(p1.path_len, 7);
        let p2 = f.tree.page(f.main, 3, Some(ids[4])).unwrap();
        let got: Vec<_> = p2.nodes.iter().map(|n| n.message.id).collect();
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

        let mut messages: Vec<Message> = f.tree.nodes().map(|n| n.message.clone()).collect();
        // A message no branch reaches (a crash after the message store, before the metadata).
        messages.push(msg(f.chat, Some(a), "stray"));
        // An orphan whose parent never landed.
        messages.push(msg(f.chat, Some(MessageId::new()), "orphan"));
        messages.reverse();
        let restored =
            Tree::restore(f.tree.branches().to_vec(), f.tree.active(), messages).unwrap();
        assert_eq!(restored.pruned.len(), 2);
        let t = restored.tree;
        assert_eq!(t.active(), fork);
        assert_eq!(t.message_count(), 3);
        for b in [f.main, fork] {
            let want: Vec<_> = f.tree.path(b).unwrap().into_iter().cloned().collect();
            let got: Vec<_> = t.path(b).unwrap().into_iter().cloned().collect();
            assert_eq!(got, want);
        }
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
        let mut b = f.tree.branches()[0].clone();
        b.head = Some(MessageId::new());
        let restored = Tree::restore(vec![b], f.main, Vec::new()).unwrap();
        assert_eq!(restored.reset_branches, vec![f.main]);
        assert_eq!(restored.tree.head(f.main).unwrap(), None);
    }
}
