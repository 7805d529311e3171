//! The offline `echo` provider: replies with the last user message, quoted, streamed word by
//! word. Deterministic and instant; labelled as not a language model in every message it writes.

use arbor_actors::model::Role;
use arbor_actors::ports::{Completion, CompletionRequest, LlmError, LlmProvider, Usage};
use async_trait::async_trait;

/// The provider name and the `model` recorded on echo replies: no model was consulted.
pub const ECHO: &str = "echo";
pub const ECHO_MODEL: &str = "echo (offline test provider, not a language model)";

pub struct EchoProvider;

#[async_trait]
impl LlmProvider for EchoProvider {
    async fn stream(
        &self,
        request: &CompletionRequest,
        on_delta: &mut (dyn for<'d> FnMut(&'d str) + Send),
    ) -> Result<Completion, LlmError> {
        let last = request
            .turns
            .iter()
            .rev()
            .find(|t| t.role == Role::User)
            .map(|t| t.content.to_string())
            .unwrap_or_default();
        let content = format!("echo: {last}");
        let mut words = 0u64;
        for piece in content.split_inclusive(' ') {
            on_delta(piece);
            words += 1;
        }
        let prompt: u64 = request
            .turns
            .iter()
            .map(|t| t.content.split_whitespace().count() as u64)
            .sum();
        Ok(Completion {
            content,
            model: ECHO_MODEL.to_owned(),
            finish_reason: Some("stop".into()),
            usage: Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: words,
                total_tokens: prompt + words,
            }),
        })
    }
}
