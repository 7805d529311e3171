//! Seed 004: `/auth/signup`, `/rooms/`, `/rooms/{room_id}`, `POST /chat/{room_id}`. A room is a
//! chat (its name the title), its messages the active branch. Answers use the seed's
//! `{"message", "data"}` envelope where its README shows one.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use arbor_actors::chat::NewChat;
use arbor_actors::model::{ChatId, MessageId, Role, UserId};
use arbor_actors::views::{ChatView, MessageView};
use arbor_actors::Chats;
use chrono::{DateTime, Utc};
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{account_name, exchange};
use crate::api::auth::{RegisterRequest, Registered, UserView};
use crate::api::body::Json;
use crate::api::page_limit;
use crate::auth::{Accounts, AuthUser};
use crate::config::LimitSettings;
use crate::domain;
use crate::error::{ApiError, Code, ErrorBody};

/// Messages `GET /rooms/{room_id}` shows: the newest ten.
const ROOM_MESSAGES: usize = 10;
/// What seed 004 calls the model in `username`.
const AI_NAME: &str = "AI Assistant";

/// `{"message": ..., "data": {...}}`.
#[derive(Serialize, ToSchema)]
pub struct Envelope<T: Serialize> {
    message: &'static str,
    data: T,
}

fn envelope<T: Serialize>(message: &'static str, data: T) -> HttpResponse {
    HttpResponse::Ok().json(Envelope { message, data })
}

#[derive(Serialize, ToSchema)]
pub struct UserData {
    user: UserView,
}

/// Seed 004's new account: its email is required.
#[derive(Deserialize, ToSchema)]
pub struct SignupRequest {
    pub username: Option<String>,
    pub email: String,
    pub password: String,
}

/// `POST /auth/signup`: `{"username", "email", "password"}`.
#[utoipa::path(post, path = "/auth/signup", operation_id = "seed_signup", tag = "seed 004",
    request_body = SignupRequest,
    responses((status = 200, description = "The new account", body = Envelope<UserData>),
        (status = 409, body = ErrorBody)))]
pub async fn signup(
    attempt: crate::rate_limit::AuthAttempt,
    accounts: web::Data<Accounts>,
    body: Json<SignupRequest>,
) -> Result<HttpResponse, ApiError> {
    let SignupRequest {
        username,
        email,
        password,
    } = body.into_inner();
    let body = RegisterRequest {
        email: Some(email),
        username,
        password,
    };
    let registered = attempt
        .slowly(Registered::create(&accounts, body).await)
        .await?;
    Ok(envelope(
        "User created successfully",
        UserData {
            user: registered.account,
        },
    ))
}

/// A room: a chat with its name, description and owner.
#[derive(Serialize, ToSchema)]
pub struct Room {
    pub id: ChatId,
    pub name: Option<String>,
    pub description: Option<String>,
    pub created_by: UserId,
    pub created_at: DateTime<Utc>,
    /// Messages in the room's conversation (its active branch).
    pub message_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<RoomMessage>>,
}

impl Room {
    fn of(chat: &ChatView, owner: UserId, message_count: usize) -> Self {
        Self {
            id: chat.id,
            name: chat.title.clone(),
            description: chat.description.clone(),
            created_by: owner,
            created_at: chat.created_at,
            message_count,
            messages: None,
        }
    }

    fn active_count(chat: &ChatView) -> usize {
        chat.branches
            .iter()
            .find(|b| b.id == chat.active_branch_id)
            .map_or(0, |b| b.message_count)
    }
}

/// A message as seed 004 shows it: `message_type` `user` or `ai`; `user_id` null for the AI.
#[derive(Serialize, ToSchema)]
pub struct RoomMessage {
    pub id: MessageId,
    pub m_id: MessageId,
    #[schema(value_type = String)]
    pub content: Arc<str>,
    pub user_id: Option<UserId>,
    pub room_id: ChatId,
    pub message_type: &'static str,
    pub username: String,
    pub created_at: DateTime<Utc>,
}

impl RoomMessage {
    fn of(message: &MessageView, owner: UserId, owner_name: &str) -> Self {
        let (message_type, user_id, username) = match message.role {
            Role::User => ("user", Some(owner), owner_name.to_owned()),
            Role::Assistant => ("ai", None, AI_NAME.to_owned()),
            Role::System => ("system", None, "system".to_owned()),
        };
        Self {
            id: message.id,
            m_id: message.id,
            content: message.content.clone(),
            user_id,
            room_id: message.chat_id,
            message_type,
            username,
            created_at: message.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct CreateRoom {
    pub name: String,
    pub description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RoomData {
    room: Room,
}

/// `POST /rooms/`: `{"name", "description"}`.
#[utoipa::path(post, path = "/rooms/", operation_id = "seed_create_room", tag = "seed 004",
    security(("bearer" = [])), request_body = CreateRoom,
    responses((status = 200, description = "The new room", body = Envelope<RoomData>)))]
pub async fn create(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    body: Json<CreateRoom>,
) -> Result<HttpResponse, ApiError> {
    let name = domain::title(Some(&body.name), limits.max_title_chars)?
        .ok_or_else(|| ApiError::new(Code::InvalidTitle, "a room needs a `name`"))?;
    let new = NewChat {
        title: Some(name),
        description: domain::description(
            body.description.as_deref(),
            limits.max_description_chars,
        )?,
        system_prompt: None,
    };
    let chat = chats.create(user.0, new).await?;
    Ok(envelope(
        "Room created successfully",
        RoomData {
            room: Room::of(&chat, user.0, 0),
        },
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Rooms per page.
    pub limit: Option<usize>,
    /// The page: rooms older than this one.
    pub before: Option<ChatId>,
}

#[derive(Serialize, ToSchema)]
pub struct RoomsData {
    rooms: Vec<Room>,
}

/// `GET /rooms/`: the caller's rooms, newest first, with their message counts.
#[utoipa::path(get, path = "/rooms/", operation_id = "seed_list_rooms", tag = "seed 004",
    security(("bearer" = [])), params(ListQuery),
    responses((status = 200, description = "The caller's rooms, newest first", body = Envelope<RoomsData>)))]
pub async fn list(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit, &limits)?;
    let page = chats.list(user.0, limit, query.before).await?;
    let views = try_join_all(page.chats.iter().map(|c| chats.get(user.0, c.id))).await?;
    let rooms = views
        .iter()
        .map(|chat| Room::of(chat, user.0, Room::active_count(chat)))
        .collect();
    Ok(envelope(
        "Rooms retrieved successfully",
        RoomsData { rooms },
    ))
}

/// `GET /rooms/{room_id}`: the room with its newest ten messages, oldest first.
#[utoipa::path(get, path = "/rooms/{room_id}", operation_id = "seed_get_room", tag = "seed 004",
    security(("bearer" = [])), params(("room_id" = ChatId, Path)),
    responses((status = 200, description = "The room with its newest ten messages", body = Room),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    chats: web::Data<Chats>,
    accounts: web::Data<Accounts>,
    user: AuthUser,
    path: web::Path<ChatId>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let (chat, page) = futures_util::try_join!(
        chats.get(user.0, id),
        chats.list_messages(user.0, id, None, ROOM_MESSAGES, None)
    )?;
    let name = account_name(&accounts, user.0).await?;
    let mut room = Room::of(&chat, user.0, page.total);
    room.messages = Some(
        page.messages
            .iter()
            .map(|m| RoomMessage::of(m, user.0, &name))
            .collect(),
    );
    Ok(HttpResponse::Ok().json(room))
}

#[derive(Deserialize, ToSchema)]
pub struct SendToRoom {
    pub content: String,
}

#[derive(Serialize, ToSchema)]
pub struct Exchange {
    user_message: RoomMessage,
    ai_message: RoomMessage,
}

#[derive(Serialize, ToSchema)]
pub struct MessagesData {
    messages: Exchange,
}

/// `POST /chat/{room_id}`: `{"content"}`; answers with the stored message and the model's reply.
#[utoipa::path(post, path = "/chat/{room_id}", operation_id = "seed_send_to_room", tag = "seed 004",
    security(("bearer" = [])), params(("room_id" = ChatId, Path)), request_body = SendToRoom,
    responses((status = 200, description = "The message and the model's reply", body = Envelope<MessagesData>),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
pub async fn send(
    chats: web::Data<Chats>,
    accounts: web::Data<Accounts>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    path: web::Path<ChatId>,
    body: Json<SendToRoom>,
) -> Result<HttpResponse, ApiError> {
    let content = domain::content(&body.content, limits.max_message_chars)?;
    let (question, answer) = exchange(&chats, user.0, path.into_inner(), content, None).await?;
    let name = account_name(&accounts, user.0).await?;
    Ok(envelope(
        "Messages sent successfully",
        MessagesData {
            messages: Exchange {
                user_message: RoomMessage::of(&question, user.0, &name),
                ai_message: RoomMessage::of(&answer, user.0, &name),
            },
        },
    ))
}
