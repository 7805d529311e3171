//! Share links. `POST /api/v1/chats/{chat_id}/shares` freezes a snapshot of a branch's path (or
//! of the whole tree) under an unguessable token; `GET /shared/{token}` shows it to anyone with
//! the link, without auth; the owner lists and revokes a chat's links; and anyone signed in can
//! import a shared conversation as a chat of their own.
//!
//! A link shows the conversation as it was when the link was made (a snapshot, not a live
//! view): what the owner adds, edits or deletes later is not shared, and any server of a
//! cluster answers from the metadata store alone. Only the SHA-256 of a token is stored, so
//! the token is shown once; lookups go by that hash and compare it in constant time, and
//! lookups that find nothing are limited per client IP (`rate_limits.share_misses_per_ip`).

use std::net::IpAddr;

use actix_web::{web, HttpRequest, HttpResponse};
use arbor_actors::model::{Branch, BranchId, ChatId, Message, MessageId};
use arbor_actors::portable::ImportedChat;
use arbor_actors::ports::{ShareRecord, Stores};
use arbor_actors::views::{ChatView, ShareScope, SharedChat};
use arbor_actors::Chats;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::body::OptionalJson;
use crate::auth::{constant_time_eq, AuthUser};
use crate::config::LimitSettings;
use crate::error::{ApiError, Code, ErrorBody};
use crate::rate_limit::RateLimits;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateShare {
    /// The branch whose path to share; the active branch by default. With `scope: tree`, the
    /// branch a viewer starts on.
    pub branch_id: Option<BranchId>,
    /// `branch` (default): that branch's path only; `tree`: every branch.
    #[serde(default)]
    pub scope: ShareScope,
}

/// A share link as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShareView {
    pub id: uuid::Uuid,
    pub scope: ShareScope,
    pub branch_id: BranchId,
    /// Messages in the snapshot.
    pub messages: u32,
    pub created_at: DateTime<Utc>,
}

/// A new share link: the only time its token is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedShare {
    #[serde(flatten)]
    pub share: ShareView,
    pub token: String,
    /// Where the snapshot is served: `/shared/{token}`.
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShareList {
    pub shares: Vec<ShareView>,
}

/// What a share link shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct SharedView {
    pub share_id: uuid::Uuid,
    /// When the link (and its snapshot) was made.
    pub shared_at: DateTime<Utc>,
    #[serde(flatten)]
    pub chat: SharedChat,
}

fn view(record: &ShareRecord) -> ShareView {
    ShareView {
        id: record.id,
        scope: match record.scope.as_str() {
            "tree" => ShareScope::Tree,
            _ => ShareScope::Branch,
        },
        branch_id: record.branch,
        messages: record.messages,
        created_at: record.created_at,
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Share a branch's path (or the whole tree) as it is now.
#[utoipa::path(post, path = "/api/v1/chats/{chat_id}/shares", operation_id = "create_share",
    tag = "shares", security(("bearer" = [])), params(("chat_id" = ChatId, Path)),
    request_body(content = Option<CreateShare>),
    responses((status = 201, body = CreatedShare), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    chats: web::Data<Chats>,
    stores: web::Data<Stores>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    chat: web::Path<ChatId>,
    body: OptionalJson<CreateShare>,
) -> Result<HttpResponse, ApiError> {
    let chat = chat.into_inner();
    let CreateShare { branch_id, scope } = body.0;
    let snapshot = chats.snapshot(user.0, chat, branch_id, scope).await?;
    if snapshot.messages.len() > limits.max_share_messages {
        return Err(ApiError::new(
            Code::ShareTooLarge,
            format!(
                "a share link holds at most {} messages",
                limits.max_share_messages
            ),
        ));
    }
    if stores.metadata.list_shares(chat).await?.len() >= limits.max_shares_per_chat {
        return Err(ApiError::new(
            Code::TooManyShares,
            format!(
                "a chat has at most {} share links; revoke one first",
                limits.max_shares_per_chat
            ),
        ));
    }
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let record = ShareRecord {
        id: uuid::Uuid::now_v7(),
        token_hash: digest(&token),
        chat,
        owner: user.0,
        scope: scope.as_str().to_owned(),
        branch: snapshot.branch_id,
        messages: u32::try_from(snapshot.messages.len()).unwrap_or(u32::MAX),
        snapshot: Some(serde_json::to_string(&snapshot).map_err(ApiError::internal)?),
        created_at: arbor_actors::model::now(),
    };
    stores.metadata.create_share(&record).await?;
    Ok(HttpResponse::Created().json(CreatedShare {
        share: view(&record),
        url: format!("/shared/{token}"),
        token,
    }))
}

/// A chat's share links, newest first (their tokens are not shown again).
#[utoipa::path(get, path = "/api/v1/chats/{chat_id}/shares", operation_id = "list_shares",
    tag = "shares", security(("bearer" = [])), params(("chat_id" = ChatId, Path)),
    responses((status = 200, body = ShareList), (status = 404, body = ErrorBody)))]
pub async fn list(
    chats: web::Data<Chats>,
    stores: web::Data<Stores>,
    user: AuthUser,
    chat: web::Path<ChatId>,
) -> Result<web::Json<ShareList>, ApiError> {
    let chat = chat.into_inner();
    chats.get(user.0, chat).await?;
    let shares = stores.metadata.list_shares(chat).await?;
    Ok(web::Json(ShareList {
        shares: shares.iter().map(view).collect(),
    }))
}

/// Revoke a share link: its token stops working at once.
#[utoipa::path(delete, path = "/api/v1/chats/{chat_id}/shares/{share_id}",
    operation_id = "revoke_share", tag = "shares", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path), ("share_id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    chats: web::Data<Chats>,
    stores: web::Data<Stores>,
    user: AuthUser,
    path: web::Path<(ChatId, uuid::Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (chat, share) = path.into_inner();
    chats.get(user.0, chat).await?;
    match stores.metadata.delete_share(chat, share).await? {
        true => Ok(HttpResponse::NoContent().finish()),
        false => Err(share_not_found()),
    }
}

fn share_not_found() -> ApiError {
    ApiError::new(Code::ShareNotFound, "no such share link")
}

/// The share a token names, counting a miss against the client's address.
async fn find(
    req: &HttpRequest,
    stores: &Stores,
    token: &str,
) -> Result<(ShareRecord, SharedChat), ApiError> {
    let limits = req.app_data::<web::Data<RateLimits>>();
    let ip: Option<IpAddr> = limits.map(|l| l.client_ip(req));
    if let (Some(limits), Some(ip)) = (limits, ip) {
        limits.check_share(ip)?;
    }
    let miss = || {
        if let (Some(limits), Some(ip)) = (limits, ip) {
            limits.share_missed(ip);
        }
        share_not_found()
    };
    let well_formed = token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(miss());
    }
    let hash = digest(&token.to_ascii_lowercase());
    let Some(record) = stores.metadata.share_by_token(&hash).await? else {
        return Err(miss());
    };
    if !constant_time_eq(&record.token_hash, &hash) {
        return Err(miss());
    }
    let snapshot = record.snapshot.as_deref().unwrap_or_default();
    let chat: SharedChat = serde_json::from_str(snapshot).map_err(ApiError::internal)?;
    Ok((record, chat))
}

/// A shared conversation, read-only, for anyone with the link.
#[utoipa::path(get, path = "/shared/{token}", operation_id = "get_shared", tag = "shares",
    params(("token" = String, Path, description = "The token from the share's creation",
        pattern = "^[0-9a-f]{64}$")),
    responses((status = 200, body = SharedView), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn shared(
    req: HttpRequest,
    stores: web::Data<Stores>,
    token: web::Path<String>,
) -> Result<web::Json<SharedView>, ApiError> {
    let (record, chat) = find(&req, &stores, &token).await?;
    Ok(web::Json(SharedView {
        share_id: record.id,
        shared_at: record.created_at,
        chat,
    }))
}

/// Import a shared conversation as a chat of the caller's own: the same messages and branches
/// under new ids, the shared branch active.
#[utoipa::path(post, path = "/api/v1/shared/{token}/import", operation_id = "import_shared",
    tag = "shares", security(("bearer" = [])),
    params(("token" = String, Path, pattern = "^[0-9a-f]{64}$")),
    responses((status = 201, body = ChatView), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn import(
    req: HttpRequest,
    chats: web::Data<Chats>,
    stores: web::Data<Stores>,
    user: AuthUser,
    token: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, shared) = find(&req, &stores, &token).await?;
    let imported = imported(shared);
    let view = chats.import(user.0, imported).await?;
    Ok(HttpResponse::Created().json(view))
}

/// A snapshot as a new chat's tree: new ids, kept times, contents, roles and models.
fn imported(shared: SharedChat) -> ImportedChat {
    let placeholder = ChatId::new();
    let mut ids: std::collections::HashMap<MessageId, MessageId> = Default::default();
    let messages: Vec<Message> = shared
        .messages
        .into_iter()
        .map(|m| {
            let id = MessageId::new();
            ids.insert(m.id, id);
            Message {
                id,
                chat_id: placeholder,
                parent_id: m.parent_id.and_then(|p| ids.get(&p).copied()),
                role: m.role,
                content: m.content.into(),
                created_at: m.created_at,
                model: m.model.map(Into::into),
                metadata: None,
                idempotency_key: None,
            }
        })
        .collect();
    let now = arbor_actors::model::now();
    let mut active = None;
    let branches = shared
        .branches
        .into_iter()
        .map(|b| {
            let id = BranchId::new();
            if b.id == shared.branch_id {
                active = Some(id);
            }
            Branch {
                id,
                chat_id: placeholder,
                name: b.name,
                head: b.head_id.and_then(|h| ids.get(&h).copied()),
                forked_from: None,
                created_at: now,
                updated_at: now,
                fallback: None,
            }
        })
        .collect::<Vec<_>>();
    let active = active
        .or_else(|| branches.first().map(|b| b.id))
        .unwrap_or_else(BranchId::new);
    ImportedChat {
        title: shared.title,
        system_prompt: None,
        description: None,
        branches,
        active,
        messages,
        created_at: None,
        updated_at: None,
        feedback: Vec::new(),
        keeps_ids: false,
    }
}
