//! The chat page at `/`: served self-contained with a same-origin-only policy, or a 404
//! envelope with `--no-ui`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};

use super::fake::Script;
use super::{app, call, error_of};
use crate::state::AppState;

#[tokio::test]
async fn the_page_is_served_self_contained() {
    let (app, _) = app(Script::Normal);
    let (s, h, b) = call(&app, Request::get("/").body(Body::empty()).expect("req")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE].to_str().expect("ascii").starts_with("text/html"));
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
    assert!(csp.contains("connect-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
    assert!(b.contains("/v1/chat/completions"));
    // Nothing is loaded from elsewhere.
    for outside in ["http://", "https://", "<script src", "<link"] {
        let hits: Vec<&str> = b.lines().filter(|l| l.contains(outside) && !l.contains("(https?:")).collect();
        assert!(hits.is_empty(), "{outside}: {hits:?}");
    }
}

#[tokio::test]
async fn no_ui_makes_the_page_a_404_envelope() {
    let state = AppState::new(Vec::new(), Duration::from_secs(5), 4096).with_ui(false);
    let app = crate::app::router(Arc::new(state), &[]);
    let (s, _, b) = call(&app, Request::get("/").body(Body::empty()).expect("req")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    error_of(&b);
}
