//! The models one server serves, chat and embedding, by name: each configured model is a slot
//! that is loaded at startup (`preload`) or at its first request, unloaded after
//! `idle_unload_secs` without use, and evicted least-recently-used (idle ones only) when
//! loading another would go over the memory budget. A model that cannot fit is a 503 with
//! `Retry-After`, never an out-of-memory kill.
//!
//! Loads run one at a time (a gate), on the blocking pool; requests for a model that is
//! loading wait for it. "In use" is told from the handle's reference count (a handler holds
//! one for its request) and the engine's own queue, so a model is never taken away from
//! under a request; even then, an evicted engine lives on until its last stream ends.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wick_engine::embed::Embedder;

use crate::error::ApiError;
use crate::state::Ready;

/// What a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Embedding,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
        }
    }
}

/// A loaded embedding model.
pub struct EmbedReady {
    /// The served name (metrics label).
    pub name: String,
    pub embedder: Embedder,
    /// Whether the model was trained Matryoshka-style: its vectors may be truncated to fewer
    /// `dimensions` (then re-normalized). Otherwise only its own width is accepted.
    pub matryoshka: bool,
}

/// A loaded model.
#[derive(Clone)]
pub enum Loaded {
    Chat(Arc<Ready>),
    Embedding(Arc<EmbedReady>),
}

impl Loaded {
    pub fn kind(&self) -> ModelKind {
        match self {
            Loaded::Chat(_) => ModelKind::Chat,
            Loaded::Embedding(_) => ModelKind::Embedding,
        }
    }

    /// Longest input (chat: prompt + completion) in tokens.
    pub fn context_length(&self) -> usize {
        match self {
            Loaded::Chat(r) => r.backend.max_model_len(),
            Loaded::Embedding(e) => e.embedder.info().max_len,
        }
    }

    /// Whether a request holds it or its engine has work queued or running.
    fn busy(&self) -> bool {
        match self {
            Loaded::Chat(r) => {
                let s = r.backend.stats();
                Arc::strong_count(r) > 1 || s.running > 0 || s.waiting > 0
            }
            Loaded::Embedding(e) => Arc::strong_count(e) > 1 || e.embedder.stats().in_flight > 0,
        }
    }
}

/// Why a model could not be loaded.
pub type LoadError = Box<dyn std::error::Error + Send + Sync>;

/// Loads a model (blocking: file reads, maybe downloads).
pub type LoadFn = Box<dyn Fn() -> Result<Loaded, LoadError> + Send + Sync>;

/// A model as configured.
pub struct ModelEntry {
    /// Ids clients use: the first is the served name, the rest aliases.
    pub names: Vec<String>,
    pub kind: ModelKind,
    /// Loaded at startup; `/ready` waits for these.
    pub preload: bool,
    /// Unloaded after this long unused; none: kept.
    pub idle_unload: Option<Duration>,
    /// Memory it takes when loaded (weights, and the KV cache of a chat model), in bytes.
    pub bytes: u64,
    /// How to load it; none: it cannot be (re)loaded here (a model handed over loaded).
    pub load: Option<LoadFn>,
}

struct SlotState {
    loaded: Option<Loaded>,
    last_used: Instant,
    /// Context length of the last load, for listing while unloaded.
    context_length: Option<usize>,
}

struct Slot {
    entry: ModelEntry,
    state: Mutex<SlotState>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One model as `/v1/models` lists it.
#[derive(Debug, Clone)]
pub struct ModelView {
    pub names: Vec<String>,
    pub kind: ModelKind,
    pub loaded: bool,
    pub context_length: Option<usize>,
}

/// Every model of the server (see the module docs).
pub struct Registry {
    slots: Mutex<Vec<Arc<Slot>>>,
    budget_bytes: Mutex<Option<u64>>,
    gate: tokio::sync::Mutex<()>,
    /// Unix time the registry was made (the `created` of models not loaded).
    created: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            slots: Mutex::new(Vec::new()),
            budget_bytes: Mutex::new(None),
            gate: tokio::sync::Mutex::new(()),
            created: crate::openai::common::unix_now(),
        }
    }
}

const MIB: u64 = 1 << 20;

fn not_supported(name: &str, kind: ModelKind) -> ApiError {
    let route = match kind {
        ModelKind::Chat => "/v1/chat/completions or /v1/completions",
        ModelKind::Embedding => "/v1/embeddings",
    };
    let mut e = ApiError::invalid(
        Some("model"),
        format!("The model `{name}` is a {} model: use it with {route}.", kind.name()),
    );
    e.code = Some("model_not_supported");
    e
}

fn cannot_fit(message: String, retry_after: u64) -> ApiError {
    let mut e = ApiError::from_status(axum::http::StatusCode::SERVICE_UNAVAILABLE, message);
    e.kind = "service_unavailable";
    e.code = Some("model_cannot_fit");
    e.retry_after = Some(retry_after);
    e
}

impl Registry {
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Sets the memory budget (none: unlimited).
    pub fn set_budget_mb(&self, mb: Option<u64>) {
        *self.budget_bytes.lock().unwrap_or_else(|e| e.into_inner()) = mb.map(|m| m * MIB);
    }

    fn budget(&self) -> Option<u64> {
        *self.budget_bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds a model; its names must not be taken.
    pub fn add(&self, entry: ModelEntry) -> Result<(), String> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dup) = entry.names.iter().find(|n| slots.iter().any(|s| s.entry.names.contains(n))) {
            return Err(format!("the model name `{dup}` is used twice"));
        }
        if entry.names.is_empty() {
            return Err("a model needs a name".into());
        }
        let state = SlotState { loaded: None, last_used: Instant::now(), context_length: None };
        slots.push(Arc::new(Slot { entry, state: Mutex::new(state) }));
        Ok(())
    }

    /// Adds a model that is already loaded (and can never be loaded again if unloaded).
    pub fn add_loaded(&self, names: Vec<String>, loaded: Loaded) -> Result<(), String> {
        let kind = loaded.kind();
        let entry = ModelEntry { names: names.clone(), kind, preload: true, idle_unload: None, bytes: 0, load: None };
        self.add(entry)?;
        if let Some(slot) = self.find(&names[0]) {
            let mut st = slot.lock();
            st.context_length = Some(loaded.context_length());
            st.loaded = Some(loaded);
        }
        Ok(())
    }

    fn find(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots().into_iter().find(|s| s.entry.names.iter().any(|n| n == name))
    }

    /// Whether a request for `name` (of `kind`) would wait for the model to load (an
    /// on-demand model, or one unloaded since).
    pub fn needs_load(&self, name: &str, kind: ModelKind) -> bool {
        self.find(name).is_some_and(|s| {
            let st = s.lock();
            s.entry.kind == kind && st.loaded.is_none() && (!s.entry.preload || st.context_length.is_some())
        })
    }

    /// The model called `name`, of `kind`, loading it first when needed.
    /// While the server starts (no model configured yet), and for a `preload` model not yet
    /// loaded the first time, a 503 `model_loading` with `Retry-After`, as with one model.
    pub async fn get(&self, name: &str, kind: ModelKind) -> Result<Loaded, ApiError> {
        let Some(slot) = self.find(name) else {
            return Err(if self.slots().is_empty() { ApiError::not_ready() } else { ApiError::model_not_found(name) });
        };
        if slot.entry.kind != kind {
            return Err(not_supported(name, slot.entry.kind));
        }
        if let Some(l) = Self::touch(&slot) {
            return Ok(l);
        }
        if slot.entry.preload && slot.lock().context_length.is_none() {
            return Err(ApiError::not_ready());
        }
        let _gate = self.gate.lock().await;
        if let Some(l) = Self::touch(&slot) {
            return Ok(l);
        }
        self.make_room(&slot).await?;
        self.load(&slot).await
    }

    /// The loaded model of `slot`, marked used now.
    fn touch(slot: &Slot) -> Option<Loaded> {
        let mut st = slot.lock();
        st.last_used = Instant::now();
        st.loaded.clone()
    }

    /// Evicts idle models, least recently used first, until `slot`'s model fits the budget.
    async fn make_room(&self, slot: &Arc<Slot>) -> Result<(), ApiError> {
        let Some(budget) = self.budget() else { return Ok(()) };
        let name = &slot.entry.names[0];
        let need = slot.entry.bytes;
        if need > budget {
            return Err(cannot_fit(
                format!(
                    "The model `{name}` needs about {} MiB, more than this server's memory budget of {} MiB.",
                    need.div_ceil(MIB),
                    budget / MIB
                ),
                60,
            ));
        }
        loop {
            let slots = self.slots();
            let used: u64 = slots.iter().filter(|s| s.lock().loaded.is_some()).map(|s| s.entry.bytes).sum();
            if used + need <= budget {
                return Ok(());
            }
            let victim = slots
                .iter()
                .filter(|s| !Arc::ptr_eq(s, slot))
                .filter_map(|s| {
                    let st = s.lock();
                    let idle = st.loaded.as_ref().is_some_and(|l| !l.busy());
                    idle.then_some((st.last_used, s.clone()))
                })
                .min_by_key(|(t, _)| *t);
            let Some((_, victim)) = victim else {
                return Err(cannot_fit(
                    format!(
                        "The model `{name}` needs about {} MiB; the models in use hold {} of this server's {} MiB \
                         memory budget. Retry when they are idle.",
                        need.div_ceil(MIB),
                        used.div_ceil(MIB),
                        budget / MIB
                    ),
                    5,
                ));
            };
            tracing::info!(model = %victim.entry.names[0], for_model = %name, "evicting the least recently used idle model");
            Self::unload(&victim).await;
        }
    }

    async fn load(&self, slot: &Arc<Slot>) -> Result<Loaded, ApiError> {
        let name = slot.entry.names[0].clone();
        let Some(_) = &slot.entry.load else {
            return Err(ApiError::internal(format!("The model `{name}` was unloaded and cannot be loaded again.")));
        };
        tracing::info!(model = %name, kind = slot.entry.kind.name(), "loading model");
        let started = Instant::now();
        let s = slot.clone();
        let result = tokio::task::spawn_blocking(move || match &s.entry.load {
            Some(load) => load(),
            None => Err("no loader".into()),
        })
        .await;
        let loaded = match result {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::error!(model = %name, "loading failed: {e}");
                return Err(ApiError::internal(format!("The model `{name}` could not be loaded: {e}")));
            }
            Err(e) => return Err(ApiError::internal(format!("Loading the model `{name}` panicked: {e}"))),
        };
        // Loading allocates and frees the file's tensors and their repacked copies; give the
        // freed heap back so the resident size is the model's, not the load's peak.
        crate::cpu::trim_heap();
        tracing::info!(model = %name, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
        let mut st = slot.lock();
        st.context_length = Some(loaded.context_length());
        st.last_used = Instant::now();
        st.loaded = Some(loaded.clone());
        Ok(loaded)
    }

    /// Takes `slot`'s model out and drops it off the async threads (an engine joins its thread).
    async fn unload(slot: &Arc<Slot>) {
        let taken = slot.lock().loaded.take();
        if let Some(l) = taken {
            let _ = tokio::task::spawn_blocking(move || drop(l)).await;
        }
    }

    /// Loads every `preload` model (in order); the first failure is returned.
    pub async fn preload(&self) -> Result<(), String> {
        for slot in self.slots().into_iter().filter(|s| s.entry.preload) {
            let name = slot.entry.names[0].clone();
            let _gate = self.gate.lock().await;
            if slot.lock().loaded.is_some() {
                continue;
            }
            self.make_room(&slot).await.map_err(|e| format!("{name}: {}", e.message))?;
            self.load(&slot).await.map_err(|e| e.message)?;
        }
        Ok(())
    }

    /// Unloads the models idle for longer than their `idle_unload`.
    pub async fn sweep(&self) {
        for slot in self.slots() {
            let Some(limit) = slot.entry.idle_unload else { continue };
            let expired = {
                let mut st = slot.lock();
                match &st.loaded {
                    Some(l) if l.busy() => {
                        // In use: idle time counts from the end of the use.
                        st.last_used = Instant::now();
                        false
                    }
                    Some(_) => st.last_used.elapsed() >= limit,
                    None => false,
                }
            };
            if expired {
                let _gate = self.gate.lock().await;
                tracing::info!(model = %slot.entry.names[0], idle_secs = limit.as_secs(), "unloading idle model");
                Self::unload(&slot).await;
            }
        }
    }

    /// Every model, in configuration order.
    pub fn list(&self) -> Vec<ModelView> {
        self.slots()
            .iter()
            .map(|s| {
                let st = s.lock();
                ModelView {
                    names: s.entry.names.clone(),
                    kind: s.entry.kind,
                    loaded: st.loaded.is_some(),
                    context_length: st.loaded.as_ref().map(Loaded::context_length).or(st.context_length),
                }
            })
            .collect()
    }

    /// The loaded models with their served names.
    pub fn loaded(&self) -> Vec<(String, Loaded)> {
        self.slots().iter().filter_map(|s| s.lock().loaded.clone().map(|l| (s.entry.names[0].clone(), l))).collect()
    }

    /// The first chat model, if loaded (the server's default model).
    pub fn primary_chat(&self) -> Option<Arc<Ready>> {
        let slot = self.slots().into_iter().find(|s| s.entry.kind == ModelKind::Chat)?;
        let st = slot.lock();
        match &st.loaded {
            Some(Loaded::Chat(r)) => Some(r.clone()),
            _ => None,
        }
    }

    /// Whether every `preload` model has been loaded and, while loaded, runs (and there is at
    /// least one model). One unloaded since (idle, or evicted) loads again at its next request.
    pub fn ready(&self) -> Result<(), String> {
        let slots = self.slots();
        if slots.is_empty() {
            return Err("no model is loaded yet".into());
        }
        for s in slots.iter().filter(|s| s.entry.preload) {
            let st = s.lock();
            let running = match &st.loaded {
                None if st.context_length.is_some() => true,
                None => return Err(format!("the model `{}` is still loading", s.entry.names[0])),
                Some(Loaded::Chat(r)) => r.backend.is_running(),
                Some(Loaded::Embedding(e)) => e.embedder.is_running(),
            };
            if !running {
                return Err(format!("the engine thread of `{}` is not running", s.entry.names[0]));
            }
        }
        Ok(())
    }
}
