//! Helpers for `bench/run.sh` (see BENCHMARKS.md):
//!
//! - `ceiling`: the trivial actix-web handler each scenario is compared with (same framework,
//!   same worker count, no work), which also serves static bodies of a given size;
//! - `seed`: an account and many chats with messages, over Arbor's HTTP API, written out for
//!   the wrk scripts (token on the first line, then one chat id per line);
//! - `stub-llm`: an OpenAI-protocol provider that streams a fixed reply at once, so the reply
//!   scenario measures Arbor, not a model;
//! - `ttft`: Arbor's added time to first token, against the stub;
//! - `activation`, `memory`, `lag`: in-process measurements (see `inproc`);
//! - `store-floor`: the message store alone under the write target's load (see `floor`).

mod floor;
#[cfg(not(feature = "system-alloc"))]
mod heap;
mod inproc;
mod portable;
mod stats;
mod ttft;

use std::io::Write;
use std::path::PathBuf;

use actix::{Actor, Addr, Arbiter, Handler};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{bail, Context};
use arbor::auth::Tokens;
use clap::{Parser, Subcommand};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};

/// mimalloc: less fragmentation and faster small allocations than glibc malloc (BENCHMARKS.md, "Memory per idle chat"),
/// counting the blocks in use when `memory` measures (see `heap`). The `system-alloc` feature
/// leaves it out, for heap profilers that hook malloc (heaptrack).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

#[derive(Parser)]
#[command(about = "Benchmark helpers for Arbor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `GET /` → 200 "ok" on 127.0.0.1:PORT.
    Ceiling {
        #[arg(long)]
        port: u16,
        /// HTTP worker threads (match Arbor's `server.workers`).
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Create an account and CHATS chats of PAIRS question/answer pairs each.
    Seed {
        /// Arbor's base URL.
        #[arg(long)]
        base: String,
        #[arg(long, default_value_t = 1000)]
        chats: usize,
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        /// Requests in flight while seeding.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve an OpenAI Chat Completions endpoint that streams a fixed reply at once.
    StubLlm {
        #[arg(long)]
        port: u16,
    },
    /// Time to first token straight from the stub and through Arbor, one request at a time.
    Ttft {
        #[arg(long)]
        base: String,
        /// The file `seed` wrote.
        #[arg(long)]
        state: PathBuf,
        /// The stub provider's base URL.
        #[arg(long)]
        stub: String,
        #[arg(long, default_value_t = 500)]
        requests: usize,
    },
    /// In-process: activation time of chats of 2 × PAIRS messages, ROUNDS times each.
    Activation {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 20)]
        chats: usize,
        #[arg(long, default_value_t = 500)]
        pairs: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// In-process: resident memory of CHATS idle chats of 2 × PAIRS messages.
    Memory {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        chats: usize,
        #[arg(long, default_value_t = 5)]
        pairs: usize,
    },
    /// In-process: resident memory of CHATS bare actix actors, each with a moka cache entry
    /// holding its address: the per-chat floor of Arbor's shape, with no chat in it.
    MemoryFloor {
        #[arg(long, default_value_t = 100_000)]
        chats: usize,
    },
    /// The second, fresh-process half of `memory`.
    #[command(hide = true)]
    MemoryMeasure {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        state: PathBuf,
    },
    /// In-process: write-behind lag at RATE messages/s (Q&A pairs to random chats).
    Lag {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 1000)]
        chats: usize,
        #[arg(long, default_value_t = 5000)]
        rate: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The message store alone (Arbor's MongoDB adapter, no server): messages of Q&A pairs due
    /// at RATE a second, open loop, each batch of what is due sent the moment one of IN_FLIGHT
    /// slots is free; latency from due to confirmed. The floor of a durable acknowledgement.
    StoreFloor {
        #[arg(long)]
        mongodb_url: String,
        #[arg(long, value_enum, default_value = "message")]
        shape: floor::Shape,
        /// Messages per second (2 per Q&A pair).
        #[arg(long, default_value_t = 16_000)]
        rate: usize,
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        in_flight: usize,
        /// At most this many messages per call (Arbor's writer: `storage.flush_max_rows` rows).
        #[arg(long, default_value_t = 1024)]
        batch_max: usize,
        /// At least this long between the starts of two calls (0: as soon as a slot is free).
        #[arg(long, default_value_t = 0)]
        tick_ms: u64,
        #[arg(long, default_value_t = 1000)]
        chats: usize,
    },
    /// In-process: READS pages of 20 messages from resident chats' actors on this thread, as
    /// the actor's JSON and as views then serde_json; the time of each per page.
    Page {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 1000)]
        chats: usize,
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        /// Answers of this many bytes of text like a model's (0: about 40 bytes).
        #[arg(long, default_value_t = 0)]
        answer_bytes: usize,
        #[arg(long, default_value_t = 200_000)]
        reads: usize,
    },
    /// In-process: import CHATS chats of MESSAGES messages (messages/s), then export each
    /// ROUNDS times (ms per export).
    Portable {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 10)]
        chats: usize,
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// In-process: USERS accounts of CHATS chats of MESSAGES messages each, then QUERIES
    /// searches of a random user for a random word.
    Search {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[arg(long, default_value_t = 10)]
        chats: usize,
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        #[arg(long, default_value_t = 500)]
        queries: usize,
    },
    /// In-process: one lone question at a time; time from the send to its acknowledgement
    /// (in durable mode, its commit).
    Ack {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 100)]
        chats: usize,
        #[arg(long, default_value_t = 2000)]
        sends: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ceiling { port, workers } => ceiling(port, workers),
        Command::Seed {
            base,
            chats,
            pairs,
            concurrency,
            out,
        } => seed(&base, chats, pairs, concurrency, &out),
        Command::StubLlm { port } => stub_llm(port),
        Command::Ttft {
            base,
            state,
            stub,
            requests,
        } => ttft::ttft(&base, &state, &stub, requests),
        Command::Activation {
            config,
            chats,
            pairs,
            rounds,
        } => inproc::activation(&config, chats, pairs, rounds),
        Command::Memory {
            config,
            chats,
            pairs,
        } => inproc::memory(&config, chats, pairs),
        Command::MemoryMeasure { config, state } => inproc::memory_measure(&config, &state),
        Command::MemoryFloor { chats } => inproc::memory_floor(chats),
        Command::Lag {
            config,
            chats,
            rate,
            seconds,
        } => inproc::lag(&config, chats, rate, seconds),
        Command::Portable {
            config,
            chats,
            messages,
            rounds,
        } => portable::export_import(&config, chats, messages, rounds),
        Command::Search {
            config,
            users,
            chats,
            messages,
            queries,
        } => portable::search(&config, users, chats, messages, queries),
        Command::Ack {
            config,
            chats,
            sends,
        } => inproc::ack(&config, chats, sends),
        Command::Page {
            config,
            chats,
            pairs,
            answer_bytes,
            reads,
        } => inproc::page(&config, chats, pairs, answer_bytes, reads),
        Command::StoreFloor {
            mongodb_url,
            shape,
            rate,
            seconds,
            in_flight,
            batch_max,
            tick_ms,
            chats,
        } => floor::run(floor::Floor {
            url: mongodb_url,
            shape,
            rate,
            seconds,
            in_flight,
            batch_max,
            tick: std::time::Duration::from_millis(tick_ms),
            chats,
        }),
    }
}

/// `GET /` → "ok"; `GET /body?bytes=N` → N bytes of JSON-safe text, already in memory: what
/// moving a response of that size costs the framework, the kernel and wrk, and nothing else.
///
/// `GET /actor/{uuid}?bytes=N`: the bearer token (from `GET /token`) checked with Arbor's own
/// `Tokens`, one round trip to an actor on an arbiter of its own (every request crosses
/// threads twice, as with `actors.placement = "spread"`), and the same static body; no tree, no
/// JSON. `GET /local/{uuid}?bytes=N` is the same with the actor on one of the HTTP workers, as
/// Arbor places its chats by default: the floor of Arbor's shape.
fn ceiling(port: u16, workers: usize) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let body = web::Bytes::from(vec![b'x'; MAX_BODY]);
        let tokens = web::Data::new(Tokens::new(b"bench-secret-bench-secret-bench!!", 60));
        let actors = web::Data::new(
            (0..workers.max(1))
                .map(|_| Holder::start_in_arbiter(&Arbiter::new().handle(), |_| Holder))
                .collect::<Vec<_>>(),
        );
        let locals = web::Data::new(Locals::default());
        HttpServer::new(move || {
            // The factory runs on each HTTP worker: its holder lives there, as Arbor's chat
            // actors live on the worker that activated them.
            locals.0.write().expect("locals").push(Holder.start());
            let body = web::Data::new(body.clone());
            App::new()
                .app_data(body)
                .app_data(tokens.clone())
                .app_data(actors.clone())
                .app_data(locals.clone())
                .route("/", web::get().to(|| async { "ok" }))
                .route("/body", web::get().to(static_body))
                .route("/token", web::get().to(issue_token))
                .route("/actor/{id}", web::get().to(through_actor))
                .route("/local/{id}", web::get().to(through_local_actor))
        })
        .workers(workers)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })?;
    Ok(())
}

const MAX_BODY: usize = 1 << 20;

/// The `bytes=N` query of a ceiling request, as a slice of the static body.
fn sized(req: &HttpRequest, body: &web::Bytes) -> web::Bytes {
    let bytes = req
        .query_string()
        .strip_prefix("bytes=")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    body.slice(..bytes)
}

async fn static_body(req: HttpRequest, body: web::Data<web::Bytes>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(sized(&req, &body))
}

async fn issue_token(tokens: web::Data<Tokens>) -> Result<String, arbor::error::ApiError> {
    tokens.issue(arbor_actors::model::UserId::new())
}

/// An actor that answers at once, standing in for a chat actor.
struct Holder;

impl Actor for Holder {
    type Context = actix::Context<Self>;
}

#[derive(actix::Message)]
#[rtype(result = "()")]
struct Ping;

impl Handler<Ping> for Holder {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut actix::Context<Self>) {}
}

async fn through_actor(
    req: HttpRequest,
    id: web::Path<uuid::Uuid>,
    body: web::Data<web::Bytes>,
    tokens: web::Data<Tokens>,
    actors: web::Data<Vec<Addr<Holder>>>,
) -> Result<HttpResponse, arbor::error::ApiError> {
    let actor = actors[id.as_bytes()[15] as usize % actors.len()].clone();
    through(&req, &body, &tokens, actor).await
}

/// One holder per HTTP worker, started on that worker.
#[derive(Default)]
struct Locals(std::sync::RwLock<Vec<Addr<Holder>>>);

/// `through_actor` with Arbor's placement: the holder for an id lives on one of the HTTP
/// workers, so a request crosses threads only when its connection is on the other worker.
async fn through_local_actor(
    req: HttpRequest,
    id: web::Path<uuid::Uuid>,
    body: web::Data<web::Bytes>,
    tokens: web::Data<Tokens>,
    locals: web::Data<Locals>,
) -> Result<HttpResponse, arbor::error::ApiError> {
    let actor = {
        let locals = locals.0.read().expect("locals");
        locals[id.as_bytes()[15] as usize % locals.len()].clone()
    };
    through(&req, &body, &tokens, actor).await
}

/// The bearer token checked, one round trip to `actor`, then the sized static body.
async fn through(
    req: &HttpRequest,
    body: &web::Bytes,
    tokens: &Tokens,
    actor: Addr<Holder>,
) -> Result<HttpResponse, arbor::error::ApiError> {
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    tokens.verify(bearer)?;
    actor
        .send(Ping)
        .await
        .map_err(arbor::error::ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(sized(req, body)))
}

/// One streamed completion: a role chunk, three content chunks, the finish, `[DONE]`.
fn stub_stream(model: &str) -> String {
    let chunk = |delta: Value, finish: Value| {
        let body = json!({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        });
        format!("data: {body}\n\n")
    };
    let mut out = chunk(json!({"role": "assistant"}), Value::Null);
    for word in ["Hello", " from", " the stub."] {
        out.push_str(&chunk(json!({"content": word}), Value::Null));
    }
    out.push_str(&chunk(json!({}), json!("stop")));
    out.push_str("data: [DONE]\n\n");
    out
}

/// What the stub reads of a request; the rest (the messages) is skipped unread.
#[derive(serde::Deserialize)]
struct StubRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: bool,
}

fn stub_llm(port: u16) -> anyhow::Result<()> {
    use std::cell::RefCell;
    thread_local! {
        /// The last model's streamed reply, built once: every request names the same model.
        static STREAM: RefCell<(String, actix_web::web::Bytes)> = RefCell::default();
    }
    async fn completions(body: web::Json<StubRequest>) -> HttpResponse {
        let model = body.model.as_deref().unwrap_or("stub");
        if body.stream {
            let reply = STREAM.with_borrow_mut(|(name, reply)| {
                if reply.is_empty() || name != model {
                    *name = model.to_owned();
                    *reply = stub_stream(model).into();
                }
                reply.clone()
            });
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .body(reply)
        } else {
            HttpResponse::Ok().json(json!({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Hello from the stub."}}]
            }))
        }
    }
    actix_web::rt::System::new().block_on(
        HttpServer::new(|| App::new().route("/v1/chat/completions", web::post().to(completions)))
            .workers(1)
            .bind(("127.0.0.1", port))?
            .run(),
    )?;
    Ok(())
}

fn seed(
    base: &str,
    chats: usize,
    pairs: usize,
    concurrency: usize,
    out: &PathBuf,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let email = format!("bench-{}@example.com", uuid::Uuid::new_v4().simple());
        let session = post(
            &client,
            &format!("{base}/api/v1/auth/register"),
            None,
            json!({"email": email, "password": "bench-password"}),
        )
        .await?;
        let token = session["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned();
        let ids: Vec<String> = stream::iter(0..chats)
            .map(|i| {
                let (client, token) = (&client, &token);
                async move {
                    let chat = post(
                        client,
                        &format!("{base}/api/v1/chats"),
                        Some(token),
                        json!({"title": format!("bench chat {i}")}),
                    )
                    .await?;
                    let id = chat["id"].as_str().context("no chat id")?.to_owned();
                    for p in 0..pairs {
                        post(
                            client,
                            &format!("{base}/api/v1/chats/{id}/messages"),
                            Some(token),
                            json!({"content": format!("question {p}"), "response": format!("answer {p}")}),
                        )
                        .await?;
                    }
                    anyhow::Ok(id)
                }
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let mut file = std::fs::File::create(out)
            .with_context(|| format!("creating {}", out.display()))?;
        writeln!(file, "{token}")?;
        for id in ids {
            writeln!(file, "{id}")?;
        }
        Ok(())
    })
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    // Seeding many chats at once can outrun the writer: Arbor then sheds the request (503,
    // nothing applied), and a client retries later.
    let mut backoff = std::time::Duration::from_millis(5);
    let mut retries = 50;
    loop {
        let mut req = client.post(url).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await?;
        let status = res.status();
        let answer: Value = res.json().await?;
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && retries > 0 {
            retries -= 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_millis(500));
            continue;
        }
        if !status.is_success() {
            bail!("POST {url}: {status}: {answer}");
        }
        return Ok(answer);
    }
}
