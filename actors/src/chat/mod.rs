//! The chat actor: the single writer of one chat's tree and active-branch pointer.
//!
//! Every handler runs synchronously against in-memory state: validate, reserve a write-behind
//! slot, mutate, hand the rows to the writer, reply with the view and a [`CommitTicket`](crate::writer::CommitTicket). Waiting
//! for the commit happens *outside* the actor (in [`crate::Chats`]), so an actor never blocks on
//! I/O and a slow store never stalls reads.
//!
//! Supervision: a panic inside a handler is caught, that request fails with `Internal`, and the
//! actor restarts itself from stored state (after the writer has flushed what it had queued)
//! while its mailbox waits. actix's `Supervisor` is not used because it restarts an actor
//! whenever any address to it is alive, which would undo deliberate eviction.

mod core;
mod handle;
mod messages;
mod state;
#[cfg(test)]
mod tests;

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use actix::prelude::*;

pub use self::core::ChatCore;
pub use self::handle::ChatHandle;
pub(crate) use self::handle::{AskError, Birth, Liveness};
pub use self::messages::*;
pub use self::state::*;
use crate::error::ChatError;
use crate::inspect::{ActorProbe, EvictReason};
use crate::model::{BranchId, UserId};
use crate::ports::Fence;

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

    /// Starts the actor of `state` on `arbiter` and returns its handle: what
    /// `Actor::start_in_arbiter` does, but with the address known before the actor is built, so
    /// the actor keeps its own handle (address, instance and probe in one allocation). The
    /// registry bounds each mailbox itself (see `ChatHandle::ask`); actix's own bound parks
    /// senders instead of refusing, so the channel has none (0 = unbounded).
    pub(crate) fn start_on(
        arbiter: &ArbiterHandle,
        state: ChatState,
        rt: Arc<ChatRuntime>,
        birth: Birth,
        instance: u64,
        fence: Option<Fence>,
    ) -> ChatHandle {
        let (tx, rx) = actix::dev::channel::channel(0);
        let handle = ChatHandle::new(
            Addr::new(tx),
            instance,
            ActorProbe::new(state.row.owner, &state.tree, fence),
        );
        let own = handle.clone();
        arbiter.spawn_fn(move || {
            let ctx = actix::Context::with_receiver(rx);
            let actor = ChatActor::new(state, rt, birth, own);
            actix::spawn(ctx.into_future(actor));
        });
        handle
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

    /// Stops once everything the writer holds is flushed (this chat's writes among it); the
    /// mailbox waits meanwhile.
    fn flush_and_stop(&mut self, ctx: &mut Context<Self>) {
        let barrier = self.core.rt.writer.barrier();
        ctx.wait(barrier.into_actor(self).map(|_, act, ctx| {
            act.core.handle.probe().mark_flushed();
            ctx.stop();
        }));
    }

    /// Replaces the in-memory state with the stored one, once everything queued is flushed.
    /// The mailbox waits meanwhile. In cluster mode only under the same shard lease as before:
    /// otherwise the actor stops, and the chat activates anew wherever its lease is.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        let rt = self.core.rt.clone();
        let id = self.core.state.tree.chat();
        let fence = self.core.handle.probe().fence();
        let fut = async move {
            rt.writer.barrier().await;
            if rt.fence(id)? != fence {
                return Err(ChatError::Moved);
            }
            load_chat(&rt, id).await
        };
        ctx.wait(fut.into_actor(self).map(|loaded, act, ctx| match loaded {
            Ok(Some((state, _orphans))) => {
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
        self.flush_and_stop(ctx);
    }
}

impl Handler<WriteFailed> for ChatActor {
    type Result = ();

    fn handle(&mut self, msg: WriteFailed, ctx: &mut Self::Context) {
        if msg.generation < self.core.generation {
            return; // Already reloaded past that failure.
        }
        if msg.moved {
            tracing::info!(chat = %self.core.state.tree.chat(), "this chat's shard lease moved on; stopping its actor");
            self.core.generation = next_generation();
            self.core
                .handle
                .probe()
                .set_evict_reason(EvictReason::Moved);
            self.flush_and_stop(ctx);
            return;
        }
        tracing::warn!(chat = %self.core.state.tree.chat(), "a write of this chat failed; reloading it from the store");
        self.core.generation = next_generation();
        self.reload(ctx);
    }
}

/// Told to a chat actor whose writes failed: reload from the store, or stop when they were
/// refused because the chat's shard lease `moved` on.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct WriteFailed {
    pub generation: u64,
    pub moved: bool,
}
