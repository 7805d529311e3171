//! The embedded default: metadata and messages in one SQLite file (WAL mode), via sqlx.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arbor_actors::model::{
    Branch, BranchId, ChatId, ChatMeta, Message, MessageId, Role, UserId, UserRecord,
};
use arbor_actors::ports::{
    Batch, BatchStore, FeedbackSum, MessageDeletes, MessageStore, MetaBatch, MetadataStore,
    QuotaSetting, SearchHit, ShareRecord, StoreError, StoredChat, UsageGroup, UsageSum,
};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::{fold_chat_rows, parse_id, parse_metadata};
use crate::config::SqliteSync;
use crate::membership::{split_dead, KnownDead, MembershipStore, NodeRecord, NodeSeen};

/// Bytes the WAL file keeps after a checkpoint.
const JOURNAL_LIMIT: &str = "67108864";

/// Rows per multi-row statement (SQLite allows 32,766 bound parameters).
const CHUNK: usize = 500;

/// The write connection while a transaction's script runs. Unless the transaction is known to
/// have ended (committed or rolled back), the connection is closed instead of going back to the
/// pool: a script whose future is dropped midway may have stopped after `BEGIN`, and a pooled
/// connection left inside a transaction would fail every later write.
struct Script {
    conn: PoolConnection<Sqlite>,
    ended: bool,
}

impl Drop for Script {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}

/// Reads go through a small pool; every write goes through one dedicated connection. SQLite
/// takes one writer at a time anyway, and a connection's page cache is dropped whenever another
/// connection has written: a write pool of one keeps the writer's cache warm between batches
/// (with writes spread over the pool, each batch re-read the pages it touched from the file).
#[derive(Clone)]
pub struct SqliteStore {
    reads: SqlitePool,
    writes: SqlitePool,
    /// Whether this file also holds the messages (`BatchStore`): then search reads the index
    /// over the `messages` table, else the one over `search_docs`.
    holds_messages: Arc<std::sync::atomic::AtomicBool>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies the migrations.
    /// `checkpoint_pages` and `read_cache_kib`: see `StorageSettings::sqlite_checkpoint_pages`
    /// and `StorageSettings::sqlite_read_cache_kib`.
    pub async fn open(
        path: &Path,
        sync: SqliteSync,
        checkpoint_pages: u32,
        read_cache_kib: u32,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating data directory {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SqliteSync::Full => SqliteSynchronous::Full,
                SqliteSync::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(5))
            // The WAL file is cut back to `JOURNAL_LIMIT` after each checkpoint.
            .pragma("wal_autocheckpoint", checkpoint_pages.max(1).to_string())
            .pragma("journal_size_limit", JOURNAL_LIMIT)
            // Statement journals in memory: a batch's multi-row statement keeps one (to undo
            // itself alone if it fails midway), and past 64 KiB SQLite spilled it to a new temp
            // file (create, write, unlink) per statement: a fifth of the write thread's
            // statement time under the reply load. It lives only as long as its statement.
            // Sorts too would stay in memory; every query here reads a chat's rows by index.
            .pragma("temp_store", "memory");
        let pool = |size, options| {
            SqlitePoolOptions::new()
                .max_connections(size)
                .acquire_timeout(Duration::from_secs(5))
                // A connection to a local file does not drop; sqlx's default ping before
                // handing one out is a round trip to its worker thread per store call.
                .test_before_acquire(false)
                .connect_with(options)
        };
        let opening = || format!("opening SQLite database {}", path.display());
        let writes = pool(1, options.clone()).await.with_context(opening)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writes)
            .await
            .context("applying SQLite migrations")?;
        // A negative `cache_size` is in KiB.
        let read_options = options.pragma("cache_size", format!("-{}", read_cache_kib.max(1)));
        let reads = pool(4, read_options).await.with_context(opening)?;
        Ok(Self {
            reads,
            writes,
            holds_messages: Arc::default(),
        })
    }

    /// This file holds the messages too (one database for both stores).
    pub fn holds_messages(&self) {
        self.holds_messages
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs the statements `build` appends as one transaction, sent to the write connection's
    /// worker thread as one script: one round trip instead of one per statement plus `BEGIN`
    /// and `COMMIT` (each a thread handoff, a large part of a small commit's latency).
    async fn transaction(
        &self,
        build: impl FnOnce(&mut QueryBuilder<'_, Sqlite>),
    ) -> Result<(), StoreError> {
        let mut q = QueryBuilder::new("BEGIN IMMEDIATE;\n");
        build(&mut q);
        q.push("COMMIT;");
        let mut script = Script {
            conn: self.writes.acquire().await.map_err(store_error)?,
            ended: false,
        };
        let result = q.build().execute(&mut *script.conn).await;
        // A failed script stops at the failed statement, leaving its transaction open (unless
        // the failure was `BEGIN`'s own, or SQLite already rolled back): end it before the
        // connection is reused. If that fails, `script` closes the connection when dropped.
        script.ended = match &result {
            Ok(_) => true,
            Err(_) => sqlx::query("ROLLBACK")
                .execute(&mut *script.conn)
                .await
                .is_ok(),
        };
        result.map(|_| ()).map_err(store_error)
    }

    pub fn shared(self) -> Arc<Self> {
        Arc::new(self)
    }

    pub async fn close(&self) {
        self.reads.close().await;
        self.writes.close().await;
    }
}

fn store_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            let field = if db.message().contains("username") {
                "username"
            } else {
                "email"
            };
            return StoreError::Conflict(field);
        }
    }
    StoreError::Unavailable(e.to_string())
}

fn time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, StoreError> {
    row.try_get(column)
        .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

/// Usage times as fixed-width RFC 3339 UTC text (microseconds), which sorts as time.
fn usage_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn share_from(row: &SqliteRow, with_snapshot: bool) -> Result<ShareRecord, StoreError> {
    let corrupt =
        |column: &str, e: sqlx::Error| StoreError::Corrupt(format!("shares.{column}: {e}"));
    let hash: Vec<u8> = row
        .try_get("token_hash")
        .map_err(|e| corrupt("token_hash", e))?;
    let created: String = text(row, "created_at")?;
    Ok(ShareRecord {
        id: parse_id("shares.id", &text(row, "id")?)?,
        token_hash: hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("shares.token_hash: not 32 bytes".into()))?,
        chat: parse_id("shares.chat_id", &text(row, "chat_id")?)?,
        owner: parse_id("shares.owner_id", &text(row, "owner_id")?)?,
        scope: text(row, "scope")?,
        branch: parse_id("shares.branch_id", &text(row, "branch_id")?)?,
        messages: row
            .try_get("messages")
            .map_err(|e| corrupt("messages", e))?,
        snapshot: match with_snapshot {
            true => Some(text(row, "snapshot")?),
            false => None,
        },
        created_at: DateTime::parse_from_rfc3339(&created)
            .map_err(|e| StoreError::Corrupt(format!("shares.created_at: {e}")))?
            .with_timezone(&Utc),
    })
}

fn text(row: &SqliteRow, column: &str) -> Result<String, StoreError> {
    row.try_get(column)
        .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn opt_text(row: &SqliteRow, column: &str) -> Result<Option<String>, StoreError> {
    row.try_get(column)
        .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn opt_id<T: FromStr>(row: &SqliteRow, column: &str) -> Result<Option<T>, StoreError> {
    opt_text(row, column)?
        .map(|v| parse_id(column, &v))
        .transpose()
}

fn user_from(row: &SqliteRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        id: parse_id("users.id", &text(row, "id")?)?,
        email: opt_text(row, "email")?,
        username: opt_text(row, "username")?,
        password_hash: text(row, "password_hash")?,
        created_at: time(row, "created_at")?,
        is_admin: row.try_get::<bool, _>("is_admin").unwrap_or(false),
    })
}

fn chat_from(row: &SqliteRow) -> Result<ChatMeta, StoreError> {
    Ok(ChatMeta {
        id: parse_id("chats.id", &text(row, "id")?)?,
        owner: parse_id("chats.owner_id", &text(row, "owner_id")?)?,
        title: opt_text(row, "title")?,
        system_prompt: opt_text(row, "system_prompt")?,
        description: opt_text(row, "description")?,
        active_branch: parse_id("chats.active_branch_id", &text(row, "active_branch_id")?)?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        version: row
            .try_get("version")
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

fn branch_from(row: &SqliteRow) -> Result<Branch, StoreError> {
    Ok(Branch {
        id: parse_id("branches.id", &text(row, "b_id")?)?,
        chat_id: parse_id("branches.chat_id", &text(row, "b_chat_id")?)?,
        name: text(row, "b_name")?,
        head: opt_id(row, "b_head_id")?,
        forked_from: opt_id(row, "b_forked_from_id")?,
        created_at: time(row, "b_created_at")?,
        updated_at: time(row, "b_updated_at")?,
        fallback: opt_id(row, "b_fallback_id")?,
    })
}

/// A chat's messages after the id `?2` (all of them if it is NULL), the first `?3` in id order,
/// as one JSON array of arrays (`MessageRow`s). sqlx hands a query's rows over
/// from its SQLite thread one at a time, each value copied out: several microseconds a row,
/// most of the time of loading a big chat. One row of JSON is one handoff, and SQLite writes it
/// faster than sqlx copies rows out. Chunks keep that text far below SQLite's 1 GB limit on a
/// value whatever the messages hold. The array comes in the subquery's order, which SQLite does
/// not promise for an aggregate (the aggregate's own `ORDER BY` would, with a sort: a fifth of
/// the load's time), so the caller sorts each chunk, in one pass when it is in order.
const LOAD_MESSAGES: &str = "SELECT json_group_array(json_array(id, parent_id, role, content, \
     model, metadata, idempotency_key, created_at)) \
     FROM (SELECT * FROM messages WHERE chat_id = ?1 AND (?2 IS NULL OR id > ?2) \
     ORDER BY id LIMIT ?3)";

/// Messages per `LOAD_MESSAGES` query.
const LOAD_CHUNK: usize = 512;

/// One message of `LOAD_MESSAGES`: id, parent, role, content, model, metadata (JSON text),
/// idempotency key, creation time.
#[derive(serde::Deserialize)]
struct MessageRow(
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

impl MessageRow {
    fn into_message(self, chat_id: ChatId) -> Result<Message, StoreError> {
        let Self(id, parent, role, content, model, metadata, idempotency_key, created_at) = self;
        Ok(Message {
            id: parse_id("messages.id", &id)?,
            chat_id,
            parent_id: parent
                .map(|p| parse_id("messages.parent_id", &p))
                .transpose()?,
            role: Role::from_str(&role)
                .map_err(|_| StoreError::Corrupt(format!("role {role:?}")))?,
            content: Arc::from(content),
            created_at: time_text(&created_at).ok_or_else(|| {
                StoreError::Corrupt(format!("messages.created_at: {created_at:?}"))
            })?,
            model: model.map(Arc::from),
            metadata: parse_metadata(metadata.as_deref())?,
            idempotency_key: idempotency_key.map(Arc::from),
        })
    }
}

/// A time as sqlx reads it from SQLite text: RFC 3339 (what sqlx writes), or one of SQLite's
/// own forms (UTC unless they name an offset).
fn time_text(text: &str) -> Option<DateTime<Utc>> {
    const FORMATS: [&str; 12] = [
        "%F %T%.f",
        "%F %R",
        "%F %RZ",
        "%F %R%:z",
        "%F %T%.fZ",
        "%F %T%.f%:z",
        "%FT%R",
        "%FT%RZ",
        "%FT%R%:z",
        "%FT%T%.f",
        "%FT%T%.fZ",
        "%FT%T%.f%:z",
    ];
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.to_utc());
    }
    FORMATS.iter().find_map(|format| {
        DateTime::parse_from_str(text, format)
            .map(|t| t.to_utc())
            .or_else(|_| NaiveDateTime::parse_from_str(text, format).map(|t| t.and_utc()))
            .ok()
    })
}

const CHAT_COLUMNS: &str = "id, owner_id, title, system_prompt, description, active_branch_id, \
                            created_at, updated_at, version";

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, email, username, password_hash, is_admin, created_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(user.id.to_string())
        .bind(&user.email)
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.is_admin)
        .bind(user.created_at)
        .execute(&self.writes)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.reads)
            .await
            .map_err(store_error)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn user_by_login(&self, login: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM users WHERE email = lower(?1) OR lower(username) = lower(?1) LIMIT 1",
        )
        .bind(login)
        .fetch_optional(&self.reads)
        .await
        .map_err(store_error)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn set_admin(&self, email: &str, admin: bool) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query("UPDATE users SET is_admin = ?1 WHERE email = lower(?2) OR lower(username) = lower(?2) RETURNING *")
            .bind(admin)
            .bind(email.trim())
            .fetch_optional(&self.writes)
            .await
            .map_err(store_error)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn load_chat(&self, id: ChatId) -> Result<Option<StoredChat>, StoreError> {
        // One query: the chat row repeated on each of its branches, with its feedback rows as
        // one JSON array (`[]` for none).
        let rows = sqlx::query(
            "WITH fb AS (
                 SELECT json_group_array(json_object('m', message_id, 'r', rating,
                            't', json(tags), 'c', comment, 'u', updated_at)) AS fb
                 FROM feedback WHERE chat_id = ?1)
             SELECT c.id, c.owner_id, c.title, c.system_prompt, c.description, c.active_branch_id, c.created_at,
                    c.updated_at, c.version,
                    b.id AS b_id, b.chat_id AS b_chat_id, b.name AS b_name, b.head_id AS b_head_id,
                    b.forked_from_id AS b_forked_from_id, b.created_at AS b_created_at,
                    b.updated_at AS b_updated_at, b.fallback_id AS b_fallback_id, fb.fb
             FROM chats c CROSS JOIN fb LEFT JOIN branches b ON b.chat_id = c.id
             WHERE c.id = ?1 ORDER BY b.id",
        )
        .bind(id.to_string())
        .fetch_all(&self.reads)
        .await
        .map_err(store_error)?;
        fold_chat_rows(
            &rows,
            chat_from,
            |row| match opt_text(row, "b_id")?.is_some() {
                true => branch_from(row).map(Some),
                false => Ok(None),
            },
            |row| text(row, "fb"),
        )
    }

    async fn list_chats(
        &self,
        owner: UserId,
        limit: u32,
        before: Option<ChatId>,
    ) -> Result<Vec<ChatMeta>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHAT_COLUMNS} FROM chats
             WHERE owner_id = ?1 AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3"
        ))
        .bind(owner.to_string())
        .bind(before.map(|b| b.to_string()))
        .bind(limit)
        .fetch_all(&self.reads)
        .await
        .map_err(store_error)?;
        rows.iter().map(chat_from).collect()
    }

    async fn apply(&self, batch: &MetaBatch) -> Result<(), StoreError> {
        let holds_messages = self
            .holds_messages
            .load(std::sync::atomic::Ordering::Relaxed);
        self.transaction(|q| push_meta(q, batch, holds_messages))
            .await
    }

    async fn quota_usage(
        &self,
        user: UserId,
        since: NaiveDate,
    ) -> Result<(QuotaSetting, u64), StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM quotas WHERE user_id = ?1) AS set_,
                    (SELECT tokens FROM quotas WHERE user_id = ?1) AS quota,
                    (SELECT COALESCE(SUM(tokens), 0) FROM usage_daily
                     WHERE user_id = ?1 AND day >= ?2) AS used",
        )
        .bind(user.to_string())
        .bind(since.format("%Y-%m-%d").to_string())
        .fetch_one(&self.reads)
        .await
        .map_err(store_error)?;
        let number = |column: &str| -> Result<Option<i64>, StoreError> {
            row.try_get(column)
                .map_err(|e| StoreError::Corrupt(format!("quota {column}: {e}")))
        };
        let setting = super::quota_setting(number("set_")? == Some(1), number("quota")?);
        Ok((setting, number("used")?.unwrap_or(0).max(0).unsigned_abs()))
    }

    async fn set_quota(&self, user: UserId, quota: QuotaSetting) -> Result<(), StoreError> {
        let query = match quota {
            QuotaSetting::Default => {
                sqlx::query("DELETE FROM quotas WHERE user_id = ?1").bind(user.to_string())
            }
            QuotaSetting::Unlimited | QuotaSetting::Tokens(_) => sqlx::query(
                "INSERT INTO quotas (user_id, tokens) VALUES (?1, ?2)
                 ON CONFLICT (user_id) DO UPDATE SET tokens = excluded.tokens",
            )
            .bind(user.to_string())
            .bind(super::quota_tokens(quota)),
        };
        query.execute(&self.writes).await.map_err(store_error)?;
        Ok(())
    }

    async fn all_chats(
        &self,
        after: Option<ChatId>,
        limit: u32,
    ) -> Result<Vec<ChatMeta>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHAT_COLUMNS} FROM chats WHERE (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2"
        ))
        .bind(after.map(|a| a.to_string()))
        .bind(limit)
        .fetch_all(&self.reads)
        .await
        .map_err(store_error)?;
        rows.iter().map(chat_from).collect()
    }

    async fn existing_branches(
        &self,
        ids: &[BranchId],
    ) -> Result<Vec<(BranchId, UserId)>, StoreError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let mut q = QueryBuilder::new(
                "SELECT b.id, c.owner_id FROM branches b JOIN chats c ON c.id = b.chat_id
                 WHERE b.id IN (",
            );
            push_ids(&mut q, chunk);
            for row in q
                .build()
                .fetch_all(&self.reads)
                .await
                .map_err(store_error)?
            {
                found.push((
                    parse_id("branches.id", &text(&row, "id")?)?,
                    parse_id("chats.owner_id", &text(&row, "owner_id")?)?,
                ));
            }
        }
        Ok(found)
    }

    async fn create_share(&self, share: &ShareRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO shares (id, token_hash, chat_id, owner_id, scope, branch_id, messages,
                                 snapshot, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(share.id.to_string())
        .bind(share.token_hash.to_vec())
        .bind(share.chat.to_string())
        .bind(share.owner.to_string())
        .bind(&share.scope)
        .bind(share.branch.to_string())
        .bind(share.messages)
        .bind(share.snapshot.clone().unwrap_or_default())
        .bind(usage_time(share.created_at))
        .execute(&self.writes)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn share_by_token(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<ShareRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM shares WHERE token_hash = ?")
            .bind(token_hash.to_vec())
            .fetch_optional(&self.reads)
            .await
            .map_err(store_error)?;
        row.as_ref().map(|r| share_from(r, true)).transpose()
    }

    async fn list_shares(&self, chat: ChatId) -> Result<Vec<ShareRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, token_hash, chat_id, owner_id, scope, branch_id, messages, created_at
             FROM shares WHERE chat_id = ? ORDER BY id DESC",
        )
        .bind(chat.to_string())
        .fetch_all(&self.reads)
        .await
        .map_err(store_error)?;
        rows.iter().map(|r| share_from(r, false)).collect()
    }

    async fn delete_share(&self, chat: ChatId, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM shares WHERE chat_id = ? AND id = ?")
            .bind(chat.to_string())
            .bind(id.to_string())
            .execute(&self.writes)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn search(
        &self,
        owner: UserId,
        query: &str,
        chat: Option<ChatId>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let Some(matching) = fts_query(owner, query) else {
            return Ok(Vec::new());
        };
        let over_messages = "SELECT d.id AS message_id, d.chat_id,
                    snippet(message_fts, 0, '<mark>', '</mark>', '…', 16) AS snippet,
                    -bm25(message_fts) AS rank
             FROM message_fts JOIN messages d ON d.rowid = message_fts.rowid
             WHERE message_fts MATCH ?1 AND (?2 IS NULL OR d.chat_id = ?2)
             ORDER BY bm25(message_fts), d.id LIMIT ?3 OFFSET ?4";
        let over_docs = "SELECT d.message_id, d.chat_id,
                    snippet(search_fts, 0, '<mark>', '</mark>', '…', 16) AS snippet,
                    -bm25(search_fts) AS rank
             FROM search_fts JOIN search_docs d ON d.rowid = search_fts.rowid
             WHERE search_fts MATCH ?1 AND (?2 IS NULL OR d.chat_id = ?2)
             ORDER BY bm25(search_fts), d.message_id LIMIT ?3 OFFSET ?4";
        let holds_messages = self
            .holds_messages
            .load(std::sync::atomic::Ordering::Relaxed);
        let rows = sqlx::query(if holds_messages {
            over_messages
        } else {
            over_docs
        })
        .bind(matching)
        .bind(chat.map(|c| c.to_string()))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.reads)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                Ok(SearchHit {
                    message: parse_id("search_docs.message_id", &text(row, "message_id")?)?,
                    chat: parse_id("search_docs.chat_id", &text(row, "chat_id")?)?,
                    snippet: text(row, "snippet")?,
                    rank: row
                        .try_get("rank")
                        .map_err(|e| StoreError::Corrupt(format!("search rank: {e}")))?,
                })
            })
            .collect()
    }

    async fn feedback_by_model(&self) -> Result<Vec<FeedbackSum>, StoreError> {
        let rows = sqlx::query(
            "SELECT model, SUM(rating = 'up') AS up, SUM(rating = 'down') AS down
             FROM feedback GROUP BY model ORDER BY model",
        )
        .fetch_all(&self.reads)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let count = |column: &str| -> Result<u64, StoreError> {
                    let n: i64 = row
                        .try_get(column)
                        .map_err(|e| StoreError::Corrupt(format!("feedback {column}: {e}")))?;
                    Ok(n.max(0).unsigned_abs())
                };
                Ok(FeedbackSum {
                    model: opt_text(row, "model")?,
                    up: count("up")?,
                    down: count("down")?,
                })
            })
            .collect()
    }

    async fn usage(
        &self,
        user: Option<UserId>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        group: UsageGroup,
    ) -> Result<Vec<UsageSum>, StoreError> {
        let key = match group {
            UsageGroup::Model => "model",
            UsageGroup::Chat => "chat_id",
            UsageGroup::Day => "substr(created_at, 1, 10)",
            UsageGroup::User => "user_id",
        };
        let rows = sqlx::query(&format!(
            "SELECT {key} AS key, COUNT(*) AS replies, SUM(prompt_tokens) AS prompt,
                    SUM(completion_tokens) AS completion
             FROM usage WHERE (?1 IS NULL OR user_id = ?1) AND created_at >= ?2
                              AND created_at < ?3
             GROUP BY {key} ORDER BY {key}"
        ))
        .bind(user.map(|u| u.to_string()))
        .bind(usage_time(from))
        .bind(usage_time(to))
        .fetch_all(&self.reads)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let number = |column: &str| -> Result<i64, StoreError> {
                    row.try_get(column)
                        .map_err(|e| StoreError::Corrupt(format!("usage.{column}: {e}")))
                };
                Ok(super::usage_sum(
                    text(row, "key")?,
                    number("replies")?,
                    number("prompt")?,
                    number("completion")?,
                ))
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reads)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// Which of `ids` a table's `id` column holds.
async fn existing<T: ToString + std::str::FromStr>(
    pool: &sqlx::SqlitePool,
    table: &str,
    ids: &[T],
) -> Result<Vec<T>, StoreError> {
    let mut found = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let mut q = QueryBuilder::new(format!("SELECT id FROM {table} WHERE id IN ("));
        push_ids(&mut q, chunk);
        for row in q.build().fetch_all(pool).await.map_err(store_error)? {
            found.push(parse_id(&format!("{table}.id"), &text(&row, "id")?)?);
        }
    }
    Ok(found)
}

/// A user as one token of the full-text index's `owner` column.
fn owner_token(user: UserId) -> String {
    format!("u{}", user.as_uuid().simple())
}

/// A search's words as an FTS5 query: each a quoted term (so no word is read as syntax), all
/// required, in the `content` column, for `owner`'s messages only.
fn fts_query(owner: UserId, query: &str) -> Option<String> {
    let terms: Vec<String> = query
        .split(|c: char| c.is_whitespace() || c == '"')
        .filter(|t| !t.is_empty())
        .map(|t| format!("\"{t}\""))
        .collect();
    (!terms.is_empty()).then(|| {
        format!(
            "owner : \"{}\" AND content : ({})",
            owner_token(owner),
            terms.join(" AND ")
        )
    })
}

fn push_ids<T: ToString>(q: &mut QueryBuilder<'_, Sqlite>, ids: &[T]) {
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(id.to_string());
    }
    list.push_unseparated(")");
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn insert(&self, messages: &[Message]) -> Result<(), StoreError> {
        // The metadata is elsewhere (PostgreSQL), and so is the search index.
        self.transaction(|q| push_messages(q, messages, &Default::default()))
            .await
    }

    async fn delete(&self, deletes: &MessageDeletes) -> Result<(), StoreError> {
        self.transaction(|q| push_message_deletes(q, deletes)).await
    }

    async fn existing(&self, ids: &[MessageId]) -> Result<Vec<MessageId>, StoreError> {
        existing(&self.reads, "messages", ids).await
    }

    async fn load_chat(&self, chat: ChatId) -> Result<Vec<Message>, StoreError> {
        let chat_id = chat.to_string();
        let mut messages: Vec<Message> = Vec::new();
        loop {
            let after = messages.last().map(|m| m.id.to_string());
            let json: String = sqlx::query_scalar(LOAD_MESSAGES)
                .bind(&chat_id)
                .bind(after)
                .bind(LOAD_CHUNK as i64)
                .fetch_one(&self.reads)
                .await
                .map_err(store_error)?;
            let rows: Vec<MessageRow> = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("messages of {chat}: {e}")))?;
            let (start, last_chunk) = (messages.len(), rows.len() < LOAD_CHUNK);
            messages.reserve(rows.len());
            for row in rows {
                messages.push(row.into_message(chat)?);
            }
            // The next chunk starts after this one's greatest id.
            messages[start..].sort_by_key(|m| m.id);
            if last_chunk {
                break;
            }
        }
        Ok(messages)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        MetadataStore::ping(self).await
    }
}

/// Both stores are this one file: a whole batch is one transaction.
#[async_trait]
impl BatchStore for SqliteStore {
    async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        // The messages carry their chats' owners: the index over them (triggers) reads them.
        let owners = batch
            .meta
            .indexed
            .iter()
            .filter_map(|d| Some((d.chat, d.owner?)))
            .chain(batch.meta.chats.iter().map(|c| (c.id, c.owner)))
            .collect();
        self.transaction(|q| {
            push_messages(q, &batch.inserts, &owners);
            push_meta(q, &batch.meta, true);
            push_message_deletes(q, &batch.deletes);
        })
        .await
    }
}

/// Appends the statements for the metadata rows of a batch.
/// With `holds_messages`, the messages' own index (over `messages`) is the search index, and
/// `MetaBatch::indexed` / `unindexed` are not written to `search_docs`.
fn push_meta(q: &mut QueryBuilder<'_, Sqlite>, batch: &MetaBatch, holds_messages: bool) {
    for chunk in batch.chats.chunks(CHUNK) {
        q.push(format!("INSERT INTO chats ({CHAT_COLUMNS}) "));
        q.push_values(chunk, |mut b, c| {
            b.push_bind(c.id.to_string())
                .push_bind(c.owner.to_string())
                .push_bind(c.title.clone())
                .push_bind(c.system_prompt.clone())
                .push_bind(c.description.clone())
                .push_bind(c.active_branch.to_string())
                .push_bind(c.created_at)
                .push_bind(c.updated_at)
                .push_bind(c.version);
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET title = excluded.title,
              system_prompt = excluded.system_prompt, description = excluded.description,
              active_branch_id = excluded.active_branch_id,
              updated_at = excluded.updated_at, version = excluded.version
              WHERE excluded.version > chats.version;\n",
        );
    }
    for chunk in batch.branches.chunks(CHUNK) {
        q.push(
            "INSERT INTO branches (id, chat_id, name, head_id, forked_from_id, created_at,
             updated_at, version, fallback_id) ",
        );
        q.push_values(chunk, |mut b, (br, version)| {
            b.push_bind(br.id.to_string())
                .push_bind(br.chat_id.to_string())
                .push_bind(br.name.clone())
                .push_bind(br.head.map(|h| h.to_string()))
                .push_bind(br.forked_from.map(|h| h.to_string()))
                .push_bind(br.created_at)
                .push_bind(br.updated_at)
                .push_bind(*version)
                .push_bind(br.fallback.map(|h| h.to_string()));
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name, head_id = excluded.head_id,
              updated_at = excluded.updated_at, version = excluded.version,
              fallback_id = excluded.fallback_id
              WHERE excluded.version >= branches.version;\n",
        );
    }
    for chunk in batch.deleted_branches.chunks(CHUNK) {
        q.push("DELETE FROM branches WHERE id IN (");
        push_ids(q, chunk);
        q.push(";\n");
    }
    for row in &batch.feedback {
        match &row.feedback {
            Some(f) => {
                q.push(
                    "INSERT INTO feedback (message_id, chat_id, user_id, model, rating, tags,
                     comment, updated_at) VALUES (",
                );
                q.separated(", ")
                    .push_bind(row.message.to_string())
                    .push_bind(row.chat.to_string())
                    .push_bind(row.user.to_string())
                    .push_bind(row.model.as_deref().map(str::to_owned))
                    .push_bind(f.rating.as_str())
                    .push_bind(super::feedback_tags(f))
                    .push_bind(f.comment.clone())
                    .push_bind(usage_time(f.updated_at));
                q.push(
                    ") ON CONFLICT (message_id) DO UPDATE SET rating = excluded.rating,
                      tags = excluded.tags, comment = excluded.comment,
                      updated_at = excluded.updated_at;\n",
                );
            }
            None => {
                q.push("DELETE FROM feedback WHERE message_id = ")
                    .push_bind(row.message.to_string())
                    .push(";\n");
            }
        }
    }
    // The full-text index: new messages in, deleted ones out (their chats' go below).
    let (indexed, unindexed) = match holds_messages {
        true => (&[][..], &[][..]),
        false => (&batch.indexed[..], &batch.unindexed[..]),
    };
    for chunk in indexed.chunks(CHUNK) {
        q.push("INSERT INTO search_docs (message_id, chat_id, owner, content) ");
        q.push_values(chunk, |mut b, d| {
            b.push_bind(d.message.to_string())
                .push_bind(d.chat.to_string())
                .push_bind(d.owner.map(owner_token))
                .push_bind(d.content.to_string());
        });
        q.push(" ON CONFLICT (message_id) DO NOTHING;\n");
        // A chat whose row is not in the batch: its owner from the stored row.
        if chunk.iter().any(|d| d.owner.is_none()) {
            q.push(
                "UPDATE search_docs SET owner = (SELECT 'u' || replace(owner_id, '-', '')
                 FROM chats WHERE chats.id = search_docs.chat_id) WHERE owner IS NULL;\n",
            );
        }
    }
    for chunk in unindexed.chunks(CHUNK) {
        q.push("DELETE FROM search_docs WHERE message_id IN (");
        push_ids(q, chunk);
        q.push(";\n");
    }
    // A day's total grows only by a record that is new (`changes()` of its insert).
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for usage in &batch.usage {
        let at = usage_time(usage.at);
        q.push(
            "INSERT INTO usage (generation_id, user_id, chat_id, model, prompt_tokens,
                                completion_tokens, created_at) VALUES (",
        );
        q.separated(", ")
            .push_bind(usage.generation.to_string())
            .push_bind(usage.user.to_string())
            .push_bind(usage.chat.to_string())
            .push_bind(usage.model.clone())
            .push_bind(clamp(usage.prompt_tokens))
            .push_bind(clamp(usage.completion_tokens))
            .push_bind(at.clone());
        q.push(") ON CONFLICT (generation_id) DO NOTHING;\n");
        q.push("INSERT INTO usage_daily (user_id, day, replies, tokens) SELECT ")
            .push_bind(usage.user.to_string())
            .push(", substr(")
            .push_bind(at)
            .push(", 1, 10), 1, ")
            .push_bind(clamp(
                usage.prompt_tokens.saturating_add(usage.completion_tokens),
            ))
            .push(
                " WHERE changes() = 1 ON CONFLICT (user_id, day) DO UPDATE
                  SET replies = replies + 1, tokens = tokens + excluded.tokens;\n",
            );
    }
    for chunk in batch.deleted_chats.chunks(CHUNK) {
        for table in [
            "DELETE FROM search_docs WHERE chat_id IN (",
            "DELETE FROM shares WHERE chat_id IN (",
            "DELETE FROM feedback WHERE chat_id IN (",
            "DELETE FROM branches WHERE chat_id IN (",
            "DELETE FROM chats WHERE id IN (",
        ] {
            q.push(table);
            push_ids(q, chunk);
            q.push(";\n");
        }
    }
}

/// Appends the statements for message inserts (idempotent by id).
fn push_messages(
    q: &mut QueryBuilder<'_, Sqlite>,
    messages: &[Message],
    owners: &std::collections::HashMap<ChatId, UserId>,
) {
    for chunk in messages.chunks(CHUNK) {
        q.push(
            "INSERT INTO messages (id, chat_id, parent_id, role, content, model, metadata,
             idempotency_key, created_at, owner) ",
        );
        q.push_values(chunk, |mut b, m| {
            b.push_bind(m.id.to_string())
                .push_bind(m.chat_id.to_string())
                .push_bind(m.parent_id.map(|p| p.to_string()))
                .push_bind(m.role.as_str())
                .push_bind(m.content.to_string())
                .push_bind(m.model.as_deref().map(str::to_owned))
                .push_bind(m.metadata.as_ref().map(|v| v.to_string()))
                .push_bind(m.idempotency_key.as_deref().map(str::to_owned))
                .push_bind(m.created_at)
                .push_bind(owners.get(&m.chat_id).map(|o| owner_token(*o)));
        });
        q.push(" ON CONFLICT (id) DO NOTHING;\n");
    }
}

/// Appends the statements for message deletions.
fn push_message_deletes(q: &mut QueryBuilder<'_, Sqlite>, deletes: &MessageDeletes) {
    for chunk in deletes.messages.chunks(CHUNK) {
        q.push("DELETE FROM messages WHERE id IN (");
        push_ids::<MessageId>(q, chunk);
        q.push(";\n");
    }
    for chunk in deletes.chats.chunks(CHUNK) {
        q.push("DELETE FROM messages WHERE chat_id IN (");
        push_ids::<ChatId>(q, chunk);
        q.push(";\n");
    }
}

fn node_from(row: &SqliteRow, now_ms: i64) -> Result<NodeSeen, StoreError> {
    let heartbeat: i64 = row
        .try_get("heartbeat_ms")
        .map_err(|e| StoreError::Corrupt(format!("nodes.heartbeat_ms: {e}")))?;
    let pid: i64 = row
        .try_get("pid")
        .map_err(|e| StoreError::Corrupt(format!("nodes.pid: {e}")))?;
    Ok(NodeSeen {
        node: NodeRecord {
            id: parse_id("nodes.id", &text(row, "id")?)?,
            address: text(row, "address")?,
            host: text(row, "host")?,
            pid: u32::try_from(pid).unwrap_or(u32::MAX),
            started_at: time(row, "started_at")?,
            cluster: row
                .try_get::<i64, _>("cluster")
                .map_err(|e| StoreError::Corrupt(format!("nodes.cluster: {e}")))?
                != 0,
            incarnation: row
                .try_get("incarnation")
                .map_err(|e| StoreError::Corrupt(format!("nodes.incarnation: {e}")))?,
        },
        heartbeat_age: Duration::from_millis(u64::try_from(now_ms - heartbeat).unwrap_or(0)),
    })
}

/// The membership table (`crate::membership`): its join is one `BEGIN IMMEDIATE` transaction on
/// the write connection, which other processes on the same file wait for.
#[async_trait]
impl MembershipStore for SqliteStore {
    async fn join(
        &self,
        node: &NodeRecord,
        ttl: Duration,
        known_dead: KnownDead,
    ) -> Result<Vec<NodeSeen>, StoreError> {
        let mut conn = self.writes.acquire().await.map_err(store_error)?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        let joined = async {
            let now = Utc::now().timestamp_millis();
            let rows = sqlx::query("SELECT * FROM nodes")
                .fetch_all(&mut *conn)
                .await
                .map_err(store_error)?;
            let seen = rows
                .iter()
                .map(|r| node_from(r, now))
                .collect::<Result<Vec<_>, _>>()?;
            let (dead, live) = split_dead(node, seen, ttl, &known_dead);
            for gone in &dead {
                sqlx::query("DELETE FROM nodes WHERE id = ?")
                    .bind(gone.node.id.to_string())
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?;
            }
            if live.is_empty() {
                sqlx::query(
                    "INSERT OR REPLACE INTO nodes
                        (id, address, host, pid, started_at, heartbeat_ms, cluster, incarnation)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(node.id.to_string())
                .bind(&node.address)
                .bind(&node.host)
                .bind(i64::from(node.pid))
                .bind(node.started_at)
                .bind(now)
                .bind(i64::from(node.cluster))
                .bind(node.incarnation)
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
            }
            Ok::<_, StoreError>(live)
        }
        .await;
        let end = if joined.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        joined
    }

    async fn heartbeat(&self, id: Uuid, ttl: Duration) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let done =
            sqlx::query("UPDATE nodes SET heartbeat_ms = ? WHERE id = ? AND heartbeat_ms > ?")
                .bind(now)
                .bind(id.to_string())
                .bind(now.saturating_sub(ttl))
                .execute(&self.writes)
                .await
                .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn leave(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM nodes WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.writes)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeSeen>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let rows = sqlx::query("SELECT * FROM nodes ORDER BY id")
            .fetch_all(&self.reads)
            .await
            .map_err(store_error)?;
        rows.iter().map(|r| node_from(r, now)).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn open() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), SqliteSync::Normal, 1_000, 512)
            .await
            .unwrap();
        (store, dir)
    }

    /// Past 64 KiB a statement journal spilled to a new temp file per statement (seen under
    /// `strace` as one `etilqs_*` file created and unlinked per batch commit).
    #[actix_web::test]
    async fn statement_journals_stay_in_memory_on_every_connection() {
        let (store, _dir) = open().await;
        for pool in [&store.writes, &store.reads] {
            let mode: i64 = sqlx::query_scalar("PRAGMA temp_store")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(mode, 2, "temp_store is not MEMORY");
        }
    }

    /// The read connections take the configured page cache (`-512`: 512 KiB); the write
    /// connection keeps SQLite's default (2,000 KiB).
    #[actix_web::test]
    async fn read_connections_take_the_configured_cache() {
        let (store, _dir) = open().await;
        for (pool, expected) in [(&store.reads, -512), (&store.writes, -2000)] {
            let size: i64 = sqlx::query_scalar("PRAGMA cache_size")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(size, expected);
        }
    }

    /// The times a chat's load reads from text: what sqlx writes, and SQLite's own forms.
    #[test]
    fn times_are_read_as_sqlx_reads_them() {
        let at = |text: &str| time_text(text).map(|t| t.to_rfc3339());
        let expected = Some("2026-11-23T06:41:01.123+00:00".to_owned());
        for text in [
            "2026-11-23T06:41:01.123+00:00",
            "2026-11-23T06:41:01.123Z",
            "2026-11-23T08:41:01.123+02:00",
            "2026-11-23 06:41:01.123",
            "2026-11-23T06:41:01.123",
        ] {
            assert_eq!(at(text), expected, "{text}");
        }
        assert_eq!(
            at("2026-11-23 06:41").as_deref(),
            Some("2026-11-23T06:41:00+00:00")
        );
        // What sqlx writes for a whole second: no fraction.
        let time = DateTime::parse_from_rfc3339("2026-11-23T06:41:01Z")
            .unwrap()
            .to_utc();
        assert_eq!(time_text("2026-11-23T06:41:01+00:00"), Some(time));
        for bad in ["", "yesterday", "2026-13-01T00:00:00Z", "1764000000"] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    /// The store writes times as sqlx encodes them, and reads them back as `time_text` does.
    #[actix_web::test]
    async fn stored_times_are_read_back_exactly() {
        let (store, _dir) = open().await;
        let now = arbor_actors::model::now();
        let text: String = sqlx::query_scalar("SELECT ?")
            .bind(now)
            .fetch_one(&store.reads)
            .await
            .unwrap();
        assert_eq!(time_text(&text), Some(now), "{text}");
    }
}
