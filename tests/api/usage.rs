//! Token accounting: each reply's reported usage is recorded once and summed for its user by
//! model, chat or day, on the backend under test.
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn usage(app: &TestApp, user: &User, query: &str) -> Value {
    let res = app.get(user, &format!("/api/v1/usage{query}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

#[actix_web::test]
async fn usage_is_recorded_once_per_reply_and_summed_for_its_user_alone() {
    let app = spawn_app().await;
    let u = app.register("counted@example.com").await;
    let other = app.register("other@example.com").await;
    let a = id(&app.create_chat(&u, "a").await);
    let b = id(&app.create_chat(&u, "b").await);
    for (chat, content) in [(&a, "one two three"), (&a, "four five"), (&b, "six")] {
        let res = app
            .post(
                &u,
                &format!("/api/v1/chats/{chat}/messages"),
                json!({"content": content, "reply": true, "model": "echo"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    // A message without a reply reports no usage.
    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{b}/messages"),
            json!({"content": "x", "response": "y"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);

    let by_model = usage(&app, &u, "").await;
    assert_eq!(by_model["group_by"], "model");
    let groups = by_model["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{by_model}");
    assert!(
        groups[0]["key"].as_str().unwrap().starts_with("echo/"),
        "{by_model}"
    );
    let total = &by_model["total"];
    assert_eq!(total["replies"], 3);
    let (prompt, completion) = (
        total["prompt_tokens"].as_u64().unwrap(),
        total["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 0 && completion > 0, "{total}");
    assert_eq!(total["total_tokens"].as_u64().unwrap(), prompt + completion);

    let by_chat = usage(&app, &u, "?group_by=chat").await;
    let mut replies: Vec<(String, u64)> = by_chat["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_owned(),
                g["replies"].as_u64().unwrap(),
            )
        })
        .collect();
    replies.sort();
    let mut expected = vec![(a.clone(), 2), (b.clone(), 1)];
    expected.sort();
    assert_eq!(replies, expected);

    let by_day = usage(&app, &u, "?group_by=day").await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(by_day["groups"][0]["key"], today.as_str(), "{by_day}");
    assert_eq!(by_day["groups"][0]["replies"], 3);

    // Another user's usage is theirs; a window in the future holds nothing.
    assert_eq!(usage(&app, &other, "").await["total"]["replies"], 0);
    let later = usage(
        &app,
        &u,
        "?from=2999-01-01T00:00:00Z&to=2999-02-01T00:00:00Z",
    )
    .await;
    assert_eq!(later["groups"].as_array().unwrap().len(), 0);
    let res = app.get(&u, "/api/v1/usage?group_by=week").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

/// The store records a generation once, however often it is told.
#[actix_web::test]
async fn a_generation_is_recorded_once() {
    use arbor_actors::model::{ChatId, GenerationId, UserId};
    use arbor_actors::ports::{UsageGroup, UsageRecord};

    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path().to_path_buf());
    let (stores, connections) = arbor::storage::open(&s).await.unwrap();
    let record = UsageRecord {
        generation: GenerationId::new(),
        user: UserId::new(),
        chat: ChatId::new(),
        model: "stub/model".into(),
        prompt_tokens: 7,
        completion_tokens: 5,
        at: chrono::Utc::now(),
    };
    stores.metadata.record_usage(&record).await.unwrap();
    stores.metadata.record_usage(&record).await.unwrap();
    let day = chrono::Duration::days(1);
    let sums = stores
        .metadata
        .usage(
            Some(record.user),
            record.at - day,
            record.at + day,
            UsageGroup::Model,
        )
        .await
        .unwrap();
    assert_eq!(sums.len(), 1);
    assert_eq!(
        (
            sums[0].replies,
            sums[0].prompt_tokens,
            sums[0].completion_tokens
        ),
        (1, 7, 5)
    );
    // The day's total, which quotas read, counted it once too; a quota set and reset.
    use arbor_actors::ports::QuotaSetting;
    let today = record.at.date_naive();
    let metadata = stores.metadata.clone();
    let quota = |s| {
        let metadata = metadata.clone();
        async move { metadata.quota_usage(record.user, s).await.unwrap() }
    };
    assert_eq!(quota(today).await, (QuotaSetting::Default, 12));
    assert_eq!(quota(today.succ_opt().unwrap()).await.1, 0);
    for setting in [
        QuotaSetting::Tokens(5),
        QuotaSetting::Unlimited,
        QuotaSetting::Default,
    ] {
        stores
            .metadata
            .set_quota(record.user, setting)
            .await
            .unwrap();
        assert_eq!(quota(today).await, (setting, 12));
    }
    connections.close().await;
}

/// A reply (`reply: true` on a send, an edit or a regeneration), JSON or streamed.
async fn reply(app: &TestApp, user: &User, chat: &str, stream: bool) -> reqwest::Response {
    app.post(
        user,
        &format!("/api/v1/chats/{chat}/messages"),
        json!({"content": "count me", "reply": true, "model": "echo", "stream": stream}),
    )
    .await
}

/// The quota is checked before the provider is called: the reply that crosses it finishes and
/// counts, streamed or not; the next is refused with `quota_exceeded`, and nothing is stored.
#[actix_web::test]
async fn a_quota_refuses_the_reply_after_the_one_that_used_it_up() {
    let app = spawn_with(|s| {
        s.admin.emails = vec!["boss@example.com".into()];
        s.quotas.tokens_per_period = 1;
        s.quotas.period = arbor::quota::QuotaPeriod::Day;
    })
    .await;
    let boss = app.register("boss@example.com").await;
    let u = app.register("metered@example.com").await;
    let chat = id(&app.create_chat(&u, "metered").await);

    // Streamed: it runs past the one-token quota, finishes, and is counted.
    let res = reply(&app, &u, &chat, true).await;
    assert_eq!(res.status(), StatusCode::OK);
    let events = res.text().await.unwrap();
    assert!(events.contains("event: assistant_message"), "{events}");
    let view = usage(&app, &u, "").await;
    let used = view["total"]["total_tokens"].as_u64().unwrap();
    assert!(used > 1, "{view}");
    assert_eq!(view["quota"]["limit"], 1);
    assert_eq!(view["quota"]["used"], used);
    assert_eq!(view["quota"]["source"], "default");
    assert_eq!(view["quota"]["period"], "day");

    // Then every way of asking for a reply is refused, before anything is stored.
    let before = app.path(&u, &chat, None).await;
    for stream in [false, true] {
        let res = reply(&app, &u, &chat, stream).await;
        assert_eq!(res.headers()["ratelimit-policy"], "\"tokens\";q=1");
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=86_400).contains(&wait), "{wait}");
        assert_error(res, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    }
    let res = app.get(&u, &format!("/api/v1/chats/{chat}/messages")).await;
    let page = json_with(res, StatusCode::OK).await;
    let first = page["messages"][0]["id"].as_str().unwrap().to_owned();
    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/messages/{first}/regenerate"),
            json!({"model": "echo"}),
        )
        .await;
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/messages/{first}/edit"),
            json!({"content": "again", "reply": true, "model": "echo"}),
        )
        .await;
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    assert_eq!(app.path(&u, &chat, None).await, before);
    assert_eq!(
        app.tree(&u, &chat).await["branches"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Sends without a reply are not metered.
    let res = app
        .post(
            &u,
            &format!("/api/v1/chats/{chat}/messages"),
            json!({"content": "note", "response": "noted"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);

    // An admin lifts it for this user: their own quota, then none, then the default again.
    let quota = format!("/api/v1/admin/users/{}/quota", "metered@example.com");
    let res = app.put(&boss, &quota, json!({"tokens": 1_000_000})).await;
    let status = json_with(res, StatusCode::OK).await;
    assert_eq!(
        (status["limit"].as_u64(), &status["source"]),
        (Some(1_000_000), &json!("user"))
    );
    assert_eq!(
        reply(&app, &u, &chat, false).await.status(),
        StatusCode::CREATED
    );
    let res = app.put(&boss, &quota, json!({"tokens": null})).await;
    assert_eq!(json_with(res, StatusCode::OK).await["limit"], Value::Null);
    assert_eq!(
        reply(&app, &u, &chat, false).await.status(),
        StatusCode::CREATED
    );
    let res = app.delete(&boss, &quota).await;
    assert_eq!(json_with(res, StatusCode::OK).await["source"], "default");
    let res = reply(&app, &u, &chat, false).await;
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;

    // Only admins see the quota routes; an unknown user is named as such.
    let res = app.put(&u, &quota, json!({"tokens": null})).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app
        .get(&boss, "/api/v1/admin/users/nobody@example.com/quota")
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "user_not_found").await;
    let res = app.put(&boss, &quota, json!({"tokens": -1})).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// The admin view sums everyone's usage by user; users see only their own.
#[actix_web::test]
async fn admins_see_usage_across_users() {
    let app = spawn_with(|s| s.admin.emails = vec!["ops@example.com".into()]).await;
    let ops = app.register("ops@example.com").await;
    let (a, b) = (
        app.register("a@example.com").await,
        app.register("b@example.com").await,
    );
    for (user, replies) in [(&a, 2), (&b, 1)] {
        let chat = id(&app.create_chat(user, "c").await);
        for _ in 0..replies {
            assert_eq!(
                reply(&app, user, &chat, false).await.status(),
                StatusCode::CREATED
            );
        }
    }
    let res = app.get(&ops, "/api/v1/admin/usage").await;
    let view = json_with(res, StatusCode::OK).await;
    assert_eq!(view["group_by"], "user");
    let mut replies: Vec<(String, u64)> = view["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_owned(),
                g["replies"].as_u64().unwrap(),
            )
        })
        .collect();
    replies.sort();
    let mut expected = vec![(a.id.clone(), 2), (b.id.clone(), 1)];
    expected.sort();
    assert_eq!(replies, expected, "{view}");
    assert_eq!(view["total"]["replies"], 3);
    assert!(view.get("quota").is_none());
    let res = app.get(&a, "/api/v1/admin/usage").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app.get(&a, "/api/v1/usage?group_by=user").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}
