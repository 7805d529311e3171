//! The operations on a chat's state, each run synchronously by its actor.

use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::FutureExt;

use super::*;
use crate::error::ChatError;
use crate::json;
use crate::model::{Branch, BranchId, FeedbackRow, GenerationId, Message, MessageId, Role};
use crate::pages::{self, PageKey};
use crate::ports::Turn;
use crate::views::{
    BranchDeletedView, BranchView, ChatView, EditView, MessagePage, MessageView, RegenerateView,
    SendView, SharedChat, TreeNodeView, TreeView,
};
use crate::writer::{ChatWrite, CommitTicket, Slot, WriteOp};

/// The state and the operations; separate from the actor so handlers borrow it whole.
pub struct ChatCore {
    pub(crate) state: ChatState,
    pub(crate) rt: Arc<ChatRuntime>,
    /// From `next_generation` at start and on every reload; the writer refuses queued writes of
    /// a failed generation.
    pub(crate) generation: u64,
    /// This actor's own handle: the writer reports its failed writes to the address and counts
    /// its pending ones in the probe, which the operator surface reads. The probe also keeps
    /// whether the chat was deleted and whether the actor flushed before stopping: a chat
    /// dropped without that flush (its arbiter stopped under it) makes the chat's next
    /// activation wait for the writer before loading.
    pub(crate) handle: ChatHandle,
}

/// A slot in the writer's queue. A full queue is an overload, unless the queue is full because a
/// store is down: then the write is refused as the outage it is.
fn reserve(rt: &ChatRuntime) -> Result<Slot, ChatError> {
    rt.writer
        .reserve()
        .ok_or_else(|| match rt.writer.is_stalled() {
            true => ChatError::StorageUnavailable,
            false => ChatError::Overloaded,
        })
}

impl ChatCore {
    pub(super) fn write(&self, slot: Slot, ops: Vec<WriteOp>) -> CommitTicket {
        slot.send(ChatWrite {
            chat: self.state.tree.chat(),
            generation: self.generation,
            // Cluster mode: the lease the actor serves under, kept in its probe.
            fence: self.handle.probe().fence(),
            ops,
            owner: Some(self.handle.write_owner()),
        })
    }

    /// Bumps the chat version and returns the chat row to write with a change.
    pub(super) fn touch_meta(&mut self) -> WriteOp {
        let row = &mut self.state.row;
        row.version += 1;
        row.updated_at = crate::model::now();
        let tree = &self.state.tree;
        WriteOp::UpsertChat(row.meta(tree.chat(), tree.active()))
    }

    pub(super) fn branch_row(&self, id: BranchId) -> Result<WriteOp, ChatError> {
        let branch = self.state.tree.branch_row(id)?;
        Ok(WriteOp::UpsertBranch(branch, self.state.row.version))
    }

    pub(super) fn resolve_branch(&self, branch: Option<BranchId>) -> Result<BranchId, ChatError> {
        let id = branch.unwrap_or_else(|| self.state.tree.active());
        self.state.tree.branch(id)?;
        Ok(id)
    }

    pub(super) fn message_view(&self, id: MessageId) -> Result<MessageView, ChatError> {
        let tree = &self.state.tree;
        Ok(MessageView::of(tree, tree.node(id)?))
    }

    pub(super) fn branch_view(&self, id: BranchId) -> Result<BranchView, ChatError> {
        let tree = &self.state.tree;
        Ok(BranchView::of(tree, tree.branch(id)?))
    }

    pub(super) fn chat_view(&self) -> ChatView {
        ChatView::of(&self.state.row, &self.state.tree)
    }

    pub(super) fn new_message(
        &self,
        parent: Option<MessageId>,
        role: Role,
        content: Arc<str>,
        model: Option<Arc<str>>,
        key: Option<Arc<str>>,
    ) -> Message {
        let (id, created_at) = MessageId::new_with_time();
        Message {
            id,
            chat_id: self.state.tree.chat(),
            parent_id: parent,
            role,
            content,
            created_at,
            model,
            metadata: None,
            idempotency_key: key,
        }
    }

    pub(super) fn new_branch(&self, name: Option<String>, prefix: &str) -> Branch {
        let now = crate::model::now();
        Branch {
            id: BranchId::new(),
            chat_id: self.state.tree.chat(),
            name: name
                .unwrap_or_else(|| format!("{prefix}-{}", self.state.tree.branches().len() + 1)),
            head: None,
            forked_from: None,
            created_at: now,
            updated_at: now,
            fallback: None,
        }
    }

    /// The context for a reply: the system prompt, then the branch path up to `head`.
    /// Starts a reply to `reply_to` on `branch`: takes the branch's generation lock and builds
    /// the context (system prompt + the newest messages of the path, within budget).
    pub(super) fn begin_generation(
        &self,
        branch: BranchId,
        reply_to: MessageId,
        spec: &ReplySpec,
        idempotency_key: Option<Arc<str>>,
    ) -> Result<GenerationJob, ChatError> {
        let row = &self.state.row;
        let prompt = row.system_prompt();
        let budget = spec
            .context_chars
            .saturating_sub(prompt.map_or(0, |p| p.chars().count()));
        let path = self.state.tree.recent_path(reply_to, budget)?;
        let mut turns = Vec::with_capacity(path.len() + 1);
        if let Some(prompt) = prompt {
            turns.push(Turn {
                role: Role::System,
                content: Arc::from(prompt),
            });
        }
        turns.extend(path.into_iter().map(|m| Turn {
            role: m.role(),
            content: Arc::from(self.state.tree.content(m)),
        }));
        let generation = self.rt.generations.begin(
            self.state.tree.chat(),
            row.owner,
            branch,
            reply_to,
            spec.model.clone(),
        )?;
        Ok(GenerationJob {
            generation,
            reply_to: self.message_view(reply_to)?,
            turns,
            idempotency_key,
            home: Arbiter::try_current(),
        })
    }

    pub(super) fn busy(&self, branch: BranchId) -> bool {
        self.rt.generations.busy(self.state.tree.chat(), branch)
    }

    pub(super) fn get_chat(&mut self, _: GetChat) -> Result<ChatView, ChatError> {
        Ok(self.chat_view())
    }

    pub(super) fn update_chat(&mut self, msg: UpdateChat) -> Result<Applied<ChatView>, ChatError> {
        let slot = reserve(&self.rt)?;
        let ChatPatch {
            title,
            system_prompt,
            description,
        } = msg.patch;
        let row = &mut self.state.row;
        if let Some(title) = title {
            row.set_title(title);
        }
        if let Some(prompt) = system_prompt {
            row.set_system_prompt(prompt);
        }
        if let Some(description) = description {
            row.set_description(description);
        }
        let row = self.touch_meta();
        let commit = self.write(slot, vec![row]);
        Ok(Applied::new(self.chat_view(), commit))
    }

    pub(super) fn delete_chat(&mut self, _: DeleteChat) -> Result<Applied<()>, ChatError> {
        let slot = reserve(&self.rt)?;
        self.handle.probe().mark_deleted();
        let commit = self.write(slot, vec![WriteOp::DeleteChat(self.state.tree.chat())]);
        Ok(Applied::new((), commit))
    }

    pub(super) fn add_messages(
        &mut self,
        msg: AddMessages,
    ) -> Result<Applied<SendOutcome>, ChatError> {
        let branch = self.resolve_branch(msg.branch)?;
        if let Some(key) = &msg.idempotency_key {
            if let Some(entry) = self.state.idem.get(key) {
                return self.replay(entry.clone(), &msg.content);
            }
        }
        if self.busy(branch) {
            return Err(ChatError::GenerationInProgress);
        }
        let slot = reserve(&self.rt)?;
        let key = msg.idempotency_key.clone();
        let head = self.state.tree.head(branch)?;
        let mut first = self.new_message(head, msg.role, msg.content.clone(), None, key.clone());
        first.metadata = msg.metadata.clone();
        let first_id = first.id;
        let mut ops = vec![WriteOp::InsertMessage(first.clone())];
        self.state.tree.append(branch, first)?;
        let mut ids = vec![first_id];
        if let Some(response) = msg.response {
            let answer = self.new_message(
                Some(first_id),
                Role::Assistant,
                response,
                msg.model.clone(),
                key.clone(),
            );
            ids.push(answer.id);
            ops.push(WriteOp::InsertMessage(answer.clone()));
            self.state.tree.append(branch, answer)?;
        }
        let generation = msg
            .reply
            .as_ref()
            .map(|spec| self.begin_generation(branch, first_id, spec, key.clone()))
            .transpose()?;
        ops.push(self.touch_meta());
        ops.push(self.branch_row(branch)?);
        let commit = self.write(slot, ops);
        if let Some(key) = key {
            self.state.idem.insert(
                key,
                IdemEntry {
                    content: msg.content,
                    messages: ids.clone(),
                    commit: commit.clone(),
                    awaiting_reply: generation.is_some(),
                },
                self.rt.idempotency_keys,
            );
        }
        let messages = ids
            .iter()
            .map(|id| self.message_view(*id))
            .collect::<Result<_, _>>()?;
        let view = SendView {
            chat_id: self.state.tree.chat(),
            branch_id: branch,
            messages,
            generation_id: generation.as_ref().map(|g| g.generation.id),
        };
        Ok(Applied::new(SendOutcome { view, generation }, commit))
    }

    /// Answers a retried send with what the original created, adding nothing.
    pub(super) fn replay(
        &self,
        entry: IdemEntry,
        content: &str,
    ) -> Result<Applied<SendOutcome>, ChatError> {
        if &*entry.content != content {
            return Err(ChatError::IdempotencyMismatch);
        }
        if entry.awaiting_reply {
            return Err(ChatError::GenerationInProgress);
        }
        let messages = entry
            .messages
            .iter()
            .filter_map(|id| self.message_view(*id).ok())
            .collect();
        let tree = &self.state.tree;
        let branch_id = entry
            .messages
            .first()
            .and_then(|id| tree.first_branch_through(*id))
            .ok_or(ChatError::Internal(
                "idempotent send lost its branch".into(),
            ))?;
        let view = SendView {
            chat_id: self.state.tree.chat(),
            branch_id,
            messages,
            generation_id: None,
        };
        Ok(Applied::new(
            SendOutcome {
                view,
                generation: None,
            },
            entry.commit,
        ))
    }

    pub(super) fn complete_generation(
        &mut self,
        msg: CompleteGeneration,
    ) -> Result<Applied<MessageView>, ChatError> {
        self.release_generation(msg.generation, msg.branch, msg.idempotency_key.as_ref());
        // The chat may have been deleted, or the branch moved, while the reply was generated:
        // then the reply has nowhere to live.
        let head = self.state.tree.head(msg.branch)?;
        if head != Some(msg.parent) {
            if let Some(stored) = head.and_then(|head| self.stored_reply(head, &msg)) {
                // Stored already, by a drive task dropped with its thread before it heard back
                // (`Chats::drive` hands the rest over and sends this again). Answer once that
                // write has committed.
                let barrier = self.rt.writer.barrier();
                return Ok(Applied::new(stored, barrier.map(Ok).boxed().shared()));
            }
            return Err(ChatError::Internal("branch moved during generation".into()));
        }
        let slot = reserve(&self.rt)?;
        let mut reply = self.new_message(
            Some(msg.parent),
            Role::Assistant,
            msg.content,
            Some(msg.model),
            msg.idempotency_key.clone(),
        );
        reply.metadata = Some(msg.metadata);
        let id = reply.id;
        let mut ops = vec![WriteOp::InsertMessage(reply.clone())];
        self.state.tree.append(msg.branch, reply)?;
        ops.push(self.touch_meta());
        ops.push(self.branch_row(msg.branch)?);
        ops.extend(msg.usage.map(|usage| WriteOp::Usage(*usage)));
        let commit = self.write(slot, ops);
        if let Some(entry) = msg
            .idempotency_key
            .as_ref()
            .and_then(|k| self.state.idem.get_mut(k))
        {
            entry.messages.push(id);
            entry.commit = commit.clone();
        }
        Ok(Applied::new(self.message_view(id)?, commit))
    }

    /// The message at `head`, if it is the reply `msg` would store: the same generation's
    /// answer to the same message (a stored reply's metadata names its generation, as
    /// `Chats::drive` records it and clients read it).
    pub(super) fn stored_reply(
        &self,
        head: MessageId,
        msg: &CompleteGeneration,
    ) -> Option<MessageView> {
        let view = self.message_view(head).ok()?;
        let generation = serde_json::to_value(msg.generation).ok()?;
        let same = view.role == Role::Assistant
            && view.parent_id == Some(msg.parent)
            && view.metadata.as_ref()?.get("generation_id") == Some(&generation);
        same.then_some(view)
    }

    /// Ends a branch's generation: the branch takes sends again, and a retried idempotent send
    /// is answered instead of told to wait.
    pub(super) fn release_generation(
        &mut self,
        generation: GenerationId,
        branch: BranchId,
        key: Option<&Arc<str>>,
    ) {
        self.rt
            .generations
            .release(generation, self.state.tree.chat(), branch);
        if let Some(entry) = key.and_then(|k| self.state.idem.get_mut(k)) {
            entry.awaiting_reply = false;
        }
    }

    pub(super) fn abort_generation(&mut self, msg: AbortGeneration) -> Result<(), ChatError> {
        self.release_generation(msg.generation, msg.branch, msg.idempotency_key.as_ref());
        Ok(())
    }

    /// A new reply to a message (or to the message an assistant reply answered), on a new branch
    /// from that message, made active; existing replies stay where they are.
    pub(super) fn regenerate(
        &mut self,
        msg: Regenerate,
    ) -> Result<Applied<RegenerateOutcome>, ChatError> {
        let tree = &self.state.tree;
        let target = tree.node(msg.message)?;
        let reply_to = match target.role() {
            Role::User => target.id(),
            Role::Assistant => tree.parent_id(target).ok_or(ChatError::Invalid(
                "this assistant message answers nothing".into(),
            ))?,
            Role::System => {
                return Err(ChatError::Invalid(
                    "a system message cannot be regenerated".into(),
                ))
            }
        };
        if tree.node(reply_to)?.role() != Role::User {
            return Err(ChatError::Invalid(
                "only replies to user messages can be regenerated".into(),
            ));
        }
        let slot = reserve(&self.rt)?;
        let mut branch = self.new_branch(msg.name, "regenerate");
        branch.head = Some(reply_to);
        branch.forked_from = Some(reply_to);
        let id = branch.id;
        self.state.tree.add_branch(branch)?;
        self.state.tree.set_active(id)?;
        let job = self.begin_generation(id, reply_to, &msg.reply, None)?;
        let ops = vec![self.touch_meta(), self.branch_row(id)?];
        let commit = self.write(slot, ops);
        let view = RegenerateView {
            branch: self.branch_view(id)?,
            reply: None,
            generation_id: job.generation.id,
        };
        Ok(Applied::new(RegenerateOutcome { view, job }, commit))
    }

    pub(super) fn list_messages(&mut self, msg: ListMessages) -> Result<MessagePage, ChatError> {
        let branch = self.resolve_branch(msg.branch)?;
        let tree = &self.state.tree;
        let page = tree.page(branch, msg.limit, msg.before)?;
        Ok(MessagePage::of(tree, branch, &page))
    }

    /// The page written before for this state of the tree (`pages`), or written now.
    pub(super) fn list_messages_json(&mut self, msg: ListMessagesJson) -> Result<Bytes, ChatError> {
        let branch = self.resolve_branch(msg.branch)?;
        let tree = &self.state.tree;
        let key = PageKey {
            revision: tree.revision(),
            branch,
            limit: msg.limit,
            before: msg.before,
        };
        if let Some(json) = pages::get(&key) {
            return Ok(json);
        }
        let page = tree.page(branch, msg.limit, msg.before)?;
        let json =
            json::page(tree, branch, &page).map_err(|e| ChatError::Internal(e.to_string()))?;
        let json = Bytes::from(json);
        pages::put(key, &json, self.rt.page_cache_bytes);
        Ok(json)
    }

    pub(super) fn get_message(&mut self, msg: GetMessage) -> Result<MessageView, ChatError> {
        self.message_view(msg.id)
    }

    pub(super) fn set_feedback(
        &mut self,
        msg: SetFeedback,
    ) -> Result<Applied<MessageView>, ChatError> {
        let tree = &self.state.tree;
        let node = tree.node(msg.message)?;
        if node.role() != Role::Assistant {
            return Err(ChatError::NotRateable(msg.message));
        }
        let model = tree.model(node).cloned();
        let slot = reserve(&self.rt)?;
        let feedback = msg.feedback.map(Arc::new);
        self.state
            .tree
            .set_feedback(msg.message, feedback.clone())?;
        let row = FeedbackRow {
            message: msg.message,
            chat: self.state.tree.chat(),
            user: msg.user,
            model,
            feedback,
        };
        let commit = self.write(slot, vec![WriteOp::Feedback(row)]);
        Ok(Applied::new(self.message_view(msg.message)?, commit))
    }

    pub(super) fn export(&mut self, _: Export) -> Result<crate::portable::ChatExport, ChatError> {
        Ok(super::exported(&self.state))
    }

    pub(super) fn locate(&mut self, msg: Locate) -> Result<crate::views::Location, ChatError> {
        Ok(crate::views::Location::of(
            &self.state.tree,
            msg.message,
            msg.window,
        )?)
    }

    pub(super) fn snapshot(&mut self, msg: Snapshot) -> Result<SharedChat, ChatError> {
        let branch = self.resolve_branch(msg.branch)?;
        let title = self.state.row.title().map(str::to_owned);
        Ok(SharedChat::of(title, &self.state.tree, branch, msg.scope)?)
    }

    pub(super) fn get_tree(&mut self, _: GetTree) -> Result<TreeView, ChatError> {
        let tree = &self.state.tree;
        let nodes: Vec<TreeNodeView> = tree
            .nodes()
            .map(|n| TreeNodeView {
                message: MessageView::of(tree, n),
                children: tree.children(n).iter().map(|c| c.id()).collect(),
            })
            .collect();
        let root_ids = tree
            .nodes()
            .filter(|n| n.is_root())
            .map(|n| n.id())
            .collect();
        Ok(TreeView {
            chat_id: self.state.tree.chat(),
            active_branch_id: tree.active(),
            root_ids,
            nodes,
            branches: tree
                .branches()
                .iter()
                .map(|b| BranchView::of(tree, b))
                .collect(),
        })
    }

    pub(super) fn fork(&mut self, msg: Fork) -> Result<Applied<BranchView>, ChatError> {
        let head = match msg.from {
            ForkPoint::Message(id) => {
                self.state.tree.node(id)?;
                Some(id)
            }
            ForkPoint::Index { branch, index } => {
                let branch = self.resolve_branch(branch)?;
                Some(self.state.tree.at_index(branch, index)?)
            }
            ForkPoint::Start => None,
        };
        let slot = reserve(&self.rt)?;
        let mut branch = self.new_branch(msg.name, "branch");
        branch.head = head;
        branch.forked_from = head;
        let id = branch.id;
        self.state.tree.add_branch(branch)?;
        if msg.activate {
            self.state.tree.set_active(id)?;
        }
        let ops = vec![self.touch_meta(), self.branch_row(id)?];
        let commit = self.write(slot, ops);
        Ok(Applied::new(self.branch_view(id)?, commit))
    }

    pub(super) fn edit(&mut self, msg: Edit) -> Result<Applied<EditOutcome>, ChatError> {
        let tree = &self.state.tree;
        let target = tree.message(tree.node(msg.message)?);
        if msg.reply.is_some() && target.role != Role::User {
            return Err(ChatError::Invalid(
                "only a user message can be edited with `reply: true`".into(),
            ));
        }
        let slot = reserve(&self.rt)?;
        let replacement = self.new_message(
            target.parent_id,
            target.role,
            msg.content,
            target.model.clone(),
            None,
        );
        let replacement_id = replacement.id;
        let branch = self.new_branch(msg.name, "edit");
        let branch_id = branch.id;
        let mut ops = vec![WriteOp::InsertMessage(replacement.clone())];
        self.state.tree.edit(target.id, replacement, branch)?;
        if msg.activate {
            self.state.tree.set_active(branch_id)?;
        }
        let generation = msg
            .reply
            .as_ref()
            .map(|spec| self.begin_generation(branch_id, replacement_id, spec, None))
            .transpose()?;
        ops.push(self.touch_meta());
        ops.push(self.branch_row(branch_id)?);
        let commit = self.write(slot, ops);
        let view = EditView {
            message: self.message_view(replacement_id)?,
            branch: self.branch_view(branch_id)?,
            reply: None,
            generation_id: generation.as_ref().map(|g| g.generation.id),
        };
        Ok(Applied::new(EditOutcome { view, generation }, commit))
    }

    pub(super) fn list_branches(&mut self, _: ListBranches) -> Result<Vec<BranchView>, ChatError> {
        let tree = &self.state.tree;
        Ok(tree
            .branches()
            .iter()
            .map(|b| BranchView::of(tree, b))
            .collect())
    }

    pub(super) fn get_branch(&mut self, msg: GetBranch) -> Result<BranchView, ChatError> {
        self.branch_view(msg.id)
    }

    pub(super) fn rename_branch(
        &mut self,
        msg: RenameBranch,
    ) -> Result<Applied<BranchView>, ChatError> {
        self.state.tree.branch(msg.id)?;
        let slot = reserve(&self.rt)?;
        self.state
            .tree
            .rename_branch(msg.id, msg.name, crate::model::now())?;
        let ops = vec![self.touch_meta(), self.branch_row(msg.id)?];
        let commit = self.write(slot, ops);
        Ok(Applied::new(self.branch_view(msg.id)?, commit))
    }

    pub(super) fn delete_branch(
        &mut self,
        msg: DeleteBranch,
    ) -> Result<Applied<BranchDeletedView>, ChatError> {
        self.state.tree.branch(msg.id)?;
        if self.busy(msg.id) {
            return Err(ChatError::GenerationInProgress);
        }
        let slot = reserve(&self.rt)?;
        let rated: Vec<MessageId> = self
            .state
            .tree
            .all_feedback()
            .iter()
            .map(|(m, _)| *m)
            .collect();
        let removed = self.state.tree.delete_branch(msg.id)?;
        let count = removed.len();
        if !removed.is_empty() {
            // As a reload would: keys of sends whose messages are gone are forgotten.
            let tree = &self.state.tree;
            self.state
                .idem
                .retain(|_, e| e.messages.iter().all(|m| tree.node(*m).is_ok()));
        }
        let mut ops = vec![self.touch_meta(), WriteOp::DeleteBranch(msg.id)];
        // Feedback on pruned messages goes with them.
        let tree = &self.state.tree;
        ops.extend(
            rated
                .into_iter()
                .filter(|m| tree.node(*m).is_err())
                .map(|message| {
                    WriteOp::Feedback(FeedbackRow {
                        message,
                        chat: tree.chat(),
                        user: msg.user,
                        model: None,
                        feedback: None,
                    })
                }),
        );
        if !removed.is_empty() {
            ops.push(WriteOp::DeleteMessages(removed));
        }
        let commit = self.write(slot, ops);
        let view = BranchDeletedView {
            deleted_branch_id: msg.id,
            deleted_message_count: count,
            active_branch_id: self.state.tree.active(),
        };
        Ok(Applied::new(view, commit))
    }

    pub(super) fn set_active(&mut self, msg: SetActive) -> Result<Applied<ChatView>, ChatError> {
        self.state.tree.branch(msg.id)?;
        let slot = reserve(&self.rt)?;
        self.state.tree.set_active(msg.id)?;
        let row = self.touch_meta();
        let commit = self.write(slot, vec![row]);
        Ok(Applied::new(self.chat_view(), commit))
    }

    #[cfg(feature = "fault-injection")]
    pub(super) fn inject_panic(&mut self, _: InjectPanic) -> Result<(), ChatError> {
        // Half-apply a change first, as a real bug would, to show the restart discards it.
        self.state
            .row
            .set_title(Some("corrupted by a panic".into()));
        panic!("injected fault");
    }
}
