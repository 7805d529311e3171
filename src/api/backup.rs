//! Account backup and restore: `GET /api/v1/backup` streams every chat of the caller's as
//! NDJSON, one `arbor.chat/1` document a line, newest chat first; `POST /api/v1/backup/restore`
//! reads such a stream back. Both hold one chat at a time, whatever the account's size.
//!
//! A restore imports each line as its own chat, in one write, all or nothing, keeping its ids.
//! A line whose ids are all stored already was restored before and is skipped, so a restore
//! that stopped partway is resumed by sending the same stream again: nothing is duplicated. A
//! line that cannot be restored stops the restore; the answer says which line and how many
//! came before it.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, HttpRequest, HttpResponse};
use arbor_actors::model::{BranchId, ChatId};
use arbor_actors::portable::{ChatExport, ImportError, ImportLimits};
use arbor_actors::ports::Stores;
use arbor_actors::Chats;
use futures_util::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::config::LimitSettings;
use crate::error::{ApiError, Code, ErrorBody, ErrorDetail};
use crate::rate_limit::RateLimits;

/// Chats listed per store query while a backup streams.
const PAGE: usize = 100;

/// Every chat of the caller's, one `arbor.chat/1` document a line (NDJSON), newest first.
#[utoipa::path(get, path = "/api/v1/backup", operation_id = "backup", tag = "portability",
    security(("bearer" = [])),
    responses((status = 200, content_type = "application/x-ndjson", body = String,
        description = "One `ChatExport` a line")))]
pub async fn backup(chats: web::Data<Chats>, user: AuthUser) -> HttpResponse {
    let chats = chats.into_inner();
    let user = user.0;
    // What this server acknowledged is in the stores before they are read.
    chats.flushed().await;
    enum Next {
        Page(Option<ChatId>),
        Chats(Vec<ChatId>, Option<ChatId>),
        Done,
    }
    let lines = futures_util::stream::unfold(Next::Page(None), move |mut next| {
        let chats = chats.clone();
        async move {
            loop {
                next = match next {
                    Next::Done => return None,
                    Next::Page(before) => match chats.list(user, PAGE, before).await {
                        Ok(page) => {
                            let ids = page.chats.iter().rev().map(|c| c.id).collect();
                            Next::Chats(ids, page.next_before)
                        }
                        Err(e) => return Some((Err(failed(e)), Next::Done)),
                    },
                    Next::Chats(mut ids, after) => match ids.pop() {
                        None if after.is_some() => Next::Page(after),
                        None => return None,
                        Some(chat) => match chats.export_stored(user, chat).await {
                            Ok(document) => {
                                let line = serde_json::to_vec(&document).map(|mut line| {
                                    line.push(b'\n');
                                    Bytes::from(line)
                                });
                                return Some((line.map_err(failed), Next::Chats(ids, after)));
                            }
                            // Deleted since it was listed.
                            Err(arbor_actors::ChatError::ChatNotFound) => Next::Chats(ids, after),
                            Err(e) => return Some((Err(failed(e)), Next::Done)),
                        },
                    },
                };
            }
        }
    });
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(lines)
}

/// A backup that cannot go on: the stream ends early, which the client sees as a body cut short.
fn failed(e: impl std::fmt::Display) -> actix_web::Error {
    tracing::error!(error = %e, "a backup stream failed");
    actix_web::error::ErrorServiceUnavailable("backup interrupted")
}

/// What a restore did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Restored {
    /// Chats made by this restore.
    pub restored: usize,
    /// Lines restored before (all their ids stored already).
    pub skipped: usize,
}

/// A restore stopped at `line` (1-based): the error, and what came before it.
#[derive(Serialize, ToSchema)]
pub struct RestoreFailed {
    pub error: ErrorDetail,
    pub detail: String,
    pub line: usize,
    pub restored: usize,
    pub skipped: usize,
}

/// Restore a backup (NDJSON, one `arbor.chat/1` document a line); send it again to resume.
#[utoipa::path(post, path = "/api/v1/backup/restore", operation_id = "restore_backup",
    tag = "portability", security(("bearer" = [])),
    request_body(content((String = "application/x-ndjson"), (String = "text/plain"))),
    responses((status = 200, body = Restored), (status = 400, body = RestoreFailed),
        (status = 409, body = RestoreFailed), (status = 413, body = RestoreFailed),
        (status = 422, body = RestoreFailed), (status = 429, body = ErrorBody)))]
pub async fn restore(
    req: HttpRequest,
    chats: web::Data<Chats>,
    stores: web::Data<Stores>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if let Some(rate_limits) = req.app_data::<web::Data<RateLimits>>() {
        rate_limits.check_import(user.0)?;
    }
    let kind = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let essence = kind.map(|k| {
        k.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    if !matches!(
        essence.as_deref(),
        Some("application/x-ndjson" | "application/jsonl" | "application/json" | "text/plain")
    ) {
        return Err(ApiError::unsupported_media_type("application/x-ndjson"));
    }
    let import_limits = limits.import_limits();
    let mut progress = Restored {
        restored: 0,
        skipped: 0,
    };
    let mut line_number = 0;
    let mut buffer = BytesMut::new();
    let mut ended = false;
    loop {
        // Every complete line in the buffer, then more of the body.
        while let Some(at) = buffer.iter().position(|b| *b == b'\n') {
            let line = buffer.split_to(at + 1);
            line_number += 1;
            if let Err(e) = restore_line(
                &chats,
                &stores,
                user.0,
                &line,
                &import_limits,
                &mut progress,
            )
            .await
            {
                return Ok(stopped(e, line_number, &progress));
            }
        }
        if ended {
            break;
        }
        match payload.next().await {
            Some(Ok(chunk)) => {
                buffer.extend_from_slice(&chunk);
                if buffer.len() > limits.max_import_bytes {
                    return Ok(stopped(
                        ApiError::payload_too_large(),
                        line_number + 1,
                        &progress,
                    ));
                }
            }
            Some(Err(e)) => {
                let error = ApiError::new(Code::InvalidBody, e.to_string());
                return Ok(stopped(error, line_number + 1, &progress));
            }
            None => {
                ended = true;
                if !buffer.is_empty() {
                    buffer.extend_from_slice(b"\n");
                }
            }
        }
    }
    Ok(HttpResponse::Ok().json(progress))
}

/// One line: skipped when blank or restored before, imported otherwise.
async fn restore_line(
    chats: &Chats,
    stores: &Stores,
    user: arbor_actors::model::UserId,
    line: &[u8],
    limits: &ImportLimits,
    progress: &mut Restored,
) -> Result<(), ApiError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let document: ChatExport = serde_json::from_slice(line).map_err(|e| match e.is_data() {
        true => ApiError::new(Code::ValidationFailed, e.to_string()),
        false => ApiError::new(Code::InvalidJson, format!("malformed JSON: {e}")),
    })?;
    if document.format != arbor_actors::portable::FORMAT {
        return Err(ImportError::UnsupportedFormat(document.format).into());
    }
    // Restored before: every branch stored, in a chat of this user's. Stored elsewhere, in
    // part or in another account: a conflict (from `import`).
    let branches: Vec<BranchId> = document.branches.iter().map(|b| b.id).collect();
    let stored = stores.metadata.existing_branches(&branches).await?;
    let theirs = stored.iter().all(|(_, owner)| *owner == user);
    if !branches.is_empty() && stored.len() == branches.len() && theirs {
        progress.skipped += 1;
        return Ok(());
    }
    let (imported, _) = document.into_import(limits, false)?;
    chats.import(user, imported).await?;
    progress.restored += 1;
    Ok(())
}

/// The answer of a restore stopped at `line`.
fn stopped(error: ApiError, line: usize, progress: &Restored) -> HttpResponse {
    let body = ErrorBody::of(&error);
    HttpResponse::build(actix_web::ResponseError::status_code(&error)).json(RestoreFailed {
        error: body.error,
        detail: body.detail,
        line,
        restored: progress.restored,
        skipped: progress.skipped,
    })
}
