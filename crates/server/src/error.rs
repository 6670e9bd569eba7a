//! The OpenAI error envelope: `{"error":{"message","type","param","code"}}`, with the HTTP
//! status that goes with it. Every error the server answers goes through [`ApiError`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use wick_engine::SubmitError;

/// An error answered to the client in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, ...
    pub kind: &'static str,
    pub param: Option<String>,
    /// A string code such as `model_not_found`, or none.
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429/503).
    pub retry_after: Option<u64>,
}

/// The JSON body of an error, also used for mid-stream SSE error events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    /// 400 `invalid_request_error`, optionally naming the offending parameter.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self { param: param.map(str::to_owned), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    /// 400 naming `param`, with code `invalid_value`.
    pub fn invalid_value(param: &str, message: impl Into<String>) -> Self {
        Self { code: Some("invalid_value"), ..Self::invalid(Some(param), message) }
    }

    /// 400 for a field we know but do not support (yet).
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self { code: Some("unsupported_parameter"), ..Self::invalid(Some(param), message) }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
        }
    }

    pub fn context_length(message: impl Into<String>) -> Self {
        Self { code: Some("context_length_exceeded"), ..Self::invalid(Some("messages"), message) }
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Incorrect or missing API key. Pass it as `Authorization: Bearer <key>`.",
            )
        }
    }

    pub fn not_found_route(path: &str) -> Self {
        Self {
            code: Some("not_found"),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("Unknown route: {path}"))
        }
    }

    pub fn method_not_allowed() -> Self {
        Self {
            code: Some("method_not_allowed"),
            ..Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "Method not allowed for this route.")
        }
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self {
            code: Some("payload_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("The request body exceeds the limit of {limit} bytes."),
            )
        }
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self {
            code: Some("unsupported_media_type"),
            ..Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                format!("Content-Type {content_type:?} is not supported; send `application/json`."),
            )
        }
    }

    pub fn body_timeout(after: std::time::Duration) -> Self {
        Self {
            code: Some("request_timeout"),
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!("The request body did not arrive within {} s.", after.as_secs()),
            )
        }
    }

    /// 503 at the shutdown deadline, for requests (or streams) still running.
    pub fn shutting_down() -> Self {
        Self {
            code: Some("server_shutting_down"),
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "The server is shutting down and ended this request; retry it.",
            )
        }
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(1),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
        }
    }

    pub fn not_ready() -> Self {
        Self {
            code: Some("model_loading"),
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "The model is still loading; retry shortly.",
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// Generic error for a status without a dedicated constructor.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = if status.is_server_error() { "server_error" } else { "invalid_request_error" };
        Self::new(status, kind, message)
    }

    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }

    /// The body as a JSON string (for SSE error events).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.body()).unwrap_or_else(|_| {
            String::from(r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#)
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.kind, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp =
            (self.status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], self.to_json())
                .into_response();
        if self.status == StatusCode::REQUEST_TIMEOUT {
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"wick\""));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Overloaded { .. } => ApiError::overloaded(e.to_string()),
            SubmitError::ContextLength { .. } => ApiError::context_length(e.to_string()),
            SubmitError::Invalid(m) => ApiError::invalid(None, m),
            SubmitError::Stopped => ApiError::internal("the engine has stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn envelope_has_openai_shape_and_string_code() {
        let resp = ApiError::model_not_found("gpt-9").into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("gpt-9")));
    }

    #[tokio::test]
    async fn overload_carries_retry_after() {
        let resp = ApiError::from(SubmitError::Overloaded { waiting: 3 }).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn context_length_maps_to_400_with_code() {
        let e =
            ApiError::from(SubmitError::ContextLength { max_context: 10, requested: 20, prompt: 15, completion: 5 });
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(e.message.contains("10") && e.message.contains("20"));
    }
}
