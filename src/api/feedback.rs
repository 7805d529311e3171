//! `/api/v1/chats/{chat_id}/messages/{message_id}/feedback`: the chat owner's rating of an
//! assistant message. It shows in the message's views and is summed per model in the admin
//! stats and `/metrics`.

use actix_web::{web, HttpResponse};
use arbor_actors::model::{ChatId, MessageId, Rating};
use arbor_actors::views::MessageView;
use arbor_actors::Chats;
use serde::Deserialize;
use utoipa::ToSchema;

use super::body::Json;
use crate::auth::AuthUser;
use crate::config::LimitSettings;
use crate::domain;
use crate::error::{ApiError, ErrorBody};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetFeedback {
    pub rating: Rating,
    /// Short labels (`inaccurate`, `too long`, ...); trimmed, duplicates dropped.
    #[serde(default)]
    pub tags: Vec<String>,
    pub comment: Option<String>,
}

/// Rate an assistant message (again: the new rating replaces the old).
#[utoipa::path(put, path = "/api/v1/chats/{chat_id}/messages/{message_id}/feedback",
    operation_id = "set_feedback", tag = "messages", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path), ("message_id" = MessageId, Path)),
    request_body = SetFeedback,
    responses((status = 200, body = MessageView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn set(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    path: web::Path<(ChatId, MessageId)>,
    body: Json<SetFeedback>,
) -> Result<web::Json<MessageView>, ApiError> {
    let (chat, message) = path.into_inner();
    let SetFeedback {
        rating,
        tags,
        comment,
    } = body.into_inner();
    let feedback = domain::feedback(rating, tags, comment, &limits)?;
    let view = chats
        .set_feedback(user.0, chat, message, Some(feedback))
        .await?;
    Ok(web::Json(view))
}

/// Take a rating back (nothing to take back is fine too).
#[utoipa::path(delete, path = "/api/v1/chats/{chat_id}/messages/{message_id}/feedback",
    operation_id = "delete_feedback", tag = "messages", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path), ("message_id" = MessageId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn delete(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<(ChatId, MessageId)>,
) -> Result<HttpResponse, ApiError> {
    let (chat, message) = path.into_inner();
    chats.set_feedback(user.0, chat, message, None).await?;
    Ok(HttpResponse::NoContent().finish())
}
