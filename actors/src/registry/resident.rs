//! Keeping chat actors resident: activation from the stores, the handle lookup (this thread's
//! hot handles, then the cache), eviction, shutdown, and what operators see of the actors.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use moka::ops::compute::Op;
use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::*;
use crate::chat::*;
use crate::error::ChatError;
use crate::inspect::{
    ActorDetail, ActorInfo, ActorPage, ActorSort, ActorTotals, EvictReason, SortOrder,
};
use crate::model::{ChatId, MessageId};
use crate::ports::Fence;

/// The registry's instruments for the operator surface.
pub struct RegistryStats {
    pub activations: IntCounter,
    /// Activations that failed (store unavailable, corrupt rows); unknown chats are not counted.
    pub activation_failures: IntCounter,
    pub activation_seconds: Histogram,
    /// By [`EvictReason`].
    pub evictions: IntCounterVec,
    /// Stored messages no branch reaches, deleted on activation.
    pub orphans: IntCounter,
    /// Feedback given, by the rated message's model and `rating` (`up`, `down`, or
    /// `withdrawn`). See [`Self::feedback_model`].
    pub feedback: IntCounterVec,
    /// The model labels `feedback` has used: at most [`FEEDBACK_MODELS`].
    feedback_models: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct model labels of `arbor_feedback_total`; later models count as `other` (a message's
/// model is whatever its provider or client reported, so it is not a bounded set).
pub const FEEDBACK_MODELS: usize = 64;

impl Default for RegistryStats {
    fn default() -> Self {
        use crate::metrics::*;
        let evictions = counter_vec(
            "arbor_chat_evictions_total",
            "Chat actors that left memory, by reason (idle, capacity, admin, deleted, shutdown, stopped, moved).",
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
            feedback: counter_vec(
                "arbor_feedback_total",
                "Feedback on assistant messages, by the message's model and the rating (up, down, withdrawn).",
                &[],
                &["model", "rating"],
            ),
            feedback_models: Default::default(),
            orphans: counter(
                "arbor_chat_orphan_messages_deleted_total",
                "Stored messages no branch reached (left by a batch whose metadata was refused or failed), deleted when their chat activated.",
                &[],
            ),
        }
    }
}

impl RegistryStats {
    /// The label a message's model takes on `arbor_feedback_total`: `none` without one, the
    /// model while fewer than [`FEEDBACK_MODELS`] are in use, `other` after.
    pub fn feedback_model<'a>(&self, model: Option<&'a str>) -> &'a str {
        let Some(model) = model else {
            return "none";
        };
        let mut seen = self
            .feedback_models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(model) {
            return model;
        }
        if seen.len() < FEEDBACK_MODELS {
            seen.insert(model.to_owned());
            return model;
        }
        "other"
    }

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
            self.orphans,
            self.feedback,
        ]
    }
}

impl Chats {
    /// Resident chat actors right now.
    pub fn resident(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// A snapshot of every resident actor (a walk over the registry; no actor is messaged).
    pub fn actors(&self) -> Vec<ActorInfo> {
        self.inner
            .cache
            .iter()
            .map(|(chat, handle)| handle.probe().snapshot(*chat))
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
            totals.add(handle.probe());
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
            info: handle.probe().snapshot(chat),
            title: state.title,
            active_branch_id: state.active_branch,
            active_branch_name: state.active_branch_name,
            version: state.version,
            generations_in_flight: generations,
        })
    }

    /// Evicts a chat now (flush, then stop), as an operator would. Returns whether it was
    /// resident; returns once the actor has flushed and stopped.
    pub async fn evict(&self, chat: ChatId) -> bool {
        let resident = self.remove(chat, EvictReason::Admin).await;
        self.wait_gone(chat).await;
        resident
    }

    /// Removes a chat's actor from the registry, recording why (the listener counts it).
    pub(super) async fn remove(&self, chat: ChatId, reason: EvictReason) -> bool {
        self.inner
            .cache
            .entry(chat)
            .and_compute_with(|entry| async move {
                match entry {
                    Some(e) => {
                        e.value().probe().set_evict_reason(reason);
                        Op::Remove
                    }
                    None => Op::Nop,
                }
            })
            .await
            .into_entry()
            .is_some()
    }

    /// Evicts every resident chat `lost` picks (their shard's lease moved away): each flushes
    /// what it queued (what the new owner fences is refused) and stops. Returns how many.
    pub async fn evict_where(&self, lost: impl Fn(ChatId) -> bool) -> usize {
        let chats: Vec<ChatId> = self
            .inner
            .cache
            .iter()
            .map(|(chat, _)| *chat)
            .filter(|chat| lost(*chat))
            .collect();
        for chat in &chats {
            self.remove(*chat, EvictReason::Moved).await;
        }
        for chat in &chats {
            self.wait_gone(*chat).await;
        }
        chats.len()
    }

    /// Stops every running generation and waits (at most 10 s) until each has stored its
    /// partial reply.
    pub async fn end_generations(&self) {
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
        self.end_generations().await;
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        self.inner.cache.invalidate_all();
        self.inner.cache.run_pending_tasks().await;
        self.inner.rt.live.until(HashMap::is_empty).await;
        self.inner.rt.writer.barrier().await;
        for arbiter in &self.inner.arbiters {
            arbiter.stop();
        }
    }

    /// The chat's actor: this thread's hot handle (`hot`), else the cache's, else one
    /// activated from the stores.
    pub(super) async fn handle(&self, chat: ChatId) -> Result<ChatHandle, ChatError> {
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

    pub(super) async fn activate(&self, chat: ChatId) -> Result<ChatHandle, ChatError> {
        self.wait_gone(chat).await;
        if self.inner.rt.live.take_unflushed(chat) {
            // What its last actor queued may not be stored yet: load after it is.
            self.inner.rt.writer.barrier().await;
        }
        // Cluster mode: only under this server's lease of the chat's shard, taken before the
        // load, so the load sees every commit made under earlier leases.
        let fence = self.inner.rt.fence(chat)?;
        let started = std::time::Instant::now();
        let stats = &self.inner.stats;
        let (state, orphans) = load_chat(&self.inner.rt, chat)
            .await
            .inspect_err(|_| stats.activation_failures.inc())?
            .ok_or(ChatError::ChatNotFound)?;
        let handle = self.spawn(chat, state, fence);
        self.collect_orphans(chat, fence, orphans);
        stats.activations.inc();
        stats
            .activation_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(handle)
    }

    /// Waits until no actor of this chat is alive (the previous one has flushed and stopped).
    pub(super) async fn wait_gone(&self, chat: ChatId) {
        self.inner
            .rt
            .live
            .until(|live| !live.contains_key(&chat))
            .await;
    }

    /// Removes a stopped actor's handle (unless a newer actor already replaced it).
    pub(super) async fn forget(&self, chat: ChatId, instance: u64) {
        self.inner
            .cache
            .entry(chat)
            .and_compute_with(|entry| async move {
                match entry {
                    Some(e) if e.value().instance() == instance => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
    }

    /// Deletes the stored messages no branch reaches (a batch whose metadata was refused or
    /// failed left them; the restore already left them out), under the chat's fence. Best
    /// effort: with the queue full they wait for the next activation.
    fn collect_orphans(&self, chat: ChatId, fence: Option<Fence>, orphans: Vec<MessageId>) {
        if orphans.is_empty() {
            return;
        }
        let Some(slot) = self.inner.rt.writer.reserve() else {
            return;
        };
        tracing::info!(%chat, messages = orphans.len(), "deleting stored messages no branch reaches");
        self.inner.stats.orphans.inc_by(orphans.len() as u64);
        drop(slot.send(crate::writer::ChatWrite {
            chat,
            generation: 0,
            fence,
            ops: vec![crate::writer::WriteOp::DeleteMessages(orphans)],
            owner: None,
        }));
    }

    pub(super) fn spawn(&self, chat: ChatId, state: ChatState, fence: Option<Fence>) -> ChatHandle {
        let instance = self.inner.next_instance.fetch_add(1, Ordering::Relaxed);
        let birth = self.inner.rt.live.born(chat, instance);
        let local = match self.inner.config.placement {
            Placement::Local => Arbiter::try_current(),
            Placement::Spread => None,
        };
        let arbiter = local.unwrap_or_else(|| {
            self.inner.arbiters[arbiter_for(chat, self.inner.arbiters.len())].clone()
        });
        ChatActor::start_on(
            &arbiter,
            state,
            self.inner.rt.clone(),
            birth,
            instance,
            fence,
        )
    }
}
