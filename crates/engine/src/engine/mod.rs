//! The engine handle: [`Engine::start`] spawns the engine thread (which owns model, KV cache and
//! scheduler, see `worker`), [`Engine::submit`] validates a request and hands it over through a
//! bounded channel, and [`Engine::stats`] reads the counters the thread publishes.
//!
//! No tokio runtime lives here: the thread is a plain `std::thread`, and the only tokio piece is
//! the per-request unbounded event channel, whose receiver the caller may await. Dropping that
//! receiver cancels the request wherever it is (queued, prefilling or decoding).

mod output;
mod worker;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::grammar::{CompiledGrammar, GrammarCompiler, GrammarError, GrammarSpec, Trigger};
use crate::kv_cache::{KvDtype, PagedKvCache};
use crate::model::{CausalLm, ModelConfig};
use crate::request::{Event, GenerateRequest};
use crate::stats::StatsCell;
use crate::text::TextProcessor;
use crate::{EngineConfig, EngineError, EngineStats, Result, SubmitError};

/// A request on its way to the engine thread, with the sender of its events.
pub(crate) struct Submission {
    pub req: GenerateRequest,
    pub events: UnboundedSender<Event>,
}

/// State shared between the handle and the engine thread (atomics only).
pub(crate) struct Shared {
    pub stats: StatsCell,
    /// Requests submitted but not yet taken by the engine thread.
    pub queued: AtomicUsize,
    pub alive: AtomicBool,
    pub shutdown: AtomicBool,
}

/// Allocates the KV storage (K/V rows as `dtype`) of `num_blocks` pages of `block_size` tokens for `model`, shaped by
/// its `kv_layout`. The one place that constructs a [`PagedKvCache`] (the engine and perplexity
/// use it).
pub fn new_kv_cache(model: &ModelConfig, dtype: KvDtype, num_blocks: usize, block_size: usize) -> Result<PagedKvCache> {
    let layout = &model.kv_layout.clone().with_dtype(dtype);
    if layout.num_layers() != model.num_layers
        || layout.num_kv_heads != model.num_kv_heads
        || layout.head_dim != model.head_dim
    {
        return Err(EngineError::InvalidRequest(format!(
            "KV layout of {} layers x {} kv heads x {} dims does not match the model's {} x {} x {}",
            layout.num_layers(),
            layout.num_kv_heads,
            layout.head_dim,
            model.num_layers,
            model.num_kv_heads,
            model.head_dim
        )));
    }
    Ok(PagedKvCache::new(layout, num_blocks, block_size))
}

/// Sequence length at which the startup log quotes KV bytes per token.
const KV_LOG_TOKENS: usize = 4096;

/// Handle to the engine thread. Cheap to share behind an `Arc`; dropping it stops the thread.
pub struct Engine {
    tx: Option<SyncSender<Submission>>,
    shared: Arc<Shared>,
    text: Arc<TextProcessor>,
    model_config: ModelConfig,
    max_model_len: usize,
    /// Pages in the KV cache: no single choice may need more at once.
    num_blocks: usize,
    block_size: usize,
    /// Largest prefill chunk (the step budget), which bounds a sliding group's pages.
    max_chunk: usize,
    max_waiting: usize,
    /// Built on first use (a token trie over the vocabulary): servers that never see a
    /// grammar never pay for it.
    grammar: OnceLock<std::result::Result<GrammarCompiler, GrammarError>>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Allocates the KV cache and spawns the engine thread.
    pub fn start(model: Box<dyn CausalLm>, text: Arc<TextProcessor>, cfg: EngineConfig) -> Result<Self> {
        let model_config = model.config().clone();
        let num_blocks = cfg.num_kv_blocks(&model_config);
        if num_blocks == 0 || cfg.block_size == 0 {
            return Err(EngineError::InvalidRequest("the KV cache must hold at least one block".into()));
        }
        if cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens == 0 || cfg.max_waiting == 0 {
            return Err(EngineError::InvalidRequest(
                "max_num_seqs, max_num_batched_tokens and max_waiting must be positive".into(),
            ));
        }
        let max_model_len = cfg.effective_max_model_len(&model_config);
        let cache = new_kv_cache(&model_config, cfg.kv_cache_dtype, num_blocks, cfg.block_size)?;
        let layout = &cache.layout().clone();
        let full = crate::kv_cache::KvLayout::uniform(layout.num_layers(), layout.num_kv_heads, layout.head_dim)
            .with_dtype(layout.dtype);
        tracing::info!(
            "KV cache ({}, prefix caching {}): {}; {num_blocks} pages of {} tokens ({} KiB each, {} MiB in all); \
             {:.0} KV bytes per token for a {KV_LOG_TOKENS}-token sequence ({:.0} if every layer kept it all)",
            layout.dtype,
            if cfg.enable_prefix_caching { "on" } else { "off" },
            layout.describe(),
            cfg.block_size,
            layout.bytes_per_block(cfg.block_size) / 1024,
            cache.storage_bytes() >> 20,
            layout.kv_bytes_per_token(KV_LOG_TOKENS, cfg.block_size),
            full.kv_bytes_per_token(KV_LOG_TOKENS, cfg.block_size),
        );
        let shared = Arc::new(Shared {
            stats: StatsCell::default(),
            queued: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
            shutdown: AtomicBool::new(false),
        });
        shared.stats.kv_blocks_total.store(num_blocks as u64, Ordering::Relaxed);
        let (tx, rx) = sync_channel(cfg.max_waiting);
        let worker =
            worker::Worker::new(model, cache, text.clone(), &cfg, num_blocks, max_model_len, rx, shared.clone());
        let thread = std::thread::Builder::new().name("wick-engine".into()).spawn(move || worker.run())?;
        Ok(Self {
            tx: Some(tx),
            shared,
            text,
            model_config,
            max_model_len,
            num_blocks,
            block_size: cfg.block_size,
            max_chunk: cfg.max_num_batched_tokens,
            max_waiting: cfg.max_waiting,
            grammar: OnceLock::new(),
            thread: Some(thread),
        })
    }

    /// Queues a request and returns its event stream. Dropping the receiver cancels it.
    pub fn submit(&self, req: GenerateRequest) -> std::result::Result<UnboundedReceiver<Event>, SubmitError> {
        let tx = match &self.tx {
            Some(tx) if self.is_running() => tx,
            _ => return Err(SubmitError::Stopped),
        };
        self.validate(&req)?;
        let waiting =
            self.shared.queued.load(Ordering::Relaxed) + self.shared.stats.waiting.load(Ordering::Relaxed) as usize;
        if waiting >= self.max_waiting {
            return Err(SubmitError::Overloaded { waiting });
        }
        let (events, rx) = unbounded_channel();
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(Submission { req, events }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Overloaded { waiting },
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    fn validate(&self, req: &GenerateRequest) -> std::result::Result<(), SubmitError> {
        if req.n == 0 {
            return Err(SubmitError::Invalid("n must be at least 1".into()));
        }
        if req.prompt_ids.is_empty() {
            return Err(SubmitError::Invalid("the prompt must contain at least one token".into()));
        }
        if req.params.max_tokens == 0 {
            return Err(SubmitError::Invalid("max_tokens must be at least 1".into()));
        }
        let vocab = self.model_config.vocab_size;
        if let Some(bad) = req.prompt_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(SubmitError::Invalid(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let prompt = req.prompt_ids.len();
        let completion = req.params.max_tokens;
        let requested = prompt.saturating_add(completion);
        if requested > self.max_model_len {
            return Err(SubmitError::ContextLength { max_context: self.max_model_len, requested, prompt, completion });
        }
        let pages = self.model_config.kv_layout.peak_blocks(requested, self.max_chunk, self.block_size);
        if pages > self.num_blocks {
            return Err(SubmitError::Invalid(format!(
                "the request needs {requested} tokens of KV cache ({pages} pages of {} tokens over its KV-cache \
                 groups) but the whole cache holds {} pages",
                self.block_size, self.num_blocks
            )));
        }
        Ok(())
    }

    /// Compiles a grammar for this model (see [`crate::grammar`]); invalid grammars fail here,
    /// before anything is queued.
    pub fn compile_grammar(
        &self,
        spec: &GrammarSpec,
        trigger: Option<Trigger>,
    ) -> std::result::Result<Arc<CompiledGrammar>, GrammarError> {
        let compiler = self.grammar.get_or_init(|| {
            let started = std::time::Instant::now();
            let c = GrammarCompiler::new(&self.text);
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, ok = c.is_ok(), "grammar compiler built");
            c
        });
        compiler.as_ref().map_err(Clone::clone)?.compile(spec, trigger)
    }

    pub fn stats(&self) -> EngineStats {
        self.shared.stats.snapshot()
    }

    pub fn text(&self) -> &Arc<TextProcessor> {
        &self.text
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.model_config
    }

    /// Longest prompt + completion a request may ask for.
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// Whether the engine thread is alive.
    pub fn is_running(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }
}

impl Drop for Engine {
    /// Stops the thread: requests in flight end without a `Done` (their channels close).
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
