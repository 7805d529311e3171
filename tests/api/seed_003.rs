//! Seed 003 (`../shared/seeds/003_*.txt`): `/auth/*` at the root, `/chats` CRUD, messages,
//! `POST /chat` with a model alias, `/` and `/health`. Replies come from the offline `echo`
//! provider (the default without configured providers), a real one in `llm.rs`.

#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn readme_usage_examples_in_order() {
    let app = spawn_app().await;

    // Register.
    let res = app
        .post_anon(
            "/auth/register",
            json!({"email": "user@example.com", "password": "password123"}),
        )
        .await;
    let registered = json_with(res, StatusCode::CREATED).await;
    assert_eq!(registered["email"], "user@example.com");
    assert!(is_uuid(&registered["id"]));

    // Login (get token), by JSON; and the OAuth2 form Swagger's Authorize uses.
    let res = app
        .post_anon(
            "/auth/login",
            json!({"email": "user@example.com", "password": "password123"}),
        )
        .await;
    let login = json_with(res, StatusCode::OK).await;
    assert_eq!(login["token_type"], "bearer");
    let res = app
        .client
        .post(app.url("/auth/token"))
        .form(&[
            ("username", "user@example.com"),
            ("password", "password123"),
        ])
        .send()
        .await
        .unwrap();
    assert!(json_with(res, StatusCode::OK).await["access_token"].is_string());
    let user = User::from_session(&login);

    // Create a Chat.
    let res = app
        .post(&user, "/chats", json!({"title": "My First Chat"}))
        .await;
    let chat = json_with(res, StatusCode::OK).await;
    assert!(is_uuid(&chat["id"]));
    assert_eq!(chat["user_id"], user.id.as_str());
    assert_eq!(chat["title"], "My First Chat");
    assert!(is_time(&chat["created_at"]) && is_time(&chat["updated_at"]));
    let chat_id = chat["id"].as_str().unwrap().to_owned();

    // Send a Message, with the seed's `fast` alias (not configured here: the default model).
    let res = app
        .post(
            &user,
            "/chat",
            json!({"chat_id": chat_id, "message": "Hello, AI!", "model": "fast"}),
        )
        .await;
    let reply = json_with(res, StatusCode::OK).await;
    assert_eq!(reply["chat_id"], chat_id.as_str());
    assert!(reply["response"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(reply["user_message"]["content"], "Hello, AI!");
    assert_eq!(reply["user_message"]["role"], "user");
    assert_eq!(reply["assistant_message"]["role"], "assistant");
    assert_eq!(reply["assistant_message"]["content"], reply["response"]);
    assert!(reply["model"].as_str().unwrap().starts_with("echo"));

    // List All Chats.
    let res = app.get(&user, "/chats").await;
    let list = json_with(res, StatusCode::OK).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], chat_id.as_str());
    assert_eq!(list[0]["title"], "My First Chat");

    // The rest of the chat management endpoints.
    let res = app.get(&user, &format!("/chats/{chat_id}")).await;
    let got = json_with(res, StatusCode::OK).await;
    assert_eq!(got["messages"].as_array().unwrap().len(), 2);
    let res = app.get(&user, &format!("/chats/{chat_id}/messages")).await;
    let messages = json_with(res, StatusCode::OK).await;
    let roles: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant"]);
    assert_eq!(messages[0]["chat_id"], chat_id.as_str());
    assert!(is_uuid(&messages[0]["id"]) && is_time(&messages[0]["created_at"]));
    let res = app
        .patch(
            &user,
            &format!("/chats/{chat_id}"),
            json!({"title": "Renamed"}),
        )
        .await;
    assert_eq!(json_with(res, StatusCode::OK).await["title"], "Renamed");
    let res = app.delete(&user, &format!("/chats/{chat_id}")).await;
    json_with(res, StatusCode::OK).await;
    let res = app.get(&user, &format!("/chats/{chat_id}")).await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;

    // Other.
    let res = app.client.get(app.url("/")).send().await.unwrap();
    assert!(json_with(res, StatusCode::OK).await["message"].is_string());
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(json_with(res, StatusCode::OK).await["status"], "ok");
    let res = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[actix_web::test]
async fn a_message_without_a_chat_starts_one_and_bad_input_is_refused() {
    let app = spawn_app().await;
    let user = app.register("u@example.com").await;
    let other = app.register("o@example.com").await;

    let res = app
        .post(&user, "/chat", json!({"message": "Start something new"}))
        .await;
    let reply = json_with(res, StatusCode::OK).await;
    let chat_id = reply["chat_id"].as_str().unwrap().to_owned();
    let res = app.get(&user, &format!("/chats/{chat_id}")).await;
    assert_eq!(
        json_with(res, StatusCode::OK).await["title"],
        "Start something new"
    );

    let res = app
        .post(
            &other,
            "/chat",
            json!({"chat_id": chat_id, "message": "let me in"}),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let res = app.get(&other, &format!("/chats/{chat_id}/messages")).await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let res = app
        .post(
            &user,
            "/chat",
            json!({"chat_id": chat_id, "message": "x", "model": "nope/model"}),
        )
        .await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "unknown_model").await;
    let res = app
        .post(&user, "/chat", json!({"chat_id": chat_id, "message": ""}))
        .await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "empty_content").await;
    let res = app.get(&user, "/chats").await;
    assert_eq!(
        json_with(res, StatusCode::OK)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let res = app.client.get(app.url("/chats")).send().await.unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, "missing_token").await;
    // The refused sends stored nothing.
    let res = app.get(&user, &format!("/chats/{chat_id}/messages")).await;
    assert_eq!(
        json_with(res, StatusCode::OK)
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
