//! The operator surface: actor inspection and eviction, runtime stats, the admin page, and
//! `/metrics`. Admin routes answer 404 to anyone who is not an admin, as if they did not exist.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use arbor_actors::inspect::{ActorDetail, ActorPage, ActorSort, SortOrder};
use arbor_actors::model::{ChatId, UserId};
use arbor_actors::Chats;
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{authenticate, constant_time_eq, Accounts};
use crate::cluster::Cluster;
use crate::config::{AdminSettings, MetricsSettings};
use crate::error::{ApiError, Code, ErrorBody};
use crate::membership::MemberStatus;
use crate::metrics::{FeedbackView, Metrics, RuntimeStats, CONTENT_TYPE};

/// An authenticated admin: an account listed in `admin.emails` or granted the role with
/// `arbor admin grant`. Anyone else gets 404 `not_found`.
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub UserId);

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let user = authenticate(req);
        let accounts = req.app_data::<web::Data<Accounts>>().cloned();
        let settings = req.app_data::<web::Data<AdminSettings>>().cloned();
        Box::pin(async move {
            let (Ok(user), Some(accounts), Some(settings)) = (user, accounts, settings) else {
                return Err(ApiError::not_found());
            };
            let record = accounts
                .user(user.0)
                .await
                .map_err(|_| ApiError::not_found())?;
            let listed = settings.emails.iter().any(|e| {
                record
                    .email
                    .as_deref()
                    .is_some_and(|m| e.trim().eq_ignore_ascii_case(m))
            });
            if record.is_admin || listed {
                Ok(Admin(record.id))
            } else {
                Err(ApiError::not_found())
            }
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ActorQuery {
    #[serde(default)]
    pub sort: ActorSort,
    #[serde(default)]
    pub order: SortOrder,
    /// 1 to 1000 (default 50).
    pub limit: Option<usize>,
    /// Actors to skip (default 0).
    pub offset: Option<usize>,
}

pub(crate) const MAX_ACTOR_PAGE: usize = 1000;

/// Resident chat actors, paged and sorted. A snapshot: no actor is messaged to list it.
#[utoipa::path(get, path = "/api/v1/admin/actors", operation_id = "list_actors", tag = "admin", params(ActorQuery),
    security(("bearer" = [])), responses((status = 200, body = ActorPage), (status = 404, body = ErrorBody,
        description = "Not an admin (or no token), or no such resident actor")))]
pub async fn actors(
    _: Admin,
    chats: web::Data<Chats>,
    membership: web::Data<MemberStatus>,
    query: web::Query<ActorQuery>,
) -> Result<web::Json<ActorPage>, ApiError> {
    let limit = match query.limit {
        None => 50,
        Some(n) if (1..=MAX_ACTOR_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::new(
                Code::InvalidLimit,
                format!("limit must be between 1 and {MAX_ACTOR_PAGE}"),
            ))
        }
    };
    let mut page = chats.actor_page(query.sort, query.order, query.offset.unwrap_or(0), limit);
    page.node = Some(membership.id);
    Ok(web::Json(page))
}

fn actor_not_found() -> ApiError {
    ApiError::new(Code::ActorNotFound, "no actor of that chat is resident")
}

/// One resident actor: the list's fields plus its active branch and replies in flight. Does
/// not activate a chat that is not resident (404 `actor_not_found`).
#[utoipa::path(get, path = "/api/v1/admin/actors/{chat_id}", operation_id = "get_actor", tag = "admin",
    params(("chat_id" = ChatId, Path)), security(("bearer" = [])), responses((status = 200, body = ActorDetail), (status = 404, body = ErrorBody,
        description = "Not an admin (or no token), or no such resident actor")))]
pub async fn actor(
    _: Admin,
    chats: web::Data<Chats>,
    path: web::Path<ChatId>,
) -> Result<web::Json<ActorDetail>, ApiError> {
    chats
        .actor(path.into_inner())
        .await
        .map(web::Json)
        .ok_or_else(actor_not_found)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Evicted {
    pub chat_id: ChatId,
    pub evicted: bool,
}

/// Flushes a resident actor's writes and stops it now; answers once it has stopped. The chat
/// stays stored and is activated again by its next request.
#[utoipa::path(post, path = "/api/v1/admin/actors/{chat_id}/evict", operation_id = "evict_actor", tag = "admin",
    params(("chat_id" = ChatId, Path)), security(("bearer" = [])), responses((status = 200, body = Evicted), (status = 404, body = ErrorBody,
        description = "Not an admin (or no token), or no such resident actor")))]
pub async fn evict(
    admin: Admin,
    chats: web::Data<Chats>,
    path: web::Path<ChatId>,
) -> Result<web::Json<Evicted>, ApiError> {
    let chat = path.into_inner();
    if !chats.evict(chat).await {
        return Err(actor_not_found());
    }
    tracing::info!(%chat, admin = %admin.0, "actor evicted by an admin");
    Ok(web::Json(Evicted {
        chat_id: chat,
        evicted: true,
    }))
}

/// Totals and rates for the whole runtime, with a short history for charts.
#[utoipa::path(get, path = "/api/v1/admin/stats", operation_id = "get_runtime_stats", tag = "admin",
    security(("bearer" = [])), responses((status = 200, body = RuntimeStats), (status = 404, body = ErrorBody,
        description = "Not an admin (or no token), or no such resident actor")))]
pub async fn stats(
    _: Admin,
    metrics: web::Data<Metrics>,
    stores: web::Data<arbor_actors::ports::Stores>,
) -> Result<web::Json<RuntimeStats>, ApiError> {
    let mut stats = metrics.runtime_stats();
    stats.feedback = stores
        .metadata
        .feedback_by_model()
        .await?
        .into_iter()
        .map(|f| FeedbackView {
            model: f.model,
            up: f.up,
            down: f.down,
        })
        .collect();
    Ok(web::Json(stats))
}

/// One server in the membership table.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub id: uuid::Uuid,
    /// Where its HTTP server listens.
    pub address: String,
    pub host: String,
    pub pid: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// How long ago it last sent a heartbeat, by the metadata store's clock.
    pub heartbeat_age_ms: u64,
    /// The server that answered.
    pub this_node: bool,
    /// A cluster-mode node, and which incarnation of it (bumped each time it entered the table
    /// again after it was declared dead).
    pub cluster: bool,
    pub incarnation: i64,
    /// Cluster mode: the shard leases it holds, as the answering node last saw them.
    pub shards: u32,
}

/// One shard's lease (cluster mode).
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardLeaseView {
    pub shard: u16,
    /// The node holding it; absent when nobody does (its owner left or died, and no node has
    /// taken it over yet).
    pub owner: Option<uuid::Uuid>,
    /// Rises on every change of owner; commits made under an older epoch are refused.
    pub epoch: i64,
}

/// The servers on these stores, as the membership table has them.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    /// The server that answered.
    pub node: uuid::Uuid,
    /// A server is dead once its heartbeat is older than this (`membership.node_ttl_secs`).
    pub node_ttl_secs: u64,
    pub members: Vec<MemberView>,
    /// Whether this server runs in cluster mode.
    pub cluster: bool,
    /// Cluster mode: every shard's lease, as this node last renewed them (empty otherwise).
    pub shards: Vec<ShardLeaseView>,
}

/// The membership table: every server on these stores with its heartbeat's age, and in cluster
/// mode the shard leases and who holds them. Without cluster mode there is one server (a second
/// one refuses to start).
#[utoipa::path(get, path = "/api/v1/admin/cluster", operation_id = "get_cluster", tag = "admin",
    security(("bearer" = [])), responses((status = 200, body = ClusterView), (status = 404, body = ErrorBody,
        description = "Not an admin (or no token)")))]
pub async fn cluster(
    _: Admin,
    membership: web::Data<MemberStatus>,
    cluster: Option<web::Data<Cluster>>,
) -> Result<web::Json<ClusterView>, ApiError> {
    let nodes = membership.store.nodes().await?;
    let view = cluster.as_ref().map(|c| c.view());
    let shards: Vec<ShardLeaseView> = view
        .iter()
        .flat_map(|v| &v.shards)
        .map(|s| ShardLeaseView {
            shard: s.lease.shard,
            owner: s.lease.owner.map(|(id, _)| id),
            epoch: s.lease.epoch,
        })
        .collect();
    let members = nodes
        .into_iter()
        .map(|seen| MemberView {
            shards: shards
                .iter()
                .filter(|s| s.owner == Some(seen.node.id))
                .count() as u32,
            cluster: seen.node.cluster,
            incarnation: seen.node.incarnation,
            this_node: seen.node.id == membership.id,
            id: seen.node.id,
            address: seen.node.address,
            host: seen.node.host,
            pid: seen.node.pid,
            started_at: seen.node.started_at,
            heartbeat_age_ms: u64::try_from(seen.heartbeat_age.as_millis()).unwrap_or(u64::MAX),
        })
        .collect();
    Ok(web::Json(ClusterView {
        node: membership.id,
        node_ttl_secs: membership.ttl().as_secs(),
        members,
        cluster: cluster.is_some(),
        shards,
    }))
}

/// The admin page: self-contained (inline script and style, no external assets). It holds no
/// data itself; it signs in and reads the admin API with the admin's token. A request that
/// carries a non-admin's token gets 404 like every admin route.
pub async fn page(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if req.headers().contains_key(header::AUTHORIZATION) {
        Admin::extract(&req).await?;
    }
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(ADMIN_PAGE))
}

const ADMIN_PAGE: &str = include_str!("admin.html");

/// `GET /metrics` in the Prometheus text format. With `metrics.token` set, scrapers must send
/// it as a bearer token (401 otherwise).
pub async fn metrics(
    req: HttpRequest,
    metrics: web::Data<Metrics>,
    settings: web::Data<MetricsSettings>,
) -> Result<HttpResponse, ApiError> {
    let expected = settings.token.expose();
    if !expected.is_empty() {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
            return Err(ApiError::new(
                Code::InvalidToken,
                "send Authorization: Bearer <metrics token>",
            ));
        }
    }
    let body = web::block(move || metrics.render())
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(body))
}
