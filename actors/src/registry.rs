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

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use prometheus::{Histogram, IntCounter, IntCounterVec};
use tokio::sync::Notify;

use crate::chat::*;
use crate::error::ChatError;
use crate::generation::{Generation, StoredReply};
use crate::hot;
use crate::inspect::{
    ActorDetail, ActorInfo, ActorPage, ActorProbe, ActorSort, ActorTotals, EvictReason, SortOrder,
};
use crate::llm::{Admission, JobOutcome, LlmPool};
use crate::model::{BranchId, ChatId, GenerationId, MessageId, Role, UserId};
use crate::ports::{CompletionRequest, Usage};
use crate::views::*;
use crate::writer::{AckMode, CommitTicket, WriteError};

/// A new actor's entry in [`Liveness`], on its way to the actor.
pub(crate) struct Birth {
    chat: ChatId,
    instance: u64,
    liveness: Arc<Liveness>,
    claimed: bool,
}

impl Birth {
    /// Hands the entry to the actor, which leaves `Liveness` when dropped.
    pub(crate) fn claim(mut self) {
        self.claimed = true;
    }
}

impl Drop for Birth {
    fn drop(&mut self) {
        if !self.claimed {
            // Never built, so it queued nothing.
            self.liveness.gone(self.chat, self.instance, true);
        }
    }
}

/// The chat actors alive (resident or still flushing), by chat: the instance of each.
///
/// One `Notify` for all of them rather than a signal per actor: an actor is gone rarely while
/// someone waits for it, and a per-actor signal cost every resident chat ~180 bytes.
#[derive(Default)]
pub(crate) struct Liveness {
    live: Mutex<HashMap<ChatId, u64>>,
    /// Chats whose last actor was dropped without its final flush (its arbiter stopped under
    /// it: an HTTP worker's, at shutdown). Their next activation waits for the writer first.
    unflushed: Mutex<HashSet<ChatId>>,
    gone: Notify,
}

impl Liveness {
    /// Enters a new actor of `chat`. Its entry goes when the actor is dropped, or when the
    /// returned `Birth` is dropped unclaimed (the actor was never built: its arbiter had stopped).
    fn born(self: &Arc<Self>, chat: ChatId, instance: u64) -> Birth {
        if let Ok(mut live) = self.live.lock() {
            live.insert(chat, instance);
        }
        Birth {
            chat,
            instance,
            liveness: self.clone(),
            claimed: false,
        }
    }

    /// Called by a chat actor when it is dropped; `flushed`: after its final flush.
    pub(crate) fn gone(&self, chat: ChatId, instance: u64, flushed: bool) {
        if !flushed {
            // Marked before the entry goes, so whoever sees the chat gone also sees this.
            if let Ok(mut unflushed) = self.unflushed.lock() {
                unflushed.insert(chat);
            }
        }
        if let Ok(mut live) = self.live.lock() {
            if live.get(&chat) == Some(&instance) {
                live.remove(&chat);
            }
        }
        self.gone.notify_waiters();
    }

    /// Whether the chat's last actor went without its final flush (and forgets it).
    fn take_unflushed(&self, chat: ChatId) -> bool {
        self.unflushed
            .lock()
            .map(|mut unflushed| unflushed.remove(&chat))
            .unwrap_or(false)
    }

    /// Waits until `done` holds of the live set.
    async fn until(&self, done: impl Fn(&HashMap<ChatId, u64>) -> bool) {
        loop {
            let notified = self.gone.notified();
            tokio::pin!(notified);
            // Registered before the check, so a departure between the check and the wait wakes it.
            notified.as_mut().enable();
            match self.live.lock() {
                Ok(live) if !done(&live) => {}
                _ => return,
            }
            notified.await;
        }
    }
}

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

/// A caller's reference to one chat actor. Never exposes the `Addr`. One pointer: the cache
/// entry holds it and every lookup clones it, where cloning an `Addr` allocates twice.
#[derive(Clone)]
pub struct ChatHandle(Arc<HandleInner>);

struct HandleInner {
    addr: Addr<ChatActor>,
    /// This actor among the chat's successive ones: its entry in the registry's live set.
    instance: u64,
    /// Mailbox depth, last activity, sizes (see [`crate::inspect`]).
    probe: ActorProbe,
}

enum AskError {
    Overloaded,
    Closed,
}

impl ChatHandle {
    /// A handle to no running actor (its mailbox is never read), for tests of what holds
    /// handles.
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        let (tx, _rx) = actix::dev::channel::channel(0);
        let main = crate::model::Branch {
            id: BranchId::new(),
            chat_id: ChatId::new(),
            name: "main".into(),
            head: None,
            forked_from: None,
            created_at: crate::model::now(),
            updated_at: crate::model::now(),
            fallback: None,
        };
        Self(Arc::new(HandleInner {
            addr: Addr::new(tx),
            instance: 0,
            probe: ActorProbe::new(UserId::new(), &crate::tree::Tree::new(main)),
        }))
    }

    #[cfg(test)]
    pub(crate) fn same_actor(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub(crate) fn addr(&self) -> &Addr<ChatActor> {
        &self.0.addr
    }

    pub(crate) fn instance(&self) -> u64 {
        self.0.instance
    }

    pub(crate) fn probe(&self) -> &ActorProbe {
        &self.0.probe
    }

    /// Sends `msg` unless `capacity` requests already wait in the actor's mailbox.
    async fn ask<M>(&self, msg: M, capacity: usize) -> Result<M::Result, AskError>
    where
        M: actix::Message + Send + 'static,
        M::Result: Send,
        ChatActor: Handler<M>,
    {
        let HandleInner { addr, probe, .. } = &*self.0;
        probe.touch();
        let depth = &probe.depth;
        let _queued = DepthGuard(depth);
        if depth.fetch_add(1, Ordering::AcqRel) as usize >= capacity {
            return Err(AskError::Overloaded);
        }
        addr.send(msg).await.map_err(|e| match e {
            MailboxError::Closed => AskError::Closed,
            MailboxError::Timeout => AskError::Overloaded,
        })
    }
}

struct DepthGuard<'a>(&'a AtomicU32);

impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The registry's instruments for the operator surface.
pub struct RegistryStats {
    pub activations: IntCounter,
    /// Activations that failed (store unavailable, corrupt rows); unknown chats are not counted.
    pub activation_failures: IntCounter,
    pub activation_seconds: Histogram,
    /// By [`EvictReason`].
    pub evictions: IntCounterVec,
}

impl Default for RegistryStats {
    fn default() -> Self {
        use crate::metrics::*;
        let evictions = counter_vec(
            "arbor_chat_evictions_total",
            "Chat actors that left memory, by reason (idle, capacity, admin, deleted, shutdown, stopped).",
            &[],
            &["reason"],
        );
        for reason in EvictReason::ALL {
            evictions.with_label_values(&[reason.as_str()]);
        }
        Self {
            activations: counter(
                "arbor_chat_activations_total",
                "Chat actors loaded from the stores (creating a chat is not an activation).",
                &[],
            ),
            activation_failures: counter(
                "arbor_chat_activation_failures_total",
                "Activations that failed because a store read failed or its rows were unusable.",
                &[],
            ),
            activation_seconds: histogram(
                "arbor_chat_activation_duration_seconds",
                "Time to load a chat from the stores and start its actor.",
                &[],
                LATENCY_BUCKETS,
            ),
            evictions,
        }
    }
}

impl RegistryStats {
    /// Evictions so far, by reason.
    pub fn evictions_by_reason(&self) -> Vec<(&'static str, u64)> {
        EvictReason::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    self.evictions.with_label_values(&[r.as_str()]).get(),
                )
            })
            .collect()
    }
}

impl crate::metrics::Instruments for RegistryStats {
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        crate::collectors![
            self.activations,
            self.activation_failures,
            self.activation_seconds,
            self.evictions,
        ]
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
                    RemovalCause::Explicit => handle.0.probe.evict_reason(),
                };
                evictions
                    .evictions
                    .with_label_values(&[reason.as_str()])
                    .inc();
                handle.0.addr.do_send(Evict);
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

    /// Resident chat actors right now.
    pub fn resident(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// A snapshot of every resident actor (a walk over the registry; no actor is messaged).
    pub fn actors(&self) -> Vec<ActorInfo> {
        self.inner
            .cache
            .iter()
            .map(|(chat, handle)| handle.0.probe.snapshot(*chat))
            .collect()
    }

    /// One page of the resident actors, sorted (a snapshot; no actor is messaged).
    pub fn actor_page(
        &self,
        sort: ActorSort,
        order: SortOrder,
        offset: usize,
        limit: usize,
    ) -> ActorPage {
        ActorPage::of(self.actors(), sort, order, offset, limit)
    }

    /// Totals over every resident actor.
    pub fn actor_totals(&self) -> ActorTotals {
        let mut totals = ActorTotals::default();
        for (_, handle) in self.inner.cache.iter() {
            totals.add(&handle.0.probe);
        }
        totals
    }

    /// One resident actor in detail, or `None` if the chat is not resident (it is not
    /// activated for this). Waits for the actor to reach the request in its mailbox.
    pub async fn actor(&self, chat: ChatId) -> Option<ActorDetail> {
        let handle = self.inner.cache.get(&chat).await?;
        let capacity = self.inner.config.mailbox_capacity;
        let state = handle.ask(Inspect, capacity).await.ok()?;
        let generations = self
            .inner
            .rt
            .generations
            .running()
            .into_iter()
            .filter(|g| g.chat == chat)
            .map(|g| g.view())
            .collect();
        Some(ActorDetail {
            info: handle.0.probe.snapshot(chat),
            title: state.title,
            active_branch_id: state.active_branch,
            active_branch_name: state.active_branch_name,
            version: state.version,
            generations_in_flight: generations,
        })
    }

    /// Creates a chat owned by `owner`; its actor starts resident.
    pub async fn create(&self, owner: UserId, new: NewChat) -> Result<ChatView, ChatError> {
        let id = ChatId::new();
        let (state, ops) = ChatState::create(id, owner, new);
        let view = ChatView::of(&state.row, &state.tree);
        self.inner.rt.writer.room().await;
        let slot = self
            .inner
            .rt
            .writer
            .reserve()
            .ok_or(ChatError::Overloaded)?;
        let handle = self.spawn(id, state);
        let commit = slot.send(crate::writer::ChatWrite {
            chat: id,
            generation: 0,
            ops,
            owner: Some(handle.clone()),
        });
        self.inner.cache.insert(id, handle).await;
        self.settle(Applied {
            value: view,
            commit,
        })
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
        let admission = req
            .reply
            .then(|| self.admit(req.model.as_deref()))
            .transpose()?;
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
        let admission = req
            .reply
            .then(|| self.admit(req.model.as_deref()))
            .transpose()?;
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
        let admission = self.admit(model)?;
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
                    self.forget(chat, handle.0.instance).await
                }
            }
        }
        Err(ChatError::Internal(format!("chat {chat} kept stopping")))
    }

    /// Evicts a chat now (flush, then stop), as an operator would. Returns whether it was
    /// resident; returns once the actor has flushed and stopped.
    pub async fn evict(&self, chat: ChatId) -> bool {
        let resident = self.remove(chat, EvictReason::Admin).await;
        self.wait_gone(chat).await;
        resident
    }

    /// Removes a chat's actor from the registry, recording why (the listener counts it).
    async fn remove(&self, chat: ChatId, reason: EvictReason) -> bool {
        self.inner
            .cache
            .entry(chat)
            .and_compute_with(|entry| async move {
                match entry {
                    Some(e) => {
                        e.value().0.probe.set_evict_reason(reason);
                        Op::Remove
                    }
                    None => Op::Nop,
                }
            })
            .await
            .into_entry()
            .is_some()
    }

    /// Asks every running generation to stop; each stores its partial reply.
    pub fn cancel_generations(&self) {
        for generation in self.inner.rt.generations.running() {
            generation.cancel();
        }
    }

    /// Cancels every running generation (their partial replies are stored), evicts every
    /// resident chat and waits until all have flushed. For graceful shutdown.
    pub async fn shutdown(&self) {
        let running = self.inner.rt.generations.running();
        for generation in &running {
            generation.cancel();
        }
        let ended = futures_util::future::join_all(running.iter().map(|g| g.outcome()));
        if tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .is_err()
        {
            tracing::warn!("some generations did not end within 10 s of shutdown");
        }
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        self.inner.cache.invalidate_all();
        self.inner.cache.run_pending_tasks().await;
        self.inner.rt.live.until(HashMap::is_empty).await;
        self.inner.rt.writer.barrier().await;
        for arbiter in &self.inner.arbiters {
            arbiter.stop();
        }
    }

    /// Resolves a model and reserves a place in its provider's queue.
    fn admit(&self, model: Option<&str>) -> Result<Admission, ChatError> {
        Ok(self.inner.llm.resolve(model)?.admit()?)
    }

    /// Settles a change that may have started a reply, and sets the reply going with its
    /// provider.
    ///
    /// With durable acks the model call starts while the question commits, so the commit is
    /// not in the time to first token: the tokens wait in the generation's log, which nobody
    /// can follow before this returns its id (after the commit), and the reply is stored only
    /// once the question is (see [`Self::drive`]). A failed commit cancels the call.
    async fn launch<T>(
        &self,
        user: UserId,
        chat: ChatId,
        admission: Option<Admission>,
        applied: Applied<T>,
        job: Option<GenerationJob>,
    ) -> Result<(T, Option<Arc<Generation>>), ChatError> {
        let (Some(admission), Some(job)) = (admission, job) else {
            return Ok((self.settle(applied).await?, None));
        };
        // Buffered acks do not wait for the commit, and neither does the reply.
        let durable = self.inner.rt.writer.ack_mode == AckMode::Durable;
        let question = durable.then(|| applied.commit.clone());
        let generation = self.drive(user, chat, admission, job, question);
        match self.settle(applied).await {
            Ok(value) => Ok((value, Some(generation))),
            Err(e) => {
                // The drive task saw the same commit fail: it cancels the call, frees the
                // branch and ends the generation; answer once it has.
                let _ = generation.outcome().await;
                Err(e)
            }
        }
    }

    async fn abort(&self, user: UserId, chat: ChatId, job: &GenerationJob) {
        let generation = &job.generation;
        let msg = AbortGeneration {
            user,
            generation: generation.id,
            branch: generation.branch,
            idempotency_key: job.idempotency_key.clone(),
        };
        let _ = self.call(chat, msg).await;
        self.inner
            .rt
            .generations
            .release(generation.id, chat, generation.branch);
    }

    /// Queues a started reply with its provider and, on the thread of the chat's actor, stores
    /// the result when it arrives (see [`Drive`]). With `question`, the commit of the message
    /// being answered is still in flight: the reply is stored only if it lands; if it fails, the
    /// call is cancelled, the branch freed and nothing stored.
    fn drive(
        &self,
        user: UserId,
        chat: ChatId,
        admission: Admission,
        job: GenerationJob,
        question: Option<CommitTicket>,
    ) -> Arc<Generation> {
        let generation = job.generation.clone();
        generation.push(crate::generation::EventKind::UserMessage(
            job.reply_to.clone(),
        ));
        let provider = admission.model.provider.config.name.clone();
        let request = CompletionRequest {
            turns: job.turns.clone(),
            model: admission.model.model.clone(),
        };
        let outcome = admission.submit(request, generation.clone());
        let home = job
            .home
            .clone()
            .unwrap_or_else(|| self.own_arbiter(chat).clone());
        let drive = Drive {
            chats: self.clone(),
            user,
            chat,
            job,
            provider,
            step: Step::Waiting { question, outcome },
            handed_over: false,
        };
        // Refused by a stopped thread, it is dropped, and hands itself over (`Drive::drop`).
        home.spawn(drive.run());
        generation
    }

    /// The registry's arbiter for a chat (`Placement::Spread` starts its actor there).
    fn own_arbiter(&self, chat: ChatId) -> &ArbiterHandle {
        &self.inner.arbiters[arbiter_for(chat, self.inner.arbiters.len())]
    }

    /// What storing a model's outcome takes: the reply, or why there is none.
    fn ending(
        &self,
        user: UserId,
        job: &GenerationJob,
        provider: &str,
        outcome: JobOutcome,
    ) -> Ending {
        let generation = &job.generation;
        let (content, model, finish_reason, usage, incomplete) = match outcome {
            JobOutcome::Completed(c) => (c.content, c.model, c.finish_reason, c.usage, false),
            JobOutcome::Cancelled { partial, model } => {
                (partial, model, Some("cancelled".to_owned()), None, true)
            }
            JobOutcome::Failed(e) => return Ending::Abort(e.into()),
        };
        let mut metadata = serde_json::json!({
            "generation_id": generation.id,
            "provider": provider,
            "finish_reason": finish_reason,
        });
        if let Some(usage) = usage {
            metadata["usage"] = serde_json::json!(usage);
        }
        if incomplete {
            metadata["incomplete"] = serde_json::Value::Bool(true);
        }
        let msg = CompleteGeneration {
            user,
            generation: generation.id,
            branch: generation.branch,
            parent: generation.reply_to,
            content: Arc::from(content),
            model: Arc::from(model),
            metadata: Arc::new(metadata),
            idempotency_key: job.idempotency_key.clone(),
        };
        Ending::Store {
            msg,
            usage,
            cancelled: incomplete,
        }
    }

    /// Stores a reply (complete, or partial and marked incomplete when cancelled).
    async fn store_reply(
        &self,
        chat: ChatId,
        job: &GenerationJob,
        msg: CompleteGeneration,
        usage: Option<Usage>,
        cancelled: bool,
    ) -> Result<StoredReply, ChatError> {
        let generation = &job.generation;
        let stored = match self.call(chat, msg).await {
            Ok(applied) => self.settle(applied).await,
            Err(e) => Err(e),
        };
        // Normally released by the actor with the append; this covers a chat that is gone.
        self.inner
            .rt
            .generations
            .release(generation.id, chat, generation.branch);
        Ok(StoredReply {
            message: stored?,
            usage,
            cancelled,
        })
    }

    /// Waits for a change's commit in durable mode; returns at once in buffered mode.
    async fn settle<T>(&self, applied: Applied<T>) -> Result<T, ChatError> {
        if self.inner.rt.writer.ack_mode == AckMode::Durable {
            applied.commit.await.map_err(commit_error)?;
        }
        Ok(applied.value)
    }

    /// The resident actor of a chat, activated from the stores if needed.
    /// The chat's actor: this thread's hot handle (`hot`), else the cache's, else a new one.
    async fn handle(&self, chat: ChatId) -> Result<ChatHandle, ChatError> {
        let Inner { id, refresh, .. } = *self.inner;
        if let Some(handle) = hot::get(id, chat, refresh) {
            return Ok(handle);
        }
        let handle = match self.inner.cache.get(&chat).await {
            Some(handle) => handle,
            None => {
                let this = self.clone();
                self.inner
                    .cache
                    .try_get_with(chat, async move { this.activate(chat).await })
                    .await
                    .map_err(|e: Arc<ChatError>| (*e).clone())?
            }
        };
        hot::put(id, chat, &handle);
        Ok(handle)
    }

    async fn activate(&self, chat: ChatId) -> Result<ChatHandle, ChatError> {
        self.wait_gone(chat).await;
        if self.inner.rt.live.take_unflushed(chat) {
            // What its last actor queued may not be stored yet: load after it is.
            self.inner.rt.writer.barrier().await;
        }
        let started = std::time::Instant::now();
        let stats = &self.inner.stats;
        let state = load_chat(&self.inner.rt, chat)
            .await
            .inspect_err(|_| stats.activation_failures.inc())?
            .ok_or(ChatError::ChatNotFound)?;
        let handle = self.spawn(chat, state);
        stats.activations.inc();
        stats
            .activation_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(handle)
    }

    /// Waits until no actor of this chat is alive (the previous one has flushed and stopped).
    async fn wait_gone(&self, chat: ChatId) {
        self.inner
            .rt
            .live
            .until(|live| !live.contains_key(&chat))
            .await;
    }

    /// Removes a stopped actor's handle (unless a newer actor already replaced it).
    async fn forget(&self, chat: ChatId, instance: u64) {
        self.inner
            .cache
            .entry(chat)
            .and_compute_with(|entry| async move {
                match entry {
                    Some(e) if e.value().0.instance == instance => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
    }

    fn spawn(&self, chat: ChatId, state: ChatState) -> ChatHandle {
        let instance = self.inner.next_instance.fetch_add(1, Ordering::Relaxed);
        let birth = self.inner.rt.live.born(chat, instance);
        let rt = self.inner.rt.clone();
        // What `Actor::start_in_arbiter` does, but with the address known before the actor is
        // built: the actor keeps its handle (address, instance and probe in one allocation).
        // The registry bounds each mailbox itself (see `ChatHandle::ask`); actix's own bound
        // parks senders instead of refusing, so the channel has none (0 = unbounded).
        let (tx, rx) = actix::dev::channel::channel(0);
        let handle = ChatHandle(Arc::new(HandleInner {
            addr: Addr::new(tx),
            instance,
            probe: ActorProbe::new(state.row.owner, &state.tree),
        }));
        let own = handle.clone();
        let local = match self.inner.config.placement {
            Placement::Local => Arbiter::try_current(),
            Placement::Spread => None,
        };
        let arbiter = local.unwrap_or_else(|| {
            self.inner.arbiters[arbiter_for(chat, self.inner.arbiters.len())].clone()
        });
        arbiter.spawn_fn(move || {
            let ctx = actix::Context::with_receiver(rx);
            let actor = ChatActor::new(state, rt, birth, own);
            actix::spawn(ctx.into_future(actor));
        });
        handle
    }
}

/// A started reply until it is stored or dropped: the drive task's state, in a value of its own
/// so that a task dropped with its thread hands what is left to the registry's arbiter for the
/// chat.
///
/// The task runs on the thread of the chat's actor, where storing the reply is a call on one
/// thread. With `Placement::Local` that is an HTTP worker's, which stops before the shutdown
/// stores the replies it cut short; the task then goes with it, and `Drop` starts the rest on
/// the registry's arbiter. Each step can be taken again there: the commit and the outcome are
/// awaited through handles that outlive the task, and storing a reply that is stored already
/// answers with it (`ChatCore::complete_generation`).
struct Drive {
    chats: Chats,
    user: UserId,
    chat: ChatId,
    job: GenerationJob,
    provider: String,
    step: Step,
    /// Handed over once already: dropped again, it ends the generation unstored.
    handed_over: bool,
}

enum Step {
    /// Waiting for the question's commit (durable acks) and the model's outcome.
    Waiting {
        question: Option<CommitTicket>,
        outcome: tokio::sync::oneshot::Receiver<JobOutcome>,
    },
    /// The outcome is known.
    Ending(Ending),
    Done,
}

enum Ending {
    Store {
        msg: CompleteGeneration,
        usage: Option<Usage>,
        cancelled: bool,
    },
    /// Nothing to store (the question's commit or the model call failed): free the branch.
    Abort(ChatError),
}

impl Drive {
    async fn run(mut self) {
        if let Step::Waiting { question, outcome } = &mut self.step {
            let question = match question {
                Some(commit) => commit.clone().await.map_err(commit_error),
                None => Ok(()),
            };
            if question.is_err() {
                self.job.generation.cancel();
            }
            let outcome = outcome.await.unwrap_or_else(|_| {
                JobOutcome::Failed(crate::ports::LlmError::upstream(
                    None,
                    "the model provider task panicked",
                ))
            });
            let ending = match question {
                Ok(()) => self
                    .chats
                    .ending(self.user, &self.job, &self.provider, outcome),
                Err(e) => Ending::Abort(e),
            };
            self.step = Step::Ending(ending);
        }
        let Step::Ending(ending) = &self.step else {
            return;
        };
        let (chats, chat, job) = (&self.chats, self.chat, &self.job);
        let ended = match ending {
            Ending::Store {
                msg,
                usage,
                cancelled,
            } => {
                chats
                    .store_reply(chat, job, msg.clone(), *usage, *cancelled)
                    .await
            }
            Ending::Abort(e) => {
                chats.abort(self.user, chat, job).await;
                Err(e.clone())
            }
        };
        self.step = Step::Done;
        self.job.generation.finish(ended);
        self.chats
            .inner
            .rt
            .generations
            .ended(self.job.generation.id);
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        let step = std::mem::replace(&mut self.step, Step::Done);
        if matches!(step, Step::Done) {
            return;
        }
        let generation = &self.job.generation;
        if !self.handed_over {
            tracing::debug!(generation = %generation.id, "a reply's thread stopped; storing it elsewhere");
            let rest = Drive {
                chats: self.chats.clone(),
                user: self.user,
                chat: self.chat,
                job: self.job.clone(),
                provider: std::mem::take(&mut self.provider),
                step,
                handed_over: true,
            };
            // Refused (the registry is stopping too), `rest` ends the generation as it drops.
            self.chats.own_arbiter(self.chat).spawn(rest.run());
            return;
        }
        tracing::warn!(generation = %generation.id, "a reply could not be stored: every thread it could run on has stopped");
        let rt = &self.chats.inner.rt;
        rt.generations
            .release(generation.id, self.chat, generation.branch);
        generation.finish(Err(ChatError::StorageUnavailable));
        rt.generations.ended(generation.id);
    }
}

fn commit_error(e: WriteError) -> ChatError {
    match e {
        WriteError::StorageUnavailable | WriteError::Fenced | WriteError::Stopped => {
            ChatError::StorageUnavailable
        }
    }
}

fn reply_spec(admission: &Admission) -> ReplySpec {
    ReplySpec {
        model: Arc::from(admission.model.label()),
        context_chars: admission.context_chars(),
    }
}

fn arbiter_for(chat: ChatId, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    chat.hash(&mut h);
    (h.finish() % n as u64) as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every resident chat pays for these: the cache entry and the actor hold the handle
    /// inline, and its allocation (address, instance and probe, with the reference counts)
    /// stays within mimalloc's 112-byte class.
    #[test]
    fn a_handle_is_one_pointer_to_one_allocation_within_its_size_class() {
        assert_eq!(std::mem::size_of::<ChatHandle>(), 8);
        assert!(std::mem::size_of::<HandleInner>() + 16 <= 112);
    }

    /// An actor that was never built (its arbiter had stopped) must not leave an entry behind:
    /// the chat's next activation, and shutdown, would wait for it forever.
    #[actix_rt::test]
    async fn an_unclaimed_birth_leaves_and_wakes_whoever_waits() {
        let liveness = Arc::new(Liveness::default());
        let chat = ChatId::new();
        let birth = liveness.born(chat, 1);
        let waiter = {
            let liveness = liveness.clone();
            actix_rt::spawn(async move { liveness.until(|live| !live.contains_key(&chat)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "waited past a live entry");
        drop(birth);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();

        // A claimed entry stays until its actor goes, and only its own instance removes it.
        liveness.born(chat, 2).claim();
        assert!(liveness.live.lock().unwrap().contains_key(&chat));
        liveness.gone(chat, 3, true);
        assert!(liveness.live.lock().unwrap().contains_key(&chat));
        liveness.gone(chat, 2, true);
        assert!(liveness.live.lock().unwrap().is_empty());
        assert!(
            !liveness.take_unflushed(chat),
            "an unclaimed birth queued nothing"
        );
    }

    /// An actor dropped without its final flush marks its chat, once, for the next activation.
    #[test]
    fn an_actor_gone_unflushed_is_remembered_until_its_chat_activates() {
        let liveness = Arc::new(Liveness::default());
        let (chat, other) = (ChatId::new(), ChatId::new());
        liveness.born(chat, 1).claim();
        liveness.born(other, 2).claim();
        liveness.gone(chat, 1, false);
        liveness.gone(other, 2, true);
        assert!(liveness.live.lock().unwrap().is_empty());
        assert!(!liveness.take_unflushed(other));
        assert!(liveness.take_unflushed(chat));
        assert!(!liveness.take_unflushed(chat), "taken once");
    }
}
