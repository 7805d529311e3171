//! Crash safety and reactivation on the backend under test: the real `arbor` binary is killed
//! with SIGKILL mid-load and restarted; a long chat is evicted and reactivated.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor::config::AckMode;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::binary::{free_port, Server};
use crate::helpers::*;

async fn send(client: &reqwest::Client, url: String, token: &str, body: Value) -> Option<Value> {
    let res = client
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .ok()?;
    if res.status().is_success() {
        res.json().await.ok()
    } else {
        None
    }
}

/// Clients write Q&A pairs and forks to their chats in durable mode; the server is killed with
/// SIGKILL in the middle. After a restart every acknowledged message is stored exactly once, on
/// the path of some branch, and every branch head is a stored message.
#[actix_web::test]
async fn a_kill_9_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path().join("data"));
    s.server.port = free_port();
    s.storage.ack_mode = AckMode::Durable;
    let server = Server::start(&s, dir.path()).await;
    let client = crate::helpers::test_client();
    let api = format!("{}/api/v1", server.base);
    let token = send(
        &client,
        format!("{api}/auth/register"),
        "",
        json!({"email": "k@example.com", "password": "password123"}),
    )
    .await
    .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut chats = Vec::new();
    for i in 0..6 {
        let chat = send(
            &client,
            format!("{api}/chats"),
            &token,
            json!({"title": format!("chat {i}")}),
        )
        .await
        .unwrap();
        chats.push(id(&chat));
    }
    // What the server acknowledged, per chat.
    let acked: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let mut writers = Vec::new();
    for chat in chats.clone() {
        let (client, api, token, acked) =
            (client.clone(), api.clone(), token.clone(), acked.clone());
        writers.push(actix_web::rt::spawn(async move {
            for n in 0.. {
                let (q, a) = (format!("{chat} q{n}"), format!("{chat} a{n}"));
                let url = format!("{api}/chats/{chat}/messages");
                let Some(_) =
                    send(&client, url, &token, json!({"content": q, "response": a})).await
                else {
                    break; // the server is gone
                };
                acked
                    .lock()
                    .unwrap()
                    .entry(chat.clone())
                    .or_default()
                    .extend([q, a]);
                if n % 7 == 6 {
                    let url = format!("{api}/chats/{chat}/branches");
                    let fork = json!({"message_index": n % 5, "activate": true});
                    if send(&client, url, &token, fork).await.is_none() {
                        break;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    for w in writers {
        w.await.unwrap();
    }

    let server = Server::start(&s, dir.path()).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.values().map(Vec::len).sum::<usize>() > 50,
        "too little load to mean anything"
    );
    for chat in &chats {
        let res = client
            .get(format!("{api}/chats/{chat}/tree"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let tree: Value = res.json().await.unwrap();
        let nodes = tree["nodes"].as_array().unwrap();
        let by_id: HashMap<&str, &Value> = nodes
            .iter()
            .map(|n| (n["id"].as_str().unwrap(), n))
            .collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for n in nodes {
            *seen.entry(n["content"].as_str().unwrap()).or_default() += 1;
        }
        assert!(seen.values().all(|&c| c == 1), "a message is stored twice");
        // Every branch head is stored; collect what the branches' paths cover.
        let mut on_paths: HashSet<&str> = HashSet::new();
        for branch in tree["branches"].as_array().unwrap() {
            let mut at = branch["head_message_id"].as_str();
            while let Some(id) = at {
                let node = by_id.get(id).expect("a branch head or ancestor is missing");
                on_paths.insert(node["content"].as_str().unwrap());
                at = node["parent_id"].as_str();
            }
        }
        for content in acked.get(chat).into_iter().flatten() {
            assert_eq!(
                seen.get(content.as_str()),
                Some(&1),
                "acknowledged {content} is lost"
            );
            assert!(
                on_paths.contains(content.as_str()),
                "{content} is on no branch"
            );
        }
    }
    drop(server);
}

/// A chat of 1,000 messages on several branches comes back from the stores exactly as it was in
/// memory.
#[actix_web::test]
async fn a_1000_message_chat_reactivates_as_the_same_tree() {
    let app = spawn_app().await;
    let u = app.register("long@example.com").await;
    let chat = id(&app.create_chat(&u, "long").await);
    let url = format!("/api/v1/chats/{chat}/messages");
    for n in 0..500 {
        if n % 100 == 99 {
            let res = app
                .post(
                    &u,
                    &format!("/api/v1/chats/{chat}/branches"),
                    json!({"message_index": n, "activate": true}),
                )
                .await;
            assert_eq!(res.status(), StatusCode::CREATED);
        }
        let body = json!({"content": format!("question {n}"), "response": format!("answer {n}"),
                          "metadata": {"n": n}});
        assert_eq!(app.post(&u, &url, body).await.status(), StatusCode::CREATED);
    }
    let before = app.tree(&u, &chat).await;
    assert_eq!(before["nodes"].as_array().unwrap().len(), 1000);
    let view = app
        .get(&u, &format!("/api/v1/chats/{chat}"))
        .await
        .text()
        .await
        .unwrap();

    app.chats.evict(chat.parse().unwrap()).await;
    assert_eq!(app.tree(&u, &chat).await, before);
    let again = app
        .get(&u, &format!("/api/v1/chats/{chat}"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(again, view);
}
