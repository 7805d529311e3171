#![allow(clippy::unwrap_used)]

//! The API against its own OpenAPI document, checked by Schemathesis (a property-based API
//! tester, PyPI `schemathesis`; scripts/test.sh installs it and names it in `SCHEMATHESIS`).
//! It generates requests from `/openapi.json`, valid and invalid, sends them to the running
//! server and checks every answer: no 5xx, every status and body as documented, invalid input
//! refused, valid input accepted, 405 with `Allow` for undeclared methods, deleted resources
//! gone, no access to another account's resources. The exceptions, each a deliberate
//! behaviour, are in `tests/contract/schemathesis.toml`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::spawn_with;

/// Test cases per operation and phase; with a fixed seed, a run generates the same requests.
const MAX_EXAMPLES: &str = "15";

#[actix_web::test]
async fn the_api_keeps_its_openapi_contract() {
    let email = "contract@example.com";
    let app = spawn_with(|s| s.admin.emails = vec![email.to_owned()]).await;
    let admin = app.register(email).await;
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("schemathesis.log");
    let out = std::fs::File::create(&log).unwrap();
    let bin = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "st".to_owned());
    // Not `output()`: the server answers on this thread, so the test waits without blocking it.
    let mut child = Command::new(&bin)
        .arg("--config-file")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/contract/schemathesis.toml"
        ))
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args([
            "--header",
            &format!("Authorization: Bearer {}", admin.token),
        ])
        .args([
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "1",
            "--workers",
            "1",
        ])
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("Schemathesis ({bin}) is needed: scripts/test.sh installs it ({e})")
        });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let report = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "Schemathesis found failures:\n{report}");
    // A run that tested nothing would pass too: every operation of the document, Arbor's own
    // and the seed dialects', must have been tested.
    let doc = app.openapi().await;
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert!(operations > 31, "the seed routes are in the document");
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "Schemathesis did not test every operation ({operations}):\n{report}"
    );
}
