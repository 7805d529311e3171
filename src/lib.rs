//! The Arbor server: HTTP API, configuration, telemetry, authentication, storage adapters and
//! model providers. The conversation model and the actors live in the `arbor-actors` crate.
//!
//! - [`startup`]: wires stores, writer, chat registry and HTTP server into an [`Application`].
//! - [`api`]: one handler per endpoint, the error type, OpenAPI docs.
//! - [`storage`]: implementations of the store ports (SQLite).
//! - [`auth`]: accounts, bcrypt, JWT and the `AuthUser` extractor.
//! - [`metrics`]: the Prometheus registry, scrape-time gauges and the admin stats sampler.
//! - [`lifecycle`]: start time, draining flag and the shutdown signal.
//! - [`config`], [`telemetry`], [`domain`] (input newtypes), [`llm`] (providers).

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
pub mod formats;
pub mod lifecycle;
pub mod llm;
pub mod membership;
pub mod metrics;
pub mod quota;
pub mod rate_limit;
pub mod startup;
pub mod storage;
pub mod telemetry;

pub use startup::Application;
