//! The chat actor: the single writer of one chat's tree and active-branch pointer.
//!
//! Every handler runs synchronously against in-memory state: validate, reserve a write-behind
//! slot, mutate, hand the rows to the writer, reply with the view and a [`CommitTicket`]. Waiting
//! for the commit happens *outside* the actor (in [`crate::Chats`]), so an actor never blocks on
//! I/O and a slow store never stalls reads.
//!
//! Supervision: a panic inside a handler is caught, that request fails with `Internal`, and the
//! actor restarts itself from stored state (after the writer has flushed what it had queued)
//! while its mailbox waits. actix's `Supervisor` is not used because it restarts an actor
//! whenever any address to it is alive, which would undo deliberate eviction.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::FutureExt;

use crate::error::ChatError;
use crate::generation::{Generation, Generations};
use crate::json;
use crate::model::{
    Branch, BranchId, ChatId, ChatMeta, ChatRow, GenerationId, Message, MessageId, Role, UserId,
};
use crate::pages::{self, PageKey};
use crate::ports::{MessageStore, MetadataStore, Turn};
use crate::registry::{Birth, ChatHandle, Liveness};
use crate::tree::Tree;
use crate::views::{
    BranchDeletedView, BranchView, ChatView, EditView, MessagePage, MessageView, RegenerateView,
    SendView, TreeNodeView, TreeView,
};
use crate::writer::{committed, ChatWrite, CommitTicket, Slot, WriteFailed, WriteOp, WriterHandle};

/// What every chat actor shares: the writer, the stores and the generation table.
pub struct ChatRuntime {
    pub writer: WriterHandle,
    pub metadata: Arc<dyn MetadataStore>,
    pub messages: Arc<dyn MessageStore>,
    pub generations: Arc<Generations>,
    /// The actors alive, kept by the registry; each leaves it when dropped.
    pub(crate) live: Arc<Liveness>,
    /// Bytes of written pages each thread keeps (`pages`); set by the registry.
    pub(crate) page_cache_bytes: usize,
}

impl ChatRuntime {
    pub fn new(
        writer: WriterHandle,
        metadata: Arc<dyn MetadataStore>,
        messages: Arc<dyn MessageStore>,
        generations: Arc<Generations>,
    ) -> Self {
        Self {
            writer,
            metadata,
            messages,
            generations,
            live: Arc::default(),
            page_cache_bytes: 0,
        }
    }
}

/// A change applied in memory, with the ticket for its commit.
pub struct Applied<T> {
    pub value: T,
    pub commit: CommitTicket,
}

impl<T> Applied<T> {
    fn new(value: T, commit: CommitTicket) -> Self {
        Self { value, commit }
    }
}

/// How to start a reply: the model it is for and its context budget.
#[derive(Debug, Clone)]
pub struct ReplySpec {
    /// `provider/model`, recorded on the generation.
    pub model: Arc<str>,
    /// Characters of conversation to send (the newest messages; the system prompt always).
    pub context_chars: usize,
}

/// A started reply: its generation (which holds the branch's lock) and its context.
#[derive(Clone)]
pub struct GenerationJob {
    pub generation: Arc<Generation>,
    /// The message being answered, as clients see it.
    pub reply_to: MessageView,
    pub turns: Vec<Turn>,
    pub idempotency_key: Option<Arc<str>>,
    /// The thread of the actor that started it: storing the reply there is a call on one
    /// thread (see `Chats::drive`).
    pub home: Option<ArbiterHandle>,
}

/// A recorded idempotent send.
#[derive(Clone)]
struct IdemEntry {
    content: Arc<str>,
    messages: Vec<MessageId>,
    commit: CommitTicket,
    /// A reply for this send is still being generated.
    awaiting_reply: bool,
}

/// A chat's in-memory state.
pub struct ChatState {
    pub row: ChatRow,
    pub tree: Tree,
    idem: IdemMap,
}

/// Recorded idempotent sends by key. Boxed only once one exists: most chats never have any, and
/// an empty map inline would cost every resident chat 40 bytes.
#[derive(Default)]
#[allow(clippy::box_collection)] // The point: 8 bytes inline, not the map's 48.
struct IdemMap(Option<Box<HashMap<Arc<str>, IdemEntry>>>);

impl IdemMap {
    fn get(&self, key: &str) -> Option<&IdemEntry> {
        self.0.as_ref()?.get(key)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut IdemEntry> {
        self.0.as_mut()?.get_mut(key)
    }

    fn insert(&mut self, key: Arc<str>, entry: IdemEntry) {
        self.0.get_or_insert_default().insert(key, entry);
    }

    fn retain(&mut self, keep: impl FnMut(&Arc<str>, &mut IdemEntry) -> bool) {
        if let Some(map) = &mut self.0 {
            map.retain(keep);
            if map.is_empty() {
                self.0 = None;
            }
        }
    }
}

impl ChatState {
    /// A new chat with an empty `main` branch, and the rows that create it.
    pub fn create(id: ChatId, owner: UserId, new: NewChat) -> (Self, Vec<WriteOp>) {
        let now = crate::model::now();
        let main = Branch {
            id: BranchId::new(),
            chat_id: id,
            name: "main".into(),
            head: None,
            forked_from: None,
            created_at: now,
            updated_at: now,
            fallback: None,
        };
        let meta = ChatMeta {
            id,
            owner,
            title: new.title,
            system_prompt: new.system_prompt,
            description: new.description,
            active_branch: main.id,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let ops = vec![
            WriteOp::UpsertChat(meta.clone()),
            WriteOp::UpsertBranch(main.clone(), 1),
        ];
        let state = Self {
            row: ChatRow::new(meta),
            tree: Tree::new(main),
            idem: IdemMap::default(),
        };
        (state, ops)
    }

    /// Rebuilds a chat from its stored rows.
    pub fn restore(
        meta: ChatMeta,
        branches: Vec<Branch>,
        messages: Vec<Message>,
    ) -> Result<Self, ChatError> {
        let restored = Tree::restore(branches, meta.active_branch, messages).map_err(|e| {
            ChatError::Internal(format!("chat {} cannot be restored: {e}", meta.id))
        })?;
        if !restored.pruned.is_empty() || !restored.reset_branches.is_empty() {
            tracing::warn!(
                chat = %meta.id,
                pruned = restored.pruned.len(),
                reset_branches = restored.reset_branches.len(),
                "repaired a chat's tree on activation"
            );
        }
        let tree = restored.tree;
        let mut idem: HashMap<Arc<str>, IdemEntry> = HashMap::new();
        // In id order, so each send's messages are listed in the order they were added.
        for m in tree.nodes() {
            let Some(key) = tree.idempotency_key(m).cloned() else {
                continue;
            };
            idem.entry(key)
                .and_modify(|e| e.messages.push(m.id()))
                .or_insert_with(|| IdemEntry {
                    content: Arc::from(tree.content(m)),
                    messages: vec![m.id()],
                    commit: committed(),
                    awaiting_reply: false,
                });
        }
        let idem = IdemMap((!idem.is_empty()).then(|| Box::new(idem)));
        let row = ChatRow::new(meta);
        Ok(Self { row, tree, idem })
    }
}

/// Loads a chat from the stores: one metadata query and one message query, run together.
///
/// Messages and the metadata that points at them commit together, so a message read that started
/// before a metadata read could miss the messages of a head that read sees. No write of a chat is
/// in flight when it activates (eviction flushes first), but should one be, a head missing from
/// the messages read gets the messages read once more (now after the metadata read) before
/// restore treats it as a crash remnant (and moves it back to its fallback).
pub async fn load_chat(rt: &ChatRuntime, id: ChatId) -> Result<Option<ChatState>, ChatError> {
    let (meta, messages) =
        futures_util::future::join(rt.metadata.load_chat(id), rt.messages.load_chat(id)).await;
    let Some((meta, branches)) = meta.map_err(storage_error)? else {
        return Ok(None);
    };
    let mut messages = messages.map_err(storage_error)?;
    let heads: Vec<MessageId> = branches.iter().filter_map(|b| b.head).collect();
    if !heads.is_empty() {
        let ids: std::collections::HashSet<MessageId> = messages.iter().map(|m| m.id).collect();
        if heads.iter().any(|h| !ids.contains(h)) {
            messages = rt.messages.load_chat(id).await.map_err(storage_error)?;
        }
    }
    ChatState::restore(meta, branches, messages).map(Some)
}

fn storage_error(e: crate::ports::StoreError) -> ChatError {
    tracing::error!(error = %e, "store read failed");
    ChatError::StorageUnavailable
}

/// Write generations come from one process-wide counter, so a chat's new actor (after a failed
/// reload stopped the old one) starts above every fence the writer holds for that chat.
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

///
/// A resident chat is mostly this actor, inline in its task with actix's context: tokio rounds a
/// task up to 128 bytes, and at most 200 bytes of actor keep it at 640 (see the test below).
pub struct ChatActor {
    core: ChatCore,
}

/// Leaves the registry's live set once gone (after the final flush), releasing activations of
/// this chat that wait for it.
impl Drop for ChatActor {
    fn drop(&mut self) {
        let core = &self.core;
        core.rt.live.gone(
            core.state.tree.chat(),
            core.handle.instance(),
            core.handle.probe().is_flushed(),
        );
    }
}

impl ChatActor {
    /// An actor that owns `handle`: a strong address to itself, so it never stops on its own
    /// for want of addresses; it stops when told (eviction, deletion, a failed reload), and
    /// dropping it breaks the cycle.
    pub(crate) fn new(
        state: ChatState,
        rt: Arc<ChatRuntime>,
        birth: Birth,
        handle: ChatHandle,
    ) -> Self {
        birth.claim();
        Self {
            core: ChatCore {
                state,
                rt,
                generation: next_generation(),
                handle,
            },
        }
    }

    /// Runs one operation for `user`: ownership check, panic isolation, restart on panic.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        user: UserId,
        op: impl FnOnce(&mut ChatCore) -> Result<R, ChatError>,
    ) -> Result<R, ChatError> {
        if self.core.handle.probe().is_deleted() || self.core.state.row.owner != user {
            return Err(ChatError::ChatNotFound);
        }
        match panic::catch_unwind(AssertUnwindSafe(|| op(&mut self.core))) {
            Ok(result) => {
                self.core.handle.probe().observe(&self.core.state.tree);
                result
            }
            Err(_) => {
                tracing::error!(chat = %self.core.state.tree.chat(), "chat actor panicked; restarting it from stored state");
                self.core.generation = next_generation();
                self.reload(ctx);
                Err(ChatError::Internal("chat actor panicked".into()))
            }
        }
    }

    /// Replaces the in-memory state with the stored one, once everything queued is flushed.
    /// The mailbox waits meanwhile.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        let rt = self.core.rt.clone();
        let id = self.core.state.tree.chat();
        let fut = async move {
            rt.writer.barrier().await;
            load_chat(&rt, id).await
        };
        ctx.wait(fut.into_actor(self).map(|loaded, act, ctx| match loaded {
            Ok(Some(state)) => {
                act.core.state = state;
                act.core.handle.probe().observe(&act.core.state.tree);
            }
            Ok(None) => {
                act.core.handle.probe().mark_deleted();
                act.core.handle.probe().mark_flushed();
                ctx.stop();
            }
            Err(error) => {
                tracing::error!(chat = %act.core.state.tree.chat(), %error, "chat reload failed; stopping the actor");
                act.core.handle.probe().mark_flushed();
                ctx.stop();
            }
        }));
    }
}

impl Actor for ChatActor {
    type Context = Context<Self>;
}

/// The state and the operations; separate from the actor so handlers borrow it whole.
pub struct ChatCore {
    state: ChatState,
    rt: Arc<ChatRuntime>,
    /// From `next_generation` at start and on every reload; the writer refuses queued writes of
    /// a failed generation.
    generation: u64,
    /// This actor's own handle: the writer reports its failed writes to the address and counts
    /// its pending ones in the probe, which the operator surface reads. The probe also keeps
    /// whether the chat was deleted and whether the actor flushed before stopping: a chat
    /// dropped without that flush (its arbiter stopped under it) makes the chat's next
    /// activation wait for the writer before loading.
    handle: ChatHandle,
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
    fn write(&self, slot: Slot, ops: Vec<WriteOp>) -> CommitTicket {
        slot.send(ChatWrite {
            chat: self.state.tree.chat(),
            generation: self.generation,
            ops,
            owner: Some(self.handle.clone()),
        })
    }

    /// Bumps the chat version and returns the chat row to write with a change.
    fn touch_meta(&mut self) -> WriteOp {
        let row = &mut self.state.row;
        row.version += 1;
        row.updated_at = crate::model::now();
        let tree = &self.state.tree;
        WriteOp::UpsertChat(row.meta(tree.chat(), tree.active()))
    }

    fn branch_row(&self, id: BranchId) -> Result<WriteOp, ChatError> {
        let branch = self.state.tree.branch_row(id)?;
        Ok(WriteOp::UpsertBranch(branch, self.state.row.version))
    }

    fn resolve_branch(&self, branch: Option<BranchId>) -> Result<BranchId, ChatError> {
        let id = branch.unwrap_or_else(|| self.state.tree.active());
        self.state.tree.branch(id)?;
        Ok(id)
    }

    fn message_view(&self, id: MessageId) -> Result<MessageView, ChatError> {
        let tree = &self.state.tree;
        Ok(MessageView::of(tree, tree.node(id)?))
    }

    fn branch_view(&self, id: BranchId) -> Result<BranchView, ChatError> {
        let tree = &self.state.tree;
        Ok(BranchView::of(tree, tree.branch(id)?))
    }

    fn chat_view(&self) -> ChatView {
        ChatView::of(&self.state.row, &self.state.tree)
    }

    fn new_message(
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

    fn new_branch(&self, name: Option<String>, prefix: &str) -> Branch {
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
    fn begin_generation(
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

    fn busy(&self, branch: BranchId) -> bool {
        self.rt.generations.busy(self.state.tree.chat(), branch)
    }

    fn get_chat(&mut self, _: GetChat) -> Result<ChatView, ChatError> {
        Ok(self.chat_view())
    }

    fn update_chat(&mut self, msg: UpdateChat) -> Result<Applied<ChatView>, ChatError> {
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

    fn delete_chat(&mut self, _: DeleteChat) -> Result<Applied<()>, ChatError> {
        let slot = reserve(&self.rt)?;
        self.handle.probe().mark_deleted();
        let commit = self.write(slot, vec![WriteOp::DeleteChat(self.state.tree.chat())]);
        Ok(Applied::new((), commit))
    }

    fn add_messages(&mut self, msg: AddMessages) -> Result<Applied<SendOutcome>, ChatError> {
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
    fn replay(&self, entry: IdemEntry, content: &str) -> Result<Applied<SendOutcome>, ChatError> {
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

    fn complete_generation(
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
    fn stored_reply(&self, head: MessageId, msg: &CompleteGeneration) -> Option<MessageView> {
        let view = self.message_view(head).ok()?;
        let generation = serde_json::to_value(msg.generation).ok()?;
        let same = view.role == Role::Assistant
            && view.parent_id == Some(msg.parent)
            && view.metadata.as_ref()?.get("generation_id") == Some(&generation);
        same.then_some(view)
    }

    /// Ends a branch's generation: the branch takes sends again, and a retried idempotent send
    /// is answered instead of told to wait.
    fn release_generation(
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

    fn abort_generation(&mut self, msg: AbortGeneration) -> Result<(), ChatError> {
        self.release_generation(msg.generation, msg.branch, msg.idempotency_key.as_ref());
        Ok(())
    }

    /// A new reply to a message (or to the message an assistant reply answered), on a new branch
    /// from that message, made active; existing replies stay where they are.
    fn regenerate(&mut self, msg: Regenerate) -> Result<Applied<RegenerateOutcome>, ChatError> {
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

    fn list_messages(&mut self, msg: ListMessages) -> Result<MessagePage, ChatError> {
        let branch = self.resolve_branch(msg.branch)?;
        let tree = &self.state.tree;
        let page = tree.page(branch, msg.limit, msg.before)?;
        Ok(MessagePage::of(tree, branch, &page))
    }

    /// The page written before for this state of the tree (`pages`), or written now.
    fn list_messages_json(&mut self, msg: ListMessagesJson) -> Result<Bytes, ChatError> {
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

    fn get_message(&mut self, msg: GetMessage) -> Result<MessageView, ChatError> {
        self.message_view(msg.id)
    }

    fn get_tree(&mut self, _: GetTree) -> Result<TreeView, ChatError> {
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

    fn fork(&mut self, msg: Fork) -> Result<Applied<BranchView>, ChatError> {
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

    fn edit(&mut self, msg: Edit) -> Result<Applied<EditOutcome>, ChatError> {
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

    fn list_branches(&mut self, _: ListBranches) -> Result<Vec<BranchView>, ChatError> {
        let tree = &self.state.tree;
        Ok(tree
            .branches()
            .iter()
            .map(|b| BranchView::of(tree, b))
            .collect())
    }

    fn get_branch(&mut self, msg: GetBranch) -> Result<BranchView, ChatError> {
        self.branch_view(msg.id)
    }

    fn rename_branch(&mut self, msg: RenameBranch) -> Result<Applied<BranchView>, ChatError> {
        self.state.tree.branch(msg.id)?;
        let slot = reserve(&self.rt)?;
        self.state
            .tree
            .rename_branch(msg.id, msg.name, crate::model::now())?;
        let ops = vec![self.touch_meta(), self.branch_row(msg.id)?];
        let commit = self.write(slot, ops);
        Ok(Applied::new(self.branch_view(msg.id)?, commit))
    }

    fn delete_branch(
        &mut self,
        msg: DeleteBranch,
    ) -> Result<Applied<BranchDeletedView>, ChatError> {
        self.state.tree.branch(msg.id)?;
        if self.busy(msg.id) {
            return Err(ChatError::GenerationInProgress);
        }
        let slot = reserve(&self.rt)?;
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

    fn set_active(&mut self, msg: SetActive) -> Result<Applied<ChatView>, ChatError> {
        self.state.tree.branch(msg.id)?;
        let slot = reserve(&self.rt)?;
        self.state.tree.set_active(msg.id)?;
        let row = self.touch_meta();
        let commit = self.write(slot, vec![row]);
        Ok(Applied::new(self.chat_view(), commit))
    }

    #[cfg(feature = "fault-injection")]
    fn inject_panic(&mut self, _: InjectPanic) -> Result<(), ChatError> {
        // Half-apply a change first, as a real bug would, to show the restart discards it.
        self.state
            .row
            .set_title(Some("corrupted by a panic".into()));
        panic!("injected fault");
    }
}

/// Where a fork starts.
/// What a new chat starts with.
#[derive(Debug, Clone, Default)]
pub struct NewChat {
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub description: Option<String>,
}

/// A change to a chat's settings: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ChatPatch {
    pub title: Option<Option<String>>,
    pub system_prompt: Option<Option<String>>,
    pub description: Option<Option<String>>,
}

#[derive(Debug, Clone, Copy)]
pub enum ForkPoint {
    Message(MessageId),
    /// A 0-based index into a branch's path (the active branch when `None`).
    Index {
        branch: Option<BranchId>,
        index: usize,
    },
    /// No message: an empty branch, whose first message starts a new conversation (a new root).
    Start,
}

pub struct SendOutcome {
    pub view: SendView,
    /// Present when the send asked for a reply.
    pub generation: Option<GenerationJob>,
}

pub struct EditOutcome {
    pub view: EditView,
    pub generation: Option<GenerationJob>,
}

pub struct RegenerateOutcome {
    pub view: RegenerateView,
    pub job: GenerationJob,
}

macro_rules! chat_messages {
    ($(
        $(#[$doc:meta])*
        $name:ident { $($field:ident : $ty:ty),* $(,)? } -> $result:ty => $method:ident;
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pub user: UserId,
            $(pub $field: $ty,)*
        }

        impl actix::Message for $name {
            type Result = Result<$result, ChatError>;
        }

        impl Handler<$name> for ChatActor {
            type Result = Result<$result, ChatError>;

            fn handle(&mut self, msg: $name, ctx: &mut Self::Context) -> Self::Result {
                self.guarded(ctx, msg.user, move |core| core.$method(msg))
            }
        }
    )*};
}

chat_messages! {
    /// The chat with its branches.
    GetChat {} -> ChatView => get_chat;
    /// Changes the chat's settings.
    UpdateChat { patch: ChatPatch } -> Applied<ChatView> => update_chat;
    /// Deletes the chat, its branches and messages.
    DeleteChat {} -> Applied<()> => delete_chat;
    /// Adds a message to a branch (the active one by default), optionally followed by a
    /// client-supplied answer, or asking for a generated reply.
    AddMessages {
        branch: Option<BranchId>,
        role: Role,
        content: Arc<str>,
        response: Option<Arc<str>>,
        model: Option<Arc<str>>,
        metadata: Option<Arc<serde_json::Value>>,
        reply: Option<ReplySpec>,
        idempotency_key: Option<Arc<str>>,
    } -> Applied<SendOutcome> => add_messages;
    /// Stores a generated reply as the child of the message it answers.
    CompleteGeneration {
        generation: GenerationId,
        branch: BranchId,
        parent: MessageId,
        content: Arc<str>,
        model: Arc<str>,
        metadata: Arc<serde_json::Value>,
        idempotency_key: Option<Arc<str>>,
    } -> Applied<MessageView> => complete_generation;
    /// Releases a branch whose reply failed.
    AbortGeneration {
        generation: GenerationId,
        branch: BranchId,
        idempotency_key: Option<Arc<str>>,
    } -> () => abort_generation;
    /// A new reply to a message, on a new active branch.
    Regenerate { message: MessageId, name: Option<String>, reply: ReplySpec }
        -> Applied<RegenerateOutcome> => regenerate;
    /// A page of a branch's path, from the head backwards.
    ListMessages { branch: Option<BranchId>, limit: usize, before: Option<MessageId> }
        -> MessagePage => list_messages;
    /// The same page as `ListMessages`, as the JSON its `MessagePage` serializes to, written
    /// by the actor straight from the tree (the REST read path).
    ListMessagesJson { branch: Option<BranchId>, limit: usize, before: Option<MessageId> }
        -> Bytes => list_messages_json;
    GetMessage { id: MessageId } -> MessageView => get_message;
    GetTree {} -> TreeView => get_tree;
    /// Creates a branch whose head is an existing message.
    Fork { from: ForkPoint, name: Option<String>, activate: bool } -> Applied<BranchView> => fork;
    /// Creates a sibling of a message with new content, on a new branch.
    Edit {
        message: MessageId,
        content: Arc<str>,
        name: Option<String>,
        activate: bool,
        reply: Option<ReplySpec>,
    } -> Applied<EditOutcome> => edit;
    ListBranches {} -> Vec<BranchView> => list_branches;
    GetBranch { id: BranchId } -> BranchView => get_branch;
    RenameBranch { id: BranchId, name: String } -> Applied<BranchView> => rename_branch;
    /// Deletes a branch and the messages only it reached.
    DeleteBranch { id: BranchId } -> Applied<BranchDeletedView> => delete_branch;
    SetActive { id: BranchId } -> Applied<ChatView> => set_active;
}

#[cfg(feature = "fault-injection")]
chat_messages! {
    /// Makes the actor panic mid-change (tests of supervision only).
    InjectPanic {} -> () => inject_panic;
}

/// The chat state an operator's detail view shows (no ownership check: admin only).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Inspected")]
pub struct Inspect;

/// What [`Inspect`] answers.
#[derive(Debug, Clone, MessageResponse)]
pub struct Inspected {
    pub title: Option<String>,
    pub active_branch: BranchId,
    pub active_branch_name: String,
    pub version: i64,
}

impl Handler<Inspect> for ChatActor {
    type Result = Inspected;

    fn handle(&mut self, _: Inspect, _: &mut Self::Context) -> Inspected {
        let state = &self.core.state;
        let active = state.tree.active();
        Inspected {
            title: state.row.title().map(str::to_owned),
            active_branch: active,
            active_branch_name: state
                .tree
                .branch(active)
                .map(|b| b.name.to_string())
                .unwrap_or_default(),
            version: state.row.version,
        }
    }
}

/// Flush everything this chat queued, then stop. Sent by the registry on eviction.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Evict;

impl Handler<Evict> for ChatActor {
    type Result = ();

    fn handle(&mut self, _: Evict, ctx: &mut Self::Context) {
        let barrier = self.core.rt.writer.barrier();
        ctx.wait(barrier.into_actor(self).map(|_, act, ctx| {
            act.core.handle.probe().mark_flushed();
            ctx.stop();
        }));
    }
}

impl Handler<WriteFailed> for ChatActor {
    type Result = ();

    fn handle(&mut self, msg: WriteFailed, ctx: &mut Self::Context) {
        if msg.generation < self.core.generation {
            return; // Already reloaded past that failure.
        }
        tracing::warn!(chat = %self.core.state.tree.chat(), "a write of this chat failed; reloading it from the store");
        self.core.generation = next_generation();
        self.reload(ctx);
    }
}

#[cfg(test)]
mod tests {
    /// tokio rounds a task up to 128 bytes, and a resident chat's task is this actor inside
    /// actix's context: heaptrack measured 768 bytes a task at 320 bytes of actor, 896 at 416
    /// (BENCHMARKS.md, memory). Growing past 320 risks the next 128.
    #[test]
    fn a_chat_actor_stays_within_its_task_size_class() {
        assert!(std::mem::size_of::<super::ChatActor>() <= 200);
    }
}
