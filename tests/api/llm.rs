//! Replies from a real local HTTP server speaking the OpenAI protocol: streaming, resume,
//! cancel, regenerate, edit + reply, concurrency per branch, retries, circuit breaker, timeouts,
//! queue bounds, model resolution, and the exact context sent upstream.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arbor::config::ActorPlacement;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::provider::*;

/// One server-sent event as a client reads it.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

/// Reads server-sent events from a response.
pub struct Events {
    res: reqwest::Response,
    buf: Vec<u8>,
}

impl Events {
    pub fn new(res: reqwest::Response) -> Self {
        assert_eq!(res.status(), StatusCode::OK);
        let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Self {
            res,
            buf: Vec::new(),
        }
    }

    pub async fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame = String::from_utf8(self.buf.drain(..end + 2).collect()).unwrap();
                if frame.starts_with(':') {
                    continue;
                }
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                        .unwrap()
                        .to_owned()
                };
                return Some(Ev {
                    id: field("id").parse().unwrap(),
                    event: field("event"),
                    data: serde_json::from_str(&field("data")).unwrap(),
                });
            }
            match self.res.chunk().await.unwrap() {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return None,
            }
        }
    }

    pub async fn rest(mut self) -> Vec<Ev> {
        let mut all = Vec::new();
        while let Some(ev) = self.next().await {
            all.push(ev);
        }
        all
    }
}

fn deltas(events: &[Ev]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["content"].as_str().unwrap())
        .collect()
}

/// A long reply streamed slowly: `{prefix}0 {prefix}1 ...`, 50 ms apart.
pub fn slow_words(prefix: &str, n: usize) -> Script {
    Script::Stream {
        pieces: (0..n).map(|i| format!("{prefix}{i} ")).collect(),
        delay: Duration::from_millis(50),
    }
}

struct Setup {
    app: TestApp,
    stub: StubProvider,
    u: User,
    chat: String,
}

impl Setup {
    async fn new() -> Self {
        Self::with(|_, _| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut arbor::config::Settings, &StubProvider)) -> Self {
        let stub = StubProvider::start().await;
        let app = spawn_with(|s| {
            stub.configure(s);
            tweak(s, &stub);
        })
        .await;
        let u = app.register("llm@example.com").await;
        let chat = id(&app.create_chat(&u, "llm").await);
        Self { app, stub, u, chat }
    }

    fn messages(&self) -> String {
        format!("/api/v1/chats/{}/messages", self.chat)
    }

    async fn send(&self, body: Value) -> reqwest::Response {
        self.app.post(&self.u, &self.messages(), body).await
    }

    async fn stream(&self, content: &str) -> Events {
        Events::new(
            self.send(json!({"content": content, "reply": true, "stream": true}))
                .await,
        )
    }

    async fn reply(&self, content: &str) -> Value {
        let res = self.send(json!({"content": content, "reply": true})).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    }

    fn generation(&self, id: &str) -> String {
        format!("/api/v1/chats/{}/generations/{id}", self.chat)
    }

    /// `POST .../cancel`; the generation's status.
    async fn cancel(&self, generation: &str) -> Value {
        let path = format!("{}/cancel", self.generation(generation));
        let res = self.app.post(&self.u, &path, json!({})).await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    /// `GET .../events` with a `Last-Event-ID` header.
    async fn events_after(&self, generation: &str, last_event_id: &str) -> reqwest::Response {
        self.app
            .client
            .get(
                self.app
                    .url(&format!("{}/events", self.generation(generation))),
            )
            .bearer_auth(&self.u.token)
            .header("last-event-id", last_event_id)
            .send()
            .await
            .unwrap()
    }
}

#[actix_web::test]
async fn a_reply_is_generated_upstream_and_stored_as_the_child_of_the_user_message() {
    let t = Setup::new().await;
    let sent = t.reply("hello there").await;
    let (question, answer) = (&sent["messages"][0], &sent["messages"][1]);
    assert_eq!(question["content"], "hello there");
    assert_eq!(answer["role"], "assistant");
    assert_eq!(answer["content"], default_reply("hello there"));
    assert_eq!(answer["parent_id"], question["id"]);
    assert_eq!(answer["model"], STUB_MODEL);
    let meta = &answer["metadata"];
    assert_eq!(meta["provider"], "stub");
    assert_eq!(meta["finish_reason"], "stop");
    assert_eq!(meta["generation_id"], sent["generation_id"]);
    assert_eq!(meta["usage"]["completion_tokens"], 4);
    assert!(meta.get("incomplete").is_none());

    // What went upstream: the protocol's request, for the configured model.
    let request = &t.stub.requests()[0];
    assert_eq!(request["model"], STUB_MODEL);
    assert_eq!(request["stream"], true);
    assert_eq!(request["stream_options"]["include_usage"], true);
    assert_eq!(t.stub.turns(0), [("user".into(), "hello there".into())]);

    // Stored: the branch path holds both, and survives eviction.
    t.app.chats.evict(t.chat.parse().unwrap()).await;
    assert_eq!(
        t.app.path(&t.u, &t.chat, None).await,
        ["hello there", &default_reply("hello there")]
    );

    // A provider that ignores `stream: true` and answers with plain JSON works too.
    t.stub.push([Script::Json {
        content: "plain".into(),
    }]);
    let sent = t.reply("again").await;
    assert_eq!(sent["messages"][1]["content"], "plain");
}

#[actix_web::test]
async fn streaming_sends_the_user_message_deltas_and_the_stored_reply() {
    let t = Setup::new().await;
    t.stub
        .push([Script::stream(&["Hel", "lo", " wor", "ld"], 5)]);
    let events = t.stream("greet me").await.rest().await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "user_message",
            "delta",
            "delta",
            "delta",
            "delta",
            "assistant_message"
        ]
    );
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    let user = &events[0].data["message"];
    assert_eq!(user["content"], "greet me");
    assert_eq!(deltas(&events), "Hello world");
    let last = &events[5].data;
    assert_eq!(last["status"], "completed");
    assert_eq!(last["message"]["content"], "Hello world");
    assert_eq!(last["message"]["parent_id"], user["id"]);
    assert_eq!(last["usage"]["completion_tokens"], 4);
    assert_eq!(last["generation_id"], events[0].data["generation_id"]);

    // The reply was persisted when it completed.
    let path = t.app.path(&t.u, &t.chat, None).await;
    assert_eq!(path, ["greet me", "Hello world"]);

    // `Accept: text/event-stream` asks for the same stream.
    let res = t
        .app
        .client
        .post(t.app.url(&t.messages()))
        .bearer_auth(&t.u.token)
        .header("accept", "text/event-stream")
        .json(&json!({"content": "accept header", "reply": true}))
        .send()
        .await
        .unwrap();
    let events = Events::new(res).rest().await;
    assert_eq!(events.last().unwrap().event, "assistant_message");
    assert_eq!(deltas(&events), default_reply("accept header"));

    // `stream` without `reply` is a client mistake.
    let res = t.send(json!({"content": "x", "stream": true})).await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}

#[actix_web::test]
async fn the_request_holds_the_system_prompt_and_exactly_the_branch_path_within_budget() {
    let t = Setup::with(|s, stub| {
        // A second provider with a small context budget.
        let mut small = stub.provider();
        small.context_chars = 30;
        s.llm.providers.insert("small".into(), small);
    })
    .await;
    let res = t
        .app
        .patch(
            &t.u,
            &format!("/api/v1/chats/{}", t.chat),
            json!({"system_prompt": "Be brief."}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    t.reply("one").await; // -> stub says: one
    t.reply("two").await; // -> stub says: two
                          // Fork after the first Q&A pair and ask there: the main branch's second pair must not leak.
    let res = t
        .app
        .post(
            &t.u,
            &format!("/api/v1/chats/{}/branches", t.chat),
            json!({"message_index": 1}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let fork: Value = res.json().await.unwrap();
    let res = t
        .send(json!({"content": "three", "reply": true, "branch_id": fork["id"]}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let turn = |role: &str, content: &str| (role.to_owned(), content.to_owned());
    assert_eq!(
        t.stub.turns(2),
        [
            turn("system", "Be brief."),
            turn("user", "one"),
            turn("assistant", &default_reply("one")),
            turn("user", "three"),
        ]
    );

    // Within a 30-character budget: the system prompt (9) always, then the newest messages that
    // fit in the remaining 21: `four` (4) and `stub says: three` (16), but not `three` (5).
    let res = t
        .send(json!({"content": "four", "reply": true, "model": "small", "branch_id": fork["id"]}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        t.stub.turns(3),
        [
            turn("system", "Be brief."),
            turn("assistant", &default_reply("three")),
            turn("user", "four"),
        ]
    );
}

#[actix_web::test]
async fn a_lost_stream_resumes_from_last_event_id_and_events_stay_after_the_end() {
    let t = Setup::new().await;
    let pieces = ["a", "b", "c", "d", "e", "f", "g", "h"];
    t.stub.push([Script::stream(&pieces, 60)]);
    let mut events = t.stream("slowly").await;
    let first: Vec<Ev> = vec![
        events.next().await.unwrap(),
        events.next().await.unwrap(),
        events.next().await.unwrap(),
    ];
    let generation = first[0].data["generation_id"].as_str().unwrap().to_owned();
    drop(events); // the connection is lost mid-reply

    let res = t.events_after(&generation, "3").await;
    let rest = Events::new(res).rest().await;
    assert_eq!(
        rest.first().unwrap().id,
        4,
        "resumes right after the last seen event"
    );
    let all: Vec<Ev> = first.into_iter().chain(rest).collect();
    let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>(), "no gap, no repeat");
    assert_eq!(deltas(&all), "abcdefgh");
    assert_eq!(all.last().unwrap().event, "assistant_message");

    // After the end the events are still there (query form of the cursor), and the status says
    // which message was stored.
    let res = t
        .app
        .get(
            &t.u,
            &format!("{}/events?last_event_id=8", t.generation(&generation)),
        )
        .await;
    let tail = Events::new(res).rest().await;
    assert_eq!(tail.iter().map(|e| e.id).collect::<Vec<_>>(), [9, 10]);
    let status: Value = t
        .app
        .get(&t.u, &t.generation(&generation))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "completed");
    assert_eq!(status["last_event_id"], 10);
    assert_eq!(
        status["message_id"],
        all.last().unwrap().data["message"]["id"]
    );

    // Another user cannot see it; a bad cursor is a 422; an unknown generation a 404.
    let other = t.app.register("other@example.com").await;
    let res = t.app.get(&other, &t.generation(&generation)).await;
    assert_error(res, StatusCode::NOT_FOUND, "generation_not_found").await;
    let res = t.events_after(&generation, "soon").await;
    assert_error(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_last_event_id",
    )
    .await;
    let res = t
        .app
        .get(&t.u, &t.generation("0190c5a0-0000-7000-8000-000000000000"))
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "generation_not_found").await;
}

#[actix_web::test]
async fn cancel_stops_the_upstream_request_and_stores_the_partial_reply_as_incomplete() {
    let t = Setup::new().await;
    t.stub.push([slow_words("w", 100)]);
    let mut events = t.stream("tell me everything").await;
    let start = events.next().await.unwrap();
    let generation = start.data["generation_id"].as_str().unwrap().to_owned();
    let mut seen = vec![start];
    while seen.len() < 3 {
        seen.push(events.next().await.unwrap());
    }

    let status = t.cancel(&generation).await;
    assert_eq!(status["status"], "cancelled");

    // The stream the client holds ends with the stored partial reply.
    seen.extend(events.rest().await);
    let last = seen.last().unwrap();
    assert_eq!(last.event, "assistant_message");
    assert_eq!(last.data["status"], "cancelled");
    let stored = &last.data["message"];
    assert_eq!(stored["id"], status["message_id"]);
    assert_eq!(stored["metadata"]["incomplete"], true);
    assert_eq!(stored["metadata"]["finish_reason"], "cancelled");
    let partial = stored["content"].as_str().unwrap();
    assert_eq!(partial, deltas(&seen));
    assert!(
        partial.starts_with("w0 w1 ") && partial.len() < 100,
        "{partial}"
    );

    // Upstream, the request was dropped, not finished.
    for _ in 0..50 {
        if t.stub.state.aborted.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.stub.state.aborted.load(Ordering::SeqCst), 1);
    assert_eq!(t.stub.state.finished.load(Ordering::SeqCst), 0);

    // The partial reply is on the branch, and the branch takes new sends.
    let path = t.app.path(&t.u, &t.chat, None).await;
    assert_eq!(path, ["tell me everything", partial]);
    t.reply("next").await;

    // Cancelling an ended generation changes nothing.
    let again = t.cancel(&generation).await;
    assert_eq!(again["status"], "cancelled");
    assert_eq!(again["message_id"], status["message_id"]);
}

#[actix_web::test]
async fn regenerate_adds_a_sibling_reply_on_a_new_active_branch() {
    let t = Setup::new().await;
    let sent = t.reply("question").await;
    let (question, first) = (&sent["messages"][0], &sent["messages"][1]);
    let main = sent["branch_id"].clone();
    t.stub.push([Script::stream(&["second ", "answer"], 0)]);

    let res = t
        .app
        .post(
            &t.u,
            &format!("{}/{}/regenerate", t.messages(), id(first)),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let regen: Value = res.json().await.unwrap();
    let reply = &regen["reply"];
    assert_eq!(reply["content"], "second answer");
    assert_eq!(reply["parent_id"], question["id"]);
    assert_eq!(reply["sibling_index"], 1);
    assert_eq!(reply["sibling_count"], 2);
    assert_ne!(regen["branch"]["id"], main);
    assert_eq!(regen["branch"]["head_message_id"], reply["id"]);
    // The same context went upstream: the question only.
    assert_eq!(t.stub.turns(1), [("user".into(), "question".into())]);

    // The new branch is active; the old reply stays reachable on the old one.
    let chat: Value = t
        .app
        .get(&t.u, &format!("/api/v1/chats/{}", t.chat))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(chat["active_branch_id"], regen["branch"]["id"]);
    assert_eq!(
        t.app.path(&t.u, &t.chat, None).await,
        ["question", "second answer"]
    );
    assert_eq!(
        t.app.path(&t.u, &t.chat, main.as_str()).await,
        ["question", &default_reply("question")]
    );

    // Regenerating from the user message works the same, streamed, with no body at all.
    let res = t
        .app
        .client
        .post(
            t.app
                .url(&format!("{}/{}/regenerate", t.messages(), id(question))),
        )
        .bearer_auth(&t.u.token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let events = Events::new(res).rest().await;
    let last = &events.last().unwrap().data["message"];
    assert_eq!(last["parent_id"], question["id"]);
    assert_eq!(last["sibling_count"], 3);

    // A system message cannot be regenerated; an unknown one is a 404.
    let res = t.send(json!({"role": "system", "content": "rules"})).await;
    let sys: Value = res.json().await.unwrap();
    let res = t
        .app
        .post(
            &t.u,
            &format!("{}/{}/regenerate", t.messages(), id(&sys["messages"][0])),
            json!({}),
        )
        .await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let res = t
        .app
        .post(
            &t.u,
            &format!(
                "{}/0190c5a0-0000-7000-8000-000000000000/regenerate",
                t.messages()
            ),
            json!({}),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "message_not_found").await;
}

#[actix_web::test]
async fn edit_with_reply_answers_the_edited_message_on_the_new_branch() {
    let t = Setup::new().await;
    let sent = t.reply("first draft").await;
    let question = &sent["messages"][0];
    let res = t
        .app
        .post(
            &t.u,
            &format!("{}/{}/edit", t.messages(), id(question)),
            json!({"content": "second draft", "reply": true, "stream": true}),
        )
        .await;
    let events = Events::new(res).rest().await;
    assert_eq!(events[0].data["message"]["content"], "second draft");
    let reply = &events.last().unwrap().data["message"];
    assert_eq!(reply["content"], default_reply("second draft"));
    assert_eq!(t.stub.turns(1), [("user".into(), "second draft".into())]);
    assert_eq!(
        t.app.path(&t.u, &t.chat, None).await,
        ["second draft", &default_reply("second draft")]
    );
}

#[actix_web::test]
async fn one_generation_per_branch_but_branches_generate_concurrently() {
    let t = Setup::new().await;
    t.reply("base").await;
    t.stub
        .push([Script::stream(&["slow ", "main ", "reply"], 300)]);
    let mut main = t.stream("on main").await;
    let started = main.next().await.unwrap();
    assert_eq!(started.event, "user_message");

    // Same branch: refused while it generates, and nothing is stored.
    let res = t.send(json!({"content": "too soon", "reply": true})).await;
    assert_error(res, StatusCode::CONFLICT, "generation_in_progress").await;
    let res = t.send(json!({"content": "too soon, no reply"})).await;
    assert_error(res, StatusCode::CONFLICT, "generation_in_progress").await;

    // Another branch generates meanwhile and finishes first.
    let res = t
        .app
        .post(
            &t.u,
            &format!("/api/v1/chats/{}/branches", t.chat),
            json!({"message_index": 1, "activate": false}),
        )
        .await;
    let fork: Value = res.json().await.unwrap();
    let res = t
        .send(json!({"content": "on fork", "reply": true, "branch_id": fork["id"]}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let on_fork: Value = res.json().await.unwrap();
    assert_eq!(on_fork["messages"][1]["content"], default_reply("on fork"));
    // Reads of the generating chat are served meanwhile.
    assert_eq!(t.app.path(&t.u, &t.chat, None).await.len(), 3);

    // Evicting the chat mid-reply keeps the branch's lock and the reply lands.
    t.app.chats.evict(t.chat.parse().unwrap()).await;
    let res = t.send(json!({"content": "still too soon"})).await;
    assert_error(res, StatusCode::CONFLICT, "generation_in_progress").await;
    let rest = main.rest().await;
    assert_eq!(
        rest.last().unwrap().data["message"]["content"],
        "slow main reply"
    );
    assert_eq!(
        t.app.path(&t.u, &t.chat, None).await,
        ["base", &default_reply("base"), "on main", "slow main reply"]
    );
    t.reply("free again").await;
}

#[actix_web::test]
async fn retryable_failures_are_retried_honouring_retry_after() {
    let t = Setup::with(|s, _| {
        if let Some(p) = s.llm.providers.get_mut("stub") {
            p.max_retries = 3;
        }
    })
    .await;
    t.stub.push([
        Script::Status {
            code: 429,
            retry_after: Some("1"),
            body: json!({"error": {"message": "rate limited"}}),
        },
        Script::status(503),
        Script::Drop { pieces: vec![] }, // dropped before any token: still retryable
    ]);
    let started = Instant::now();
    let sent = t.reply("persist").await;
    assert_eq!(sent["messages"][1]["content"], default_reply("persist"));
    assert_eq!(t.stub.hits(), 4);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    // Every attempt carried the same request.
    let requests = t.stub.requests();
    assert!(requests.iter().all(|r| r == &requests[0]));
}

#[actix_web::test]
async fn provider_errors_keep_the_user_message_and_are_reported_clearly() {
    let t = Setup::with(|s, _| {
        if let Some(p) = s.llm.providers.get_mut("stub") {
            p.timeout_secs = 1;
            p.breaker_failures = 100; // this test is about errors, not the breaker
        }
    })
    .await;
    // A non-retryable 400: one attempt, 502 with the provider's status and message.
    t.stub.push([Script::Status {
        code: 400,
        retry_after: None,
        body: json!({"error": {"message": "context_length_exceeded"}}),
    }]);
    let res = t.send(json!({"content": "too long", "reply": true})).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    assert_eq!(body["error"]["upstream_status"], 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("context_length_exceeded"));
    assert_eq!(t.stub.hits(), 1);
    assert_eq!(t.app.path(&t.u, &t.chat, None).await, ["too long"]);

    // Retries exhausted on 500s: 502, after 1 + max_retries attempts.
    t.stub.push([
        Script::status(500),
        Script::status(500),
        Script::status(500),
    ]);
    let res = t.send(json!({"content": "unlucky", "reply": true})).await;
    assert_error(res, StatusCode::BAD_GATEWAY, "upstream_error").await;
    assert_eq!(t.stub.hits(), 4);

    // A connection dropped mid-stream, after tokens: no retry (the tokens were streamed), an
    // `error` event, nothing stored but the user message.
    t.stub.push([Script::Drop {
        pieces: vec!["half ".into(), "a ".into()],
    }]);
    let events = t.stream("dropped").await.rest().await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "upstream_error");
    assert_eq!(deltas(&events), "half a ");
    assert_eq!(t.stub.hits(), 5);

    // A provider that sends nothing: 504 after the timeout (the retries time out too).
    t.stub.push([Script::Hang, Script::Hang, Script::Hang]);
    let res = t.send(json!({"content": "anyone?", "reply": true})).await;
    assert_error(res, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout").await;

    assert_eq!(
        t.app.path(&t.u, &t.chat, None).await,
        ["too long", "unlucky", "dropped", "anyone?"]
    );
    // Nothing hangs: the branch takes sends again.
    t.reply("recovered").await;
}

#[actix_web::test]
async fn the_circuit_breaker_fails_fast_while_the_provider_is_down_and_probes_later() {
    let t = Setup::with(|s, _| {
        if let Some(p) = s.llm.providers.get_mut("stub") {
            p.max_retries = 0;
            p.breaker_failures = 2;
            p.breaker_cooldown_secs = 1;
        }
    })
    .await;
    t.stub.push([Script::status(502), Script::status(502)]);
    for _ in 0..2 {
        let res = t.send(json!({"content": "down?", "reply": true})).await;
        assert_error(res, StatusCode::BAD_GATEWAY, "upstream_error").await;
    }
    // Open: refused before anything is stored or sent upstream.
    let res = t.send(json!({"content": "refused", "reply": true})).await;
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "llm_unavailable").await;
    assert_eq!(t.stub.hits(), 2);
    assert_eq!(t.app.path(&t.u, &t.chat, None).await, ["down?", "down?"]);
    let models: Value = t
        .app
        .get(&t.u, "/api/v1/models")
        .await
        .json()
        .await
        .unwrap();
    let stub = models["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "stub")
        .unwrap()
        .clone();
    assert_eq!(stub["circuit"], "open");

    // After the cooldown one probe goes through; it succeeds and closes the breaker.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    t.reply("back?").await;
    t.reply("back!").await;
    assert_eq!(t.stub.hits(), 4);
}

#[actix_web::test]
async fn a_full_provider_queue_answers_llm_overloaded() {
    let t = Setup::with(|s, _| {
        if let Some(p) = s.llm.providers.get_mut("stub") {
            p.max_concurrent = 1;
            p.queue_capacity = 1;
        }
    })
    .await;
    let chat2 = id(&t.app.create_chat(&t.u, "second").await);
    let chat3 = id(&t.app.create_chat(&t.u, "third").await);
    t.stub.push([
        Script::stream(&["busy"], 400),
        Script::stream(&["queued"], 0),
    ]);
    let mut running = t.stream("first").await;
    running.next().await.unwrap();
    // Wait until the worker holds the first request, so the second one queues.
    while t.stub.hits() < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = t
        .app
        .post(
            &t.u,
            &format!("/api/v1/chats/{chat2}/messages"),
            json!({"content": "second", "reply": true, "stream": true}),
        )
        .await;
    let queued = Events::new(queued);
    let res = t
        .app
        .post(
            &t.u,
            &format!("/api/v1/chats/{chat3}/messages"),
            json!({"content": "third", "reply": true}),
        )
        .await;
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "llm_overloaded").await;
    assert!(t.app.path(&t.u, &chat3, None).await.is_empty());
    // Both admitted replies complete.
    assert_eq!(
        running.rest().await.last().unwrap().event,
        "assistant_message"
    );
    let queued = queued.rest().await;
    assert_eq!(queued.last().unwrap().data["message"]["content"], "queued");
}

#[actix_web::test]
async fn models_lists_providers_and_aliases_without_secrets_and_resolves_names() {
    std::env::set_var("TEST_STUB_KEY", "sk-very-secret-value");
    let t = Setup::with(|s, _| {
        if let Some(p) = s.llm.providers.get_mut("stub") {
            p.api_key_env = "TEST_STUB_KEY".into();
            p.models = vec![STUB_MODEL.into(), "stub-large".into()];
        }
        s.llm
            .aliases
            .insert("fast".into(), "stub/stub-large".into());
    })
    .await;
    let res = t.app.get(&t.u, "/api/v1/models").await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    assert!(!text.contains("sk-very-secret"), "{text}");
    let models: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(models["default"], format!("stub/{STUB_MODEL}"));
    assert_eq!(
        models["aliases"],
        json!([{"alias": "fast", "target": "stub/stub-large"}])
    );
    let names: Vec<&str> = models["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "stub"]);
    assert_eq!(models["providers"][0]["offline"], true);

    for (asked, upstream) in [
        ("fast", "stub-large"),
        ("stub/stub-large", "stub-large"),
        ("stub", STUB_MODEL),
    ] {
        let res = t
            .send(json!({"content": asked, "reply": true, "model": asked}))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let sent: Value = res.json().await.unwrap();
        assert_eq!(sent["messages"][1]["metadata"]["provider"], "stub");
        assert_eq!(t.stub.requests().last().unwrap()["model"], upstream);
    }
    assert_eq!(
        t.stub.authorizations().last().unwrap().as_deref(),
        Some("Bearer sk-very-secret-value")
    );
    let res = t
        .send(json!({"content": "offline", "reply": true, "model": "echo"}))
        .await;
    let sent: Value = res.json().await.unwrap();
    assert_eq!(sent["messages"][1]["content"], "echo: offline");

    // Unknown names: 422 and nothing stored.
    let before = t.app.path(&t.u, &t.chat, None).await;
    for unknown in ["gpt-17", "stub/not-listed", "nobody/model"] {
        let res = t
            .send(json!({"content": "x", "reply": true, "model": unknown}))
            .await;
        assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "unknown_model").await;
    }
    assert_eq!(t.app.path(&t.u, &t.chat, None).await, before);

    // /models needs a login.
    let res = t
        .app
        .client
        .get(t.app.url("/api/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn a_graceful_stop_stores_the_partial_reply_of_a_running_generation() {
    graceful_stop_stores_the_partial_reply(ActorPlacement::Spread).await;
}

/// With the chat's actor on the HTTP worker, which stops first: storing the reply activates
/// the chat again, after the shutdown of the workers' runtimes.
#[actix_web::test]
async fn a_graceful_stop_stores_the_partial_reply_of_an_actor_on_a_worker() {
    graceful_stop_stores_the_partial_reply(ActorPlacement::Local).await;
}

async fn graceful_stop_stores_the_partial_reply(placement: ActorPlacement) {
    let t = Setup::with(|s, _| s.actors.placement = placement).await;
    t.stub.push([slow_words("p", 200)]);
    let mut events = t.stream("long story").await;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(events.next().await.unwrap());
    }
    drop(events);
    let Setup { app, u, chat, stub } = t;
    let (settings, dir) = app.stop().await;

    let app = start(settings).await;
    let page: Value = app
        .get(&u, &format!("/api/v1/chats/{chat}/messages"))
        .await
        .json()
        .await
        .unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    let partial = &messages[1];
    assert_eq!(partial["metadata"]["incomplete"], true);
    assert!(partial["content"]
        .as_str()
        .unwrap()
        .starts_with("p0 p1 p2 "));
    app.stop().await;
    stub.stop().await;
    drop(dir);
}

/// A reply's drive task runs on its chat actor's thread. With `local` placement that is a
/// thread that can stop while the reply is generated (an HTTP worker's, at shutdown): the rest
/// is handed to the registry's arbiter, and the reply is stored all the same, once.
#[actix_web::test]
async fn a_reply_whose_thread_stops_midway_is_stored_once() {
    use arbor_actors::model::{ChatId, UserId};

    let t = Setup::with(|s, _| s.actors.placement = ActorPlacement::Local).await;
    t.stub.push([slow_words("w", 6)]);
    let (user, chat): (UserId, ChatId) = (t.u.id.parse().unwrap(), t.chat.parse().unwrap());
    // Resident on an HTTP worker since its creation: let this thread activate it.
    t.app.chats.evict(chat).await;

    let chats = t.app.chats.clone();
    let generation = on_a_thread_that_then_stops(async move {
        let started = chats.send(user, chat, send_request("tell me", true));
        started.await.unwrap().generation.unwrap()
    })
    .await;

    let reply = tokio::time::timeout(Duration::from_secs(10), generation.outcome())
        .await
        .expect("the reply was never stored")
        .unwrap();
    assert_eq!(&*reply.content, "w0 w1 w2 w3 w4 w5 ");
    let page = t
        .app
        .chats
        .list_messages(user, chat, None, 100, None)
        .await
        .unwrap();
    let ids: Vec<_> = page.messages.iter().map(|m| m.id).collect();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(ids[1], reply.id);
    t.stub.stop().await;
}

/// A drive task handed over midway may send its reply again after the first one was stored:
/// the second answers with the stored message instead of storing another.
#[actix_web::test]
async fn storing_the_same_reply_twice_stores_it_once() {
    use arbor_actors::chat::CompleteGeneration;
    use arbor_actors::model::{BranchId, ChatId, GenerationId, MessageId, UserId};
    use arbor_actors::ChatError;

    let t = Setup::new().await;
    let asked = t.app.say(&t.u, &t.chat, "q").await;
    let (user, chat): (UserId, ChatId) = (t.u.id.parse().unwrap(), t.chat.parse().unwrap());
    let branch: BranchId = asked["branch_id"].as_str().unwrap().parse().unwrap();
    let parent: MessageId = id(&asked["messages"][0]).parse().unwrap();
    let reply = |generation: GenerationId| CompleteGeneration {
        user,
        generation,
        branch,
        parent,
        content: "a".into(),
        model: "stub/stub".into(),
        metadata: std::sync::Arc::new(json!({ "generation_id": generation })),
        idempotency_key: None,
        usage: None,
    };
    let generation = GenerationId::new();
    let first = t.app.chats.call(chat, reply(generation)).await.unwrap();
    first.commit.await.unwrap();
    let again = t.app.chats.call(chat, reply(generation)).await.unwrap();
    again.commit.await.unwrap();
    assert_eq!(again.value.id, first.value.id);
    assert!(matches!(
        t.app.chats.call(chat, reply(GenerationId::new())).await,
        Err(ChatError::Internal(_))
    ));
    assert_eq!(t.app.path(&t.u, &t.chat, None).await, ["q", "a"]);
    t.stub.stop().await;
}

/// A reply started before this server did (it ran on the process that crashed, or on another
/// node): resuming it ends at once with `generation_interrupted`, never a hang; an id this
/// server could have made is still 404.
#[actix_web::test]
async fn a_reply_from_before_this_server_started_reads_as_interrupted() {
    let t = Setup::new().await;
    let a_minute_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        - Duration::from_secs(60);
    let earlier = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        a_minute_ago.as_secs(),
        a_minute_ago.subsec_nanos(),
    ));
    let res = t.app.get(&t.u, &t.generation(&earlier.to_string())).await;
    assert_error(res, StatusCode::GONE, "generation_interrupted").await;
    let res = t.events_after(&earlier.to_string(), "3").await;
    let mut events = Events::new(res);
    let ev = events.next().await.unwrap();
    assert_eq!((ev.id, ev.event.as_str()), (4, "error"));
    assert_eq!(ev.data["code"], "generation_interrupted");
    assert!(events.next().await.is_none());
    let later = uuid::Uuid::now_v7().to_string();
    let res = t.app.get(&t.u, &t.generation(&later)).await;
    assert_error(res, StatusCode::NOT_FOUND, "generation_not_found").await;
}
