#![allow(clippy::unwrap_used)]

use arbor::config::AckMode;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

async fn build_history(app: &TestApp, u: &User) -> String {
    let chat = id(&app.create_chat(u, "kept").await);
    app.say(u, &chat, "one").await;
    let two = app.say(u, &chat, "two").await;
    let two_id = two["messages"][0]["id"].as_str().unwrap();
    app.post(
        u,
        &format!("/api/v1/chats/{chat}/messages/{two_id}/edit"),
        json!({"content": "TWO"}),
    )
    .await;
    app.post(
        u,
        &format!("/api/v1/chats/{chat}/branches"),
        json!({"message_index": 0, "name": "side", "activate": true}),
    )
    .await;
    app.say(u, &chat, "side note").await;
    app.patch(
        u,
        &format!("/api/v1/chats/{chat}"),
        json!({"title": "renamed"}),
    )
    .await;
    chat
}

async fn survives_restart(mode: AckMode) {
    let app = spawn_with(|s| set_mode(s, mode)).await;
    let u = app.register("u@example.com").await;
    let chat = build_history(&app, &u).await;
    let tree = app.tree(&u, &chat).await;
    let view: serde_json::Value = app
        .get(&u, &format!("/api/v1/chats/{chat}"))
        .await
        .json()
        .await
        .unwrap();

    let (settings, dir) = app.stop().await;
    let app = start(settings).await;
    // The same token works (same secret), and everything is there, including the active branch.
    assert_eq!(app.tree(&u, &chat).await, tree);
    let again: serde_json::Value = app
        .get(&u, &format!("/api/v1/chats/{chat}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, view);
    assert_eq!(app.path(&u, &chat, None).await, ["one", "side note"]);
    drop(dir);
}

#[actix_web::test]
async fn graceful_restart_keeps_everything_durable() {
    survives_restart(AckMode::Durable).await;
}

#[actix_web::test]
async fn graceful_restart_keeps_everything_buffered() {
    survives_restart(AckMode::Buffered).await;
}

/// Makes the store refuse the next write of `chat` (a trigger aborts it): the message insert in
/// SQLite, the chat row's update in PostgreSQL (after MongoDB already stored the message, which
/// then must not resurface as part of the tree).
async fn refuse_next_write(app: &TestApp, chat: &str) {
    match backend() {
        Backend::Sqlite => {
            let db = sqlx::SqlitePool::connect(&format!(
                "sqlite://{}",
                app.settings.sqlite_path().display()
            ))
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.content = 'poison'
                 BEGIN SELECT RAISE(ABORT, 'refused by test'); END",
            )
            .execute(&db)
            .await
            .unwrap();
        }
        Backend::PostgresMongo => {
            let storage = &app.settings.storage;
            let options: sqlx::postgres::PgConnectOptions =
                storage.postgres_url.expose().parse().unwrap();
            let db = sqlx::PgPool::connect_with(
                options.options([("search_path", storage.postgres_schema.as_str())]),
            )
            .await
            .unwrap();
            // A sequence, not a flag: nextval survives the rollback of the refused statement,
            // so exactly the first write is refused.
            sqlx::raw_sql(&format!(
                "CREATE SEQUENCE refuse_once;
                 CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN
                        IF nextval('refuse_once') = 1 THEN RAISE EXCEPTION 'refused by test'; END IF;
                        RETURN NEW;
                      END $$;
                 CREATE TRIGGER refuse BEFORE UPDATE ON chats FOR EACH ROW
                   WHEN (NEW.id = '{chat}') EXECUTE FUNCTION refuse();"
            ))
            .execute(&db)
            .await
            .unwrap();
        }
    }
}

/// The store refuses one write: the client gets 503, the refused message is not visible
/// afterwards, and the chat keeps working.
#[actix_web::test]
async fn a_refused_write_does_not_stay_visible() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    app.say(&u, &chat, "before").await;
    refuse_next_write(&app, &chat).await;

    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/messages"),
            json!({"content": "poison"}),
        )
        .await;
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    assert_eq!(app.path(&u, &chat, None).await, ["before"]);
    app.say(&u, &chat, "after").await;
    assert_eq!(app.path(&u, &chat, None).await, ["before", "after"]);

    // What is stored agrees with what was shown.
    app.chats.evict(chat.parse().unwrap()).await;
    assert_eq!(app.path(&u, &chat, None).await, ["before", "after"]);
}
