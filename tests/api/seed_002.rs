//! Seed 002 (`../shared/seeds/002_*.txt`): its README's examples, in order, against the real
//! server; then what its branches mean on Arbor's tree.

#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// Registers `testuser` (seed 002 documents no register call: Arbor's is used) and logs in by
/// username as the README does.
async fn login_testuser(app: &TestApp) -> User {
    let res = app.post_anon("/api/v1/auth/register", json!({"email": "test@example.com", "username": "testuser", "password": "testpassword"})).await;
    json_with(res, StatusCode::CREATED).await;
    let res = app
        .post_anon(
            "/api/v1/auth/login",
            json!({"username": "testuser", "password": "testpassword"}),
        )
        .await;
    let body = json_with(res, StatusCode::OK).await;
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(body["token_type"], "bearer");
    User::from_session(&body)
}

#[actix_web::test]
async fn readme_examples_in_order() {
    let app = spawn_app().await;
    let user = login_testuser(&app).await;

    // Create a Chat.
    let res = app
        .post(
            &user,
            "/api/v1/chats/create-chat",
            json!({"name": "Product Support Chat"}),
        )
        .await;
    let chat = json_with(res, StatusCode::OK).await;
    assert!(is_uuid(&chat["chat_id"]));
    assert_eq!(chat["account_id"], "testuser");
    assert_eq!(chat["name"], "Product Support Chat");
    assert!(is_time(&chat["created_at"]));
    assert_eq!(chat["active"], true);
    assert_eq!(chat["branches"], json!([]));
    assert_eq!(chat["messages"], json!([]));
    assert!(chat["_id"].is_string());
    let chat_id = chat["chat_id"].as_str().unwrap().to_owned();

    // Add Message to Chat (twice: the branch forks after the first pair).
    let res = app
        .post(
            &user,
            "/api/v1/messages/add-message",
            json!({
                "chat_id": chat_id,
                "question": "What is the refund policy?",
                "response": "Refunds are available within 30 days of purchase."
            }),
        )
        .await;
    let added = json_with(res, StatusCode::OK).await;
    assert_eq!(added["question"], "What is the refund policy?");
    assert_eq!(
        added["response"],
        "Refunds are available within 30 days of purchase."
    );
    assert!(is_uuid(&added["response_id"]));
    assert!(is_time(&added["timestamp"]));
    let res = app
        .post(
            &user,
            "/api/v1/messages/add-message",
            json!({"chat_id": chat_id, "question": "And shipping?", "response": "Free over $50."}),
        )
        .await;
    json_with(res, StatusCode::OK).await;

    // Get a Chat.
    let res = app
        .get(&user, &format!("/api/v1/chats/get-chat?chat_id={chat_id}"))
        .await;
    let got = json_with(res, StatusCode::OK).await;
    assert_eq!(got["chat_id"], chat_id.as_str());
    assert_eq!(got["account_id"], "testuser");
    assert_eq!(got["name"], "Product Support Chat");
    assert_eq!(got["branches"], json!([]));
    let pairs = got["messages"].as_array().unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[0]["question"], "What is the refund policy?");
    assert_eq!(
        pairs[0]["response"],
        "Refunds are available within 30 days of purchase."
    );
    assert!(is_time(&pairs[0]["timestamp"]));
    assert_eq!(pairs[1]["response"], "Free over $50.");

    // Create a Branch.
    let res = app
        .post(
            &user,
            "/api/v1/branches/create-branch",
            json!({"parent_chat_id": chat_id, "message_index": 0, "name": "Refund Flow"}),
        )
        .await;
    let branch = json_with(res, StatusCode::OK).await;
    assert!(is_uuid(&branch["branch_id"]));
    assert_eq!(branch["parent_chat_id"], chat_id.as_str());
    assert_eq!(branch["name"], "Refund Flow");
    assert_eq!(branch["created_from_message_index"], 0);
    assert!(is_time(&branch["created_at"]));
    let branch_id = branch["branch_id"].as_str().unwrap().to_owned();

    // Get All Branches.
    let res = app
        .get(
            &user,
            &format!("/api/v1/branches/get-branches?chat_id={chat_id}"),
        )
        .await;
    let branches = json_with(res, StatusCode::OK).await;
    let branches = branches.as_array().unwrap();
    assert_eq!(branches.len(), 1);
    assert_eq!(branches[0]["branch_id"], branch_id.as_str());
    assert_eq!(branches[0]["name"], "Refund Flow");
    assert_eq!(branches[0]["created_from_message_index"], 0);
    assert!(is_time(&branches[0]["created_at"]));

    // Set Active Branch.
    let res = app
        .client
        .put(app.url(&format!(
            "/api/v1/branches/set-active-branch?chat_id={chat_id}&branch_id={branch_id}"
        )))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let set = json_with(res, StatusCode::OK).await;
    assert_eq!(set["message"], "Active branch set successfully.");
    assert_eq!(set["chat_id"], chat_id.as_str());

    // The active branch holds pair 0 only; a new pair continues it, the main line keeps both.
    let res = app
        .get(&user, &format!("/api/v1/chats/get-chat?chat_id={chat_id}"))
        .await;
    let on_branch = json_with(res, StatusCode::OK).await;
    assert_eq!(questions(&on_branch), ["What is the refund policy?"]);
    assert_eq!(on_branch["branches"][0]["branch_id"], branch_id.as_str());
    let res = app
        .post(
            &user,
            "/api/v1/messages/add-message",
            json!({"chat_id": chat_id, "question": "Can I get store credit?", "response": "Yes."}),
        )
        .await;
    json_with(res, StatusCode::OK).await;
    assert_eq!(
        app.path(&user, &chat_id, Some(&branch_id)).await,
        [
            "What is the refund policy?",
            "Refunds are available within 30 days of purchase.",
            "Can I get store credit?",
            "Yes."
        ]
    );
    // Back to the chat's own line: `branch_id` = the chat id.
    let res = app
        .put(
            &user,
            "/api/v1/branches/set-active-branch",
            json!({"chat_id": chat_id, "branch_id": chat_id}),
        )
        .await;
    json_with(res, StatusCode::OK).await;
    let res = app
        .get(&user, &format!("/api/v1/chats/get-chat?chat_id={chat_id}"))
        .await;
    let main = json_with(res, StatusCode::OK).await;
    assert_eq!(
        questions(&main),
        ["What is the refund policy?", "And shipping?"]
    );
}

/// A branch made through Arbor's own API, forked at path index 3 (pair 1's response), lists
/// as `created_from_message_index` 1; pair indexes count pairs, not messages.
#[actix_web::test]
async fn message_indexes_count_pairs_on_the_tree() {
    let app = spawn_app().await;
    let user = login_testuser(&app).await;
    let chat = app.create_chat(&user, "c").await;
    let chat_id = id(&chat);
    for (q, r) in [("q0", "r0"), ("q1", "r1"), ("q2", "r2")] {
        let res = app
            .post(
                &user,
                "/api/v1/messages/add-message",
                json!({"chat_id": chat_id, "question": q, "response": r}),
            )
            .await;
        json_with(res, StatusCode::OK).await;
    }
    let res = app
        .post(
            &user,
            &format!("/api/v1/chats/{chat_id}/branches"),
            json!({"message_index": 3, "name": "native"}),
        )
        .await;
    json_with(res, StatusCode::CREATED).await;
    let res = app
        .post(
            &user,
            "/api/v1/branches/create-branch",
            json!({"parent_chat_id": chat_id, "message_index": 2, "name": "last"}),
        )
        .await;
    let last = json_with(res, StatusCode::OK).await;
    let res = app
        .get(
            &user,
            &format!("/api/v1/branches/get-branches?chat_id={chat_id}"),
        )
        .await;
    let listed = json_with(res, StatusCode::OK).await;
    let index_of = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap()["created_from_message_index"]
            .clone()
    };
    assert_eq!(index_of("native"), 1);
    assert_eq!(index_of("last"), 2);
    // Arbor sees the seed's fork as a branch whose head is pair 2's response.
    let tree = app.tree(&user, &chat_id).await;
    let branch = tree["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == last["branch_id"])
        .unwrap();
    assert_eq!(branch["message_count"], 6);
    assert_eq!(
        app.path(&user, &chat_id, branch["id"].as_str())
            .await
            .last()
            .unwrap(),
        "r2"
    );

    let res = app
        .post(
            &user,
            "/api/v1/branches/create-branch",
            json!({"parent_chat_id": chat_id, "message_index": 3}),
        )
        .await;
    assert_error(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "message_index_out_of_range",
    )
    .await;
}

#[actix_web::test]
async fn ownership_and_validation_hold() {
    let app = spawn_app().await;
    let owner = login_testuser(&app).await;
    let other = app.register("other@example.com").await;
    let res = app
        .post(&owner, "/api/v1/chats/create-chat", json!({"name": "mine"}))
        .await;
    let chat_id = json_with(res, StatusCode::OK).await["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let res = app
        .get(&other, &format!("/api/v1/chats/get-chat?chat_id={chat_id}"))
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let res = app
        .post(
            &other,
            "/api/v1/messages/add-message",
            json!({"chat_id": chat_id, "question": "hi", "response": "there"}),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let res = app
        .get(
            &other,
            &format!("/api/v1/branches/get-branches?chat_id={chat_id}"),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;

    let res = app
        .post_anon("/api/v1/chats/create-chat", json!({"name": "x"}))
        .await;
    assert_error(res, StatusCode::UNAUTHORIZED, "missing_token").await;
    let res = app
        .post(
            &owner,
            "/api/v1/messages/add-message",
            json!({"chat_id": chat_id, "question": "   "}),
        )
        .await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "empty_content").await;
    let res = app
        .post(
            &owner,
            "/api/v1/messages/add-message",
            json!({"chat_id": "not-a-uuid", "question": "q"}),
        )
        .await;
    let body = json_with(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["error"]["code"], "validation_failed");
    assert!(body["detail"].is_string());
    let res = app
        .put(
            &owner,
            &format!("/api/v1/branches/set-active-branch?chat_id={chat_id}"),
            json!({}),
        )
        .await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "missing_branch_id").await;
    // Nothing of the refused requests was stored.
    assert!(app.path(&owner, &chat_id, None).await.is_empty());
}

/// Seed 002's clients register with a username and a password only, and log in by username.
/// Such an account has no email (`/auth/me` shows `null`) and logs in on Arbor's own API by its
/// username, in the JSON login or the OAuth2 form. Usernames stay unique, and so do emails when
/// given; accounts without one never collide on it.
#[actix_web::test]
async fn registers_with_a_username_only_and_logs_in_by_it() {
    let app = spawn_app().await;
    let res = app
        .post_anon(
            "/api/v1/auth/register",
            json!({"username": "testuser", "password": "testpassword"}),
        )
        .await;
    let registered = json_with(res, StatusCode::CREATED).await;
    assert_eq!(registered["username"], "testuser");
    assert_eq!(registered["email"], serde_json::Value::Null);

    let res = app
        .post_anon(
            "/api/v1/auth/login",
            json!({"username": "TestUser", "password": "testpassword"}),
        )
        .await;
    let user = User::from_session(&json_with(res, StatusCode::OK).await);
    let me = json_with(app.get(&user, "/api/v1/auth/me").await, StatusCode::OK).await;
    assert_eq!(me["username"], "testuser");
    assert_eq!(me["email"], serde_json::Value::Null);
    assert_eq!(me["id"], registered["id"]);

    let res = test_client()
        .post(app.url("/api/v1/auth/token"))
        .form(&[("username", "testuser"), ("password", "testpassword")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_with(res, StatusCode::OK).await["user"]["id"],
        registered["id"]
    );
    let res = app
        .post_anon(
            "/api/v1/auth/login",
            json!({"username": "testuser", "password": "wrong-password"}),
        )
        .await;
    assert_error(res, StatusCode::UNAUTHORIZED, "invalid_credentials").await;

    // A second account without an email does not collide with the first on it ...
    let res = app
        .post_anon(
            "/api/v1/auth/register",
            json!({"username": "otheruser", "password": "testpassword"}),
        )
        .await;
    json_with(res, StatusCode::CREATED).await;
    // ... but a username is taken once, whatever its case, and so is an email.
    let res = app
        .post_anon(
            "/api/v1/auth/register",
            json!({"username": "TESTUSER", "password": "testpassword"}),
        )
        .await;
    assert_error(res, StatusCode::CONFLICT, "username_taken").await;
    let body = json!({"email": "a@example.com", "password": "testpassword"});
    json_with(
        app.post_anon("/api/v1/auth/register", body.clone()).await,
        StatusCode::CREATED,
    )
    .await;
    let res = app.post_anon("/api/v1/auth/register", body).await;
    assert_error(res, StatusCode::CONFLICT, "email_taken").await;

    // Neither is refused; so is seed 004's signup without the email it requires.
    let res = app
        .post_anon("/api/v1/auth/register", json!({"password": "testpassword"}))
        .await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let res = app
        .post_anon(
            "/auth/signup",
            json!({"username": "roomuser", "password": "testpassword"}),
        )
        .await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}
