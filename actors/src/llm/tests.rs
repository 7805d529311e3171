#![allow(clippy::unwrap_used)]

use super::*;

fn config(name: &str) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        base_url: None,
        default_model: format!("{name}-default"),
        models: Vec::new(),
        max_concurrent: 1,
        queue_capacity: 1,
        max_retries: 2,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(350),
        breaker_threshold: 2,
        breaker_cooldown: Duration::from_millis(50),
        context_chars: 1000,
        offline: false,
    }
}

fn provider(config: ProviderConfig) -> Provider {
    Provider {
        config,
        client: Arc::new(Never),
        jobs: mpsc::channel(1).0,
        breaker: Mutex::new(Breaker::Closed { failures: 0 }),
        stats: ProviderStats::new("test"),
    }
}

struct Never;

#[async_trait::async_trait]
impl LlmProvider for Never {
    async fn stream(
        &self,
        _: &CompletionRequest,
        _: &mut (dyn for<'d> FnMut(&'d str) + Send),
    ) -> Result<Completion, LlmError> {
        std::future::pending().await
    }
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let c = config("p");
    for _ in 0..50 {
        let first = backoff(&c, 0);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let third = backoff(&c, 2);
        assert!(third >= Duration::from_millis(175) && third <= Duration::from_millis(350));
    }
}

#[test]
fn breaker_opens_after_consecutive_outages_and_probes_once_after_cooldown() {
    let p = provider(config("p"));
    let outage = LlmError::upstream(Some(503), "down");
    let limited = LlmError::upstream(Some(429), "slow down");
    p.record(Err(&outage));
    p.record(Err(&limited)); // the provider answered: the count restarts
    p.record(Err(&outage));
    assert_eq!(p.circuit(), "closed");
    p.record(Err(&outage));
    assert_eq!(p.circuit(), "open");
    assert!(p.open());
    assert_eq!(p.allow(), Err(LlmError::Unavailable));
    std::thread::sleep(Duration::from_millis(60));
    assert!(!p.open());
    assert_eq!(p.allow(), Ok(()));
    assert_eq!(p.allow(), Err(LlmError::Unavailable), "one probe at a time");
    p.record(Err(&LlmError::Timeout));
    assert_eq!(p.circuit(), "open");
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(p.allow(), Ok(()));
    p.record(Ok(()));
    assert_eq!(p.circuit(), "closed");
}

#[actix_rt::test]
async fn resolves_aliases_providers_and_listed_models() {
    let mut groq = config("groq");
    groq.models = vec!["llama-3.1-8b-instant".into(), "vendor/with-slash".into()];
    let pool = LlmPool::start(PoolConfig {
        providers: vec![(groq, Arc::new(Never)), (config("local"), Arc::new(Never))],
        aliases: vec![("fast".into(), "groq/llama-3.1-8b-instant".into())],
        default: "local".into(),
        threads: 1,
    })
    .unwrap();
    let label = |name: Option<&str>| pool.resolve(name).map(|m| m.label());
    assert_eq!(label(None).unwrap(), "local/local-default");
    assert_eq!(label(Some("fast")).unwrap(), "groq/llama-3.1-8b-instant");
    assert_eq!(label(Some("groq")).unwrap(), "groq/groq-default");
    assert_eq!(
        label(Some("groq/vendor/with-slash")).unwrap(),
        "groq/vendor/with-slash"
    );
    assert_eq!(
        label(Some("llama-3.1-8b-instant")).unwrap(),
        "groq/llama-3.1-8b-instant"
    );
    assert_eq!(label(Some("local/anything")).unwrap(), "local/anything");
    for unknown in ["groq/not-listed", "nobody/model", "slow", "groq/"] {
        assert_eq!(
            label(Some(unknown)),
            Err(LlmError::UnknownModel(unknown.into()))
        );
    }
    assert!(LlmPool::start(PoolConfig {
        providers: vec![(config("a"), Arc::new(Never))],
        aliases: vec![("x".into(), "b/model".into())],
        default: String::new(),
        threads: 1,
    })
    .is_err());
}
