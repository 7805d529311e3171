#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// Another user's chat does not exist for you, on every endpoint, and probing it changes nothing.
#[actix_web::test]
async fn other_users_get_404_everywhere() {
    let app = spawn_app().await;
    let owner = app.register("owner@example.com").await;
    let other = app.register("other@example.com").await;
    let chat_json = app.create_chat(&owner, "private").await;
    let chat = id(&chat_json);
    let branch = chat_json["active_branch_id"].as_str().unwrap().to_owned();
    let m = app.say(&owner, &chat, "secret").await["messages"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.tree(&owner, &chat).await;

    let c = format!("/api/v1/chats/{chat}");
    let cases = vec![
        app.get(&other, &c).await,
        app.patch(&other, &c, json!({"title": "pwned"})).await,
        app.get(&other, &format!("{c}/messages")).await,
        app.post(&other, &format!("{c}/messages"), json!({"content": "x"}))
            .await,
        app.get(&other, &format!("{c}/messages/{m}")).await,
        app.post(
            &other,
            &format!("{c}/messages/{m}/edit"),
            json!({"content": "x"}),
        )
        .await,
        app.get(&other, &format!("{c}/tree")).await,
        app.get(&other, &format!("{c}/branches")).await,
        app.post(
            &other,
            &format!("{c}/branches"),
            json!({"message_index": 0}),
        )
        .await,
        app.get(&other, &format!("{c}/branches/{branch}")).await,
        app.patch(
            &other,
            &format!("{c}/branches/{branch}"),
            json!({"name": "x"}),
        )
        .await,
        app.delete(&other, &format!("{c}/branches/{branch}")).await,
        app.put(
            &other,
            &format!("{c}/active-branch"),
            json!({"branch_id": branch}),
        )
        .await,
        app.delete(&other, &c).await,
    ];
    for res in cases {
        assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    }
    let listed: serde_json::Value = app.get(&other, "/api/v1/chats").await.json().await.unwrap();
    assert!(listed["chats"].as_array().unwrap().is_empty());
    assert_eq!(app.tree(&owner, &chat).await, before);
}
