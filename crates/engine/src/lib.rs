//! Wick's inference engine: model loading, the ragged batched forward over a paged KV cache,
//! the continuous-batching scheduler, sampling, and text handling (tokenizer, chat template,
//! incremental detokenization, stop strings). It knows nothing of HTTP.
//!
//! The public surface the server uses is [`Engine`] (start, submit, stats), [`GenerateRequest`],
//! [`SamplingParams`], [`Event`] and [`text::TextProcessor`]; for embedding models,
//! [`embed::Embedder`].

pub mod batch;
pub mod bench;
pub mod config;
pub mod embed;
pub mod engine;
pub mod error;
pub mod grammar;
pub mod kernel_level;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod perplexity;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod stats;
pub mod text;
pub mod thread_pool;

pub use batch::{ForwardBatch, SeqSlice};
pub use config::EngineConfig;
pub use engine::Engine;
pub use error::{EngineError, Result, SubmitError};
pub use loader::{load, LoadOptions, LoadedModel};
pub use model::{CausalLm, ModelConfig};
pub use request::{Event, FinishReason, GenerateRequest, SamplingParams, TokenLogprob, TopLogprob, Usage};
pub use stats::EngineStats;
