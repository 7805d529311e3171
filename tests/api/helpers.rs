#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use arbor::config::{AckMode, MessageBackend, MetadataBackend, Secret, Settings};
use arbor::Application;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// A running server and a client for it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub handle: ServerHandle,
    pub settings: Settings,
    pub chats: arbor_actors::Chats,
    /// The separate `/metrics` listener's port, when `metrics.listen` is set.
    pub metrics_port: Option<u16>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

/// The stores the API suite runs on, chosen by `TEST_BACKEND` (`scripts/test.sh` runs the
/// suite once per backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    PostgresMongo,
}

pub fn backend() -> Backend {
    match std::env::var("TEST_BACKEND").as_deref() {
        Err(_) | Ok("" | "sqlite") => Backend::Sqlite,
        Ok("postgres-mongodb") => Backend::PostgresMongo,
        Ok(other) => panic!("TEST_BACKEND={other:?}: expected sqlite or postgres-mongodb"),
    }
}

fn server_url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test.sh, which starts PostgreSQL and SecantusDB")
    })
}

/// The shared test PostgreSQL server (started by scripts/test.sh).
pub fn postgres_url() -> String {
    server_url("TEST_POSTGRES_URL")
}

/// The shared test MongoDB-wire server (started by scripts/test.sh).
pub fn mongodb_url() -> String {
    server_url("TEST_MONGODB_URL")
}

/// A name no other test uses: a PostgreSQL schema or a MongoDB database of its own.
pub fn unique_name() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

/// Points `s` at PostgreSQL (a fresh schema) for metadata.
pub fn use_postgres(s: &mut Settings, url: &str) {
    s.storage.metadata = MetadataBackend::Postgres;
    s.storage.postgres_url = Secret::new(url.to_owned());
    s.storage.postgres_schema = unique_name();
    s.storage.postgres_max_connections = 4;
}

/// Points `s` at MongoDB (a fresh database) for messages.
pub fn use_mongodb(s: &mut Settings, url: &str) {
    s.storage.messages = MessageBackend::Mongodb;
    s.storage.mongodb_url = Secret::new(url.to_owned());
    s.storage.mongodb_database = unique_name();
}

pub fn settings(data_dir: PathBuf) -> Settings {
    let mut s = Settings::default();
    s.server.port = 0;
    s.server.workers = 2;
    s.server.shutdown_grace_secs = 5;
    s.storage.data_dir = data_dir;
    s.storage.sqlite_synchronous = arbor::config::SqliteSync::Normal;
    s.storage.durable_retry_ms = 300;
    s.auth.bcrypt_cost = 4;
    // Tests register, log in and write far faster than any person; `rate_limits.rs` tests the
    // limits themselves.
    s.rate_limits = no_rate_limits();
    s.auth.jwt_secret = serde_json::from_value(json!(JWT_SECRET)).unwrap();
    s.actors.arbiters = 2;
    if backend() == Backend::PostgresMongo {
        use_postgres(&mut s, &postgres_url());
        use_mongodb(&mut s, &mongodb_url());
    }
    s
}

/// Every rate limit off, refusals answered at once.
pub fn no_rate_limits() -> arbor::config::RateLimitSettings {
    arbor::config::RateLimitSettings {
        reads_per_minute: 0,
        writes_per_minute: 0,
        replies_per_minute: 0,
        imports_per_minute: 0,
        auth_per_minute: 0,
        concurrent_replies: 0,
        failed_logins_per_ip: 0,
        failed_logins_per_account: 0,
        share_misses_per_ip: 0,
        refusal_delay_ms: 0,
        ..Default::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path().to_path_buf());
    tweak(&mut s);
    let mut app = start(s).await;
    app._dir = Some(dir);
    app
}

/// A client that lets go of an idle connection well before the server's keep-alive (actix-web:
/// 5 s) closes it: a request sent on a connection just as the server closes it fails with
/// "incomplete message" (seen after a test paused for a store restart of about 5 s).
pub fn test_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// Starts a server on existing settings (e.g. the same data directory again).
pub async fn start(settings: Settings) -> TestApp {
    let app = Application::build(settings.clone()).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let chats = app.chats().clone();
    let metrics_port = app.metrics_port();
    let task = actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        base,
        client: test_client(),
        handle,
        settings,
        chats,
        metrics_port,
        task: Some(task),
        _dir: None,
    }
}

impl TestApp {
    /// Graceful stop: waits until every write is flushed. Keeps the data directory.
    pub async fn stop(mut self) -> (Settings, Option<tempfile::TempDir>) {
        self.handle.stop(true).await;
        self.task.take().unwrap().await.unwrap().unwrap();
        (self.settings.clone(), self._dir.take())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn register(&self, email: &str) -> User {
        let res = self
            .client
            .post(self.url("/api/v1/auth/register"))
            .json(&json!({"email": email, "password": "password123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        User::from_session(&res.json().await.unwrap())
    }

    /// The OpenAPI document the server serves.
    pub async fn openapi(&self) -> Value {
        let res = self
            .client
            .get(self.url("/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    /// A JSON answer to a GET without a token, whatever its status.
    pub async fn anon_json(&self, path: &str) -> Value {
        let res = self.client.get(self.url(path)).send().await.unwrap();
        res.json().await.unwrap()
    }

    /// POSTs JSON without a token.
    pub async fn post_anon(&self, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, user: &User, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, user: &User, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, user: &User, path: &str, body: Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put(&self, user: &User, path: &str, body: Value) -> Response {
        self.client
            .put(self.url(path))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, user: &User, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
    }

    /// Creates a chat and returns its JSON.
    pub async fn create_chat(&self, user: &User, title: &str) -> Value {
        let res = self
            .post(user, "/api/v1/chats", json!({ "title": title }))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    }

    /// Sends a user message (optionally with a response) to the active branch.
    pub async fn say(&self, user: &User, chat: &str, content: &str) -> Value {
        let res = self
            .post(
                user,
                &format!("/api/v1/chats/{chat}/messages"),
                json!({ "content": content }),
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::CREATED,
            "{}",
            res.text().await.unwrap()
        );
        res.json().await.unwrap()
    }

    /// The whole tree of a chat.
    pub async fn tree(&self, user: &User, chat: &str) -> Value {
        let res = self.get(user, &format!("/api/v1/chats/{chat}/tree")).await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    /// Contents along a branch's whole path (the active one when `branch` is None), oldest
    /// first, read page by page: a path can pass the 200-message page limit.
    pub async fn path(&self, user: &User, chat: &str, branch: Option<&str>) -> Vec<String> {
        let q = branch
            .map(|b| format!("&branch_id={b}"))
            .unwrap_or_default();
        let mut pages = Vec::new();
        let mut before = String::new();
        loop {
            let url = format!("/api/v1/chats/{chat}/messages?limit=200{q}{before}");
            let res = self.get(user, &url).await;
            assert_eq!(res.status(), StatusCode::OK);
            let body: Value = res.json().await.unwrap();
            let page: Vec<String> = body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap().to_owned())
                .collect();
            pages.push(page);
            match body["next_before"].as_str() {
                Some(next) => before = format!("&before={next}"),
                None => break,
            }
        }
        pages.into_iter().rev().flatten().collect()
    }
}

#[derive(Clone)]
pub struct User {
    pub token: String,
    pub id: String,
}

impl User {
    /// The caller a login or register answer (`access_token`, `user.id`) makes.
    pub fn from_session(body: &Value) -> Self {
        Self {
            token: body["access_token"].as_str().unwrap().to_owned(),
            id: body["user"]["id"].as_str().unwrap().to_owned(),
        }
    }
}

/// Asserts an error response's status and stable code.
pub async fn assert_error(res: Response, status: StatusCode, code: &str) {
    assert_eq!(res.status(), status, "expected {code}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string());
}

pub fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

pub fn set_mode(s: &mut Settings, mode: AckMode) {
    s.storage.ack_mode = mode;
}

/// Asserts the status (showing the body when it differs) and returns the JSON body.
pub async fn json_with(res: Response, status: StatusCode) -> Value {
    let got = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A string holding a UUID.
pub fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

/// A string holding an RFC 3339 timestamp.
pub fn is_time(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

/// The questions of a seed 000–002 chat view's pairs.
pub fn questions(chat: &Value) -> Vec<&str> {
    chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["question"].as_str().unwrap())
        .collect()
}

/// Runs `task` on a new actix arbiter, a thread like an HTTP worker's (chat actors it activates
/// live there with `local` placement), then stops that thread and waits until it has ended.
/// Returns what `task` returned.
pub async fn on_a_thread_that_then_stops<T: Send + 'static>(
    task: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let thread = actix::Arbiter::new();
    let (done, result) = tokio::sync::oneshot::channel();
    assert!(thread.spawn(async move {
        let _ = done.send(task.await);
    }));
    let result = result.await.unwrap();
    thread.stop();
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .unwrap()
        .unwrap();
    result
}

/// A user message for `Chats::send`, with a generated reply if `reply`.
pub fn send_request(content: &str, reply: bool) -> arbor_actors::SendRequest {
    arbor_actors::SendRequest {
        branch: None,
        role: arbor_actors::model::Role::User,
        content: content.into(),
        response: None,
        model: None,
        metadata: None,
        reply,
        idempotency_key: None,
    }
}

/// A loaded chat's row and branches (its feedback aside).
pub fn parts(
    stored: arbor_actors::ports::StoredChat,
) -> (
    arbor_actors::model::ChatMeta,
    Vec<arbor_actors::model::Branch>,
) {
    (stored.meta, stored.branches)
}
