#![allow(clippy::unwrap_used)]

use std::time::Duration;

use arbor_actors::chat::InjectPanic;
use arbor_actors::model::{ChatId, UserId};
use arbor_actors::ChatError;
use reqwest::StatusCode;

use crate::helpers::*;

/// Chats evicted by the size bound come back identical, and the bound holds.
#[actix_web::test]
async fn eviction_then_reactivation_gives_identical_state() {
    let app = spawn_with(|s| s.actors.max_resident = 3).await;
    let u = app.register("u@example.com").await;
    let mut chats = Vec::new();
    for i in 0..8 {
        let chat = id(&app.create_chat(&u, &format!("c{i}")).await);
        for j in 0..3 {
            app.say(&u, &chat, &format!("c{i} m{j}")).await;
        }
        app.post(
            &u,
            &format!("/api/v1/chats/{chat}/branches"),
            serde_json::json!({"message_index": 1, "activate": true}),
        )
        .await;
        chats.push((chat.clone(), app.tree(&u, &chat).await));
    }
    // Let the sweeper drive moka's pending evictions.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        app.chats.resident() <= 3,
        "resident: {}",
        app.chats.resident()
    );
    let capacity = app
        .chats
        .stats()
        .evictions
        .with_label_values(&["capacity"])
        .get();
    assert!(capacity >= 5, "capacity evictions: {capacity}");
    for (chat, tree) in &chats {
        assert_eq!(&app.tree(&u, chat).await, tree);
    }
}

/// Idle actors are evicted after the idle timeout, flushed first.
#[actix_web::test]
async fn idle_chats_are_evicted_and_reactivate() {
    let app = spawn_with(|s| {
        s.actors.idle_timeout_secs = 1;
        s.storage.ack_mode = arbor::config::AckMode::Buffered;
    })
    .await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    app.say(&u, &chat, "hello").await;
    let tree = app.tree(&u, &chat).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(app.chats.resident(), 0);
    let evictions = &app.chats.stats().evictions;
    assert_eq!(evictions.with_label_values(&["idle"]).get(), 1);
    assert_eq!(evictions.with_label_values(&["capacity"]).get(), 0);
    assert_eq!(app.tree(&u, &chat).await, tree);
    assert_eq!(app.chats.stats().activations.get(), 1);
}

/// A chat read again and again is in use, though each worker finds its actor in its own hot
/// handles (`hot`) rather than in the cache: the cache still hears of it often enough that idle
/// eviction never takes it.
#[actix_web::test]
async fn a_chat_in_use_is_not_evicted_as_idle() {
    let app = spawn_with(|s| s.actors.idle_timeout_secs = 1).await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    app.say(&u, &chat, "hello").await;
    let path = format!("/api/v1/chats/{chat}/messages");
    let activations = app.chats.stats().activations.get();
    for _ in 0..30 {
        let page = app.get(&u, &path).await;
        assert_eq!(page.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let evictions = &app.chats.stats().evictions;
    assert_eq!(evictions.with_label_values(&["idle"]).get(), 0);
    assert_eq!(app.chats.stats().activations.get(), activations);
}

/// A worker's hot handle to an actor that has since been evicted answers `Closed`: the request
/// drops it and activates the chat again, rather than failing.
#[actix_web::test]
async fn a_chat_evicted_behind_a_hot_handle_reactivates() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    app.say(&u, &chat, "hello").await;
    let path = format!("/api/v1/chats/{chat}/messages");
    let before = app.get(&u, &path).await.text().await.unwrap();
    let activations = app.chats.stats().activations.get();
    for _ in 0..3 {
        assert!(app.chats.evict(chat.parse().unwrap()).await);
        let page = app.get(&u, &path).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.text().await.unwrap(), before);
    }
    assert_eq!(app.chats.stats().activations.get(), activations + 3);
}

/// A panic in one chat's actor fails that request with 500, leaves other chats alone, and the
/// actor restarts from stored state (the half-applied change is gone).
#[actix_web::test]
async fn a_panic_in_one_chat_leaves_the_others_working() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let a = id(&app.create_chat(&u, "a").await);
    let b = id(&app.create_chat(&u, "b").await);
    app.say(&u, &a, "a1").await;
    app.say(&u, &b, "b1").await;
    let user: UserId = u.id.parse().unwrap();
    let a_id: ChatId = a.parse().unwrap();

    let result = app.chats.call(a_id, InjectPanic { user }).await;
    assert!(matches!(result, Err(ChatError::Internal(_))));

    app.say(&u, &b, "b2").await;
    assert_eq!(app.path(&u, &b, None).await, ["b1", "b2"]);
    let chat: serde_json::Value = app
        .get(&u, &format!("/api/v1/chats/{a}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        chat["title"], "a",
        "the panicking change survived the restart"
    );
    app.say(&u, &a, "a2").await;
    assert_eq!(app.path(&u, &a, None).await, ["a1", "a2"]);
    let res = app.get(&u, &format!("/api/v1/chats/{a}/tree")).await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// With `local` placement a chat's actor runs on the thread (an HTTP worker's arbiter) that
/// activated it, and goes when that thread stops: at shutdown, before its final flush. The
/// chat's next activation (storing a reply cut short by the shutdown does this) must wait for
/// the writes that actor queued, not load the store from before them.
#[actix_web::test]
async fn a_chat_whose_thread_stopped_reactivates_with_every_acknowledged_write() {
    let app = spawn_with(|s| {
        s.actors.placement = arbor::config::ActorPlacement::Local;
        s.storage.ack_mode = arbor::config::AckMode::Buffered;
        // A batch waits this long for more: the writes below are still queued when their
        // actor goes.
        s.storage.flush_interval_ms = 500;
    })
    .await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    app.say(&u, &chat, "stored").await;
    let (user, chat): (UserId, ChatId) = (u.id.parse().unwrap(), chat.parse().unwrap());
    // Out of the HTTP workers' reach, so this thread is the one that activates it.
    assert!(app.chats.evict(chat).await);

    let chats = app.chats.clone();
    let acknowledged = on_a_thread_that_then_stops(async move {
        let mut ids = Vec::new();
        for content in ["one", "two"] {
            let sent = chats.send(user, chat, send_request(content, false));
            ids.push(sent.await.unwrap().view.messages[0].id);
        }
        ids
    })
    .await;

    let page = app
        .chats
        .list_messages(user, chat, None, 100, None)
        .await
        .unwrap();
    let contents: Vec<&str> = page.messages.iter().map(|m| &*m.content).collect();
    assert_eq!(contents, ["stored", "one", "two"]);
    let ids: Vec<_> = page.messages.iter().map(|m| m.id).collect();
    assert_eq!(&ids[1..], acknowledged);
}
