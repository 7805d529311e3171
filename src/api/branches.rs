//! `/api/v1/chats/{chat_id}/branches` and `/active-branch`.

use actix_web::{web, HttpResponse};
use arbor_actors::chat::ForkPoint;
use arbor_actors::model::{BranchId, ChatId, MessageId};
use arbor_actors::views::{BranchDeletedView, BranchView, ChatView};
use arbor_actors::Chats;
use serde::Deserialize;
use utoipa::ToSchema;

use super::body::Json;
use crate::auth::AuthUser;
use crate::config::LimitSettings;
use crate::domain;
use crate::error::{ApiError, Code, ErrorBody};

/// Fork from `from_message_id`, or from `message_index` (0-based) on `from_branch_id` (the active
/// branch by default).
#[derive(Deserialize, ToSchema)]
pub struct CreateBranch {
    pub from_message_id: Option<MessageId>,
    pub from_branch_id: Option<BranchId>,
    #[serde(default, deserialize_with = "crate::api::integral")]
    pub message_index: Option<usize>,
    pub name: Option<String>,
    /// Make the new branch active (default false).
    #[serde(default)]
    pub activate: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct RenameBranch {
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
pub struct SetActiveBranch {
    pub branch_id: BranchId,
}

fn fork_point(body: &CreateBranch) -> Result<ForkPoint, ApiError> {
    match (body.from_message_id, body.message_index) {
        (Some(id), None) if body.from_branch_id.is_none() => Ok(ForkPoint::Message(id)),
        (None, Some(index)) => Ok(ForkPoint::Index {
            branch: body.from_branch_id,
            index,
        }),
        (None, None) => Err(ApiError::new(
            Code::MissingForkPoint,
            "give `from_message_id`, or `message_index` (with an optional `from_branch_id`)",
        )),
        _ => Err(ApiError::new(
            Code::ValidationFailed,
            "give `from_message_id` or `message_index`, not both",
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/chats/{chat_id}/branches", operation_id = "create_branch", tag = "branches", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path)), request_body = CreateBranch,
    responses((status = 201, body = BranchView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    path: web::Path<ChatId>,
    body: Json<CreateBranch>,
) -> Result<HttpResponse, ApiError> {
    let from = fork_point(&body)?;
    let name = domain::optional_branch_name(body.name.as_deref(), limits.max_branch_name_chars)?;
    let branch = chats
        .fork(user.0, path.into_inner(), from, name, body.activate)
        .await?;
    Ok(HttpResponse::Created().json(branch))
}

#[utoipa::path(get, path = "/api/v1/chats/{chat_id}/branches", operation_id = "list_branches", tag = "branches", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path)), responses((status = 200, body = Vec<BranchView>), (status = 404, body = ErrorBody)))]
pub async fn list(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<ChatId>,
) -> Result<web::Json<Vec<BranchView>>, ApiError> {
    Ok(web::Json(chats.branches(user.0, path.into_inner()).await?))
}

#[utoipa::path(get, path = "/api/v1/chats/{chat_id}/branches/{branch_id}", operation_id = "get_branch", tag = "branches",
    security(("bearer" = [])), params(("chat_id" = ChatId, Path), ("branch_id" = BranchId, Path)),
    responses((status = 200, body = BranchView), (status = 404, body = ErrorBody)))]
pub async fn get(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<(ChatId, BranchId)>,
) -> Result<web::Json<BranchView>, ApiError> {
    let (chat, branch) = path.into_inner();
    Ok(web::Json(chats.branch(user.0, chat, branch).await?))
}

#[utoipa::path(patch, path = "/api/v1/chats/{chat_id}/branches/{branch_id}", operation_id = "rename_branch", tag = "branches",
    security(("bearer" = [])), params(("chat_id" = ChatId, Path), ("branch_id" = BranchId, Path)),
    request_body = RenameBranch,
    responses((status = 200, body = BranchView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rename(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    path: web::Path<(ChatId, BranchId)>,
    body: Json<RenameBranch>,
) -> Result<web::Json<BranchView>, ApiError> {
    let (chat, branch) = path.into_inner();
    let name = domain::branch_name(&body.name, limits.max_branch_name_chars)?;
    Ok(web::Json(
        chats.rename_branch(user.0, chat, branch, name).await?,
    ))
}

/// Delete a branch and the messages no other branch reaches. The last branch cannot go (409).
#[utoipa::path(delete, path = "/api/v1/chats/{chat_id}/branches/{branch_id}", operation_id = "delete_branch", tag = "branches",
    security(("bearer" = [])), params(("chat_id" = ChatId, Path), ("branch_id" = BranchId, Path)),
    responses((status = 200, body = BranchDeletedView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<(ChatId, BranchId)>,
) -> Result<web::Json<BranchDeletedView>, ApiError> {
    let (chat, branch) = path.into_inner();
    Ok(web::Json(chats.delete_branch(user.0, chat, branch).await?))
}

#[utoipa::path(put, path = "/api/v1/chats/{chat_id}/active-branch", operation_id = "set_active_branch", tag = "branches", security(("bearer" = [])),
    params(("chat_id" = ChatId, Path)), request_body = SetActiveBranch,
    responses((status = 200, body = ChatView), (status = 404, body = ErrorBody)))]
pub async fn set_active(
    chats: web::Data<Chats>,
    user: AuthUser,
    path: web::Path<ChatId>,
    body: Json<SetActiveBranch>,
) -> Result<web::Json<ChatView>, ApiError> {
    Ok(web::Json(
        chats
            .set_active(user.0, path.into_inner(), body.branch_id)
            .await?,
    ))
}
