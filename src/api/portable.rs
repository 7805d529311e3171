//! Export and import: `GET /api/v1/chats/{chat_id}/export` (Arbor's lossless `arbor.chat/1`,
//! or ChatGPT's or Open WebUI's format) and `POST /api/v1/chats/import` (any of the three).
//! An import is checked whole before anything is stored (`ChatExport::check`), and each way a
//! document can be wrong has its own 422 code.

use std::collections::{HashMap, HashSet};

use actix_web::{web, HttpRequest, HttpResponse};
use arbor_actors::model::ChatId;
use arbor_actors::portable::{ChatExport, ImportError};
use arbor_actors::views::ChatView;
use arbor_actors::Chats;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::config::LimitSettings;
use crate::error::{ApiError, Code, ErrorBody};
use crate::formats;
use crate::rate_limit::RateLimits;

/// A format Arbor reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `arbor.chat/1`: lossless.
    #[default]
    Arbor,
    /// ChatGPT's data export (`conversations.json`): a list of conversations with a `mapping`.
    Chatgpt,
    /// Open WebUI's chat export: a list of chats with `chat.history.messages`.
    Openwebui,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportQuery {
    /// `arbor` (default), `chatgpt` or `openwebui`.
    pub format: Option<Format>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ImportQuery {
    /// `arbor` (default), `chatgpt` or `openwebui`.
    pub format: Option<Format>,
    /// Give every message and branch a new id (the answer maps old to new) instead of keeping
    /// them; needed to import a document whose ids are stored already.
    #[serde(default)]
    pub new_ids: bool,
}

/// What an import created.
#[derive(Debug, Serialize, ToSchema)]
pub struct Imported {
    pub chats: Vec<ChatView>,
    /// With `new_ids`: each old message and branch id's new one.
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub ids: HashMap<String, String>,
}

/// The chat as one document.
#[utoipa::path(get, path = "/api/v1/chats/{chat_id}/export", operation_id = "export_chat",
    tag = "portability", security(("bearer" = [])), params(("chat_id" = ChatId, Path), ExportQuery),
    responses((status = 200, body = ChatExport), (status = 404, body = ErrorBody)))]
pub async fn export(
    chats: web::Data<Chats>,
    user: AuthUser,
    chat: web::Path<ChatId>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let export = chats.export(user.0, chat.into_inner()).await?;
    Ok(match query.format.unwrap_or_default() {
        Format::Arbor => HttpResponse::Ok().json(export),
        Format::Chatgpt => HttpResponse::Ok().json(formats::chatgpt::export(&export)),
        Format::Openwebui => HttpResponse::Ok().json(formats::openwebui::export(&export)),
    })
}

/// Import one `arbor.chat/1` document, or another product's export (each of its conversations
/// a chat), as chats of the caller's. Nothing is stored unless every chat in it is valid.
#[utoipa::path(post, path = "/api/v1/chats/import", operation_id = "import_chats",
    tag = "portability", security(("bearer" = [])), params(ImportQuery),
    request_body(content = ChatExport, description = "An `arbor.chat/1` document, or (with \
        `format`) ChatGPT's `conversations.json` or Open WebUI's export"),
    responses((status = 201, body = Imported), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn import(
    req: HttpRequest,
    chats: web::Data<Chats>,
    limits: web::Data<LimitSettings>,
    user: AuthUser,
    query: web::Query<ImportQuery>,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if let Some(rate_limits) = req.app_data::<web::Data<RateLimits>>() {
        rate_limits.check_import(user.0)?;
    }
    let json = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == "application/json");
    if !json {
        return Err(ApiError::unsupported_media_type("application/json"));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(Code::InvalidBody, e.to_string()))?;
        if body.len() + chunk.len() > limits.max_import_bytes {
            return Err(ApiError::payload_too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(Code::InvalidJson, format!("malformed JSON: {e}")))?;
    let documents = match query.format.unwrap_or_default() {
        Format::Arbor => {
            if !value.is_object() {
                return Err(ApiError::new(
                    Code::ValidationFailed,
                    "the body must be a JSON object",
                ));
            }
            let format = value.get("format").and_then(serde_json::Value::as_str);
            if format != Some(arbor_actors::portable::FORMAT) {
                let named = format.unwrap_or("none").to_owned();
                return Err(ImportError::UnsupportedFormat(named).into());
            }
            let document: ChatExport = serde_json::from_value(value)
                .map_err(|e| ApiError::new(Code::ValidationFailed, e.to_string()))?;
            vec![document]
        }
        Format::Chatgpt => formats::chatgpt::import(value)?,
        Format::Openwebui => formats::openwebui::import(value)?,
    };
    if documents.len() > limits.max_import_chats {
        return Err(ImportError::TooLarge(format!(
            "{} chats; an import holds at most {}",
            documents.len(),
            limits.max_import_chats
        ))
        .into());
    }
    let import_limits = limits.import_limits();
    // Every document checked, and no id in two of them, before anything is stored.
    let mut seen = HashSet::new();
    let mut ready = Vec::with_capacity(documents.len());
    let mut ids = HashMap::new();
    for document in documents {
        if !query.new_ids {
            let all = document.messages.iter().map(|m| *m.id.as_uuid());
            let all = all.chain(document.branches.iter().map(|b| *b.id.as_uuid()));
            for id in all {
                if !seen.insert(id) {
                    return Err(ImportError::DuplicateId(id.to_string()).into());
                }
            }
        }
        let (imported, mapped) = document.into_import(&import_limits, query.new_ids)?;
        ids.extend(mapped);
        ready.push(imported);
    }
    if !query.new_ids {
        chats.check_ids_free(&ready).await?;
    }
    let mut created = Vec::with_capacity(ready.len());
    for imported in ready {
        created.push(chats.import(user.0, imported).await?);
    }
    Ok(HttpResponse::Created().json(Imported {
        chats: created,
        ids,
    }))
}
