//! Model providers: the OpenAI-protocol HTTP client and the built-in offline `echo` provider,
//! wired into the actors crate's LLM pool from `[llm]` settings.

pub mod echo;
pub mod openai;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arbor_actors::llm::{LlmPool, PoolConfig, ProviderConfig};
use arbor_actors::ports::LlmProvider;

use crate::config::{LlmSettings, ProviderSettings, Secret, Settings};
pub use echo::{EchoProvider, ECHO, ECHO_MODEL};
use openai::OpenAiProvider;

/// Starts the pool: every configured provider plus `echo`. API keys are read from the
/// environment variables the settings name. Must run inside an actix system.
pub fn start_pool(settings: &LlmSettings) -> anyhow::Result<LlmPool> {
    let mut providers: Vec<(ProviderConfig, Arc<dyn LlmProvider>)> = Vec::new();
    for (name, provider) in &settings.providers {
        if name == ECHO {
            bail!("`{ECHO}` is the built-in offline provider; pick another name");
        }
        if provider.base_url.is_empty() || provider.default_model.is_empty() {
            bail!("provider `{name}` needs `base_url` and `default_model`");
        }
        let api_key = match provider.api_key_env.as_str() {
            "" => None,
            var => Some(Secret::new(std::env::var(var).with_context(|| {
                format!("provider `{name}`: environment variable {var} (its API key) is not set")
            })?)),
        };
        let client =
            OpenAiProvider::new(provider, api_key).with_context(|| format!("provider `{name}`"))?;
        providers.push((pool_config(name, provider, settings), Arc::new(client)));
    }
    let echo = ProviderSettings {
        max_concurrent: 64,
        queue_capacity: 4_096,
        max_retries: 0,
        ..ProviderSettings::default()
    };
    let mut echo_config = pool_config(ECHO, &echo, settings);
    echo_config.default_model = ECHO.into();
    echo_config.offline = true;
    providers.push((echo_config, Arc::new(EchoProvider)));
    let threads = match settings.threads {
        0 => Settings::cores(),
        n => n,
    };
    LlmPool::start(PoolConfig {
        providers,
        aliases: settings
            .aliases
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        default: settings.default_model.clone(),
        threads,
    })
    .map_err(anyhow::Error::msg)
}

fn pool_config(name: &str, p: &ProviderSettings, llm: &LlmSettings) -> ProviderConfig {
    ProviderConfig {
        name: name.to_owned(),
        base_url: (!p.base_url.is_empty()).then(|| p.base_url.clone()),
        default_model: p.default_model.clone(),
        models: p.models.clone(),
        max_concurrent: p.max_concurrent.max(1),
        queue_capacity: p.queue_capacity.max(1),
        max_retries: p.max_retries,
        backoff: Duration::from_millis(p.retry_backoff_ms),
        max_backoff: Duration::from_millis(p.retry_backoff_max_ms),
        breaker_threshold: p.breaker_failures.max(1),
        breaker_cooldown: Duration::from_secs(p.breaker_cooldown_secs),
        context_chars: match p.context_chars {
            0 => llm.context_chars,
            n => n,
        },
        offline: false,
    }
}
