//! The OpenAPI document (`/openapi.json`) and Swagger UI (`/docs`), served from assets vendored
//! into the binary at build time, so both work offline.

use utoipa::openapi::security::{
    Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme,
};
use utoipa::{Modify, OpenApi};

use super::{admin, auth, branches, chats, error, generations, health, messages, models};

#[derive(OpenApi)]
#[openapi(
    info(title = "Arbor", description = "Branching AI conversations: every chat is a tree."),
    paths(
        auth::register, auth::login, auth::token, auth::me,
        chats::create, chats::list, chats::get, chats::update, chats::delete,
        messages::send, messages::list, messages::get, messages::edit, messages::regenerate,
        messages::tree, generations::get, generations::events, generations::cancel, models::list,
        branches::create, branches::list, branches::get, branches::rename, branches::delete,
        branches::set_active,
        health::health, health::ready,
        admin::actors, admin::actor, admin::evict, admin::stats,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&Security),
    tags(
        (name = "auth"), (name = "chats"), (name = "messages"), (name = "branches"), (name = "generations"),
        (name = "models"), (name = "operations"),
        (name = "admin", description = "Admins only; anyone else gets 404."),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new(
                "/api/v1/auth/token",
                Scopes::new(),
            ))])),
        );
    }
}
