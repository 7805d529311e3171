//! Seed 001 (`../shared/seeds/001_*.txt`): register, login, chat management, messages,
//! branches from a response, the active branch, conversation records.

#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[actix_web::test]
async fn readme_endpoints_in_order() {
    let app = spawn_app().await;

    // Register, then log in (as a form too: FastAPI services often take OAuth2 forms).
    let res = app
        .post_anon(
            "/api/v1/auth/register",
            json!({"username": "alice", "email": "alice@example.com", "password": "password123"}),
        )
        .await;
    let registered = json_with(res, StatusCode::CREATED).await;
    assert!(is_uuid(&registered["id"]));
    assert_eq!(registered["username"], "alice");
    assert!(registered["access_token"].is_string());
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .form(&[("username", "alice"), ("password", "password123")])
        .send()
        .await
        .unwrap();
    let login = json_with(res, StatusCode::OK).await;
    assert_eq!(login["token_type"], "bearer");
    let user = User::from_session(&login);

    // Chat management.
    let mut ids = Vec::new();
    for title in ["first", "second"] {
        let res = app
            .post(&user, "/api/v1/chats/create-chat", json!({"title": title}))
            .await;
        let chat = json_with(res, StatusCode::OK).await;
        assert_eq!(chat["title"], title);
        ids.push(chat["chat_id"].as_str().unwrap().to_owned());
    }
    let res = app.get(&user, "/api/v1/chats/get-chat").await;
    let all = json_with(res, StatusCode::OK).await;
    let titles: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["second", "first"]);
    assert!(all[0]["chat_id"] == ids[1].as_str() && is_time(&all[0]["created_at"]));
    let res = app
        .put(
            &user,
            &format!("/api/v1/chats/update-chat/{}", ids[0]),
            json!({"title": "renamed"}),
        )
        .await;
    assert_eq!(json_with(res, StatusCode::OK).await["title"], "renamed");
    let res = app
        .delete(&user, &format!("/api/v1/chats/delete-chat/{}", ids[1]))
        .await;
    let deleted = json_with(res, StatusCode::OK).await;
    assert!(deleted["message"].is_string());
    let res = app
        .get(&user, &format!("/api/v1/chats/get-chat?chat_id={}", ids[1]))
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let chat = ids[0].clone();

    // Messages, then a branch from a response, listed and made active.
    let res = app
        .post(
            &user,
            "/api/v1/messages/add-message",
            json!({"chat_id": chat, "question": "Plan a trip?", "response": "Where to?"}),
        )
        .await;
    let pair = json_with(res, StatusCode::OK).await;
    let res = app
        .post(
            &user,
            "/api/v1/messages/add-message",
            json!({"chat_id": chat, "content": "Lisbon."}),
        )
        .await;
    let single = json_with(res, StatusCode::OK).await;
    assert_eq!(single["question"], "Lisbon.");
    assert_eq!(single["messages"].as_array().unwrap().len(), 1);
    let res = app
        .post(
            &user,
            "/api/v1/branches/create-branch",
            json!({"chat_id": chat, "response_id": pair["response_id"], "name": "Porto instead"}),
        )
        .await;
    let branch = json_with(res, StatusCode::OK).await;
    assert_eq!(branch["created_from_message_index"], 0);
    assert_eq!(branch["is_active"], false);
    let branch_id = branch["branch_id"].as_str().unwrap().to_owned();
    let res = app
        .get(
            &user,
            &format!("/api/v1/branches/get-branches?chat_id={chat}"),
        )
        .await;
    let listed = json_with(res, StatusCode::OK).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "Porto instead");
    let res = app
        .put(
            &user,
            "/api/v1/branches/set-active-branch",
            json!({"chat_id": chat, "branch_id": branch_id}),
        )
        .await;
    assert_eq!(
        json_with(res, StatusCode::OK).await["branch_id"],
        branch_id.as_str()
    );

    // A conversation record goes to the active branch, which is now the new one.
    for path in ["/api/v1/conversations/", "/api/v1/conversations"] {
        let res = app
            .post(
                &user,
                path,
                json!({"chat_id": chat, "question": "Porto, then.", "response": "Great choice."}),
            )
            .await;
        json_with(res, StatusCode::OK).await;
    }
    assert_eq!(
        app.path(&user, &chat, Some(&branch_id)).await,
        [
            "Plan a trip?",
            "Where to?",
            "Porto, then.",
            "Great choice.",
            "Porto, then.",
            "Great choice."
        ]
    );
    let chat_view: Value = app
        .get(&user, &format!("/api/v1/chats/{chat}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(chat_view["active_branch_id"], branch_id.as_str());
    // The original line still ends with the unanswered "Lisbon.".
    let main = chat_view["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] != branch_id.as_str())
        .unwrap();
    assert_eq!(
        app.path(&user, &chat, main["id"].as_str()).await,
        ["Plan a trip?", "Where to?", "Lisbon."]
    );
}

#[actix_web::test]
async fn other_users_chats_stay_out_of_reach() {
    let app = spawn_app().await;
    let owner = app.register("owner@example.com").await;
    let other = app.register("other@example.com").await;
    let res = app
        .post(
            &owner,
            "/api/v1/chats/create-chat",
            json!({"title": "private"}),
        )
        .await;
    let chat = json_with(res, StatusCode::OK).await["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let res = app.get(&other, "/api/v1/chats/get-chat").await;
    assert_eq!(json_with(res, StatusCode::OK).await, json!([]));
    let res = app
        .put(
            &other,
            &format!("/api/v1/chats/update-chat/{chat}"),
            json!({"title": "mine now"}),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let res = app
        .delete(&other, &format!("/api/v1/chats/delete-chat/{chat}"))
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let res = app
        .delete(&other, "/api/v1/chats/delete-chat/not-a-uuid")
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, "invalid_id").await;
    let res = app
        .put(
            &owner,
            &format!("/api/v1/chats/update-chat/{chat}"),
            json!({"title": "x".repeat(201)}),
        )
        .await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_title").await;

    let res = app
        .get(&owner, &format!("/api/v1/chats/get-chat?chat_id={chat}"))
        .await;
    assert_eq!(json_with(res, StatusCode::OK).await["title"], "private");
}
