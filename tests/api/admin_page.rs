//! The admin page in a real headless Chromium, driven over WebDriver (chromedriver): sign in,
//! see the totals and a chat created by the test in the live actor table, see a chat created
//! after the page loaded appear by itself, and see a non-admin turned away.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::binary::free_port;
use crate::helpers::*;

/// A chromedriver child process (stopped by its PID on drop) and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    /// The driver's and the browser's temporary files (`TMPDIR`): a killed driver leaves its
    /// profile directory behind, and this removes it with everything else once both are gone.
    _temp: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let temp = tempfile::tempdir().unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", temp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is needed (Debian packages chromium and chromium-driver; .ci/run installs them)");
        let base = format!("http://127.0.0.1:{port}");
        let client = crate::helpers::test_client();
        let started = Instant::now();
        while client.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            client,
            _temp: temp,
        };
        let created = browser
            .call(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": "/usr/bin/chromium",
                        "args": ["--headless", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1280,900"]
                    }
                }}}),
            )
            .await;
        browser.session = created["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    /// One WebDriver command: its `value`, or its status and whole body when it failed.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, (reqwest::StatusCode, Value)> {
        let res = self
            .client
            .request(method, format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let mut body: Value = res.json().await.unwrap();
        if status.is_success() {
            Ok(body["value"].take())
        } else {
            Err((status, body))
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        match self.try_call(method, path, body).await {
            Ok(value) => value,
            Err((status, body)) => panic!("WebDriver {path}: {status} {body}"),
        }
    }

    async fn session_call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    async fn open(&self, url: &str) {
        self.session_call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .session_call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    async fn clear_and_type(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            json!({}),
        )
        .await;
        self.session_call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Clicks the element `css` selects. The page re-renders its table every second, so an
    /// element found just before a refresh can be stale when clicked: it is found again then.
    async fn click(&self, css: &str) {
        for _ in 0..5 {
            let element = self.find(css).await;
            let path = format!("/session/{}/element/{element}/click", self.session);
            match self.try_call(reqwest::Method::POST, &path, json!({})).await {
                Ok(_) => return,
                Err((status, body)) => assert_eq!(
                    body["value"]["error"], "stale element reference",
                    "WebDriver click on {css}: {status} {body}"
                ),
            }
        }
        panic!("{css} went stale five times in a row");
    }

    async fn script(&self, script: &str) -> Value {
        self.session_call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Polls `script` until `done` accepts its value (at most 15 s).
    async fn wait_for(&self, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let value = self.script(script).await;
            if done(&value) {
                return value;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "page never satisfied the condition; last value: {value}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sign_in(&self, email: &str) {
        self.clear_and_type("#email", email).await;
        self.clear_and_type("#password", "password123").await;
        self.click("#signin").await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser ends with its driver; their temporary files go with `_temp` after this.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
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
    browser.sign_in("someone@example.com").await;
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

    browser.sign_in("admin@example.com").await;
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
