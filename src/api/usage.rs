//! Token usage, as the providers reported it per reply: `GET /api/v1/usage` (the caller's,
//! summed by model, chat or UTC day, with their quota), `GET /api/v1/admin/usage` (everyone's,
//! also by user), and the admin's quota routes `/api/v1/admin/users/{user}/quota`.

use actix_web::web;
use arbor_actors::model::UserId;
use arbor_actors::ports::{QuotaSetting, Stores, UsageGroup};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::admin::Admin;
use crate::api::body::Json;
use crate::auth::AuthUser;
use crate::error::{ApiError, Code, ErrorBody};
use crate::quota::{QuotaStatus, Quotas};

/// How the caller's usage is summed.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// By `provider/model`.
    #[default]
    Model,
    /// By chat id.
    Chat,
    /// By UTC day, `YYYY-MM-DD`.
    Day,
}

/// How everyone's usage is summed (the admin view).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdminGroupBy {
    /// By user id.
    #[default]
    User,
    Model,
    Chat,
    Day,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct UsageQuery {
    /// Start, inclusive (RFC 3339); default 30 days before `to`.
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (RFC 3339); default now.
    pub to: Option<DateTime<Utc>>,
    /// `model` (default), `chat` or `day`.
    pub group_by: Option<GroupBy>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AdminUsageQuery {
    /// Start, inclusive (RFC 3339); default 30 days before `to`.
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (RFC 3339); default now.
    pub to: Option<DateTime<Utc>>,
    /// `user` (default), `model`, `chat` or `day`.
    pub group_by: Option<AdminGroupBy>,
}

/// One group's sums.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageGroupView {
    pub key: String,
    /// Replies whose usage was reported.
    pub replies: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `model`, `chat`, `day` or `user`.
    pub group_by: String,
    pub groups: Vec<UsageGroupView>,
    /// All groups together.
    pub total: UsageGroupView,
    /// The caller's token quota now (absent from the admin view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaStatus>,
}

/// The caller's token usage in `[from, to)`: each reply's usage as its provider reported it,
/// recorded once per reply (a reply retried upstream counts once); and their quota now.
#[utoipa::path(get, path = "/api/v1/usage", operation_id = "get_usage", tag = "usage",
    params(UsageQuery), security(("bearer" = [])),
    responses((status = 200, body = UsageView), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn usage(
    stores: web::Data<Stores>,
    quotas: web::Data<Quotas>,
    user: AuthUser,
    query: web::Query<UsageQuery>,
) -> Result<web::Json<UsageView>, ApiError> {
    let group = match query.group_by.unwrap_or_default() {
        GroupBy::Model => UsageGroup::Model,
        GroupBy::Chat => UsageGroup::Chat,
        GroupBy::Day => UsageGroup::Day,
    };
    let window = (query.from, query.to);
    let mut view = summed(&stores, Some(user.0), window, group).await?;
    view.quota = Some(quotas.status(user.0).await?);
    Ok(web::Json(view))
}

/// Everyone's token usage in `[from, to)`, summed by user, model, chat or day (admins only).
#[utoipa::path(get, path = "/api/v1/admin/usage", operation_id = "admin_usage", tag = "admin",
    params(AdminUsageQuery), security(("bearer" = [])),
    responses((status = 200, body = UsageView), (status = 404, body = ErrorBody)))]
pub async fn admin_usage(
    stores: web::Data<Stores>,
    _admin: Admin,
    query: web::Query<AdminUsageQuery>,
) -> Result<web::Json<UsageView>, ApiError> {
    let group = match query.group_by.unwrap_or_default() {
        AdminGroupBy::User => UsageGroup::User,
        AdminGroupBy::Model => UsageGroup::Model,
        AdminGroupBy::Chat => UsageGroup::Chat,
        AdminGroupBy::Day => UsageGroup::Day,
    };
    let window = (query.from, query.to);
    Ok(web::Json(summed(&stores, None, window, group).await?))
}

/// `user`'s usage (everyone's with `None`) in the window (default: the last 30 days).
async fn summed(
    stores: &Stores,
    user: Option<UserId>,
    (from, to): (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    group: UsageGroup,
) -> Result<UsageView, ApiError> {
    let to = to.unwrap_or_else(Utc::now);
    let from = from.unwrap_or(to - chrono::Duration::days(30));
    let group_by = match group {
        UsageGroup::Model => "model",
        UsageGroup::Chat => "chat",
        UsageGroup::Day => "day",
        UsageGroup::User => "user",
    }
    .to_owned();
    let sums = stores.metadata.usage(user, from, to, group).await?;
    let mut total = UsageGroupView {
        key: "total".into(),
        replies: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
    };
    let groups = sums
        .into_iter()
        .map(|s| {
            total.replies += s.replies;
            total.prompt_tokens += s.prompt_tokens;
            total.completion_tokens += s.completion_tokens;
            UsageGroupView {
                key: s.key,
                replies: s.replies,
                prompt_tokens: s.prompt_tokens,
                completion_tokens: s.completion_tokens,
                total_tokens: s.prompt_tokens + s.completion_tokens,
            }
        })
        .collect();
    total.total_tokens = total.prompt_tokens + total.completion_tokens;
    Ok(UsageView {
        from,
        to,
        group_by,
        groups,
        total,
        quota: None,
    })
}

/// A user's own quota, as an admin sets it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuota {
    /// Tokens a period (0: no replies at all); `null`: no quota for this user.
    #[serde(default, deserialize_with = "crate::api::integral")]
    pub tokens: Option<u64>,
}

/// One user's quota and usage this period, by id, email or username (admins only).
#[utoipa::path(get, path = "/api/v1/admin/users/{user}/quota", operation_id = "admin_get_quota",
    tag = "admin", params(("user" = String, Path, description = "User id, email or username")),
    security(("bearer" = [])),
    responses((status = 200, body = QuotaStatus), (status = 404, body = ErrorBody)))]
pub async fn get_quota(
    stores: web::Data<Stores>,
    quotas: web::Data<Quotas>,
    _admin: Admin,
    user: web::Path<String>,
) -> Result<web::Json<QuotaStatus>, ApiError> {
    let user = find_user(&stores, &user).await?;
    Ok(web::Json(quotas.status(user).await?))
}

/// Sets a user's own quota over the configured default (admins only).
#[utoipa::path(put, path = "/api/v1/admin/users/{user}/quota", operation_id = "admin_set_quota",
    tag = "admin", params(("user" = String, Path, description = "User id, email or username")),
    request_body = SetQuota, security(("bearer" = [])),
    responses((status = 200, body = QuotaStatus), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn set_quota(
    stores: web::Data<Stores>,
    quotas: web::Data<Quotas>,
    _admin: Admin,
    user: web::Path<String>,
    body: Json<SetQuota>,
) -> Result<web::Json<QuotaStatus>, ApiError> {
    let user = find_user(&stores, &user).await?;
    let setting = match body.tokens {
        Some(n) => QuotaSetting::Tokens(n),
        None => QuotaSetting::Unlimited,
    };
    stores.metadata.set_quota(user, setting).await?;
    quotas.forget(user).await;
    Ok(web::Json(quotas.status(user).await?))
}

/// Puts a user back on the configured default quota (admins only).
#[utoipa::path(delete, path = "/api/v1/admin/users/{user}/quota",
    operation_id = "admin_reset_quota", tag = "admin",
    params(("user" = String, Path, description = "User id, email or username")),
    security(("bearer" = [])),
    responses((status = 200, body = QuotaStatus), (status = 404, body = ErrorBody)))]
pub async fn reset_quota(
    stores: web::Data<Stores>,
    quotas: web::Data<Quotas>,
    _admin: Admin,
    user: web::Path<String>,
) -> Result<web::Json<QuotaStatus>, ApiError> {
    let user = find_user(&stores, &user).await?;
    stores
        .metadata
        .set_quota(user, QuotaSetting::Default)
        .await?;
    Ok(web::Json(quotas.status(user).await?))
}

/// A user by id, email or username; 404 `user_not_found` otherwise.
async fn find_user(stores: &Stores, key: &str) -> Result<UserId, ApiError> {
    let found = match key.parse::<UserId>() {
        Ok(id) => stores.metadata.user_by_id(id).await?,
        Err(_) => stores.metadata.user_by_login(key).await?,
    };
    found
        .map(|u| u.id)
        .ok_or_else(|| ApiError::new(Code::UserNotFound, "no such user"))
}
