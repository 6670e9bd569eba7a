//! A JSON body extractor that answers bad bodies in OpenAI's error envelope (axum's own `Json`
//! answers in plain text with 422): a `Content-Type` other than JSON is a 415, a body that does
//! not arrive within the read timeout a 408, malformed JSON a 400, and a missing, unknown or
//! ill-typed field a 400 whose `param` names it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// Like `axum::Json`, with OpenAI-shaped rejections.
pub struct Json<T>(pub T);

/// Whether a `Content-Type` names JSON (`application/json`, `application/*+json`, any parameters).
/// A missing header passes: some clients send none.
pub fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    Arc<AppState>: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ct = req.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
        if !is_json(ct) {
            return Err(ApiError::unsupported_media_type(ct.unwrap_or("")));
        }
        let timeout = Arc::<AppState>::from_ref(state).body_read_timeout;
        let read = tokio::time::timeout(timeout, Bytes::from_request(req, state)).await;
        let bytes = read.map_err(|_| ApiError::body_timeout(timeout))?.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE, "The request body is too large.")
            } else {
                ApiError::invalid(None, format!("Could not read the request body: {rej}"))
            }
        })?;
        parse(&bytes).map(Json)
    }
}

/// Parses `bytes` as `T`, turning serde's error into an [`ApiError`] naming the field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Reject syntax errors first, so they are not reported as a field problem.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ApiError::invalid(
            None,
            format!("We could not parse the JSON body of your request: {e}. The body must be a valid JSON object."),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let param = field_param(&path, &inner);
        let message = match &param {
            Some(p) => format!("Invalid value for `{p}`: {}", strip_position(&inner)),
            None => format!("Invalid request body: {}", strip_position(&inner)),
        };
        ApiError::invalid(param.as_deref(), message)
    })
}

/// The parameter a serde error is about: the path (which already ends in the field for an
/// unknown field), extended by the field named in a "missing field `x`" message.
fn field_param(path: &str, message: &str) -> Option<String> {
    let pre = "missing field `";
    let missing = message.find(pre).map(|i| &message[i + pre.len()..]).and_then(|rest| rest.split('`').next());
    let base = if path == "." { "" } else { path };
    match (base.is_empty(), missing) {
        (true, Some(f)) => Some(f.to_owned()),
        (false, Some(f)) => Some(format!("{base}.{f}")),
        (false, None) => Some(base.to_owned()),
        (true, None) => None,
    }
}

fn strip_position(message: &str) -> &str {
    message.find(" at line ").map_or(message, |i| &message[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        model: String,
        inner: Option<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn malformed_json_is_400_without_param() {
        let e = parse::<Req>(b"{\"model\": ").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.kind, "invalid_request_error");
        assert_eq!(e.param, None);
    }

    #[test]
    fn missing_field_is_named() {
        let e = parse::<Req>(b"{}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
    }

    #[test]
    fn ill_typed_nested_field_is_named_by_path() {
        let e = parse::<Req>(br#"{"model":"m","inner":{"n":"x"}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("inner.n"));
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse::<Req>(br#"{"model":"m","frobnicate":1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("frobnicate"));
        assert!(e.message.contains("frobnicate"));
    }
}
