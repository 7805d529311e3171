//! Seed 004 (`../shared/seeds/004_*.txt`): signup, login by username, me, rooms, and
//! `POST /chat/{room_id}` answering with the stored message and the AI's, in the README's
//! `{"message", "data"}` envelope. Replies come from the offline `echo` provider.

#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

fn assert_message(m: &Value, room: &str, kind: &str) {
    assert!(is_uuid(&m["id"]), "{m}");
    assert!(m["m_id"].is_string());
    assert!(m["content"].is_string());
    assert_eq!(m["room_id"], room);
    assert_eq!(m["message_type"], kind);
    assert!(is_time(&m["created_at"]));
}

#[actix_web::test]
async fn readme_examples_in_order() {
    let app = spawn_app().await;

    // 1. User Registration.
    let res = app.post_anon("/auth/signup", json!({"username": "john_doe", "email": "john@example.com", "password": "securepassword123"})).await;
    let signup = json_with(res, StatusCode::OK).await;
    assert_eq!(signup["message"], "User created successfully");
    let user_json = &signup["data"]["user"];
    assert!(is_uuid(&user_json["id"]));
    assert_eq!(user_json["username"], "john_doe");
    assert_eq!(user_json["email"], "john@example.com");
    assert!(is_time(&user_json["created_at"]));

    // 2. User Login (by username).
    let res = app
        .post_anon(
            "/auth/login",
            json!({"username": "john_doe", "password": "securepassword123"}),
        )
        .await;
    let login = json_with(res, StatusCode::OK).await;
    assert!(login["access_token"].is_string());
    assert_eq!(login["token_type"], "bearer");
    assert_eq!(login["user"]["username"], "john_doe");
    assert_eq!(login["user"]["id"], user_json["id"]);
    let user = User::from_session(&login);
    let res = app.get(&user, "/auth/me").await;
    assert_eq!(
        json_with(res, StatusCode::OK).await["email"],
        "john@example.com"
    );

    // 3. Create Chat Room.
    let res = app
        .post(
            &user,
            "/rooms/",
            json!({"name": "General Discussion", "description": "A place for general conversations"}),
        )
        .await;
    let created = json_with(res, StatusCode::OK).await;
    assert_eq!(created["message"], "Room created successfully");
    let room = &created["data"]["room"];
    assert!(is_uuid(&room["id"]));
    assert_eq!(room["name"], "General Discussion");
    assert_eq!(room["description"], "A place for general conversations");
    assert_eq!(room["created_by"], user.id.as_str());
    assert!(is_time(&room["created_at"]));
    assert_eq!(room["message_count"], 0);
    let room_id = room["id"].as_str().unwrap().to_owned();

    // 4. Send Message (AI Integration).
    let res = app
        .post(
            &user,
            &format!("/chat/{room_id}"),
            json!({"content": "Hello! Can you explain quantum computing?"}),
        )
        .await;
    let sent = json_with(res, StatusCode::OK).await;
    assert_eq!(sent["message"], "Messages sent successfully");
    let mine = &sent["data"]["messages"]["user_message"];
    let ai = &sent["data"]["messages"]["ai_message"];
    assert_message(mine, &room_id, "user");
    assert_eq!(mine["content"], "Hello! Can you explain quantum computing?");
    assert_eq!(mine["user_id"], user.id.as_str());
    assert_eq!(mine["username"], "john_doe");
    assert_message(ai, &room_id, "ai");
    assert_eq!(ai["user_id"], Value::Null);
    assert_eq!(ai["username"], "AI Assistant");
    assert!(!ai["content"].as_str().unwrap().is_empty());

    // 5. Get Room with Messages.
    let res = app.get(&user, &format!("/rooms/{room_id}")).await;
    let got = json_with(res, StatusCode::OK).await;
    assert_eq!(got["id"], room_id.as_str());
    assert_eq!(got["name"], "General Discussion");
    assert_eq!(got["description"], "A place for general conversations");
    assert_eq!(got["created_by"], user.id.as_str());
    assert_eq!(got["message_count"], 2);
    let messages = got["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["id"], mine["id"]);
    assert_eq!(messages[1]["id"], ai["id"]);

    // Get all rooms.
    let res = app.get(&user, "/rooms/").await;
    let rooms = json_with(res, StatusCode::OK).await;
    assert_eq!(rooms["data"]["rooms"][0]["id"], room_id.as_str());
    assert_eq!(rooms["data"]["rooms"][0]["message_count"], 2);
    let res = app.get(&user, "/rooms").await;
    json_with(res, StatusCode::OK).await;
}

#[actix_web::test]
async fn a_room_shows_its_last_ten_messages_to_its_owner_only() {
    let app = spawn_app().await;
    let owner = app.register("owner@example.com").await;
    let other = app.register("other@example.com").await;
    let res = app.post(&owner, "/rooms/", json!({"name": "busy"})).await;
    let room_id = json_with(res, StatusCode::OK).await["data"]["room"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..6 {
        let res = app
            .post(
                &owner,
                &format!("/chat/{room_id}"),
                json!({"content": format!("m{i}")}),
            )
            .await;
        json_with(res, StatusCode::OK).await;
    }
    let res = app.get(&owner, &format!("/rooms/{room_id}")).await;
    let room = json_with(res, StatusCode::OK).await;
    assert_eq!(room["message_count"], 12);
    let messages = room["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 10);
    // The newest ten, oldest first: m1's pair is the first shown; an account without a
    // username is named by its email.
    assert_eq!(messages[0]["content"], "m1");
    assert_eq!(messages[0]["username"], "owner@example.com");
    assert_eq!(messages[9]["message_type"], "ai");

    let res = app.get(&other, &format!("/rooms/{room_id}")).await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let res = app
        .post(
            &other,
            &format!("/chat/{room_id}"),
            json!({"content": "hi"}),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let res = app.get(&other, "/rooms/").await;
    assert_eq!(
        json_with(res, StatusCode::OK).await["data"]["rooms"],
        json!([])
    );
    let res = app.post(&owner, "/rooms/", json!({"name": "  "})).await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_title").await;
    let res = app
        .post(&owner, "/rooms/", json!({"description": "no name"}))
        .await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let res = app
        .post(
            &owner,
            &format!("/chat/{room_id}"),
            json!({"content": "x".repeat(32_001)}),
        )
        .await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "content_too_long").await;
    let res = app
        .post_anon(
            "/auth/signup",
            json!({"username": "dup", "email": "owner@example.com", "password": "password123"}),
        )
        .await;
    assert_error(res, StatusCode::CONFLICT, "email_taken").await;
}
