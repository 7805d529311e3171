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
    assert_eq!(
        app.path(&u, &chat, None).await.len(),
        200.min(CLIENTS * EACH * 2)
    );

    // And the same is what was stored.
    let chat_id = chat.parse().unwrap();
    app.chats.evict(chat_id).await;
    assert_eq!(app.tree(&u, &chat).await, tree);
}
