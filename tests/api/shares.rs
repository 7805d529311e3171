//! Share links: a snapshot of exactly the shared path (or tree), served without auth, never
//! showing the owner or what was not shared; listed and revoked by the owner; imported by
//! others; not enumerable.
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const OWNER: &str = "sharer-7f3a@example.com";

/// A chat whose main branch says `q1, a1, q2, a2`, with an edit of `q2` on another branch
/// (`secret edit`, then `secret answer`), and a system prompt. Main is active again at the end.
async fn branched(app: &TestApp, owner: &User) -> (String, String, String) {
    let res = app
        .post(
            owner,
            "/api/v1/chats",
            json!({"title": "shared chat", "system_prompt": "SYSTEM PROMPT 1f9c"}),
        )
        .await;
    let chat = id(&json_with(res, StatusCode::CREATED).await);
    let send = |content: &'static str, response: &'static str| {
        let url = format!("/api/v1/chats/{chat}/messages");
        async move {
            let body =
                json!({"content": content, "response": response, "metadata": {"k": "private"}});
            let res = app.post(owner, &url, body).await;
            json_with(res, StatusCode::CREATED).await
        }
    };
    send("q1", "a1").await;
    let second = send("q2", "a2").await;
    let q2 = second["messages"][0]["id"].as_str().unwrap().to_owned();
    let tree = app.tree(owner, &chat).await;
    let main = tree["active_branch_id"].as_str().unwrap().to_owned();
    let res = app
        .post(
            owner,
            &format!("/api/v1/chats/{chat}/messages/{q2}/edit"),
            json!({"content": "secret edit"}),
        )
        .await;
    let edited = json_with(res, StatusCode::CREATED).await;
    let side = edited["branch"]["id"].as_str().unwrap().to_owned();
    let res = app
        .post(
            owner,
            &format!("/api/v1/chats/{chat}/messages"),
            json!({"content": "secret answer", "role": "assistant"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = app
        .put(
            owner,
            &format!("/api/v1/chats/{chat}/active-branch"),
            json!({"branch_id": main}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    (chat, main, side)
}

async fn share(app: &TestApp, owner: &User, chat: &str, body: Value) -> Value {
    let res = app
        .post(owner, &format!("/api/v1/chats/{chat}/shares"), body)
        .await;
    json_with(res, StatusCode::CREATED).await
}

async fn anon(app: &TestApp, path: &str) -> reqwest::Response {
    test_client().get(app.url(path)).send().await.unwrap()
}

fn contents(view: &Value) -> Vec<&str> {
    view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect()
}

#[actix_web::test]
async fn a_share_shows_exactly_the_shared_path_without_auth_until_revoked() {
    let app = spawn_app().await;
    let owner = app.register(OWNER).await;
    let (chat, main, side) = branched(&app, &owner).await;

    let created = share(&app, &owner, &chat, json!({})).await;
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);
    assert_eq!(created["url"], format!("/shared/{token}"));
    assert_eq!(
        (created["scope"].as_str(), created["branch_id"].as_str()),
        (Some("branch"), Some(main.as_str()))
    );
    assert_eq!(created["messages"], 4);

    // Anyone with the link, no token needed: exactly main's path, and nothing private.
    let res = anon(&app, &format!("/shared/{token}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    let view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(contents(&view), ["q1", "a1", "q2", "a2"]);
    assert_eq!(view["title"], "shared chat");
    assert_eq!(view["branches"].as_array().unwrap().len(), 1);
    for private in [
        OWNER,
        "secret",
        "SYSTEM PROMPT",
        "private",
        owner.id.as_str(),
        side.as_str(),
    ] {
        assert!(!text.contains(private), "{private} leaked: {text}");
    }

    // A snapshot: what the owner does next is not shared.
    let res = app
        .post(
            &owner,
            &format!("/api/v1/chats/{chat}/messages"),
            json!({"content": "later", "response": "later answer"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let again: Value = anon(&app, &format!("/shared/{token}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(contents(&again), ["q1", "a1", "q2", "a2"]);

    // The whole tree, when the owner chooses it: both branches.
    let tree = share(
        &app,
        &owner,
        &chat,
        json!({"scope": "tree", "branch_id": side}),
    )
    .await;
    let tree_token = tree["token"].as_str().unwrap();
    let whole: Value = anon(&app, &format!("/shared/{tree_token}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(whole["scope"], "tree");
    assert_eq!(whole["branch_id"], side.as_str());
    assert_eq!(whole["branches"].as_array().unwrap().len(), 2);
    let mut all = contents(&whole);
    all.sort();
    let mut expected = vec![
        "q1",
        "a1",
        "q2",
        "a2",
        "secret edit",
        "secret answer",
        "later",
        "later answer",
    ];
    expected.sort();
    assert_eq!(all, expected);

    // The owner lists the links (no tokens) and revokes one: it stops working at once.
    let res = app
        .get(&owner, &format!("/api/v1/chats/{chat}/shares"))
        .await;
    let listed = json_with(res, StatusCode::OK).await;
    let shares = listed["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 2);
    assert!(!listed.to_string().contains(&token));
    let first = created["id"].as_str().unwrap();
    let res = app
        .delete(&owner, &format!("/api/v1/chats/{chat}/shares/{first}"))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_error(
        anon(&app, &format!("/shared/{token}")).await,
        StatusCode::NOT_FOUND,
        "share_not_found",
    )
    .await;
    let res = app
        .delete(&owner, &format!("/api/v1/chats/{chat}/shares/{first}"))
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "share_not_found").await;

    // Nobody else may share, list or revoke this chat's links.
    let other = app.register("not-the-owner@example.com").await;
    let res = app
        .post(&other, &format!("/api/v1/chats/{chat}/shares"), json!({}))
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    let res = app
        .get(&other, &format!("/api/v1/chats/{chat}/shares"))
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;

    // Deleting the chat takes its links with it.
    assert_eq!(
        app.delete(&owner, &format!("/api/v1/chats/{chat}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_error(
        anon(&app, &format!("/shared/{tree_token}")).await,
        StatusCode::NOT_FOUND,
        "share_not_found",
    )
    .await;
}

#[actix_web::test]
async fn a_recipient_imports_a_shared_conversation_as_their_own_chat() {
    let app = spawn_app().await;
    let owner = app.register(OWNER).await;
    let (chat, _, _) = branched(&app, &owner).await;
    let token = share(&app, &owner, &chat, json!({"scope": "tree"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let recipient = app.register("recipient@example.com").await;
    let res = app
        .post(
            &recipient,
            &format!("/api/v1/shared/{token}/import"),
            json!({}),
        )
        .await;
    let imported = json_with(res, StatusCode::CREATED).await;
    let copy = id(&imported);
    assert_ne!(copy, chat);
    assert_eq!(imported["title"], "shared chat");
    assert_eq!(imported["message_count"], 6);
    assert_eq!(
        imported["system_prompt"],
        Value::Null,
        "the prompt was not shared"
    );
    assert_eq!(imported["branches"].as_array().unwrap().len(), 2);
    // The active path is the one shared as active, the other branch is there too, and the
    // copy is the recipient's alone: new ids, their chat list, writable.
    assert_eq!(
        app.path(&recipient, &copy, None).await,
        ["q1", "a1", "q2", "a2"]
    );
    let tree = app.tree(&recipient, &copy).await;
    let original = app.tree(&owner, &chat).await;
    for node in tree["nodes"].as_array().unwrap() {
        assert!(original["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["id"] != node["id"]));
    }
    let res = app.get(&recipient, "/api/v1/chats").await;
    assert_eq!(
        json_with(res, StatusCode::OK).await["chats"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let res = app
        .post(
            &recipient,
            &format!("/api/v1/chats/{copy}/messages"),
            json!({"content": "mine now"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        app.path(&owner, &chat, None).await,
        ["q1", "a1", "q2", "a2"]
    );
    let res = app.get(&owner, &format!("/api/v1/chats/{copy}")).await;
    assert_error(res, StatusCode::NOT_FOUND, "chat_not_found").await;
    // Import needs an account; a bad token is a miss.
    let res = app
        .post_anon(&format!("/api/v1/shared/{token}/import"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = app
        .post(
            &recipient,
            &format!("/api/v1/shared/{}/import", "0".repeat(64)),
            json!({}),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "share_not_found").await;
}

/// Lookups that find nothing are limited per client IP, after which even a good token waits;
/// and a chat's links are bounded.
#[actix_web::test]
async fn share_tokens_cannot_be_enumerated_and_links_are_bounded() {
    let app = spawn_with(|s| {
        s.rate_limits.share_misses_per_ip = 3;
        s.limits.max_shares_per_chat = 2;
    })
    .await;
    let owner = app.register(OWNER).await;
    let (chat, _, _) = branched(&app, &owner).await;
    let token = share(&app, &owner, &chat, json!({})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    share(&app, &owner, &chat, json!({})).await;
    let res = app
        .post(&owner, &format!("/api/v1/chats/{chat}/shares"), json!({}))
        .await;
    assert_error(res, StatusCode::CONFLICT, "too_many_shares").await;

    let mut guess = token.clone().into_bytes();
    guess[63] = if guess[63] == b'0' { b'1' } else { b'0' };
    let guess = String::from_utf8(guess).unwrap();
    for path in [guess.as_str(), "short", &"z".repeat(64)] {
        let res = anon(&app, &format!("/shared/{path}")).await;
        assert_error(res, StatusCode::NOT_FOUND, "share_not_found").await;
    }
    let res = anon(&app, &format!("/shared/{token}")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // The owner's own requests are not share lookups.
    let res = app
        .get(&owner, &format!("/api/v1/chats/{chat}/shares"))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}
