//! Metadata (users, chats, branches) in PostgreSQL, via sqlx.
//!
//! The upserts of a write-behind batch are one statement: the chat and branch rows come in as
//! column arrays (`UNNEST`). One round trip, atomic on its own, and the same prepared statement
//! whatever the batch holds. Deletions, rare, are a second statement sent only when a batch has
//! any (in one transaction with the upserts then).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_actors::model::{
    Branch, BranchId, ChatId, ChatMeta, Feedback, FeedbackRow, MessageId, UserId, UserRecord,
};
use arbor_actors::ports::{
    FeedbackSum, Fence, MetaBatch, MetadataStore, QuotaSetting, SearchHit, ShareRecord, StoreError,
    StoredChat, UsageGroup, UsageRecord, UsageSum,
};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use uuid::Uuid;

use super::fold_chat_rows;
use crate::cluster::leases::{Lease, LeaseStore, Snapshot};
use crate::membership::{split_dead, KnownDead, MembershipStore, NodeRecord, NodeSeen};

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Where the pool's calls run (see [`PoolThread`]).
    io: Arc<PoolThread>,
    timeout: Duration,
    /// The write-behind writer's own connection (`apply`), beside the pool: one batch at a time
    /// needs one connection, and keeping it spares each batch the pool's check-out and the
    /// `Sync` round trip sqlx sends on every connection coming back to the pool (which
    /// PostgreSQL serves while the next batch's statement is on its way). Dropped on any error;
    /// the next batch connects again.
    writer: Arc<tokio::sync::Mutex<Option<Held>>>,
    options: PgConnectOptions,
    connect_timeout: Duration,
}

/// The pool's own thread, running a tokio runtime the store owns: every pool call runs there.
///
/// A connection belongs to the runtime that opened it, and breaks when that runtime stops. Chats
/// activate on the HTTP workers' threads, each a runtime of its own that stops with the HTTP
/// server, and the shutdown that follows still loads chats (to store the replies it cut short):
/// a connection opened on a worker would fail it. The writer's connection is opened on the
/// writer's runtime, which lives until the end.
struct PoolThread {
    handle: tokio::runtime::Handle,
    /// Dropped with the store: the thread's runtime ends, cancelling what still runs on it.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl PoolThread {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("arbor-postgres".into())
            .spawn(move || runtime.block_on(async move { stopped.await.ok() }))?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }
}

/// Cancels the pool call when its caller goes away, as awaiting the query in place would.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection kept between calls, and when it last answered.
struct Held {
    conn: PgConnection,
    used: Instant,
}

impl PostgresStore {
    /// Connects, creates `schema` if one is given and missing, and applies the migrations from
    /// `migrations/postgres` (on a connection of their own, without the statement timeout; an
    /// advisory lock keeps concurrent starts apart).
    pub async fn open(
        url: &str,
        schema: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .context("parsing storage.postgres_url")?
            .application_name("arbor");
        if !schema.is_empty() {
            anyhow::ensure!(
                valid_schema(schema),
                "storage.postgres_schema must be lower-case letters, digits and '_', not starting with a digit"
            );
        }
        let mut admin = connect_at_startup(&options, timeout).await?;
        if !schema.is_empty() {
            sqlx::raw_sql(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
            ))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating schema {schema}"))?;
            options = options.options([("search_path", schema)]);
        }
        sqlx::migrate!("./migrations/postgres")
            .run(&mut admin)
            .await
            .context("applying PostgreSQL migrations")?;
        admin.close().await.ok();
        // The server cancels a statement that runs too long, so its outcome is known (rolled
        // back). A client-side timeout could drop a statement the server then commits: a write
        // reported as failed that is stored after all.
        options = options.options([("statement_timeout", timeout.as_millis())]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(timeout)
            // sqlx pings every connection it hands out by default: a round trip before each
            // pool call (an activation's metadata load, an account lookup; the writer has its
            // own connection). A connection in use moments ago is alive; one idle for longer (a
            // server restart may have cut it) is still checked. sqlx tests every connection as
            // it comes back to the pool, too, and closes a broken one.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= UNCHECKED_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            io: Arc::new(PoolThread::start().context("starting the PostgreSQL pool's thread")?),
            // Last resort for a server that stopped answering altogether (the connection is not
            // closed): beyond the acquire and statement bounds above.
            timeout: timeout * 2 + Duration::from_secs(1),
            writer: Arc::default(),
            options,
            connect_timeout: timeout,
        })
    }

    pub async fn close(&self) {
        if let Some(held) = self.writer.lock().await.take() {
            let _ = held.conn.close().await;
        }
        self.pool.close().await;
    }

    /// The writer's connection: the one kept from the last call (pinged first if it has been
    /// idle, like the pool's), or a new one.
    async fn writer_connection(&self, held: Option<Held>) -> Result<PgConnection, sqlx::Error> {
        if let Some(Held { mut conn, used }) = held {
            if used.elapsed() < UNCHECKED_IDLE || conn.ping().await.is_ok() {
                return Ok(conn);
            }
        }
        let connect = PgConnection::connect_with(&self.options);
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connecting to PostgreSQL took over {:?}",
                        self.connect_timeout
                    ),
                )))
            })
    }

    /// Runs one pool call on the pool's thread (see [`PoolThread`]), within the last-resort
    /// bound. `call` gets the pool.
    async fn pooled<T, F>(&self, call: impl FnOnce(PgPool) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, sqlx::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let mut task = AbortOnDrop(self.io.handle.spawn(call(self.pool.clone())));
        match tokio::time::timeout(self.timeout, &mut task.0).await {
            Ok(Ok(result)) => result.map_err(store_error),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "the PostgreSQL call did not finish: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "PostgreSQL did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Runs one store call within the last-resort bound.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(store_error),
            Err(_) => Err(StoreError::Unavailable(format!(
                "PostgreSQL did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}

/// How long a pooled connection may sit idle and still be handed out without a ping.
const UNCHECKED_IDLE: Duration = Duration::from_secs(1);

/// A plain identifier, safe to splice into `CREATE SCHEMA` unquoted.
fn valid_schema(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Sorts sqlx errors into the port's kinds: unique violations are conflicts, errors the server
/// raised about the data itself are rejections, everything else (I/O, pool, protocol) is an
/// outage worth retrying.
fn store_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(match db.constraint() {
                Some(c) if c.contains("username") => "username",
                _ => "email",
            })
        }
        sqlx::Error::Database(db) => match db.code() {
            // Class 08 (connection), 40 (serialization, deadlock), 53 (resources), 57
            // (operator intervention: shutdown) and 58 (system) are transient.
            Some(code) if matches!(&code[..2], "08" | "40" | "53" | "57" | "58") => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Rejected(e.to_string()),
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column)
        .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn user_from(row: &PgRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        id: UserId::from_uuid(get(row, "id")?),
        email: get(row, "email")?,
        username: get(row, "username")?,
        password_hash: get(row, "password_hash")?,
        created_at: get(row, "created_at")?,
        is_admin: get(row, "is_admin")?,
    })
}

fn chat_from(row: &PgRow) -> Result<ChatMeta, StoreError> {
    Ok(ChatMeta {
        id: ChatId::from_uuid(get(row, "id")?),
        owner: UserId::from_uuid(get(row, "owner_id")?),
        title: get(row, "title")?,
        system_prompt: get(row, "system_prompt")?,
        description: get(row, "description")?,
        active_branch: BranchId::from_uuid(get(row, "active_branch_id")?),
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        version: get(row, "version")?,
    })
}

fn branch_from(row: &PgRow) -> Result<Branch, StoreError> {
    Ok(Branch {
        id: BranchId::from_uuid(get(row, "b_id")?),
        chat_id: ChatId::from_uuid(get(row, "b_chat_id")?),
        name: get(row, "b_name")?,
        head: get::<Option<Uuid>>(row, "b_head_id")?.map(MessageId::from_uuid),
        forked_from: get::<Option<Uuid>>(row, "b_forked_from_id")?.map(MessageId::from_uuid),
        created_at: get(row, "b_created_at")?,
        updated_at: get(row, "b_updated_at")?,
        fallback: get::<Option<Uuid>>(row, "b_fallback_id")?.map(MessageId::from_uuid),
    })
}

const CHAT_COLUMNS: &str = "id, owner_id, title, system_prompt, description, active_branch_id, \
                            created_at, updated_at, version";

/// The upserts of a batch, one statement. Deletions are a separate statement, sent only when a
/// batch has any: a generic plan for an `id = ANY($1) OR chat_id = ANY($2)` delete may be a
/// sequential scan of `branches`, which grows with every fork.
const UPSERT: &str = "
WITH search AS (
    INSERT INTO search_docs (message_id, chat_id, owner_id, content)
    SELECT m, c, COALESCE(o, (SELECT owner_id FROM chats WHERE id = c)), t
    FROM UNNEST($19::uuid[], $20::uuid[], $21::uuid[], $22::text[]) AS d(m, c, o, t)
    ON CONFLICT (message_id) DO NOTHING
), upsert_chats AS (
    INSERT INTO chats (id, owner_id, title, system_prompt, active_branch_id, created_at,
                       updated_at, version, description)
    SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[],
                         $6::timestamptz[], $7::timestamptz[], $8::int8[], $17::text[])
    ON CONFLICT (id) DO UPDATE SET title = excluded.title,
        system_prompt = excluded.system_prompt, description = excluded.description,
        active_branch_id = excluded.active_branch_id,
        updated_at = excluded.updated_at, version = excluded.version
    WHERE excluded.version > chats.version
)
INSERT INTO branches (id, chat_id, name, head_id, forked_from_id, created_at, updated_at,
                      version, fallback_id)
SELECT * FROM UNNEST($9::uuid[], $10::uuid[], $11::text[], $12::uuid[], $13::uuid[],
                     $14::timestamptz[], $15::timestamptz[], $16::int8[], $18::uuid[])
ON CONFLICT (id) DO UPDATE SET name = excluded.name, head_id = excluded.head_id,
    updated_at = excluded.updated_at, version = excluded.version,
    fallback_id = excluded.fallback_id
WHERE excluded.version >= branches.version";

/// [`UPSERT`] under fences ($19 shards, $20 epochs), in one statement: the lease rows are locked
/// `FOR SHARE` (a takeover, which updates them, comes wholly before or after), the rows are
/// written only if every fence still holds, and the stale fences are returned.
const FENCED_UPSERT: &str = "
WITH held AS (
    SELECT shard, epoch FROM shards WHERE shard = ANY($19::int4[]) FOR SHARE
), stale AS (
    SELECT f.shard, f.epoch FROM UNNEST($19::int4[], $20::int8[]) AS f(shard, epoch)
    LEFT JOIN held h ON h.shard = f.shard AND h.epoch = f.epoch
    WHERE h.shard IS NULL
), search AS (
    INSERT INTO search_docs (message_id, chat_id, owner_id, content)
    SELECT m, c, COALESCE(o, (SELECT owner_id FROM chats WHERE id = c)), t
    FROM UNNEST($21::uuid[], $22::uuid[], $23::uuid[], $24::text[]) AS d(m, c, o, t)
    WHERE NOT EXISTS (SELECT 1 FROM stale)
    ON CONFLICT (message_id) DO NOTHING
), upsert_chats AS (
    INSERT INTO chats (id, owner_id, title, system_prompt, active_branch_id, created_at,
                       updated_at, version, description)
    SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[],
                         $6::timestamptz[], $7::timestamptz[], $8::int8[], $17::text[])
    WHERE NOT EXISTS (SELECT 1 FROM stale)
    ON CONFLICT (id) DO UPDATE SET title = excluded.title,
        system_prompt = excluded.system_prompt, description = excluded.description,
        active_branch_id = excluded.active_branch_id,
        updated_at = excluded.updated_at, version = excluded.version
    WHERE excluded.version > chats.version
), upsert_branches AS (
    INSERT INTO branches (id, chat_id, name, head_id, forked_from_id, created_at, updated_at,
                          version, fallback_id)
    SELECT * FROM UNNEST($9::uuid[], $10::uuid[], $11::text[], $12::uuid[], $13::uuid[],
                         $14::timestamptz[], $15::timestamptz[], $16::int8[], $18::uuid[])
    WHERE NOT EXISTS (SELECT 1 FROM stale)
    ON CONFLICT (id) DO UPDATE SET name = excluded.name, head_id = excluded.head_id,
        updated_at = excluded.updated_at, version = excluded.version,
        fallback_id = excluded.fallback_id
    WHERE excluded.version >= branches.version
)
SELECT shard, epoch FROM stale";

/// Deleted branches ($1), deleted chats with their branches ($2), deleted messages out of the
/// full-text index ($3). Each condition gets its own index scan.
const DELETE: &str = "
WITH search_by_id AS (
    DELETE FROM search_docs WHERE message_id = ANY($3::uuid[])
), search_by_chat AS (
    DELETE FROM search_docs WHERE chat_id = ANY($2::uuid[])
), by_id AS (
    DELETE FROM branches WHERE id = ANY($1::uuid[])
), by_chat AS (
    DELETE FROM branches WHERE chat_id = ANY($2::uuid[])
), feedback_by_chat AS (
    DELETE FROM feedback WHERE chat_id = ANY($2::uuid[])
), shares_by_chat AS (
    DELETE FROM shares WHERE chat_id = ANY($2::uuid[])
)
DELETE FROM chats WHERE id = ANY($2::uuid[])";

/// Feedback taken back (`$1`) and set (the rest, one array per column).
const FEEDBACK: &str = "
WITH taken_back AS (
    DELETE FROM feedback WHERE message_id = ANY($1::uuid[])
)
INSERT INTO feedback (message_id, chat_id, user_id, model, rating, tags, comment, updated_at)
SELECT m, c, u, model, r, t::jsonb, note, at
FROM UNNEST($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::timestamptz[]) AS f(m, c, u, model, r, t, note, at)
ON CONFLICT (message_id) DO UPDATE SET rating = excluded.rating, tags = excluded.tags,
    comment = excluded.comment, updated_at = excluded.updated_at";

/// Replies' usage, one array per column: each record once per generation, and a new one
/// added to its user's day.
const USAGE: &str = "
WITH new AS (
    INSERT INTO usage (generation_id, user_id, chat_id, model, prompt_tokens, completion_tokens,
                       created_at)
    SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int8[], $6::int8[],
                         $7::timestamptz[])
    ON CONFLICT (generation_id) DO NOTHING
    RETURNING user_id, (created_at AT TIME ZONE 'UTC')::date AS day,
              prompt_tokens + completion_tokens AS tokens
)
INSERT INTO usage_daily (user_id, day, replies, tokens)
SELECT user_id, day, COUNT(*), SUM(tokens) FROM new GROUP BY user_id, day
ON CONFLICT (user_id, day) DO UPDATE
SET replies = usage_daily.replies + excluded.replies, tokens = usage_daily.tokens + excluded.tokens";

/// The statement that records a batch's usage ([`USAGE`]).
fn usage_statement(
    records: &[UsageRecord],
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    sqlx::query(USAGE)
        .bind(uuids(records, |r| *r.generation.as_uuid()))
        .bind(uuids(records, |r| *r.user.as_uuid()))
        .bind(uuids(records, |r| *r.chat.as_uuid()))
        .bind(records.iter().map(|r| r.model.clone()).collect::<Vec<_>>())
        .bind(
            records
                .iter()
                .map(|r| clamp(r.prompt_tokens))
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| clamp(r.completion_tokens))
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.at).collect::<Vec<_>>())
}

/// The statement that writes a batch's feedback rows ([`FEEDBACK`]).
fn feedback_statement(
    rows: &[FeedbackRow],
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (set, taken_back): (Vec<&FeedbackRow>, Vec<&FeedbackRow>) =
        rows.iter().partition(|r| r.feedback.is_some());
    let set: Vec<(&FeedbackRow, &Feedback)> = set
        .into_iter()
        .filter_map(|r| Some((r, r.feedback.as_deref()?)))
        .collect();
    sqlx::query(FEEDBACK)
        .bind(uuids(&taken_back, |r| *r.message.as_uuid()))
        .bind(uuids(&set, |(r, _)| *r.message.as_uuid()))
        .bind(uuids(&set, |(r, _)| *r.chat.as_uuid()))
        .bind(uuids(&set, |(r, _)| *r.user.as_uuid()))
        .bind(
            set.iter()
                .map(|(r, _)| r.model.as_deref().map(str::to_owned))
                .collect::<Vec<_>>(),
        )
        .bind(
            set.iter()
                .map(|(_, f)| f.rating.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            set.iter()
                .map(|(_, f)| super::feedback_tags(f))
                .collect::<Vec<_>>(),
        )
        .bind(
            set.iter()
                .map(|(_, f)| f.comment.clone())
                .collect::<Vec<_>>(),
        )
        .bind(set.iter().map(|(_, f)| f.updated_at).collect::<Vec<_>>())
}

fn share_from(row: &PgRow, with_snapshot: bool) -> Result<ShareRecord, StoreError> {
    let hash: Vec<u8> = get(row, "token_hash")?;
    let messages: i32 = get(row, "messages")?;
    Ok(ShareRecord {
        id: get(row, "id")?,
        token_hash: hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("shares.token_hash: not 32 bytes".into()))?,
        chat: ChatId::from_uuid(get(row, "chat_id")?),
        owner: UserId::from_uuid(get(row, "owner_id")?),
        scope: get(row, "scope")?,
        branch: BranchId::from_uuid(get(row, "branch_id")?),
        messages: u32::try_from(messages).unwrap_or(0),
        snapshot: match with_snapshot {
            true => Some(get(row, "snapshot")?),
            false => None,
        },
        created_at: get(row, "created_at")?,
    })
}

fn uuids<T>(items: &[T], id: impl Fn(&T) -> Uuid) -> Vec<Uuid> {
    items.iter().map(id).collect()
}

#[async_trait]
impl MetadataStore for PostgresStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let user = user.clone();
        self.pooled(|pool| async move {
            sqlx::query(
                "INSERT INTO users (id, email, username, password_hash, is_admin, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(user.id.as_uuid())
            .bind(&user.email)
            .bind(&user.username)
            .bind(&user.password_hash)
            .bind(user.is_admin)
            .bind(user.created_at)
            .execute(&pool)
            .await
        })
        .await?;
        Ok(())
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let row = self
            .pooled(|pool| async move {
                sqlx::query("SELECT * FROM users WHERE id = $1")
                    .bind(id.as_uuid())
                    .fetch_optional(&pool)
                    .await
            })
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    async fn user_by_login(&self, login: &str) -> Result<Option<UserRecord>, StoreError> {
        let login = login.to_owned();
        let row = self
            .pooled(|pool| async move {
                sqlx::query(
                    "SELECT * FROM users WHERE email = lower($1) OR lower(username) = lower($1)
                     LIMIT 1",
                )
                .bind(login)
                .fetch_optional(&pool)
                .await
            })
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    async fn set_admin(&self, email: &str, admin: bool) -> Result<Option<UserRecord>, StoreError> {
        let email = email.trim().to_owned();
        let row = self
            .pooled(|pool| async move {
                sqlx::query("UPDATE users SET is_admin = $1 WHERE email = lower($2) OR lower(username) = lower($2) RETURNING *")
                    .bind(admin)
                    .bind(email)
                    .fetch_optional(&pool)
                    .await
            })
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    async fn load_chat(&self, id: ChatId) -> Result<Option<StoredChat>, StoreError> {
        // One query: the chat row repeated on each of its branches, with its feedback rows as
        // one JSON array (`[]` for none).
        let rows = self
            .pooled(|pool| async move {
                sqlx::query(
                    "WITH fb AS (
                         SELECT COALESCE(jsonb_agg(jsonb_build_object('m', message_id,
                                    'r', rating, 't', tags, 'c', comment, 'u', updated_at)),
                                    '[]')::text AS fb
                         FROM feedback WHERE chat_id = $1)
                     SELECT c.id, c.owner_id, c.title, c.system_prompt, c.description,
                            c.active_branch_id,
                            c.created_at, c.updated_at, c.version,
                            b.id AS b_id, b.chat_id AS b_chat_id, b.name AS b_name,
                            b.head_id AS b_head_id, b.forked_from_id AS b_forked_from_id,
                            b.created_at AS b_created_at, b.updated_at AS b_updated_at,
                            b.fallback_id AS b_fallback_id, fb.fb
                     FROM chats c CROSS JOIN fb LEFT JOIN branches b ON b.chat_id = c.id
                     WHERE c.id = $1 ORDER BY b.id",
                )
                .bind(id.as_uuid())
                .fetch_all(&pool)
                .await
            })
            .await?;
        fold_chat_rows(
            &rows,
            chat_from,
            |row| match get::<Option<Uuid>>(row, "b_id")?.is_some() {
                true => branch_from(row).map(Some),
                false => Ok(None),
            },
            |row| get(row, "fb"),
        )
    }

    async fn list_chats(
        &self,
        owner: UserId,
        limit: u32,
        before: Option<ChatId>,
    ) -> Result<Vec<ChatMeta>, StoreError> {
        let rows = self
            .pooled(|pool| async move {
                sqlx::query(&format!(
                    "SELECT {CHAT_COLUMNS} FROM chats
                     WHERE owner_id = $1 AND ($2::uuid IS NULL OR id < $2)
                     ORDER BY id DESC LIMIT $3"
                ))
                .bind(owner.as_uuid())
                .bind(before.map(|b| *b.as_uuid()))
                .bind(i64::from(limit))
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter().map(chat_from).collect()
    }

    async fn apply(&self, batch: &MetaBatch) -> Result<(), StoreError> {
        let chats = &batch.chats;
        let branches = &batch.branches;
        let upserts = !chats.is_empty() || !branches.is_empty() || !batch.indexed.is_empty();
        let deletes = !batch.deleted_branches.is_empty()
            || !batch.deleted_chats.is_empty()
            || !batch.unindexed.is_empty();
        let times = |f: fn(&ChatMeta) -> DateTime<Utc>| chats.iter().map(f).collect::<Vec<_>>();
        let branch_times = |f: fn(&Branch) -> DateTime<Utc>| {
            branches.iter().map(|(b, _)| f(b)).collect::<Vec<_>>()
        };
        let fences = &batch.fences;
        // One statement checks the fences and writes; with deletions a transaction does.
        let fenced_upsert = !fences.is_empty() && !deletes;
        let upsert = sqlx::query(if fenced_upsert { FENCED_UPSERT } else { UPSERT })
            .bind(uuids(chats, |c| *c.id.as_uuid()))
            .bind(uuids(chats, |c| *c.owner.as_uuid()))
            .bind(chats.iter().map(|c| c.title.clone()).collect::<Vec<_>>())
            .bind(
                chats
                    .iter()
                    .map(|c| c.system_prompt.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(uuids(chats, |c| *c.active_branch.as_uuid()))
            .bind(times(|c| c.created_at))
            .bind(times(|c| c.updated_at))
            .bind(chats.iter().map(|c| c.version).collect::<Vec<_>>())
            .bind(uuids(branches, |(b, _)| *b.id.as_uuid()))
            .bind(uuids(branches, |(b, _)| *b.chat_id.as_uuid()))
            .bind(
                branches
                    .iter()
                    .map(|(b, _)| b.name.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                branches
                    .iter()
                    .map(|(b, _)| b.head.map(|h| *h.as_uuid()))
                    .collect::<Vec<_>>(),
            )
            .bind(
                branches
                    .iter()
                    .map(|(b, _)| b.forked_from.map(|h| *h.as_uuid()))
                    .collect::<Vec<_>>(),
            )
            .bind(branch_times(|b| b.created_at))
            .bind(branch_times(|b| b.updated_at))
            .bind(branches.iter().map(|(_, v)| *v).collect::<Vec<_>>())
            .bind(
                chats
                    .iter()
                    .map(|c| c.description.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                branches
                    .iter()
                    .map(|(b, _)| b.fallback.map(|h| *h.as_uuid()))
                    .collect::<Vec<_>>(),
            );
        let upsert = match fenced_upsert {
            true => upsert
                .bind(
                    fences
                        .iter()
                        .map(|f| i32::from(f.shard))
                        .collect::<Vec<_>>(),
                )
                .bind(fences.iter().map(|f| f.epoch).collect::<Vec<_>>()),
            false => upsert,
        };
        // The full-text index's new rows, after the fences (if any).
        let indexed = &batch.indexed;
        let upsert = upsert
            .bind(uuids(indexed, |d| *d.message.as_uuid()))
            .bind(uuids(indexed, |d| *d.chat.as_uuid()))
            .bind(
                indexed
                    .iter()
                    .map(|d| d.owner.map(|o| *o.as_uuid()))
                    .collect::<Vec<_>>(),
            )
            .bind(
                indexed
                    .iter()
                    .map(|d| d.content.to_string())
                    .collect::<Vec<_>>(),
            );
        let delete = sqlx::query(DELETE)
            .bind(uuids(&batch.deleted_branches, |b| *b.as_uuid()))
            .bind(uuids(&batch.deleted_chats, |c| *c.as_uuid()))
            .bind(uuids(&batch.unindexed, |m| *m.as_uuid()));
        // Feedback and usage rows go in the transaction's path: `rated` joins it.
        let rated = !batch.feedback.is_empty() || !batch.usage.is_empty();
        let feedback = feedback_statement(&batch.feedback);
        let usage = usage_statement(&batch.usage);
        let (has_feedback, has_usage) = (!batch.feedback.is_empty(), !batch.usage.is_empty());
        if !upserts && !deletes && !rated && fences.is_empty() {
            return Ok(());
        }
        let stale = self
            .bounded(async {
                // Taken out for the call: if it fails, or this future is dropped midway (the
                // bound), the connection goes with it rather than back in a state nobody knows.
                let mut held = self.writer.lock().await;
                let mut conn = self.writer_connection(held.take()).await?;
                let mut stale = Vec::new();
                // One statement is atomic on its own; more need a transaction. Fences are
                // checked in it, holding their lease rows (`FOR SHARE`) until the commit: a
                // takeover, which updates the row, waits for the commit or comes before it.
                match (upserts, deletes, fences.is_empty(), rated) {
                    (true, false, true, false) => {
                        upsert.execute(&mut conn).await?;
                    }
                    (true, false, false, false) => {
                        for row in upsert.fetch_all(&mut conn).await? {
                            let shard: i32 = row.try_get("shard")?;
                            stale.push(Fence {
                                shard: u16::try_from(shard).unwrap_or(u16::MAX),
                                epoch: row.try_get("epoch")?,
                            });
                        }
                    }
                    (false, true, true, false) => {
                        delete.execute(&mut conn).await?;
                    }

                    // Fences alone (a batch of message deletions): checked on their own.
                    (false, false, false, false) => {
                        stale = stale_fences(&mut conn, fences).await?;
                    }
                    _ => {
                        let mut tx = conn.begin().await?;
                        if !fences.is_empty() {
                            stale = stale_fences(&mut tx, fences).await?;
                        }
                        if stale.is_empty() {
                            if upserts {
                                upsert.execute(&mut *tx).await?;
                            }
                            if deletes {
                                delete.execute(&mut *tx).await?;
                            }
                            if has_feedback {
                                feedback.execute(&mut *tx).await?;
                            }
                            if has_usage {
                                usage.execute(&mut *tx).await?;
                            }
                            tx.commit().await?;
                        } else {
                            tx.rollback().await?;
                        }
                    }
                }
                *held = Some(Held {
                    conn,
                    used: Instant::now(),
                });
                Ok(stale)
            })
            .await?;
        match stale.is_empty() {
            true => Ok(()),
            false => Err(StoreError::Fenced(stale)),
        }
    }

    async fn quota_usage(
        &self,
        user: UserId,
        since: NaiveDate,
    ) -> Result<(QuotaSetting, u64), StoreError> {
        let row = self
            .pooled(move |pool| async move {
                sqlx::query(
                    "SELECT EXISTS (SELECT 1 FROM quotas WHERE user_id = $1) AS set_,
                            (SELECT tokens FROM quotas WHERE user_id = $1) AS quota,
                            (SELECT COALESCE(SUM(tokens), 0)::int8 FROM usage_daily
                             WHERE user_id = $1 AND day >= $2) AS used",
                )
                .bind(user.as_uuid())
                .bind(since)
                .fetch_one(&pool)
                .await
            })
            .await?;
        let setting = super::quota_setting(get(&row, "set_")?, get(&row, "quota")?);
        let used: i64 = get(&row, "used")?;
        Ok((setting, used.max(0).unsigned_abs()))
    }

    async fn set_quota(&self, user: UserId, quota: QuotaSetting) -> Result<(), StoreError> {
        self.pooled(move |pool| async move {
            let user = user.as_uuid();
            match quota {
                QuotaSetting::Default => {
                    sqlx::query("DELETE FROM quotas WHERE user_id = $1")
                        .bind(user)
                        .execute(&pool)
                        .await
                }
                QuotaSetting::Unlimited | QuotaSetting::Tokens(_) => {
                    sqlx::query(
                        "INSERT INTO quotas (user_id, tokens) VALUES ($1, $2)
                     ON CONFLICT (user_id) DO UPDATE SET tokens = excluded.tokens",
                    )
                    .bind(user)
                    .bind(super::quota_tokens(quota))
                    .execute(&pool)
                    .await
                }
            }
        })
        .await?;
        Ok(())
    }

    async fn all_chats(
        &self,
        after: Option<ChatId>,
        limit: u32,
    ) -> Result<Vec<ChatMeta>, StoreError> {
        let rows = self
            .pooled(move |pool| async move {
                sqlx::query(&format!(
                    "SELECT {CHAT_COLUMNS} FROM chats WHERE ($1::uuid IS NULL OR id > $1)
                     ORDER BY id LIMIT $2"
                ))
                .bind(after.map(|a| *a.as_uuid()))
                .bind(i64::from(limit))
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter().map(chat_from).collect()
    }

    async fn existing_branches(
        &self,
        ids: &[BranchId],
    ) -> Result<Vec<(BranchId, UserId)>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|b| *b.as_uuid()).collect();
        let rows = self
            .pooled(move |pool| async move {
                sqlx::query(
                    "SELECT b.id, c.owner_id FROM branches b JOIN chats c ON c.id = b.chat_id
                     WHERE b.id = ANY($1)",
                )
                .bind(ids)
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    BranchId::from_uuid(get(r, "id")?),
                    UserId::from_uuid(get(r, "owner_id")?),
                ))
            })
            .collect()
    }

    async fn create_share(&self, share: &ShareRecord) -> Result<(), StoreError> {
        let share = share.clone();
        self.pooled(move |pool| async move {
            sqlx::query(
                "INSERT INTO shares (id, token_hash, chat_id, owner_id, scope, branch_id,
                                     messages, snapshot, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(share.id)
            .bind(share.token_hash.to_vec())
            .bind(share.chat.as_uuid())
            .bind(share.owner.as_uuid())
            .bind(&share.scope)
            .bind(share.branch.as_uuid())
            .bind(i32::try_from(share.messages).unwrap_or(i32::MAX))
            .bind(share.snapshot.clone().unwrap_or_default())
            .bind(share.created_at)
            .execute(&pool)
            .await
        })
        .await?;
        Ok(())
    }

    async fn share_by_token(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<ShareRecord>, StoreError> {
        let hash = token_hash.to_vec();
        let row = self
            .pooled(move |pool| async move {
                sqlx::query("SELECT * FROM shares WHERE token_hash = $1")
                    .bind(hash)
                    .fetch_optional(&pool)
                    .await
            })
            .await?;
        row.as_ref().map(|r| share_from(r, true)).transpose()
    }

    async fn list_shares(&self, chat: ChatId) -> Result<Vec<ShareRecord>, StoreError> {
        let rows = self
            .pooled(move |pool| async move {
                sqlx::query(
                    "SELECT id, token_hash, chat_id, owner_id, scope, branch_id, messages,
                            created_at
                     FROM shares WHERE chat_id = $1 ORDER BY id DESC",
                )
                .bind(chat.as_uuid())
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter().map(|r| share_from(r, false)).collect()
    }

    async fn delete_share(&self, chat: ChatId, id: Uuid) -> Result<bool, StoreError> {
        let done = self
            .pooled(move |pool| async move {
                sqlx::query("DELETE FROM shares WHERE chat_id = $1 AND id = $2")
                    .bind(chat.as_uuid())
                    .bind(id)
                    .execute(&pool)
                    .await
            })
            .await?;
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
        let query = query.to_owned();
        // The best `limit` by rank first; the snippets (`ts_headline` reads the whole text)
        // only for those.
        let rows = self
            .pooled(move |pool| async move {
                sqlx::query(
                    "WITH q AS (SELECT websearch_to_tsquery('english', $2) AS q),
                     best AS (
                         SELECT d.message_id, d.chat_id, d.content, ts_rank(d.tsv, q.q) AS rank
                         FROM search_docs d, q
                         WHERE d.owner_id = $1 AND d.tsv @@ q.q
                           AND ($3::uuid IS NULL OR d.chat_id = $3)
                         ORDER BY rank DESC, d.message_id LIMIT $4 OFFSET $5)
                     SELECT best.message_id, best.chat_id, best.rank::float8 AS rank,
                            ts_headline('english', best.content, q.q,
                                'StartSel=<mark>, StopSel=</mark>, MaxWords=24, MinWords=8, MaxFragments=1') AS snippet
                     FROM best, q ORDER BY best.rank DESC, best.message_id",
                )
                .bind(owner.as_uuid())
                .bind(query)
                .bind(chat.map(|c| *c.as_uuid()))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SearchHit {
                    message: MessageId::from_uuid(get(row, "message_id")?),
                    chat: ChatId::from_uuid(get(row, "chat_id")?),
                    snippet: get(row, "snippet")?,
                    rank: get(row, "rank")?,
                })
            })
            .collect()
    }

    async fn feedback_by_model(&self) -> Result<Vec<FeedbackSum>, StoreError> {
        let rows = self
            .pooled(|pool| async move {
                sqlx::query(
                    "SELECT model, COUNT(*) FILTER (WHERE rating = 'up') AS up,
                            COUNT(*) FILTER (WHERE rating = 'down') AS down
                     FROM feedback GROUP BY model ORDER BY model",
                )
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter()
            .map(|row| {
                let count = |column: &str| -> Result<u64, StoreError> {
                    Ok(get::<i64>(row, column)?.max(0).unsigned_abs())
                };
                Ok(FeedbackSum {
                    model: get(row, "model")?,
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
            UsageGroup::Chat => "chat_id::text",
            UsageGroup::Day => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            UsageGroup::User => "user_id::text",
        };
        let rows = self
            .pooled(move |pool| async move {
                sqlx::query(&format!(
                    "SELECT {key} AS key, COUNT(*)::int8 AS replies,
                            SUM(prompt_tokens)::int8 AS prompt,
                            SUM(completion_tokens)::int8 AS completion
                     FROM usage WHERE ($1::uuid IS NULL OR user_id = $1)
                                      AND created_at >= $2 AND created_at < $3
                     GROUP BY 1 ORDER BY 1"
                ))
                .bind(user.map(|u| *u.as_uuid()))
                .bind(from)
                .bind(to)
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(super::usage_sum(
                    get(row, "key")?,
                    get(row, "replies")?,
                    get(row, "prompt")?,
                    get(row, "completion")?,
                ))
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.pooled(|pool| async move { sqlx::query("SELECT 1").execute(&pool).await })
            .await?;
        Ok(())
    }
}

impl PostgresStore {
    pub fn shared(self) -> Arc<Self> {
        Arc::new(self)
    }
}

/// The fences whose lease has another epoch now, locking the lease rows until the transaction
/// ends.
async fn stale_fences(
    conn: &mut PgConnection,
    fences: &[Fence],
) -> Result<Vec<Fence>, sqlx::Error> {
    let shards: Vec<i32> = fences.iter().map(|f| i32::from(f.shard)).collect();
    let rows = sqlx::query(
        "SELECT shard, epoch FROM shards WHERE shard = ANY($1) ORDER BY shard FOR SHARE",
    )
    .bind(&shards)
    .fetch_all(&mut *conn)
    .await?;
    let mut epochs = std::collections::HashMap::new();
    for row in &rows {
        let shard: i32 = row.try_get("shard")?;
        let epoch: i64 = row.try_get("epoch")?;
        epochs.insert(shard, epoch);
    }
    Ok(fences
        .iter()
        .filter(|f| epochs.get(&i32::from(f.shard)) != Some(&f.epoch))
        .copied()
        .collect())
}

/// How long startup keeps trying to reach PostgreSQL. Each attempt is bounded by the store
/// timeout, which is a per-call bound (2 s by default, less in tests). A database that is still
/// starting, or a machine busy for a few seconds, should not fail a server's start.
const STARTUP_WAIT: Duration = Duration::from_secs(15);

/// The first connection, retried for [`STARTUP_WAIT`] while PostgreSQL does not answer, refuses
/// connections or is still starting up (SQLSTATE 57P03); any other error (a wrong password, an
/// unknown database) fails at once.
async fn connect_at_startup(
    options: &PgConnectOptions,
    timeout: Duration,
) -> anyhow::Result<sqlx::PgConnection> {
    let started = std::time::Instant::now();
    loop {
        let error =
            match tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(options)).await {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(e)) => {
                    let retry = match &e {
                        sqlx::Error::Io(_) => true,
                        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
                        _ => false,
                    };
                    if !retry {
                        return Err(anyhow::Error::new(e).context("connecting to PostgreSQL"));
                    }
                    e.to_string()
                }
                Err(_) => format!("no answer within {timeout:?}"),
            };
        if started.elapsed() >= STARTUP_WAIT {
            anyhow::bail!("PostgreSQL did not answer within {STARTUP_WAIT:?} ({error})");
        }
        tracing::warn!(%error, "PostgreSQL is not answering yet; retrying");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn node_from(row: &PgRow) -> Result<NodeSeen, StoreError> {
    let age: f64 = get(row, "age")?;
    let pid: i32 = get(row, "pid")?;
    Ok(NodeSeen {
        node: NodeRecord {
            id: get(row, "id")?,
            address: get(row, "address")?,
            host: get(row, "host")?,
            pid: u32::try_from(pid).unwrap_or(u32::MAX),
            started_at: get(row, "started_at")?,
            cluster: get(row, "cluster")?,
            incarnation: get(row, "incarnation")?,
        },
        heartbeat_age: Duration::from_secs_f64(age.max(0.0)),
    })
}

/// Each row with its heartbeat's age, by the database's clock.
const NODES: &str =
    "SELECT *, EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at)::float8 AS age FROM nodes";

/// The membership table (`crate::membership`): its join is one transaction holding the table's
/// lock, so two servers starting at once enter it one after the other.
#[async_trait]
impl MembershipStore for PostgresStore {
    async fn join(
        &self,
        node: &NodeRecord,
        ttl: Duration,
        known_dead: KnownDead,
    ) -> Result<Vec<NodeSeen>, StoreError> {
        let node = node.clone();
        // One call on the pool's thread: the transaction never leaves it.
        self.pooled(|pool| async move {
            let mut tx = pool.begin().await?;
            sqlx::query("LOCK TABLE nodes IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            let rows = sqlx::query(NODES).fetch_all(&mut *tx).await?;
            let seen = match rows.iter().map(node_from).collect::<Result<Vec<_>, _>>() {
                Ok(seen) => seen,
                Err(corrupt) => return Ok(Err(corrupt)),
            };
            let (dead, live) = split_dead(&node, seen, ttl, &known_dead);
            let dead: Vec<Uuid> = dead.iter().map(|n| n.node.id).collect();
            sqlx::query("DELETE FROM nodes WHERE id = ANY($1)")
                .bind(&dead)
                .execute(&mut *tx)
                .await?;
            if live.is_empty() {
                sqlx::query(
                    "INSERT INTO nodes
                        (id, address, host, pid, started_at, heartbeat_at, cluster, incarnation)
                     VALUES ($1, $2, $3, $4, $5, clock_timestamp(), $6, $7)
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp(),
                        address = $2, incarnation = $7",
                )
                .bind(node.id)
                .bind(&node.address)
                .bind(&node.host)
                .bind(i32::try_from(node.pid).unwrap_or(i32::MAX))
                .bind(node.started_at)
                .bind(node.cluster)
                .bind(node.incarnation)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Ok(live))
        })
        .await?
    }

    async fn heartbeat(&self, id: Uuid, ttl: Duration) -> Result<bool, StoreError> {
        let done = self
            .pooled(move |pool| async move {
                sqlx::query(
                    "UPDATE nodes SET heartbeat_at = clock_timestamp()
                     WHERE id = $1 AND heartbeat_at > clock_timestamp() - $2::float8 * interval '1 second'",
                )
                .bind(id)
                .bind(ttl.as_secs_f64())
                    .execute(&pool)
                    .await
            })
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn leave(&self, id: Uuid) -> Result<(), StoreError> {
        self.pooled(|pool| async move {
            sqlx::query("DELETE FROM nodes WHERE id = $1")
                .bind(id)
                .execute(&pool)
                .await
        })
        .await?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeSeen>, StoreError> {
        let rows = self
            .pooled(|pool| async move {
                sqlx::query(&format!("{NODES} ORDER BY id"))
                    .fetch_all(&pool)
                    .await
            })
            .await?;
        rows.iter().map(node_from).collect()
    }
}

/// The shard leases of cluster mode (`crate::cluster::leases`).
#[async_trait]
impl LeaseStore for PostgresStore {
    async fn renew(&self, me: &NodeRecord, ttl: Duration) -> Result<Option<Snapshot>, StoreError> {
        let (id, incarnation) = (me.id, me.incarnation);
        let rows = self
            .pooled(move |pool| async move {
                let beat = sqlx::query(
                    "UPDATE nodes SET heartbeat_at = clock_timestamp()
                     WHERE id = $1 AND incarnation = $2
                       AND heartbeat_at > clock_timestamp() - $3::float8 * interval '1 second'",
                )
                .bind(id)
                .bind(incarnation)
                .bind(ttl.as_secs_f64())
                .execute(&pool)
                .await?;
                if beat.rows_affected() != 1 {
                    return Ok(None);
                }
                let nodes = sqlx::query(&format!("{NODES} ORDER BY id"))
                    .fetch_all(&pool)
                    .await?;
                let leases = sqlx::query(
                    "SELECT shard, owner, owner_incarnation, epoch FROM shards ORDER BY shard",
                )
                .fetch_all(&pool)
                .await?;
                Ok(Some((nodes, leases)))
            })
            .await?;
        let Some((nodes, leases)) = rows else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            nodes: nodes.iter().map(node_from).collect::<Result<_, _>>()?,
            leases: leases.iter().map(lease_from).collect::<Result<_, _>>()?,
        }))
    }

    async fn claim(
        &self,
        me: &NodeRecord,
        shards: &[u16],
        ttl: Duration,
    ) -> Result<Vec<(u16, i64)>, StoreError> {
        let (id, incarnation) = (me.id, me.incarnation);
        let shards: Vec<i32> = shards.iter().map(|&s| i32::from(s)).collect();
        let rows = self
            .pooled(move |pool| async move {
                sqlx::query(
                    "UPDATE shards s SET owner = $1, owner_incarnation = $2,
                            epoch = s.epoch + 1, changed_at = clock_timestamp()
                     WHERE s.shard = ANY($3)
                       AND NOT EXISTS (
                           SELECT 1 FROM nodes n
                           WHERE n.id = s.owner AND n.incarnation = s.owner_incarnation
                             AND n.heartbeat_at > clock_timestamp() - $4::float8 * interval '1 second')
                     RETURNING s.shard, s.epoch",
                )
                .bind(id)
                .bind(incarnation)
                .bind(&shards)
                .bind(ttl.as_secs_f64())
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter().map(shard_epoch).collect()
    }

    async fn hand_over(
        &self,
        me: &NodeRecord,
        shards: &[u16],
        to: Option<&NodeRecord>,
    ) -> Result<Vec<(u16, i64)>, StoreError> {
        let (id, incarnation) = (me.id, me.incarnation);
        let (to_id, to_incarnation) = match to {
            Some(node) => (Some(node.id), node.incarnation),
            None => (None, 0),
        };
        let shards: Vec<i32> = shards.iter().map(|&s| i32::from(s)).collect();
        let rows = self
            .pooled(move |pool| async move {
                sqlx::query(
                    "UPDATE shards SET owner = $1, owner_incarnation = $2,
                            epoch = epoch + 1, changed_at = clock_timestamp()
                     WHERE shard = ANY($3) AND owner = $4 AND owner_incarnation = $5
                     RETURNING shard, epoch",
                )
                .bind(to_id)
                .bind(to_incarnation)
                .bind(&shards)
                .bind(id)
                .bind(incarnation)
                .fetch_all(&pool)
                .await
            })
            .await?;
        rows.iter().map(shard_epoch).collect()
    }
}

fn shard_epoch(row: &PgRow) -> Result<(u16, i64), StoreError> {
    let shard: i32 = get(row, "shard")?;
    let shard = u16::try_from(shard).map_err(|_| StoreError::Corrupt(format!("shard {shard}")))?;
    Ok((shard, get(row, "epoch")?))
}

fn lease_from(row: &PgRow) -> Result<Lease, StoreError> {
    let (shard, epoch) = shard_epoch(row)?;
    let owner: Option<Uuid> = get(row, "owner")?;
    let incarnation: i64 = get(row, "owner_incarnation")?;
    Ok(Lease {
        shard,
        owner: owner.map(|o| (o, incarnation)),
        epoch,
    })
}
