//! The compute seam: [`Backend`] is every operation an architecture's forward pass uses —
//! linear layers, RMSNorm, RoPE, ragged paged attention, gated activations, residual adds,
//! embedding lookup, row gathers and softcaps — over buffers and weights whose types the
//! backend chooses. The decoder and the architecture files are written only against this
//! trait, so a second implementation (CUDA) is added beside [`cpu::CpuBackend`] without
//! editing them. Weights arrive as [`RawWeight`]s from the loaders and the backend turns them
//! into its own formats.

use candle_core::quantized::QTensor;
use candle_core::Tensor;

use crate::batch::ForwardBatch;
use crate::kv_cache::{AttnParams, KvLayout};
use crate::model::rope::RopeRows;
use crate::model::spec::Activation;
use crate::Result;

pub mod cpu;

/// A weight as read from a file: quantized or float GGUF data, or a safetensors tensor.
pub enum RawWeight {
    Quant(QTensor),
    Dense(Tensor),
}

impl RawWeight {
    /// Shape, outermost first.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            RawWeight::Quant(q) => q.shape().dims().to_vec(),
            RawWeight::Dense(t) => t.dims().to_vec(),
        }
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
    /// KV storage of every layer, addressed by the scheduler's block tables.
    type Kv: Send;

    // Loading.
    /// A linear layer whose output concatenates `parts`' outputs (each `[out_i, in]`), plus
    /// an optional bias per part (absent parts' biases are zero).
    fn linear(&self, parts: Vec<RawWeight>, biases: Vec<Option<RawWeight>>) -> Result<Self::Linear>;
    /// RMSNorm with weight `w + offset`.
    fn norm(&self, w: RawWeight, eps: f32, offset: f32) -> Result<Self::Norm>;
    /// Token embeddings `[vocab, hidden]`.
    fn embedding(&self, w: &RawWeight) -> Result<Self::Embedding>;
    fn kv_cache(&self, layout: &KvLayout, num_blocks: usize, block_size: usize) -> Result<Self::Kv>;

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
}
