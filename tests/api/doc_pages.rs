//! The API's documentation pages at FastAPI's paths (`/docs`, `/redoc`, `/openapi.json`), in a
//! real headless Chromium: each answers 200 at its exact path, renders, lists every operation of
//! the document, and loads nothing from anywhere but the server.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::browser::Browser;
use crate::helpers::*;

/// Every `(path, operationId)` of the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for operation in item.as_object().unwrap().values() {
            if let Some(id) = operation["operationId"].as_str() {
                found.insert((path.clone(), id.to_owned()));
            }
        }
    }
    found
}

/// The strings of a script's array, each through `part`.
fn strings(array: &Value, part: impl Fn(&str) -> &str) -> BTreeSet<String> {
    let array = array.as_array().unwrap();
    array
        .iter()
        .map(|s| part(s.as_str().unwrap()).to_owned())
        .collect()
}

/// The URLs of every resource the page loaded, which must all be the server's own.
const RESOURCES: &str = "return performance.getEntriesByType('resource').map(e => e.name)";

async fn loaded_only_from(browser: &Browser, base: &str) {
    let loaded = browser.script(RESOURCES).await;
    for url in loaded.as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(base), "loaded {url} from elsewhere");
    }
}

#[actix_web::test]
async fn docs_redoc_and_the_document_are_served_at_fastapis_paths_and_render_offline() {
    let app = spawn_app().await;
    let base = app.url("");
    // Exact paths, no redirect (the test client follows none).
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/docs", "/docs/", "/redoc", "/openapi.json"] {
        let res = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    let doc = app.openapi().await;
    let operations = operations(&doc);
    let paths: BTreeSet<String> = operations.iter().map(|(p, _)| p.clone()).collect();
    let ids: BTreeSet<String> = operations.iter().map(|(_, id)| id.clone()).collect();
    assert!(paths.contains("/rooms/"), "the seed routes are documented");

    let browser = Browser::start().await;

    // Swagger UI: one block per operation and tag, whose paths are the document's.
    browser.open(&app.url("/docs")).await;
    let shown = browser
        .wait_for(
            "return Array.from(document.querySelectorAll('.opblock-summary-path')).map(e => e.getAttribute('data-path'))",
            |v| v.as_array().is_some_and(|a| a.len() >= operations.len()),
        )
        .await;
    assert_eq!(strings(&shown, |p| p), paths);
    let title = browser
        .script("return document.querySelector('.info .title').textContent")
        .await;
    assert!(title.as_str().unwrap().contains("Arbor"), "{title}");
    loaded_only_from(&browser, &base).await;

    // ReDoc: a section per operation, named by its operationId.
    browser.open(&app.url("/redoc")).await;
    let sections = browser
        .wait_for(
            "return Array.from(document.querySelectorAll('[data-section-id]')).map(e => e.getAttribute('data-section-id')).filter(s => s.includes('/operation/'))",
            |v| v.as_array().is_some_and(|a| a.len() >= operations.len()),
        )
        .await;
    let sections = strings(&sections, |s| s.rsplit("/operation/").next().unwrap());
    assert_eq!(sections, ids);
    loaded_only_from(&browser, &base).await;

    // The document itself, as the browser shows it.
    browser.open(&app.url("/openapi.json")).await;
    let shown = browser
        .wait_for("return document.body.innerText", |v| {
            v.as_str().is_some_and(|t| t.contains("\"openapi\""))
        })
        .await;
    let shown: Value = serde_json::from_str(shown.as_str().unwrap()).unwrap();
    assert_eq!(shown, doc);
    let _ = browser
        .session_call(reqwest::Method::DELETE, "", serde_json::json!({}))
        .await;
}
