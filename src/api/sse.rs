//! Server-sent events for generations: every event carries its `id` (resume with
//! `Last-Event-ID`), an `event` name and one line of JSON `data`:
//!
//! - `user_message`: `{generation_id, chat_id, branch_id, model, message}` — the message answered;
//! - `delta`: `{content}` — the next piece of the reply;
//! - `assistant_message`: `{generation_id, status, message, usage}` — the stored reply (status
//!   `completed`, or `cancelled` with the partial reply marked `incomplete` in its metadata);
//! - `error`: `{code, message, upstream_status?}` — the generation failed; nothing was stored.
//!
//! The stream ends after `assistant_message` or `error`. Quiet periods get `: keep-alive` comments.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use arbor_actors::generation::{Event, EventKind, Generation};
use serde_json::json;

use crate::error::ApiError;

pub struct StreamSettings {
    /// Longest silence before a keep-alive comment.
    pub keepalive: Duration,
    /// How long a generation's events are kept after it ends (`llm.event_retention_secs`).
    pub retention: Duration,
}

/// The events of a generation this server never ran because the server that ran it stopped
/// (see `generations::lost`): one terminal `error` event, `generation_interrupted`.
pub fn interrupted(after: u64, error: &ApiError) -> HttpResponse {
    let frame = format!(
        "id: {}\nevent: error\ndata: {}\n\n",
        after + 1,
        json!(error.detail())
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(frame)
}

/// Whether a client asked for an event stream: a `stream: true` body field, or `Accept:
/// text/event-stream`.
pub fn wanted(req: &HttpRequest, stream_field: bool) -> bool {
    stream_field
        || req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"))
}

/// The events of `generation` after event `after`, then the live ones until it ends.
pub fn respond(generation: Arc<Generation>, after: u64, settings: &StreamSettings) -> HttpResponse {
    let keepalive = settings.keepalive;
    let id = generation.id.to_string();
    let follower = generation.clone().follow(after);
    let events = futures_util::stream::unfold(
        (follower, generation),
        move |(mut follower, generation)| async move {
            let frame = match tokio::time::timeout(keepalive, follower.next()).await {
                Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                Ok(None) => return None,
                Ok(Some(events)) => {
                    let mut out = String::new();
                    for event in &events {
                        frame(&generation, event, &mut out);
                    }
                    Bytes::from(out)
                }
            };
            Some((Ok::<_, Infallible>(frame), (follower, generation)))
        },
    );
    let mut res = HttpResponse::Ok();
    res.content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.insert_header(("x-generation-id", value));
    }
    res.streaming(events)
}

fn frame(generation: &Generation, event: &Event, out: &mut String) {
    let (name, data) = match &event.kind {
        EventKind::UserMessage(message) => (
            "user_message",
            json!({
                "generation_id": generation.id,
                "chat_id": generation.chat,
                "branch_id": generation.branch,
                "model": generation.model,
                "message": message,
            }),
        ),
        EventKind::Delta(content) => ("delta", json!({ "content": content })),
        EventKind::AssistantMessage {
            message,
            usage,
            status,
        } => (
            "assistant_message",
            json!({
                "generation_id": generation.id,
                "status": status,
                "message": message,
                "usage": usage,
            }),
        ),
        EventKind::Error(error) => ("error", json!(ApiError::from(error.clone()).detail())),
    };
    out.push_str(&format!(
        "id: {}\nevent: {name}\ndata: {data}\n\n",
        event.id
    ));
}
