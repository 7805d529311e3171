//! Export and import: `arbor.chat/1` round-trips generated trees exactly; ChatGPT's and Open
//! WebUI's exports (fixtures built by hand from their published shapes) import with their
//! trees and active paths and export back; every malformed document gets its own code and
//! stores nothing.
#![allow(clippy::unwrap_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn export(app: &TestApp, user: &User, chat: &str, format: &str) -> Value {
    let res = app
        .get(
            user,
            &format!("/api/v1/chats/{chat}/export?format={format}"),
        )
        .await;
    json_with(res, StatusCode::OK).await
}

async fn import(app: &TestApp, user: &User, query: &str, body: &Value) -> reqwest::Response {
    app.post(user, &format!("/api/v1/chats/import{query}"), body.clone())
        .await
}

async fn chat_count(app: &TestApp, user: &User) -> usize {
    let res = app.get(user, "/api/v1/chats").await;
    json_with(res, StatusCode::OK).await["chats"]
        .as_array()
        .unwrap()
        .len()
}

/// A chat grown by random operations: sends (with and without replies), forks, edits,
/// regenerations, branch deletes, switches and feedback.
async fn random_chat(app: &TestApp, user: &User, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let res = app
        .post(
            user,
            "/api/v1/chats",
            json!({"title": format!("tree {seed}"), "system_prompt": "be brief", "description": "generated"}),
        )
        .await;
    let chat = id(&json_with(res, StatusCode::CREATED).await);
    let base = format!("/api/v1/chats/{chat}");
    for step in 0..40 {
        let tree = app.tree(user, &chat).await;
        let nodes = tree["nodes"].as_array().unwrap().clone();
        let pick = |rng: &mut StdRng, role: Option<&str>| -> Option<String> {
            let some: Vec<&Value> = nodes
                .iter()
                .filter(|n| role.is_none_or(|r| n["role"] == r))
                .collect();
            (!some.is_empty()).then(|| {
                some[rng.gen_range(0..some.len())]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
        };
        let op = if nodes.is_empty() {
            0
        } else {
            rng.gen_range(0..9)
        };
        match op {
            0..=2 => {
                let body = match rng.gen_bool(0.5) {
                    true => json!({"content": format!("q{step}"), "response": format!("a{step}"),
                                   "metadata": {"step": step}}),
                    false => {
                        json!({"content": format!("ask {step}"), "reply": true, "model": "echo"})
                    }
                };
                let res = app.post(user, &format!("{base}/messages"), body).await;
                assert_eq!(res.status(), StatusCode::CREATED);
            }
            3 => {
                let from = pick(&mut rng, None).unwrap();
                let res = app
                    .post(user, &format!("{base}/branches"),
                          json!({"from_message_id": from, "name": format!("fork {step}"), "activate": true}))
                    .await;
                assert_eq!(res.status(), StatusCode::CREATED);
            }
            4 => {
                if let Some(m) = pick(&mut rng, Some("user")) {
                    let res = app
                        .post(
                            user,
                            &format!("{base}/messages/{m}/edit"),
                            json!({"content": format!("edit {step}")}),
                        )
                        .await;
                    assert_eq!(res.status(), StatusCode::CREATED);
                }
            }
            5 => {
                if let Some(m) = pick(&mut rng, Some("user")) {
                    let res = app
                        .post(
                            user,
                            &format!("{base}/messages/{m}/regenerate"),
                            json!({"model": "echo"}),
                        )
                        .await;
                    assert_eq!(res.status(), StatusCode::CREATED);
                }
            }
            6 => {
                let branches = tree["branches"].as_array().unwrap();
                let active = tree["active_branch_id"].as_str().unwrap();
                let others: Vec<&str> = branches
                    .iter()
                    .map(|b| b["id"].as_str().unwrap())
                    .filter(|b| *b != active)
                    .collect();
                if !others.is_empty() {
                    let b = others[rng.gen_range(0..others.len())];
                    let res = app.delete(user, &format!("{base}/branches/{b}")).await;
                    assert_eq!(res.status(), StatusCode::OK);
                }
            }
            7 => {
                let branches = tree["branches"].as_array().unwrap();
                let b = branches[rng.gen_range(0..branches.len())]["id"]
                    .as_str()
                    .unwrap();
                let res = app
                    .put(
                        user,
                        &format!("{base}/active-branch"),
                        json!({"branch_id": b}),
                    )
                    .await;
                assert_eq!(res.status(), StatusCode::OK);
            }
            _ => {
                if let Some(m) = pick(&mut rng, Some("assistant")) {
                    let rating = if rng.gen_bool(0.5) { "up" } else { "down" };
                    let res = app
                        .put(
                            user,
                            &format!("{base}/messages/{m}/feedback"),
                            json!({"rating": rating, "tags": ["t"], "comment": "c"}),
                        )
                        .await;
                    assert_eq!(res.status(), StatusCode::OK);
                }
            }
        }
    }
    chat
}

/// Export, delete, import, export: the same document but for the chat's id.
#[actix_web::test]
async fn generated_trees_round_trip_exactly() {
    let app = spawn_app().await;
    let user = app.register("porter@example.com").await;
    for seed in 1..=4 {
        let chat = random_chat(&app, &user, seed).await;
        let before = export(&app, &user, &chat, "arbor").await;
        assert_eq!(before["format"], "arbor.chat/1");
        assert!(before["messages"].as_array().unwrap().len() > 5, "{before}");
        // The ids are this chat's: importing beside it is a conflict, and stores nothing.
        let res = import(&app, &user, "", &before).await;
        assert_error(res, StatusCode::CONFLICT, "import_id_conflict").await;
        assert_eq!(
            app.delete(&user, &format!("/api/v1/chats/{chat}"))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        let res = import(&app, &user, "", &before).await;
        let created = json_with(res, StatusCode::CREATED).await;
        let copy = id(&created["chats"][0]);
        assert_ne!(copy, chat);
        let mut after = export(&app, &user, &copy, "arbor").await;
        after["chat"]["id"] = before["chat"]["id"].clone();
        assert_eq!(after, before, "seed {seed}");
        // With new ids: the same tree, every id mapped.
        let res = import(&app, &user, "?new_ids=true", &before).await;
        let created = json_with(res, StatusCode::CREATED).await;
        let ids = created["ids"].as_object().unwrap();
        assert_eq!(
            ids.len(),
            before["messages"].as_array().unwrap().len()
                + before["branches"].as_array().unwrap().len()
        );
        let renamed = export(&app, &user, &id(&created["chats"][0]), "arbor").await;
        let map = |v: &Value| ids[v.as_str().unwrap()].clone();
        for (old, new) in before["messages"]
            .as_array()
            .unwrap()
            .iter()
            .zip(renamed["messages"].as_array().unwrap())
        {
            assert_eq!(map(&old["id"]), new["id"]);
            assert_eq!(old["content"], new["content"]);
            assert_eq!(
                old["parent_id"].as_str().map(|_| map(&old["parent_id"])),
                new["parent_id"].as_str().map(|s| json!(s))
            );
        }
        assert_eq!(
            map(&before["active_branch_id"]),
            renamed["active_branch_id"]
        );
    }
}

/// One valid document to break in each way.
fn valid() -> Value {
    let (m1, m2, m3) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    let (b1, b2) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let t = "2026-12-01T10:00:00.000Z";
    let message = |id: uuid::Uuid, parent: Option<uuid::Uuid>, role: &str, content: &str| {
        json!({"id": id, "parent_id": parent, "role": role, "content": content, "model": null,
               "metadata": null, "status": "complete", "created_at": t})
    };
    json!({
        "format": "arbor.chat/1",
        "chat": {"id": uuid::Uuid::now_v7(), "title": "t", "system_prompt": null,
                 "description": null, "created_at": t, "updated_at": t},
        "active_branch_id": b1,
        "branches": [
            {"id": b1, "name": "main", "head_id": m2, "forked_from_id": null, "created_at": t, "updated_at": t},
            {"id": b2, "name": "other", "head_id": m3, "forked_from_id": m1, "created_at": t, "updated_at": t},
        ],
        "messages": [
            message(m1, None, "user", "hello"),
            message(m2, Some(m1), "assistant", "hi"),
            message(m3, Some(m1), "assistant", "hey"),
        ],
    })
}

#[actix_web::test]
async fn every_malformed_document_has_its_own_code_and_stores_nothing() {
    let app = spawn_with(|s| s.limits.max_import_messages = 3).await;
    let user = app.register("strict@example.com").await;
    let ids = |doc: &Value, i: usize| doc["messages"][i]["id"].clone();
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut doc = valid();
    doc["format"] = json!("arbor.chat/2");
    cases.push(("import_unsupported_format", doc));
    let mut doc = valid();
    doc["messages"][0]["parent_id"] = ids(&doc, 1);
    cases.push(("import_cycle", doc));
    let mut doc = valid();
    doc["messages"][2]["parent_id"] = json!(uuid::Uuid::now_v7());
    cases.push(("import_dangling_parent", doc));
    let mut doc = valid();
    doc["branches"][1]["head_id"] = json!(uuid::Uuid::now_v7());
    cases.push(("import_head_not_in_tree", doc));
    let mut doc = valid();
    doc["messages"][2]["id"] = ids(&doc, 1);
    cases.push(("import_duplicate_id", doc));
    let mut doc = valid();
    doc["branches"][1]["id"] = doc["branches"][0]["id"].clone();
    cases.push(("import_duplicate_id", doc));
    let mut doc = valid();
    doc["branches"][1]["head_id"] = ids(&doc, 1);
    cases.push(("import_unreachable_message", doc));
    let mut doc = valid();
    doc["active_branch_id"] = json!(uuid::Uuid::now_v7());
    cases.push(("import_active_branch_missing", doc));
    let mut doc = valid();
    doc["branches"] = json!([]);
    cases.push(("import_no_branches", doc));
    let mut doc = valid();
    let extra = json!({"id": uuid::Uuid::now_v7(), "parent_id": ids(&doc, 1), "role": "user",
                       "content": "x", "model": null, "metadata": null, "status": "complete",
                       "created_at": "2026-12-01T10:00:00.000Z"});
    doc["messages"].as_array_mut().unwrap().push(extra.clone());
    doc["branches"][0]["head_id"] = extra["id"].clone();
    cases.push(("import_too_large", doc));
    let mut doc = valid();
    doc["messages"][0]["content"] = json!("nul \u{0} inside");
    cases.push(("import_invalid_text", doc));
    for (code, doc) in &cases {
        let res = import(&app, &user, "", doc).await;
        assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, code).await;
    }
    // ChatGPT's format: a mapping has one root.
    let two_roots = json!([{"title": "x", "create_time": 1.0, "update_time": 1.0, "current_node": "a",
    "mapping": {
        "a": {"id": "a", "parent": null, "children": [], "message": {"id": "a", "author": {"role": "user"}, "content": {"content_type": "text", "parts": ["1"]}}},
        "b": {"id": "b", "parent": null, "children": [], "message": {"id": "b", "author": {"role": "user"}, "content": {"content_type": "text", "parts": ["2"]}}},
    }}]);
    let res = import(&app, &user, "?format=chatgpt", &two_roots).await;
    assert_error(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "import_multiple_roots",
    )
    .await;
    // Shapes that are not documents at all.
    let res = import(&app, &user, "", &json!([1, 2])).await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let mut doc = valid();
    doc["messages"][0]["role"] = json!("wizard");
    let res = import(&app, &user, "", &doc).await;
    assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(chat_count(&app, &user).await, 0, "nothing was stored");
    // And the valid one imports, then conflicts.
    let doc = valid();
    let res = import(&app, &user, "", &doc).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = import(&app, &user, "", &doc).await;
    assert_error(res, StatusCode::CONFLICT, "import_id_conflict").await;
    assert_eq!(chat_count(&app, &user).await, 1);
}

/// A ChatGPT `conversations.json`, built by hand from its published shape: a hidden system
/// message under the client-created root, a question answered twice (a regeneration), an edit
/// of the question (a second branch), a multi-part message with an image, a tool message and an
/// empty assistant node; `current_node` on the regenerated answer's follow-up.
fn chatgpt_fixture() -> (Value, [String; 9]) {
    let id = || uuid::Uuid::new_v4().to_string();
    let [sys, q1, a1, a1b, q2, img, tool, empty, q1e] =
        [id(), id(), id(), id(), id(), id(), id(), id(), id()];
    let msg = |id: &str, role: &str, content: Value, t: f64| {
        json!({"id": id, "author": {"role": role, "name": null, "metadata": {}}, "create_time": t,
               "update_time": null, "content": content, "status": "finished_successfully",
               "end_turn": null, "weight": 1.0, "metadata": {"model_slug": "gpt-4o"}, "recipient": "all"})
    };
    let text = |s: &str| json!({"content_type": "text", "parts": [s]});
    let node = |id: &str, message: Value, parent: Option<&str>, children: Vec<&str>| json!({"id": id, "message": message, "parent": parent, "children": children});
    let mut system = msg(&sys, "system", text(""), 1_700_000_000.0);
    system["metadata"]["is_visually_hidden_from_conversation"] = json!(true);
    let mut tool_msg = msg(
        &tool,
        "tool",
        json!({"content_type": "execution_output", "text": "42"}),
        1_700_000_050.0,
    );
    tool_msg["author"]["name"] = json!("python");
    let mapping = json!({
        "client-created-root": node("client-created-root", Value::Null, None, vec![&sys]),
        sys.clone(): node(&sys, system, Some("client-created-root"), vec![&q1, &q1e]),
        q1.clone(): node(&q1, msg(&q1, "user", text("What is 6 times 7?"), 1_700_000_010.0), Some(&sys), vec![&a1, &a1b]),
        a1.clone(): node(&a1, msg(&a1, "assistant", text("42."), 1_700_000_020.0), Some(&q1), vec![]),
        a1b.clone(): node(&a1b, msg(&a1b, "assistant", text("It is 42."), 1_700_000_030.0), Some(&q1), vec![&q2]),
        q2.clone(): node(&q2, msg(&q2, "user", text("Show me."), 1_700_000_040.0), Some(&a1b), vec![&img]),
        img.clone(): node(&img, msg(&img, "assistant", json!({"content_type": "multimodal_text", "parts": [
            {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-abc", "width": 10, "height": 10},
            "Here is a picture.", "And a caption."]}), 1_700_000_045.0), Some(&q2), vec![&tool]),
        tool.clone(): node(&tool, tool_msg, Some(&img), vec![&empty]),
        empty.clone(): node(&empty, msg(&empty, "assistant", text(""), 1_700_000_060.0), Some(&tool), vec![]),
        q1e.clone(): node(&q1e, msg(&q1e, "user", text("What is 6 x 7, really?"), 1_700_000_070.0), Some(&sys), vec![]),
    });
    let conversation = json!([{
        "title": "Multiplication", "create_time": 1_700_000_000.0, "update_time": 1_700_000_070.0,
        "mapping": mapping, "current_node": empty, "conversation_id": id(), "id": id(),
        "moderation_results": [], "plugin_ids": null,
    }]);
    (conversation, [sys, q1, a1, a1b, q2, img, tool, empty, q1e])
}

#[actix_web::test]
async fn a_chatgpt_export_imports_with_its_tree_and_exports_back() {
    let app = spawn_app().await;
    let user = app.register("from-chatgpt@example.com").await;
    let (fixture, [sys, q1, a1, a1b, q2, img, tool, empty, q1e]) = chatgpt_fixture();
    let res = import(&app, &user, "?format=chatgpt", &fixture).await;
    let created = json_with(res, StatusCode::CREATED).await;
    let chat = id(&created["chats"][0]);
    assert_eq!(created["chats"][0]["title"], "Multiplication");
    // Three leaves: three branches; the active one ends at `current_node`.
    assert_eq!(created["chats"][0]["branches"].as_array().unwrap().len(), 3);
    let doc = export(&app, &user, &chat, "arbor").await;
    let by_id = |id: &str| {
        doc["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()
            .clone()
    };
    let active = doc["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == doc["active_branch_id"])
        .unwrap();
    assert_eq!(active["head_id"], empty.as_str());
    let mut path = Vec::new();
    let mut at = Some(empty.clone());
    while let Some(m) = at {
        path.push(m.clone());
        at = by_id(&m)["parent_id"].as_str().map(str::to_owned);
    }
    path.reverse();
    assert_eq!(
        path,
        [
            sys.clone(),
            q1.clone(),
            a1b.clone(),
            q2.clone(),
            img.clone(),
            tool.clone(),
            empty.clone()
        ],
        "ids kept; the regenerated answer's path"
    );
    // Roles, text, and what Arbor has no field for, in metadata.
    assert_eq!(by_id(&sys)["role"], "system");
    assert_eq!(
        by_id(&sys)["metadata"]["chatgpt"]["metadata"]["is_visually_hidden_from_conversation"],
        true
    );
    assert_eq!(by_id(&tool)["role"], "assistant");
    assert_eq!(by_id(&tool)["content"], "42");
    assert_eq!(
        by_id(&tool)["metadata"]["chatgpt"]["author"]["role"],
        "tool"
    );
    assert_eq!(by_id(&img)["content"], "Here is a picture.\nAnd a caption.");
    assert_eq!(
        by_id(&img)["metadata"]["chatgpt"]["content"]["parts"][0]["asset_pointer"],
        "file-service://file-abc"
    );
    assert_eq!(by_id(&empty)["content"], "");
    assert_eq!(by_id(&a1)["model"], "gpt-4o");
    assert_eq!(by_id(&q1e)["parent_id"], sys.as_str());
    assert_eq!(by_id(&q1)["created_at"], "2023-11-14T22:13:30Z");

    // Back to ChatGPT's shape: the same messages under the same ids, the same current path,
    // the tool author and the multi-part content as they were.
    let back = export(&app, &user, &chat, "chatgpt").await;
    let original = &fixture[0];
    let ids = |c: &Value| {
        let mut ids: Vec<String> = c["mapping"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, n)| !n["message"].is_null())
            .map(|(k, _)| k.clone())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&back), ids(original));
    assert_eq!(
        arbor::formats::chatgpt::current_path(&back),
        arbor::formats::chatgpt::current_path(original)
    );
    for id in [&tool, &img, &sys] {
        assert_eq!(
            back["mapping"][id]["message"]["author"], original["mapping"][id]["message"]["author"],
            "{id}"
        );
        assert_eq!(
            back["mapping"][id]["message"]["content"],
            original["mapping"][id]["message"]["content"],
            "{id}"
        );
    }
    // And that export imports again as the same tree (new ids, as these are taken).
    let res = import(&app, &user, "?format=chatgpt&new_ids=true", &json!([back])).await;
    let again = json_with(res, StatusCode::CREATED).await;
    assert_eq!(again["chats"][0]["message_count"], 9);
    let res = import(&app, &user, "?format=chatgpt", &fixture).await;
    assert_error(res, StatusCode::CONFLICT, "import_id_conflict").await;
}

/// An Open WebUI export, built by hand from its shape: `history.messages` with `parentId` and
/// `childrenIds`, a regenerated answer, an edited question, a system message, a message with
/// files and an empty answer; `currentId` on the edited question's answer.
#[actix_web::test]
async fn an_open_webui_export_imports_with_its_tree_and_exports_back() {
    let app = spawn_app().await;
    let user = app.register("from-owui@example.com").await;
    let new = || uuid::Uuid::new_v4().to_string();
    let [sys, q1, a1, a1b, q1e, a2] = [new(), new(), new(), new(), new(), new()];
    let m =
        |id: &str, parent: Option<&str>, children: Vec<&str>, role: &str, content: &str, t: i64| {
            let mut m = json!({"id": id, "parentId": parent, "childrenIds": children, "role": role,
                           "content": content, "timestamp": t});
            if role == "assistant" {
                m["model"] = json!("llama3:8b");
                m["modelName"] = json!("Llama 3");
                m["done"] = json!(true);
            } else {
                m["models"] = json!(["llama3:8b"]);
            }
            m
        };
    let mut with_files = m(
        &q1,
        Some(&sys),
        vec![&a1, &a1b],
        "user",
        "Describe this.",
        1_700_000_010,
    );
    with_files["files"] = json!([{"type": "image", "url": "data:image/png;base64,AAAA"}]);
    let messages = json!({
        sys.clone(): m(&sys, None, vec![&q1, &q1e], "system", "You are terse.", 1_700_000_000),
        q1.clone(): with_files,
        a1.clone(): m(&a1, Some(&q1), vec![], "assistant", "A cat.", 1_700_000_020),
        a1b.clone(): m(&a1b, Some(&q1), vec![], "assistant", "", 1_700_000_030),
        q1e.clone(): m(&q1e, Some(&sys), vec![&a2], "user", "Describe it in detail.", 1_700_000_040),
        a2.clone(): m(&a2, Some(&q1e), vec![], "assistant", "A grey cat on a mat.", 1_700_000_050),
    });
    let fixture = json!([{
        "id": new(), "user_id": new(), "title": "Cat picture",
        "chat": {"id": "", "title": "Cat picture", "models": ["llama3:8b"], "params": {},
                 "history": {"messages": messages, "currentId": a2},
                 "messages": [], "tags": [], "timestamp": 1_700_000_000_000i64, "files": []},
        "updated_at": 1_700_000_050, "created_at": 1_700_000_000,
        "share_id": null, "archived": false, "pinned": false, "meta": {}, "folder_id": null,
    }]);
    let res = import(&app, &user, "?format=openwebui", &fixture).await;
    let created = json_with(res, StatusCode::CREATED).await;
    let chat = id(&created["chats"][0]);
    assert_eq!(created["chats"][0]["title"], "Cat picture");
    assert_eq!(created["chats"][0]["branches"].as_array().unwrap().len(), 3);
    assert_eq!(
        app.path(&user, &chat, None).await,
        [
            "You are terse.",
            "Describe it in detail.",
            "A grey cat on a mat."
        ]
    );
    let doc = export(&app, &user, &chat, "arbor").await;
    let by_id = |id: &str| {
        doc["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&sys)["role"], "system");
    assert_eq!(by_id(&a1b)["content"], "");
    assert_eq!(by_id(&a1)["model"], "llama3:8b");
    assert_eq!(
        by_id(&q1)["metadata"]["openwebui"]["files"][0]["type"],
        "image"
    );
    assert_eq!(by_id(&a1)["metadata"]["openwebui"]["modelName"], "Llama 3");

    let back = export(&app, &user, &chat, "openwebui").await;
    let history = &back[0]["chat"]["history"];
    assert_eq!(history["currentId"], a2.as_str());
    for (key, original) in fixture[0]["chat"]["history"]["messages"]
        .as_object()
        .unwrap()
    {
        let exported = &history["messages"][key];
        for field in [
            "id",
            "parentId",
            "role",
            "content",
            "timestamp",
            "model",
            "files",
            "modelName",
        ] {
            assert_eq!(exported[field], original[field], "{key}.{field}");
        }
        let mut a: Vec<&str> = exported["childrenIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut b: Vec<&str> = original["childrenIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{key}.childrenIds");
    }
    let path: Vec<&str> = back[0]["chat"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        path,
        [
            "You are terse.",
            "Describe it in detail.",
            "A grey cat on a mat."
        ]
    );
}

async fn restore(app: &TestApp, user: &User, body: String) -> reqwest::Response {
    test_client()
        .post(app.url("/api/v1/backup/restore"))
        .bearer_auth(&user.token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A backup streams every chat as a line; a restore cut short by a bad line says how far it
/// got, and run again finishes it without duplicating anything.
#[actix_web::test]
async fn a_backup_restores_and_an_interrupted_restore_resumes() {
    let app = spawn_app().await;
    let user = app.register("backed-up@example.com").await;
    let mut originals = Vec::new();
    for seed in 10..15 {
        let chat = random_chat(&app, &user, seed).await;
        originals.push(export(&app, &user, &chat, "arbor").await);
    }
    let res = app.get(&user, "/api/v1/backup").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let stream = res.text().await.unwrap();
    let lines: Vec<&str> = stream.lines().collect();
    assert_eq!(lines.len(), 5);
    let docs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Newest first, each the chat's own export.
    for (doc, original) in docs.iter().zip(originals.iter().rev()) {
        assert_eq!(doc, original);
    }
    // Another account holds none of it; the chats are deleted and restored from the stream.
    for doc in &docs {
        let chat = doc["chat"]["id"].as_str().unwrap();
        assert_eq!(
            app.delete(&user, &format!("/api/v1/chats/{chat}"))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(chat_count(&app, &user).await, 0);

    // Cut short: three good lines, then a broken one.
    let partial = format!(
        "{}\n{}\n{}\n{{\"format\": \"arbor.chat/1\", \"chat\": \n{}\n",
        lines[0], lines[1], lines[2], lines[3]
    );
    let res = restore(&app, &user, partial).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let stopped: Value = res.json().await.unwrap();
    assert_eq!(
        (
            stopped["line"].as_u64(),
            stopped["restored"].as_u64(),
            stopped["skipped"].as_u64()
        ),
        (Some(4), Some(3), Some(0)),
        "{stopped}"
    );
    assert_eq!(stopped["error"]["code"], "invalid_json");
    assert_eq!(chat_count(&app, &user).await, 3);

    // Run again with the whole stream: the rest is restored, nothing twice.
    let res = restore(&app, &user, stream.clone()).await;
    let done = json_with(res, StatusCode::OK).await;
    assert_eq!(done, json!({"restored": 2, "skipped": 3}));
    let res = restore(&app, &user, stream.clone()).await;
    assert_eq!(
        json_with(res, StatusCode::OK).await,
        json!({"restored": 0, "skipped": 5})
    );
    assert_eq!(chat_count(&app, &user).await, 5);
    let res = app.get(&user, "/api/v1/backup").await;
    let mut again: Vec<Value> = res
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let key = |d: &Value| {
        d["messages"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let mut expected = docs.clone();
    for d in again.iter_mut().chain(expected.iter_mut()) {
        d["chat"]["id"] = json!(null);
    }
    again.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(again, expected, "every chat exactly once, as it was");

    // Someone else's backup of chats that exist is a conflict, named with its line.
    let other = app.register("not-backed-up@example.com").await;
    let res = restore(&app, &other, stream).await;
    let refused: Value = res.json().await.unwrap();
    assert_eq!(
        (
            refused["error"]["code"].as_str(),
            refused["line"].as_u64(),
            refused["restored"].as_u64()
        ),
        (Some("import_id_conflict"), Some(1), Some(0)),
        "{refused}"
    );
    assert_eq!(chat_count(&app, &other).await, 0);
    let res = restore(
        &app,
        &other,
        format!("{}\n", serde_json::to_string(&valid()).unwrap()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = restore(&app, &user, "not json\n".into()).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}
