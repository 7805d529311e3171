//! A caller's handle to a chat actor, and the set of live actors that keeps activation and
//! eviction of one chat from overlapping.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tokio::sync::Notify;

use super::{ChatActor, WriteFailed};
use crate::inspect::ActorProbe;
use crate::model::ChatId;
use crate::writer::WriteOwner;

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
    pub(super) live: Mutex<HashMap<ChatId, u64>>,
    /// Chats whose last actor was dropped without its final flush (its arbiter stopped under
    /// it: an HTTP worker's, at shutdown). Their next activation waits for the writer first.
    unflushed: Mutex<HashSet<ChatId>>,
    gone: Notify,
}

impl Liveness {
    /// Enters a new actor of `chat`. Its entry goes when the actor is dropped, or when the
    /// returned `Birth` is dropped unclaimed (the actor was never built: its arbiter had stopped).
    pub(crate) fn born(self: &Arc<Self>, chat: ChatId, instance: u64) -> Birth {
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
    pub(crate) fn take_unflushed(&self, chat: ChatId) -> bool {
        self.unflushed
            .lock()
            .map(|mut unflushed| unflushed.remove(&chat))
            .unwrap_or(false)
    }

    /// Waits until `done` holds of the live set.
    pub(crate) async fn until(&self, done: impl Fn(&HashMap<ChatId, u64>) -> bool) {
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

/// A caller's reference to one chat actor. Never exposes the `Addr`. One pointer: the cache
/// entry holds it and every lookup clones it, where cloning an `Addr` allocates twice.
#[derive(Clone)]
pub struct ChatHandle(Arc<HandleInner>);

pub(super) struct HandleInner {
    pub(crate) addr: Addr<ChatActor>,
    /// This actor among the chat's successive ones: its entry in the registry's live set.
    pub(crate) instance: u64,
    /// Mailbox depth, last activity, sizes (see [`crate::inspect`]).
    pub(crate) probe: ActorProbe,
}

pub(crate) enum AskError {
    Overloaded,
    Closed,
}

impl ChatHandle {
    pub(crate) fn new(addr: Addr<ChatActor>, instance: u64, probe: ActorProbe) -> Self {
        Self(Arc::new(HandleInner {
            addr,
            instance,
            probe,
        }))
    }

    /// A handle to no running actor (its mailbox is never read), for tests of what holds
    /// handles.
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        let (tx, _rx) = actix::dev::channel::channel(0);
        let main = crate::model::Branch {
            id: crate::model::BranchId::new(),
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
            probe: ActorProbe::new(
                crate::model::UserId::new(),
                &crate::tree::Tree::new(main),
                None,
            ),
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

    /// This actor as the owner of its writes (the writer's view of it).
    pub(crate) fn write_owner(&self) -> Arc<dyn WriteOwner> {
        self.0.clone()
    }

    pub(crate) fn probe(&self) -> &ActorProbe {
        &self.0.probe
    }

    /// Sends `msg` unless `capacity` requests already wait in the actor's mailbox.
    pub(crate) async fn ask<M>(&self, msg: M, capacity: usize) -> Result<M::Result, AskError>
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

/// The writer counts a chat's pending writes in its probe (the operator surface reads them) and
/// tells its actor when one failed.
impl WriteOwner for HandleInner {
    fn pending(&self, queued: bool) {
        match queued {
            true => self.probe.pending_writes.fetch_add(1, Ordering::Relaxed),
            false => self.probe.pending_writes.fetch_sub(1, Ordering::Relaxed),
        };
    }

    fn failed(&self, generation: u64, moved: bool) {
        self.addr.do_send(WriteFailed { generation, moved });
    }
}
