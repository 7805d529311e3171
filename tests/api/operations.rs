//! The operator surface: `/metrics` checked by `promtool`, its access rules, the admin API
//! (who may see it, listing, sorting, paging, detail, eviction, stats), `arbor admin grant`,
//! graceful shutdown of the real binary on SIGTERM, and request ids in JSON logs.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use arbor::config::{AckMode, LogFormat, Secret};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::binary::{self, free_port, Server};
use crate::helpers::*;
use crate::llm::{slow_words, Events};
use crate::provider::StubProvider;

/// The value of the one sample named `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matches: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().unwrap())
        })
        .collect();
    assert!(matches.len() <= 1, "{name} {labels:?} matches {matches:?}");
    matches.first().copied()
}

pub(crate) fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn scrape(app: &TestApp) -> String {
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    res.text().await.unwrap()
}

/// Requests, activations, evictions, commits and a reply all show up, with the right counts,
/// in an exposition `promtool` accepts.
#[actix_web::test]
async fn metrics_pass_promtool_and_count_what_happened() {
    let app = spawn_app().await;
    let u = app.register("m@example.com").await;
    let chat = id(&app.create_chat(&u, "metrics").await);
    for i in 0..3 {
        app.say(&u, &chat, &format!("hello {i}")).await;
    }
    let messages = format!("/api/v1/chats/{chat}/messages");
    let reply = app
        .post(&u, &messages, json!({"content": "echo me", "reply": true}))
        .await;
    assert_eq!(reply.status(), StatusCode::CREATED);
    assert!(app.chats.evict(chat.parse().unwrap()).await);
    assert_eq!(app.path(&u, &chat, None).await.len(), 5);
    // The same route with another status, and with a method it does not answer: each pair of
    // method and status is its own sample, and the route's label stays its pattern.
    let unknown_branch = format!("{messages}?branch_id={}", uuid::Uuid::new_v4());
    assert_eq!(
        app.get(&u, &unknown_branch).await.status(),
        StatusCode::NOT_FOUND
    );
    let put = app.client.put(app.url(&messages)).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    let res = app
        .client
        .get(app.url("/no/such/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let text = scrape(&app).await;
    promtool_check(&text);
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}:\n{text}"))
    };
    let route = [
        ("method", "POST"),
        ("route", "/api/v1/chats/{chat_id}/messages"),
    ];
    assert_eq!(
        get(
            "arbor_http_requests_total",
            &[route[0], route[1], ("status", "201")]
        ),
        4.0
    );
    assert_eq!(
        get("arbor_http_request_duration_seconds_count", &route),
        4.0
    );
    let messages_route = route[1];
    for (method, status, count) in [
        ("GET", "200", 1.0),
        ("GET", "404", 1.0),
        ("PUT", "405", 1.0),
    ] {
        let labels = [("method", method), messages_route, ("status", status)];
        assert_eq!(
            get("arbor_http_requests_total", &labels),
            count,
            "{labels:?}"
        );
    }
    assert_eq!(
        get(
            "arbor_http_request_duration_seconds_count",
            &[("method", "GET"), messages_route]
        ),
        2.0
    );
    assert_eq!(
        get(
            "arbor_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(get("arbor_chat_activations_total", &[]), 1.0);
    assert_eq!(
        get("arbor_chat_activation_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        get("arbor_chat_evictions_total", &[("reason", "admin")]),
        1.0
    );
    assert_eq!(
        get("arbor_chat_evictions_total", &[("reason", "idle")]),
        0.0
    );
    assert_eq!(get("arbor_chat_actors_resident", &[]), 1.0);
    assert_eq!(get("arbor_chat_resident_messages", &[]), 5.0);
    assert_eq!(get("arbor_chat_mailbox_depth", &[]), 0.0);
    assert_eq!(get("arbor_chat_pending_writes", &[]), 0.0);
    // Chat + branch, 3 messages, a reply's two messages, and branch and chat rows with each.
    assert!(get("arbor_writer_rows_total", &[]) >= 7.0);
    let batches = get("arbor_writer_batches_total", &[]);
    assert!(batches >= 1.0);
    assert_eq!(get("arbor_writer_batch_rows_count", &[]), batches);
    assert_eq!(
        get("arbor_writer_flush_duration_seconds_count", &[]),
        batches
    );
    assert!(get("arbor_writer_commit_lag_seconds_count", &[]) >= 6.0);
    assert_eq!(get("arbor_writer_failed_batches_total", &[]), 0.0);
    assert_eq!(get("arbor_writer_queue_depth", &[]), 0.0);
    assert_eq!(get("arbor_writer_queue_capacity", &[]), 16_384.0);
    assert_eq!(get("arbor_writer_stalled", &[]), 0.0);
    let echo = ("provider", "echo");
    assert_eq!(
        get("arbor_llm_replies_total", &[echo, ("outcome", "completed")]),
        1.0
    );
    assert_eq!(get("arbor_llm_requests_total", &[echo]), 1.0);
    assert_eq!(
        get("arbor_llm_request_duration_seconds_count", &[echo]),
        1.0
    );
    assert_eq!(
        get("arbor_llm_time_to_first_token_seconds_count", &[echo]),
        1.0
    );
    assert_eq!(get("arbor_llm_requests_in_flight", &[echo]), 0.0);
    assert_eq!(
        get("arbor_llm_circuit_state", &[echo, ("state", "closed")]),
        1.0
    );
    assert_eq!(
        get("arbor_llm_circuit_state", &[echo, ("state", "open")]),
        0.0
    );
    assert!(get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(get("process_open_fds", &[]) > 3.0);
    assert_eq!(get("arbor_draining", &[]), 0.0);
    assert_eq!(get("arbor_build_info", &[]), 1.0);
}

#[actix_web::test]
async fn metrics_can_require_a_token() {
    let app = spawn_with(|s| s.metrics.token = Secret::new("scrape-s3cret".into())).await;
    let url = app.url("/metrics");
    let res = app.client.get(&url).send().await.unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let res = app
        .client
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let res = app
        .client
        .get(&url)
        .bearer_auth("scrape-s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("arbor_http_requests_total"));
}

/// With `metrics.listen`, /metrics is served there and not on the API's address; with
/// `metrics.enabled = false`, nowhere.
#[actix_web::test]
async fn metrics_can_move_to_their_own_listener_or_be_off() {
    let app = spawn_with(|s| s.metrics.listen = "127.0.0.1:0".into()).await;
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_error(res, StatusCode::NOT_FOUND, "not_found").await;
    let port = app.metrics_port.expect("a metrics listener");
    let res = app
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    promtool_check(&res.text().await.unwrap());
    let res = app
        .client
        .get(format!("http://127.0.0.1:{port}/api/v1/admin/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    app.stop().await;

    let off = spawn_with(|s| s.metrics.enabled = false).await;
    let res = off.client.get(off.url("/metrics")).send().await.unwrap();
    assert_error(res, StatusCode::NOT_FOUND, "not_found").await;
}

const ADMIN_GETS: [&str; 2] = ["/api/v1/admin/actors", "/api/v1/admin/stats"];

/// Anonymous callers, bad tokens and ordinary users all get the plain 404 of an unknown path.
#[actix_web::test]
async fn admin_routes_are_404_for_everyone_but_admins() {
    let app = spawn_app().await;
    let u = app.register("user@example.com").await;
    let chat = id(&app.create_chat(&u, "mine").await);
    let mut gets: Vec<String> = ADMIN_GETS.iter().map(|p| p.to_string()).collect();
    gets.push(format!("/api/v1/admin/actors/{chat}"));
    for path in &gets {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_error(res, StatusCode::NOT_FOUND, "not_found").await;
        let res = app.get(&u, path).await;
        assert_error(res, StatusCode::NOT_FOUND, "not_found").await;
        let res = app
            .client
            .get(app.url(path))
            .bearer_auth("not-a-jwt")
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::NOT_FOUND, "not_found").await;
    }
    let res = evict(&app, &u, &chat).await;
    assert_error(res, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(
        app.chats.actors().len(),
        1,
        "a refused evict evicts nothing"
    );
    // The page itself is a static shell; with a non-admin's token it is 404 as well.
    let res = app.get(&u, "/admin").await;
    assert_error(res, StatusCode::NOT_FOUND, "not_found").await;
    let res = app.client.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = res.text().await.unwrap();
    assert!(html.contains("<title>Arbor admin</title>"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
}

/// `GET /api/v1/admin/actors/{chat}` as `user`.
async fn inspect(app: &TestApp, user: &User, chat: &str) -> reqwest::Response {
    app.get(user, &format!("/api/v1/admin/actors/{chat}")).await
}

/// `POST /api/v1/admin/actors/{chat}/evict` as `user`.
async fn evict(app: &TestApp, user: &User, chat: &str) -> reqwest::Response {
    app.post(
        user,
        &format!("/api/v1/admin/actors/{chat}/evict"),
        json!({}),
    )
    .await
}

async fn json_of(res: reqwest::Response, status: StatusCode) -> Value {
    let code = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(code, status, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// An admin (by `admin.emails`) lists actors sorted and paged, inspects one, evicts it (it
/// flushes and comes back on the next request), and reads the runtime's stats.
#[actix_web::test]
async fn admins_list_inspect_and_evict_actors() {
    let app = spawn_with(|s| s.admin.emails = vec!["Ops@Example.com".into()]).await;
    let ops = app.register("ops@example.com").await;
    let u = app.register("owner@example.com").await;
    let big = id(&app.create_chat(&u, "big").await);
    for i in 0..5 {
        app.say(&u, &big, &format!("{i}: {}", "x".repeat(5_000)))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let small = id(&app.create_chat(&u, "small").await);
    app.say(&u, &small, "hi").await;

    let list = |q: &'static str| {
        let (app, ops) = (&app, &ops);
        async move {
            json_of(
                app.get(ops, &format!("/api/v1/admin/actors{q}")).await,
                StatusCode::OK,
            )
            .await
        }
    };
    let ids = |page: &Value| -> Vec<String> {
        page["actors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["chat_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let page = list("").await;
    assert_eq!(page["total"], 2);
    assert_eq!(
        ids(&page),
        [small.clone(), big.clone()],
        "most recent first"
    );
    assert_eq!(ids(&list("?order=asc").await), [big.clone(), small.clone()]);
    assert_eq!(ids(&list("?sort=size").await), [big.clone(), small.clone()]);
    assert_eq!(
        ids(&list("?sort=messages&order=asc").await),
        [small.clone(), big.clone()]
    );
    let first = list("?sort=size&limit=1").await;
    assert_eq!(ids(&first), [big.as_str()]);
    assert_eq!(first["next_offset"], 1);
    let second = list("?sort=size&limit=1&offset=1").await;
    assert_eq!(ids(&second), [small.as_str()]);
    assert!(second["next_offset"].is_null());
    let row = &page["actors"][1];
    assert_eq!(row["owner_id"], u.id.as_str());
    assert_eq!(row["message_count"], 5);
    assert_eq!(row["branch_count"], 1);
    assert_eq!(row["mailbox_depth"], 0);
    assert_eq!(row["pending_writes"], 0);
    assert!(
        row["approx_memory_bytes"].as_u64().unwrap() > 25_000,
        "{row}"
    );
    for field in ["resident_since", "last_activity"] {
        assert!(row[field].as_str().unwrap().ends_with('Z'), "{row}");
    }
    for bad in [
        "?sort=colour",
        "?limit=0",
        "?limit=1001",
        "?offset=-1",
        "?extra=1",
    ] {
        let res = app.get(&ops, &format!("/api/v1/admin/actors{bad}")).await;
        assert!(res.status().is_client_error(), "{bad}: {}", res.status());
    }

    let detail = json_of(inspect(&app, &ops, &big).await, StatusCode::OK).await;
    assert_eq!(detail["chat_id"], big.as_str());
    assert_eq!(detail["title"], "big");
    assert_eq!(detail["active_branch_name"], "main");
    assert!(detail["active_branch_id"].is_string());
    assert_eq!(detail["message_count"], 5);
    assert_eq!(detail["generations_in_flight"], json!([]));

    let res = evict(&app, &ops, &big).await;
    assert_eq!(
        json_of(res, StatusCode::OK).await,
        json!({"chat_id": big, "evicted": true})
    );
    let res = inspect(&app, &ops, &big).await;
    assert_error(res, StatusCode::NOT_FOUND, "actor_not_found").await;
    let res = evict(&app, &ops, &big).await;
    assert_error(res, StatusCode::NOT_FOUND, "actor_not_found").await;
    assert_eq!(ids(&list("").await), [small.as_str()]);
    let res = app.get(&ops, "/api/v1/admin/actors/not-a-uuid").await;
    assert!(res.status().is_client_error());

    // The owner's next request brings it back, whole.
    assert_eq!(app.path(&u, &big, None).await.len(), 5);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let stats = json_of(app.get(&ops, "/api/v1/admin/stats").await, StatusCode::OK).await;
    assert_eq!(stats["actors"]["resident"], 2);
    assert_eq!(stats["actors"]["messages"], 6);
    assert_eq!(stats["actors"]["activations_total"], 1);
    assert_eq!(stats["actors"]["evictions_by_reason"]["admin"], 1);
    assert_eq!(stats["actors"]["evictions_total"], 1);
    assert!(stats["http"]["requests_total"].as_u64().unwrap() > 20);
    assert_eq!(stats["writer"]["ack_mode"], "durable");
    assert_eq!(stats["writer"]["stalled"], false);
    assert!(stats["writer"]["rows_total"].as_u64().unwrap() >= 10);
    assert_eq!(stats["draining"], false);
    assert!(stats["process"]["resident_bytes"].as_u64().unwrap() > 1_000_000);
    let history = stats["history"].as_array().unwrap();
    assert!(!history.is_empty());
    assert!(history.iter().all(|s| s["requests_per_second"].is_number()
        && s["lag_max_ms"].is_number()
        && s["at"].is_i64()));
    assert_eq!(stats["llm"][0]["provider"], "echo");
}

/// What an actor is doing shows while it does it: writes queued behind a long flush interval
/// are `pending_writes` until an eviction flushes them (and they are stored); a streaming reply
/// is listed in the actor's `generations_in_flight`.
#[actix_web::test]
async fn inspection_shows_pending_writes_and_replies_in_flight() {
    let stub = StubProvider::start().await;
    let app = spawn_with(|s| {
        s.admin.emails = vec!["ops@example.com".into()];
        s.storage.ack_mode = AckMode::Buffered;
        s.storage.flush_interval_ms = 60_000;
        s.storage.flush_max_rows = 100_000;
        stub.configure(s);
    })
    .await;
    let ops = app.register("ops@example.com").await;
    let u = app.register("owner@example.com").await;
    let chat = id(&app.create_chat(&u, "busy").await);
    for i in 0..3 {
        app.say(&u, &chat, &format!("queued {i}")).await;
    }
    let before = json_of(inspect(&app, &ops, &chat).await, StatusCode::OK).await;
    // The chat's creation and each of the three sends are still queued.
    assert_eq!(before["pending_writes"], 4, "{before}");
    assert_eq!(before["message_count"], 3);

    stub.push([slow_words("s", 100)]);
    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/messages"),
            json!({"content": "go on", "reply": true, "stream": true}),
        )
        .await;
    let mut events = Events::new(res);
    let first = events.next().await.unwrap();
    assert_eq!(first.event, "user_message");
    let during = json_of(inspect(&app, &ops, &chat).await, StatusCode::OK).await;
    let running = during["generations_in_flight"].as_array().unwrap();
    assert_eq!(running.len(), 1, "{during}");
    assert_eq!(running[0]["status"], "running");
    assert_eq!(running[0]["id"], first.data["generation_id"]);
    assert_eq!(running[0]["branch_id"], during["active_branch_id"]);
    let generation = running[0]["id"].as_str().unwrap().to_owned();
    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/generations/{generation}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let after = json_of(inspect(&app, &ops, &chat).await, StatusCode::OK).await;
    assert_eq!(after["generations_in_flight"], json!([]));

    // Evicting flushes at once (not after the 60 s flush interval) and the data is stored.
    let res = evict(&app, &ops, &chat).await;
    assert_eq!(res.status(), StatusCode::OK);
    let (settings, dir) = app.stop().await;
    let app = start(settings).await;
    let path = app.path(&u, &chat, None).await;
    assert_eq!(path[..4], ["queued 0", "queued 1", "queued 2", "go on"]);
    assert_eq!(
        path.len(),
        5,
        "the cancelled reply's partial content: {path:?}"
    );
    drop(dir);
}

/// `arbor admin grant EMAIL` promotes an account in the configured store (the running server
/// sees it at once); `revoke` takes it back; an unknown email fails with a message.
#[actix_web::test]
async fn admin_grant_and_revoke_from_the_command_line() {
    let app = spawn_app().await;
    let boss = app.register("boss@example.com").await;
    let res = app.get(&boss, "/api/v1/admin/stats").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let dir = tempfile::tempdir().unwrap();
    let config = binary::write_config(&app.settings, dir.path());
    let run = |args: &[&str]| {
        let out = binary::command(&config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&["admin", "grant", "BOSS@example.com"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("boss@example.com") && stdout.contains("is now an admin"));
    let res = app.get(&boss, "/api/v1/admin/stats").await;
    assert_eq!(res.status(), StatusCode::OK);

    let (ok, stdout, stderr) = run(&["admin", "revoke", "boss@example.com"]);
    assert!(ok, "{stdout}{stderr}");
    let res = app.get(&boss, "/api/v1/admin/stats").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let (ok, _, stderr) = run(&["admin", "grant", "nobody@example.com"]);
    assert!(!ok);
    assert!(
        stderr.contains("no account has the email nobody@example.com"),
        "{stderr}"
    );
}

pub(crate) async fn register(client: &reqwest::Client, base: &str, email: &str) -> String {
    let res = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": email, "password": "password123"}))
        .send()
        .await
        .unwrap();
    let body = json_of(res, StatusCode::CREATED).await;
    body["access_token"].as_str().unwrap().to_owned()
}

/// SIGTERM: `/ready` turns 503 while the server keeps serving for the drain delay; a streaming
/// reply ends cleanly (cancelled, its partial content stored); writes acknowledged in buffered
/// mode and still unflushed are committed; the process exits 0; a restart shows everything.
#[actix_web::test]
async fn sigterm_drains_ends_replies_cleanly_and_flushes_every_write() {
    let stub = StubProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path().join("data"));
    s.server.port = free_port();
    s.server.drain_delay_secs = 1;
    s.server.shutdown_grace_secs = 10;
    s.storage.ack_mode = AckMode::Buffered;
    // Long enough that the writes below are still queued when SIGTERM arrives.
    s.storage.flush_interval_ms = 60_000;
    s.storage.flush_max_rows = 100_000;
    stub.configure(&mut s);
    let mut server = Server::start(&s, dir.path()).await;
    let base = server.base.clone();
    let client = crate::helpers::test_client();
    let token = register(&client, &base, "drain@example.com").await;
    let post = |path: String, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let chat = json_of(
        post("/api/v1/chats".into(), json!({"title": "t"}))
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let chat = id(&chat);
    let messages = format!("/api/v1/chats/{chat}/messages");
    for i in 0..20 {
        let res = post(
            messages.clone(),
            json!({"content": format!("m{i}"), "response": format!("r{i}")}),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    // A second chat's reply streams slowly (a word every 50 ms for 10 s).
    let other = id(&json_of(
        post("/api/v1/chats".into(), json!({})).await.unwrap(),
        StatusCode::CREATED,
    )
    .await);
    stub.push([slow_words("w", 200)]);
    let res = post(
        format!("/api/v1/chats/{other}/messages"),
        json!({"content": "talk slowly", "reply": true, "stream": true}),
    )
    .await
    .unwrap();
    let mut events = Events::new(res);
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|e: &&crate::llm::Ev| e.event == "delta")
        .count()
        < 3
    {
        seen.push(events.next().await.unwrap());
    }

    server.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "draining");
    // Still serving while draining.
    let res = client
        .get(format!("{base}{messages}?limit=5"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // The stream ends with a terminal event, not a dropped connection.
    let rest = tokio::time::timeout(Duration::from_secs(10), events.rest())
        .await
        .expect("the stream ended");
    let last = rest.last().expect("events after the signal");
    assert_eq!(last.event, "assistant_message", "{rest:?}");
    assert_eq!(last.data["status"], "cancelled", "{rest:?}");
    let status = server.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}");
    let refused = client.get(format!("{base}/health")).send().await;
    assert!(refused.is_err(), "no longer listening");

    // Everything acknowledged is stored.
    let server = Server::start(&s, dir.path()).await;
    let res = client
        .get(format!("{}{messages}?limit=200", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let body = json_of(res, StatusCode::OK).await;
    let contents: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..20)
        .flat_map(|i| [format!("m{i}"), format!("r{i}")])
        .collect();
    assert_eq!(contents, expected);
    let res = client
        .get(format!("{}/api/v1/chats/{other}/messages", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let body = json_of(res, StatusCode::OK).await;
    let reply = &body["messages"][1];
    assert_eq!(reply["role"], "assistant");
    assert_eq!(reply["metadata"]["incomplete"], true, "{reply}");
    assert!(
        reply["content"].as_str().unwrap().starts_with("w0 w1 w2 "),
        "{reply}"
    );
    server.kill();
}

/// With `log.format = "json"` every line is a JSON object, and every line logged while
/// handling a request carries that request's id (the client's `X-Request-Id`, echoed back).
#[actix_web::test]
async fn json_logs_carry_the_request_id_on_every_line_of_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path().join("data"));
    s.server.port = free_port();
    s.log.format = LogFormat::Json;
    s.admin.emails = vec!["ops@example.com".into()];
    let server = Server::start_logged(&s, dir.path()).await;
    let client = crate::helpers::test_client();
    let token = register(&client, &server.base, "ops@example.com").await;
    let res = client
        .post(format!("{}/api/v1/chats", server.base))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let chat = id(&json_of(res, StatusCode::CREATED).await);
    let res = client
        .post(format!("{}/api/v1/admin/actors/{chat}/evict", server.base))
        .bearer_auth(&token)
        .header("X-Request-Id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-request-id"], "trace-abc-123");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let log = server.log_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["request_id"] == "trace-abc-123")
        .collect();
    let messages: Vec<&str> = ours
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&"actor evicted by an admin"), "{log}");
    assert!(messages.contains(&"request done"), "{log}");
    // No line about that eviction lacks the id.
    for line in &lines {
        if line["message"] == "actor evicted by an admin" {
            assert_eq!(line["span"]["request_id"], "trace-abc-123", "{line}");
        }
    }
    server.kill();
}

/// `arbor quota` sets, shows and resets a user's quota in the configured store; `arbor reindex`
/// puts every stored message back in the search index.
#[actix_web::test]
async fn quota_and_reindex_from_the_command_line() {
    let app = spawn_app().await;
    let user = app.register("cli-user@example.com").await;
    let dir = tempfile::tempdir().unwrap();
    let config = binary::write_config(&app.settings, dir.path());
    let run = |args: &[&str]| {
        let out = binary::command(&config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = run(&["quota", "set", "cli-user@example.com", "5000"]);
    assert!(
        ok && text.contains("5000 tokens a month (its own)"),
        "{text}"
    );
    let usage: Value = app.get(&user, "/api/v1/usage").await.json().await.unwrap();
    assert_eq!(usage["quota"]["limit"], 5000);
    let (ok, text) = run(&["quota", "set", "cli-user@example.com", "unlimited"]);
    assert!(ok && text.contains("no quota"), "{text}");
    let (ok, text) = run(&["quota", "reset", "cli-user@example.com"]);
    assert!(ok && text.contains("(the default)"), "{text}");
    let (ok, text) = run(&["quota", "set", "cli-user@example.com", "lots"]);
    assert!(!ok && text.contains("a number or `unlimited`"), "{text}");
    let (ok, text) = run(&["quota", "show", "nobody@example.com"]);
    assert!(!ok && text.contains("no account"), "{text}");

    // Messages out of the index (as if stored before search existed), then reindexed.
    let chat = id(&app.create_chat(&user, "old").await);
    let res = app
        .post(
            &user,
            &format!("/api/v1/chats/{chat}/messages"),
            json!({"content": "archaeopteryx", "response": "a bird"}),
        )
        .await;
    let sent: Value = res.json().await.unwrap();
    async fn found(app: &TestApp, user: &User) -> usize {
        let page: Value = app
            .get(user, "/api/v1/search?q=archaeopteryx")
            .await
            .json()
            .await
            .unwrap();
        page["hits"].as_array().unwrap().len()
    }
    assert_eq!(found(&app, &user).await, 1);
    if matches!(backend(), Backend::Sqlite) {
        // The embedded store indexes the messages table itself: nothing to drift, nothing
        // to reindex.
        let (ok, text) = run(&["reindex"]);
        assert!(ok, "{text}");
        assert_eq!(found(&app, &user).await, 1);
        return;
    }
    let (stores, connections) = arbor::storage::open(&app.settings).await.unwrap();
    let ids = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let batch = arbor_actors::ports::MetaBatch {
        unindexed: ids,
        ..Default::default()
    };
    stores.metadata.apply(&batch).await.unwrap();
    connections.close().await;
    assert_eq!(found(&app, &user).await, 0);
    let (ok, text) = run(&["reindex"]);
    assert!(
        ok && text.contains("indexed 2 messages of 1 chats"),
        "{text}"
    );
    assert_eq!(found(&app, &user).await, 1);
    let (ok, _) = run(&["reindex"]);
    assert!(ok, "again: nothing twice");
    assert_eq!(found(&app, &user).await, 1);
}
