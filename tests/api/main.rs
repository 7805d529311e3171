//! Black-box tests: the real server on port 0, real HTTP, fresh stores per test: a SQLite file,
//! or (with `TEST_BACKEND=postgres-mongodb`, as scripts/test.sh runs it) a PostgreSQL schema
//! and a MongoDB database of its own on the shared test servers.

mod actors;
mod admin_page;
mod auth;
mod binary;
mod branches;
mod browser;
mod chats;
mod cluster;
mod concurrency;
mod contract;
mod doc_pages;
mod durability;
mod errors;
mod feedback;
mod helpers;
mod isolation;
mod llm;
mod local_model;
mod membership;
mod messages;
mod operations;
mod outage;
mod persistence;
mod portability;
mod provider;
mod rate_limits;
mod search;
mod seed_000;
mod seed_001;
mod seed_002;
mod seed_003;
mod seed_004;
mod shares;
#[macro_use]
mod stores;
mod usage;
mod writer;
