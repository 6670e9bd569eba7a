//! Shared state of the HTTP handlers: the engine once it is ready, served model ids, and the
//! HTTP settings the handlers read.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::backend::Backend;
use crate::error::ApiError;
use crate::responses::store::ResponseStore;

/// The loaded model as clients see it.
pub struct Ready {
    pub backend: Arc<dyn Backend>,
    /// Ids clients may use; the first is the one listed.
    pub model_ids: Vec<String>,
    pub created: u64,
    /// Sampling defaults in force (request > model > `[sampling]` > OpenAI), all set.
    pub sampling: wick_engine::sampling::SamplingDefaults,
    /// The longest token in bytes (`validate::longest_token`), to refuse oversized text early.
    pub max_token_bytes: usize,
}

impl Ready {
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if self.model_ids.iter().any(|m| m == model) {
            Ok(())
        } else {
            Err(ApiError::model_not_found(model))
        }
    }
}

pub struct AppState {
    ready: OnceLock<Ready>,
    /// SHA-256 digests of the accepted API keys (see `auth`); empty: no authentication.
    pub api_key_digests: Vec<[u8; 32]>,
    pub sse_keep_alive: Duration,
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive, from the end of its headers (a 408 after).
    pub body_read_timeout: Duration,
    /// Bounds the CPU-heavy request work (templates, tokenization) running at once.
    pub cpu: crate::cpu::CpuPool,
    pub metrics: PrometheusHandle,
    /// Where `/v1/responses` keeps responses (none: storing is off).
    pub response_store: Option<Arc<dyn ResponseStore>>,
    /// Whether `/` serves the chat page.
    pub ui: bool,
}

impl AppState {
    pub fn new(api_keys: Vec<String>, sse_keep_alive: Duration, max_body_bytes: usize) -> Self {
        Self {
            ready: OnceLock::new(),
            api_key_digests: api_keys.iter().map(|k| crate::auth::digest(k)).collect(),
            sse_keep_alive,
            max_body_bytes,
            body_read_timeout: Duration::from_secs(60),
            cpu: crate::cpu::CpuPool::new(2),
            metrics: crate::metrics::install(),
            response_store: None,
            ui: true,
        }
    }

    pub fn with_response_store(mut self, store: Option<Arc<dyn ResponseStore>>) -> Self {
        self.response_store = store;
        self
    }

    pub fn with_ui(mut self, ui: bool) -> Self {
        self.ui = ui;
        self
    }

    /// Marks the model loaded; later calls are ignored.
    pub fn set_ready(&self, ready: Ready) {
        let _ = self.ready.set(ready);
    }

    /// The loaded model, or a 503 while it is still loading.
    pub fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready.get().ok_or_else(ApiError::not_ready)
    }
}
