//! Arbor's added time to first token: the same streamed completion measured straight from the
//! provider and through Arbor, one request at a time, both over loopback HTTP. The difference
//! is what Arbor adds (auth, the chat actor, storing the question, the pool, relaying).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;

use crate::stats::Latencies;

/// Sends `request` and returns the time until the response body first contains `marker`.
async fn time_to(request: reqwest::RequestBuilder, marker: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = request.send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!("{status}: {}", response.text().await.unwrap_or_default());
    }
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    let mut first = None;
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk?);
        if first.is_none() && contains(&seen, marker.as_bytes()) {
            first = Some(started.elapsed());
        }
    }
    first.with_context(|| format!("no {marker:?} in {}", String::from_utf8_lossy(&seen)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn ttft(base: &str, state: &Path, stub: &str, requests: usize) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(state)?;
    let mut lines = text.lines();
    let token = lines.next().context("no token")?.to_owned();
    let chats: Vec<&str> = lines.collect();
    anyhow::ensure!(!chats.is_empty(), "no chats in {}", state.display());
    tokio::runtime::Runtime::new()?.block_on(async {
        let client = reqwest::Client::new();
        let (mut direct, mut arbor) = (Latencies::default(), Latencies::default());
        for i in 0..requests {
            let provider = client
                .post(format!("{stub}/v1/chat/completions"))
                .json(&json!({"model": "stub", "stream": true,
                              "messages": [{"role": "user", "content": format!("question {i}")}]}));
            direct.push(time_to(provider, "\"content\"").await?);
            let chat = chats[i % chats.len()];
            let through = client
                .post(format!("{base}/api/v1/chats/{chat}/messages"))
                .bearer_auth(&token)
                .json(&json!({"content": format!("question {i}"), "reply": true, "stream": true}));
            arbor.push(time_to(through, "event: delta").await?);
        }
        println!(
            "BENCH ttft samples={requests} direct_p50_ms={:.3} direct_p99_ms={:.3} \
             arbor_p50_ms={:.3} arbor_p99_ms={:.3} added_p50_ms={:.3}",
            direct.quantile_ms(0.5),
            direct.quantile_ms(0.99),
            arbor.quantile_ms(0.5),
            arbor.quantile_ms(0.99),
            arbor.quantile_ms(0.5) - direct.quantile_ms(0.5),
        );
        Ok(())
    })
}
