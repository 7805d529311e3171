//! The admin page in a real headless Chromium, driven over WebDriver (chromedriver): sign in,
//! see the totals and a chat created by the test in the live actor table, see a chat created
//! after the page loaded appear by itself, and see a non-admin turned away.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use crate::browser::Browser;
use crate::helpers::*;

async fn sign_in(browser: &Browser, email: &str) {
    browser.clear_and_type("#email", email).await;
    browser.clear_and_type("#password", "password123").await;
    browser.click("#signin").await;
}

const TABLE_IDS: &str =
    "return Array.from(document.querySelectorAll('#actors tr')).map(r => r.dataset.chatId)";

#[actix_web::test]
async fn the_admin_page_signs_in_and_shows_live_actors() {
    let app = spawn_with(|s| s.admin.emails = vec!["admin@example.com".into()]).await;
    app.register("admin@example.com").await;
    let u = app.register("someone@example.com").await;
    let first = id(&app.create_chat(&u, "seen in the browser").await);
    app.say(&u, &first, "hello from the test").await;

    let browser = Browser::start().await;
    browser.open(&app.url("/admin")).await;

    // A non-admin is turned away with a message; nothing of the dashboard shows.
    sign_in(&browser, "someone@example.com").await;
    let error = browser
        .wait_for(
            "return document.getElementById('login-error').textContent",
            |v| !v.as_str().unwrap_or("").is_empty(),
        )
        .await;
    assert_eq!(error, "this account is not an admin");
    let hidden = browser
        .script("return document.getElementById('dashboard').hidden")
        .await;
    assert_eq!(hidden, true);

    sign_in(&browser, "admin@example.com").await;
    let ids = browser
        .wait_for(TABLE_IDS, |v| {
            v.as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == first.as_str()))
        })
        .await;
    assert_eq!(ids.as_array().unwrap().len(), 1, "{ids}");
    let row = browser
        .script(&format!(
            "return Array.from(document.querySelector('tr[data-chat-id=\"{first}\"]').cells).map(c => c.textContent)"
        ))
        .await;
    assert_eq!(row[1], u.id.as_str(), "owner column: {row}");
    assert_eq!(row[6], "1", "message count column: {row}");
    // The membership table: this server alone, marked as the one answering.
    let members = browser
        .wait_for(
            "return Array.from(document.querySelectorAll('#members tr')).map(r => Array.from(r.cells).map(c => c.textContent))",
            |v| v.as_array().is_some_and(|rows| !rows.is_empty()),
        )
        .await;
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
    let port = app.base.rsplit(':').next().unwrap();
    assert_eq!(members[0][1], format!("127.0.0.1:{port}"), "{members}");
    assert_eq!(members[0][3], std::process::id().to_string(), "{members}");
    assert_eq!(members[0][6], "not a cluster", "{members}");
    assert_eq!(members[0][7], "this server", "{members}");
    let totals = browser
        .script("return document.getElementById('totals').innerText")
        .await;
    assert!(
        totals.as_str().unwrap().contains("resident actors"),
        "{totals}"
    );

    // The page refreshes itself: a chat created now appears without a reload.
    let second = id(&app.create_chat(&u, "created later").await);
    browser
        .wait_for(TABLE_IDS, |v| {
            v.as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == second.as_str()))
        })
        .await;
    // The charts have drawn history by now (samples every second).
    let samples = browser
        .wait_for(
            "return fetch('/api/v1/admin/stats', {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('arbor-admin-token')}}).then(r => r.json()).then(s => s.history.length)",
            |v| v.as_u64().unwrap_or(0) >= 2,
        )
        .await;
    assert!(samples.as_u64().unwrap() >= 2);

    // Evicting from the page removes the row and the actor.
    browser
        .click(&format!("tr[data-chat-id=\"{first}\"] button"))
        .await;
    browser
        .wait_for(TABLE_IDS, |v| {
            v.as_array()
                .is_some_and(|ids| !ids.iter().any(|i| i == first.as_str()))
        })
        .await;
    assert!(app
        .chats
        .actors()
        .iter()
        .all(|a| a.chat_id.to_string() != first));
    let _ = browser
        .session_call(reqwest::Method::DELETE, "", json!({}))
        .await;
}
