//! Storage adapters: implementations of the `arbor_actors::ports` store traits, one module per
//! backend. The contract tests in `tests/api/stores.rs` run the same cases against each.

pub mod mongodb;
pub mod postgres;
pub mod sqlite;

use std::str::FromStr;
use std::sync::Arc;

use arbor_actors::model::{Branch, ChatMeta, Feedback, MessageId, Rating};
use arbor_actors::ports::{BatchStore, MessageStore, MetadataStore, StoreError, StoredChat};

use crate::config::{MessageBackend, MetadataBackend, Settings};
use crate::membership::MembershipStore;

/// Parses an id column; a bad one means the stored data is corrupt.
pub(crate) fn parse_id<T: FromStr>(column: &str, value: &str) -> Result<T, StoreError> {
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("bad {column}: {value:?}")))
}

/// Parses a message's metadata, which both message stores keep as JSON text (any JSON object
/// round-trips exactly); bad text means the stored data is corrupt.
pub(crate) fn parse_metadata(
    text: Option<&str>,
) -> Result<Option<Arc<serde_json::Value>>, StoreError> {
    text.map(|m| serde_json::from_str(m).map(Arc::new))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("messages.metadata: {e}")))
}

/// Folds the rows of `chats LEFT JOIN branches` (one query) into the chat and its branches;
/// `branch` gives `None` for the row of a chat without branches. `feedback` reads the chat's
/// feedback rows, aggregated into a JSON array on every row (`FeedbackJson`).
pub(crate) fn fold_chat_rows<R>(
    rows: &[R],
    chat: impl Fn(&R) -> Result<ChatMeta, StoreError>,
    branch: impl Fn(&R) -> Result<Option<Branch>, StoreError>,
    feedback: impl Fn(&R) -> Result<String, StoreError>,
) -> Result<Option<StoredChat>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut branches = Vec::with_capacity(rows.len());
    for row in rows {
        branches.extend(branch(row)?);
    }
    Ok(Some(StoredChat {
        meta: chat(first)?,
        branches,
        feedback: parse_feedback(&feedback(first)?)?,
    }))
}

/// One feedback row as the load query aggregates it into JSON.
#[derive(serde::Deserialize)]
struct FeedbackJson {
    m: MessageId,
    r: Rating,
    t: Vec<String>,
    c: Option<String>,
    u: chrono::DateTime<chrono::Utc>,
}

fn parse_feedback(json: &str) -> Result<Vec<(MessageId, Arc<Feedback>)>, StoreError> {
    let rows: Vec<FeedbackJson> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("feedback: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|f| {
            let feedback = Feedback {
                rating: f.r,
                tags: f.t,
                comment: f.c,
                updated_at: f.u,
            };
            (f.m, Arc::new(feedback))
        })
        .collect())
}

/// A feedback row's tags, as the JSON array the stores keep.
pub(crate) fn feedback_tags(feedback: &Feedback) -> String {
    serde_json::Value::from(feedback.tags.clone()).to_string()
}

pub use arbor_actors::ports::Stores;

/// Connection pools to close in order at shutdown (the MongoDB client needs no closing).
pub struct Connections {
    sqlite: Option<sqlite::SqliteStore>,
    postgres: Option<postgres::PostgresStore>,
}

impl Connections {
    /// The membership table: in the metadata store (`crate::membership`).
    pub fn membership(&self) -> anyhow::Result<Arc<dyn MembershipStore>> {
        match (&self.postgres, &self.sqlite) {
            (Some(postgres), _) => Ok(Arc::new(postgres.clone())),
            (None, Some(sqlite)) => Ok(Arc::new(sqlite.clone())),
            (None, None) => anyhow::bail!("no metadata store is open"),
        }
    }

    /// The shard lease table of cluster mode: PostgreSQL only.
    pub fn leases(&self) -> anyhow::Result<Arc<dyn crate::cluster::leases::LeaseStore>> {
        match &self.postgres {
            Some(postgres) => Ok(Arc::new(postgres.clone())),
            None => anyhow::bail!("cluster mode needs PostgreSQL as the metadata store"),
        }
    }

    pub async fn close(&self) {
        if let Some(s) = &self.sqlite {
            s.close().await;
        }
        if let Some(p) = &self.postgres {
            p.close().await;
        }
    }
}

/// Opens the configured backends and brings their schemas up to date (SQLite and PostgreSQL
/// migrations, MongoDB indexes).
pub async fn open(settings: &Settings) -> anyhow::Result<(Stores, Connections)> {
    let storage = &settings.storage;
    let uses_sqlite =
        storage.metadata == MetadataBackend::Sqlite || storage.messages == MessageBackend::Sqlite;
    let sqlite = match uses_sqlite {
        true => Some(
            sqlite::SqliteStore::open(
                &settings.sqlite_path(),
                storage.sqlite_synchronous,
                storage.sqlite_checkpoint_pages,
                storage.sqlite_read_cache_kib,
            )
            .await?,
        ),
        false => None,
    };
    let mut postgres = None;
    let embedded = || {
        sqlite
            .clone()
            .map(sqlite::SqliteStore::shared)
            .ok_or_else(|| anyhow::anyhow!("the SQLite store is not open"))
    };
    let metadata: Arc<dyn MetadataStore> = match storage.metadata {
        MetadataBackend::Sqlite => embedded()?,
        MetadataBackend::Postgres => {
            let url = required(storage.postgres_url.expose(), "postgres_url")?;
            let store = postgres::PostgresStore::open(
                url,
                &storage.postgres_schema,
                storage.postgres_max_connections,
                storage.store_timeout(),
            )
            .await?;
            postgres = Some(store.clone());
            store.shared()
        }
    };
    let messages: Arc<dyn MessageStore> = match storage.messages {
        MessageBackend::Sqlite => embedded()?,
        MessageBackend::Mongodb => {
            let url = required(storage.mongodb_url.expose(), "mongodb_url")?;
            mongodb::MongoStore::open(url, &storage.mongodb_database, storage.store_timeout())
                .await?
                .shared()
        }
    };
    let unified: Option<Arc<dyn BatchStore>> = match (storage.metadata, storage.messages) {
        (MetadataBackend::Sqlite, MessageBackend::Sqlite) => {
            if let Some(sqlite) = &sqlite {
                sqlite.holds_messages();
            }
            Some(embedded()?)
        }
        _ => None,
    };
    Ok((
        Stores {
            metadata,
            messages,
            unified,
        },
        Connections { sqlite, postgres },
    ))
}

fn required<'a>(value: &'a str, key: &str) -> anyhow::Result<&'a str> {
    if value.is_empty() {
        anyhow::bail!(
            "storage.{key} must be set for this backend (or ARBOR_STORAGE__{})",
            key.to_uppercase()
        );
    }
    Ok(value)
}

/// Where the data lives, for the startup log (no credentials).
pub fn describe(settings: &Settings) -> String {
    let storage = &settings.storage;
    let metadata = match storage.metadata {
        MetadataBackend::Sqlite => format!("sqlite {}", settings.sqlite_path().display()),
        MetadataBackend::Postgres => "postgres".to_owned(),
    };
    let messages = match storage.messages {
        MessageBackend::Sqlite => format!("sqlite {}", settings.sqlite_path().display()),
        MessageBackend::Mongodb => format!("mongodb database {}", storage.mongodb_database),
    };
    format!("metadata: {metadata}; messages: {messages}")
}

/// One group of a usage query, from the sums a store read (negative sums cannot occur; they
/// would read as 0).
pub(crate) fn usage_sum(
    key: String,
    replies: i64,
    prompt: i64,
    completion: i64,
) -> arbor_actors::ports::UsageSum {
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    arbor_actors::ports::UsageSum {
        key,
        replies: count(replies),
        prompt_tokens: count(prompt),
        completion_tokens: count(completion),
    }
}

/// A `quotas` row as a setting: no row is the default, a NULL quota none at all.
pub(crate) fn quota_setting(set: bool, tokens: Option<i64>) -> arbor_actors::ports::QuotaSetting {
    use arbor_actors::ports::QuotaSetting;
    match (set, tokens) {
        (false, _) => QuotaSetting::Default,
        (true, None) => QuotaSetting::Unlimited,
        (true, Some(n)) => QuotaSetting::Tokens(n.max(0).unsigned_abs()),
    }
}

/// The `quotas.tokens` of a setting (NULL for none, and for the default, which has no row).
pub(crate) fn quota_tokens(quota: arbor_actors::ports::QuotaSetting) -> Option<i64> {
    match quota {
        arbor_actors::ports::QuotaSetting::Tokens(n) => Some(i64::try_from(n).unwrap_or(i64::MAX)),
        _ => None,
    }
}
