//! Seed 000 (`../shared/seeds/000_*.txt`): a fixed bearer token (Arbor: `auth.api_tokens`, off
//! by default), chats, branch records, Q&A messages and a branch's conversation.

#![allow(clippy::unwrap_used)]

use arbor::config::Secret;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const TOKEN: &str = "supersecrettoken";

async fn app_with_token() -> TestApp {
    spawn_with(|s| {
        s.auth
            .api_tokens
            .insert("service@example.com".into(), Secret::new(TOKEN.into()));
    })
    .await
}

fn service() -> User {
    User {
        token: TOKEN.into(),
        id: String::new(),
    }
}

#[actix_web::test]
async fn readme_flow_with_the_fixed_token() {
    let app = app_with_token().await;
    let svc = service();

    // The README's sample: POST /api/v1/chats/create-chat {"title": "My first chat"}.
    let res = app
        .post(
            &svc,
            "/api/v1/chats/create-chat",
            json!({"title": "My first chat"}),
        )
        .await;
    let chat = json_with(res, StatusCode::OK).await;
    assert!(is_uuid(&chat["chat_id"]));
    assert_eq!(chat["title"], "My first chat");
    assert!(is_time(&chat["created_at"]));
    let chat_id = chat["chat_id"].as_str().unwrap().to_owned();

    // A branch record before any message: an empty branch, a second conversation in the chat.
    let res = app
        .post(
            &svc,
            "/api/v1/chats/create-conversation",
            json!({"chat_id": chat_id, "name": "second topic"}),
        )
        .await;
    let record = json_with(res, StatusCode::OK).await;
    assert!(is_uuid(&record["branch_id"]));
    assert_eq!(record["chat_id"], chat_id.as_str());
    assert_eq!(record["created_from_message_index"], Value::Null);
    let record_id = record["branch_id"].as_str().unwrap().to_owned();

    // Q&A messages: one on the active branch, one on the branch record.
    let res = app
        .post(
            &svc,
            "/api/v1/messages/add-message",
            json!({"chat_id": chat_id, "question": "What is Arbor?", "response": "A tree of chats."}),
        )
        .await;
    let first = json_with(res, StatusCode::OK).await;
    assert_eq!(first["question"], "What is Arbor?");
    assert_eq!(first["response"], "A tree of chats.");
    assert!(is_uuid(&first["response_id"]));
    let res = app
        .post(
            &svc,
            "/api/v1/messages/add-message",
            json!({"chat_id": chat_id, "branch_id": record_id, "question": "Other topic?", "response": "Sure."}),
        )
        .await;
    json_with(res, StatusCode::OK).await;

    // Get chat messages for a branch.
    let res = app
        .get(
            &svc,
            &format!("/api/v1/messages/get-chat?chat_id={chat_id}&branch_id={record_id}"),
        )
        .await;
    let on_record = json_with(res, StatusCode::OK).await;
    assert_eq!(on_record["branch_id"], record_id.as_str());
    assert_eq!(questions(&on_record), ["Other topic?"]);
    assert_eq!(on_record["messages"][0]["response"], "Sure.");
    let res = app
        .get(
            &svc,
            &format!("/api/v1/messages/get-chat?chat_id={chat_id}"),
        )
        .await;
    assert_eq!(
        questions(&json_with(res, StatusCode::OK).await),
        ["What is Arbor?"]
    );

    // A new branch from a response.
    let res = app
        .post(
            &svc,
            "/api/v1/branches/create-branch",
            json!({"chat_id": chat_id, "parent_message_id": first["response_id"], "name": "deeper"}),
        )
        .await;
    let deeper = json_with(res, StatusCode::OK).await;
    assert_eq!(deeper["created_from_message_index"], 0);
    let deeper_id = deeper["branch_id"].as_str().unwrap().to_owned();
    let res = app
        .post(
            &svc,
            "/api/v1/messages/add-message",
            json!({"chat_id": chat_id, "branch_id": deeper_id, "question": "Why trees?"}),
        )
        .await;
    let unanswered = json_with(res, StatusCode::OK).await;
    assert_eq!(unanswered["response"], Value::Null);
    let res = app
        .get(
            &svc,
            &format!("/api/v1/messages/get-chat?chat_id={chat_id}&branch_id={deeper_id}"),
        )
        .await;
    assert_eq!(
        questions(&json_with(res, StatusCode::OK).await),
        ["What is Arbor?", "Why trees?"]
    );
}

#[actix_web::test]
async fn the_token_is_an_account_that_cannot_log_in_and_is_refused_when_wrong() {
    let app = app_with_token().await;
    let res = app
        .post_anon(
            "/api/v1/auth/login",
            json!({"email": "service@example.com", "password": "supersecrettoken"}),
        )
        .await;
    assert_error(res, StatusCode::UNAUTHORIZED, "invalid_credentials").await;

    let wrong = User {
        token: "supersecrettokeN".into(),
        id: String::new(),
    };
    let res = app
        .post(&wrong, "/api/v1/chats/create-chat", json!({"title": "x"}))
        .await;
    assert_error(res, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // The service account owns its chats: an ordinary user cannot read them.
    let res = app
        .post(
            &service(),
            "/api/v1/chats/create-chat",
            json!({"title": "svc"}),
        )
        .await;
    let chat_id = json_with(res, StatusCode::OK).await["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = app.register("u@example.com").await;
    let res = app
        .get(
            &user,
            &format!("/api/v1/messages/get-chat?chat_id={chat_id}"),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
}

#[actix_web::test]
async fn api_tokens_are_off_by_default_and_short_ones_are_refused() {
    let app = spawn_app().await;
    let res = app
        .post(
            &service(),
            "/api/v1/chats/create-chat",
            json!({"title": "x"}),
        )
        .await;
    assert_error(res, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path().to_path_buf());
    s.auth
        .api_tokens
        .insert("svc@example.com".into(), Secret::new("short".into()));
    let err = match arbor::Application::build(s).await {
        Ok(_) => panic!("a 5-character API token was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("16 characters"), "{err}");
}
