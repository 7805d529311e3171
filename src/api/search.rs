//! `GET /api/v1/search`: full-text search over every message of the caller's chats, on every
//! branch, with the stores' own engines (SQLite FTS5, PostgreSQL `tsvector`). Each hit names
//! its chat, its message, every branch whose path holds it, and the path around it, so a client
//! can open that branch at that message.

use actix_web::web;
use arbor_actors::model::{ChatId, MessageId};
use arbor_actors::views::{LocatedBranch, MessageView};
use arbor_actors::Chats;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::config::LimitSettings;
use crate::error::{ApiError, Code, ErrorBody};

/// Characters a query may have.
pub const MAX_QUERY_CHARS: usize = 500;

#[derive(Debug, Deserialize, IntoParams)]
pub struct SearchQuery {
    /// The words to find (all of them; stemmed, so `running` finds `run`).
    pub q: String,
    /// Only this chat's messages.
    pub chat_id: Option<ChatId>,
    /// Hits per page (default 20).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Messages of the path shown before and after each hit (0 to 10, default 2).
    pub window: Option<usize>,
}

/// One match.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHitView {
    pub chat_id: ChatId,
    pub message_id: MessageId,
    /// The text around the match, the matched words between `<mark>` and `</mark>` (the rest is
    /// the message's text as it is, not HTML-escaped).
    pub snippet: String,
    /// Relevance as the store's engine ranks it (higher is better; not comparable between
    /// backends).
    pub rank: f64,
    /// Every branch whose path holds the message, the active one first.
    pub branches: Vec<LocatedBranch>,
    /// The message with up to `window` messages before and after it on the first branch's
    /// path.
    pub path: Vec<MessageView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    pub hits: Vec<SearchHitView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// Search every branch of every chat of the caller's (or of one chat).
#[utoipa::path(get, path = "/api/v1/search", operation_id = "search", tag = "search",
    params(SearchQuery), security(("bearer" = [])),
    responses((status = 200, body = SearchResults), (status = 422, body = ErrorBody)))]
pub async fn search(
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    query: web::Query<SearchQuery>,
) -> Result<web::Json<SearchResults>, ApiError> {
    let q = query.q.trim();
    if q.is_empty() || q.chars().count() > MAX_QUERY_CHARS || q.contains('\0') {
        return Err(ApiError::new(
            Code::InvalidSearch,
            format!("q is 1 to {MAX_QUERY_CHARS} characters, without NUL"),
        ));
    }
    let limit = super::page_limit(Some(query.limit.unwrap_or(20)), &limits)?;
    let offset = match &query.cursor {
        None => 0,
        Some(cursor) => cursor
            .parse::<usize>()
            .map_err(|_| ApiError::new(Code::InvalidCursor, "not a cursor this search gave"))?,
    };
    let window = query.window.unwrap_or(2);
    if window > 10 {
        return Err(ApiError::new(
            Code::InvalidSearch,
            "window is 0 to 10 messages",
        ));
    }
    let page = (limit, offset);
    let (found, more) = chats.search(user.0, q, query.chat_id, page, window).await?;
    let next_cursor = more.then(|| (offset + limit).to_string());
    let hits = found
        .into_iter()
        .map(|(hit, location)| SearchHitView {
            chat_id: hit.chat,
            message_id: hit.message,
            snippet: hit.snippet,
            rank: hit.rank,
            branches: location.branches,
            path: location.path,
        })
        .collect();
    Ok(web::Json(SearchResults { hits, next_cursor }))
}
