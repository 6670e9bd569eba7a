//! The model layer. An architecture file (`arch/*.rs`, one per architecture, found through
//! the registry in `arch`) reads a [`spec::ModelSpec`] from GGUF metadata or `config.json`;
//! the [`decoder::Decoder`] loads the weights that spec names from a [`source::TensorSource`]
//! and runs the ragged batched forward through a [`backend::Backend`] (today the host
//! [`backend::cpu::CpuBackend`]). [`CausalLm`] is what the engine sees.

use std::io::{Read, Seek};
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::Tensor;

use crate::batch::ForwardBatch;
use crate::kv_cache::{KvLayout, PagedKvCache};
use crate::{EngineError, Result};

pub mod arch;
pub mod backend;
pub mod decoder;
pub mod gguf;
pub mod rope;
pub mod source;
pub mod spec;

pub use backend::cpu::qmatmul;
pub use backend::cpu::weights::WeightOptions;

use backend::cpu::CpuBackend;
use decoder::Decoder;
pub use gguf::GgufFile;
use source::{GgufMeta, GgufSource, HfConfig, HfSource};
use spec::ModelSpec;

/// Hyperparameters the engine needs to size the cache and validate requests.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Registry name of the architecture.
    pub arch: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// The KV cache's groups of layers (full attention, sliding windows).
    pub kv_layout: KvLayout,
}

/// A decoder-only language model running a ragged batch over a paged KV cache.
pub trait CausalLm: Send {
    fn config(&self) -> &ModelConfig;

    /// Runs every token of `batch`, writing their K/V into `cache` at the slots given by each
    /// sequence's block tables, and returns f32 logits of shape `[batch.logits_rows.len(), vocab]`.
    fn forward(&self, batch: &ForwardBatch, cache: &mut PagedKvCache) -> Result<Tensor>;

    /// [`forward`](Self::forward) with the logits written row-major into `out`, replacing its
    /// contents: the engine's step loop reuses one buffer instead of a tensor per step.
    fn logits_into(&self, batch: &ForwardBatch, cache: &mut PagedKvCache, out: &mut Vec<f32>) -> Result<()> {
        *out = self.forward(batch, cache)?.flatten_all()?.to_vec1()?;
        Ok(())
    }

    /// Runs `batch` like [`forward`](Self::forward) but returns, instead of logits, the final
    /// hidden states (after the final norm, before the LM head) of `batch.logits_rows`, shape
    /// `[batch.logits_rows.len(), hidden]` (what decoder embedding models pool).
    fn hidden_states(&self, batch: &ForwardBatch, cache: &mut PagedKvCache) -> Result<Tensor> {
        let _ = (batch, cache);
        Err(EngineError::Unsupported(format!("the {} model gives no hidden states", self.config().arch)))
    }
}

impl CausalLm for Decoder<CpuBackend> {
    fn config(&self) -> &ModelConfig {
        Decoder::config(self)
    }

    fn forward(&self, batch: &ForwardBatch, cache: &mut PagedKvCache) -> Result<Tensor> {
        Decoder::forward(self, batch, cache)
    }

    fn logits_into(&self, batch: &ForwardBatch, cache: &mut PagedKvCache, out: &mut Vec<f32>) -> Result<()> {
        Decoder::logits_into(self, batch, cache, out)
    }

    fn hidden_states(&self, batch: &ForwardBatch, cache: &mut PagedKvCache) -> Result<Tensor> {
        Decoder::hidden_states(self, batch, cache)
    }
}

/// Bytes f32 copies of every linear weight would take (the optional f32-copy budget).
fn dense_bytes(spec: &ModelSpec) -> usize {
    let (h, hd) = (spec.hidden_size, spec.head_dim);
    let attn = h * (spec.num_heads + 2 * spec.num_kv_heads) * hd + spec.num_heads * hd * h;
    let mlp = match spec.moe {
        Some(m) => m.num_experts * (3 * h * m.expert_ff + h),
        None => 3 * h * spec.intermediate_size,
    };
    4 * (spec.num_layers() * (attn + mlp) + spec.vocab_size * h)
}

fn on_cpu(spec: ModelSpec, src: &mut impl source::TensorSource, opts: &WeightOptions) -> Result<Box<dyn CausalLm>> {
    let backend = CpuBackend::new(opts, dense_bytes(&spec));
    Ok(Box::new(Decoder::load(backend, spec, src)?))
}

/// The spec of a parsed GGUF file, by its `general.architecture`.
pub fn gguf_spec<R: Read + Seek>(content: &Content, reader: &mut R) -> Result<ModelSpec> {
    gguf_source_spec(&mut GgufSource { content, other: None, reader })
}

fn gguf_source_spec<R: Read + Seek>(src: &mut GgufSource<R>) -> Result<ModelSpec> {
    let meta = GgufMeta::new(src.content);
    let (_, from_gguf) = arch::by_gguf(&meta.arch)?;
    from_gguf(&meta, src)
}

/// Loads the network of a GGUF file (no tokenizer).
pub fn load_gguf_model(path: &Path, opts: &WeightOptions) -> Result<Box<dyn CausalLm>> {
    let (gguf, mut file) = source::open_gguf(path)?;
    load_gguf_file(&gguf, &mut file, opts).map_err(|e| e.in_file(path))
}

/// Builds the network from a GGUF header parsed by candle (tensors of the types candle
/// reads only: no MXFP4), by its `general.architecture`.
pub fn load_gguf_content<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    opts: &WeightOptions,
) -> Result<Box<dyn CausalLm>> {
    let mut src = GgufSource { content, other: None, reader };
    let spec = gguf_source_spec(&mut src)?;
    on_cpu(spec, &mut src, opts)
}

/// Builds the network from a GGUF header parsed by wick's reader (every tensor type wick
/// runs, MXFP4 included), by its `general.architecture`.
pub fn load_gguf_file<R: Read + Seek>(
    gguf: &GgufFile,
    reader: &mut R,
    opts: &WeightOptions,
) -> Result<Box<dyn CausalLm>> {
    let mut src = GgufSource { content: &gguf.content, other: Some(&gguf.other), reader };
    let spec = gguf_source_spec(&mut src)?;
    on_cpu(spec, &mut src, opts)
}

/// The spec of a Hugging Face folder, by its `config.json` `architectures`.
pub fn hf_spec(dir: &Path) -> Result<ModelSpec> {
    let cfg = source::read_hf_config(dir)?;
    (arch::by_hf(&cfg)?.from_hf)(&HfConfig(&cfg))
}

/// Loads the network of a Hugging Face folder (config.json + *.safetensors; no tokenizer).
pub fn load_safetensors_model(dir: &Path, opts: &WeightOptions) -> Result<Box<dyn CausalLm>> {
    let load = || on_cpu(hf_spec(dir)?, &mut HfSource::open(dir)?, opts);
    load().map_err(|e| e.in_file(dir))
}
