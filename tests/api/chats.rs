#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[actix_web::test]
async fn chat_crud_and_paged_listing() {
    let app = spawn_app().await;
    let u = app.register("u@example.com").await;
    let chat = app.create_chat(&u, "first").await;
    assert_eq!(chat["title"], "first");
    assert_eq!(chat["branches"][0]["name"], "main");
    assert_eq!(chat["active_branch_id"], chat["branches"][0]["id"]);
    assert!(chat["branches"][0]["head_message_id"].is_null());

    let mut ids = vec![id(&chat)];
    for i in 0..4 {
        ids.push(id(&app.create_chat(&u, &format!("chat {i}")).await));
    }
    // Newest first, two per page.
    let page: Value = app
        .get(&u, "/api/v1/chats?limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["chats"][0]["id"], ids[4].as_str());
    assert_eq!(page["has_more"], true);
    let next = page["next_before"].as_str().unwrap();
    let page2: Value = app
        .get(&u, &format!("/api/v1/chats?limit=2&before={next}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page2["chats"][0]["id"], ids[2].as_str());
    let page3: Value = app
        .get(
            &u,
            &format!(
                "/api/v1/chats?limit=2&before={}",
                page2["next_before"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page3["chats"].as_array().unwrap().len(), 1);
    assert_eq!(page3["has_more"], false);

    let c = &ids[0];
    let res = app
        .patch(
            &u,
            &format!("/api/v1/chats/{c}"),
            json!({"title": "renamed", "system_prompt": "Be brief."}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let got: Value = app
        .get(&u, &format!("/api/v1/chats/{c}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["title"], "renamed");
    assert_eq!(got["system_prompt"], "Be brief.");
    // `null` clears, absence keeps.
    let res = app
        .patch(&u, &format!("/api/v1/chats/{c}"), json!({"title": null}))
        .await;
    let got: Value = res.json().await.unwrap();
    assert!(got["title"].is_null());
    assert_eq!(got["system_prompt"], "Be brief.");

    app.say(&u, c, "hello").await;
    assert_eq!(
        app.delete(&u, &format!("/api/v1/chats/{c}")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_error(
        app.get(&u, &format!("/api/v1/chats/{c}")).await,
        StatusCode::NOT_FOUND,
        "chat_not_found",
    )
    .await;
    assert_error(
        app.delete(&u, &format!("/api/v1/chats/{c}")).await,
        StatusCode::NOT_FOUND,
        "chat_not_found",
    )
    .await;
    let all: Value = app
        .get(&u, "/api/v1/chats?limit=50")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["chats"].as_array().unwrap().len(), 4);
}

#[actix_web::test]
async fn health_ready_docs_and_request_ids() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    // None sent, or one that is not 1 to 128 visible ASCII characters: a new UUID.
    for sent in [None, Some("has space"), Some(&*"x".repeat(129))] {
        let mut req = app.client.get(app.url("/ready"));
        if let Some(sent) = sent {
            req = req.header("x-request-id", sent);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let given = res.headers()["x-request-id"].to_str().unwrap();
        assert!(
            uuid::Uuid::parse_str(given).is_ok(),
            "{sent:?} gave {given}"
        );
    }
    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/api/v1/chats/{chat_id}/branches"].is_object());
    assert!(spec["components"]["securitySchemes"]["oauth2"].is_object());
    let docs = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));
}

#[actix_web::test]
async fn cors_only_for_the_configured_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/chats"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let get = |app: &TestApp, origin: &str| {
        app.client
            .get(app.url("/health"))
            .header("origin", origin)
            .send()
    };
    let allowed = |res: &reqwest::Response| {
        res.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // Off by default: no CORS headers, whoever asks.
    let app = spawn_app().await;
    let res = get(&app, "https://app.example").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(allowed(&res), None);
    let res = preflight(&app, "https://app.example").await.unwrap();
    assert_eq!(allowed(&res), None);

    let app = spawn_with(|s| s.server.cors_origins = vec!["https://app.example".into()]).await;
    let res = preflight(&app, "https://app.example").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(allowed(&res).as_deref(), Some("https://app.example"));
    let res = get(&app, "https://app.example").await.unwrap();
    assert_eq!(allowed(&res).as_deref(), Some("https://app.example"));
    let res = preflight(&app, "https://elsewhere.example").await.unwrap();
    assert_eq!(allowed(&res), None);
}
