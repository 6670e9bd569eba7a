//! The compute seam: [`Backend`] is every operation an architecture's forward pass uses —
//! linear layers, RMSNorm, RoPE, ragged paged attention, gated activations, residual adds,
//! embedding lookup, row gathers and softcaps — over buffers and weights whose types the
//! backend chooses. The decoder and the architecture files are written only against this
//! trait, so a second implementation (CUDA) is added beside [`cpu::CpuBackend`] without
//! editing them. Weights arrive as [`RawWeight`]s from the loaders and the backend turns them
//! into its own formats.
//!
//! Mixture-of-experts models add [`Backend::moe`] (routing, per-expert matmuls, the weighted
//! sum) over per-expert linear layers, and attention sinks ([`Backend::attention_with_sinks`]).

use candle_core::quantized::QTensor;
use candle_core::Tensor;

use crate::batch::ForwardBatch;
use crate::kv_cache::{AttnParams, KvLayout};
use crate::model::rope::RopeRows;
use crate::model::spec::{Activation, MoeSpec};
use crate::{EngineError, Result};

pub mod cpu;

/// A weight as read from a file: quantized or float GGUF data, a safetensors tensor, or MXFP4
/// blocks (which candle has no type for).
pub enum RawWeight {
    Quant(QTensor),
    Dense(Tensor),
    /// MXFP4 in ggml's block layout (`qmatmul::mxfp4`): the innermost dimension of `shape`
    /// (outermost first) is a multiple of 32, each 32 values one 17-byte block.
    Mxfp4 {
        shape: Vec<usize>,
        blocks: Vec<u8>,
    },
}

impl RawWeight {
    /// Shape, outermost first.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            RawWeight::Quant(q) => q.shape().dims().to_vec(),
            RawWeight::Dense(t) => t.dims().to_vec(),
            RawWeight::Mxfp4 { shape, .. } => shape.clone(),
        }
    }

    /// Expert `e` of a stacked `[experts, ...]` weight (its bytes copied as stored).
    pub fn expert(&self, e: usize) -> Result<RawWeight> {
        let dims = self.dims();
        let (&experts, inner) =
            dims.split_first().ok_or_else(|| EngineError::Load("expert weight of rank 0".into()))?;
        if e >= experts {
            return Err(EngineError::Load(format!("expert {e} of a weight with {experts}")));
        }
        let per: usize = inner.iter().product();
        Ok(match self {
            RawWeight::Dense(t) => RawWeight::Dense(t.get(e)?),
            RawWeight::Mxfp4 { blocks, .. } => {
                let bytes = per / 32 * crate::model::gguf::MXFP4_BLOCK_BYTES;
                RawWeight::Mxfp4 { shape: inner.to_vec(), blocks: blocks[e * bytes..(e + 1) * bytes].to_vec() }
            }
            RawWeight::Quant(q) => {
                let dtype = q.dtype();
                if !per.is_multiple_of(dtype.block_size()) {
                    return Err(EngineError::Load(format!("expert of {per} values in {dtype:?} blocks")));
                }
                let bytes = per / dtype.block_size() * dtype.type_size();
                let data = q.data()?;
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    &data[e * bytes..(e + 1) * bytes],
                    inner.to_vec(),
                    &candle_core::Device::Cpu,
                )?;
                RawWeight::Quant(q)
            }
        })
    }
}

/// The operations of a forward pass. Activations (`Act`) are `rows × width` matrices laid
/// out row-major; each method documents the widths it expects. Every operation must give
/// each row the same result whatever other rows share the step (batch invariance).
pub trait Backend: Send + Sync + Sized + 'static {
    /// An activation buffer, reused across layers and steps.
    type Act: Default + Send;
    type Linear: Send + Sync;
    type Norm: Send + Sync;
    type Embedding: Send + Sync;
    /// One learned logit per attention head (gpt-oss's sinks).
    type Sinks: Send + Sync;
    /// KV storage of every layer, addressed by the scheduler's block tables.
    type Kv: Send;

    // Loading.
    /// A linear layer whose output concatenates `parts`' outputs (each `[out_i, in]`), plus
    /// an optional bias per part (absent parts' biases are zero).
    fn linear(&self, parts: Vec<RawWeight>, biases: Vec<Option<RawWeight>>) -> Result<Self::Linear>;
    /// A mixture of experts' router `[experts, hidden]` with its bias: like [`Backend::linear`],
    /// but each row's logits must be the same bits whatever else is in the step (they choose
    /// the experts, so a rounding difference would change the whole output).
    fn router(&self, w: RawWeight, bias: Option<RawWeight>) -> Result<Self::Linear>;
    /// RMSNorm with weight `w + offset`.
    fn norm(&self, w: RawWeight, eps: f32, offset: f32) -> Result<Self::Norm>;
    /// Token embeddings `[vocab, hidden]`.
    fn embedding(&self, w: &RawWeight) -> Result<Self::Embedding>;
    /// Token embeddings that double as the output projection (tied): the embedding and the
    /// LM head from one weight. A backend that can read embedding rows from the LM head's
    /// matrix keeps one copy of the table instead of two.
    fn tied_embedding(&self, w: RawWeight) -> Result<(Self::Embedding, Self::Linear)> {
        Ok((self.embedding(&w)?, self.linear(vec![w], vec![None])?))
    }
    fn kv_cache(&self, layout: &KvLayout, num_blocks: usize, block_size: usize) -> Result<Self::Kv>;
    /// Attention sinks `[heads]`.
    fn sinks(&self, w: RawWeight) -> Result<Self::Sinks>;

    // Compute.
    /// Checks that the step's block tables fit the cache, before anything is written.
    fn validate(&self, kv: &Self::Kv, batch: &ForwardBatch) -> Result<()>;
    /// `out = embed[ids] * scale`, `[ids.len(), hidden]`.
    fn embed(&self, e: &Self::Embedding, ids: &[u32], scale: Option<f32>, out: &mut Self::Act) -> Result<()>;
    /// `out = x · Wᵀ (+ b)` for `rows` rows.
    fn matmul(&self, w: &Self::Linear, x: &Self::Act, rows: usize, out: &mut Self::Act) -> Result<()>;
    /// Normalizes every chunk of the norm's width in `x` (rows, or heads of rows) into `out`.
    fn rms_norm(&self, n: &Self::Norm, x: &Self::Act, out: &mut Self::Act);
    /// The same, in place.
    fn rms_norm_in_place(&self, n: &Self::Norm, x: &mut Self::Act);
    /// Splits `[rows, a + b + c]` into `[rows, a]`, `[rows, b]`, `[rows, c]`.
    fn split3(&self, x: &Self::Act, widths: [usize; 3], out: [&mut Self::Act; 3]);
    /// Rotates `x` (`[rows, heads, head_dim]`) by the step's cos/sin rows.
    fn rope(&self, x: &mut Self::Act, rows: &RopeRows, heads: usize, head_dim: usize);
    /// Writes this step's `k`/`v` (`[T, kv_heads * head_dim]`) of `layer` into the cache and
    /// attends: `q` is `[T, heads * head_dim]`, `out` becomes the same shape.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        batch: &ForwardBatch,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        num_heads: usize,
        params: AttnParams,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// [`Backend::attention`] with one extra logit per head in every softmax (`sinks`):
    /// `p_j = exp(s_j - m) / (Σ exp(s - m) + exp(sink_h - m))`.
    #[allow(clippy::too_many_arguments)]
    fn attention_with_sinks(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        batch: &ForwardBatch,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        num_heads: usize,
        params: AttnParams,
        sinks: &Self::Sinks,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// A mixture-of-experts feed-forward over `rows` rows of `x`: for each row, the
    /// `moe.top_k` experts of highest `router` logit (`[rows, num_experts]`, ties to the lower
    /// index) with weights softmax over those logits; `out` (`[rows, hidden]`) is
    /// `Σ w_e · down_e(act(gate_up_e(x)))` in the row's own order of experts. `experts[e]` is
    /// `(gate_up, down)`, gate/up laid out as [`Backend::gated`] expects. Rows are grouped by
    /// expert, so each active expert's weights are read once per step and inactive ones not
    /// at all.
    #[allow(clippy::too_many_arguments)]
    fn moe(
        &self,
        experts: &[(Self::Linear, Self::Linear)],
        moe: &MoeSpec,
        act: Activation,
        x: &Self::Act,
        router: &Self::Act,
        rows: usize,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `act(gate) * up` for rows laid out `[gate (n) | up (n)]`, into `[rows, n]`.
    fn gated(&self, act: Activation, gate_up: &Self::Act, n: usize, out: &mut Self::Act);
    /// `x += y`.
    fn add(&self, x: &mut Self::Act, y: &Self::Act);
    /// `out = x[rows]` for row width `width`.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize], width: usize, out: &mut Self::Act);
    /// `cap * tanh(x / cap)`.
    fn softcap(&self, x: &mut Self::Act, cap: f32);
    /// The buffer as an f32 `[rows, width]` tensor for sampling.
    fn to_tensor(&self, x: &Self::Act, rows: usize, width: usize) -> Result<Tensor>;
    /// The buffer's first `rows` rows of `width` into `out` on the host (replacing its
    /// contents, reusing its allocation).
    fn read_rows(&self, x: &Self::Act, rows: usize, width: usize, out: &mut Vec<f32>) -> Result<()>;
}
