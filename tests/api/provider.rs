//! A real HTTP server speaking the OpenAI Chat Completions protocol, standing in for a model
//! provider: tests script its answers (streamed replies, error statuses with `Retry-After`, slow
//! or hanging responses, connections dropped mid-stream) and read back what Arbor sent it.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer};
use arbor::config::{ProviderSettings, Settings};
use serde_json::{json, Value};

pub const STUB_MODEL: &str = "stub-model";

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Script {
    /// A streamed reply of these content pieces, `delay` apart.
    Stream {
        pieces: Vec<String>,
        delay: Duration,
    },
    /// An error status with a body and an optional `Retry-After`.
    Status {
        code: u16,
        retry_after: Option<&'static str>,
        body: Value,
    },
    /// Sends nothing for a long time.
    Hang,
    /// Streams these pieces, then drops the connection without finishing.
    Drop { pieces: Vec<String> },
    /// A plain JSON (non-streamed) completion.
    Json { content: String },
}

impl Script {
    pub fn stream(pieces: &[&str], delay_ms: u64) -> Self {
        Script::Stream {
            pieces: pieces.iter().map(|p| p.to_string()).collect(),
            delay: Duration::from_millis(delay_ms),
        }
    }

    pub fn status(code: u16) -> Self {
        Script::Status {
            code,
            retry_after: None,
            body: json!({"error": {"message": format!("stub says {code}"), "type": "stub"}}),
        }
    }
}

#[derive(Default)]
pub struct StubState {
    script: Mutex<VecDeque<Script>>,
    requests: Mutex<Vec<Value>>,
    authorizations: Mutex<Vec<Option<String>>>,
    /// Streams that ended before they were finished (the client went away).
    pub aborted: AtomicUsize,
    pub finished: AtomicUsize,
}

pub struct StubProvider {
    /// The API root, as `base_url` expects it.
    pub url: String,
    pub state: Arc<StubState>,
    handle: ServerHandle,
}

impl StubProvider {
    pub async fn start() -> Self {
        let state = Arc::new(StubState::default());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/chat/completions", web::post().to(completions))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}/v1"),
            state,
            handle,
        }
    }

    /// Queues answers for the next requests (after them: an echo-like streamed reply).
    pub fn push(&self, scripts: impl IntoIterator<Item = Script>) {
        self.state.script.lock().unwrap().extend(scripts);
    }

    /// Every request body received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The `Authorization` header of every request.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.state.authorizations.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// `(role, content)` of each message of request `i`.
    pub fn turns(&self, i: usize) -> Vec<(String, String)> {
        self.requests()[i]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_owned(),
                    m["content"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Settings that make this stub the `stub` provider and the default model.
    pub fn configure(&self, s: &mut Settings) {
        s.llm.default_model = "stub".into();
        s.llm.providers.insert("stub".into(), self.provider());
    }

    pub fn provider(&self) -> ProviderSettings {
        ProviderSettings {
            base_url: self.url.clone(),
            default_model: STUB_MODEL.into(),
            timeout_secs: 5,
            retry_backoff_ms: 20,
            retry_backoff_max_ms: 2_000,
            ..ProviderSettings::default()
        }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// What the stub answers when nothing is scripted: `stub says: <last user message>`, streamed
/// word by word.
pub fn default_reply(last_user: &str) -> String {
    format!("stub says: {last_user}")
}

async fn completions(
    req: actix_web::HttpRequest,
    state: web::Data<StubState>,
    body: web::Json<Value>,
) -> HttpResponse {
    let body = body.into_inner();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.authorizations.lock().unwrap().push(authorization);
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let prompt_tokens = body["messages"].as_array().map_or(0, Vec::len) as u64;
    let usage_wanted = body["stream_options"]["include_usage"] == true;
    state.requests.lock().unwrap().push(body);
    let script = state.script.lock().unwrap().pop_front();
    let script = script.unwrap_or_else(|| Script::Stream {
        pieces: default_reply(&last_user)
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect(),
        delay: Duration::ZERO,
    });
    match script {
        Script::Status {
            code,
            retry_after,
            body,
        } => {
            let mut res = HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap());
            if let Some(after) = retry_after {
                res.insert_header(("retry-after", after));
            }
            res.json(body)
        }
        Script::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            HttpResponse::GatewayTimeout().finish()
        }
        Script::Json { content } => HttpResponse::Ok().json(json!({
            "id": "cmpl-stub", "object": "chat.completion", "model": STUB_MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
        })),
        Script::Stream { pieces, delay } => {
            let completion_tokens = pieces.len() as u64;
            let mut frames = vec![chunk(json!({"role": "assistant"}), None)];
            frames.extend(pieces.iter().map(|p| chunk(json!({"content": p}), None)));
            frames.push(chunk(json!({}), Some("stop")));
            if usage_wanted {
                frames.push(data(&json!({
                    "id": "chatcmpl-stub", "object": "chat.completion.chunk", "model": STUB_MODEL,
                    "choices": [],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                })));
            }
            frames.push("data: [DONE]\n\n".to_owned());
            sse(state.into_inner(), frames, delay, false)
        }
        Script::Drop { pieces } => {
            let mut frames = vec![chunk(json!({"role": "assistant"}), None)];
            frames.extend(pieces.iter().map(|p| chunk(json!({"content": p}), None)));
            sse(state.into_inner(), frames, Duration::from_millis(20), true)
        }
    }
}

fn chunk(delta: Value, finish_reason: Option<&str>) -> String {
    data(&json!({
        "id": "chatcmpl-stub", "object": "chat.completion.chunk", "model": STUB_MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }))
}

fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// Counts a stream as aborted if it is dropped before its last frame was sent.
struct Progress {
    state: Arc<StubState>,
    done: bool,
}

impl Drop for Progress {
    fn drop(&mut self) {
        let counter = if self.done {
            &self.state.finished
        } else {
            &self.state.aborted
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

fn sse(
    state: Arc<StubState>,
    frames: Vec<String>,
    delay: Duration,
    drop_at_end: bool,
) -> HttpResponse {
    let progress = Progress { state, done: false };
    let frames: VecDeque<String> = frames.into();
    let body = futures_util::stream::unfold(
        (frames, progress, true),
        move |(mut frames, mut progress, first)| async move {
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match frames.pop_front() {
                Some(frame) => Some((Ok(Bytes::from(frame)), (frames, progress, false))),
                None if drop_at_end => Some((
                    Err(actix_web::error::ErrorInternalServerError("dropped")),
                    (frames, progress, false),
                )),
                None => {
                    progress.done = true;
                    drop(progress);
                    None
                }
            }
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(body)
}
