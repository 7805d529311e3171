//! The arena's own moves: positions, the id search, links and jumps, and pruning.

use super::*;

impl Tree {
    pub(super) fn at(&self, idx: Idx) -> &Node {
        &self.nodes[idx as usize]
    }

    pub(super) fn at_mut(&mut self, idx: Idx) -> &mut Node {
        &mut self.nodes[idx as usize]
    }

    /// The position of the message `id`: a binary search by id, after one look at the newest
    /// message. An append checks that its new id is not taken (it is newer than every id) and
    /// finds its parent (most often the newest message): neither needs the search, each step of
    /// which is a cache miss in a chat that has been idle.
    pub(super) fn find(&self, id: MessageId) -> Option<Idx> {
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

    pub(super) fn head_index(&self, head: Option<MessageId>) -> Option<Idx> {
        head.and_then(|h| self.find(h))
    }

    /// A sibling list from its newest member.
    pub(super) fn siblings_from(&self, first: Idx) -> impl Iterator<Item = &Node> {
        let mut next = first;
        std::iter::from_fn(move || {
            let node = (next != NIL).then(|| self.at(next))?;
            next = node.next_sibling();
            Some(node)
        })
    }

    /// The ancestor of `idx` (or `idx` itself) at `depth`, which must not exceed its depth:
    /// O(log depth) through the jump pointers.
    pub(super) fn ancestor_at(&self, idx: Idx, depth: u32) -> Idx {
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
    pub(super) fn is_on_path(&self, head: Option<Idx>, idx: Idx) -> bool {
        let depth = self.at(idx).depth();
        head.is_some_and(|h| self.at(h).depth() >= depth && self.ancestor_at(h, depth) == idx)
    }

    pub(super) fn branch_index(&self, id: BranchId) -> Result<usize, TreeError> {
        self.branches
            .iter()
            .position(|b| b.id == id)
            .ok_or(TreeError::BranchNotFound(id))
    }

    /// Adds a message under `parent` (present, or `NIL` for a root), keeping sibling lists and
    /// the id index in order.
    pub(super) fn link(&mut self, parent: Idx, message: Message) {
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
    pub(super) fn shared_model(&self, parent: Idx, model: Arc<str>) -> Arc<str> {
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
    pub(super) fn insert_sibling(&mut self, idx: Idx) {
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
    pub(super) fn jump_for(&self, parent: Idx) -> Idx {
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
    pub(super) fn prune_unreachable(&mut self) -> Vec<MessageId> {
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
            let freed: usize = rare
                .feedback
                .iter()
                .filter(|(id, _)| sorted.binary_search(id).is_ok())
                .map(|(_, f)| f.bytes())
                .sum();
            rare.extra_bytes -= freed;
            rare.feedback
                .retain(|(id, _)| sorted.binary_search(id).is_err());
            if rare.is_empty() {
                self.rare = None;
            }
        }
        doomed
    }
}
