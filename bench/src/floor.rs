//! `store-floor`: what a durable acknowledgement could cost at best on a given message store,
//! with nothing of Arbor in front of it but its MongoDB adapter.
//!
//! Messages of Q&A pairs (Arbor's documents, written by Arbor's `MongoStore` with its write
//! concern) fall due at a fixed rate, open loop, to random chats. An ideal writer sends every
//! message already due as one batch the moment one of its `in_flight` slots is free, and a
//! message's latency is counted from when it fell due to when its batch was confirmed: the
//! least any server that acknowledges only stored messages could answer in, with no HTTP, no
//! actor, no metadata store and no load generator on the machine.
//!
//! `--tick-ms` spaces the calls (bigger batches, more wait), and `--shape bucket` writes one
//! document per chat and call instead of one per message: what other writers and another
//! schema could get from the same store (BENCHMARKS.md, "Durable writes on PostgreSQL +
//! MongoDB: the message store's floor").

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arbor::storage::mongodb::{document, MongoStore};
use arbor_actors::model::{ChatId, Message, MessageId, Role};
use arbor_actors::ports::MessageStore;
use mongodb::bson::{doc, Bson, Document};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::stats::Latencies;

/// Over this, a durable add_pair misses the target's p99.
const TARGET: Duration = Duration::from_millis(25);

/// How the messages are stored.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shape {
    /// Arbor's: one document per message, through Arbor's `MongoStore`.
    Message,
    /// One document per chat and call, holding that chat's messages of the call (an array):
    /// fewer, larger documents, with the same write concern and index.
    Bucket,
}

/// Writes a batch of messages in one call.
enum Writer {
    Arbor(MongoStore),
    Buckets(mongodb::Collection<Document>),
}

impl Writer {
    async fn open(url: &str, shape: Shape) -> anyhow::Result<Self> {
        use mongodb::options::{Acknowledgment, CollectionOptions, WriteConcern};
        Ok(match shape {
            Shape::Message => Self::Arbor(
                MongoStore::open(url, "arbor_store_floor", Duration::from_secs(10)).await?,
            ),
            Shape::Bucket => {
                let client = mongodb::Client::with_uri_str(url).await?;
                let concern = WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build();
                let collection = client
                    .database("arbor_store_floor")
                    .collection_with_options(
                        "buckets",
                        CollectionOptions::builder().write_concern(concern).build(),
                    );
                collection
                    .create_index(
                        mongodb::IndexModel::builder()
                            .keys(doc! { "chat_id": 1, "_id": 1 })
                            .build(),
                    )
                    .await?;
                Self::Buckets(collection)
            }
        })
    }

    async fn insert(&self, messages: &[Message]) -> anyhow::Result<()> {
        match self {
            Self::Arbor(store) => store
                .insert(messages)
                .await
                .map_err(|e| anyhow::anyhow!("{e}")),
            Self::Buckets(collection) => {
                collection
                    .insert_many(buckets(messages))
                    .ordered(false)
                    .await?;
                Ok(())
            }
        }
    }
}

/// One document per chat of `messages`: `{_id: its first message's id, chat_id, messages}`, each
/// message as Arbor stores it but for its chat id.
fn buckets(messages: &[Message]) -> Vec<Document> {
    let mut by_chat: HashMap<ChatId, (Option<Bson>, Vec<Document>)> = HashMap::new();
    for m in messages {
        let mut d = document(m);
        let chat = d.remove("chat_id");
        by_chat
            .entry(m.chat_id)
            .or_insert_with(|| (chat, Vec::new()))
            .1
            .push(d);
    }
    by_chat
        .into_values()
        .map(|(chat, items)| {
            doc! {
                "_id": items.first().and_then(|d| d.get("_id")).cloned(),
                "chat_id": chat,
                "messages": items,
            }
        })
        .collect()
}

pub struct Floor {
    pub shape: Shape,
    pub url: String,
    pub rate: usize,
    pub seconds: u64,
    pub in_flight: usize,
    pub batch_max: usize,
    /// At least this long between the starts of two calls (0: none).
    pub tick: Duration,
    pub chats: usize,
}

/// The messages of `pairs` Q&A pairs to random chats, each question after its chat's last answer.
fn messages(pairs: usize, chats: usize) -> Vec<Message> {
    let chat_ids: Vec<ChatId> = (0..chats.max(1)).map(|_| ChatId::new()).collect();
    let mut heads: Vec<Option<MessageId>> = vec![None; chat_ids.len()];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(pairs * 2);
    for n in 0..pairs {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let slot = (seed % chat_ids.len() as u64) as usize;
        let (question, at) = MessageId::new_with_time();
        let answer = MessageId::new();
        let message = |id, parent, role, content: String| Message {
            id,
            chat_id: chat_ids[slot],
            parent_id: parent,
            role,
            content: Arc::from(content),
            created_at: at,
            model: None,
            metadata: None,
            idempotency_key: None,
        };
        out.push(message(
            question,
            heads[slot],
            Role::User,
            format!("question {n}"),
        ));
        out.push(message(
            answer,
            Some(question),
            Role::Assistant,
            format!("answer {n}: a branch is a pointer to a head message"),
        ));
        heads[slot] = Some(answer);
    }
    out
}

pub fn run(floor: Floor) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(measure(floor))
}

async fn measure(floor: Floor) -> anyhow::Result<()> {
    let store = Arc::new(Writer::open(&floor.url, floor.shape).await?);
    let total = floor.rate * floor.seconds as usize / 2 * 2;
    let messages = Arc::new(messages(total / 2, floor.chats));
    let interval = Duration::from_secs(1).as_secs_f64() / floor.rate as f64;
    let due = |k: usize| Duration::from_secs_f64(k as f64 * interval);

    let started = Instant::now();
    let mut sent = 0;
    // When the last call started.
    let mut last_call: Option<Instant> = None;
    let mut calls = JoinSet::new();
    let mut latencies = Latencies::default();
    let mut call_times = Latencies::default();
    // The 100 ms windows (by due time) holding a message over the target.
    let mut slow_windows = BTreeSet::new();
    while sent < total || !calls.is_empty() {
        let now = started.elapsed();
        let ready = ((now.as_secs_f64() / interval) as usize + 1).min(total);
        let next_call = last_call.map_or(started, |at| at + floor.tick);
        if ready > sent && calls.len() < floor.in_flight && started + now >= next_call {
            last_call = Some(started + now);
            let end = ready.min(sent + floor.batch_max);
            let store = store.clone();
            let messages = messages.clone();
            let range = sent..end;
            calls.spawn(async move {
                let call = Instant::now();
                let result = store.insert(&messages[range.clone()]).await;
                (range, call.elapsed(), Instant::now(), result)
            });
            sent = end;
            continue;
        }
        // The next message (`sent`, not yet due here) falls due, or the next call may start.
        let wake = (started + due(sent)).max(next_call);
        tokio::select! {
            Some(done) = calls.join_next(), if !calls.is_empty() => {
                let (range, took, confirmed, result) = done?;
                result?;
                call_times.push(took);
                let confirmed = confirmed - started;
                for k in range {
                    let latency = confirmed.saturating_sub(due(k));
                    if latency > TARGET {
                        slow_windows.insert(due(k).as_millis() / 100);
                    }
                    latencies.push(latency);
                }
            }
            _ = tokio::time::sleep_until(wake), if sent < total => {}
        }
    }
    let elapsed = started.elapsed();
    let over = latencies.count_over(TARGET);
    println!(
        "BENCH store_floor shape={:?} rate={} stored_per_s={:.0} in_flight={} tick_ms={} calls={} \
         p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.1} over_25ms={:.4} \
         windows_100ms_with_slow={} call_p50_ms={:.2} call_p99_ms={:.2} call_max_ms={:.1}",
        floor.shape,
        floor.rate,
        total as f64 / elapsed.as_secs_f64(),
        floor.in_flight,
        floor.tick.as_millis(),
        call_times.len(),
        latencies.quantile_ms(0.5),
        latencies.quantile_ms(0.99),
        latencies.quantile_ms(0.999),
        latencies.quantile_ms(1.0),
        over as f64 / latencies.len().max(1) as f64,
        slow_windows.len(),
        call_times.quantile_ms(0.5),
        call_times.quantile_ms(0.99),
        call_times.quantile_ms(1.0),
    );
    Ok(())
}
