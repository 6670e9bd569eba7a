//! API-key check, run before routing (so an unknown route without a key is a 401, not a 404
//! that lists what exists): `Authorization: Bearer <key>` must match one of the configured keys;
//! with no keys configured every request passes. [`PUBLIC`] paths (probes, metrics, the chat
//! page) are always open.
//!
//! Keys are kept as SHA-256 digests and compared digest to digest in constant time, over every
//! configured key, so neither the timing nor an early length mismatch tells a caller anything
//! about a key.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Paths served without a key: the orchestrator's probes, and the metrics (as vLLM's, so that
/// Prometheus and a Gateway API Inference Extension endpoint picker can scrape them), and the
/// chat page, which holds no data and asks for the key when the API answers 401.
pub const PUBLIC: &[&str] = &["/health", "/ready", "/metrics", "/"];

/// The SHA-256 digest of a key.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether `given` is one of the keys whose digests are `keys` (every key is compared).
pub fn matches(keys: &[[u8; 32]], given: &str) -> bool {
    let d = digest(given);
    keys.iter().fold(subtle::Choice::from(0), |acc, k| acc | k.ct_eq(&d)).into()
}

pub async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if state.api_key_digests.is_empty() || PUBLIC.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    if given.is_some_and(|g| matches(&state.api_key_digests, g)) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_only_the_same_key() {
        let keys = [digest("sk-one"), digest("sk-two")];
        assert!(matches(&keys, "sk-two"));
        assert!(!matches(&keys, "sk-tw"));
        assert!(!matches(&keys, "sk-twoo"));
        assert!(!matches(&keys, ""));
        assert!(!matches(&[], "sk-one"));
    }
}
