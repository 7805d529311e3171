//! `GET /api/v1/models`: the configured providers, their models and the aliases (no secrets).

use actix_web::web;
use arbor_actors::llm::ModelsView;
use arbor_actors::Chats;

use crate::auth::AuthUser;

/// What `model` may name in a reply request: an alias, `provider/model`, or a provider (its
/// default model). The `echo` provider is offline and not a language model.
#[utoipa::path(get, path = "/api/v1/models", operation_id = "list_models", tag = "models", security(("bearer" = [])),
    responses((status = 200, body = ModelsView)))]
pub async fn list(chats: web::Data<Chats>, _user: AuthUser) -> web::Json<ModelsView> {
    web::Json(chats.llm().catalog())
}
