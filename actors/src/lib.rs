//! Arbor's core, free of HTTP and database drivers.
//!
//! - [`model`]: ids, stored rows, and the small types every layer shares.
//! - [`tree`]: the branching conversation model — plain data, pure functions.
//! - [`writer`]: the write-behind writer that batches every chat's changes into group commits;
//!   it knows the actor a write comes from only as a [`writer::WriteOwner`].
//! - [`chat`]: the chat actor, single writer of one chat's tree; its messages, its state, and
//!   the [`chat::ChatHandle`] callers hold.
//! - [`registry`]: [`Chats`], the facade every caller uses: it activates, bounds, evicts and
//!   routes to chat actors (`registry::resident`) and drives replies (`registry::replies`).
//! - [`llm`]: the pool of LLM worker actors per provider (queue, retries, circuit breaker).
//! - [`generation`]: replies in progress, their event logs (stream, resume) and branch locks.
//! - [`ports`]: the traits storage and model providers implement (in the server crate).
//! - [`views`]: the read models handlers serialize (the read path's page is written as JSON by
//!   the chat's actor, `json`).
//! - [`inspect`]: what operators see of resident actors, read without messaging them.
//! - [`metrics`]: the Prometheus instruments components record into (the server exports them).
//!
//! Dependencies run one way: `registry` → `chat` → `writer`, `tree`, `generation` → `model`;
//! nothing points back (shared/tools/module_cycles.py finds no import cycle).
//!
//! A request flows: handler → [`Chats`] → chat actor (validate, apply in memory, queue rows) →
//! writer (batch, commit) → the handler's response, after the commit in `durable` mode.

pub mod chat;
pub mod error;
pub mod generation;
pub mod inspect;
mod json;
pub mod llm;
pub mod metrics;
pub mod model;
mod pages;
pub mod portable;
pub mod ports;
pub mod registry;
mod rfc3339;
pub mod tree;
pub mod views;
pub mod writer;

pub use error::ChatError;
pub use registry::{
    Chats, EditRequest, Edited, Placement, Regenerated, RegistryConfig, SendRequest, Sent,
};
