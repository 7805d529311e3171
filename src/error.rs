//! The one API error type: every failure becomes `{"error": {"code", "message"}, "detail"}`
//! with a stable snake_case code (`detail` repeats the message, as FastAPI clients expect).
//! 5xx details go to the log, never to the client.
//!
//! Every code is one line of [`make_error_codes!`] below, with the HTTP status it answers with:
//! an error is built from a [`Code`], never from a string, so the list is complete. README's
//! error table and the OpenAPI document (`ErrorDetail.code`) are checked against it (the tests
//! at the end of this file).

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use arbor_actors::ports::StoreError;
use arbor_actors::ChatError;
use serde::Serialize;
use utoipa::ToSchema;

/// Writes [`Code`]: one variant per line, with its HTTP status and its name on the wire
/// (meilisearch's `make_error_codes!`).
macro_rules! make_error_codes {
    ($($(#[$doc:meta])* $variant:ident = $status:ident, $name:literal;)*) => {
        /// Every error code the API answers with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code, in the order of the list.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as clients see it: stable snake_case.
            pub fn name(self) -> &'static str {
                match self {
                    $(Code::$variant => $name,)*
                }
            }

            /// The HTTP status an error with this code answers with.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Code::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

make_error_codes! {
    /// Malformed JSON.
    InvalidJson = BAD_REQUEST, "invalid_json";
    /// A body that is not what the endpoint reads (not an object, unreadable).
    InvalidBody = BAD_REQUEST, "invalid_body";
    /// A malformed id in the path.
    InvalidId = BAD_REQUEST, "invalid_id";
    InvalidQuery = BAD_REQUEST, "invalid_query";
    MissingToken = UNAUTHORIZED, "missing_token";
    /// Tampered, signed with another key, `alg: none`, or its user is gone.
    InvalidToken = UNAUTHORIZED, "invalid_token";
    TokenExpired = UNAUTHORIZED, "token_expired";
    InvalidCredentials = UNAUTHORIZED, "invalid_credentials";
    /// Also someone else's chat.
    ChatNotFound = NOT_FOUND, "chat_not_found";
    MessageNotFound = NOT_FOUND, "message_not_found";
    BranchNotFound = NOT_FOUND, "branch_not_found";
    GenerationNotFound = NOT_FOUND, "generation_not_found";
    /// No share link has that token (or id), or it was revoked.
    ShareNotFound = NOT_FOUND, "share_not_found";
    /// Admin: no account has that id, email or username.
    UserNotFound = NOT_FOUND, "user_not_found";
    /// Admin: the chat is not resident.
    ActorNotFound = NOT_FOUND, "actor_not_found";
    /// No such endpoint; also admin routes for non-admins.
    NotFound = NOT_FOUND, "not_found";
    MethodNotAllowed = METHOD_NOT_ALLOWED, "method_not_allowed";
    /// The reply was being generated (or its events kept) by a server that stopped: its outcome
    /// is unknown here. If it finished, its message is on the branch; otherwise ask again.
    GenerationInterrupted = GONE, "generation_interrupted";
    EmailTaken = CONFLICT, "email_taken";
    UsernameTaken = CONFLICT, "username_taken";
    LastBranch = CONFLICT, "last_branch";
    GenerationInProgress = CONFLICT, "generation_in_progress";
    ChatFull = CONFLICT, "chat_full";
    /// An import kept ids that are stored already; ask for new ones (`new_ids=true`).
    ImportIdConflict = CONFLICT, "import_id_conflict";
    /// The chat has `limits.max_shares_per_chat` share links already.
    TooManyShares = CONFLICT, "too_many_shares";
    PayloadTooLarge = PAYLOAD_TOO_LARGE, "payload_too_large";
    UnsupportedMediaType = UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type";
    ValidationFailed = UNPROCESSABLE_ENTITY, "validation_failed";
    EmptyContent = UNPROCESSABLE_ENTITY, "empty_content";
    ContentTooLong = UNPROCESSABLE_ENTITY, "content_too_long";
    /// NUL characters, which no store keeps.
    InvalidContent = UNPROCESSABLE_ENTITY, "invalid_content";
    InvalidTitle = UNPROCESSABLE_ENTITY, "invalid_title";
    InvalidBranchName = UNPROCESSABLE_ENTITY, "invalid_branch_name";
    InvalidSystemPrompt = UNPROCESSABLE_ENTITY, "invalid_system_prompt";
    InvalidDescription = UNPROCESSABLE_ENTITY, "invalid_description";
    InvalidEmail = UNPROCESSABLE_ENTITY, "invalid_email";
    InvalidPassword = UNPROCESSABLE_ENTITY, "invalid_password";
    InvalidUsername = UNPROCESSABLE_ENTITY, "invalid_username";
    InvalidLimit = UNPROCESSABLE_ENTITY, "invalid_limit";
    InvalidCursor = UNPROCESSABLE_ENTITY, "invalid_cursor";
    /// A search without words, or over its limits.
    InvalidSearch = UNPROCESSABLE_ENTITY, "invalid_search";
    MissingForkPoint = UNPROCESSABLE_ENTITY, "missing_fork_point";
    MissingChatId = UNPROCESSABLE_ENTITY, "missing_chat_id";
    MissingBranchId = UNPROCESSABLE_ENTITY, "missing_branch_id";
    MessageIndexOutOfRange = UNPROCESSABLE_ENTITY, "message_index_out_of_range";
    IdempotencyKeyReused = UNPROCESSABLE_ENTITY, "idempotency_key_reused";
    InvalidIdempotencyKey = UNPROCESSABLE_ENTITY, "invalid_idempotency_key";
    UnknownModel = UNPROCESSABLE_ENTITY, "unknown_model";
    InvalidLastEventId = UNPROCESSABLE_ENTITY, "invalid_last_event_id";
    /// Feedback is only for assistant messages.
    FeedbackNotAllowed = UNPROCESSABLE_ENTITY, "feedback_not_allowed";
    InvalidFeedback = UNPROCESSABLE_ENTITY, "invalid_feedback";
    /// An import (`POST /api/v1/chats/import`) that is not a well-formed tree: each rule its
    /// own code (README, "Export and import").
    ImportUnsupportedFormat = UNPROCESSABLE_ENTITY, "import_unsupported_format";
    ImportTooLarge = UNPROCESSABLE_ENTITY, "import_too_large";
    ImportInvalidText = UNPROCESSABLE_ENTITY, "import_invalid_text";
    ImportDuplicateId = UNPROCESSABLE_ENTITY, "import_duplicate_id";
    ImportDanglingParent = UNPROCESSABLE_ENTITY, "import_dangling_parent";
    ImportCycle = UNPROCESSABLE_ENTITY, "import_cycle";
    ImportMultipleRoots = UNPROCESSABLE_ENTITY, "import_multiple_roots";
    ImportHeadNotInTree = UNPROCESSABLE_ENTITY, "import_head_not_in_tree";
    ImportUnreachableMessage = UNPROCESSABLE_ENTITY, "import_unreachable_message";
    ImportActiveBranchMissing = UNPROCESSABLE_ENTITY, "import_active_branch_missing";
    ImportNoBranches = UNPROCESSABLE_ENTITY, "import_no_branches";
    /// The snapshot would hold more than `limits.max_share_messages` messages.
    ShareTooLarge = UNPROCESSABLE_ENTITY, "share_too_large";
    /// Details are only in the server log.
    InternalError = INTERNAL_SERVER_ERROR, "internal_error";
    /// The model provider failed; `upstream_status` holds its HTTP status.
    UpstreamError = BAD_GATEWAY, "upstream_error";
    /// A chat's mailbox or the write queue is full; retry.
    Overloaded = SERVICE_UNAVAILABLE, "overloaded";
    StorageUnavailable = SERVICE_UNAVAILABLE, "storage_unavailable";
    /// Over a rate limit (`[rate_limits]`); `Retry-After`, `RateLimit-Policy` and `RateLimit`
    /// say which and when.
    RateLimited = TOO_MANY_REQUESTS, "rate_limited";
    /// The caller's token quota for the period (`[quotas]`, or their own) is used up;
    /// `Retry-After` says when the next period starts.
    QuotaExceeded = TOO_MANY_REQUESTS, "quota_exceeded";
    /// Every password-hashing thread is busy and its queue is full; retry.
    AuthBusy = SERVICE_UNAVAILABLE, "auth_busy";
    /// Cluster mode: the chat's shard is moving between servers, or its owner cannot be
    /// reached; retry after `Retry-After`.
    ChatMoved = SERVICE_UNAVAILABLE, "chat_moved";
    /// Cluster mode: a request claimed to come from another node without the cluster secret.
    ClusterAuthFailed = FORBIDDEN, "cluster_auth_failed";
    /// The provider's queue is full.
    LlmOverloaded = SERVICE_UNAVAILABLE, "llm_overloaded";
    /// The provider's circuit breaker is open.
    LlmUnavailable = SERVICE_UNAVAILABLE, "llm_unavailable";
    /// The provider sent nothing for `timeout_secs`.
    UpstreamTimeout = GATEWAY_TIMEOUT, "upstream_timeout";
}

#[derive(Debug)]
pub struct ApiError {
    code: Code,
    message: String,
    upstream_status: Option<u16>,
    /// With `rate_limited`: what its headers say.
    limit: Option<Box<RateLimitHeaders>>,
}

/// The headers of a 429 `rate_limited`: `Retry-After`, and the IETF `RateLimit-Policy` (the
/// limit: `"writes";q=1200;w=60`) and `RateLimit` (its state: `"writes";r=0;t=3`).
#[derive(Debug, Clone)]
pub struct RateLimitHeaders {
    pub retry_after_secs: u64,
    pub policy: String,
    pub state: String,
}

/// The error body every endpoint uses.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// The message again, where FastAPI clients (the seed dialects) look for it.
    pub detail: String,
}

impl ErrorBody {
    pub fn of(error: &ApiError) -> Self {
        Self {
            error: error.detail(),
            detail: error.message.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: clients branch on this.
    pub code: String,
    /// Human-readable; may change.
    pub message: String,
    /// With `upstream_error`: the HTTP status the model provider answered with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            upstream_status: None,
            limit: None,
        }
    }

    /// A 429 `rate_limited` for `class` (`writes`, `auth`, ...): `limit` per `window_secs`
    /// (0: `limit` at once), free again in `wait`.
    pub fn over_limit(
        class: &str,
        limit: u32,
        window_secs: u32,
        wait: std::time::Duration,
    ) -> Self {
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        let policy = match window_secs {
            0 => format!("\"{class}\";q={limit}"),
            w => format!("\"{class}\";q={limit};w={w}"),
        };
        let mut error = Self::new(
            Code::RateLimited,
            format!(
                "too many {} requests; retry in {secs} s",
                class.replace('_', " ")
            ),
        );
        error.limit = Some(Box::new(RateLimitHeaders {
            retry_after_secs: secs,
            policy,
            state: format!("\"{class}\";r=0;t={secs}"),
        }));
        error
    }

    /// The body's `error` object.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.name().to_owned(),
            message: self.message.clone(),
            upstream_status: self.upstream_status,
        }
    }

    pub fn not_found() -> Self {
        Self::new(Code::NotFound, "no such endpoint")
    }

    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            Code::InternalError,
            "an internal error occurred; it has been logged",
        )
    }

    /// A body over `limits.max_body_bytes`.
    pub fn payload_too_large() -> Self {
        Self::new(Code::PayloadTooLarge, "the request body is too large")
    }

    /// A body not of the media type the endpoint reads (`application/json`, ...).
    pub fn unsupported_media_type(expected: &str) -> Self {
        Self::new(
            Code::UnsupportedMediaType,
            format!("send the body as {expected}"),
        )
    }

    pub fn code(&self) -> &'static str {
        self.code.name()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.name())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.code.status();
        let mut res = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.insert_header((header::RETRY_AFTER, "1"));
        }
        if let Some(limit) = &self.limit {
            res.insert_header((header::RETRY_AFTER, limit.retry_after_secs.to_string()))
                .insert_header(("ratelimit-policy", limit.policy.as_str()))
                .insert_header(("ratelimit", limit.state.as_str()));
        }
        res.json(ErrorBody::of(self))
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        let code = match &e {
            ChatError::ChatNotFound => Code::ChatNotFound,
            ChatError::MessageNotFound(_) => Code::MessageNotFound,
            ChatError::BranchNotFound(_) => Code::BranchNotFound,
            ChatError::IndexOutOfRange { .. } => Code::MessageIndexOutOfRange,
            ChatError::CursorNotOnPath => Code::InvalidCursor,
            ChatError::LastBranch => Code::LastBranch,
            ChatError::ChatFull(_) => Code::ChatFull,
            ChatError::GenerationInProgress => Code::GenerationInProgress,
            ChatError::IdempotencyMismatch => Code::IdempotencyKeyReused,
            ChatError::Invalid(_) => Code::ValidationFailed,
            ChatError::NotRateable(_) => Code::FeedbackNotAllowed,
            ChatError::IdsTaken(_) => Code::ImportIdConflict,
            ChatError::Overloaded => Code::Overloaded,
            ChatError::StorageUnavailable => Code::StorageUnavailable,
            ChatError::Moved => Code::ChatMoved,
            ChatError::RateLimited {
                class,
                limit,
                window_secs,
                retry_after_ms,
            } => {
                return Self::over_limit(
                    class,
                    *limit,
                    *window_secs,
                    std::time::Duration::from_millis(*retry_after_ms),
                );
            }
            ChatError::QuotaExceeded {
                limit, resets_at, ..
            } => {
                let wait = (*resets_at - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default();
                let secs = wait.as_secs().max(1);
                let mut error = Self::new(Code::QuotaExceeded, e.to_string());
                error.limit = Some(Box::new(RateLimitHeaders {
                    retry_after_secs: secs,
                    policy: format!("\"tokens\";q={limit}"),
                    state: format!("\"tokens\";r=0;t={secs}"),
                }));
                return error;
            }
            ChatError::UnknownModel(_) => Code::UnknownModel,
            ChatError::LlmOverloaded => Code::LlmOverloaded,
            ChatError::LlmUnavailable => Code::LlmUnavailable,
            ChatError::UpstreamTimeout => Code::UpstreamTimeout,
            ChatError::GenerationNotFound => Code::GenerationNotFound,
            ChatError::Upstream { status, detail } => {
                // The provider's own message helps the client (a bad model name, a context
                // too long); it holds no secrets of ours.
                let mut error = Self::new(Code::UpstreamError, format!("{e}: {detail}"));
                error.upstream_status = *status;
                return error;
            }
            ChatError::Internal(detail) => return Self::internal(detail),
        };
        Self::new(code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(field) => Self::new(
                if field == "username" {
                    Code::UsernameTaken
                } else {
                    Code::EmailTaken
                },
                format!("that {field} is already registered"),
            ),
            StoreError::Unavailable(detail) => {
                tracing::error!(%detail, "store unavailable");
                Self::new(Code::StorageUnavailable, "storage is unavailable")
            }
            StoreError::Fenced(_) => ChatError::Moved.into(),
            StoreError::Corrupt(detail) | StoreError::Rejected(detail) => Self::internal(detail),
        }
    }
}

/// Maps actix-web's extractor errors (a bad form, path or query) into the API error shape. JSON
/// bodies are read by `api::body`.
pub mod extractors {
    use super::*;
    use actix_web::error::{PathError, QueryPayloadError, UrlencodedError};

    pub fn form(err: UrlencodedError, _: &HttpRequest) -> actix_web::Error {
        match err {
            UrlencodedError::Overflow { .. } => ApiError::payload_too_large(),
            UrlencodedError::ContentType => {
                ApiError::unsupported_media_type("application/x-www-form-urlencoded")
            }
            other => ApiError::new(Code::ValidationFailed, other.to_string()),
        }
        .into()
    }

    pub fn path(err: PathError, _: &HttpRequest) -> actix_web::Error {
        ApiError::new(Code::InvalidId, format!("malformed path parameter: {err}")).into()
    }

    pub fn query(err: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
        ApiError::new(Code::InvalidQuery, format!("malformed query string: {err}")).into()
    }
}

impl From<arbor_actors::portable::ImportError> for ApiError {
    fn from(e: arbor_actors::portable::ImportError) -> Self {
        use arbor_actors::portable::ImportError as E;
        let code = match &e {
            E::UnsupportedFormat(_) => Code::ImportUnsupportedFormat,
            E::TooLarge(_) => Code::ImportTooLarge,
            E::InvalidText(_) => Code::ImportInvalidText,
            E::DuplicateId(_) => Code::ImportDuplicateId,
            E::DanglingParent { .. } => Code::ImportDanglingParent,
            E::Cycle(_) => Code::ImportCycle,
            E::MultipleRoots(_) => Code::ImportMultipleRoots,
            E::HeadNotInTree { .. } => Code::ImportHeadNotInTree,
            E::Unreachable(_) => Code::ImportUnreachableMessage,
            E::ActiveBranchMissing(_) => Code::ImportActiveBranchMissing,
            E::NoBranches => Code::ImportNoBranches,
        };
        Self::new(code, e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn registry() -> BTreeSet<(u16, String)> {
        Code::ALL
            .iter()
            .map(|c| (c.status().as_u16(), c.name().to_owned()))
            .collect()
    }

    #[test]
    fn codes_are_unique_snake_case() {
        let names: BTreeSet<&str> = Code::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Code::ALL.len(), "a code is listed twice");
        for name in names {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name} is not snake_case"
            );
        }
    }

    /// README's error table (`| status | `code` | meaning |`, one row per code) lists exactly
    /// the registry's codes, each with its status.
    #[test]
    fn readme_error_table_matches_the_registry() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n### Errors\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap();
        let listed: BTreeSet<(u16, String)> = section
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let status = cells.get(1)?.parse::<u16>().ok()?;
                let code = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((status, code.to_owned()))
            })
            .collect();
        let registry = registry();
        assert_eq!(
            listed.difference(&registry).collect::<Vec<_>>(),
            Vec::<&(u16, String)>::new(),
            "in README's table, not in the registry"
        );
        assert_eq!(
            registry.difference(&listed).collect::<Vec<_>>(),
            Vec::<&(u16, String)>::new(),
            "in the registry, not in README's table"
        );
    }

    /// The OpenAPI document's `ErrorDetail.code` lists exactly the registry's codes, each with
    /// its status.
    #[test]
    fn openapi_error_codes_match_the_registry() {
        let doc = crate::api::docs::document(&crate::config::LimitSettings::default());
        let code = &doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"];
        let names: Vec<&str> = code["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let listed: BTreeSet<(u16, String)> = names
            .iter()
            .map(|n| {
                let status = code["x-status"][n].as_u64().unwrap() as u16;
                (status, (*n).to_owned())
            })
            .collect();
        assert_eq!(names.len(), Code::ALL.len());
        assert_eq!(listed, registry());
    }
}
