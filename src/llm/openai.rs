//! A client for the OpenAI Chat Completions protocol, which OpenAI, Groq, Gemini's OpenAI
//! endpoint, Ollama, vLLM, LM Studio and llama.cpp's server all speak. Replies are requested with
//! `stream: true` and read as server-sent events; a server that answers with plain JSON instead is
//! understood too.

use std::time::Duration;

use arbor_actors::model::Role;
use arbor_actors::ports::{Completion, CompletionRequest, LlmError, LlmProvider, Usage};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Serialize};

use super::sse::SseParser;
use crate::config::{ProviderSettings, Secret};

/// Longest error body kept from a provider (for the log and the client's error message).
const ERROR_BODY_LIMIT: usize = 2_048;

pub struct OpenAiProvider {
    client: reqwest::Client,
    url: String,
    api_key: Option<Secret>,
    timeout: Duration,
    max_tokens: Option<u32>,
    stream_usage: bool,
}

impl OpenAiProvider {
    pub fn new(settings: &ProviderSettings, api_key: Option<Secret>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(settings.connect_timeout_secs.max(1)))
            .user_agent(concat!("arbor/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            url: format!(
                "{}/chat/completions",
                settings.base_url.trim_end_matches('/')
            ),
            api_key,
            timeout: Duration::from_secs(settings.timeout_secs.max(1)),
            max_tokens: (settings.max_tokens > 0).then_some(settings.max_tokens),
            stream_usage: settings.stream_usage,
        })
    }

    async fn read<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, reqwest::Error>>,
    ) -> Result<T, LlmError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(LlmError::Timeout),
            Ok(Err(e)) if e.is_timeout() => Err(LlmError::Timeout),
            Ok(Err(e)) => Err(LlmError::upstream(None, connection_error(&e))),
            Ok(Ok(value)) => Ok(value),
        }
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A streamed chunk or a whole (non-streamed) response: the fields Arbor reads of either.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ChatResponse {
    model: Option<String>,
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Choice {
    delta: Option<Content>,
    message: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Content {
    content: Option<String>,
}

/// What a reply has accumulated so far.
struct Reply {
    content: String,
    model: Option<String>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Reply {
    fn absorb(
        &mut self,
        response: ChatResponse,
        on_delta: &mut (dyn for<'d> FnMut(&'d str) + Send),
    ) -> Result<(), LlmError> {
        if let Some(error) = response.error {
            return Err(LlmError::upstream(None, error_message(&error)));
        }
        if self.model.is_none() {
            self.model = response.model.filter(|m| !m.is_empty());
        }
        if response.usage.is_some() {
            self.usage = response.usage;
        }
        for choice in response.choices.into_iter().take(1) {
            let piece = choice.delta.or(choice.message).and_then(|c| c.content);
            if let Some(piece) = piece.filter(|p| !p.is_empty()) {
                on_delta(&piece);
                self.content.push_str(&piece);
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl LlmProvider for OpenAiProvider {
    async fn stream(
        &self,
        request: &CompletionRequest,
        on_delta: &mut (dyn for<'d> FnMut(&'d str) + Send),
    ) -> Result<Completion, LlmError> {
        let body = ChatRequest {
            model: &request.model,
            messages: request
                .turns
                .iter()
                .map(|t| ChatMessage {
                    role: match t.role {
                        Role::System => "system",
                        Role::User => "user",
                        Role::Assistant => "assistant",
                    },
                    content: &t.content,
                })
                .collect(),
            stream: true,
            stream_options: self.stream_usage.then_some(StreamOptions {
                include_usage: true,
            }),
            max_tokens: self.max_tokens,
        };
        let mut call = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key.expose());
        }
        let mut response = self.read(call.send()).await?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let body = self
                .read(error_body(&mut response))
                .await
                .unwrap_or_default();
            return Err(LlmError::Upstream {
                status: Some(status.as_u16()),
                message: error_text(&body),
                retry_after,
            });
        }
        let streamed = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut reply = Reply {
            content: String::new(),
            model: None,
            finish_reason: None,
            usage: None,
        };
        if streamed {
            let mut parser = SseParser::default();
            let mut done = false;
            while !done {
                let Some(chunk) = self.read(response.chunk()).await? else {
                    break;
                };
                for data in parser.feed(&chunk) {
                    if data.trim() == "[DONE]" {
                        done = true;
                        break;
                    }
                    let parsed = serde_json::from_str::<ChatResponse>(&data).map_err(|e| {
                        LlmError::upstream(None, format!("unreadable stream chunk: {e}"))
                    })?;
                    reply.absorb(parsed, on_delta)?;
                }
            }
            if !done && reply.finish_reason.is_none() {
                return Err(LlmError::upstream(
                    None,
                    "the connection closed in the middle of the reply",
                ));
            }
        } else {
            let bytes = self.read(response.bytes()).await?;
            let parsed = serde_json::from_slice::<ChatResponse>(&bytes)
                .map_err(|e| LlmError::upstream(None, format!("unreadable response: {e}")))?;
            reply.absorb(parsed, on_delta)?;
        }
        Ok(Completion {
            content: reply.content,
            model: reply.model.unwrap_or_else(|| request.model.clone()),
            finish_reason: reply.finish_reason,
            usage: reply.usage,
        })
    }
}

/// Up to [`ERROR_BODY_LIMIT`] bytes of an error response.
async fn error_body(response: &mut reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await? {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    Ok(body)
}

/// The provider's own error message (`{"error": {"message": ...}}`, also inside a list as
/// Gemini sends it), or the body's text.
fn error_text(body: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = json.as_ref().and_then(|v| match v {
        serde_json::Value::Array(items) => items.first().and_then(|i| i.get("error")),
        other => other.get("error"),
    });
    match error {
        Some(error) => error_message(error),
        None => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

fn error_message(error: &serde_json::Value) -> String {
    error
        .get("message")
        .and_then(|m| m.as_str())
        .map(str::to_owned)
        .or_else(|| error.as_str().map(str::to_owned))
        .unwrap_or_else(|| error.to_string())
}

/// `Retry-After` in seconds (the HTTP-date form is not worth a date parser here: the backoff
/// covers it).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let seconds: f64 = value.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn connection_error(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_reads_openai_and_gemini_shapes() {
        assert_eq!(
            error_text(br#"{"error":{"message":"Rate limit reached","type":"tokens"}}"#),
            "Rate limit reached"
        );
        assert_eq!(
            error_text(br#"[{"error":{"code":400,"message":"API key not valid"}}]"#),
            "API key not valid"
        );
        assert_eq!(error_text(b"  Bad Gateway \n"), "Bad Gateway");
    }

    #[test]
    fn retry_after_accepts_seconds_only() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            RETRY_AFTER,
            "0.5".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(retry_after(&h), None);
    }
}
