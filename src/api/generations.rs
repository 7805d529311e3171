//! `/api/v1/chats/{chat_id}/generations/{generation_id}`: a reply's state, its event stream
//! (resumable) and cancellation.

use actix_web::{web, HttpRequest, HttpResponse};
use arbor_actors::model::{ChatId, GenerationId};
use arbor_actors::views::GenerationView;
use arbor_actors::Chats;
use serde::Deserialize;
use utoipa::IntoParams;

use super::sse::{self, StreamSettings};
use crate::auth::AuthUser;
use crate::error::{ApiError, Code, ErrorBody};

#[derive(Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Same as the `Last-Event-ID` header (which wins): resume after this event.
    pub last_event_id: Option<u64>,
}

/// A generation's status and, once stored, its reply's id.
#[utoipa::path(get, path = "/api/v1/chats/{chat_id}/generations/{generation_id}", operation_id = "get_generation", tag = "generations",
    security(("bearer" = [])), params(("chat_id" = ChatId, Path), ("generation_id" = GenerationId, Path)),
    responses((status = 200, body = GenerationView), (status = 404, body = ErrorBody)))]
pub async fn get(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<(ChatId, GenerationId)>,
) -> Result<web::Json<GenerationView>, ApiError> {
    let (chat, id) = path.into_inner();
    Ok(web::Json(chats.generation(user.0, chat, id)?.view()))
}

/// The generation's events as server-sent events: those after `Last-Event-ID` (all without it),
/// then the live ones until the reply ends. Events are kept `llm.event_retention_secs` after the
/// end.
#[utoipa::path(get, path = "/api/v1/chats/{chat_id}/generations/{generation_id}/events", operation_id = "stream_generation",
    tag = "generations", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path), ("generation_id" = GenerationId, Path),
        ("Last-Event-ID" = Option<u64>, Header), EventsQuery),
    responses((status = 200, content_type = "text/event-stream", body = String),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn events(
    req: HttpRequest,
    chats: web::Data<Chats>,
    settings: web::Data<StreamSettings>,
    user: AuthUser,
    path: web::Path<(ChatId, GenerationId)>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (chat, id) = path.into_inner();
    let generation = chats.generation(user.0, chat, id)?;
    let after = match req.headers().get("last-event-id") {
        None => query.last_event_id.unwrap_or(0),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::new(
                    Code::InvalidLastEventId,
                    "Last-Event-ID must be an event id (a non-negative integer)",
                )
            })?,
    };
    Ok(sse::respond(generation, after, &settings))
}

/// Stops a generation: the upstream request is dropped and the partial reply is stored, marked
/// `incomplete`. Answers once the generation has ended; cancelling an ended one changes nothing.
#[utoipa::path(post, path = "/api/v1/chats/{chat_id}/generations/{generation_id}/cancel", operation_id = "cancel_generation",
    tag = "generations", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path), ("generation_id" = GenerationId, Path)),
    responses((status = 200, body = GenerationView), (status = 404, body = ErrorBody)))]
pub async fn cancel(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<(ChatId, GenerationId)>,
) -> Result<web::Json<GenerationView>, ApiError> {
    let (chat, id) = path.into_inner();
    Ok(web::Json(chats.cancel_generation(user.0, chat, id).await?))
}
