//! Opt-in end-to-end test against a real language model served by `scripts/local-llm.sh start`
//! (SmolLM2-135M via llama.cpp). Not part of the default run:
//!
//! ```sh
//! scripts/local-llm.sh start
//! cargo nextest run --workspace --run-ignored only -E 'test(local_model)'
//! ```
//!
//! `LOCAL_LLM_URL` overrides the API root (default `http://127.0.0.1:8089/v1`).

#![allow(clippy::unwrap_used)]

use arbor::config::ProviderSettings;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::llm::Events;

#[actix_web::test]
#[ignore = "needs a local model: scripts/local-llm.sh start"]
async fn local_model_streams_and_stores_a_real_reply() {
    let url = std::env::var("LOCAL_LLM_URL").unwrap_or_else(|_| "http://127.0.0.1:8089/v1".into());
    let app = spawn_with(|s| {
        s.llm.default_model = "local".into();
        s.llm.providers.insert(
            "local".into(),
            ProviderSettings {
                base_url: url,
                default_model: "smollm2".into(),
                max_tokens: 24,
                max_concurrent: 1,
                timeout_secs: 120,
                ..ProviderSettings::default()
            },
        );
    })
    .await;
    let u = app.register("local@example.com").await;
    let chat = id(&app.create_chat(&u, "local").await);
    let messages = format!("/api/v1/chats/{chat}/messages");

    let res = app
        .post(
            &u,
            &messages,
            json!({"content": "Name one colour.", "reply": true, "stream": true}),
        )
        .await;
    let events = Events::new(res).rest().await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "assistant_message", "{:?}", last.data);
    let streamed: String = events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["content"].as_str().unwrap())
        .collect();
    let reply = &last.data["message"];
    assert!(!streamed.is_empty());
    assert_eq!(reply["content"], streamed.as_str());
    assert_eq!(reply["metadata"]["provider"], "local");

    // And non-streamed, on top of the first exchange.
    let res = app
        .post(
            &u,
            &messages,
            json!({"content": "And another.", "reply": true}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let sent: Value = res.json().await.unwrap();
    assert!(!sent["messages"][1]["content"].as_str().unwrap().is_empty());
    assert_eq!(app.path(&u, &chat, None).await.len(), 4);
}
