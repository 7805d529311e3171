#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[actix_web::test]
async fn fork_switch_rename_and_delete() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat_json = app.create_chat(&u, "c").await;
    let chat = id(&chat_json);
    let main = chat_json["active_branch_id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/chats/{chat}/branches");
    let mut ids = Vec::new();
    for t in ["q1", "q2", "q3"] {
        ids.push(
            app.say(&u, &chat, t).await["messages"][0]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    // Fork by index on the active branch, without switching.
    let res = app
        .post(&u, &base, json!({"message_index": 0, "name": "alt"}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let alt: Value = res.json().await.unwrap();
    assert_eq!(alt["head_message_id"], ids[0].as_str());
    assert_eq!(alt["message_count"], 1);
    assert_eq!(alt["is_active"], false);
    let alt_id = id(&alt);

    // Fork by message id and activate.
    let res = app
        .post(
            &u,
            &base,
            json!({"from_message_id": ids[1], "activate": true}),
        )
        .await;
    let by_id: Value = res.json().await.unwrap();
    assert_eq!(by_id["is_active"], true);
    app.say(&u, &chat, "q3-alt").await;
    assert_eq!(app.path(&u, &chat, None).await, ["q1", "q2", "q3-alt"]);
    assert_eq!(app.path(&u, &chat, Some(&main)).await, ["q1", "q2", "q3"]);

    // Explicit branch on send, and fork by index on a named branch.
    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/messages"),
            json!({"content": "x", "branch_id": alt_id}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(app.path(&u, &chat, Some(&alt_id)).await, ["q1", "x"]);
    let res = app
        .post(
            &u,
            &base,
            json!({"from_branch_id": main, "message_index": 2}),
        )
        .await;
    assert_eq!(
        res.json::<Value>().await.unwrap()["head_message_id"],
        ids[2].as_str()
    );

    // Switch active.
    let res = app
        .put(
            &u,
            &format!("/api/v1/chats/{chat}/active-branch"),
            json!({"branch_id": alt_id}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap()["active_branch_id"],
        alt_id.as_str()
    );
    assert_eq!(app.path(&u, &chat, None).await, ["q1", "x"]);

    // Rename and read back.
    let res = app
        .patch(&u, &format!("{base}/{alt_id}"), json!({"name": "renamed"}))
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["name"], "renamed");
    let one: Value = app
        .get(&u, &format!("{base}/{alt_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["name"], "renamed");
    let all: Value = app.get(&u, &base).await.json().await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 4);

    // Deleting the active branch prunes only its own message and activates another branch.
    let res = app.delete(&u, &format!("{base}/{alt_id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let gone: Value = res.json().await.unwrap();
    assert_eq!(gone["deleted_message_count"], 1);
    assert_ne!(gone["active_branch_id"], alt_id.as_str());
    let tree = app.tree(&u, &chat).await;
    assert_eq!(tree["nodes"].as_array().unwrap().len(), 4); // q1 q2 q3 q3-alt
    assert_error(
        app.get(&u, &format!("{base}/{alt_id}")).await,
        StatusCode::NOT_FOUND,
        "branch_not_found",
    )
    .await;
}

#[actix_web::test]
async fn the_last_branch_cannot_be_deleted() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat_json = app.create_chat(&u, "c").await;
    let chat = id(&chat_json);
    app.say(&u, &chat, "keep me").await;
    let main = chat_json["active_branch_id"].as_str().unwrap();
    let res = app
        .delete(&u, &format!("/api/v1/chats/{chat}/branches/{main}"))
        .await;
    assert_error(res, StatusCode::CONFLICT, "last_branch").await;
    assert_eq!(app.path(&u, &chat, None).await, ["keep me"]);
}
