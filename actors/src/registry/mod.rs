//! The registry of resident chat actors, and the operations callers use ([`Chats`]).
//!
//! Resident actors live in a moka cache bounded by count and idle time. Removal from the cache, for
//! any reason, sends the actor [`Evict`]: it flushes what it queued and stops. moka processes
//! expirations lazily, so a sweeper task drives them every `sweep_interval`.
//!
//! Activation and eviction never overlap for one chat: every live actor has an entry in
//! `Liveness` until it is dropped (after its final flush), and activating a chat first waits
//! for the previous actor's entry to go. A request that reached an actor just as it stopped gets
//! `Closed` from its mailbox and is retried on a fresh activation; a request the actor accepted is
//! always answered.

mod hot;
mod replies;
mod resident;

use self::replies::reply_spec;
pub use self::resident::RegistryStats;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use moka::future::Cache;
use moka::notification::RemovalCause;

use crate::chat::*;
use crate::error::ChatError;
use crate::generation::Generation;
use crate::inspect::EvictReason;
use crate::llm::LlmPool;
use crate::model::{BranchId, ChatId, ChatMeta, Feedback, GenerationId, MessageId, Role, UserId};
use crate::portable::{ChatExport, ImportedChat};
use crate::views::*;
use crate::writer::WriteOp;
use crate::writer::{AckMode, WriteError};

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Resident chat actors at most.
    pub max_resident: u64,
    /// Evict an actor after this long without a request.
    pub idle_timeout: Duration,
    /// How often pending evictions are driven.
    pub sweep_interval: Duration,
    /// Requests queued for one chat before new ones get `Overloaded`.
    pub mailbox_capacity: usize,
    /// Where a chat's actor is started.
    pub placement: Placement,
    /// Threads (actix arbiters) of the registry's own: they host the actors `Placement::Spread`
    /// puts there and those activated outside any arbiter, and the replies whose actor's thread
    /// stopped before they were stored (see `Drive`).
    pub arbiters: usize,
    /// Bytes of written pages of the read path each thread hosting chat actors keeps, to answer
    /// the same page of the same tree state again without writing it (`pages`); 0 is off.
    pub page_cache_bytes: usize,
}

/// Which thread a chat's actor runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// On the arbiter of the thread that activates the chat: for a request, the HTTP worker
    /// that received it. Requests reaching that worker then call the actor without waking
    /// another thread (with N workers, about 1 in N of a chat's requests when its clients'
    /// connections are spread evenly; all of them for a client on one connection).
    #[default]
    Local,
    /// On one of the registry's arbiters, chosen by the chat's id: every request crosses
    /// threads twice.
    Spread,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            max_resident: 100_000,
            idle_timeout: Duration::from_secs(600),
            sweep_interval: Duration::from_secs(1),
            mailbox_capacity: 256,
            placement: Placement::Local,
            arbiters: 2,
            page_cache_bytes: 8 << 20,
        }
    }
}

struct Inner {
    cache: Cache<ChatId, ChatHandle>,
    /// This registry among the process's: its slots in each thread's hot handles (`hot`).
    id: u64,
    /// How long a thread trusts a handle the cache gave it (`hot`) before asking again.
    refresh: Duration,
    rt: Arc<ChatRuntime>,
    arbiters: Vec<ArbiterHandle>,
    config: RegistryConfig,
    next_instance: AtomicU64,
    stats: Arc<RegistryStats>,
    llm: Arc<LlmPool>,
    /// Set by `shutdown`: removals from then on are counted as `shutdown` evictions.
    shutting_down: Arc<AtomicBool>,
    /// Held by an import that keeps its ids while it checks and claims them.
    importing: tokio::sync::Mutex<()>,
}

/// A registry dropped without `shutdown` (a test's, an embedder's) takes its actors with it:
/// each holds its own handle, so none would stop for want of addresses. Their writes are the
/// writer's already; `shutdown` is what waits for those.
impl Drop for Inner {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// Every chat operation, routed to the chat's actor. Cheap to clone.
#[derive(Clone)]
pub struct Chats {
    inner: Arc<Inner>,
}

/// How a send asked for its assistant answer to be produced.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub branch: Option<BranchId>,
    pub role: Role,
    pub content: Arc<str>,
    pub response: Option<Arc<str>>,
    pub model: Option<Arc<str>>,
    pub metadata: Option<Arc<serde_json::Value>>,
    pub reply: bool,
    pub idempotency_key: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
pub struct EditRequest {
    pub content: Arc<str>,
    pub name: Option<String>,
    pub activate: bool,
    pub reply: bool,
    pub model: Option<Arc<str>>,
}

/// What a send created; `generation` is the reply still being generated, if one was asked for.
pub struct Sent {
    pub view: SendView,
    pub generation: Option<Arc<Generation>>,
}

impl Sent {
    /// Waits for the reply (if any) and adds it to the view.
    pub async fn finish(self) -> Result<SendView, ChatError> {
        let mut view = self.view;
        if let Some(generation) = self.generation {
            view.messages.push(generation.outcome().await?);
        }
        Ok(view)
    }
}

/// What an edit created; `generation` as in [`Sent`].
pub struct Edited {
    pub view: EditView,
    pub generation: Option<Arc<Generation>>,
}

impl Edited {
    pub async fn finish(self) -> Result<EditView, ChatError> {
        let mut view = self.view;
        if let Some(generation) = self.generation {
            let reply = generation.outcome().await?;
            view.branch.head_message_id = Some(reply.id);
            view.branch.message_count += 1;
            view.reply = Some(reply);
        }
        Ok(view)
    }
}

/// What a regeneration created.
pub struct Regenerated {
    pub view: RegenerateView,
    pub generation: Arc<Generation>,
}

impl Regenerated {
    pub async fn finish(self) -> Result<RegenerateView, ChatError> {
        let mut view = self.view;
        let reply = self.generation.outcome().await?;
        view.branch.head_message_id = Some(reply.id);
        view.branch.message_count += 1;
        view.reply = Some(reply);
        Ok(view)
    }
}

impl Chats {
    /// Starts the registry: its arbiters and its eviction sweeper. Call inside an actix system.
    pub fn start(mut rt: ChatRuntime, config: RegistryConfig, llm: Arc<LlmPool>) -> Self {
        rt.page_cache_bytes = config.page_cache_bytes;
        let stats = Arc::new(RegistryStats::default());
        let shutting_down = Arc::new(AtomicBool::new(false));
        let (evictions, stopping) = (stats.clone(), shutting_down.clone());
        let cache = Cache::builder()
            .max_capacity(config.max_resident)
            .time_to_idle(config.idle_timeout)
            .eviction_listener(move |_id, handle: ChatHandle, cause| {
                let reason = match cause {
                    RemovalCause::Replaced => return,
                    _ if stopping.load(Ordering::Relaxed) => EvictReason::Shutdown,
                    RemovalCause::Expired => EvictReason::Idle,
                    RemovalCause::Size => EvictReason::Capacity,
                    RemovalCause::Explicit => handle.probe().evict_reason(),
                };
                evictions
                    .evictions
                    .with_label_values(&[reason.as_str()])
                    .inc();
                handle.addr().do_send(Evict);
            })
            .build();
        let arbiters = (0..config.arbiters.max(1))
            .map(|_| Arbiter::new().handle())
            .collect();
        static REGISTRIES: AtomicU64 = AtomicU64::new(1);
        let inner = Arc::new(Inner {
            cache,
            id: REGISTRIES.fetch_add(1, Ordering::Relaxed),
            refresh: (config.idle_timeout / 8).min(Duration::from_secs(1)),
            rt: Arc::new(rt),
            arbiters,
            config,
            next_instance: AtomicU64::new(1),
            stats,
            llm,
            shutting_down,
            importing: tokio::sync::Mutex::new(()),
        });
        let sweeper = Arc::downgrade(&inner);
        let interval = inner.config.sweep_interval;
        actix::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = sweeper.upgrade() else {
                    break;
                };
                inner.cache.run_pending_tasks().await;
                inner.rt.generations.sweep();
            }
        });
        Self { inner }
    }

    pub fn stats(&self) -> &RegistryStats {
        &self.inner.stats
    }

    pub fn runtime(&self) -> &ChatRuntime {
        &self.inner.rt
    }

    pub fn llm(&self) -> &LlmPool {
        &self.inner.llm
    }

    /// Creates a chat owned by `owner`; its actor starts resident.
    pub async fn create(&self, owner: UserId, new: NewChat) -> Result<ChatView, ChatError> {
        let rt = &self.inner.rt;
        let id = match &rt.ownership {
            Some(ownership) => ownership.new_chat_id().ok_or(ChatError::Moved)?,
            None => ChatId::new(),
        };
        let fence = rt.fence(id)?;
        let (state, ops) = ChatState::create(id, owner, new);
        self.start_new(id, state, fence, ops).await
    }

    /// Starts the actor of a chat made here (created or imported) and writes its rows (`ops`,
    /// the first write of the chat): answers once they are stored.
    async fn start_new(
        &self,
        id: ChatId,
        state: ChatState,
        fence: Option<crate::ports::Fence>,
        ops: Vec<WriteOp>,
    ) -> Result<ChatView, ChatError> {
        let view = ChatView::of(&state.row, &state.tree);
        let writer = &self.inner.rt.writer;
        writer.room().await;
        let slot = writer.reserve().ok_or(ChatError::Overloaded)?;
        let handle = self.spawn(id, state, fence);
        let commit = slot.send(crate::writer::ChatWrite {
            chat: id,
            generation: 0,
            fence,
            ops,
            owner: Some(handle.write_owner()),
        });
        self.inner.cache.insert(id, handle).await;
        self.settle(Applied {
            value: view,
            commit,
        })
        .await
    }

    /// A new chat of `owner` holding a whole tree at once (an import): `branches` and
    /// `messages` (their chat ids are set here) must form a valid tree whose branches all
    /// reach their heads, with `active` among them. Stored in one write, all or nothing.
    pub async fn import(&self, owner: UserId, import: ImportedChat) -> Result<ChatView, ChatError> {
        let rt = &self.inner.rt;
        let id = match &rt.ownership {
            Some(ownership) => ownership.new_chat_id().ok_or(ChatError::Moved)?,
            None => ChatId::new(),
        };
        let fence = rt.fence(id)?;
        let ImportedChat {
            title,
            system_prompt,
            description,
            mut branches,
            active,
            mut messages,
            created_at,
            updated_at,
            feedback,
            keeps_ids,
        } = import;
        // One import at a time checks and claims its ids (on this server).
        let _claiming = match keeps_ids {
            true => Some(self.inner.importing.lock().await),
            false => None,
        };
        if keeps_ids {
            let ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
            let branch_ids: Vec<BranchId> = branches.iter().map(|b| b.id).collect();
            self.ids_free(&ids, &branch_ids).await?;
        }
        let now = crate::model::now();
        for b in &mut branches {
            b.chat_id = id;
        }
        for m in &mut messages {
            m.chat_id = id;
        }
        let meta = ChatMeta {
            id,
            owner,
            title,
            system_prompt,
            description,
            active_branch: active,
            created_at: created_at.unwrap_or(now),
            updated_at: updated_at.unwrap_or(now),
            version: 1,
        };
        let mut ops: Vec<WriteOp> = Vec::with_capacity(1 + branches.len() + messages.len());
        ops.push(WriteOp::UpsertChat(meta.clone()));
        ops.extend(branches.iter().map(|b| WriteOp::UpsertBranch(b.clone(), 1)));
        ops.extend(messages.iter().cloned().map(WriteOp::InsertMessage));
        let count = messages.len();
        let (mut state, left_out) = ChatState::restore(meta, branches, messages)
            .map_err(|_| ChatError::Invalid("the imported tree is not valid".into()))?;
        if !left_out.is_empty() || state.tree.message_count() != count {
            return Err(ChatError::Invalid(
                "every imported message must be on a branch's path".into(),
            ));
        }
        for (message, feedback) in feedback {
            let feedback = Arc::new(feedback);
            state.tree.set_feedback(message, Some(feedback.clone()))?;
            let tree = &state.tree;
            let model = tree.node(message).ok().and_then(|n| tree.model(n).cloned());
            ops.push(WriteOp::Feedback(crate::model::FeedbackRow {
                message,
                chat: id,
                user: owner,
                model,
                feedback: Some(feedback),
            }));
        }
        self.start_new(id, state, fence, ops).await
    }

    /// Refuses (`IdsTaken`) imports that keep ids some of which are stored already.
    pub async fn check_ids_free(&self, imports: &[ImportedChat]) -> Result<(), ChatError> {
        let kept = imports.iter().filter(|i| i.keeps_ids);
        let messages: Vec<MessageId> = kept
            .clone()
            .flat_map(|i| i.messages.iter().map(|m| m.id))
            .collect();
        let branches: Vec<BranchId> = kept.flat_map(|i| i.branches.iter().map(|b| b.id)).collect();
        self.ids_free(&messages, &branches).await
    }

    async fn ids_free(
        &self,
        messages: &[MessageId],
        branches: &[BranchId],
    ) -> Result<(), ChatError> {
        let rt = &self.inner.rt;
        let (taken, taken_branches) = futures_util::future::join(
            rt.messages.existing(messages),
            rt.metadata.existing_branches(branches),
        )
        .await;
        let mut taken: Vec<String> = taken
            .map_err(crate::chat::storage_error)?
            .iter()
            .map(ToString::to_string)
            .collect();
        taken.extend(
            taken_branches
                .map_err(crate::chat::storage_error)?
                .iter()
                .map(|(id, _)| id.to_string()),
        );
        match taken.is_empty() {
            true => Ok(()),
            false => Err(ChatError::IdsTaken(taken)),
        }
    }

    /// The chat as one `arbor.chat/1` document.
    pub async fn export(&self, user: UserId, chat: ChatId) -> Result<ChatExport, ChatError> {
        self.call(chat, Export { user }).await
    }

    /// The chat as stored, as one `arbor.chat/1` document: read from the stores, not through
    /// its actor, so any server can (a backup; cluster mode), and the chat is not activated.
    /// Writes still queued here are not in it: call [`Self::flushed`] first.
    pub async fn export_stored(&self, user: UserId, chat: ChatId) -> Result<ChatExport, ChatError> {
        let Some((state, _)) = crate::chat::load_chat(&self.inner.rt, chat).await? else {
            return Err(ChatError::ChatNotFound);
        };
        if state.row.owner != user {
            return Err(ChatError::ChatNotFound);
        }
        Ok(crate::chat::exported(&state))
    }

    /// Full-text search over `user`'s chats (one, with `chat`): `limit` of the store's ranked
    /// hits after `offset`, each located in its chat (`Self::locate`), and whether more follow.
    /// A hit its chat does not hold (indexed by a commit its actor has not caught up with, or
    /// deleted since) is left out.
    pub async fn search(
        &self,
        user: UserId,
        query: &str,
        chat: Option<ChatId>,
        (limit, offset): (usize, usize),
        window: usize,
    ) -> Result<(Vec<(crate::ports::SearchHit, Location)>, bool), ChatError> {
        let mut found = self
            .inner
            .rt
            .metadata
            .search(user, query, chat, limit + 1, offset)
            .await
            .map_err(crate::chat::storage_error)?;
        let more = found.len() > limit;
        found.truncate(limit);
        let mut hits = Vec::with_capacity(found.len());
        for hit in found {
            match self.locate(user, hit.chat, hit.message, window).await {
                Ok(location) => hits.push((hit, location)),
                Err(ChatError::MessageNotFound(_) | ChatError::ChatNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((hits, more))
    }

    /// Where a message is in its chat (a search hit): from its actor, or, when another server
    /// owns the chat (cluster mode), from the stores.
    pub async fn locate(
        &self,
        user: UserId,
        chat: ChatId,
        message: MessageId,
        window: usize,
    ) -> Result<Location, ChatError> {
        match self
            .call(
                chat,
                Locate {
                    user,
                    message,
                    window,
                },
            )
            .await
        {
            Err(ChatError::Moved) => {
                let Some((state, _)) = crate::chat::load_chat(&self.inner.rt, chat).await? else {
                    return Err(ChatError::ChatNotFound);
                };
                if state.row.owner != user {
                    return Err(ChatError::ChatNotFound);
                }
                Ok(Location::of(&state.tree, message, window)?)
            }
            other => other,
        }
    }

    /// Once every write queued on this server so far has committed (or failed for good).
    pub async fn flushed(&self) {
        self.inner.rt.writer.barrier().await;
    }

    /// A snapshot of a chat for a share link: a branch's path (the active one by default), or
    /// the whole tree.
    pub async fn snapshot(
        &self,
        user: UserId,
        chat: ChatId,
        branch: Option<BranchId>,
        scope: ShareScope,
    ) -> Result<SharedChat, ChatError> {
        self.call(
            chat,
            Snapshot {
                user,
                branch,
                scope,
            },
        )
        .await
    }

    /// A user's chats, newest first, from the metadata store. In buffered mode a change can take
    /// one flush interval to show here.
    pub async fn list(
        &self,
        owner: UserId,
        limit: usize,
        before: Option<ChatId>,
    ) -> Result<ChatList, ChatError> {
        let fetch = u32::try_from(limit).unwrap_or(u32::MAX - 1) + 1;
        let mut rows = self
            .inner
            .rt
            .metadata
            .list_chats(owner, fetch, before)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "listing chats failed");
                ChatError::StorageUnavailable
            })?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let chats: Vec<ChatSummary> = rows.iter().map(ChatSummary::from).collect();
        let next_before = if has_more {
            chats.last().map(|c| c.id)
        } else {
            None
        };
        Ok(ChatList {
            chats,
            has_more,
            next_before,
        })
    }

    pub async fn get(&self, user: UserId, chat: ChatId) -> Result<ChatView, ChatError> {
        self.call(chat, GetChat { user }).await
    }

    pub async fn update(
        &self,
        user: UserId,
        chat: ChatId,
        patch: ChatPatch,
    ) -> Result<ChatView, ChatError> {
        let msg = UpdateChat { user, patch };
        let applied = self.write(chat, msg).await?;
        self.settle(applied).await
    }

    pub async fn delete(&self, user: UserId, chat: ChatId) -> Result<(), ChatError> {
        let applied = self.write(chat, DeleteChat { user }).await?;
        let result = self.settle(applied).await;
        // Drop the tombstoned actor either way: after a failure it reloads, after success the
        // chat is gone from the store.
        self.remove(chat, EvictReason::Deleted).await;
        result
    }

    /// Adds a message (and an answer, or a generated reply) to a branch. A reply is admitted by
    /// the model pool before anything is stored, and generated after the send is committed.
    pub async fn send(
        &self,
        user: UserId,
        chat: ChatId,
        req: SendRequest,
    ) -> Result<Sent, ChatError> {
        let admission = match req.reply {
            true => Some(self.admit_reply(user, req.model.as_deref()).await?),
            false => None,
        };
        let msg = AddMessages {
            user,
            branch: req.branch,
            role: req.role,
            content: req.content,
            response: req.response,
            model: if req.reply { None } else { req.model },
            metadata: req.metadata,
            reply: admission.as_ref().map(reply_spec),
            idempotency_key: req.idempotency_key,
        };
        let applied = self.write(chat, msg).await?;
        let job = applied.value.generation.clone();
        let (outcome, generation) = self.launch(user, chat, admission, applied, job).await?;
        Ok(Sent {
            view: outcome.view,
            generation,
        })
    }

    pub async fn list_messages(
        &self,
        user: UserId,
        chat: ChatId,
        branch: Option<BranchId>,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<MessagePage, ChatError> {
        let msg = ListMessages {
            user,
            branch,
            limit,
            before,
        };
        self.call(chat, msg).await
    }

    /// `list_messages`' page as JSON (`json::page`), byte for byte what serializing that
    /// `MessagePage` writes.
    pub async fn list_messages_json(
        &self,
        user: UserId,
        chat: ChatId,
        branch: Option<BranchId>,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Bytes, ChatError> {
        let msg = ListMessagesJson {
            user,
            branch,
            limit,
            before,
        };
        self.call(chat, msg).await
    }

    pub async fn get_message(
        &self,
        user: UserId,
        chat: ChatId,
        id: MessageId,
    ) -> Result<MessageView, ChatError> {
        self.call(chat, GetMessage { user, id }).await
    }

    /// Sets (or, with `None`, takes back) the owner's feedback on an assistant message.
    pub async fn set_feedback(
        &self,
        user: UserId,
        chat: ChatId,
        message: MessageId,
        feedback: Option<Feedback>,
    ) -> Result<MessageView, ChatError> {
        let rating = feedback.as_ref().map_or("withdrawn", |f| f.rating.as_str());
        let msg = SetFeedback {
            user,
            message,
            feedback,
        };
        let applied = self.write(chat, msg).await?;
        let view = self.settle(applied).await?;
        let stats = self.stats();
        let model = stats.feedback_model(view.model.as_deref());
        stats.feedback.with_label_values(&[model, rating]).inc();
        Ok(view)
    }

    pub async fn tree(&self, user: UserId, chat: ChatId) -> Result<TreeView, ChatError> {
        self.call(chat, GetTree { user }).await
    }

    pub async fn fork(
        &self,
        user: UserId,
        chat: ChatId,
        from: ForkPoint,
        name: Option<String>,
        activate: bool,
    ) -> Result<BranchView, ChatError> {
        let msg = Fork {
            user,
            from,
            name,
            activate,
        };
        let applied = self.write(chat, msg).await?;
        self.settle(applied).await
    }

    pub async fn edit(
        &self,
        user: UserId,
        chat: ChatId,
        message: MessageId,
        req: EditRequest,
    ) -> Result<Edited, ChatError> {
        let admission = match req.reply {
            true => Some(self.admit_reply(user, req.model.as_deref()).await?),
            false => None,
        };
        let msg = Edit {
            user,
            message,
            content: req.content,
            name: req.name,
            activate: req.activate,
            reply: admission.as_ref().map(reply_spec),
        };
        let applied = self.write(chat, msg).await?;
        let job = applied.value.generation.clone();
        let (outcome, generation) = self.launch(user, chat, admission, applied, job).await?;
        Ok(Edited {
            view: outcome.view,
            generation,
        })
    }

    /// A new reply to `message` (a user message, or the one an assistant reply answered) on a
    /// new active branch.
    pub async fn regenerate(
        &self,
        user: UserId,
        chat: ChatId,
        message: MessageId,
        name: Option<String>,
        model: Option<&str>,
    ) -> Result<Regenerated, ChatError> {
        let admission = self.admit_reply(user, model).await?;
        let msg = Regenerate {
            user,
            message,
            name,
            reply: reply_spec(&admission),
        };
        let applied = self.write(chat, msg).await?;
        let job = applied.value.job.clone();
        let (outcome, generation) = self
            .launch(user, chat, Some(admission), applied, Some(job))
            .await?;
        Ok(Regenerated {
            view: outcome.view,
            generation: generation.ok_or(ChatError::Internal("reply not started".into()))?,
        })
    }

    /// A generation of a chat the user owns.
    pub fn generation(
        &self,
        user: UserId,
        chat: ChatId,
        id: GenerationId,
    ) -> Result<Arc<Generation>, ChatError> {
        self.inner
            .rt
            .generations
            .get(id)
            .filter(|g| g.chat == chat && g.owner == user)
            .ok_or(ChatError::GenerationNotFound)
    }

    /// Stops a generation; its partial reply is stored, marked incomplete. Returns once the
    /// generation has ended (at once if it already had).
    pub async fn cancel_generation(
        &self,
        user: UserId,
        chat: ChatId,
        id: GenerationId,
    ) -> Result<GenerationView, ChatError> {
        let generation = self.generation(user, chat, id)?;
        generation.cancel();
        let _ = generation.outcome().await;
        Ok(generation.view())
    }

    pub async fn branches(&self, user: UserId, chat: ChatId) -> Result<Vec<BranchView>, ChatError> {
        self.call(chat, ListBranches { user }).await
    }

    pub async fn branch(
        &self,
        user: UserId,
        chat: ChatId,
        id: BranchId,
    ) -> Result<BranchView, ChatError> {
        self.call(chat, GetBranch { user, id }).await
    }

    pub async fn rename_branch(
        &self,
        user: UserId,
        chat: ChatId,
        id: BranchId,
        name: String,
    ) -> Result<BranchView, ChatError> {
        let applied = self.write(chat, RenameBranch { user, id, name }).await?;
        self.settle(applied).await
    }

    pub async fn delete_branch(
        &self,
        user: UserId,
        chat: ChatId,
        id: BranchId,
    ) -> Result<BranchDeletedView, ChatError> {
        let applied = self.write(chat, DeleteBranch { user, id }).await?;
        self.settle(applied).await
    }

    pub async fn set_active(
        &self,
        user: UserId,
        chat: ChatId,
        id: BranchId,
    ) -> Result<ChatView, ChatError> {
        let applied = self.write(chat, SetActive { user, id }).await?;
        self.settle(applied).await
    }

    /// [`call`](Self::call) for a message that changes the chat: when the writer's queue is
    /// full, first waits a little for room (flow control) rather than failing at once.
    async fn write<M, R>(&self, chat: ChatId, msg: M) -> Result<R, ChatError>
    where
        M: actix::Message<Result = Result<R, ChatError>> + Clone + Send + 'static,
        R: Send + 'static,
        ChatActor: Handler<M>,
    {
        self.inner.rt.writer.room().await;
        self.call(chat, msg).await
    }

    /// Sends any message to a chat's actor (tests and operators use this for the rest).
    pub async fn call<M, R>(&self, chat: ChatId, msg: M) -> Result<R, ChatError>
    where
        M: actix::Message<Result = Result<R, ChatError>> + Clone + Send + 'static,
        R: Send + 'static,
        ChatActor: Handler<M>,
    {
        let capacity = self.inner.config.mailbox_capacity;
        for _ in 0..4 {
            let handle = self.handle(chat).await?;
            match handle.ask(msg.clone(), capacity).await {
                Ok(result) => return result,
                Err(AskError::Overloaded) => return Err(ChatError::Overloaded),
                Err(AskError::Closed) => {
                    hot::forget(self.inner.id, chat);
                    self.forget(chat, handle.instance()).await
                }
            }
        }
        Err(ChatError::Internal(format!("chat {chat} kept stopping")))
    }

    /// Waits for a change's commit in durable mode; returns at once in buffered mode.
    async fn settle<T>(&self, applied: Applied<T>) -> Result<T, ChatError> {
        if self.inner.rt.writer.ack_mode == AckMode::Durable {
            applied.commit.await.map_err(commit_error)?;
        }
        Ok(applied.value)
    }
}

fn commit_error(e: WriteError) -> ChatError {
    match e {
        WriteError::StorageUnavailable | WriteError::Fenced | WriteError::Stopped => {
            ChatError::StorageUnavailable
        }
        WriteError::Moved => ChatError::Moved,
    }
}

fn arbiter_for(chat: ChatId, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    chat.hash(&mut h);
    (h.finish() % n as u64) as usize
}
