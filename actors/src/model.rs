//! Plain records shared by the tree, the actors and the storage ports.
//!
//! Ids are UUIDv7 so that sorting by id sorts by creation time; this is what keeps sibling order,
//! chat listings and message loading cheap (no extra sort keys).

use std::fmt;
use std::hash::Hasher;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// Identifies a user account.
    UserId
);
id_type!(
    /// Identifies a chat (one actor, one tree).
    ChatId
);
id_type!(
    /// Identifies an immutable message node.
    MessageId
);
impl MessageId {
    /// The millisecond a version-7 id was made at (its first 48 bits); `None` for another
    /// version.
    pub fn timestamp(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(self.timestamp_millis()?)
    }

    /// The same time as milliseconds since the Unix epoch (48 bits: never negative).
    pub fn timestamp_millis(&self) -> Option<i64> {
        if self.0.get_version_num() != 7 {
            return None;
        }
        let b = self.0.as_bytes();
        Some(i64::from_be_bytes([
            0, 0, b[0], b[1], b[2], b[3], b[4], b[5],
        ]))
    }

    /// A fresh id and the millisecond it was made at: a message created now carries both, so
    /// its creation time need not be kept apart from its id.
    pub fn new_with_time() -> (Self, DateTime<Utc>) {
        let id = Self::new();
        let at = id.timestamp().unwrap_or_else(now);
        (id, at)
    }
}

id_type!(
    /// Identifies a branch: a named pointer to a head message.
    BranchId
);
id_type!(
    /// Identifies one generated reply, from request to stored message (for streaming, resume
    /// and cancel).
    GenerationId
);

/// The current time at the precision every store keeps (milliseconds, as BSON dates do), so a
/// chat reloaded from any store equals the one that was in memory.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(3)
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    System,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }
}

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "system" => Ok(Role::System),
            _ => Err(UnknownRole),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown role")]
pub struct UnknownRole;

/// A rating of an assistant message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    Up,
    Down,
}

impl Rating {
    pub const fn as_str(self) -> &'static str {
        match self {
            Rating::Up => "up",
            Rating::Down => "down",
        }
    }
}

impl FromStr for Rating {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up" => Ok(Rating::Up),
            "down" => Ok(Rating::Down),
            _ => Err(UnknownRole),
        }
    }
}

/// The chat owner's feedback on an assistant message: the only part of a message that
/// changes after it is made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Feedback {
    pub rating: Rating,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl Feedback {
    /// Heap bytes its strings take.
    pub fn bytes(&self) -> usize {
        self.tags.iter().map(String::len).sum::<usize>()
            + self.comment.as_ref().map_or(0, String::len)
    }
}

/// A feedback row of the metadata store: set (`feedback` present) or taken back.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedbackRow {
    pub message: MessageId,
    pub chat: ChatId,
    pub user: UserId,
    /// The rated message's model, for sums per model.
    pub model: Option<Arc<str>>,
    pub feedback: Option<Arc<Feedback>>,
}

/// An immutable message node. Text is behind `Arc` so reads hand out clones without copying.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub id: MessageId,
    pub chat_id: ChatId,
    pub parent_id: Option<MessageId>,
    pub role: Role,
    pub content: Arc<str>,
    pub created_at: DateTime<Utc>,
    /// The model that produced an assistant message (or the client's label for it).
    pub model: Option<Arc<str>>,
    /// Free-form client metadata (a JSON object).
    pub metadata: Option<Arc<serde_json::Value>>,
    /// The `Idempotency-Key` of the send that created this message; lets a restarted actor keep
    /// answering retries of sends it acknowledged before.
    pub idempotency_key: Option<Arc<str>>,
}

/// A named pointer to a head message; its conversation is the path from the root to the head.
#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub id: BranchId,
    pub chat_id: ChatId,
    pub name: String,
    /// `None` only for a branch that has no messages yet (a new chat's `main`).
    pub head: Option<MessageId>,
    /// The message this branch was forked or edited from, for display.
    pub forked_from: Option<MessageId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Where a restore puts the head if the head's message never landed: the writer commits a
    /// batch's messages and its branch rows to their two stores at once, so a crash can leave
    /// the row without the messages it points at. The writer sets it to the head's nearest
    /// ancestor stored before the batch (`None`: the head was stored before, the branch held
    /// nothing before it, or one database holds both stores); the tree does not keep it.
    pub fallback: Option<MessageId>,
}

/// A chat's own row: everything but its tree.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMeta {
    pub id: ChatId,
    pub owner: UserId,
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub description: Option<String>,
    pub active_branch: BranchId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every change to the chat's metadata; stores refuse to overwrite a newer version.
    pub version: i64,
}

/// A chat's own row as its actor keeps it: [`ChatMeta`] without the id and the active branch
/// (the tree holds those), its texts boxed, and the two that most chats leave empty boxed
/// together. 72 bytes against `ChatMeta`'s 152: the row is inline in the actor, which must stay
/// within its task's size class (see `chat/tests.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRow {
    pub owner: UserId,
    title: Option<Box<str>>,
    texts: Option<Box<ChatTexts>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Clone, Debug, PartialEq)]
struct ChatTexts {
    system_prompt: Option<Box<str>>,
    description: Option<Box<str>>,
}

impl ChatRow {
    pub fn new(meta: ChatMeta) -> Self {
        let mut row = Self {
            owner: meta.owner,
            title: meta.title.map(String::into_boxed_str),
            texts: None,
            created_at: meta.created_at,
            updated_at: meta.updated_at,
            version: meta.version,
        };
        row.set_texts(
            meta.system_prompt.map(String::into_boxed_str),
            meta.description.map(String::into_boxed_str),
        );
        row
    }

    /// The stored row of chat `id`, with the tree's active branch.
    pub fn meta(&self, id: ChatId, active_branch: BranchId) -> ChatMeta {
        ChatMeta {
            id,
            owner: self.owner,
            title: self.title().map(str::to_owned),
            system_prompt: self.system_prompt().map(str::to_owned),
            description: self.description().map(str::to_owned),
            active_branch,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        }
    }

    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }

    pub fn system_prompt(&self) -> Option<&str> {
        self.texts.as_ref()?.system_prompt.as_deref()
    }

    pub fn description(&self) -> Option<&str> {
        self.texts.as_ref()?.description.as_deref()
    }

    pub fn set_title(&mut self, title: Option<String>) {
        self.title = title.map(String::into_boxed_str);
    }

    pub fn set_system_prompt(&mut self, prompt: Option<String>) {
        let description = self.texts.take().and_then(|t| t.description);
        self.set_texts(prompt.map(String::into_boxed_str), description);
    }

    pub fn set_description(&mut self, description: Option<String>) {
        let prompt = self.texts.take().and_then(|t| t.system_prompt);
        self.set_texts(prompt, description.map(String::into_boxed_str));
    }

    fn set_texts(&mut self, system_prompt: Option<Box<str>>, description: Option<Box<str>>) {
        self.texts = (system_prompt.is_some() || description.is_some()).then(|| {
            Box::new(ChatTexts {
                system_prompt,
                description,
            })
        });
    }
}

/// A user account as the metadata store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct UserRecord {
    pub id: UserId,
    /// Unique when given; an account registered with only a username (as seed 002's clients
    /// do) has none.
    pub email: Option<String>,
    pub username: Option<String>,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub is_admin: bool,
}

/// A hasher for maps keyed by ids and counters (`hot`, `pages`): an id's last eight bytes are
/// random (v4 and v7 alike) and need no SipHash over all sixteen; numbers are mixed in with
/// one multiplication. Not for keys a client chooses.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // An id hashes as its 16 bytes (after their length); anything else mixes in.
        match bytes.last_chunk::<8>() {
            Some(last) if bytes.len() == 16 => self.write_u64(u64::from_le_bytes(*last)),
            _ => {
                for &b in bytes {
                    self.0 =
                        (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
                }
            }
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Where a reply being generated stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GenerationStatus {
    Running,
    Completed,
    /// Stopped by a client; the partial reply was stored, marked incomplete.
    Cancelled,
    /// The provider or the store failed; no reply was stored.
    Failed,
}
