//! Routing in cluster mode: the middleware that serves a request for a chat here when this node
//! holds the chat's lease, and otherwise forwards it to the node that does and relays the
//! answer unchanged (streamed replies as they stream).
//!
//! The chat is found where each dialect puts it: the path (`/api/v1/chats/{id}/...`,
//! `/chats/{id}`, `/rooms/{id}`, `/chat/{id}`, `update-chat/{id}`, `delete-chat/{id}`), the
//! `chat_id` query parameter, or, for the seed routes that take it there, the JSON body
//! (`chat_id`, `parent_chat_id`). Requests about no chat (accounts, chat lists, new chats) are
//! served where they arrive.
//!
//! A forwarded request carries `x-arbor-hops` and the cluster secret (`x-arbor-cluster-secret`);
//! a request claiming hops without the secret is refused (403 `cluster_auth_failed`), so a
//! client cannot pose as a node. The user's own credentials travel unchanged and the owner
//! checks them as for any request: forwarding never vouches for a user. A request is forwarded
//! at most `cluster.max_hops` times; past that, or while the chat's shard changes owner for
//! longer than `cluster.move_wait_ms`, the answer is 503 `chat_moved` with `Retry-After`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderName;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::HttpMessage;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use arbor_actors::model::ChatId;
use futures_util::StreamExt;
use uuid::Uuid;

use super::{Cluster, Route};
use crate::auth::constant_time_eq;
use crate::config::LimitSettings;
use crate::error::{ApiError, Code};

/// How many times a request was forwarded; set only by nodes.
pub const HOPS: &str = "x-arbor-hops";
/// The cluster secret, on node-to-node requests.
pub const SECRET: &str = "x-arbor-cluster-secret";
/// On every response in cluster mode: the node that served the request.
pub const NODE: &str = "x-arbor-node";
/// On a forwarded response: the node that forwarded it.
pub const FORWARDED_BY: &str = "x-arbor-forwarded-by";

/// Path segments after which a chat id comes.
const CHAT_SEGMENTS: &[&str] = &["chats", "rooms", "chat", "update-chat", "delete-chat"];

/// Seed routes whose chat id is in the JSON body.
const BODY_ROUTES: &[&str] = &[
    "/api/v1/messages/add-message",
    "/api/v1/branches/create-branch",
    "/api/v1/branches/set-active-branch",
    "/api/v1/conversations",
    "/api/v1/conversations/",
    "/api/v1/chats/create-conversation",
    "/chat",
];

/// Headers that belong to one connection, not to the request or response.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    HOPS,
    SECRET,
];

pub async fn route(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(cluster) = req.app_data::<web::Data<Cluster>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let hops = match hops(&cluster, req.request()) {
        Ok(hops) => hops,
        Err(error) => return Ok(req.error_response(error)),
    };
    let mut body = None;
    let mut chat = chat_in_path(req.path()).or_else(|| chat_in_query(req.query_string()));
    if chat.is_none() && BODY_ROUTES.contains(&req.path()) && req.method() != "GET" {
        let bytes = match read_body(&mut req).await {
            Ok(bytes) => bytes,
            Err(error) => return Ok(req.error_response(error)),
        };
        chat = chat_in_body(&bytes);
        body = Some(bytes);
    }
    let Some(chat) = chat else {
        return local(&cluster, req, body, next).await;
    };
    let deadline = Instant::now() + Duration::from_millis(cluster.settings.move_wait_ms);
    loop {
        match cluster.route(chat) {
            Route::Here => return local(&cluster, req, body, next).await,
            Route::Forward { address } if hops < cluster.settings.max_hops => {
                let bytes = match body.take() {
                    Some(bytes) => bytes,
                    None => match read_body(&mut req).await {
                        Ok(bytes) => bytes,
                        Err(error) => return Ok(req.error_response(error)),
                    },
                };
                match forward(&cluster, req.request(), bytes.clone(), &address, hops).await {
                    Ok(response) => return Ok(req.into_response(response)),
                    // Nothing reached the owner: it may be dead, and its lease about to move.
                    Err(Unreachable) => {
                        body = Some(bytes);
                        cluster.refresh();
                    }
                }
            }
            Route::Forward { .. } => {
                return Ok(req.error_response(moved(
                    "the chat's owner changed while the request was forwarded",
                )));
            }
            Route::Wait => cluster.refresh(),
        }
        if Instant::now() >= deadline {
            return Ok(req.error_response(moved(
                "the chat's shard is changing owner, or its owner cannot be reached",
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn moved(message: &str) -> ApiError {
    ApiError::new(Code::ChatMoved, format!("{message}; retry"))
}

/// Serves the request here, with its body put back if the router read it.
async fn local(
    cluster: &Cluster,
    mut req: ServiceRequest,
    body: Option<Bytes>,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Some(bytes) = body {
        req.set_payload(Payload::from(bytes));
    }
    cluster.served_local.inc();
    let mut res = next.call(req).await?.map_into_boxed_body();
    res.headers_mut()
        .insert(HeaderName::from_static(NODE), cluster.node_header.clone());
    Ok(res)
}

/// The hops a request has made; a request claiming any must carry the cluster secret.
fn hops(cluster: &Cluster, req: &HttpRequest) -> Result<u8, ApiError> {
    let Some(value) = req.headers().get(HOPS) else {
        return Ok(0);
    };
    let secret = req
        .headers()
        .get(SECRET)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let expected = cluster.settings.secret.expose().as_bytes();
    if expected.is_empty() || !constant_time_eq(secret, expected) {
        return Err(ApiError::new(
            Code::ClusterAuthFailed,
            "node-to-node headers without the cluster secret",
        ));
    }
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::new(Code::ClusterAuthFailed, "a malformed hop count"))
}

/// Reads the whole body, within `limits.max_body_bytes`.
async fn read_body(req: &mut ServiceRequest) -> Result<Bytes, ApiError> {
    let limit = req
        .app_data::<web::Data<LimitSettings>>()
        .map_or(usize::MAX, |l| l.max_body_bytes);
    let mut payload = req.take_payload();
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::new(Code::InvalidBody, "the body could not be read"))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

/// The first chat id in the path: the segment after `chats`, `rooms`, ... that is a UUID.
pub fn chat_in_path(path: &str) -> Option<ChatId> {
    let mut segments = path.split('/');
    let mut previous = segments.next()?;
    for segment in segments {
        if CHAT_SEGMENTS.contains(&previous) {
            if let Ok(id) = Uuid::parse_str(segment) {
                return Some(ChatId::from_uuid(id));
            }
        }
        previous = segment;
    }
    None
}

/// `chat_id` in the query string.
pub fn chat_in_query(query: &str) -> Option<ChatId> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "chat_id")
        .and_then(|(_, value)| Uuid::parse_str(value).ok())
        .map(ChatId::from_uuid)
}

/// `chat_id` (or `parent_chat_id`) in a JSON body.
pub fn chat_in_body(body: &[u8]) -> Option<ChatId> {
    #[derive(serde::Deserialize)]
    struct Probe {
        chat_id: Option<serde_json::Value>,
        parent_chat_id: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    [probe.chat_id, probe.parent_chat_id]
        .into_iter()
        .flatten()
        .find_map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
        .map(ChatId::from_uuid)
}

/// No connection to the owner: nothing of the request reached it.
struct Unreachable;

/// Sends the request to `address` and relays the answer (a body without a length streams).
async fn forward(
    cluster: &Arc<Cluster>,
    req: &HttpRequest,
    body: Bytes,
    address: &str,
    hops: u8,
) -> Result<HttpResponse, Unreachable> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut request = cluster
        .client
        .request(method, format!("http://{address}{path}"));
    for (name, value) in req.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let started = Instant::now();
    let sent = request
        .header(HOPS, (hops + 1).to_string())
        .header(SECRET, cluster.settings.secret.expose())
        .header(FORWARDED_BY, cluster.id.to_string())
        .body(body)
        .send()
        .await;
    let forwards = &cluster.stats.forwards;
    let upstream = match sent {
        Ok(upstream) => upstream,
        Err(error) if error.is_connect() => {
            forwards.with_label_values(&["unreachable"]).inc();
            tracing::warn!(%address, %error, "forwarding: the chat's owner is unreachable");
            return Err(Unreachable);
        }
        Err(error) => {
            // The request may have reached the owner: not retried here.
            forwards.with_label_values(&["error"]).inc();
            tracing::warn!(%address, %error, "forwarding failed midway");
            return Ok(moved("the connection to the chat's owner broke").error_response());
        }
    };
    cluster
        .stats
        .forward_seconds
        .observe(started.elapsed().as_secs_f64());
    forwards.with_label_values(&["ok"]).inc();
    cluster.served_forwarded.inc();
    let status = actix_web::http::StatusCode::from_u16(upstream.status().as_u16())
        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::build(status);
    for (name, value) in upstream.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            response.append_header((name.as_str(), value.as_bytes()));
        }
    }
    response.insert_header((FORWARDED_BY, cluster.id.to_string()));
    if upstream.content_length().is_some() {
        return Ok(match upstream.bytes().await {
            Ok(bytes) => response.body(bytes),
            Err(_) => moved("the connection to the chat's owner broke").error_response(),
        });
    }
    let stream = futures_util::stream::unfold(Some(upstream), |upstream| async move {
        let mut upstream = upstream?;
        match upstream.chunk().await {
            Ok(Some(bytes)) => Some((Ok::<_, std::io::Error>(bytes), Some(upstream))),
            Ok(None) => None,
            Err(error) => Some((Err(std::io::Error::other(error)), None)),
        }
    });
    Ok(response.streaming(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_chat_wherever_a_dialect_puts_it() {
        let id = "0190f3a0-0000-7000-8000-0000000000ab";
        let chat = Some(ChatId::from_uuid(Uuid::parse_str(id).unwrap_or_default()));
        for path in [
            format!("/api/v1/chats/{id}"),
            format!("/api/v1/chats/{id}/messages/x/edit"),
            format!("/chats/{id}/messages"),
            format!("/rooms/{id}"),
            format!("/chat/{id}"),
            format!("/api/v1/chats/update-chat/{id}"),
            format!("/api/v1/chats/delete-chat/{id}"),
        ] {
            assert_eq!(chat_in_path(&path), chat, "{path}");
        }
        for path in [
            "/api/v1/chats",
            "/api/v1/chats/create-chat",
            "/auth/login",
            "/",
        ] {
            assert_eq!(chat_in_path(path), None, "{path}");
        }
        assert_eq!(chat_in_query(&format!("branch_id=x&chat_id={id}")), chat);
        assert_eq!(chat_in_query("chat_id=nope"), None);
        assert_eq!(
            chat_in_body(format!(r#"{{"chat_id":"{id}","content":"hi"}}"#).as_bytes()),
            chat
        );
        assert_eq!(
            chat_in_body(format!(r#"{{"parent_chat_id":"{id}"}}"#).as_bytes()),
            chat
        );
        assert_eq!(chat_in_body(b"[1,2]"), None);
        assert_eq!(chat_in_body(br#"{"chat_id": 7}"#), None);
    }
}
