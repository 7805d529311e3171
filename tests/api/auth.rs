#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[actix_web::test]
async fn register_login_token_and_me() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": "Ann@Example.com", "password": "password123", "username": "ann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["user"]["email"], "ann@example.com");

    // JSON login by email and by username.
    for login in [
        json!({"email": "ann@example.com", "password": "password123"}),
        json!({"username": "ann", "password": "password123"}),
    ] {
        let res = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&login)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    // OAuth2 password form, as the docs' Authorize button sends it.
    let res = app
        .client
        .post(app.url("/api/v1/auth/token"))
        .form(&[("username", "ann@example.com"), ("password", "password123")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let token: Value = res.json().await.unwrap();
    let token = token["access_token"].as_str().unwrap();

    let res = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["username"], "ann");
    assert!(me.get("password_hash").is_none());
}

#[actix_web::test]
async fn bad_credentials_and_duplicates_are_refused() {
    let app = spawn_app().await;
    app.register("bob@example.com").await;
    let post = |path: &'static str, body: serde_json::Value| {
        app.client.post(app.url(path)).json(&body).send()
    };
    // A wrong password and an unknown account are refused alike.
    for body in [
        json!({"email": "bob@example.com", "password": "wrong-password"}),
        json!({"email": "nobody@example.com", "password": "password123"}),
    ] {
        let res = post("/api/v1/auth/login", body).await.unwrap();
        assert_error(res, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    let res = post(
        "/api/v1/auth/register",
        json!({"email": "BOB@example.com", "password": "password123"}),
    );
    let res = res.await.unwrap();
    assert_error(res, StatusCode::CONFLICT, "email_taken").await;
    for (body, code) in [
        (
            json!({"email": "not-an-email", "password": "password123"}),
            "invalid_email",
        ),
        (
            json!({"email": "c@example.com", "password": "short"}),
            "invalid_password",
        ),
        (
            json!({"email": "c@example.com", "password": "password123", "username": "a b"}),
            "invalid_username",
        ),
    ] {
        let res = post("/api/v1/auth/register", body).await.unwrap();
        assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, code).await;
    }
}
