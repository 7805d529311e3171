//! Seed 003: `/chats` CRUD, `/chats/{chat_id}/messages`, `POST /chat` and `/`, at the root.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use arbor_actors::chat::{ChatPatch, NewChat};
use arbor_actors::model::{BranchId, ChatId, MessageId, Role, UserId};
use arbor_actors::views::{ChatSummary, ChatView, MessageView};
use arbor_actors::Chats;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::exchange;
use crate::api::body::{Json, OptionalJson};
use crate::api::page_limit;
use crate::auth::AuthUser;
use crate::config::LimitSettings;
use crate::domain;
use crate::error::{ApiError, ErrorBody};

/// What `GET /` answers: where the docs and the health check are.
#[derive(Serialize, ToSchema)]
pub struct ServiceInfo {
    pub message: &'static str,
    pub version: &'static str,
    pub docs: &'static str,
    pub health: &'static str,
}

/// `GET /`.
#[utoipa::path(get, path = "/", operation_id = "seed_root", tag = "seed 003",
    responses((status = 200, description = "The service, its version and where its docs are", body = ServiceInfo)))]
pub async fn root() -> HttpResponse {
    HttpResponse::Ok().json(ServiceInfo {
        message: "Arbor: branching AI conversations",
        version: env!("CARGO_PKG_VERSION"),
        docs: "/docs",
        health: "/health",
    })
}

/// A chat as seed 003 keeps it.
#[derive(Serialize, ToSchema)]
#[schema(as = Seed003Chat)]
pub struct ChatPlain {
    pub id: ChatId,
    pub user_id: UserId,
    pub title: Option<String>,
    pub active_branch_id: BranchId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<MessagePlain>>,
}

impl ChatPlain {
    fn of(chat: &ChatView, user: UserId) -> Self {
        Self {
            message_count: Some(chat.message_count),
            ..Self::summary(&ChatSummary::from(chat), user)
        }
    }

    fn summary(chat: &ChatSummary, user: UserId) -> Self {
        Self {
            id: chat.id,
            user_id: user,
            title: chat.title.clone(),
            active_branch_id: chat.active_branch_id,
            created_at: chat.created_at,
            updated_at: chat.updated_at,
            message_count: None,
            messages: None,
        }
    }
}

/// A message as seed 003 keeps it.
#[derive(Serialize, ToSchema)]
#[schema(as = Seed003Message)]
pub struct MessagePlain {
    pub id: MessageId,
    pub chat_id: ChatId,
    pub parent_id: Option<MessageId>,
    pub role: Role,
    #[schema(value_type = String)]
    pub content: Arc<str>,
    #[schema(value_type = Option<String>)]
    pub model: Option<Arc<str>>,
    pub created_at: DateTime<Utc>,
}

impl From<MessageView> for MessagePlain {
    fn from(m: MessageView) -> Self {
        Self {
            id: m.id,
            chat_id: m.chat_id,
            parent_id: m.parent_id,
            role: m.role,
            content: m.content,
            model: m.model,
            created_at: m.created_at,
        }
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[schema(as = Seed003ChatBody)]
pub struct ChatBody {
    /// `null` clears it (on update).
    pub title: Option<String>,
}

/// `POST /chats`.
#[utoipa::path(post, path = "/chats", operation_id = "seed_create_plain_chat", tag = "seed 003",
    security(("bearer" = [])), request_body(content = Option<ChatBody>),
    responses((status = 200, description = "The new chat", body = ChatPlain)))]
pub async fn create_chat(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    OptionalJson(body): OptionalJson<ChatBody>,
) -> Result<HttpResponse, ApiError> {
    let new = NewChat {
        title: domain::title(body.title.as_deref(), limits.max_title_chars)?,
        ..NewChat::default()
    };
    let chat = chats.create(user.0, new).await?;
    Ok(HttpResponse::Ok().json(ChatPlain::of(&chat, user.0)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Chats per page.
    pub limit: Option<usize>,
    /// The page: chats older than this one.
    pub before: Option<ChatId>,
}

/// `GET /chats`: the caller's chats, newest first (up to `limits.max_page_size`; page with
/// `before`).
#[utoipa::path(get, path = "/chats", operation_id = "seed_list_plain_chats", tag = "seed 003",
    security(("bearer" = [])), params(ListQuery),
    responses((status = 200, description = "The caller's chats, newest first", body = Vec<ChatPlain>)))]
pub async fn list_chats(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(Some(query.limit.unwrap_or(limits.max_page_size)), &limits)?;
    let page = chats.list(user.0, limit, query.before).await?;
    let list: Vec<ChatPlain> = page
        .chats
        .iter()
        .map(|c| ChatPlain::summary(c, user.0))
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// The active branch's whole path.
async fn active_path(
    chats: &Chats,
    user: UserId,
    chat: ChatId,
) -> Result<Vec<MessagePlain>, ApiError> {
    let page = chats
        .list_messages(user, chat, None, usize::MAX, None)
        .await?;
    Ok(page.messages.into_iter().map(MessagePlain::from).collect())
}

/// `GET /chats/{chat_id}`: the chat with its (active branch's) messages.
#[utoipa::path(get, path = "/chats/{chat_id}", operation_id = "seed_get_plain_chat", tag = "seed 003",
    security(("bearer" = [])), params(("chat_id" = ChatId, Path)),
    responses((status = 200, description = "The chat with its active branch's messages", body = ChatPlain),
        (status = 404, body = ErrorBody)))]
pub async fn get_chat(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<ChatId>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let (chat, messages) = futures_util::try_join!(
        async { Ok(chats.get(user.0, id).await?) },
        active_path(&chats, user.0, id)
    )?;
    let mut view = ChatPlain::of(&chat, user.0);
    view.messages = Some(messages);
    Ok(HttpResponse::Ok().json(view))
}

/// `GET /chats/{chat_id}/messages`: every message of the active branch, oldest first.
#[utoipa::path(get, path = "/chats/{chat_id}/messages", operation_id = "seed_list_plain_messages", tag = "seed 003",
    security(("bearer" = [])), params(("chat_id" = ChatId, Path)),
    responses((status = 200, description = "The active branch's messages, oldest first", body = Vec<MessagePlain>),
        (status = 404, body = ErrorBody)))]
pub async fn messages(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<ChatId>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(active_path(&chats, user.0, path.into_inner()).await?))
}

/// `PATCH /chats/{chat_id}`: `{"title"}` (`null` clears it).
#[utoipa::path(patch, path = "/chats/{chat_id}", operation_id = "seed_update_plain_chat", tag = "seed 003",
    security(("bearer" = [])), params(("chat_id" = ChatId, Path)), request_body = ChatBody,
    responses((status = 200, description = "The chat", body = ChatPlain), (status = 404, body = ErrorBody)))]
pub async fn update_chat(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    path: web::Path<ChatId>,
    body: Json<ChatBody>,
) -> Result<HttpResponse, ApiError> {
    let patch = ChatPatch {
        title: Some(domain::title(
            body.title.as_deref(),
            limits.max_title_chars,
        )?),
        ..ChatPatch::default()
    };
    let chat = chats.update(user.0, path.into_inner(), patch).await?;
    Ok(HttpResponse::Ok().json(ChatPlain::of(&chat, user.0)))
}

/// A message for `POST /chat`.
#[derive(Deserialize, ToSchema)]
#[schema(as = Seed003ChatMessage)]
pub struct ChatMessage {
    /// Absent: a new chat is created, titled after the message.
    pub chat_id: Option<ChatId>,
    pub message: String,
    /// A model alias, `provider/model` or a provider; see [`model_for`].
    pub model: Option<String>,
}

/// What `POST /chat` answers.
#[derive(Serialize, ToSchema)]
#[schema(as = Seed003ChatReply)]
pub struct ChatReply {
    pub chat_id: ChatId,
    /// The assistant's answer.
    #[schema(value_type = String)]
    pub response: Arc<str>,
    /// The model that answered (`provider/model`).
    #[schema(value_type = Option<String>)]
    pub model: Option<Arc<str>>,
    pub user_message: MessagePlain,
    pub assistant_message: MessagePlain,
}

/// The model for a seed 003 request: its `model` if Arbor knows it; a bare alias Arbor does not
/// know (the seed's own `fast`, `balanced`, ...) means the default model, unless configured
/// under `llm.aliases`.
fn model_for(chats: &Chats, requested: Option<String>) -> Option<Arc<str>> {
    let name = requested?;
    let known = chats.llm().resolve(Some(&name)).is_ok();
    (known || name.contains('/')).then(|| Arc::from(name))
}

/// `POST /chat`: sends the message and answers with the model's reply (on the active branch).
#[utoipa::path(post, path = "/chat", operation_id = "seed_chat", tag = "seed 003",
    security(("bearer" = [])), request_body = ChatMessage,
    responses((status = 200, description = "The message and the model's reply", body = ChatReply),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
pub async fn chat(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    body: Json<ChatMessage>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let content = domain::content(&body.message, limits.max_message_chars)?;
    let chat = match body.chat_id {
        Some(chat) => chat,
        None => {
            let title: String = content.chars().take(60).collect();
            let new = NewChat {
                title: domain::title(Some(&title), limits.max_title_chars)?,
                ..NewChat::default()
            };
            chats.create(user.0, new).await?.id
        }
    };
    let (question, answer) =
        exchange(&chats, user.0, chat, content, model_for(&chats, body.model)).await?;
    Ok(HttpResponse::Ok().json(ChatReply {
        chat_id: chat,
        response: answer.content.clone(),
        model: answer.model.clone(),
        user_message: question.into(),
        assistant_message: answer.into(),
    }))
}
