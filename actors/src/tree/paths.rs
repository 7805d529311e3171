//! Reading a branch's path: pages, the recent context, sibling positions.

use super::*;

impl Tree {
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
}
