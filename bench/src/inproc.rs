//! In-process measurements, where HTTP would hide the cost: the server is built from the same
//! configuration file `bench/run.sh` writes (so the same stores and ack mode), and the chat
//! registry is driven directly.
//!
//! - `activation`: time for a chat's actor to load a chat of N messages from the stores;
//! - `memory`: resident memory per idle chat, and the total for many chats;
//! - `lag`: write-behind lag (enqueue → commit) under an open-loop load of M messages/s;
//! - `page`: the read path's own work (a page from a resident chat's actor, and its JSON).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arbor::config::{ActorPlacement, Settings};
use arbor::Application;
use arbor_actors::chat::NewChat;
use arbor_actors::model::{ChatId, Role, UserId, UserRecord};
use arbor_actors::{ChatError, Chats, SendRequest};
use futures_util::{stream, StreamExt, TryStreamExt};
use prometheus::core::Collector;

use crate::stats::Latencies;

/// Requests in flight while seeding and activating.
const CONCURRENCY: usize = 64;

/// The configuration file's settings with an ephemeral port, no separate metrics listener,
/// and `adjust` applied.
fn settings(config: &Path, adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(Some(config)).map_err(|e| anyhow::anyhow!("{e}"))?;
    settings.server.port = 0;
    settings.metrics.listen = String::new();
    adjust(&mut settings);
    Ok(settings)
}

/// Loads the configuration, lets `adjust` change it, builds the application and runs `body`
/// on its chat registry inside an actix system; flushes every chat afterwards.
pub(crate) fn with_chats<F, Fut>(
    config: &Path,
    adjust: impl FnOnce(&mut Settings),
    body: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Chats) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let settings = settings(config, adjust)?;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        let chats = app.chats().clone();
        let result = body(chats).await;
        app.close().await;
        result
    })
}

/// A fresh account (written straight to the metadata store) to own the measured chats.
pub(crate) async fn new_user(chats: &Chats) -> anyhow::Result<UserId> {
    let user = UserRecord {
        id: UserId::new(),
        email: Some(format!(
            "inproc-{}@example.com",
            uuid::Uuid::new_v4().simple()
        )),
        username: None,
        password_hash: String::new(),
        created_at: chrono::Utc::now(),
        is_admin: false,
    };
    chats.runtime().metadata.create_user(&user).await?;
    Ok(user.id)
}

/// [`with_chats`] on `count` fresh chats of one Q&A pair each, owned by a fresh account.
fn with_seeded_chats<F, Fut>(config: &Path, count: usize, body: F) -> anyhow::Result<()>
where
    F: FnOnce(Chats, UserId, Vec<ChatId>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    with_chats(
        config,
        |_| {},
        |chats| async move {
            let user = new_user(&chats).await?;
            let (ids, _) = seed(&chats, user, count, 1, 0).await?;
            body(chats, user, ids).await
        },
    )
}

/// Content of the `i`-th question and answer: about 40 bytes each, or with `answer_bytes` set,
/// an answer of that many bytes (within a character) of text like a model's: paragraphs,
/// quotes, a list, non-ASCII.
fn pair(i: usize, answer_bytes: usize) -> (String, String) {
    const REPLY: &str = "Lisbon is lovely in May: the jacarandas bloom and the summer crowds \
        have not arrived yet.\n\n- Walk from Alfama down to the river.\n- Take tram 28 early.\n\
        - Eat a pastel de nata in Belém, \"still warm\" as they say.\n\n";
    let question = format!("question number {i:>6} about branching trees?");
    if answer_bytes == 0 {
        return (
            question,
            format!("answer number {i:>6}: fork from any message."),
        );
    }
    let mut answer = format!("Answer {i}. ");
    while answer.len() < answer_bytes {
        answer.push_str(REPLY);
    }
    let end = (0..=answer_bytes)
        .rev()
        .find(|&at| answer.is_char_boundary(at))
        .unwrap_or(0);
    answer.truncate(end);
    (question, answer)
}

/// A user message on the active branch, with an already written answer if `response` is set.
fn question_request(content: String, response: Option<String>) -> SendRequest {
    SendRequest {
        branch: None,
        role: Role::User,
        content: content.into(),
        response: response.map(Into::into),
        model: None,
        metadata: None,
        reply: false,
        idempotency_key: None,
    }
}

/// Sends a Q&A pair, retrying while the write queue sheds load.
async fn add_pair(
    chats: &Chats,
    user: UserId,
    chat: ChatId,
    i: usize,
    answer_bytes: usize,
) -> anyhow::Result<usize> {
    let (question, answer) = pair(i, answer_bytes);
    let bytes = question.len() + answer.len();
    let request = question_request(question, Some(answer));
    loop {
        match chats.send(user, chat, request.clone()).await {
            Ok(_) => return Ok(bytes),
            Err(ChatError::Overloaded) => tokio::time::sleep(Duration::from_millis(2)).await,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates `count` chats of `pairs` Q&A pairs (`pair`'s, with `answer_bytes`); returns their
/// ids and the content bytes stored.
async fn seed(
    chats: &Chats,
    user: UserId,
    count: usize,
    pairs: usize,
    answer_bytes: usize,
) -> anyhow::Result<(Vec<ChatId>, usize)> {
    let seeded: Vec<(ChatId, usize)> = stream::iter(0..count)
        .map(|i| async move {
            // Buffered acks let seeding outrun the writer: a full queue is waited out, as in
            // `add_pair`.
            let chat = loop {
                let new = NewChat {
                    title: Some(format!("chat {i}")),
                    system_prompt: None,
                    description: None,
                };
                match chats.create(user, new).await {
                    Ok(chat) => break chat.id,
                    Err(ChatError::Overloaded) => {
                        tokio::time::sleep(Duration::from_millis(2)).await
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let mut bytes = 0;
            for p in 0..pairs {
                bytes += add_pair(chats, user, chat, p, answer_bytes).await?;
            }
            anyhow::Ok((chat, bytes))
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    chats.runtime().writer.barrier().await;
    let bytes = seeded.iter().map(|(_, b)| b).sum();
    Ok((seeded.into_iter().map(|(c, _)| c).collect(), bytes))
}

/// Activates each chat (a one-message page), `CONCURRENCY` at a time.
async fn activate(chats: &Chats, user: UserId, ids: &[ChatId]) -> Result<(), ChatError> {
    stream::iter(ids)
        .map(|&id| chats.list_messages(user, id, None, 1, None))
        .buffer_unordered(CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await
}

async fn evict_all(chats: &Chats, ids: &[ChatId]) {
    stream::iter(ids)
        .for_each_concurrent(CONCURRENCY, |&id| async move {
            chats.evict(id).await;
        })
        .await;
}

/// Time to activate (load from the stores) a chat of `pairs * 2` messages and read a page.
pub fn activation(config: &Path, count: usize, pairs: usize, rounds: usize) -> anyhow::Result<()> {
    with_chats(
        config,
        |_| {},
        |chats| async move {
            let user = new_user(&chats).await?;
            let (ids, _) = seed(&chats, user, count, pairs, 0).await?;
            evict_all(&chats, &ids).await;
            let mut latencies = Latencies::default();
            // The two store reads an activation makes, each alone: what the stores cost.
            let (mut meta_reads, mut message_reads) = (Latencies::default(), Latencies::default());
            let rt = chats.runtime();
            for _ in 0..rounds {
                for &id in &ids {
                    let started = Instant::now();
                    rt.metadata.load_chat(id).await?;
                    meta_reads.push(started.elapsed());
                    let started = Instant::now();
                    rt.messages.load_chat(id).await?;
                    message_reads.push(started.elapsed());
                    let started = Instant::now();
                    let page = chats.list_messages(user, id, None, 20, None).await?;
                    latencies.push(started.elapsed());
                    anyhow::ensure!(page.messages.len() == 20.min(pairs * 2), "short page");
                    chats.evict(id).await;
                }
            }
            println!(
                "BENCH activation messages={} samples={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} \
                 meta_read_p50_ms={:.2} messages_read_p50_ms={:.2} messages_read_p99_ms={:.2}",
                pairs * 2,
                latencies.len(),
                latencies.quantile_ms(0.5),
                latencies.quantile_ms(0.99),
                latencies.quantile_ms(1.0),
                meta_reads.quantile_ms(0.5),
                message_reads.quantile_ms(0.5),
                message_reads.quantile_ms(0.99),
            );
            Ok(())
        },
    )
}

/// The read path's own work, without HTTP: `reads` pages of a resident chat's newest 20
/// messages, from chats of `pairs * 2` messages visited out of order, each asked of the chat's
/// actor on this thread (no thread crossing: placement `local`) as JSON, the way the handler
/// asks (`list_messages_json`: the actor writes it from its tree). Beside it, the route before
/// it: the page as views (`list_messages`), then serde_json; the bytes must be the same.
/// What a `read_path` request costs Arbor beyond the shape's floor (`ceiling_local`: the
/// token, the hop, a body of the same size), measured one page at a time. The actors' kept
/// pages (`actors.page_cache_kib`) are off here: this measures writing them.
pub fn page(
    config: &Path,
    count: usize,
    pairs: usize,
    answer_bytes: usize,
    reads: usize,
) -> anyhow::Result<()> {
    with_chats(
        config,
        |s| {
            s.actors.placement = ActorPlacement::Local;
            s.actors.page_cache_kib = 0;
        },
        |chats| async move {
            let user = new_user(&chats).await?;
            let (ids, _) = seed(&chats, user, count, pairs, answer_bytes).await?;
            let (mut as_json, mut as_views, mut by_serde) =
                (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let mut bytes = 0;
            // A prime stride: every chat in turn (unless the count is a multiple of it), never
            // two neighbours. Each route has its own pass over the chats, so neither finds a
            // chat in the cache because the other just read it.
            let chat = |n: usize| ids[n * 7919 % ids.len()];
            let mut bodies = Vec::with_capacity(ids.len().min(reads));
            for n in 0..reads {
                let started = Instant::now();
                let body = chats
                    .list_messages_json(user, chat(n), None, 20, None)
                    .await?;
                as_json += started.elapsed();
                bytes += body.len();
                if n < ids.len() {
                    bodies.push(body);
                }
            }
            for n in 0..reads {
                let started = Instant::now();
                let page = chats.list_messages(user, chat(n), None, 20, None).await?;
                let paged = Instant::now();
                let same = serde_json::to_vec(&page)?;
                by_serde += paged.elapsed();
                as_views += paged - started;
                if let Some(body) = bodies.get(n) {
                    anyhow::ensure!(*body == same, "the actor's JSON and serde_json's differ");
                }
                anyhow::ensure!(page.messages.len() == 20.min(pairs * 2), "short page");
            }
            let micros = |d: Duration| d.as_secs_f64() * 1e6 / reads as f64;
            println!(
                "BENCH page reads={reads} json_us={:.2} views_us={:.2} serde_json_us={:.2} \
                 body_bytes={}",
                micros(as_json),
                micros(as_views),
                micros(by_serde),
                bytes / reads.max(1),
            );
            Ok(())
        },
    )
}

/// Resident memory of `count` idle chats of `pairs * 2` messages. The chats are seeded here;
/// a fresh process (this binary's `memory-measure`) then takes its RSS, activates every chat,
/// and takes it again, so the write path's freed heap does not blur the figure.
pub fn memory(config: &Path, count: usize, pairs: usize) -> anyhow::Result<()> {
    let state = std::env::temp_dir().join(format!("arbor-memory-{}.txt", std::process::id()));
    with_chats(
        config,
        |_| {},
        |chats| {
            let state = state.clone();
            async move {
                let user = new_user(&chats).await?;
                let (ids, content) = seed(&chats, user, count, pairs, 0).await?;
                let mut text = format!("{user}\n{content}\n{}\n", pairs * 2);
                for id in ids {
                    text.push_str(&format!("{id}\n"));
                }
                std::fs::write(&state, text)?;
                Ok(())
            }
        },
    )?;
    // BENCH_MEMORY_WRAPPER (e.g. `heaptrack`) runs the measuring process under a profiler.
    let mut command = match std::env::var("BENCH_MEMORY_WRAPPER") {
        Ok(wrapper) if !wrapper.is_empty() => {
            let mut c = std::process::Command::new(wrapper);
            c.arg(std::env::current_exe()?);
            c
        }
        _ => std::process::Command::new(std::env::current_exe()?),
    };
    let status = command
        .arg("memory-measure")
        .arg("--config")
        .arg(config)
        .arg("--state")
        .arg(&state)
        .status()?;
    let _ = std::fs::remove_file(&state);
    anyhow::ensure!(status.success(), "memory-measure failed");
    Ok(())
}

/// The second half of [`memory`]: activates the chats listed in `state`.
pub fn memory_measure(config: &Path, state: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(state)?;
    let mut lines = text.lines();
    let user: UserId = lines.next().context("no user")?.parse()?;
    let content: usize = lines.next().context("no content size")?.parse()?;
    let messages: usize = lines.next().context("no message count")?.parse()?;
    let ids = lines
        .map(|l| l.parse::<ChatId>())
        .collect::<Result<Vec<_>, _>>()?;
    let count = ids.len();
    let adjust = |s: &mut Settings| {
        s.actors.max_resident = (count as u64 + 1000).max(s.actors.max_resident);
        s.actors.idle_timeout_secs = 24 * 3600;
    };
    #[cfg(not(feature = "system-alloc"))]
    crate::heap::start();
    with_chats(config, adjust, |chats| async move {
        // Halves, so that the second half's growth is the marginal cost of a chat: what the
        // first activations fill once (the stores' page caches) is not in it.
        let (first, second) = ids.split_at(count / 2);
        let (before, heap_before) = (rss()?, heap_live());
        let started = Instant::now();
        activate(&chats, user, first).await?;
        let first_took = started.elapsed();
        // Let the registry's bookkeeping (cache maintenance) settle before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (middle, heap_middle) = (rss()?, heap_live());
        let started = Instant::now();
        activate(&chats, user, second).await?;
        let activated = first_took + started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (after, heap_after) = (rss()?, heap_live());
        let resident = chats.resident();
        anyhow::ensure!(
            resident as usize >= count,
            "only {resident} of {count} chats resident"
        );
        let per_chat = after.saturating_sub(before) as f64 / count as f64;
        let marginal = after.saturating_sub(middle) as f64 / second.len().max(1) as f64;
        let content_per_chat = content as f64 / count as f64;
        let heap_per_chat = (heap_after - heap_before) as f64 / count as f64;
        let heap_marginal = (heap_after - heap_middle) as f64 / second.len().max(1) as f64;
        println!(
            "BENCH memory chats={count} messages={messages} activated_s={:.1} rss_mib={:.1} \
             chats_mib={:.1} per_chat_bytes={per_chat:.0} \
             content_per_chat_bytes={content_per_chat:.0} overhead_per_chat_bytes={:.0} \
             marginal_overhead_per_chat_bytes={:.0} heap_overhead_per_chat_bytes={:.0} \
             heap_marginal_overhead_per_chat_bytes={:.0}",
            activated.as_secs_f64(),
            after as f64 / (1 << 20) as f64,
            after.saturating_sub(before) as f64 / (1 << 20) as f64,
            per_chat - content_per_chat,
            marginal - content_per_chat,
            heap_per_chat - content_per_chat,
            heap_marginal - content_per_chat,
        );
        if std::env::var_os("BENCH_MEMORY_EXIT").is_some() {
            std::process::exit(0);
        }
        Ok(())
    })
}

/// The floor under [`memory`]: `count` actors with no state, started on two arbiters as the
/// registry starts chat actors (mailbox bound lifted), each address held in a moka cache built
/// as the registry's (size- and idle-bounded, with an eviction listener), keyed by a chat id.
pub fn memory_floor(count: usize) -> anyhow::Result<()> {
    use actix::{Actor, Arbiter, Context as ActorContext};
    use moka::future::Cache;

    struct Bare;
    impl Actor for Bare {
        type Context = ActorContext<Self>;
    }

    #[cfg(not(feature = "system-alloc"))]
    crate::heap::start();
    actix_web::rt::System::new().block_on(async move {
        let arbiters = [Arbiter::new(), Arbiter::new()];
        let cache: Cache<ChatId, (actix::Addr<Bare>, Arc<u64>)> = Cache::builder()
            .max_capacity(count as u64 + 1000)
            .time_to_idle(Duration::from_secs(24 * 3600))
            .eviction_listener(|_, _, _| {})
            .build();
        let (before, heap_before) = (rss()?, heap_live());
        for i in 0..count {
            let addr = Bare::start_in_arbiter(&arbiters[i % 2].handle(), |ctx| {
                ctx.set_mailbox_capacity(0);
                Bare
            });
            cache
                .insert(ChatId::new(), (addr, Arc::new(i as u64)))
                .await;
        }
        cache.run_pending_tasks().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (after, heap_after) = (rss()?, heap_live());
        anyhow::ensure!(
            cache.entry_count() as usize == count,
            "entries went missing"
        );
        println!(
            "BENCH memory_floor chats={count} per_chat_bytes={:.0} heap_per_chat_bytes={:.0}",
            after.saturating_sub(before) as f64 / count as f64,
            (heap_after - heap_before) as f64 / count as f64
        );
        for arbiter in arbiters {
            arbiter.stop();
        }
        Ok(())
    })
}

/// Write-behind lag at `rate` messages per second (Q&A pairs, so `rate / 2` sends per second,
/// each to a random chat of `count`), for `seconds`, read from the writer's lag histogram.
pub fn lag(config: &Path, count: usize, rate: usize, seconds: u64) -> anyhow::Result<()> {
    with_seeded_chats(config, count, |chats, user, ids| async move {
        let ids = Arc::new(ids);
        let histogram = chats.runtime().writer.stats.lag_seconds.clone();
        let before = buckets(&histogram);
        let sends = rate / 2;
        let interval = Duration::from_secs(1) / sends.max(1) as u32;
        let started = tokio::time::Instant::now();
        let total = sends * seconds as usize;
        let mut tasks = Vec::with_capacity(total);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for n in 0..total {
            tokio::time::sleep_until(started + interval * n as u32).await;
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let chat = ids[(seed % ids.len() as u64) as usize];
            let chats = chats.clone();
            tasks.push(tokio::spawn(async move {
                add_pair(&chats, user, chat, n, 0).await
            }));
        }
        let offered = started.elapsed();
        for task in tasks {
            task.await??;
        }
        chats.runtime().writer.barrier().await;
        let after = buckets(&histogram);
        let delta: Vec<(f64, u64)> = after
            .iter()
            .zip(&before)
            .map(|((bound, a), (_, b))| (*bound, a - b))
            .collect();
        println!(
            "BENCH lag offered_msgs_per_s={:.0} samples={} p50_ms={:.2} p99_ms={:.2} le_50ms={:.4}",
            (total * 2) as f64 / offered.as_secs_f64(),
            delta.last().map_or(0, |d| d.1),
            histogram_quantile(&delta, 0.5) * 1e3,
            histogram_quantile(&delta, 0.99) * 1e3,
            fraction_below(&delta, 0.05),
        );
        Ok(())
    })
}

/// A lone question at a time to `count` chats in turn: the time from the send to its
/// acknowledgement, which in durable mode includes its commit, by nothing else delayed.
pub fn ack(config: &Path, count: usize, sends: usize) -> anyhow::Result<()> {
    with_seeded_chats(config, count, |chats, user, ids| async move {
        let stages = &chats.runtime().writer.stats.stage_seconds;
        let before = stage_means(stages);
        let mut latencies = Latencies::default();
        for n in 0..sends {
            let request = question_request(format!("lone question {n}"), None);
            let started = Instant::now();
            chats.send(user, ids[n % ids.len()], request).await?;
            latencies.push(started.elapsed());
        }
        // Each store call's mean over this run: the commit's own share of an ack.
        let stages: Vec<String> = stage_means(stages)
            .into_iter()
            .filter_map(|(stage, sum, count)| {
                let (sum0, count0) = before
                    .iter()
                    .find(|(s, _, _)| *s == stage)
                    .map_or((0.0, 0), |(_, s, c)| (*s, *c));
                (count > count0).then(|| {
                    let mean = (sum - sum0) / (count - count0) as f64 * 1e3;
                    format!("{stage}_mean_ms={mean:.3}")
                })
            })
            .collect();
        println!(
            "BENCH ack samples={sends} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} {}",
            latencies.quantile_ms(0.5),
            latencies.quantile_ms(0.9),
            latencies.quantile_ms(0.99),
            stages.join(" "),
        );
        Ok(())
    })
}

/// `(stage, sum of seconds, count)` of each stage of the writer's commits so far.
fn stage_means(stages: &prometheus::HistogramVec) -> Vec<(String, f64, u64)> {
    stages.collect()[0]
        .get_metric()
        .iter()
        .map(|m| {
            let stage = m
                .get_label()
                .iter()
                .find(|l| l.name() == "stage")
                .map_or_else(String::new, |l| l.value().to_owned());
            let h = m.get_histogram();
            (stage, h.get_sample_sum(), h.get_sample_count())
        })
        .collect()
}

/// Cumulative `(upper bound, count)` pairs, ending with `(+Inf, total)`.
fn buckets(histogram: &prometheus::Histogram) -> Vec<(f64, u64)> {
    let families = histogram.collect();
    let h = families[0].get_metric()[0].get_histogram();
    let mut out: Vec<(f64, u64)> = h
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    out.push((f64::INFINITY, h.get_sample_count()));
    out
}

/// Prometheus' `histogram_quantile`: linear interpolation inside the bucket holding `q`.
fn histogram_quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0, |b| b.1) as f64;
    let rank = q * total;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let inside = (count - lower.1) as f64;
            let into = rank - lower.1 as f64;
            return lower.0 + (bound - lower.0) * if inside > 0.0 { into / inside } else { 0.0 };
        }
        lower = (bound, count);
    }
    lower.0
}

fn fraction_below(buckets: &[(f64, u64)], bound: f64) -> f64 {
    let total = buckets.last().map_or(0, |b| b.1) as f64;
    let below = buckets.iter().find(|b| b.0 >= bound).map_or(0, |b| b.1) as f64;
    if total == 0.0 {
        0.0
    } else {
        below / total
    }
}

/// The process's resident set (`VmRSS` in /proc/self/status), in bytes.
/// Bytes of mimalloc blocks in use (relative to when counting started; see `heap`), or 0 when
/// built with the system allocator.
fn heap_live() -> isize {
    #[cfg(not(feature = "system-alloc"))]
    return crate::heap::live();
    #[cfg(feature = "system-alloc")]
    0
}

fn rss() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS has no value")?
        .parse()?;
    Ok(kib * 1024)
}
