#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// 64 clients append to one chat at once: every message lands exactly once, in one chain.
#[actix_web::test]
async fn sixty_four_concurrent_writers_on_one_chat() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "busy").await);
    const CLIENTS: usize = 64;
    const EACH: usize = 5;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = app.client.clone();
        let url = app.url(&format!("/api/v1/chats/{chat}/messages"));
        let token = u.token.clone();
        tasks.push(actix_web::rt::spawn(async move {
            for i in 0..EACH {
                let res = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(
                        &json!({"content": format!("c{c}-m{i}"), "response": format!("a{c}-m{i}")}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::CREATED);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let tree = app.tree(&u, &chat).await;
    let nodes = tree["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), CLIENTS * EACH * 2);
    let contents: HashSet<&str> = nodes
        .iter()
        .map(|n| n["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents.len(),
        CLIENTS * EACH * 2,
        "a message is duplicated"
    );
    // One linear chain: one root, every node has at most one child, each answer follows its question.
    assert_eq!(tree["root_ids"].as_array().unwrap().len(), 1);
    let by_id: std::collections::HashMap<&str, &Value> = nodes
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    for n in nodes {
        assert!(n["children"].as_array().unwrap().len() <= 1);
        if n["role"] == "assistant" {
            let parent = by_id[n["parent_id"].as_str().unwrap()];
            assert_eq!(
                parent["content"].as_str().unwrap().replacen('c', "a", 1),
                n["content"].as_str().unwrap()
            );
        }
    }
    // The whole path (every page), not just its first 200 messages.
    assert_eq!(app.path(&u, &chat, None).await.len(), CLIENTS * EACH * 2);

    // And the same is what was stored.
    let chat_id = chat.parse().unwrap();
    app.chats.evict(chat_id).await;
    assert_eq!(app.tree(&u, &chat).await, tree);
}

/// A chat's mailbox is bounded: past it, clients get 503 `overloaded` at once (never a hang),
/// and a refused send leaves no trace.
#[actix_web::test]
async fn a_full_mailbox_answers_503_and_adds_nothing() {
    let app = spawn_with(|s| s.actors.mailbox_capacity = 1).await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "narrow").await);
    let mut tasks = Vec::new();
    for c in 0..64 {
        let client = app.client.clone();
        let url = app.url(&format!("/api/v1/chats/{chat}/messages"));
        let token = u.token.clone();
        tasks.push(actix_web::rt::spawn(async move {
            let res = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({ "content": format!("m{c}") }))
                .send()
                .await
                .unwrap();
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            (c, status, body)
        }));
    }
    let mut accepted = HashSet::new();
    let mut refused = 0;
    for t in tasks {
        let (c, status, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => {
                accepted.insert(format!("m{c}"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"]["code"], "overloaded");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "64 concurrent sends never overflowed a mailbox of 1"
    );
    let stored: HashSet<String> = app.path(&u, &chat, None).await.into_iter().collect();
    assert_eq!(stored, accepted);
}

/// A write that finds the write-behind queue full waits for room (up to `queue_wait_ms`) rather
/// than failing at once, and lands when the writer catches up. The queue is made to fill for
/// real: another connection holds SQLite's write lock, so the writer's commit cannot finish.
#[actix_web::test]
async fn a_full_write_queue_makes_writes_wait_for_room() {
    let app = spawn_with(|s| {
        s.storage.metadata = arbor::config::MetadataBackend::Sqlite;
        s.storage.messages = arbor::config::MessageBackend::Sqlite;
        s.storage.ack_mode = arbor::config::AckMode::Buffered;
        s.storage.queue_capacity = 2;
        s.storage.queue_wait_ms = 10_000;
    })
    .await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "waits").await);
    app.say(&u, &chat, "before").await;
    app.chats.runtime().writer.barrier().await;

    use sqlx::Connection;
    let db = app.settings.sqlite_path();
    let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    // The writer takes the first send into a batch it cannot commit; the next two fill the
    // queue behind it.
    for n in 0..3 {
        app.say(&u, &chat, &format!("queued {n}")).await;
    }
    let waiting = {
        let client = app.client.clone();
        let url = app.url(&format!("/api/v1/chats/{chat}/messages"));
        let token = u.token.clone();
        actix_web::rt::spawn(async move {
            client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({ "content": "waited" }))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a write into a full queue was answered at once"
    );
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    assert_eq!(waiting.await.unwrap(), StatusCode::CREATED);
    assert_eq!(
        app.path(&u, &chat, None).await,
        ["before", "queued 0", "queued 1", "queued 2", "waited"]
    );
}
