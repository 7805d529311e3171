//! Black-box tests: the real server on port 0, a fresh SQLite file per test, real HTTP.

mod actors;
mod auth;
mod branches;
mod chats;
mod concurrency;
mod errors;
mod helpers;
mod isolation;
mod llm;
mod local_model;
mod messages;
mod persistence;
mod provider;
