//! Full-text search: every branch, never another user's chats, pruned messages gone, and each
//! hit naming the branches whose paths hold it and the path around it.
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn search(app: &TestApp, user: &User, query: &str) -> Value {
    let res = app.get(user, &format!("/api/v1/search?{query}")).await;
    json_with(res, StatusCode::OK).await
}

fn contents(path: &Value) -> Vec<&str> {
    path.as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect()
}

#[actix_web::test]
async fn search_finds_a_word_on_a_branch_that_is_not_active_and_names_it() {
    let app = spawn_app().await;
    let user = app.register("searcher@example.com").await;
    let chat = id(&app.create_chat(&user, "zoo").await);
    let send = |content: &'static str, response: &'static str| {
        let url = format!("/api/v1/chats/{chat}/messages");
        let app = &app;
        let user = &user;
        async move {
            let res = app
                .post(
                    user,
                    &url,
                    json!({"content": content, "response": response}),
                )
                .await;
            json_with(res, StatusCode::CREATED).await
        }
    };
    send(
        "Where do penguins live?",
        "Mostly in the southern hemisphere.",
    )
    .await;
    let second = send("And the emperor kind?", "Antarctica.").await;
    let main = second["branch_id"].as_str().unwrap().to_owned();
    let q2 = second["messages"][0]["id"].as_str().unwrap().to_owned();
    let res = app
        .post(
            &user,
            &format!("/api/v1/chats/{chat}/messages/{q2}/edit"),
            json!({"content": "What about a quagga running wild?", "name": "extinct"}),
        )
        .await;
    let edited = json_with(res, StatusCode::CREATED).await;
    let side = edited["branch"]["id"].as_str().unwrap().to_owned();
    let quagga = edited["message"]["id"].as_str().unwrap().to_owned();
    let res = app
        .put(
            &user,
            &format!("/api/v1/chats/{chat}/active-branch"),
            json!({"branch_id": main}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    // Only on the side branch, which is not active: the hit names it and its path.
    let found = search(&app, &user, "q=quagga").await;
    let hits = found["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{found}");
    let hit = &hits[0];
    assert_eq!(
        (hit["chat_id"].as_str(), hit["message_id"].as_str()),
        (Some(chat.as_str()), Some(quagga.as_str()))
    );
    assert_eq!(
        hit["branches"],
        json!([{"id": side, "name": "extinct", "active": false}])
    );
    assert_eq!(
        contents(&hit["path"]),
        [
            "Where do penguins live?",
            "Mostly in the southern hemisphere.",
            "What about a quagga running wild?"
        ]
    );
    assert!(
        hit["snippet"]
            .as_str()
            .unwrap()
            .contains("<mark>quagga</mark>"),
        "{hit}"
    );
    assert_eq!(found["next_cursor"], Value::Null);
    // Stemmed: `runs` finds `running`.
    assert_eq!(
        search(&app, &user, "q=runs").await["hits"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A message both branches hold names both, the active one first, with a window of 1.
    let found = search(&app, &user, "q=penguins&window=1").await;
    let hit = &found["hits"][0];
    let names: Vec<&str> = hit["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["main", "extinct"]);
    assert_eq!(hit["branches"][0]["active"], true);
    assert_eq!(
        contents(&hit["path"]),
        [
            "Where do penguins live?",
            "Mostly in the southern hemisphere."
        ]
    );
    // Every word must match.
    assert_eq!(
        search(&app, &user, "q=penguins+quagga").await["hits"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Another user's chats never show, and theirs never show here.
    let other = app.register("other-searcher@example.com").await;
    let theirs = id(&app.create_chat(&other, "theirs").await);
    let res = app
        .post(
            &other,
            &format!("/api/v1/chats/{theirs}/messages"),
            json!({"content": "my own quagga", "response": "ok"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let mine = search(&app, &user, "q=quagga").await;
    assert_eq!(mine["hits"].as_array().unwrap().len(), 1);
    assert_eq!(mine["hits"][0]["chat_id"], chat.as_str());
    let found = search(&app, &other, "q=quagga").await;
    assert_eq!(found["hits"].as_array().unwrap().len(), 1);
    assert_eq!(found["hits"][0]["chat_id"], theirs.as_str());
    assert_eq!(
        search(&app, &other, "q=penguins").await["hits"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Pruned by a branch delete: gone from the results.
    let res = app
        .delete(&user, &format!("/api/v1/chats/{chat}/branches/{side}"))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        search(&app, &user, "q=quagga").await["hits"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        search(&app, &user, "q=penguins").await["hits"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A deleted chat's messages too.
    assert_eq!(
        app.delete(&user, &format!("/api/v1/chats/{chat}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        search(&app, &user, "q=penguins").await["hits"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    for bad in [
        "q=",
        "q=%20%20",
        "q=x&window=11",
        "q=x&cursor=abc",
        "q=x&limit=0",
    ] {
        let res = app.get(&user, &format!("/api/v1/search?{bad}")).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

/// Pages follow the cursor to the end; `chat_id` narrows to one chat; imported chats are
/// searchable at once.
#[actix_web::test]
async fn search_pages_and_narrows_to_one_chat() {
    let app = spawn_app().await;
    let user = app.register("pager@example.com").await;
    let a = id(&app.create_chat(&user, "a").await);
    let b = id(&app.create_chat(&user, "b").await);
    for i in 0..12 {
        for chat in [&a, &b] {
            let res = app
                .post(
                    &user,
                    &format!("/api/v1/chats/{chat}/messages"),
                    json!({"content": format!("needle number {i}"), "response": "found"}),
                )
                .await;
            assert_eq!(res.status(), StatusCode::CREATED);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = search(&app, &user, &format!("q=needle&limit=10{cursor}")).await;
        pages += 1;
        for hit in page["hits"].as_array().unwrap() {
            assert!(
                seen.insert(hit["message_id"].as_str().unwrap().to_owned()),
                "no hit twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (24, 3));
    let only_a = search(&app, &user, &format!("q=needle&limit=50&chat_id={a}")).await;
    let hits = only_a["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 12);
    assert!(hits.iter().all(|h| h["chat_id"] == a.as_str()));
    // An imported chat is indexed in its import's commit.
    let doc = app
        .get(&user, &format!("/api/v1/chats/{a}/export"))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let res = app
        .post(&user, "/api/v1/chats/import?new_ids=true", doc)
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let all = search(&app, &user, "q=needle&limit=100").await;
    assert_eq!(all["hits"].as_array().unwrap().len(), 36);
}
