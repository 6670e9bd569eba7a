//! Router-level tests: real axum app and layers, a scripted engine (`fake.rs`) behind it.

mod fake;
mod generation;
mod registry;
mod responses;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::state::{AppState, Ready};
use fake::{Fake, Script};

pub(super) const MODEL: &str = "tiny";

pub(super) fn app_with(script: Script, keys: &[&str], cors: &[&str], ready: bool) -> (Router, Arc<Fake>) {
    let fake = Arc::new(Fake::new(script));
    let state = Arc::new(AppState::new(keys.iter().map(|s| s.to_string()).collect(), Duration::from_secs(5), 4096));
    if ready {
        state.set_ready(Ready {
            backend: fake.clone(),
            model_ids: vec![MODEL.into(), "alias".into()],
            created: 1,
            sampling: wick_engine::sampling::SamplingDefaults::default().resolved(),
            max_token_bytes: 4,
        });
    }
    let cors: Vec<String> = cors.iter().map(|s| s.to_string()).collect();
    (crate::app::router(state, &cors), fake)
}

pub(super) fn app(script: Script) -> (Router, Arc<Fake>) {
    app_with(script, &[], &[], true)
}

pub(super) async fn call(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

pub(super) fn post(path: &str, body: impl Into<String>) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.into())).expect("request")
}

pub(super) fn chat(extra: Value) -> String {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body.to_string()
}

pub(super) fn error_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    let e = v["error"].clone();
    assert!(e["message"].is_string() && e["type"].is_string(), "envelope: {body}");
    assert!(e["code"].is_string() || e["code"].is_null(), "code must be a string or null: {body}");
    e
}

/// The `data:` payloads of an SSE body, in order.
pub(super) fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_owned)).collect()
}

#[tokio::test]
async fn routing_errors_use_the_envelope() {
    let (app, _) = app(Script::Normal);
    let (s, _, b) = call(&app, Request::get("/v1/nope").body(Body::empty()).expect("req")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    error_of(&b);
    let (s, h, b) = call(&app, Request::get("/v1/chat/completions").body(Body::empty()).expect("req")).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(h.contains_key(header::ALLOW));
    error_of(&b);
    let (s, _, b) = call(&app, post("/v1/chat/completions", chat(json!({"user": "x".repeat(5000)})))).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    error_of(&b);
    let (s, _, b) = call(&app, post("/v1/chat/completions", "{not json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&b)["type"], "invalid_request_error");
}

#[tokio::test]
async fn missing_and_unknown_fields_are_named() {
    let (app, _) = app(Script::Normal);
    let (s, _, b) = call(&app, post("/v1/chat/completions", json!({"model": MODEL}).to_string())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&b)["param"], "messages");
    let (_, _, b) = call(&app, post("/v1/chat/completions", chat(json!({"temprature": 1})))).await;
    assert_eq!(error_of(&b)["param"], "temprature");
    let (_, _, b) = call(&app, post("/v1/chat/completions", chat(json!({"n": "two"})))).await;
    assert_eq!(error_of(&b)["param"], "n");
}

#[tokio::test]
async fn not_ready_answers_503_but_health_is_up() {
    let (app, _) = app_with(Script::Normal, &[], &[], false);
    let (s, h, b) = call(&app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key(header::RETRY_AFTER));
    error_of(&b);
    let (s, _, _) = call(&app, Request::get("/ready").body(Body::empty()).expect("req")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _, _) = call(&app, Request::get("/health").body(Body::empty()).expect("req")).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn api_keys_guard_the_api_but_not_health() {
    let (app, _) = app_with(Script::Normal, &["sk-1", "sk-2"], &[], true);
    let (s, _, b) = call(&app, Request::get("/v1/models").body(Body::empty()).expect("req")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&b)["code"], "invalid_api_key");
    let wrong =
        Request::get("/v1/models").header(header::AUTHORIZATION, "Bearer sk-3").body(Body::empty()).expect("req");
    assert_eq!(call(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
    let right =
        Request::get("/v1/models").header(header::AUTHORIZATION, "Bearer sk-2").body(Body::empty()).expect("req");
    assert_eq!(call(&app, right).await.0, StatusCode::OK);
    for open in ["/health", "/ready"] {
        assert_eq!(call(&app, Request::get(open).body(Body::empty()).expect("req")).await.0, StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn client_errors_map_to_openai_statuses() {
    let (app, _) = app(Script::Normal);
    let (s, _, b) = call(&app, post("/v1/chat/completions", chat(json!({"model": "gpt-4o"})))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&b)["code"], "model_not_found");
    let (s, _, b) = call(&app, post("/v1/chat/completions", chat(json!({"max_tokens": 60})))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&b)["code"], "context_length_exceeded");
    let (s, _, b) = call(&app, post("/v1/chat/completions", chat(json!({"tools": [{"type": "function"}]})))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&b)["param"], "tools[0].function");
    let (app, _) = app_with(Script::Overloaded, &[], &[], true);
    let (s, h, b) = call(&app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(h.contains_key(header::RETRY_AFTER));
    assert_eq!(error_of(&b)["type"], "rate_limit_error");
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_envelope_and_the_app_keeps_serving() {
    let (app, _) = app(Script::Normal);
    let (s, _, b) = call(&app, post("/v1/completions", json!({"model": MODEL, "prompt": "PANIC"}).to_string())).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    error_of(&b);
    let (s, _, _) = call(&app, post("/v1/completions", json!({"model": MODEL, "prompt": "ok"}).to_string())).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn request_id_is_generated_or_propagated() {
    let (app, _) = app(Script::Normal);
    let (_, h, _) = call(&app, Request::get("/health").body(Body::empty()).expect("req")).await;
    assert!(!h["x-request-id"].is_empty());
    let req = Request::get("/health").header("x-request-id", "abc-123").body(Body::empty()).expect("req");
    let (_, h, _) = call(&app, req).await;
    assert_eq!(h["x-request-id"], "abc-123");
}

#[tokio::test]
async fn cors_is_off_by_default_and_on_when_configured() {
    let preflight = || {
        Request::options("/v1/chat/completions")
            .header(header::ORIGIN, "http://example.com")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(Body::empty())
            .expect("req")
    };
    let (off, _) = app(Script::Normal);
    assert!(!call(&off, preflight()).await.1.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    let (on, _) = app_with(Script::Normal, &["k"], &["http://example.com"], true);
    let (s, h, _) = call(&on, preflight()).await;
    assert!(s.is_success(), "preflight must pass without a key");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://example.com");
}

#[tokio::test]
async fn models_tokenize_detokenize_and_metrics() {
    let (app, _) = app(Script::Normal);
    let (_, _, b) = call(&app, Request::get("/v1/models").body(Body::empty()).expect("req")).await;
    let v: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["kind"], "chat");
    assert_eq!(v["data"][0]["loaded"], true);
    assert_eq!(call(&app, Request::get("/v1/models/alias").body(Body::empty()).expect("req")).await.0, StatusCode::OK);
    assert_eq!(
        call(&app, Request::get("/v1/models/other").body(Body::empty()).expect("req")).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, _, b) = call(&app, post("/tokenize", json!({"prompt": "AB"}).to_string())).await;
    let v: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["tokens"], json!([65, 66]));
    assert_eq!(v["count"], 2);
    let (_, _, b) = call(&app, post("/detokenize", json!({"tokens": [65, 66]}).to_string())).await;
    assert_eq!(serde_json::from_str::<Value>(&b).expect("json")["prompt"], "AB");
    let (s, _, text) = call(&app, Request::get("/metrics").body(Body::empty()).expect("req")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains(r#"wick:num_requests_running{model_name="tiny"} 2"#), "{text}");
    assert!(text.contains(r#"wick:kv_cache_usage_perc{model_name="tiny"} 0.25"#), "{text}");
    assert!(text.contains(r#"wick:model_loaded{model_name="tiny",kind="chat"} 1"#), "{text}");
}
