//! Method routes and the resources that hold them, as every endpoint registers them: a method
//! the resource lacks gets the JSON 405 with the `Allow` header RFC 9110 requires, and a GET
//! route answers HEAD too (actix-http sends a HEAD response's headers without its body).

use actix_web::body::BoxBody;
use actix_web::guard::{Guard, GuardContext};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, HttpResponse, Responder, Route};

use crate::error::{ApiError, Code, ErrorBody};
use crate::metrics::RouteMetrics;

/// A route for one method: a `Route` behind a method guard, with the method kept for the
/// resource's `Allow` header.
pub struct MethodRoute {
    method: Method,
    route: Route,
}

impl MethodRoute {
    /// The route's handler, as `Route::to`.
    pub fn to<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        Self {
            method: self.method,
            route: self.route.to(handler),
        }
    }
}

pub fn get() -> MethodRoute {
    method(Method::GET)
}

pub fn post() -> MethodRoute {
    method(Method::POST)
}

pub fn put() -> MethodRoute {
    method(Method::PUT)
}

pub fn patch() -> MethodRoute {
    method(Method::PATCH)
}

pub fn delete() -> MethodRoute {
    method(Method::DELETE)
}

/// Not `web::method`: its guard records every method it checks in the request's extensions
/// (a `Vec` and two map operations, ~540 instructions for each route tried) for the `Allow`
/// header of actix-web's own 405, which the JSON 405 here replaces.
fn method(method: Method) -> MethodRoute {
    MethodRoute {
        route: web::route().guard(MethodIs(method.clone())),
        method,
    }
}

/// The request's method is this one (or HEAD, for GET).
struct MethodIs(Method);

impl Guard for MethodIs {
    fn check(&self, ctx: &GuardContext<'_>) -> bool {
        let method = &ctx.head().method;
        *method == self.0 || (self.0 == Method::GET && *method == Method::HEAD)
    }
}

/// Splits routes into the `Route`s and the `Allow` header value they make (`GET, HEAD, POST`).
pub fn split(routes: Vec<MethodRoute>) -> (Vec<Route>, HeaderValue) {
    let mut allowed: Vec<&str> = Vec::with_capacity(routes.len() + 1);
    for r in &routes {
        allowed.push(r.method.as_str());
        if r.method == Method::GET {
            allowed.push(Method::HEAD.as_str());
        }
    }
    let allow =
        HeaderValue::from_str(&allowed.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""));
    (routes.into_iter().map(|r| r.route).collect(), allow)
}

/// A resource with these method routes; other methods get the JSON 405. It keeps its own
/// request metrics' handles (`RouteMetrics`, one per HTTP worker).
pub fn resource(path: &str, routes: Vec<MethodRoute>) -> actix_web::Resource {
    let (routes, allow) = split(routes);
    let resource = web::resource(path)
        .app_data(RouteMetrics::default())
        .default_service(web::to(move || {
            let allow = allow.clone();
            async move { method_not_allowed(allow) }
        }));
    routes
        .into_iter()
        .fold(resource, actix_web::Resource::route)
}

/// The JSON 405, naming the methods the resource has.
pub fn method_not_allowed(allow: HeaderValue) -> HttpResponse<BoxBody> {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, allow))
        .json(ErrorBody::of(&ApiError::new(
            Code::MethodNotAllowed,
            "this endpoint does not support that method",
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_names_every_method_and_head_with_get() {
        async fn h() -> &'static str {
            ""
        }
        let (routes, allow) = split(vec![post().to(h), get().to(h), delete().to(h)]);
        assert_eq!(routes.len(), 3);
        assert_eq!(allow, "POST, GET, HEAD, DELETE");
    }
}
