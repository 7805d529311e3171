//! Token accounting: each reply's reported usage is recorded once and summed for its user by
//! model, chat or day, on the backend under test.
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn usage(app: &TestApp, user: &User, query: &str) -> Value {
    let res = app.get(user, &format!("/api/v1/usage{query}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

#[actix_web::test]
async fn usage_is_recorded_once_per_reply_and_summed_for_its_user_alone() {
    let app = spawn_app().await;
    let u = app.register("counted@example.com").await;
    let other = app.register("other@example.com").await;
    let a = id(&app.create_chat(&u, "a").await);
    let b = id(&app.create_chat(&u, "b").await);
    for (chat, content) in [(&a, "one two three"), (&a, "four five"), (&b, "six")] {
        let res = app
            .post(
                &u,
                &format!("/api/v1/chats/{chat}/messages"),
                json!({"content": content, "reply": true, "model": "echo"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    // A message without a reply reports no usage.
    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{b}/messages"),
            json!({"content": "x", "response": "y"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);

    let by_model = usage(&app, &u, "").await;
    assert_eq!(by_model["group_by"], "model");
    let groups = by_model["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{by_model}");
    assert!(
        groups[0]["key"].as_str().unwrap().starts_with("echo/"),
        "{by_model}"
    );
    let total = &by_model["total"];
    assert_eq!(total["replies"], 3);
    let (prompt, completion) = (
        total["prompt_tokens"].as_u64().unwrap(),
        total["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 0 && completion > 0, "{total}");
    assert_eq!(total["total_tokens"].as_u64().unwrap(), prompt + completion);

    let by_chat = usage(&app, &u, "?group_by=chat").await;
    let mut replies: Vec<(String, u64)> = by_chat["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_owned(),
                g["replies"].as_u64().unwrap(),
            )
        })
        .collect();
    replies.sort();
    let mut expected = vec![(a.clone(), 2), (b.clone(), 1)];
    expected.sort();
    assert_eq!(replies, expected);

    let by_day = usage(&app, &u, "?group_by=day").await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(by_day["groups"][0]["key"], today.as_str(), "{by_day}");
    assert_eq!(by_day["groups"][0]["replies"], 3);

    // Another user's usage is theirs; a window in the future holds nothing.
    assert_eq!(usage(&app, &other, "").await["total"]["replies"], 0);
    let later = usage(
        &app,
        &u,
        "?from=2999-01-01T00:00:00Z&to=2999-02-01T00:00:00Z",
    )
    .await;
    assert_eq!(later["groups"].as_array().unwrap().len(), 0);
    let res = app.get(&u, "/api/v1/usage?group_by=week").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

/// The store records a generation once, however often it is told.
#[actix_web::test]
async fn a_generation_is_recorded_once() {
    use arbor_actors::model::{ChatId, GenerationId, UserId};
    use arbor_actors::ports::{UsageGroup, UsageRecord};

    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path().to_path_buf());
    let (stores, connections) = arbor::storage::open(&s).await.unwrap();
    let record = UsageRecord {
        generation: GenerationId::new(),
        user: UserId::new(),
        chat: ChatId::new(),
        model: "stub/model".into(),
        prompt_tokens: 7,
        completion_tokens: 5,
        at: chrono::Utc::now(),
    };
    stores.metadata.record_usage(&record).await.unwrap();
    stores.metadata.record_usage(&record).await.unwrap();
    let day = chrono::Duration::days(1);
    let sums = stores
        .metadata
        .usage(
            record.user,
            record.at - day,
            record.at + day,
            UsageGroup::Model,
        )
        .await
        .unwrap();
    assert_eq!(sums.len(), 1);
    assert_eq!(
        (
            sums[0].replies,
            sums[0].prompt_tokens,
            sums[0].completion_tokens
        ),
        (1, 7, 5)
    );
    connections.close().await;
}
