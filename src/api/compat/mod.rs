//! The seed products' APIs (see COMPAT.md): thin handlers onto the same `Chats` operations as
//! Arbor's own API, answering in each seed's documented shapes.
//!
//! - `v1`: `/api/v1/{chats,messages,branches,conversations}/...` (seeds 000, 001, 002; their
//!   `/api/v1/auth/*` is Arbor's own);
//! - `plain`: `/chats`, `/chat`, `/` (seed 003; its `/auth/*` is Arbor's, mounted at the root);
//! - `rooms`: `/auth/signup`, `/rooms`, `/chat/{room_id}` (seed 004).
//!
//! Where the seeds leave a status code unstated, these endpoints answer 200 like the FastAPI
//! services they replace.

pub mod openapi;
pub mod plain;
pub mod qa;
pub mod rooms;
pub mod v1;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use arbor_actors::model::{BranchId, ChatId, MessageId, Role, UserId};
use arbor_actors::views::{BranchView, ChatView, MessageView, TreeView};
use arbor_actors::{Chats, SendRequest};

use super::methods::{delete, get, patch, post, put, resource};
use super::segments::SegmentScope;
use crate::auth::{Accounts, AuthUser};
use crate::error::ApiError;

/// The seed 000–002 routes under `/api/v1/chats`, added to that scope before Arbor's own
/// `/{chat_id}` routes, which would otherwise claim `/create-chat`.
pub fn v1_chat_routes(scope: SegmentScope) -> SegmentScope {
    scope
        .resource("/create-chat", vec![post().to(v1::create_chat)])
        .resource("/create-conversation", vec![post().to(v1::create_branch)])
        .resource("/get-chat", vec![get().to(v1::get_chat)])
        .resource("/update-chat/{chat_id}", vec![put().to(v1::update_chat)])
        .resource("/delete-chat/{chat_id}", vec![delete().to(delete_chat)])
}

/// The rest of the seed 000–002 routes under `/api/v1`.
pub fn v1_routes(scope: actix_web::Scope) -> actix_web::Scope {
    scope
        .service(resource(
            "/messages/add-message",
            vec![post().to(v1::add_message)],
        ))
        .service(resource(
            "/messages/get-chat",
            vec![get().to(v1::branch_messages)],
        ))
        .service(resource(
            "/branches/create-branch",
            vec![post().to(v1::create_branch)],
        ))
        .service(resource(
            "/branches/get-branches",
            vec![get().to(v1::branches)],
        ))
        .service(resource(
            "/branches/set-active-branch",
            vec![put().to(v1::set_active_branch)],
        ))
        .service(resource(
            "/conversations/",
            vec![post().to(v1::add_message)],
        ))
        .service(resource("/conversations", vec![post().to(v1::add_message)]))
}

/// The seed 003 and 004 routes at the root.
pub fn root_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/", vec![get().to(plain::root)]))
        .service(resource(
            "/auth/register",
            vec![post().to(super::auth::register)],
        ))
        .service(resource("/auth/signup", vec![post().to(rooms::signup)]))
        .service(resource("/auth/login", vec![post().to(super::auth::login)]))
        .service(resource("/auth/token", vec![post().to(super::auth::token)]))
        .service(resource("/auth/me", vec![get().to(super::auth::me)]))
        .service(resource(
            "/chats",
            vec![post().to(plain::create_chat), get().to(plain::list_chats)],
        ))
        .service(resource(
            "/chats/{chat_id}",
            vec![
                get().to(plain::get_chat),
                patch().to(plain::update_chat),
                delete().to(delete_chat),
            ],
        ))
        .service(resource(
            "/chats/{chat_id}/messages",
            vec![get().to(plain::messages)],
        ))
        .service(resource("/chat", vec![post().to(plain::chat)]))
        .service(rooms_resource("/rooms/"))
        .service(rooms_resource("/rooms"))
        .service(resource("/rooms/{room_id}", vec![get().to(rooms::get)]))
        .service(resource("/chat/{room_id}", vec![post().to(rooms::send)]));
}

/// `/rooms/`, and `/rooms`, which FastAPI would redirect there.
fn rooms_resource(path: &str) -> actix_web::Resource {
    resource(path, vec![post().to(rooms::create), get().to(rooms::list)])
}

/// A chat and its whole tree, read together for the views that need every branch's path.
pub struct Snapshot {
    pub chat: ChatView,
    pub tree: TreeView,
    /// Message id → its position in `tree.nodes`, built once for every path walked.
    positions: HashMap<MessageId, usize>,
}

impl Snapshot {
    pub async fn read(chats: &Chats, user: UserId, chat: ChatId) -> Result<Self, ApiError> {
        let (chat, tree) = futures_util::try_join!(chats.get(user, chat), chats.tree(user, chat))?;
        let positions = tree
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.message.id, i))
            .collect();
        Ok(Self {
            chat,
            tree,
            positions,
        })
    }

    /// The path from the root to `head`, root first.
    pub fn path_to(&self, head: Option<MessageId>) -> Vec<MessageView> {
        let mut path = Vec::new();
        let mut next = head;
        while let Some(&i) = next.and_then(|id| self.positions.get(&id)) {
            let message = &self.tree.nodes[i].message;
            path.push(message.clone());
            next = message.parent_id;
        }
        path.reverse();
        path
    }

    pub fn branch(&self, id: BranchId) -> Option<&BranchView> {
        self.tree.branches.iter().find(|b| b.id == id)
    }

    /// The chat's own line: the oldest branch not forked from anything (`main`).
    pub fn root_branch(&self) -> Option<&BranchView> {
        self.tree
            .branches
            .iter()
            .filter(|b| b.forked_from_message_id.is_none())
            .min_by_key(|b| b.id)
    }
}

/// Sends `content` to the chat's active branch and waits for the model's reply: the stored
/// question and answer (seeds 003 and 004 answer with both at once).
pub async fn exchange(
    chats: &Chats,
    user: UserId,
    chat: ChatId,
    content: Arc<str>,
    model: Option<Arc<str>>,
) -> Result<(MessageView, MessageView), ApiError> {
    let send = SendRequest {
        branch: None,
        role: Role::User,
        content,
        response: None,
        model,
        metadata: None,
        reply: true,
        idempotency_key: None,
    };
    let view = chats.send(user, chat, send).await?.finish().await?;
    let mut messages = view.messages.into_iter();
    match (messages.next(), messages.next()) {
        (Some(question), Some(answer)) => Ok((question, answer)),
        _ => Err(ApiError::internal("a send with a reply returned no reply")),
    }
}

/// `DELETE /api/v1/chats/delete-chat/{chat_id}` (001) and `DELETE /chats/{chat_id}` (003).
#[utoipa::path(delete, path = "/api/v1/chats/delete-chat/{chat_id}", operation_id = "seed_delete_chat",
    tag = "seed 001", security(("bearer" = [])), params(("chat_id" = ChatId, Path)),
    responses((status = 200, description = "The chat and everything in it are deleted", body = Acknowledged),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_chat(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<ChatId>,
) -> Result<HttpResponse, ApiError> {
    let chat = path.into_inner();
    chats.delete(user.0, chat).await?;
    Ok(HttpResponse::Ok().json(Acknowledged {
        message: "Chat deleted successfully.",
        chat_id: Some(chat),
        branch_id: None,
    }))
}

/// How the seeds name an account in their views: the username, or the email without one.
pub async fn account_name(accounts: &Accounts, user: UserId) -> Result<String, ApiError> {
    let record = accounts.user(user).await?;
    Ok(record.username.or(record.email).unwrap_or_default())
}

/// A seed's `{"message": ..., "chat_id": ...}` acknowledgement.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Acknowledged {
    pub message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<ChatId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch_id: Option<BranchId>,
}
