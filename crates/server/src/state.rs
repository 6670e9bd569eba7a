//! Shared state of the HTTP handlers: the models (see `registry`), and the HTTP settings the
//! handlers read.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::backend::Backend;
use crate::error::ApiError;
use crate::registry::{EmbedReady, Loaded, ModelKind, Registry};
use crate::responses::store::ResponseStore;

/// A loaded chat model as clients see it.
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

pub struct AppState {
    /// Every model served, loaded or not.
    pub models: Registry,
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
            models: Registry::default(),
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

    /// Adds a loaded chat model (the one model of a single-model server); a name already taken
    /// is ignored with a warning.
    pub fn set_ready(&self, ready: Ready) {
        let names = ready.model_ids.clone();
        if let Err(e) = self.models.add_loaded(names, Loaded::Chat(Arc::new(ready))) {
            tracing::warn!("{e}");
        }
    }

    /// The first chat model, or a 503 while it is still loading.
    pub fn ready(&self) -> Result<Arc<Ready>, ApiError> {
        self.models.primary_chat().ok_or_else(ApiError::not_ready)
    }

    /// The chat model called `model` (loaded on demand); 404 for an unknown name.
    pub async fn chat(&self, model: &str) -> Result<Arc<Ready>, ApiError> {
        match self.models.get(model, ModelKind::Chat).await? {
            Loaded::Chat(r) => Ok(r),
            Loaded::Embedding(_) => Err(ApiError::internal("the registry answered with the wrong kind of model")),
        }
    }

    /// The embedding model called `model` (loaded on demand); 404 for an unknown name.
    pub async fn embedding(&self, model: &str) -> Result<Arc<EmbedReady>, ApiError> {
        match self.models.get(model, ModelKind::Embedding).await? {
            Loaded::Embedding(e) => Ok(e),
            Loaded::Chat(_) => Err(ApiError::internal("the registry answered with the wrong kind of model")),
        }
    }
}
