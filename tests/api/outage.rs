//! A store goes down mid-load and comes back. Each test runs its own server for the store it
//! stops (started by the same scripts as the shared ones) and the shared server for the other.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor::config::{AckMode, Settings};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Store {
    Postgres,
    Mongodb,
}

/// A server of our own, stopped and restarted by the test (same data directory and port).
struct Private {
    store: Store,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    url: String,
}

impl Private {
    fn script(store: Store) -> PathBuf {
        let name = match store {
            Store::Postgres => "postgres.sh",
            Store::Mongodb => "mongodb.sh",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name)
    }

    fn run(store: Store, action: &str, dir: &Path) -> String {
        let out = Command::new(Self::script(store))
            .arg(action)
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{store:?} {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn start(store: Store) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("server");
        let url = Self::run(store, "start", &dir);
        Self {
            store,
            dir,
            _tmp: tmp,
            url,
        }
    }

    fn stop(&self) {
        Self::run(self.store, "stop", &self.dir);
    }

    fn restart(&self) {
        assert_eq!(Self::run(self.store, "start", &self.dir), self.url);
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = Command::new(Self::script(self.store))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// An app whose `down` store is a private server and whose other store is the shared one.
async fn app_with_private(
    down: Store,
    mode: AckMode,
    tweak: impl FnOnce(&mut Settings),
) -> (TestApp, Private) {
    let private = Private::start(down);
    let app = spawn_with(|s| {
        s.storage.ack_mode = mode;
        s.storage.durable_retry_ms = 1000;
        s.storage.store_timeout_ms = 500;
        match down {
            Store::Postgres => {
                use_postgres(s, &private.url);
                use_mongodb(s, &mongodb_url());
            }
            Store::Mongodb => {
                use_postgres(s, &postgres_url());
                use_mongodb(s, &private.url);
            }
        }
        tweak(s);
    })
    .await;
    (app, private)
}

async fn readiness(app: &TestApp) -> (StatusCode, Value) {
    let res = app.client.get(app.url("/ready")).send().await.unwrap();
    (res.status(), res.json().await.unwrap())
}

async fn wait_ready(app: &TestApp) {
    let started = Instant::now();
    while readiness(app).await.0 != StatusCode::OK {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send(app: &TestApp, u: &User, chat: &str, content: &str) -> reqwest::Response {
    app.post(
        u,
        &format!("/api/v1/chats/{chat}/messages"),
        json!({ "content": content }),
    )
    .await
}

/// A send that asks the model for a reply.
async fn ask(app: &TestApp, u: &User, chat: &str, content: &str) -> reqwest::Response {
    app.post(
        u,
        &format!("/api/v1/chats/{chat}/messages"),
        json!({ "content": content, "reply": true }),
    )
    .await
}

/// Durable writes fail within a bounded wait while the store is down and are not stored;
/// resident chats stay readable; /ready reports it; writes acknowledged before, during (none)
/// and after the outage are all stored exactly once.
async fn durable_outage(down: Store) {
    let (app, private) = app_with_private(down, AckMode::Durable, |_| {}).await;
    let u = app.register("o@example.com").await;
    let quiet = id(&app.create_chat(&u, "quiet").await);
    app.say(&u, &quiet, "one").await;
    let idle = id(&app.create_chat(&u, "idle").await);
    app.say(&u, &idle, "resident").await;
    let asking = id(&app.create_chat(&u, "asking").await);
    app.say(&u, &asking, "first").await;
    let busy: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(id(&app.create_chat(&u, &format!("busy {i}")).await));
        }
        v
    };

    // Background load: each writer appends to its own chat and records what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let mut writers = Vec::new();
    for chat in busy.clone() {
        let (base, token, stop, acked) = (
            app.base.clone(),
            u.token.clone(),
            stop.clone(),
            acked.clone(),
        );
        writers.push(actix_web::rt::spawn(async move {
            let client = crate::helpers::test_client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let content = format!("{chat} {n}");
                n += 1;
                let res = client
                    .post(format!("{base}/api/v1/chats/{chat}/messages"))
                    .bearer_auth(&token)
                    .json(&json!({ "content": content }))
                    .send()
                    .await
                    .unwrap();
                match res.status() {
                    StatusCode::CREATED => acked
                        .lock()
                        .unwrap()
                        .entry(chat.clone())
                        .or_default()
                        .push(content),
                    StatusCode::SERVICE_UNAVAILABLE => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    other => panic!("unexpected {other}: {}", res.text().await.unwrap()),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    private.stop();
    let started = Instant::now();
    assert_error(
        send(&app, &u, &quiet, "lost").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // A send that asks for a reply: the model call starts while the question commits; the
    // commit fails, so the call is cancelled and neither the question nor a reply is stored.
    let res = ask(&app, &u, &asking, "lost question").await;
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    let (status, body) = readiness(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["metadata_store"], down != Store::Postgres, "{body}");
    assert_eq!(body["message_store"], down != Store::Mongodb, "{body}");
    // A resident chat is still readable. (One whose write just failed is not: it reloads from
    // the store, so that the refused write does not stay visible.)
    assert_eq!(app.path(&u, &idle, None).await, ["resident"]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    private.restart();
    wait_ready(&app).await;
    let res = send(&app, &u, &quiet, "after").await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
    // The failed reply freed its branch: the next one is answered.
    let res = ask(&app, &u, &asking, "asked").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let sent: Value = res.json().await.unwrap();
    assert_eq!(sent["messages"][1]["content"], "echo: asked", "{sent}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // The write refused while the store was down is not stored; everything acknowledged is,
    // once and in order. A write in flight at the very moment the store went down may have
    // committed although its client saw 503 (its outcome was unknowable): at most one per writer.
    for chat in busy.iter().chain([&quiet]) {
        app.chats.evict(chat.parse().unwrap()).await;
    }
    assert_eq!(app.path(&u, &quiet, None).await, ["one", "after"]);
    app.chats.evict(asking.parse().unwrap()).await;
    assert_eq!(
        app.path(&u, &asking, None).await,
        ["first", "asked", "echo: asked"]
    );
    let acked = acked.lock().unwrap().clone();
    for chat in &busy {
        let stored = app.path(&u, chat, None).await;
        let acked = acked.get(chat).unwrap();
        let mut unacknowledged = stored.iter().filter(|m| !acked.contains(m));
        assert!(
            unacknowledged.nth(1).is_none(),
            "chat {chat}: {stored:?} vs {acked:?}"
        );
        let kept: Vec<_> = stored.iter().filter(|m| acked.contains(m)).collect();
        assert_eq!(kept, acked.iter().collect::<Vec<_>>(), "chat {chat}");
    }
}

#[actix_web::test]
async fn postgres_outage_in_durable_mode() {
    durable_outage(Store::Postgres).await;
}

#[actix_web::test]
async fn mongodb_outage_in_durable_mode() {
    durable_outage(Store::Mongodb).await;
}

/// Buffered writes are acknowledged while the store is down, up to the queue's bound, then
/// refused with 503 storage_unavailable; they are readable meanwhile, and all of them are stored
/// once the store is back.
async fn buffered_outage(down: Store) {
    let (app, private) = app_with_private(down, AckMode::Buffered, |s| {
        s.storage.queue_capacity = 32;
    })
    .await;
    let u = app.register("b@example.com").await;
    let chat = id(&app.create_chat(&u, "buffered").await);
    app.say(&u, &chat, "one").await;

    private.stop();
    // The first write after the outage began is acknowledged; once the writer has failed to
    // store it, a full queue means the outage, not an overload.
    let res = send(&app, &u, &chat, "m").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let mut acked = vec!["one".to_owned(), "m".to_owned()];
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut refused = false;
    for n in 0..500 {
        let content = format!("m{n}");
        let res = send(&app, &u, &chat, &content).await;
        if res.status() == StatusCode::CREATED {
            acked.push(content);
        } else {
            assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
            refused = true;
            break;
        }
    }
    assert!(refused, "the queue never filled");
    assert!(acked.len() > 10, "only {} acknowledged", acked.len());
    // Acknowledged and readable, though not stored yet.
    assert_eq!(app.path(&u, &chat, None).await, acked);
    assert_eq!(readiness(&app).await.0, StatusCode::SERVICE_UNAVAILABLE);

    private.restart();
    wait_ready(&app).await;
    // The backlog flushes; a graceful restart reads everything back from the stores.
    let (settings, dir) = app.stop().await;
    let app = start(settings).await;
    assert_eq!(app.path(&u, &chat, None).await, acked);
    drop(dir);
}

#[actix_web::test]
async fn postgres_outage_in_buffered_mode() {
    buffered_outage(Store::Postgres).await;
}

#[actix_web::test]
async fn mongodb_outage_in_buffered_mode() {
    buffered_outage(Store::Mongodb).await;
}
