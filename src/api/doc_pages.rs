//! The API's documentation pages, as FastAPI serves them: Swagger UI at `/docs`, ReDoc at
//! `/redoc` and the document at `/openapi.json`, each at that exact path (no redirect). Every
//! asset is in the binary, so the pages work offline: Swagger UI's from
//! `utoipa-swagger-ui`'s vendored build, ReDoc's standalone bundle from `api/assets/redoc/`.
//! The pages name their assets by absolute path, so `/docs` and `/docs/` both work.

use std::sync::Arc;

use actix_web::http::header::{CacheControl, CacheDirective, ContentType};
use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use serde_json::Value;
use utoipa_swagger_ui::Config;

use super::methods::{get, resource};
use crate::error::ApiError;

/// What the pages serve, built once at start and shared by every HTTP worker: the document as
/// its JSON text, and Swagger UI's configuration.
pub struct DocPages {
    document: Bytes,
    config: Arc<Config<'static>>,
}

impl DocPages {
    pub fn new(document: &Value) -> Self {
        Self {
            document: Bytes::from(document.to_string()),
            config: Arc::new(Config::new(["/openapi.json"]).persist_authorization(true)),
        }
    }
}

/// ReDoc's standalone bundle (npm `redoc`, see `api/assets/redoc/README.md`).
const REDOC_JS: &[u8] = include_bytes!("assets/redoc/redoc.standalone.js");

/// Swagger UI's own page (its `dist/index.html`), with assets named under `/docs/`.
const SWAGGER_HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Arbor - Swagger UI</title>
    <link rel="stylesheet" type="text/css" href="/docs/swagger-ui.css" />
    <link rel="stylesheet" type="text/css" href="/docs/index.css" />
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32" />
    <link rel="icon" type="image/png" href="/docs/favicon-16x16.png" sizes="16x16" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/swagger-ui-bundle.js" charset="UTF-8"> </script>
    <script src="/docs/swagger-ui-standalone-preset.js" charset="UTF-8"> </script>
    <script src="/docs/swagger-initializer.js" charset="UTF-8"> </script>
  </body>
</html>
"#;

/// FastAPI's ReDoc page, without its web fonts (they come from a CDN).
const REDOC_HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Arbor - ReDoc</title>
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <style>body { margin: 0; padding: 0; }</style>
  </head>
  <body>
    <redoc spec-url="/openapi.json"></redoc>
    <script src="/redoc/redoc.standalone.js"> </script>
  </body>
</html>
"#;

/// Registers `/openapi.json`, `/docs`, `/docs/`, `/docs/{file}`, `/redoc` and its bundle.
pub fn routes(cfg: &mut web::ServiceConfig, pages: web::Data<DocPages>) {
    cfg.app_data(pages)
        .service(resource("/openapi.json", vec![get().to(openapi)]))
        .service(resource("/docs", vec![get().to(swagger_page)]))
        .service(resource("/docs/", vec![get().to(swagger_page)]))
        .service(resource("/docs/{file}", vec![get().to(swagger_asset)]))
        .service(resource("/redoc", vec![get().to(redoc_page)]))
        .service(resource(
            "/redoc/redoc.standalone.js",
            vec![get().to(redoc_js)],
        ));
}

async fn openapi(pages: web::Data<DocPages>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(pages.document.clone())
}

async fn swagger_page() -> HttpResponse {
    html(SWAGGER_HTML)
}

async fn redoc_page() -> HttpResponse {
    html(REDOC_HTML)
}

fn html(page: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(page)
}

/// A file of Swagger UI's build (`swagger-initializer.js` is written from `config`: the
/// document's URL, and the token kept across reloads).
async fn swagger_asset(
    file: web::Path<String>,
    pages: web::Data<DocPages>,
) -> Result<HttpResponse, ApiError> {
    let file = file.into_inner();
    if file == "index.html" {
        return Ok(swagger_page().await);
    }
    match utoipa_swagger_ui::serve(&file, pages.config.clone()) {
        Ok(Some(asset)) => Ok(HttpResponse::Ok()
            .content_type(asset.content_type)
            .insert_header(CacheControl(vec![CacheDirective::MaxAge(3600)]))
            .body(asset.bytes.into_owned())),
        Ok(None) => Err(ApiError::not_found()),
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn redoc_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(CacheControl(vec![CacheDirective::MaxAge(3600)]))
        .body(REDOC_JS)
}
