//! JSON request bodies: `Json` (required) and `OptionalJson` (a body the request may leave out).
//!
//! Both in place of actix-web's extractors, for two things those got wrong:
//! - `Option<web::Json<T>>` is `None` whenever the body fails to extract, so a malformed body, a
//!   field of the wrong type or a form instead of JSON was silently taken for no body at all.
//!   Here only an empty body (or `null`) means "none".
//! - serde's derived structs also read a JSON array, field by field in order (`[null, null]`
//!   was a valid chat update). Every body of this API is an object; anything else is a 422.
//!
//! Refusals: 400 `invalid_json` (not JSON), 413 `payload_too_large` (over
//! `limits.max_body_bytes`, `PayloadConfig`'s limit), 415 `unsupported_media_type`, 422
//! `validation_failed` (not an object, a missing field, a wrong type).

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Code};

/// A JSON object body, sent as `application/json` (or `application/*+json`).
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = content_type(req) == Some(true);
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            if !json {
                return Err(unsupported_media_type());
            }
            let bytes = bytes.await.map_err(payload_error)?;
            parse(&bytes).map(Self)
        })
    }
}

/// The body as `T`, or `T::default()` when the request has none (or sends `null`). A body
/// without a `Content-Type` is read as JSON.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let not_json = content_type(req) == Some(false);
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let bytes = bytes.await.map_err(payload_error)?;
            if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
                return Ok(Self(T::default()));
            }
            if not_json {
                return Err(unsupported_media_type());
            }
            parse(&bytes).map(Self)
        })
    }
}

/// Whether the request's `Content-Type` is JSON; `None` without one.
fn content_type(req: &HttpRequest) -> Option<bool> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .map(|value| is_json(value.as_bytes()))
}

fn unsupported_media_type() -> ApiError {
    ApiError::unsupported_media_type("application/json")
}

/// `web::Bytes` keeps `PayloadConfig`'s limit; its refusals in the API's error shape.
fn payload_error(e: actix_web::Error) -> ApiError {
    if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large()
    } else {
        ApiError::new(Code::InvalidBody, e.to_string())
    }
}

/// A JSON object as `T`.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let is_object = bytes.trim_ascii_start().first() == Some(&b'{');
    match serde_json::from_slice::<T>(bytes) {
        Ok(_) if !is_object => Err(ApiError::new(
            Code::ValidationFailed,
            "the body must be a JSON object",
        )),
        Ok(body) => Ok(body),
        Err(e) if e.is_data() => Err(ApiError::new(Code::ValidationFailed, e.to_string())),
        Err(e) => Err(ApiError::new(
            Code::InvalidJson,
            format!("malformed JSON: {e}"),
        )),
    }
}

/// `application/json` or `application/<anything>+json`, with any parameters, as `web::Json`
/// accepts.
fn is_json(content_type: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(content_type) else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_media_types_are_recognised() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(is_json(yes.as_bytes()), "{yes}");
        }
        for no in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "",
        ] {
            assert!(!is_json(no.as_bytes()), "{no}");
        }
    }
}
