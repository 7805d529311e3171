#![allow(clippy::unwrap_used)]

use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn bad_input_gets_a_stable_4xx_and_changes_nothing() {
    let app = spawn_with(|s| {
        s.limits.max_message_chars = 100;
        s.limits.max_body_bytes = 4096;
    })
    .await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    let first = app.say(&u, &chat, "q").await;
    let msg_id = first["messages"][0]["id"].as_str().unwrap().to_owned();
    let before = app.tree(&u, &chat).await;
    let msgs = format!("/api/v1/chats/{chat}/messages");
    let unknown = uuid::Uuid::now_v7();
    let raw = |body: &'static str, ctype: &'static str| {
        app.client
            .post(app.url(&msgs))
            .bearer_auth(&u.token)
            .header("content-type", ctype)
            .body(body)
            .send()
    };

    let branches = format!("/api/v1/chats/{chat}/branches");
    let cases = vec![
        (
            raw("{\"content\": ", "application/json").await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            raw("{\"content\": 5}", "application/json").await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            raw(
                "{\"content\": \"x\", \"role\": \"wizard\"}",
                "application/json",
            )
            .await
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            raw("content=x", "text/plain").await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            app.post(&u, &msgs, json!({"content": "   "})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_content",
        ),
        (
            app.post(&u, &msgs, json!({"content": "x".repeat(101)}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "content_too_long",
        ),
        (
            app.post(&u, &msgs, json!({"content": "x".repeat(5000)}))
                .await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            app.post(
                &u,
                &msgs,
                json!({"content": "x", "response": "y", "reply": true}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            app.post(&u, &msgs, json!({"content": "x", "metadata": [1]}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            app.post(&u, &msgs, json!({"content": "x", "branch_id": unknown}))
                .await,
            StatusCode::NOT_FOUND,
            "branch_not_found",
        ),
        (
            app.post(
                &u,
                &format!("/api/v1/chats/{unknown}/messages"),
                json!({"content": "x"}),
            )
            .await,
            StatusCode::NOT_FOUND,
            "chat_not_found",
        ),
        (
            app.get(&u, "/api/v1/chats/not-a-uuid").await,
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            app.get(&u, &format!("{msgs}/{unknown}")).await,
            StatusCode::NOT_FOUND,
            "message_not_found",
        ),
        (
            app.get(&u, &format!("{msgs}?limit=0")).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        (
            app.get(&u, &format!("{msgs}?limit=abc")).await,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            app.get(&u, &format!("{msgs}?before={unknown}")).await,
            StatusCode::NOT_FOUND,
            "message_not_found",
        ),
        (
            app.post(
                &u,
                &format!("{msgs}/{unknown}/edit"),
                json!({"content": "x"}),
            )
            .await,
            StatusCode::NOT_FOUND,
            "message_not_found",
        ),
        (
            app.post(&u, &branches, json!({"message_index": 1})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "message_index_out_of_range",
        ),
        (
            app.post(&u, &branches, json!({"message_index": -1})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            app.post(&u, &branches, json!({})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_fork_point",
        ),
        (
            app.post(&u, &branches, json!({"from_message_id": unknown}))
                .await,
            StatusCode::NOT_FOUND,
            "message_not_found",
        ),
        (
            app.post(
                &u,
                &branches,
                json!({"from_message_id": msg_id, "name": ""}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_branch_name",
        ),
        (
            app.put(
                &u,
                &format!("/api/v1/chats/{chat}/active-branch"),
                json!({"branch_id": unknown}),
            )
            .await,
            StatusCode::NOT_FOUND,
            "branch_not_found",
        ),
        (
            app.patch(
                &u,
                &format!("/api/v1/chats/{chat}"),
                json!({"title": "t".repeat(500)}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_title",
        ),
        (
            app.client.get(app.url("/nowhere")).send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        // Unknown paths inside the `/api/v1` and `/chats/{chat_id}` scopes get the same answer.
        (
            app.client
                .get(app.url("/api/v1/nowhere"))
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            app.get(&u, &format!("/api/v1/chats/{chat}/nowhere")).await,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            app.put(&u, &format!("/api/v1/chats/{chat}/branches"), json!({}))
                .await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            app.client
                .put(app.url("/api/v1/chats"))
                .bearer_auth(&u.token)
                .send()
                .await
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (res, status, code) in cases {
        assert_error(res, status, code).await;
    }

    assert_eq!(
        app.tree(&u, &chat).await,
        before,
        "failed requests changed the chat"
    );
}

/// `/api/v1/chats` is matched segment by segment (`api::segments`), not by actix-web's
/// patterns: it must answer every path as they did.
#[actix_web::test]
async fn chat_paths_match_as_actix_web_patterns_do() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    app.say(&u, &chat, "q").await;
    // A literal segment is compared after actix-web's requoting (`%6D` is `m`); the id is
    // parsed as any UUID text (`{...}`, upper case, no hyphens).
    let simple = chat.replace('-', "");
    for path in [
        format!("/api/v1/chats/{chat}/%6Dessages"),
        format!("/api/v1/chats/%7B{chat}%7D/messages"),
        format!("/api/v1/chats/{}/messages", chat.to_uppercase()),
        format!("/api/v1/chats/{simple}/messages"),
    ] {
        assert_eq!(app.get(&u, &path).await.status(), StatusCode::OK, "{path}");
    }
    let cases = [
        // No trailing slash, no empty segment, no extra segment.
        (
            format!("/api/v1/chats/{chat}/"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("/api/v1/chats/{chat}/messages/"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/api/v1/chats//messages".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/api/v1/chats/".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("/api/v1/chats/{chat}/messages/x/edit/y"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("/api/v1/chats/{chat}/a/b/c/d/e/f"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        // A segment that is not an id where an id goes.
        (
            "/api/v1/chats/nope/messages".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            format!("/api/v1/chats/{chat}%2Fmessages"),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            format!("/api/v1/chats/{chat}/branches/nope"),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            format!("/api/v1/chats/{chat}/generations/nope/events"),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
    ];
    for (path, status, code) in cases {
        let res = app.get(&u, &path).await;
        assert_eq!(res.status(), status, "{path}");
        assert_error(res, status, code).await;
    }
    // The seed dialect's names come before `{chat_id}`, whatever the method.
    let res = app.get(&u, "/api/v1/chats/get-chat").await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app.post(&u, "/api/v1/chats/get-chat", json!({})).await;
    assert_error(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let res = app
        .get(&u, &format!("/api/v1/chats/update-chat/{chat}"))
        .await;
    assert_error(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[derive(serde::Serialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
}

#[actix_web::test]
async fn bad_tokens_get_401() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let now = chrono::Utc::now().timestamp();
    let sign = |exp: i64, secret: &str| {
        encode(
            &Header::default(),
            &Claims {
                sub: u.id.clone(),
                iat: now - 7200,
                exp,
            },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let expired = sign(now - 3600, JWT_SECRET);
    let forged = sign(now + 3600, "some-other-secret-some-other-secret");
    let valid = sign(now + 3600, JWT_SECRET);
    let mut tampered = valid.clone();
    tampered.insert(tampered.len() - 3, 'A');
    let (header, rest) = valid.split_once('.').unwrap();
    let _ = header;
    let payload = rest.split('.').next().unwrap();
    let alg_none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        payload
    );

    let me = |token: String| {
        app.client
            .get(app.url("/api/v1/auth/me"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(me(valid.clone()).await.unwrap().status(), StatusCode::OK);
    // The header as bytes: the scheme's two spellings and blanks around the token are
    // accepted; anything else is refused, whether or not it is UTF-8.
    let with_header = |value: Vec<u8>| {
        app.client
            .get(app.url("/api/v1/auth/me"))
            .header(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
            )
            .send()
    };
    for value in [format!("bearer {valid}"), format!("Bearer \t {valid}  \t")] {
        let res = with_header(value.clone().into_bytes()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{value:?}");
    }
    for (value, code) in [
        (b"Bearer \xff\xfe".to_vec(), "missing_token"),
        (b"Bearer \t ".to_vec(), "missing_token"),
        (format!("Basic {valid}").into_bytes(), "missing_token"),
        (format!("BEARER {valid}").into_bytes(), "missing_token"),
        (
            "Bearer jet\u{e9}.t\u{f6}ken".as_bytes().to_vec(),
            "invalid_token",
        ),
        (
            format!("Bearer {valid}\u{e9}").into_bytes(),
            "invalid_token",
        ),
    ] {
        let res = with_header(value).await.unwrap();
        assert_error(res, StatusCode::UNAUTHORIZED, code).await;
    }
    for (token, code) in [
        (expired, "token_expired"),
        (forged, "invalid_token"),
        (tampered, "invalid_token"),
        (alg_none, "invalid_token"),
    ] {
        assert_error(me(token).await.unwrap(), StatusCode::UNAUTHORIZED, code).await;
    }
    assert_error(
        app.client
            .get(app.url("/api/v1/chats"))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "missing_token",
    )
    .await;
}

fn base64url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A body that is there must be a JSON object, also where the body is optional: a malformed or
/// mistyped one was once taken for no body (an untitled chat), and an array was read field by
/// field.
#[actix_web::test]
async fn bodies_are_json_objects_or_absent() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let send = |path: &'static str, body: &'static str, ctype: Option<&'static str>| {
        let mut req = app
            .client
            .post(app.url(path))
            .bearer_auth(&u.token)
            .body(body);
        if let Some(ctype) = ctype {
            req = req.header("content-type", ctype);
        }
        req.send()
    };
    let json = Some("application/json");
    for (path, body, ctype, status, code) in [
        (
            "/api/v1/chats",
            r#"{"title": 5}"#,
            json,
            422,
            "validation_failed",
        ),
        ("/api/v1/chats", "{bad", json, 400, "invalid_json"),
        (
            "/api/v1/chats",
            r#"["a title"]"#,
            json,
            422,
            "validation_failed",
        ),
        (
            "/api/v1/chats",
            r#"{"title":"x"}"#,
            Some("text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            "/api/v1/chats/create-chat",
            r#"{"title": []}"#,
            json,
            422,
            "validation_failed",
        ),
        ("/chats", "{bad", json, 400, "invalid_json"),
    ] {
        let res = send(path, body, ctype).await.unwrap();
        let status = StatusCode::from_u16(status).unwrap();
        assert_error(res, status, code).await;
    }
    let res = app.get(&u, "/api/v1/chats").await;
    let listed = json_with(res, StatusCode::OK).await;
    assert_eq!(
        listed["chats"].as_array().unwrap().len(),
        0,
        "no chat was made"
    );
    // Absent, empty, `null` or untyped: the defaults.
    for (body, ctype) in [("", None), ("null", json), (r#"{"title":"t"}"#, None)] {
        let res = send("/api/v1/chats", body, ctype).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED, "{body:?}");
    }
    // A required body too.
    let chat = id(&app.create_chat(&u, "c").await);
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/chats/{chat}")))
        .bearer_auth(&u.token)
        .header("content-type", "application/json")
        .body("[null, null, null]")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}

/// A 405 names the methods the resource has (RFC 9110), and a GET route answers HEAD.
#[actix_web::test]
async fn method_not_allowed_names_the_allowed_methods() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat = id(&app.create_chat(&u, "c").await);
    for (method, path, allow) in [
        ("PUT", "/health".to_owned(), "GET, HEAD"),
        ("DELETE", "/api/v1/auth/me".to_owned(), "GET, HEAD"),
        (
            "PUT",
            format!("/api/v1/chats/{chat}/messages"),
            "POST, GET, HEAD",
        ),
        (
            "POST",
            format!("/api/v1/chats/{chat}"),
            "GET, HEAD, PATCH, DELETE",
        ),
    ] {
        let res = app
            .client
            .request(method.parse().unwrap(), app.url(&path))
            .bearer_auth(&u.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["allow"], allow, "{method} {path}");
        assert_error(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    }
    let res = app
        .client
        .head(app.url(&format!("/api/v1/chats/{chat}/messages")))
        .bearer_auth(&u.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().len(), 0, "HEAD sends no body");
}
