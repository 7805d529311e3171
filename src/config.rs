//! Settings: `config.toml` defaults, overridden by `ARBOR_*` environment variables.
//!
//! A key `section.key` is overridden by `ARBOR_SECTION__KEY` (double underscore between levels),
//! e.g. `ARBOR_SERVER__PORT=9000`, `ARBOR_STORAGE__ACK_MODE=buffered`. Unknown keys are errors, so
//! a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A secret string: `Debug` never shows it.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub actors: ActorSettings,
    pub limits: LimitSettings,
    pub auth: AuthSettings,
    pub llm: LlmSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub admin: AdminSettings,
    pub membership: MembershipSettings,
    pub cluster: ClusterSettings,
    pub rate_limits: RateLimitSettings,
    pub quotas: QuotaSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace_secs: u64,
    /// On SIGTERM/SIGINT, how long to keep serving (with `/ready` answering 503) before
    /// refusing new connections, so a load balancer can take the instance out first.
    pub drain_delay_secs: u64,
    /// Origins allowed by CORS; empty disables CORS, `["*"]` allows any.
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    Durable,
    Buffered,
}

/// Which thread a chat's actor runs on (see `arbor_actors::Placement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorPlacement {
    Local,
    Spread,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    Full,
    Normal,
}

/// Where users, chats and branches live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    Sqlite,
    Postgres,
}

/// Where message content lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageBackend {
    Sqlite,
    Mongodb,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    pub metadata: MetadataBackend,
    pub messages: MessageBackend,
    /// `postgres://user:password@host:port/database`; may carry libpq parameters such as
    /// `sslmode` or `options=-c search_path=...`.
    pub postgres_url: Secret,
    /// Schema for Arbor's tables (created if missing); empty: the server's default search path.
    /// Lets several deployments share one database.
    pub postgres_schema: String,
    pub postgres_max_connections: u32,
    /// `mongodb://host:port/?...` (`mongodb+srv://` needs the `mongodb-srv` build feature).
    pub mongodb_url: Secret,
    pub mongodb_database: String,
    /// Bound on one store call (connecting, server selection, the operation itself), so an
    /// unreachable store fails fast instead of hanging requests and readiness checks.
    pub store_timeout_ms: u64,
    /// Holds the SQLite database and the generated JWT secret.
    pub data_dir: PathBuf,
    /// SQLite file; relative paths are inside `data_dir`.
    pub sqlite_file: PathBuf,
    pub sqlite_synchronous: SqliteSync,
    /// SQLite: copy the WAL back into the database file once it holds this many pages (4 KiB
    /// each). The writer pays for that copy inside a commit; a page rewritten by many batches is
    /// copied once per checkpoint, so rarer checkpoints cost less per commit (SQLite's own
    /// default is 1,000; bench/HISTORY.md measures both).
    pub sqlite_checkpoint_pages: u32,
    /// SQLite: page cache of each of the four read connections, in KiB (SQLite's default is
    /// 2,000). Reads are one chat's rows by index and the operating system caches the file
    /// anyway: at 512 a 1,000-message chat loads 3% slower and 100k resident chats take 13 MiB
    /// less (bench/HISTORY.md, "Memory per idle chat"). The write connection keeps SQLite's default.
    pub sqlite_read_cache_kib: u32,
    pub ack_mode: AckMode,
    /// Write-behind: wait at most this long for more changes before committing a batch. 0 (the
    /// default) commits as soon as the writer is free: changes arriving during a commit form
    /// the next batch anyway, and waiting only adds latency (BENCHMARKS.md, "Group commit").
    pub flush_interval_ms: u64,
    /// Write-behind: commit once a batch holds this many rows.
    pub flush_max_rows: usize,
    /// Write-behind: batches committing at once, each with chats no other one holds (a chat's
    /// writes still commit in order). A second one starts only once the one in flight has
    /// taken `batch_overlap_ms`: a stalled store call then holds up only its own batch's writes.
    /// SQLite for both stores commits through one connection and always uses 1.
    pub batches_in_flight: usize,
    /// Write-behind: how long a batch commits before another may start beside it.
    pub batch_overlap_ms: u64,
    /// Write-behind: queued changes before new writes get 503 `overloaded`.
    pub queue_capacity: usize,
    /// Write-behind: a write that finds the queue full waits up to this long for room before
    /// its 503 `overloaded` (flow control: bursts slow down to the commit rate). 0: no wait.
    pub queue_wait_ms: u64,
    /// Durable mode: how long a failing batch is retried before clients get 503.
    pub durable_retry_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorSettings {
    /// Resident chat actors at most (least recently used are evicted first).
    pub max_resident: u64,
    /// Evict a chat actor after this many seconds without a request.
    pub idle_timeout_secs: u64,
    /// Requests queued for one chat before new ones get 503 `overloaded`.
    pub mailbox_capacity: usize,
    /// Where a chat's actor runs: `local` (the HTTP worker thread that activated it) or `spread`
    /// (the chat arbiters, by chat id).
    pub placement: ActorPlacement,
    /// The registry's own threads: they host the actors `spread` places, and store the replies
    /// an HTTP worker's stop handed over; 0 means one per core.
    pub arbiters: usize,
    /// KiB of written message pages each thread hosting chat actors keeps, to answer a page
    /// read again while its chat is unchanged without writing it again; 0 turns it off.
    pub page_cache_kib: usize,
    /// Idempotency keys each chat remembers (its newest keyed sends'): a retry with a key older
    /// than that many newer keyed sends of its chat is a new send.
    pub idempotency_keys_per_chat: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    pub max_body_bytes: usize,
    pub max_message_chars: usize,
    pub max_title_chars: usize,
    pub max_branch_name_chars: usize,
    pub max_system_prompt_chars: usize,
    pub max_description_chars: usize,
    pub default_page_size: usize,
    pub max_page_size: usize,
    /// Feedback on a message: at most this many tags, each at most so many characters, and a
    /// comment of at most so many characters.
    pub max_feedback_tags: usize,
    pub max_feedback_tag_chars: usize,
    pub max_feedback_comment_chars: usize,
    /// Share links a chat may have at once.
    pub max_shares_per_chat: usize,
    /// Messages a share link's snapshot may hold.
    pub max_share_messages: usize,
    /// An import's body (a chat, another product's export, a backup), in bytes.
    pub max_import_bytes: usize,
    /// Messages and branches one imported chat may hold, and chats one import may hold.
    pub max_import_messages: usize,
    pub max_import_branches: usize,
    pub max_import_chats: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// HS256 signing secret. Empty: generated on first start and kept in
    /// `<data_dir>/jwt_secret` (mode 0600).
    pub jwt_secret: Secret,
    pub token_ttl_minutes: i64,
    pub bcrypt_cost: u32,
    /// Threads of their own that hash and check passwords (bcrypt); 0: half the cores, at least
    /// one. Chat traffic keeps the other cores whatever the login load.
    pub hash_threads: usize,
    /// Password checks waiting for those threads; beyond it a sign-up or login gets 503
    /// `auth_busy` at once.
    pub hash_queue: usize,
    /// Static bearer tokens for service clients (seed 000's fixed token): account email →
    /// token (16 characters at least). Each token acts as that account, created without a
    /// password (it cannot log in) if it is not registered. Empty: off.
    pub api_tokens: BTreeMap<String, Secret>,
}

/// Model providers and how replies are generated.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmSettings {
    /// The model a reply uses when the request names none: an alias, `provider/model` or a
    /// provider. Empty: the first configured provider's default model (`echo` if none).
    pub default_model: String,
    /// Characters of conversation sent with a reply request (newest messages first; the system
    /// prompt always). A provider's `context_chars` overrides it.
    pub context_chars: usize,
    /// How long a finished generation's events stay available for resuming.
    pub event_retention_secs: u64,
    /// Finished generations kept for resuming at most (the oldest go first).
    pub max_retained_generations: usize,
    /// Seconds between SSE keep-alive comments while a reply is quiet.
    pub keepalive_secs: u64,
    /// Threads the LLM worker actors run on; 0 means one per core.
    pub threads: usize,
    /// Short names for `provider/model`, e.g. `fast = "groq/llama-3.1-8b-instant"`.
    pub aliases: BTreeMap<String, String>,
    /// OpenAI-protocol providers by name (`echo` is built in and reserved).
    pub providers: BTreeMap<String, ProviderSettings>,
}

/// One OpenAI Chat Completions-compatible provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    /// The API root, e.g. `https://api.openai.com/v1` (`/chat/completions` is appended).
    pub base_url: String,
    /// The environment variable holding the API key (the key itself never goes in a file or a
    /// log). Empty: no key is sent (Ollama, llama.cpp).
    pub api_key_env: String,
    pub default_model: String,
    /// If not empty, the only models requests may name for this provider.
    pub models: Vec<String>,
    /// Longest wait for the response to start, and between two streamed chunks.
    pub timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Requests in flight at most (worker actors).
    pub max_concurrent: usize,
    /// Replies waiting for a worker before new ones get 503 `llm_overloaded`.
    pub queue_capacity: usize,
    /// Retries of a failed attempt (429, 5xx, connection error, timeout) before any token.
    pub max_retries: u32,
    pub retry_backoff_ms: u64,
    /// Longest wait before a retry; a longer `Retry-After` fails the reply instead.
    pub retry_backoff_max_ms: u64,
    /// Consecutive outage failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe request is let through.
    pub breaker_cooldown_secs: u64,
    /// Overrides `llm.context_chars` for this provider (0: inherit).
    pub context_chars: usize,
    /// `max_tokens` sent with each request (0: not sent).
    pub max_tokens: u32,
    /// Ask for token usage in the stream (`stream_options.include_usage`); turn off for servers
    /// that reject the option.
    pub stream_usage: bool,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            api_key_env: String::new(),
            default_model: String::new(),
            models: Vec::new(),
            timeout_secs: 60,
            connect_timeout_secs: 10,
            max_concurrent: 16,
            queue_capacity: 256,
            max_retries: 2,
            retry_backoff_ms: 500,
            retry_backoff_max_ms: 10_000,
            breaker_failures: 5,
            breaker_cooldown_secs: 30,
            context_chars: 0,
            max_tokens: 0,
            stream_usage: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `GET /metrics` (Prometheus text format).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// If set, scrapers must send `Authorization: Bearer <token>`.
    pub token: Secret,
    /// If set (`host:port`), `/metrics` is served on this separate listener only (say, an
    /// internal interface) and not on the API's address.
    pub listen: String,
}

/// Operators: who may use `/api/v1/admin/*` and `/admin`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Accounts with these emails are admins, in addition to those promoted with
    /// `arbor admin grant EMAIL`.
    pub emails: Vec<String>,
    /// Seconds of once-a-second samples `/api/v1/admin/stats` keeps for its history.
    pub history_secs: usize,
}

/// The membership table every server enters in its metadata store (`src/membership.rs`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSettings {
    /// A node whose last heartbeat is older than this is dead.
    pub node_ttl_secs: u64,
}

impl MembershipSettings {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.node_ttl_secs.max(1))
    }
}

/// Fair use (`src/rate_limit.rs`): per-user and per-client-IP limits. A rate of 0 turns its
/// limit off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Per user: GET and HEAD requests a minute.
    pub reads_per_minute: u32,
    /// Per user: every other request a minute.
    pub writes_per_minute: u32,
    /// Per user: requests that start a model reply, a minute.
    pub replies_per_minute: u32,
    /// Per user: imports a minute (a chat, another product's export, or a backup).
    pub imports_per_minute: u32,
    /// Per client IP: sign-ups, logins and token requests a minute.
    pub auth_per_minute: u32,
    /// Per user: replies running at once.
    pub concurrent_replies: u32,
    /// Failed logins per client IP (any account) in a window, then 429 until it ends.
    pub failed_logins_per_ip: u32,
    /// Failed logins per account from one client IP in a window.
    pub failed_logins_per_account: u32,
    /// Per client IP: share-link lookups that found nothing, in a window; then 429 until it
    /// ends (tokens cannot be enumerated).
    pub share_misses_per_ip: u32,
    pub failure_window_secs: u64,
    /// Where trusted proxies put the client's address (`""`: never read).
    pub client_ip_header: String,
    /// The proxies (nginx, a load balancer) whose `client_ip_header` is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Keys (users, addresses) each limiter tracks at most.
    pub max_tracked: usize,
    /// Sign-up and login refusals (429, and 503 `auth_busy`) are answered after this long: a
    /// client flooding logins waits on a timer instead of spinning on the server's CPU.
    pub refusal_delay_ms: u64,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Settings::default().rate_limits
    }
}

/// Token quotas (`src/quota.rs`): tokens per user per UTC calendar period. An admin can set a
/// user's own quota (`PUT /api/v1/admin/users/{user}/quota`, `arbor quota set`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaSettings {
    /// Prompt and completion tokens a user may use per period; 0: no quota by default.
    pub tokens_per_period: u64,
    pub period: crate::quota::QuotaPeriod,
    /// How long a server trusts a user's quota setting it read: an admin's change made on
    /// another server, or with `arbor quota`, applies here within this time.
    pub settings_ttl_ms: u64,
}

impl LimitSettings {
    /// What one imported chat may hold (`arbor_actors::portable::ChatExport::check`).
    pub fn import_limits(&self) -> arbor_actors::portable::ImportLimits {
        arbor_actors::portable::ImportLimits {
            max_messages: self.max_import_messages,
            max_branches: self.max_import_branches,
            max_message_chars: self.max_message_chars,
            max_title_chars: self.max_title_chars,
            max_branch_name_chars: self.max_branch_name_chars,
            max_system_prompt_chars: self.max_system_prompt_chars,
            max_description_chars: self.max_description_chars,
        }
    }
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Settings::default().quotas
    }
}

impl QuotaSettings {
    /// The default quota; `None`: none.
    pub fn default_tokens(&self) -> Option<u64> {
        (self.tokens_per_period > 0).then_some(self.tokens_per_period)
    }
}

/// Cluster mode (`src/cluster/`): several servers on one set of stores, each chat owned by
/// the holder of its shard's lease.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    pub enabled: bool,
    /// `host:port` the other nodes and the load balancer reach this node on, spelled as in
    /// nginx's `server` lines; empty: `server.host:server.port`.
    pub advertise: String,
    /// Shared by every node: node-to-node calls carry it. At least 16 characters.
    pub secret: Secret,
    /// How often a node renews its heartbeat and leases, and claims or hands over shards.
    pub lease_interval_ms: u64,
    /// Times a request may be forwarded between nodes.
    pub max_hops: u8,
    /// How long a request for a shard that is changing owner waits for the move to finish
    /// before it gets 503 `chat_moved`.
    pub move_wait_ms: u64,
    /// Bound on connecting to another node when forwarding.
    pub connect_timeout_ms: u64,
}

impl ClusterSettings {
    pub fn lease_interval(&self) -> Duration {
        Duration::from_millis(self.lease_interval_ms.max(50))
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Settings::default().cluster
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `arbor=debug,info`; `RUST_LOG` wins if set.
    pub level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings {
                host: "127.0.0.1".into(),
                port: 8000,
                workers: 0,
                shutdown_grace_secs: 30,
                drain_delay_secs: 0,
                cors_origins: Vec::new(),
            },
            storage: StorageSettings {
                metadata: MetadataBackend::Sqlite,
                messages: MessageBackend::Sqlite,
                postgres_url: Secret::default(),
                postgres_schema: String::new(),
                postgres_max_connections: 8,
                mongodb_url: Secret::default(),
                mongodb_database: "arbor".into(),
                store_timeout_ms: 2_000,
                data_dir: "./data".into(),
                sqlite_file: "arbor.db".into(),
                sqlite_synchronous: SqliteSync::Full,
                sqlite_checkpoint_pages: 10_000,
                sqlite_read_cache_kib: 512,
                ack_mode: AckMode::Durable,
                flush_interval_ms: 0,
                flush_max_rows: 1024,
                batches_in_flight: 2,
                batch_overlap_ms: 5,
                queue_capacity: 16_384,
                queue_wait_ms: 100,
                durable_retry_ms: 5_000,
            },
            actors: ActorSettings {
                max_resident: 100_000,
                idle_timeout_secs: 600,
                mailbox_capacity: 256,
                placement: ActorPlacement::Local,
                arbiters: 0,
                page_cache_kib: 8192,
                idempotency_keys_per_chat: 1024,
            },
            limits: LimitSettings {
                max_body_bytes: 256 * 1024,
                max_message_chars: 32_000,
                max_title_chars: 200,
                max_branch_name_chars: 100,
                max_system_prompt_chars: 8_000,
                max_description_chars: 2_000,
                default_page_size: 50,
                max_page_size: 200,
                max_feedback_tags: 16,
                max_feedback_tag_chars: 64,
                max_feedback_comment_chars: 4000,
                max_shares_per_chat: 100,
                max_share_messages: 10_000,
                max_import_bytes: 64 << 20,
                max_import_messages: 100_000,
                max_import_branches: 10_000,
                max_import_chats: 10_000,
            },
            auth: AuthSettings {
                jwt_secret: Secret::default(),
                token_ttl_minutes: 24 * 60,
                bcrypt_cost: 12,
                hash_threads: 0,
                hash_queue: 32,
                api_tokens: BTreeMap::new(),
            },
            llm: LlmSettings {
                default_model: String::new(),
                context_chars: 48_000,
                event_retention_secs: 600,
                max_retained_generations: 100_000,
                keepalive_secs: 15,
                threads: 0,
                aliases: BTreeMap::new(),
                providers: BTreeMap::new(),
            },
            log: LogSettings {
                format: LogFormat::Pretty,
                level: "info".into(),
            },
            metrics: MetricsSettings {
                enabled: true,
                token: Secret::default(),
                listen: String::new(),
            },
            admin: AdminSettings {
                emails: Vec::new(),
                history_secs: 300,
            },
            membership: MembershipSettings { node_ttl_secs: 10 },
            rate_limits: RateLimitSettings {
                reads_per_minute: 0,
                writes_per_minute: 1200,
                replies_per_minute: 60,
                imports_per_minute: 10,
                auth_per_minute: 60,
                concurrent_replies: 4,
                failed_logins_per_ip: 30,
                failed_logins_per_account: 5,
                share_misses_per_ip: 20,
                failure_window_secs: 300,
                client_ip_header: "x-forwarded-for".into(),
                trusted_proxies: Vec::new(),
                max_tracked: 100_000,
                refusal_delay_ms: 1000,
            },
            quotas: QuotaSettings {
                tokens_per_period: 0,
                period: crate::quota::QuotaPeriod::Month,
                settings_ttl_ms: 2000,
            },
            cluster: ClusterSettings {
                enabled: false,
                advertise: String::new(),
                secret: Secret::default(),
                lease_interval_ms: 1000,
                max_hops: 1,
                move_wait_ms: 2000,
                connect_timeout_ms: 1000,
            },
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Settings::default().server
    }
}
impl Default for StorageSettings {
    fn default() -> Self {
        Settings::default().storage
    }
}
impl Default for ActorSettings {
    fn default() -> Self {
        Settings::default().actors
    }
}
impl Default for LimitSettings {
    fn default() -> Self {
        Settings::default().limits
    }
}
impl Default for AuthSettings {
    fn default() -> Self {
        Settings::default().auth
    }
}
impl Default for LlmSettings {
    fn default() -> Self {
        Settings::default().llm
    }
}
impl Default for LogSettings {
    fn default() -> Self {
        Settings::default().log
    }
}
impl Default for MetricsSettings {
    fn default() -> Self {
        Settings::default().metrics
    }
}
impl Default for AdminSettings {
    fn default() -> Self {
        Settings::default().admin
    }
}

impl Default for MembershipSettings {
    fn default() -> Self {
        Settings::default().membership
    }
}

impl Settings {
    /// Built-in defaults, then the TOML file (if it exists), then `ARBOR_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match file {
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file("config.toml")),
        }
        figment
            .merge(Env::prefixed("ARBOR_").split("__"))
            .extract()
            .map_err(Box::new)
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.storage.data_dir.join(&self.storage.sqlite_file)
    }

    pub fn cores() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

impl StorageSettings {
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config.toml` promises to be the built-in defaults, written out.
    #[test]
    fn config_toml_is_the_defaults_written_out() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let file: Settings = Figment::new()
            .merge(Toml::file_exact(path))
            .extract()
            .map_err(Box::new)
            .expect("config.toml parses on its own");
        assert_eq!(
            serde_json::to_value(file).expect("serializable"),
            serde_json::to_value(Settings::default()).expect("serializable")
        );
    }
}
