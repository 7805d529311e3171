//! Fair use over HTTP: each limit trips at its configured rate with `Retry-After`,
//! `RateLimit-Policy` and `RateLimit` set; failed logins lock out an address, not an account;
//! replies are limited in rate and at once; a login flood leaves chat traffic working.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use arbor::config::{RateLimitSettings, Settings};
use reqwest::{Response, StatusCode};
use serde_json::json;

use crate::helpers::*;
use crate::provider::*;

fn limits(tweak: impl FnOnce(&mut RateLimitSettings)) -> impl FnOnce(&mut Settings) {
    move |s: &mut Settings| {
        s.rate_limits = no_rate_limits();
        tweak(&mut s.rate_limits);
    }
}

/// A 429 `rate_limited` for `class` at `quota` per `window` (`None`: at once).
async fn assert_limited(res: Response, class: &str, quota: u32, window: Option<u32>) {
    let headers = res.headers().clone();
    let policy = headers["ratelimit-policy"].to_str().unwrap().to_owned();
    let expected = match window {
        Some(w) => format!("\"{class}\";q={quota};w={w}"),
        None => format!("\"{class}\";q={quota}"),
    };
    assert_eq!(policy, expected);
    let state = headers["ratelimit"].to_str().unwrap();
    assert!(state.starts_with(&format!("\"{class}\";r=0;t=")), "{state}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=u64::from(window.unwrap_or(60))).contains(&retry),
        "Retry-After {retry}"
    );
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[actix_web::test]
async fn writes_and_reads_trip_at_their_rates_per_user() {
    let app = spawn_with(limits(|l| {
        l.writes_per_minute = 5;
        l.reads_per_minute = 8;
    }))
    .await;
    let (a, b) = (
        app.register("a@example.com").await,
        app.register("b@example.com").await,
    );
    for i in 0..5 {
        let res = app
            .post(&a, "/api/v1/chats", json!({"title": format!("{i}")}))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "write {i}");
    }
    let res = app.post(&a, "/api/v1/chats", json!({"title": "six"})).await;
    assert_limited(res, "writes", 5, Some(60)).await;
    // Another user has a bucket of their own; reads have theirs.
    let res = app.post(&b, "/api/v1/chats", json!({"title": "b"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    for i in 0..8 {
        assert_eq!(
            app.get(&a, "/api/v1/chats").await.status(),
            StatusCode::OK,
            "read {i}"
        );
    }
    assert_limited(app.get(&a, "/api/v1/chats").await, "reads", 8, Some(60)).await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("arbor_rate_limited_total{class=\"writes\"} 1"),
        "{text}"
    );
    assert!(text.contains("arbor_rate_limited_total{class=\"reads\"} 1"));
}

#[actix_web::test]
async fn sign_ups_and_logins_are_limited_per_client_address() {
    let app = spawn_with(limits(|l| {
        l.auth_per_minute = 3;
        l.refusal_delay_ms = 300;
        l.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    }))
    .await;
    app.register("first@example.com").await;
    let login = json!({"email": "first@example.com", "password": "password123"});
    for _ in 0..2 {
        let res = app.post_anon("/api/v1/auth/login", login.clone()).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    // The refusal is answered after `refusal_delay_ms`: a flooding client waits.
    let started = Instant::now();
    let res = app.post_anon("/api/v1/auth/login", login.clone()).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered at once"
    );
    assert_limited(res, "auth", 3, Some(60)).await;
    // Behind a trusted proxy each client is its own address; the proxy's own entries are
    // skipped, the nearest other one counts.
    for client in ["192.0.2.10", "192.0.2.11"] {
        let res = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", format!("{client}, 127.0.0.1"))
            .json(&login)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{client}");
    }
}

#[actix_web::test]
async fn failed_logins_lock_out_the_address_not_the_account() {
    let app = spawn_with(limits(|l| {
        l.failed_logins_per_account = 2;
        l.failed_logins_per_ip = 3;
        l.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    }))
    .await;
    app.register("owner@example.com").await;
    let from = |ip: &'static str, password: &'static str| {
        let client = app.client.clone();
        let url = app.url("/api/v1/auth/login");
        async move {
            client
                .post(url)
                .header("x-forwarded-for", ip)
                .json(&json!({"email": "owner@example.com", "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..2 {
        let res = from("203.0.113.5", "wrong-password").await;
        assert_error(res, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    // The attacker's address is locked out of the account, even with the right password...
    let started = Instant::now();
    let res = from("203.0.113.5", "password123").await;
    assert_limited(res, "failed_logins", 2, Some(300)).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused before hashing"
    );
    // ... and its owner, elsewhere, logs in.
    assert_eq!(
        from("198.51.100.9", "password123").await.status(),
        StatusCode::OK
    );
}

#[actix_web::test]
async fn replies_are_limited_in_rate_and_at_once_streamed_or_not() {
    let stub = StubProvider::start().await;
    let app = spawn_with(|s| {
        stub.configure(s);
        limits(|l| {
            l.replies_per_minute = 3;
            l.concurrent_replies = 1;
        })(s);
    })
    .await;
    let u = app.register("talker@example.com").await;
    let chat = id(&app
        .post(&u, "/api/v1/chats", json!({"title": "t"}))
        .await
        .json()
        .await
        .unwrap());
    let messages = format!("/api/v1/chats/{chat}/messages");
    // One slow streamed reply runs; a second one at the same time is refused.
    stub.push([Script::stream(&["slow ", "reply"], 400)]);
    let streamed = app
        .post(
            &u,
            &messages,
            json!({"content": "one", "reply": true, "stream": true}),
        )
        .await;
    assert_eq!(streamed.status(), StatusCode::OK);
    let res = app
        .post(&u, &messages, json!({"content": "two", "reply": true}))
        .await;
    assert_limited(res, "concurrent_replies", 1, None).await;
    let _ = streamed.text().await.unwrap();
    // Once it ended: two more within the rate, then the rate refuses (JSON or streamed).
    for content in ["three", "four"] {
        let res = app
            .post(&u, &messages, json!({"content": content, "reply": true}))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{content}");
    }
    let res = app
        .post(
            &u,
            &messages,
            json!({"content": "five", "reply": true, "stream": true}),
        )
        .await;
    assert_limited(res, "replies", 3, Some(60)).await;
    // A refused reply stores nothing: the branch holds the three answered questions.
    let page: serde_json::Value = app.get(&u, &messages).await.json().await.unwrap();
    assert_eq!(page["total"], 6, "{page}");
}

/// Wrong-password logins from 48 connections at once while a client adds messages: every chat
/// request succeeds, and the flood is refused quickly (`auth_busy`) rather than queued.
#[actix_web::test]
async fn a_login_flood_leaves_chat_requests_working() {
    let app = spawn_with(|s| {
        s.auth.bcrypt_cost = 10;
        s.auth.hash_threads = 1;
        s.auth.hash_queue = 4;
    })
    .await;
    let u = app.register("busy@example.com").await;
    let chat = id(&app
        .post(&u, "/api/v1/chats", json!({"title": "t"}))
        .await
        .json()
        .await
        .unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..48 {
        let (client, url, stop) = (
            app.client.clone(),
            app.url("/api/v1/auth/login"),
            stop.clone(),
        );
        flood.push(actix_web::rt::spawn(async move {
            let mut busy = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let res = client
                    .post(&url)
                    .json(&json!({"email": "busy@example.com", "password": "not-the-password"}))
                    .send()
                    .await
                    .unwrap();
                let status = res.status();
                assert!(
                    status == StatusCode::UNAUTHORIZED || status == StatusCode::SERVICE_UNAVAILABLE,
                    "{status}"
                );
                busy += usize::from(status == StatusCode::SERVICE_UNAVAILABLE);
            }
            busy
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = format!("/api/v1/chats/{chat}/messages");
    for i in 0..40 {
        let res = app
            .post(
                &u,
                &path,
                json!({"content": format!("q{i}"), "response": "a"}),
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::CREATED,
            "message {i} during the flood"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut busy = 0;
    for task in flood {
        busy += task.await.unwrap();
    }
    assert!(
        busy > 0,
        "the hash queue never filled: the flood was not one"
    );
}
