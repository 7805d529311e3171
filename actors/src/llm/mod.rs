//! The LLM actor pool: per provider, a fixed number of worker actors pulling reply jobs from a
//! bounded queue, with retries and a circuit breaker.
//!
//! Admission happens before anything is stored: [`ModelRef::admit`] reserves a queue slot and
//! fails fast with `Overloaded` when the queue is full or `Unavailable` while the provider's
//! breaker is open. A worker then streams the reply, pushing each delta into the job's
//! [`Generation`], and answers with a [`JobOutcome`]. Chat actors never wait on a provider.
//!
//! Retries: an attempt that fails with a retryable error (429, 408, 5xx, connection error,
//! timeout) *before its first token* is retried up to `max_retries` times, after the provider's
//! `Retry-After` or an exponential backoff with jitter. Once a token was streamed to clients the
//! reply cannot be restarted, so the error is final.
//!
//! Circuit breaker: `breaker_threshold` consecutive outage failures (5xx, connection errors,
//! timeouts) open it for `breaker_cooldown`; then one probe request is let through, which closes
//! it on success and reopens it on failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus::{Histogram, IntCounter, IntCounterVec};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::generation::Generation;
use crate::ports::{Completion, CompletionRequest, LlmError, LlmProvider};

/// One provider's pool settings.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    /// Shown by the model listing; never holds credentials.
    pub base_url: Option<String>,
    pub default_model: String,
    /// If not empty, the only models `provider/model` may name.
    pub models: Vec<String>,
    /// Worker actors: requests in flight at most.
    pub max_concurrent: usize,
    /// Replies waiting for a worker before new ones get `Overloaded`.
    pub queue_capacity: usize,
    pub max_retries: u32,
    /// First retry delay; doubles per attempt, up to `max_backoff`.
    pub backoff: Duration,
    /// Longest wait before a retry; a `Retry-After` beyond it fails the reply instead.
    pub max_backoff: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// Context budget: characters of conversation sent with each request.
    pub context_chars: usize,
    /// The built-in offline provider (not a language model).
    pub offline: bool,
}

/// How a reply job ended.
#[derive(Debug)]
pub enum JobOutcome {
    Completed(Completion),
    /// Stopped by a client; `partial` is what was streamed before.
    Cancelled {
        partial: String,
        model: String,
    },
    Failed(LlmError),
}

/// A reply for a worker to produce.
pub struct LlmJob {
    request: CompletionRequest,
    generation: Arc<Generation>,
    done: oneshot::Sender<JobOutcome>,
    queued: Instant,
    /// The user's place among their running replies (`ports::ReplyGate`), freed with the job.
    _pass: Option<crate::ports::ReplyPass>,
}

/// One provider's instruments (every series carries a `provider` label).
pub struct ProviderStats {
    /// Upstream requests in flight right now.
    pub in_flight: AtomicUsize,
    /// Upstream attempts (a retried reply counts each attempt).
    pub requests: IntCounter,
    pub retries: IntCounter,
    /// Replies by outcome: `completed`, `cancelled`, `failed`.
    pub replies: IntCounterVec,
    /// Failed attempts by kind (`timeout`, `connect`, `http_429`, `http_5xx`, ...).
    pub errors: IntCounterVec,
    /// Replies refused at admission: `overloaded` (queue full) or `unavailable` (circuit open).
    pub rejected: IntCounterVec,
    /// Tokens the provider reported, by `kind` (`prompt`, `completion`).
    pub tokens: IntCounterVec,
    /// Time a reply waited for a worker.
    pub queue_seconds: Histogram,
    /// From a worker taking a reply to its last token (retries included).
    pub duration_seconds: Histogram,
    /// From a worker taking a reply to its first streamed token.
    pub first_token_seconds: Histogram,
}

impl ProviderStats {
    pub fn new(provider: &str) -> Self {
        use crate::metrics::*;
        let label = [("provider", provider)];
        let with_values = |vec: IntCounterVec, values: &[&str]| {
            for v in values {
                vec.with_label_values(&[v]);
            }
            vec
        };
        Self {
            in_flight: AtomicUsize::new(0),
            requests: counter(
                "arbor_llm_requests_total",
                "Upstream attempts sent to a model provider (retries count again).",
                &label,
            ),
            retries: counter(
                "arbor_llm_retries_total",
                "Attempts retried after a retryable failure.",
                &label,
            ),
            replies: with_values(
                counter_vec(
                    "arbor_llm_replies_total",
                    "Replies a provider worker finished, by outcome.",
                    &label,
                    &["outcome"],
                ),
                &["completed", "cancelled", "failed"],
            ),
            errors: counter_vec(
                "arbor_llm_errors_total",
                "Failed upstream attempts, by kind.",
                &label,
                &["kind"],
            ),
            rejected: with_values(
                counter_vec(
                    "arbor_llm_rejected_total",
                    "Replies refused before queueing: queue full (overloaded) or circuit open (unavailable).",
                    &label,
                    &["reason"],
                ),
                &["overloaded", "unavailable"],
            ),
            tokens: with_values(
                counter_vec(
                    "arbor_llm_tokens_total",
                    "Tokens reported by the provider, by kind.",
                    &label,
                    &["kind"],
                ),
                &["prompt", "completion"],
            ),
            queue_seconds: histogram(
                "arbor_llm_queue_wait_seconds",
                "Time a reply waited for a provider worker.",
                &label,
                PROVIDER_BUCKETS,
            ),
            duration_seconds: histogram(
                "arbor_llm_request_duration_seconds",
                "From a worker taking a reply to the end of its stream, retries included.",
                &label,
                PROVIDER_BUCKETS,
            ),
            first_token_seconds: histogram(
                "arbor_llm_time_to_first_token_seconds",
                "From a worker taking a reply to its first streamed token.",
                &label,
                PROVIDER_BUCKETS,
            ),
        }
    }
}

impl crate::metrics::Instruments for ProviderStats {
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        crate::collectors![
            self.requests,
            self.retries,
            self.replies,
            self.errors,
            self.rejected,
            self.tokens,
            self.queue_seconds,
            self.duration_seconds,
            self.first_token_seconds,
        ]
    }
}

#[derive(Debug, Clone, Copy)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A configured provider: its client, queue, breaker and counters.
pub struct Provider {
    pub config: ProviderConfig,
    client: Arc<dyn LlmProvider>,
    jobs: mpsc::Sender<LlmJob>,
    breaker: Mutex<Breaker>,
    pub stats: ProviderStats,
}

impl Provider {
    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether new replies are refused because the breaker is open and cooling down.
    fn open(&self) -> bool {
        matches!(*self.breaker(), Breaker::Open { until } if Instant::now() < until)
    }

    /// Lets an attempt through, or refuses it while the breaker is open (one probe at a time
    /// once the cooldown has passed).
    fn allow(&self) -> Result<(), LlmError> {
        let mut breaker = self.breaker();
        match *breaker {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until } if Instant::now() >= until => {
                *breaker = Breaker::HalfOpen { probing: true };
                Ok(())
            }
            Breaker::HalfOpen { probing: false } => {
                *breaker = Breaker::HalfOpen { probing: true };
                Ok(())
            }
            Breaker::Open { .. } | Breaker::HalfOpen { probing: true } => {
                Err(LlmError::Unavailable)
            }
        }
    }

    fn record(&self, result: Result<(), &LlmError>) {
        let mut breaker = self.breaker();
        *breaker = match (result, *breaker) {
            (Err(e), state) if e.is_outage() => match state {
                Breaker::Closed { failures } if failures + 1 < self.config.breaker_threshold => {
                    Breaker::Closed {
                        failures: failures + 1,
                    }
                }
                _ => {
                    tracing::warn!(provider = %self.config.name, "circuit breaker opened");
                    Breaker::Open {
                        until: Instant::now() + self.config.breaker_cooldown,
                    }
                }
            },
            // Success, or an answer that shows the provider is up (a 4xx, a 429).
            _ => Breaker::Closed { failures: 0 },
        };
    }

    /// An attempt ended without a verdict (cancelled): let the next one probe.
    fn abandon(&self) {
        let mut breaker = self.breaker();
        if let Breaker::HalfOpen { probing: true } = *breaker {
            *breaker = Breaker::HalfOpen { probing: false };
        }
    }

    /// `closed`, `open` or `half_open`.
    pub fn circuit(&self) -> &'static str {
        match *self.breaker() {
            Breaker::Closed { .. } => "closed",
            Breaker::Open { until } if Instant::now() < until => "open",
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => "half_open",
        }
    }

    /// Replies waiting for a worker.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }
}

/// A resolved model: a provider and its model name.
#[derive(Clone)]
pub struct ModelRef {
    pub provider: Arc<Provider>,
    pub model: String,
}

impl ModelRef {
    /// `provider/model`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.provider.config.name, self.model)
    }

    /// Reserves a place in the provider's queue.
    pub fn admit(self) -> Result<Admission, LlmError> {
        let provider = &self.provider;
        if provider.open() {
            provider
                .stats
                .rejected
                .with_label_values(&["unavailable"])
                .inc();
            return Err(LlmError::Unavailable);
        }
        match provider.jobs.clone().try_reserve_owned() {
            Ok(permit) => Ok(Admission {
                model: self,
                permit,
                pass: None,
            }),
            Err(_) => {
                provider
                    .stats
                    .rejected
                    .with_label_values(&["overloaded"])
                    .inc();
                Err(LlmError::Overloaded)
            }
        }
    }
}

/// A reserved queue slot; dropping it frees the slot.
pub struct Admission {
    pub model: ModelRef,
    permit: mpsc::OwnedPermit<LlmJob>,
    /// Set by the registry when a `ReplyGate` admitted the user.
    pub pass: Option<crate::ports::ReplyPass>,
}

impl Admission {
    pub fn context_chars(&self) -> usize {
        self.model.provider.config.context_chars
    }

    /// Queues the job; the receiver gets its outcome.
    pub fn submit(
        self,
        request: CompletionRequest,
        generation: Arc<Generation>,
    ) -> oneshot::Receiver<JobOutcome> {
        let (done, outcome) = oneshot::channel();
        self.permit.send(LlmJob {
            request,
            generation,
            done,
            queued: Instant::now(),
            _pass: self.pass,
        });
        outcome
    }
}

/// What `GET /models` shows.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelsView {
    /// What a reply uses when the request names no model (`provider/model`).
    pub default: String,
    pub providers: Vec<ProviderView>,
    pub aliases: Vec<AliasView>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderView {
    pub name: String,
    pub base_url: Option<String>,
    pub default_model: String,
    /// The models `provider/model` may name; empty means any.
    pub models: Vec<String>,
    /// True for the built-in offline `echo` provider, which is not a language model.
    pub offline: bool,
    pub max_concurrent: usize,
    pub queue_capacity: usize,
    pub in_flight: usize,
    pub queued: usize,
    /// `closed`, `open` or `half_open`.
    pub circuit: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AliasView {
    pub alias: String,
    /// `provider/model`.
    pub target: String,
}

/// Every provider's pool, the model aliases and the default model.
pub struct LlmPool {
    providers: BTreeMap<String, Arc<Provider>>,
    /// alias -> (provider, model)
    aliases: BTreeMap<String, (String, String)>,
    default: (String, String),
    arbiters: Vec<ArbiterHandle>,
}

impl Drop for LlmPool {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// Everything [`LlmPool::start`] needs.
pub struct PoolConfig {
    pub providers: Vec<(ProviderConfig, Arc<dyn LlmProvider>)>,
    /// alias -> a name `resolve` understands (`provider/model`, a provider, ...).
    pub aliases: Vec<(String, String)>,
    /// The model for requests that name none; empty: the first provider's default (the first
    /// non-offline one if any).
    pub default: String,
    /// Threads the worker actors run on.
    pub threads: usize,
}

impl LlmPool {
    /// Starts every provider's workers. Must run inside an actix system. Fails on an alias or
    /// default that names nothing.
    pub fn start(config: PoolConfig) -> Result<Self, String> {
        let arbiters: Vec<ArbiterHandle> = (0..config.threads.max(1))
            .map(|_| Arbiter::new().handle())
            .collect();
        let mut providers = BTreeMap::new();
        let mut spawned = 0usize;
        for (settings, client) in config.providers {
            if settings.name.is_empty() || settings.name.contains('/') {
                return Err(format!("invalid provider name {:?}", settings.name));
            }
            let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
            let provider = Arc::new(Provider {
                client,
                jobs: tx,
                breaker: Mutex::new(Breaker::Closed { failures: 0 }),
                stats: ProviderStats::new(&settings.name),
                config: settings,
            });
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..provider.config.max_concurrent.max(1) {
                let worker = LlmWorker {
                    provider: provider.clone(),
                    jobs: rx.clone(),
                };
                LlmWorker::start_in_arbiter(&arbiters[spawned % arbiters.len()], |_| worker);
                spawned += 1;
            }
            if providers
                .insert(provider.config.name.clone(), provider)
                .is_some()
            {
                return Err("provider names must be unique".into());
            }
        }
        let mut pool = Self {
            providers,
            aliases: BTreeMap::new(),
            default: (String::new(), String::new()),
            arbiters,
        };
        for (alias, target) in config.aliases {
            let resolved = pool
                .resolve(Some(&target))
                .map_err(|_| format!("alias {alias:?} names an unknown model {target:?}"))?;
            pool.aliases.insert(
                alias,
                (resolved.provider.config.name.clone(), resolved.model),
            );
        }
        pool.default = if config.default.is_empty() {
            let first = pool
                .providers
                .values()
                .find(|p| !p.config.offline)
                .or_else(|| pool.providers.values().next())
                .ok_or("no model provider is configured")?;
            (
                first.config.name.clone(),
                first.config.default_model.clone(),
            )
        } else {
            let resolved = pool
                .resolve(Some(&config.default))
                .map_err(|_| format!("the default model {:?} names no provider", config.default))?;
            (resolved.provider.config.name.clone(), resolved.model)
        };
        Ok(pool)
    }

    /// Resolves what a request asked for: nothing (the default), an alias, `provider/model`, a
    /// provider (its default model), or a model exactly one provider lists.
    pub fn resolve(&self, requested: Option<&str>) -> Result<ModelRef, LlmError> {
        let name = requested.map(str::trim).unwrap_or_default();
        let unknown = || LlmError::UnknownModel(name.to_owned());
        let pick = |provider: &str, model: &str| {
            let provider = self.providers.get(provider).ok_or_else(unknown)?;
            let listed = provider.config.models.is_empty()
                || model == provider.config.default_model
                || provider.config.models.iter().any(|m| m == model);
            if model.is_empty() || !listed {
                return Err(unknown());
            }
            Ok(ModelRef {
                provider: provider.clone(),
                model: model.to_owned(),
            })
        };
        if name.is_empty() {
            return pick(&self.default.0, &self.default.1);
        }
        if let Some((provider, model)) = self.aliases.get(name) {
            return pick(provider, model);
        }
        if let Some((provider, model)) = name.split_once('/') {
            if self.providers.contains_key(provider) {
                return pick(provider, model);
            }
        }
        if let Some(provider) = self.providers.get(name) {
            return pick(name, &provider.config.default_model);
        }
        let mut listing = self.providers.values().filter(|p| {
            p.config.default_model == name || p.config.models.iter().any(|m| m == name)
        });
        match (listing.next(), listing.next()) {
            (Some(provider), None) => pick(&provider.config.name, name),
            _ => Err(unknown()),
        }
    }

    /// Every configured provider (for the operator surface).
    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.values()
    }

    pub fn catalog(&self) -> ModelsView {
        ModelsView {
            default: format!("{}/{}", self.default.0, self.default.1),
            providers: self
                .providers
                .values()
                .map(|p| ProviderView {
                    name: p.config.name.clone(),
                    base_url: p.config.base_url.clone(),
                    default_model: p.config.default_model.clone(),
                    models: p.config.models.clone(),
                    offline: p.config.offline,
                    max_concurrent: p.config.max_concurrent.max(1),
                    queue_capacity: p.config.queue_capacity.max(1),
                    in_flight: p.stats.in_flight.load(Ordering::Relaxed),
                    queued: p.queued(),
                    circuit: p.circuit(),
                })
                .collect(),
            aliases: self
                .aliases
                .iter()
                .map(|(alias, (provider, model))| AliasView {
                    alias: alias.clone(),
                    target: format!("{provider}/{model}"),
                })
                .collect(),
        }
    }
}

/// One worker: takes the next job from its provider's queue, runs it, repeats. A job runs on its
/// own task, so a panicking provider fails that job (its outcome channel closes) and nothing else.
struct LlmWorker {
    provider: Arc<Provider>,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<LlmJob>>>,
}

impl Actor for LlmWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let provider = self.provider.clone();
        let jobs = self.jobs.clone();
        let work = async move {
            loop {
                let next = jobs.lock().await.recv().await;
                let Some(job) = next else { break };
                let _ = tokio::spawn(run(provider.clone(), job)).await;
            }
        };
        ctx.spawn(work.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}

async fn run(provider: Arc<Provider>, job: LlmJob) {
    // `_pass` lives to the end of the call: the user's place is freed with it.
    let LlmJob {
        request,
        generation,
        done,
        queued,
        _pass,
    } = job;
    let stats = &provider.stats;
    let started = Instant::now();
    stats
        .queue_seconds
        .observe((started - queued).as_secs_f64());
    let outcome = attempts(&provider, &request, &generation, started).await;
    stats
        .duration_seconds
        .observe(started.elapsed().as_secs_f64());
    let label = match &outcome {
        JobOutcome::Completed(completion) => {
            if let Some(usage) = completion.usage {
                let tokens = &stats.tokens;
                tokens
                    .with_label_values(&["prompt"])
                    .inc_by(usage.prompt_tokens);
                tokens
                    .with_label_values(&["completion"])
                    .inc_by(usage.completion_tokens);
            }
            "completed"
        }
        JobOutcome::Cancelled { .. } => "cancelled",
        JobOutcome::Failed(e) => {
            tracing::warn!(provider = %provider.config.name, error = %e, "reply failed");
            "failed"
        }
    };
    stats.replies.with_label_values(&[label]).inc();
    let _ = done.send(outcome);
}

async fn attempts(
    provider: &Provider,
    request: &CompletionRequest,
    generation: &Generation,
    started: Instant,
) -> JobOutcome {
    let cancel = generation.cancel_token();
    let cancelled = |partial: String| JobOutcome::Cancelled {
        partial,
        model: request.model.clone(),
    };
    let mut partial = String::new();
    let mut attempt = 0u32;
    loop {
        if cancel.is_cancelled() {
            return cancelled(partial);
        }
        if let Err(e) = provider.allow() {
            return JobOutcome::Failed(e);
        }
        provider.stats.requests.inc();
        provider.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut streamed = false;
        let result = {
            let mut on_delta = |delta: &str| {
                if !delta.is_empty() {
                    if !streamed && partial.is_empty() {
                        provider
                            .stats
                            .first_token_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                    streamed = true;
                    partial.push_str(delta);
                    generation.push_delta(delta);
                }
            };
            tokio::select! {
                r = provider.client.stream(request, &mut on_delta) => Some(r),
                () = cancel.cancelled() => None,
            }
        };
        provider.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let error = match result {
            None => {
                provider.abandon();
                return cancelled(partial);
            }
            Some(Ok(completion)) => {
                provider.record(Ok(()));
                return JobOutcome::Completed(completion);
            }
            Some(Err(e)) => e,
        };
        provider.record(Err(&error));
        provider
            .stats
            .errors
            .with_label_values(&[error.kind()])
            .inc();
        if streamed || !error.is_retryable() || attempt >= provider.config.max_retries {
            return JobOutcome::Failed(error);
        }
        let wait = match &error {
            LlmError::Upstream {
                retry_after: Some(after),
                ..
            } => {
                if *after > provider.config.max_backoff {
                    return JobOutcome::Failed(error);
                }
                *after
            }
            _ => backoff(&provider.config, attempt),
        };
        attempt += 1;
        provider.stats.retries.inc();
        tracing::debug!(provider = %provider.config.name, attempt, ?wait, error = %error, "retrying");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return cancelled(partial),
        }
    }
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random.
fn backoff(config: &ProviderConfig, attempt: u32) -> Duration {
    let full = config
        .backoff
        .saturating_mul(1u32 << attempt.min(16))
        .min(config.max_backoff);
    let random = (uuid::Uuid::new_v4().as_u128() % 1_000) as u32;
    full / 2 + (full / 2) * random / 1_000
}

#[cfg(test)]
mod tests;
