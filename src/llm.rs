//! Model providers. Until real providers are configured, replies come from the offline `echo`
//! provider, which is labelled as such in every message it writes.

use arbor_actors::model::Role;
use arbor_actors::ports::{Completion, CompletionRequest, LlmError, LlmProvider};
use async_trait::async_trait;

/// The `model` recorded on echo replies: no model was consulted.
pub const ECHO_MODEL: &str = "echo (offline test provider, not a language model)";

/// Replies with the last user message, quoted. Deterministic and offline.
pub struct EchoProvider;

#[async_trait]
impl LlmProvider for EchoProvider {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let last = request
            .turns
            .iter()
            .rev()
            .find(|t| t.role == Role::User)
            .map(|t| t.content.to_string())
            .unwrap_or_default();
        Ok(Completion {
            content: format!("echo: {last}"),
            model: ECHO_MODEL.to_owned(),
        })
    }
}
