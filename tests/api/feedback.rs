//! Feedback on assistant messages: set, replaced and taken back; shown in every message view;
//! kept by the stores across restarts; pruned with its message; summed per model for admins.
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const ADMIN: &str = "rater-admin@example.com";

/// A chat with one question and its generated answer; the answer's id.
async fn answered(app: &TestApp, user: &User) -> (String, String, String) {
    let chat = id(&app.create_chat(user, "rated").await);
    let res = app
        .post(
            user,
            &format!("/api/v1/chats/{chat}/messages"),
            json!({"content": "rate me", "reply": true, "model": "echo"}),
        )
        .await;
    let sent = json_with(res, StatusCode::CREATED).await;
    let question = sent["messages"][0]["id"].as_str().unwrap().to_owned();
    let answer = sent["messages"][1]["id"].as_str().unwrap().to_owned();
    assert_eq!(sent["messages"][1]["role"], "assistant", "{sent}");
    (chat, question, answer)
}

async fn message(app: &TestApp, user: &User, chat: &str, message: &str) -> Value {
    let res = app
        .get(user, &format!("/api/v1/chats/{chat}/messages/{message}"))
        .await;
    json_with(res, StatusCode::OK).await
}

async fn admin_feedback(app: &TestApp, admin: &User) -> Value {
    let res = app.get(admin, "/api/v1/admin/stats").await;
    json_with(res, StatusCode::OK).await["feedback"].clone()
}

#[actix_web::test]
async fn feedback_round_trips_through_every_view_and_the_stores() {
    let app = spawn_with(|s| s.admin.emails = vec![ADMIN.into()]).await;
    let admin = app.register(ADMIN).await;
    let u = app.register("rater@example.com").await;
    let (chat, question, answer) = answered(&app, &u).await;
    let url = format!("/api/v1/chats/{chat}/messages/{answer}/feedback");

    let body = json!({"rating": "down", "tags": [" wrong ", "wrong", "too long"], "comment": "no"});
    let res = app.put(&u, &url, body).await;
    let view = json_with(res, StatusCode::OK).await;
    assert_eq!(view["id"], answer.as_str());
    let feedback = &view["feedback"];
    assert_eq!(feedback["rating"], "down");
    assert_eq!(
        feedback["tags"],
        json!(["wrong", "too long"]),
        "trimmed, once each"
    );
    assert_eq!(feedback["comment"], "no");
    assert!(is_time(&feedback["updated_at"]), "{feedback}");

    // Every view shows it: the message, the page of the path (written by the actor), the tree.
    assert_eq!(
        message(&app, &u, &chat, &answer).await["feedback"],
        *feedback
    );
    let res = app.get(&u, &format!("/api/v1/chats/{chat}/messages")).await;
    let page = json_with(res, StatusCode::OK).await;
    assert_eq!(page["messages"][1]["feedback"], *feedback);
    assert!(page["messages"][0].get("feedback").is_none(), "{page}");
    let tree = app.tree(&u, &chat).await;
    let rated = tree["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == answer.as_str())
        .unwrap();
    assert_eq!(rated["feedback"], *feedback);

    // A new rating replaces the old; the stores keep it across a restart.
    let res = app.put(&u, &url, json!({"rating": "up"})).await;
    let up = json_with(res, StatusCode::OK).await["feedback"].clone();
    assert_eq!(
        (up["rating"].as_str(), up["tags"].as_array().unwrap().len()),
        (Some("up"), 0)
    );
    assert_eq!(up["comment"], Value::Null);
    let model = view["model"].as_str().unwrap().to_owned();
    let stats = admin_feedback(&app, &admin).await;
    assert_eq!(stats, json!([{"model": model, "up": 1, "down": 0}]));
    let metrics = app.get(&admin, "/metrics").await.text().await.unwrap();
    let series = format!(r#"arbor_feedback_total{{model="{model}",rating="up"}} 1"#);
    assert!(
        metrics.contains(&series),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("feedback"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (settings, _dir) = app.stop().await;
    let app = start(settings).await;
    assert_eq!(message(&app, &u, &chat, &answer).await["feedback"], up);

    // Taken back: gone from the views, from the stores, and from the sums.
    assert_eq!(app.delete(&u, &url).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.delete(&u, &url).await.status(), StatusCode::NO_CONTENT);
    assert!(message(&app, &u, &chat, &answer)
        .await
        .get("feedback")
        .is_none());
    assert_eq!(admin_feedback(&app, &admin).await, json!([]));
    let (settings, _dir2) = app.stop().await;
    let app = start(settings).await;
    assert!(message(&app, &u, &chat, &answer)
        .await
        .get("feedback")
        .is_none());

    // Only replies take feedback; only the owner gives it; bad input is named.
    let res = app
        .put(
            &u,
            &format!("/api/v1/chats/{chat}/messages/{question}/feedback"),
            json!({"rating": "up"}),
        )
        .await;
    assert_error(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "feedback_not_allowed",
    )
    .await;
    let other = app.register("stranger@example.com").await;
    let res = app.put(&other, &url, json!({"rating": "up"})).await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let tags: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    for bad in [
        json!({"rating": "up", "tags": tags}),
        json!({"rating": "up", "tags": [""]}),
        json!({"rating": "up", "tags": ["x".repeat(65)]}),
        json!({"rating": "up", "comment": "x".repeat(4001)}),
    ] {
        let res = app.put(&u, &url, bad).await;
        assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_feedback").await;
    }
    let res = app.put(&u, &url, json!({"rating": "meh"})).await;
    assert!(res.status().is_client_error(), "{}", res.status());
    let missing = format!(
        "/api/v1/chats/{chat}/messages/{}/feedback",
        uuid::Uuid::now_v7()
    );
    let res = app.put(&u, &missing, json!({"rating": "up"})).await;
    assert_error(res, StatusCode::NOT_FOUND, "message_not_found").await;
    assert!(message(&app, &u, &chat, &answer)
        .await
        .get("feedback")
        .is_none());
}

/// Deleting a branch prunes its messages, and their feedback goes with them.
#[actix_web::test]
async fn feedback_on_pruned_messages_goes_with_them() {
    let app = spawn_with(|s| s.admin.emails = vec![ADMIN.into()]).await;
    let admin = app.register(ADMIN).await;
    let u = app.register("pruner@example.com").await;
    let (chat, question, answer) = answered(&app, &u).await;
    // A regeneration: a second answer on a new branch, rated, as is the first.
    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/messages/{question}/regenerate"),
            json!({"model": "echo"}),
        )
        .await;
    let regenerated = json_with(res, StatusCode::CREATED).await;
    let branch = regenerated["branch"]["id"].as_str().unwrap().to_owned();
    let second = regenerated["reply"]["id"].as_str().unwrap().to_owned();
    for (message, rating) in [(&answer, "up"), (&second, "down")] {
        let url = format!("/api/v1/chats/{chat}/messages/{message}/feedback");
        let res = app.put(&u, &url, json!({"rating": rating})).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let model = message(&app, &u, &chat, &answer).await["model"].clone();
    assert_eq!(
        admin_feedback(&app, &admin).await,
        json!([{"model": model, "up": 1, "down": 1}])
    );
    let res = app
        .delete(&u, &format!("/api/v1/chats/{chat}/branches/{branch}"))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        admin_feedback(&app, &admin).await,
        json!([{"model": model, "up": 1, "down": 0}])
    );
    // Deleting the chat takes the rest.
    assert_eq!(
        app.delete(&u, &format!("/api/v1/chats/{chat}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(admin_feedback(&app, &admin).await, json!([]));
}
