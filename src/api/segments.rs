//! A scope whose routes are matched segment by segment, with no regex: `/api/v1/chats`.
//!
//! actix-web matches a `{name}` pattern with a regex run with captures, and tries a scope's
//! routes one by one, each attempt setting up and dropping its own path state. Every request
//! about one chat went through 12 of those attempts and one regex, nested three scopes deep:
//! 5.6k of the 45k instructions of a read ([BENCHMARKS.md], "Read path"). This scope
//! splits the path once and compares its segments with each route's: literal segments by
//! equality, `{name}` segments by being non-empty, which is what actix-web's default `[^/]+`
//! accepts. Its routes are the same `Route`s (method guard and handler) that a `Resource` would
//! hold, and a request reaches its handler as it would through actix-web's own scopes:
//! `{name}` segments are in `match_info` for `web::Path`, a method the route lacks gets the JSON
//! 405 with its `Allow` header, a path no route matches the JSON 404, and each route keeps its own request metrics
//! (`RouteMetrics`) labelled with its full pattern.
//!
//! [BENCHMARKS.md]: ../../BENCHMARKS.md

use std::rc::Rc;

use actix_web::dev::{
    AppService, Extensions, HttpServiceFactory, ResourceDef, Service, ServiceFactory,
    ServiceRequest, ServiceResponse,
};
use actix_web::http::header::HeaderValue;
use actix_web::{Error, Route};
use futures_util::future::{join_all, LocalBoxFuture};

use super::methods::{self, MethodRoute};
use crate::error::ApiError;
use crate::metrics::RouteMetrics;

/// What a `Route` builds: its handler behind its guards (actix-web does not export the name).
type RouteService = <Route as ServiceFactory<ServiceRequest>>::Service;

/// The most segments a pattern may have (the longest is `/{chat_id}/messages/{id}/edit`).
const MAX_SEGMENTS: usize = 4;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Matches exactly this text.
    Literal(&'static str),
    /// Matches any non-empty segment and records it under this name.
    Param(&'static str),
}

/// Parses `/a/{b}/c` into its parts; `""` is the scope's own path. Panics on a pattern this
/// scope cannot match (routes are fixed at startup; a bad one is a programming error).
fn parse_pattern(pattern: &'static str) -> Vec<Part> {
    if pattern.is_empty() {
        return Vec::new();
    }
    let rest = pattern
        .strip_prefix('/')
        .unwrap_or_else(|| panic!("pattern {pattern:?} must start with '/'"));
    let parts: Vec<Part> = rest
        .split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) if !name.is_empty() && !name.contains(['{', '}', ':']) => {
                    Part::Param(name)
                }
                None if !segment.is_empty() && !segment.contains(['{', '}']) => {
                    Part::Literal(segment)
                }
                _ => panic!("pattern {pattern:?}: unsupported segment {segment:?}"),
            },
        )
        .collect();
    assert!(
        parts.len() <= MAX_SEGMENTS,
        "pattern {pattern:?} has more than {MAX_SEGMENTS} segments"
    );
    parts
}

/// Splits what is left of the path after the scope's prefix into its segments; `None` when it
/// has more than `MAX_SEGMENTS` (no route has) or does not start with `/`.
fn split(path: &str) -> Option<([&str; MAX_SEGMENTS], usize)> {
    let mut segments = [""; MAX_SEGMENTS];
    if path.is_empty() {
        return Some((segments, 0));
    }
    let mut count = 0;
    for segment in path.strip_prefix('/')?.split('/') {
        *segments.get_mut(count)? = segment;
        count += 1;
    }
    Some((segments, count))
}

/// Whether `segments` match `parts`.
fn matches(parts: &[Part], segments: &[&str]) -> bool {
    parts.len() == segments.len()
        && parts
            .iter()
            .zip(segments)
            .all(|(part, segment)| match part {
                Part::Literal(text) => segment == text,
                Part::Param(_) => !segment.is_empty(),
            })
}

/// A scope (`SegmentScope::new("/api/v1", "/chats")`) of routes matched segment by segment.
pub struct SegmentScope {
    /// Where the scope is mounted, relative to its parent (`/chats`).
    mount: &'static str,
    /// The parent's own prefix, for the routes' metric labels (`/api/v1`).
    parent: &'static str,
    resources: Vec<SegmentResource>,
}

struct SegmentResource {
    parts: Vec<Part>,
    label: String,
    routes: Vec<Route>,
    allow: HeaderValue,
}

impl SegmentScope {
    pub fn new(parent: &'static str, mount: &'static str) -> Self {
        Self {
            mount,
            parent,
            resources: Vec::new(),
        }
    }

    /// Adds a resource: `pattern` relative to the scope (`""`, `/{chat_id}/messages`), with its
    /// method routes (`get().to(handler)` and the like). Resources are tried in the order they
    /// are added; the first whose pattern matches answers, as in an actix-web scope.
    pub fn resource(mut self, pattern: &'static str, routes: Vec<MethodRoute>) -> Self {
        let (routes, allow) = methods::split(routes);
        self.resources.push(SegmentResource {
            parts: parse_pattern(pattern),
            label: format!("{}{}{}", self.parent, self.mount, pattern),
            routes,
            allow,
        });
        self
    }
}

impl HttpServiceFactory for SegmentScope {
    fn register(self, config: &mut AppService) {
        let factory = SegmentScopeFactory {
            resources: Rc::new(self.resources),
        };
        config.register_service(ResourceDef::root_prefix(self.mount), None, factory, None);
    }
}

struct SegmentScopeFactory {
    resources: Rc<Vec<SegmentResource>>,
}

impl ServiceFactory<ServiceRequest> for SegmentScopeFactory {
    type Response = ServiceResponse;
    type Error = Error;
    type Config = ();
    type Service = SegmentScopeService;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Service, Self::InitError>>;

    fn new_service(&self, _: ()) -> Self::Future {
        let resources = Rc::clone(&self.resources);
        Box::pin(async move {
            let mut built = Vec::with_capacity(resources.len());
            for resource in resources.iter() {
                let routes = join_all(resource.routes.iter().map(|r| r.new_service(())))
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()?;
                built.push(ResourceService {
                    parts: resource.parts.clone(),
                    routes,
                    allow: resource.allow.clone(),
                    metrics: metrics_container(resource.label.clone()),
                });
            }
            Ok(SegmentScopeService {
                resources: built,
                unmatched: metrics_container("unmatched".into()),
            })
        })
    }
}

/// Request data holding a route's `RouteMetrics` (one per HTTP worker, as each worker builds
/// its own services).
fn metrics_container(label: String) -> Rc<Extensions> {
    let mut data = Extensions::new();
    data.insert(RouteMetrics::labelled(label));
    Rc::new(data)
}

struct ResourceService {
    parts: Vec<Part>,
    routes: Vec<RouteService>,
    allow: HeaderValue,
    metrics: Rc<Extensions>,
}

pub struct SegmentScopeService {
    resources: Vec<ResourceService>,
    /// Metrics of the requests no route matched (labelled `unmatched`).
    unmatched: Rc<Extensions>,
}

impl Service<ServiceRequest> for SegmentScopeService {
    type Response = ServiceResponse;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::always_ready!();

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let found = split(req.match_info().unprocessed()).and_then(|(segments, count)| {
            let segments = &segments[..count];
            self.resources
                .iter()
                .find(|r| matches(&r.parts, segments))
                .map(|r| (r, params(&r.parts, segments)))
        });
        let Some((resource, params)) = found else {
            req.add_data_container(Rc::clone(&self.unmatched));
            return Box::pin(std::future::ready(Ok(
                req.error_response(ApiError::not_found())
            )));
        };
        for (name, value) in params.into_iter().flatten() {
            req.match_info_mut().add_static(name, value);
        }
        req.add_data_container(Rc::clone(&resource.metrics));
        for route in &resource.routes {
            if route.check(&mut req) {
                return route.call(req);
            }
        }
        Box::pin(std::future::ready(Ok(req.into_response(
            methods::method_not_allowed(resource.allow.clone()),
        ))))
    }
}

/// The `{name}` segments of a match, by name, in pattern order.
fn params(parts: &[Part], segments: &[&str]) -> [Option<(&'static str, String)>; MAX_SEGMENTS] {
    let mut out: [Option<(&'static str, String)>; MAX_SEGMENTS] = Default::default();
    for (slot, (part, segment)) in out.iter_mut().zip(parts.iter().zip(segments)) {
        if let Part::Param(name) = part {
            *slot = Some((name, (*segment).to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_into_literals_and_params() {
        assert_eq!(parse_pattern(""), vec![]);
        assert_eq!(
            parse_pattern("/{chat_id}/messages/{message_id}/edit"),
            vec![
                Part::Param("chat_id"),
                Part::Literal("messages"),
                Part::Param("message_id"),
                Part::Literal("edit"),
            ]
        );
    }

    #[test]
    #[should_panic(expected = "unsupported segment")]
    fn a_regex_pattern_is_refused() {
        parse_pattern("/{chat_id:[0-9]+}");
    }

    #[test]
    #[should_panic(expected = "must start with '/'")]
    fn a_relative_pattern_is_refused() {
        parse_pattern("messages");
    }

    #[test]
    fn paths_split_into_segments_as_actix_web_matches_them() {
        let seg = |p| split(p).map(|(s, n)| s[..n].to_vec());
        assert_eq!(seg(""), Some(vec![]));
        assert_eq!(seg("/"), Some(vec![""]));
        assert_eq!(seg("/a/messages"), Some(vec!["a", "messages"]));
        assert_eq!(seg("/a/messages/"), Some(vec!["a", "messages", ""]));
        assert_eq!(seg("//messages"), Some(vec!["", "messages"]));
        assert_eq!(seg("/a/b/c/d/e"), None);
        assert_eq!(seg("a"), None);
    }

    #[test]
    fn params_need_a_non_empty_segment_and_literals_equal_text() {
        let parts = parse_pattern("/{chat_id}/messages");
        assert!(matches(&parts, &["x", "messages"]));
        assert!(!matches(&parts, &["", "messages"]));
        assert!(!matches(&parts, &["x", "Messages"]));
        assert!(!matches(&parts, &["x", "messages", ""]));
        assert!(!matches(&parts, &["x"]));
        assert!(matches(&parse_pattern(""), &[]));
        assert!(!matches(&parse_pattern(""), &[""]));
    }
}
