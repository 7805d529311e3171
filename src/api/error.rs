//! The one API error type: every failure becomes `{"error": {"code", "message"}, "detail"}`
//! with a stable snake_case code (`detail` repeats the message, as FastAPI clients expect).
//! 5xx details go to the log, never to the client.

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use arbor_actors::ports::StoreError;
use arbor_actors::ChatError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    upstream_status: Option<u16>,
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
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            upstream_status: None,
        }
    }

    /// The body's `error` object.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.to_owned(),
            message: self.message.clone(),
            upstream_status: self.upstream_status,
        }
    }

    pub fn validation(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; it has been logged",
        )
    }

    /// A body over `limits.max_body_bytes`.
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    }

    /// A body not of the media type the endpoint reads (`application/json`, ...).
    pub fn unsupported_media_type(expected: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send the body as {expected}"),
        )
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.insert_header((header::RETRY_AFTER, "1"));
        }
        res.json(ErrorBody::of(self))
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            ChatError::ChatNotFound => (S::NOT_FOUND, "chat_not_found"),
            ChatError::MessageNotFound(_) => (S::NOT_FOUND, "message_not_found"),
            ChatError::BranchNotFound(_) => (S::NOT_FOUND, "branch_not_found"),
            ChatError::IndexOutOfRange { .. } => {
                (S::UNPROCESSABLE_ENTITY, "message_index_out_of_range")
            }
            ChatError::CursorNotOnPath => (S::UNPROCESSABLE_ENTITY, "invalid_cursor"),
            ChatError::LastBranch => (S::CONFLICT, "last_branch"),
            ChatError::ChatFull(_) => (S::CONFLICT, "chat_full"),
            ChatError::GenerationInProgress => (S::CONFLICT, "generation_in_progress"),
            ChatError::IdempotencyMismatch => (S::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            ChatError::Invalid(_) => (S::UNPROCESSABLE_ENTITY, "validation_failed"),
            ChatError::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded"),
            ChatError::StorageUnavailable => (S::SERVICE_UNAVAILABLE, "storage_unavailable"),
            ChatError::UnknownModel(_) => (S::UNPROCESSABLE_ENTITY, "unknown_model"),
            ChatError::LlmOverloaded => (S::SERVICE_UNAVAILABLE, "llm_overloaded"),
            ChatError::LlmUnavailable => (S::SERVICE_UNAVAILABLE, "llm_unavailable"),
            ChatError::UpstreamTimeout => (S::GATEWAY_TIMEOUT, "upstream_timeout"),
            ChatError::GenerationNotFound => (S::NOT_FOUND, "generation_not_found"),
            ChatError::Upstream { status, detail } => {
                // The provider's own message helps the client (a bad model name, a context
                // too long); it holds no secrets of ours.
                let mut error =
                    Self::new(S::BAD_GATEWAY, "upstream_error", format!("{e}: {detail}"));
                error.upstream_status = *status;
                return error;
            }
            ChatError::Internal(detail) => return Self::internal(detail),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(field) => Self::new(
                StatusCode::CONFLICT,
                if field == "username" {
                    "username_taken"
                } else {
                    "email_taken"
                },
                format!("that {field} is already registered"),
            ),
            StoreError::Unavailable(detail) => {
                tracing::error!(%detail, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "storage is unavailable",
                )
            }
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
            other => ApiError::validation("validation_failed", other.to_string()),
        }
        .into()
    }

    pub fn path(err: PathError, _: &HttpRequest) -> actix_web::Error {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("malformed path parameter: {err}"),
        )
        .into()
    }

    pub fn query(err: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("malformed query string: {err}"),
        )
        .into()
    }
}
