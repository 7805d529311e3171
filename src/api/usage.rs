//! `GET /api/v1/usage`: the caller's token usage, as the providers reported it per reply,
//! summed by model, chat or UTC day.

use actix_web::web;
use arbor_actors::ports::{Stores, UsageGroup};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};

/// How the usage is summed.
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

#[derive(Debug, Deserialize, IntoParams)]
pub struct UsageQuery {
    /// Start, inclusive (RFC 3339); default 30 days before `to`.
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (RFC 3339); default now.
    pub to: Option<DateTime<Utc>>,
    /// `model` (default), `chat` or `day`.
    pub group_by: Option<GroupBy>,
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
    pub group_by: GroupBy,
    pub groups: Vec<UsageGroupView>,
    /// All groups together.
    pub total: UsageGroupView,
}

/// The caller's token usage in `[from, to)`: each reply's usage as its provider reported it,
/// recorded once per reply (a reply retried upstream counts once).
#[utoipa::path(get, path = "/api/v1/usage", operation_id = "get_usage", tag = "usage",
    params(UsageQuery), security(("bearer" = [])),
    responses((status = 200, body = UsageView), (status = 401, body = ErrorBody)))]
pub async fn usage(
    stores: web::Data<Stores>,
    user: AuthUser,
    query: web::Query<UsageQuery>,
) -> Result<web::Json<UsageView>, ApiError> {
    let to = query.to.unwrap_or_else(Utc::now);
    let from = query.from.unwrap_or(to - chrono::Duration::days(30));
    let group_by = query.group_by.unwrap_or_default();
    let group = match group_by {
        GroupBy::Model => UsageGroup::Model,
        GroupBy::Chat => UsageGroup::Chat,
        GroupBy::Day => UsageGroup::Day,
    };
    let sums = stores.metadata.usage(user.0, from, to, group).await?;
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
    Ok(web::Json(UsageView {
        from,
        to,
        group_by,
        groups,
        total,
    }))
}
