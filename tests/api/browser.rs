//! A headless Chromium driven over WebDriver (chromedriver), for the tests of the server's
//! pages (the admin page, the API docs).
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::binary::free_port;

/// A chromedriver child process (stopped by its PID on drop) and one browser session.
pub struct Browser {
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
    pub async fn start() -> Self {
        let port = free_port();
        let temp = tempfile::tempdir().unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", temp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is needed (Debian packages chromium and chromium-driver; scripts/test.sh installs them)");
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
                                 "--disable-dev-shm-usage", "--window-size=1280,900",
                                 "--disable-background-networking", "--disable-component-update",
                                 "--disable-sync", "--no-first-run"]
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

    pub async fn session_call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    pub async fn open(&self, url: &str) {
        self.session_call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    pub async fn find(&self, css: &str) -> String {
        let found = self
            .session_call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    pub async fn clear_and_type(&self, css: &str, text: &str) {
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
    pub async fn click(&self, css: &str) {
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

    pub async fn script(&self, script: &str) -> Value {
        self.session_call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Polls `script` until `done` accepts its value (at most 15 s).
    pub async fn wait_for(&self, script: &str, done: impl Fn(&Value) -> bool) -> Value {
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
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser ends with its driver; their temporary files go with `_temp` after this.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
