//! Logging: `tracing` with pretty or JSON output, and a request-id span around every request.
//! Never log message contents or secrets.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};
use crate::metrics::{Metrics, RouteMetrics};

pub const REQUEST_ID: &str = "x-request-id";
/// `REQUEST_ID` as a header name, made once: looking a header up by `&str` parses the name
/// each time (a third of the request id's cost).
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Gives each request an id (the client's `X-Request-Id` if it is sane, else a new UUID), runs
/// the request inside a span carrying it, echoes it back, and logs one line per request.
pub async fn request_span(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let request_id = request_id(&req);
    let span = tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default(),
        method = %req.method(),
        path = %req.path(),
    );
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let _in_flight = metrics.as_ref().map(|m| m.request_started());
    let method = method_label(req.method());
    let started = std::time::Instant::now();
    let mut res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    if let Some(metrics) = &metrics {
        // Asked after routing: actix-web then follows the resource the router chose. Before it,
        // it matches the path against every route again (3.6% of the read path's CPU). Routes
        // made by `api::resource` keep their label and instruments (`RouteMetrics`).
        let req = res.request();
        let elapsed = started.elapsed();
        match req.app_data::<RouteMetrics>() {
            Some(route) => {
                metrics.record_route(route, || req.match_pattern(), method, status, elapsed)
            }
            None => {
                let route = req.match_pattern();
                let route = route.as_deref().unwrap_or("unmatched");
                metrics.record_request(method, route, status, elapsed);
            }
        }
    }
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = started.elapsed().as_secs_f64() * 1e3,
            "request done"
        );
    });
    res.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    Ok(res)
}

/// The client's `X-Request-Id` if it is sane (1 to 128 visible ASCII characters), else a new
/// UUID's text: a header value either way, with no text built in between.
fn request_id(req: &ServiceRequest) -> HeaderValue {
    if let Some(value) = req.headers().get(REQUEST_ID_HEADER).filter(|v| {
        let bytes = v.as_bytes();
        !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic)
    }) {
        return value.clone();
    }
    let mut text = [0u8; 36];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-"))
}

/// The method as a metric label; anything unusual is `other`, so label values stay bounded.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
