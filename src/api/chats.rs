//! `/api/v1/chats`: create, list, get, update, delete.

use actix_web::{web, HttpResponse};
use arbor_actors::chat::{ChatPatch, NewChat};
use arbor_actors::model::ChatId;
use arbor_actors::views::{ChatList, ChatView};
use arbor_actors::Chats;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::body::{Json, OptionalJson};
use super::{double_option, page_limit};
use crate::auth::AuthUser;
use crate::config::LimitSettings;
use crate::domain;
use crate::error::{ApiError, ErrorBody};

#[derive(Deserialize, ToSchema, Default)]
pub struct CreateChat {
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub description: Option<String>,
}

/// Absent fields are left alone; `null` clears.
#[derive(Deserialize, ToSchema)]
pub struct UpdateChat {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub title: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub system_prompt: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
}

#[derive(Deserialize, IntoParams)]
pub struct ListChatsQuery {
    /// Page size (default and maximum are configured).
    pub limit: Option<usize>,
    /// Return chats older than this chat id (the previous page's `next_before`).
    pub before: Option<ChatId>,
}

#[utoipa::path(post, path = "/api/v1/chats", operation_id = "create_chat", tag = "chats", security(("bearer" = [])),
    request_body(content = Option<CreateChat>, description = "Optional: no body makes an untitled chat."),
    responses((status = 201, body = ChatView), (status = 422, body = ErrorBody)))]
pub async fn create(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    OptionalJson(body): OptionalJson<CreateChat>,
) -> Result<HttpResponse, ApiError> {
    let new = NewChat {
        title: domain::title(body.title.as_deref(), limits.max_title_chars)?,
        system_prompt: domain::system_prompt(
            body.system_prompt.as_deref(),
            limits.max_system_prompt_chars,
        )?,
        description: domain::description(
            body.description.as_deref(),
            limits.max_description_chars,
        )?,
    };
    let chat = chats.create(user.0, new).await?;
    Ok(HttpResponse::Created().json(chat))
}

/// The caller's chats, newest first. In `buffered` mode a change may take one flush interval to
/// show here.
#[utoipa::path(get, path = "/api/v1/chats", operation_id = "list_chats", tag = "chats", security(("bearer" = [])),
    params(ListChatsQuery), responses((status = 200, body = ChatList)))]
pub async fn list(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    query: web::Query<ListChatsQuery>,
) -> Result<web::Json<ChatList>, ApiError> {
    let limit = page_limit(query.limit, &limits)?;
    Ok(web::Json(chats.list(user.0, limit, query.before).await?))
}

#[utoipa::path(get, path = "/api/v1/chats/{chat_id}", operation_id = "get_chat", tag = "chats", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path)), responses((status = 200, body = ChatView), (status = 404, body = ErrorBody)))]
pub async fn get(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<ChatId>,
) -> Result<web::Json<ChatView>, ApiError> {
    Ok(web::Json(chats.get(user.0, path.into_inner()).await?))
}

#[utoipa::path(patch, path = "/api/v1/chats/{chat_id}", operation_id = "update_chat", tag = "chats", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path)), request_body = UpdateChat,
    responses((status = 200, body = ChatView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    path: web::Path<ChatId>,
    body: Json<UpdateChat>,
) -> Result<web::Json<ChatView>, ApiError> {
    let patch = ChatPatch {
        title: body
            .title
            .as_ref()
            .map(|t| domain::title(t.as_deref(), limits.max_title_chars))
            .transpose()?,
        system_prompt: body
            .system_prompt
            .as_ref()
            .map(|p| domain::system_prompt(p.as_deref(), limits.max_system_prompt_chars))
            .transpose()?,
        description: body
            .description
            .as_ref()
            .map(|d| domain::description(d.as_deref(), limits.max_description_chars))
            .transpose()?,
    };
    let chat = chats.update(user.0, path.into_inner(), patch).await?;
    Ok(web::Json(chat))
}

#[utoipa::path(delete, path = "/api/v1/chats/{chat_id}", operation_id = "delete_chat", tag = "chats", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<ChatId>,
) -> Result<HttpResponse, ApiError> {
    chats.delete(user.0, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}
