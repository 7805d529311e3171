//! Liveness and readiness.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::lifecycle::Lifecycle;
use crate::membership::MemberStatus;
use crate::storage::Stores;

/// The process is up.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "operations", responses((status = 200)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Both stores answer, the membership table has this server's recent heartbeat (the other
/// servers see it live), and the server is not shutting down.
#[utoipa::path(get, path = "/ready", operation_id = "ready", tag = "operations", responses((status = 200), (status = 503)))]
pub async fn ready(
    stores: web::Data<Stores>,
    lifecycle: web::Data<Lifecycle>,
    membership: web::Data<MemberStatus>,
) -> HttpResponse {
    if lifecycle.is_draining() {
        return HttpResponse::ServiceUnavailable().json(json!({ "status": "draining" }));
    }
    let metadata = stores.metadata.ping().await.is_ok();
    let messages = stores.messages.ping().await.is_ok();
    let member = membership.healthy();
    let ready = metadata && messages && member;
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "metadata_store": metadata,
        "message_store": messages,
        "membership": member,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
