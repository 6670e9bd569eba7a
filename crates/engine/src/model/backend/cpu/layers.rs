//! The CPU backend's layers: `Linear` (quantized or dense weights; Q8_0, Q4_1, Q5_0, Q5_1, Q4_K,
//! Q5_K, Q6_K, MXFP4, F16 and BF16 on wick's batch-invariant kernels) and `RmsNorm` on host rows.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};

use super::qmatmul::{
    FloatMatrix, Mxfp4Matrix, Q41Matrix, Q4KMatrix, Q50Matrix, Q51Matrix, Q5KMatrix, Q6KMatrix, Q8Matrix, TileKernel,
};
use crate::Result;

/// A linear layer `y = x · Wᵀ` over `[T, in]` activations.
#[derive(Debug, Clone)]
pub enum Linear {
    /// f32 weights `[out, in]`.
    Dense(Tensor),
    /// f32 weights `[out, in]` run one row at a time, so a row's result never depends on the
    /// step (candle's f32 matmul rounds by the shape of the batch): small layers whose output
    /// takes decisions, such as a mixture of experts' router.
    DenseRows(Tensor),
    /// Quantized weights; `dense` is an optional f32 copy used when a step has at least
    /// `dense_min_tokens` rows. The copy makes a row's result depend on how many rows share
    /// the step (two different kernels), so it is off by default (`WeightOptions`).
    Quant { q: QuantWeight, dense: Option<Tensor>, dense_min_tokens: usize },
}

/// A quantized weight and the kernel that runs it. Each computes every row on its own, so a
/// sequence's results do not depend on what else is in the batch.
#[derive(Debug, Clone)]
pub enum QuantWeight {
    /// Q8_0 on wick's register-blocked kernel (weights read once for several rows).
    Q8(Q8Matrix),
    /// Q4_1 on wick's register-blocked kernel, kept at 4 bits.
    Q41(Q41Matrix),
    /// MXFP4 (gpt-oss's experts) on wick's register-blocked kernel, kept as stored.
    Mxfp4(Mxfp4Matrix),
    /// Q5_0 on wick's panel kernels, kept at 5 bits.
    Q50(Q50Matrix),
    /// Q5_1 on wick's panel kernels, kept at 5 bits.
    Q51(Q51Matrix),
    /// Q4_K on wick's register-blocked kernel, kept at its stored size.
    Q4K(Q4KMatrix),
    /// Q5_K on wick's register-blocked kernel, kept at its stored size.
    Q5K(Q5KMatrix),
    /// Q6_K on wick's register-blocked kernel, kept at its stored size.
    Q6K(Q6KMatrix),
    /// F16 or BF16 on wick's register-blocked kernel, kept at 16 bits (f32 activations and
    /// accumulation).
    Half(FloatMatrix),
    /// Other types (Q2_K, Q3_K; the K-quants in the oracle setting) on candle's
    /// `QMatMul`. Its repacked kernels tile several rows together and round a row differently
    /// by its place in the tile, so `forward_host` runs them one row at a time: slower
    /// prefill, but each row's bits independent of the step.
    Candle(QMatMul),
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dim(0)?;
        Ok(match self {
            Linear::Dense(w) | Linear::DenseRows(w) => x.matmul(&w.t()?)?,
            Linear::Quant { dense: Some(w), dense_min_tokens, .. } if rows >= *dense_min_tokens => x.matmul(&w.t()?)?,
            Linear::Quant { q: QuantWeight::Q8(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Q41(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Mxfp4(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Q50(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Q51(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Q4K(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Q5K(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Q6K(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Half(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Candle(q), .. } => q.forward(x)?,
        })
    }

    /// `x · Wᵀ` on host rows: `x` is `[rows, in]`; `out` is resized to `[rows, out]`. wick's
    /// kernels write straight into `out`; other weights go through a tensor.
    pub fn forward_host(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<()> {
        if let Some(w) = self.kernel_for(rows) {
            out.resize(rows * w.dims().0, 0.0);
            w.matmul(x, out);
            return Ok(());
        }
        let k = x.len() / rows.max(1);
        let one_row =
            matches!(self, Linear::Quant { q: QuantWeight::Candle(_), dense: None, .. } | Linear::DenseRows(_));
        out.clear();
        let step = if one_row { 1 } else { rows.max(1) };
        for chunk in x.chunks(step * k.max(1)) {
            let t = Tensor::from_slice(chunk, (chunk.len() / k.max(1), k), &Device::Cpu)?;
            out.extend(self.forward(&t)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    }

    /// The wick kernel a step of `rows` rows runs this weight on, if any.
    pub fn kernel_for(&self, rows: usize) -> Option<&dyn TileKernel> {
        match self {
            Linear::Quant { q, dense, dense_min_tokens } => {
                q.wick_kernel().filter(|_| dense.is_none() || rows < *dense_min_tokens)
            }
            _ => None,
        }
    }
}

impl QuantWeight {
    /// The wick kernel this weight runs on, if any.
    fn wick_kernel(&self) -> Option<&dyn TileKernel> {
        match self {
            QuantWeight::Q8(w) => Some(w),
            QuantWeight::Q41(w) => Some(w),
            QuantWeight::Mxfp4(w) => Some(w),
            QuantWeight::Q50(w) => Some(w),
            QuantWeight::Q51(w) => Some(w),
            QuantWeight::Q4K(w) => Some(w),
            QuantWeight::Q5K(w) => Some(w),
            QuantWeight::Q6K(w) => Some(w),
            QuantWeight::Half(w) => Some(w),
            QuantWeight::Candle(_) => None,
        }
    }
}

/// Root-mean-square normalization with a learned scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: &Tensor, eps: f32) -> Result<Self> {
        Ok(Self { weight: weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?, eps })
    }

    /// Normalizes each row of `x` (`[rows, dim]`) into `out` (resized to match), on the
    /// calling thread: `x / sqrt(mean(x²) + eps) · weight`, as candle's `rms_norm`.
    pub fn forward_rows(&self, x: &[f32], out: &mut Vec<f32>) {
        let dim = self.weight.len();
        out.resize(x.len(), 0.0);
        for (src, dst) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            // Eight partial sums in a fixed order: vectorizes, and each row gets the same bits
            // whatever else is in the step.
            let mut acc = [0f32; 8];
            let chunks = src.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
            for c in chunks {
                for (a, v) in acc.iter_mut().zip(c) {
                    *a += v * v;
                }
            }
            let sum2 = acc.iter().sum::<f32>() + tail;
            let m = (sum2 / dim as f32 + self.eps).sqrt();
            for ((d, s), w) in dst.iter_mut().zip(src).zip(&self.weight) {
                *d = *s / m * *w;
            }
        }
    }
}
