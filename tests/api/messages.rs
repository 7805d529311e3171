#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[actix_web::test]
async fn qa_pairs_replies_paging_and_single_reads() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    let base = format!("/api/v1/chats/{chat}/messages");

    let res = app
        .post(
            &u,
            &base,
            json!({"content": "What is 2+2?", "response": "4", "model": "human"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let pair: Value = res.json().await.unwrap();
    let (q, a) = (&pair["messages"][0], &pair["messages"][1]);
    assert_eq!(q["role"], "user");
    assert_eq!(a["role"], "assistant");
    assert_eq!(a["parent_id"], q["id"]);
    assert_eq!(a["model"], "human");

    // reply: true asks the (offline echo) provider, clearly labelled as such.
    let res = app
        .post(&u, &base, json!({"content": "ping", "reply": true}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let sent: Value = res.json().await.unwrap();
    let reply = &sent["messages"][1];
    assert_eq!(reply["content"], "echo: ping");
    assert!(reply["model"].as_str().unwrap().contains("echo"));
    assert_eq!(reply["parent_id"], sent["messages"][0]["id"]);

    for i in 0..6 {
        app.say(&u, &chat, &format!("m{i}")).await;
    }
    assert_eq!(app.path(&u, &chat, None).await.len(), 10);

    // Paging from the head backwards; each page oldest first.
    let p1: Value = app
        .get(&u, &format!("{base}?limit=4"))
        .await
        .json()
        .await
        .unwrap();
    let texts = |p: &Value| -> Vec<String> {
        p["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(texts(&p1), ["m2", "m3", "m4", "m5"]);
    assert_eq!(p1["total"], 10);
    assert_eq!(p1["has_more"], true);
    let p2: Value = app
        .get(
            &u,
            &format!(
                "{base}?limit=4&before={}",
                p1["next_before"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(texts(&p2), ["ping", "echo: ping", "m0", "m1"]);
    let p3: Value = app
        .get(
            &u,
            &format!(
                "{base}?limit=4&before={}",
                p2["next_before"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(texts(&p3), ["What is 2+2?", "4"]);
    assert_eq!(p3["has_more"], false);
    assert!(p3["next_before"].is_null());

    let one: Value = app
        .get(&u, &format!("{base}/{}", q["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["content"], "What is 2+2?");
    assert_eq!(one["children_count"], 1);
}

#[actix_web::test]
async fn edit_makes_a_sibling_on_a_new_active_branch() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    app.say(&u, &chat, "a").await;
    let b = app.say(&u, &chat, "b").await;
    app.say(&u, &chat, "c").await;
    let b_id = b["messages"][0]["id"].as_str().unwrap();
    let main = app
        .get(&u, &format!("/api/v1/chats/{chat}"))
        .await
        .json::<Value>()
        .await
        .unwrap()["active_branch_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/messages/{b_id}/edit"),
            json!({"content": "B", "reply": true}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let edit: Value = res.json().await.unwrap();
    assert_eq!(edit["message"]["sibling_index"], 1);
    assert_eq!(edit["message"]["sibling_count"], 2);
    assert_eq!(edit["branch"]["forked_from_message_id"], b_id);
    assert_eq!(edit["reply"]["content"], "echo: B");

    // The new branch is active and holds a, B, echo; main is untouched.
    assert_eq!(app.path(&u, &chat, None).await, ["a", "B", "echo: B"]);
    assert_eq!(app.path(&u, &chat, Some(&main)).await, ["a", "b", "c"]);
    let original: Value = app
        .get(&u, &format!("/api/v1/chats/{chat}/messages/{b_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            original["sibling_index"].clone(),
            original["sibling_count"].clone()
        ),
        (json!(0), json!(2))
    );

    let tree = app.tree(&u, &chat).await;
    assert_eq!(tree["nodes"].as_array().unwrap().len(), 5);
    assert_eq!(tree["branches"].as_array().unwrap().len(), 2);
    assert_eq!(tree["root_ids"].as_array().unwrap().len(), 1);
    let a = &tree["nodes"][0];
    assert_eq!(a["content"], "a");
    assert_eq!(a["children"].as_array().unwrap().len(), 2);
}

#[actix_web::test]
async fn idempotency_key_replays_without_adding() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    let send = |content: &'static str| {
        app.client
            .post(app.url(&format!("/api/v1/chats/{chat}/messages")))
            .bearer_auth(&u.token)
            .header("Idempotency-Key", "key-1")
            .json(&json!({"content": content, "reply": true}))
            .send()
    };
    let first: Value = send("hello").await.unwrap().json().await.unwrap();
    let again = send("hello").await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value = again.json().await.unwrap();
    let ids = |v: &Value| -> Vec<(String, String)> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["content"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(ids(&first), ids(&again));
    assert_eq!(ids(&first).len(), 2);
    assert_eq!(app.path(&u, &chat, None).await, ["hello", "echo: hello"]);

    let other = send("something else").await.unwrap();
    assert_error(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.path(&u, &chat, None).await.len(), 2);

    // The key survives eviction: the actor rebuilds it from stored messages.
    let chat_id = chat.parse().unwrap();
    assert!(app.chats.evict(chat_id).await);
    let replay: Value = send("hello").await.unwrap().json().await.unwrap();
    assert_eq!(replay["messages"][0]["id"], first["messages"][0]["id"]);
    assert_eq!(replay["messages"][1]["id"], first["messages"][1]["id"]);
    assert_eq!(app.path(&u, &chat, None).await.len(), 2);

    // A keyed send to a branch that is not active replays with that branch, also after a reload.
    let side: Value = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/branches"),
            json!({"message_index": 0, "name": "side"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let to_side = || {
        app.client
            .post(app.url(&format!("/api/v1/chats/{chat}/messages")))
            .bearer_auth(&u.token)
            .header("Idempotency-Key", "key-2")
            .json(&json!({"content": "aside", "branch_id": side["id"]}))
            .send()
    };
    let sent: Value = to_side().await.unwrap().json().await.unwrap();
    assert_eq!(sent["branch_id"], side["id"]);
    assert!(app.chats.evict(chat_id).await);
    let replayed: Value = to_side().await.unwrap().json().await.unwrap();
    assert_eq!(replayed["branch_id"], side["id"]);
    assert_eq!(replayed["messages"][0]["id"], sent["messages"][0]["id"]);
}

/// The chat's actor keeps the pages it writes (`pages`) and answers the same page again while
/// the chat is unchanged: every kind of change shows on the next read of the same page.
#[actix_web::test]
async fn a_page_read_again_shows_every_change() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    let main = app.get(&u, &format!("/api/v1/chats/{chat}")).await;
    let main = main.json::<Value>().await.unwrap()["active_branch_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = id(&app.say(&u, &chat, "one").await["messages"][0]);
    assert_eq!(app.path(&u, &chat, None).await, ["one"]);
    app.say(&u, &chat, "two").await;
    assert_eq!(app.path(&u, &chat, None).await, ["one", "two"]);
    assert_eq!(app.path(&u, &chat, Some(&main)).await, ["one", "two"]);

    // A fork made active: the active branch's page is the fork's.
    let fork = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/branches"),
            json!({"message_index": 0, "activate": true}),
        )
        .await;
    assert_eq!(fork.status(), StatusCode::CREATED);
    let fork = id(&fork.json::<Value>().await.unwrap());
    assert_eq!(app.path(&u, &chat, None).await, ["one"]);
    app.say(&u, &chat, "three").await;
    assert_eq!(app.path(&u, &chat, None).await, ["one", "three"]);
    assert_eq!(app.path(&u, &chat, Some(&fork)).await, ["one", "three"]);
    assert_eq!(app.path(&u, &chat, Some(&main)).await, ["one", "two"]);

    // The sibling counts on main's page change with the fork's message.
    let page = app
        .get(
            &u,
            &format!("/api/v1/chats/{chat}/messages?limit=200&branch_id={main}"),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(page["messages"][1]["sibling_count"], 2);

    // Back to main, then an edit of the first message (a new active branch).
    let res = app
        .put(
            &u,
            &format!("/api/v1/chats/{chat}/active-branch"),
            json!({"branch_id": main}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.path(&u, &chat, None).await, ["one", "two"]);
    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/messages/{first}/edit"),
            json!({"content": "uno"}),
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
    assert_eq!(app.path(&u, &chat, None).await, ["uno"]);

    // The fork deleted: its page is gone, main's is unchanged.
    let res = app
        .delete(&u, &format!("/api/v1/chats/{chat}/branches/{fork}"))
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    let gone = app
        .get(
            &u,
            &format!("/api/v1/chats/{chat}/messages?branch_id={fork}"),
        )
        .await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.path(&u, &chat, Some(&main)).await, ["one", "two"]);
}

/// A chat remembers the keys of its newest `actors.idempotency_keys_per_chat` keyed sends, in
/// memory and after a reload: an older key is a new send, a recent one still replays.
#[actix_web::test]
async fn a_chat_remembers_only_its_newest_idempotency_keys() {
    let app = spawn_with(|s| s.actors.idempotency_keys_per_chat = 3).await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    let send = |key: String| {
        app.client
            .post(app.url(&format!("/api/v1/chats/{chat}/messages")))
            .bearer_auth(&u.token)
            .header("Idempotency-Key", key.clone())
            .json(&json!({"content": key, "response": "ok"}))
            .send()
    };
    for n in 0..5 {
        assert_eq!(
            send(format!("k{n}")).await.unwrap().status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(app.path(&u, &chat, None).await.len(), 10);
    // k4 is among the newest three: replayed, nothing added.
    send("k4".into()).await.unwrap();
    assert_eq!(app.path(&u, &chat, None).await.len(), 10);
    // After a reload the chat keeps the newest three again.
    assert!(
        app.chats
            .evict(arbor_actors::model::ChatId::from_uuid(
                chat.parse().unwrap()
            ))
            .await
    );
    send("k3".into()).await.unwrap();
    assert_eq!(app.path(&u, &chat, None).await.len(), 10);
    // k0 was forgotten: the same key is a new send.
    send("k0".into()).await.unwrap();
    assert_eq!(app.path(&u, &chat, None).await.len(), 12);
}
