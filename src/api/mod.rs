//! The HTTP surface: one small handler per endpoint (extract, call one operation, map the reply).

pub mod admin;
pub mod auth;
pub mod backup;
pub mod body;
pub mod branches;
pub mod chats;
pub mod compat;
pub mod doc_pages;
pub mod docs;
pub mod feedback;
mod openapi;

pub mod generations;
pub mod health;
pub mod messages;
pub mod methods;
pub mod models;
pub mod portable;
pub mod search;
pub mod segments;
pub mod shares;
pub mod sse;
pub mod usage;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Deserializer};

use crate::config::LimitSettings;
use crate::error::{ApiError, Code};
use methods::{delete, get, patch, post, put, resource};
use segments::SegmentScope;

/// Registers every route under `/api/v1`, plus health, readiness, the admin page, the seed
/// dialects (`compat`) and (when `metrics` is true) `/metrics`.
///
/// actix-web tries routes in order, and each one it tries costs: a static pattern a prefix
/// comparison and a path state set up and dropped, a `{segment}` pattern a regex run with
/// captures. So the order is part of the read path's cost. `/api/v1` comes first and
/// `/api/v1/chats` is its first scope, a `SegmentScope` that matches a request about one chat
/// with no regex. In it the seed dialect's five `/chats/...` routes come before Arbor's
/// `/{chat_id}` routes, which would otherwise take them.
pub fn routes(cfg: &mut web::ServiceConfig, metrics: bool) {
    let chats = SegmentScope::new("/api/v1", "/chats")
        .resource("", vec![post().to(chats::create), get().to(chats::list)])
        .resource("/import", vec![post().to(portable::import)]);
    cfg.service(
        compat::v1_routes(
            web::scope("/api/v1").service(chat_routes(compat::v1_chat_routes(chats))),
        )
        .service(resource("/auth/register", vec![post().to(auth::register)]))
        .service(resource("/auth/login", vec![post().to(auth::login)]))
        .service(resource("/auth/token", vec![post().to(auth::token)]))
        .service(resource("/auth/me", vec![get().to(auth::me)]))
        .service(resource("/models", vec![get().to(models::list)]))
        .service(resource("/usage", vec![get().to(usage::usage)]))
        .service(resource("/backup", vec![get().to(backup::backup)]))
        .service(resource("/search", vec![get().to(search::search)]))
        .service(resource(
            "/backup/restore",
            vec![post().to(backup::restore)],
        ))
        .service(resource(
            "/shared/{token}/import",
            vec![post().to(shares::import)],
        ))
        .service(resource("/admin/stats", vec![get().to(admin::stats)]))
        .service(resource("/admin/usage", vec![get().to(usage::admin_usage)]))
        .service(resource(
            "/admin/users/{user}/quota",
            vec![
                get().to(usage::get_quota),
                put().to(usage::set_quota),
                delete().to(usage::reset_quota),
            ],
        ))
        .service(resource("/admin/cluster", vec![get().to(admin::cluster)]))
        .service(resource("/admin/actors", vec![get().to(admin::actors)]))
        .service(resource(
            "/admin/actors/{chat_id}",
            vec![get().to(admin::actor)],
        ))
        .service(resource(
            "/admin/actors/{chat_id}/evict",
            vec![post().to(admin::evict)],
        )),
    );
    if metrics {
        cfg.service(resource("/metrics", vec![get().to(admin::metrics)]));
    }
    cfg.service(resource("/shared/{token}", vec![get().to(shares::shared)]));
    cfg.service(resource("/health", vec![get().to(health::health)]))
        .service(resource("/ready", vec![get().to(health::ready)]))
        .service(resource("/admin", vec![get().to(admin::page)]))
        .configure(compat::root_routes);
}

/// `/api/v1/chats/{chat_id}...`.
fn chat_routes(chats: SegmentScope) -> SegmentScope {
    chats
        .resource(
            "/{chat_id}",
            vec![
                get().to(chats::get),
                patch().to(chats::update),
                delete().to(chats::delete),
            ],
        )
        .resource(
            "/{chat_id}/messages",
            vec![post().to(messages::send), get().to(messages::list)],
        )
        .resource(
            "/{chat_id}/branches",
            vec![post().to(branches::create), get().to(branches::list)],
        )
        .resource(
            "/{chat_id}/active-branch",
            vec![put().to(branches::set_active)],
        )
        .resource("/{chat_id}/tree", vec![get().to(messages::tree)])
        .resource(
            "/{chat_id}/branches/{branch_id}",
            vec![
                get().to(branches::get),
                patch().to(branches::rename),
                delete().to(branches::delete),
            ],
        )
        .resource(
            "/{chat_id}/messages/{message_id}",
            vec![get().to(messages::get)],
        )
        .resource("/{chat_id}/export", vec![get().to(portable::export)])
        .resource(
            "/{chat_id}/shares",
            vec![post().to(shares::create), get().to(shares::list)],
        )
        .resource(
            "/{chat_id}/shares/{share_id}",
            vec![delete().to(shares::revoke)],
        )
        .resource(
            "/{chat_id}/messages/{message_id}/feedback",
            vec![put().to(feedback::set), delete().to(feedback::delete)],
        )
        .resource(
            "/{chat_id}/messages/{message_id}/edit",
            vec![post().to(messages::edit)],
        )
        .resource(
            "/{chat_id}/messages/{message_id}/regenerate",
            vec![post().to(messages::regenerate)],
        )
        .resource(
            "/{chat_id}/generations/{generation_id}",
            vec![get().to(generations::get)],
        )
        .resource(
            "/{chat_id}/generations/{generation_id}/events",
            vec![get().to(generations::events)],
        )
        .resource(
            "/{chat_id}/generations/{generation_id}/cancel",
            vec![post().to(generations::cancel)],
        )
}

/// Unknown paths.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found())
}

/// Page size: the configured default when absent, 1 to the configured maximum otherwise.
pub fn page_limit(requested: Option<usize>, limits: &LimitSettings) -> Result<usize, ApiError> {
    match requested {
        None => Ok(limits.default_page_size),
        Some(n) if (1..=limits.max_page_size).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::new(
            Code::InvalidLimit,
            format!("limit must be between 1 and {}", limits.max_page_size),
        )),
    }
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
pub fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// A non-negative integer field that may be written as an integral float (`3.0`): JSON Schema
/// calls that an integer too, and clients that go through floating point send it.
pub fn integral<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(de)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        let f = number.as_f64()?;
        // Every u64 up to 2^64 is below this float; `as` saturates past it.
        (f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0).then_some(f as u64)
    });
    whole
        .and_then(|n| T::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected a non-negative integer, not {number}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::integral")]
        n: Option<u8>,
    }

    fn n(json: &str) -> Result<Option<u8>, String> {
        serde_json::from_str::<Body>(json)
            .map(|b| b.n)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integers_may_be_written_as_integral_floats() {
        assert_eq!(n(r#"{"n": 3}"#), Ok(Some(3)));
        assert_eq!(n(r#"{"n": 3.0}"#), Ok(Some(3)));
        assert_eq!(n(r#"{"n": null}"#), Ok(None));
        assert_eq!(n(r#"{}"#), Ok(None));
        for bad in [
            r#"{"n": 3.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": 256}"#,
            r#"{"n": "3"}"#,
            r#"{"n": 1e300}"#,
        ] {
            assert!(n(bad).is_err(), "{bad}");
        }
    }
}
