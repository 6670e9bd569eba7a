//! Building blocks shared by the architectures: `Linear` (quantized or dense weights; Q8_0 and
//! Q4_1 on wick's batch-invariant kernels), `RmsNorm`, rotary position tables applied with per-token
//! positions (`Rope`), and the SwiGLU activation.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};

use crate::model::qmatmul::{Q41Matrix, Q8Matrix, TileKernel};
use crate::{EngineError, Result};

/// A linear layer `y = x · Wᵀ` over `[T, in]` activations.
#[derive(Debug, Clone)]
pub enum Linear {
    /// f32 weights `[out, in]`.
    Dense(Tensor),
    /// Quantized weights; `dense` is an optional f32 copy used when a step has at least
    /// `dense_min_tokens` rows. The copy makes a row's result depend on how many rows share
    /// the step (two different kernels), so it is off by default (`WeightOptions`).
    Quant { q: QuantWeight, dense: Option<Tensor>, dense_min_tokens: usize },
}

/// A quantized weight and the kernel that runs it. Both compute each row on its own, so a
/// sequence's results do not depend on what else is in the batch.
#[derive(Debug, Clone)]
pub enum QuantWeight {
    /// Q8_0 on wick's register-blocked kernel (weights read once for several rows).
    Q8(Q8Matrix),
    /// Q4_1 on wick's register-blocked kernel, kept at 4 bits.
    Q41(Q41Matrix),
    /// Other types on candle's `QMatMul` (one gemv per row).
    Candle(QMatMul),
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dim(0)?;
        Ok(match self {
            Linear::Dense(w) => x.matmul(&w.t()?)?,
            Linear::Quant { dense: Some(w), dense_min_tokens, .. } if rows >= *dense_min_tokens => x.matmul(&w.t()?)?,
            Linear::Quant { q: QuantWeight::Q8(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Q41(w), .. } => w.forward(x)?,
            Linear::Quant { q: QuantWeight::Candle(q), .. } => q.forward(x)?,
        })
    }

    /// `x · Wᵀ` on host rows: `x` is `[rows, in]`; `out` is resized to `[rows, out]`. wick's
    /// kernels write straight into `out`; other weights go through a tensor.
    pub fn forward_host(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<()> {
        if let Linear::Quant { q, dense, dense_min_tokens } = self {
            if let Some(w) = q.wick_kernel().filter(|_| dense.is_none() || rows < *dense_min_tokens) {
                out.resize(rows * w.dims().0, 0.0);
                w.matmul(x, out);
                return Ok(());
            }
        }
        let t = Tensor::from_slice(x, (rows, x.len() / rows.max(1)), &Device::Cpu)?;
        let y = self.forward(&t)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        out.clear();
        out.extend_from_slice(&y);
        Ok(())
    }
}

impl QuantWeight {
    /// The wick kernel this weight runs on, if any.
    fn wick_kernel(&self) -> Option<&dyn TileKernel> {
        match self {
            QuantWeight::Q8(w) => Some(w),
            QuantWeight::Q41(w) => Some(w),
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

/// Rotary position embedding tables, computed once per model for every position up to the
/// context length, applied in place to host `[T, heads, head_dim]` buffers with each token's
/// own position.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `[max_positions, rot_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    max_positions: usize,
    /// GGUF llama convention: rotate pairs `(2i, 2i+1)`. Otherwise NeoX/HF: `(i, i + rot/2)`.
    interleaved: bool,
}

impl Rope {
    /// `inv_freq` has `rot_dim / 2` entries (`1 / theta^(2i/rot_dim)`, possibly rescaled).
    pub fn new(inv_freq: &[f32], max_positions: usize, interleaved: bool) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self { cos, sin, half, max_positions, interleaved }
    }

    /// The standard inverse frequencies `1 / theta^(i / rot_dim)` for even `i`.
    pub fn default_inv_freq(rot_dim: usize, theta: f32) -> Vec<f32> {
        (0..rot_dim).step_by(2).map(|i| 1f32 / theta.powf(i as f32 / rot_dim as f32)).collect()
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Rotates the first `rot_dim` features of every head of every token of `x`
    /// (`[positions.len(), heads, head_dim]`).
    pub fn apply(&self, x: &mut [f32], positions: &[u32], heads: usize, head_dim: usize) -> Result<()> {
        let half = self.half;
        for (t, &pos) in positions.iter().enumerate() {
            let pos = pos as usize;
            if pos >= self.max_positions {
                return Err(EngineError::InvalidRequest(format!(
                    "position {pos} is beyond the model's context of {}",
                    self.max_positions
                )));
            }
            let cos = &self.cos[pos * half..(pos + 1) * half];
            let sin = &self.sin[pos * half..(pos + 1) * half];
            for h in 0..heads {
                let v = &mut x[(t * heads + h) * head_dim..(t * heads + h + 1) * head_dim];
                if self.interleaved {
                    for i in 0..half {
                        let (a, b) = (v[2 * i], v[2 * i + 1]);
                        v[2 * i] = a * cos[i] - b * sin[i];
                        v[2 * i + 1] = a * sin[i] + b * cos[i];
                    }
                } else {
                    for i in 0..half {
                        let (a, b) = (v[i], v[i + half]);
                        v[i] = a * cos[i] - b * sin[i];
                        v[i + half] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
        Ok(())
    }
}

/// `silu(gate) * up` for rows laid out `[gate (n) | up (n)]`, into `out` (`[rows, n]`).
pub fn swiglu_rows(gate_up: &[f32], n: usize, out: &mut Vec<f32>) {
    out.clear();
    for row in gate_up.chunks_exact(2 * n) {
        let (g, u) = row.split_at(n);
        out.extend(g.iter().zip(u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn rope_matches_candle_both_conventions() {
        let (heads, hd, t) = (2, 8, 3);
        let inv = Rope::default_inv_freq(hd, 10000.0);
        let x: Vec<f32> = (0..t * heads * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let positions = [4u32, 5, 6];
        for interleaved in [true, false] {
            let rope = Rope::new(&inv, 16, interleaved);
            let mut ours = x.clone();
            rope.apply(&mut ours, &positions, heads, hd).unwrap();
            // candle: [b, h, t, d] with cos/sin rows for positions 4..7
            let xt = Tensor::from_vec(x.clone(), (1, t, heads, hd), &Device::Cpu).unwrap();
            let xt = xt.transpose(1, 2).unwrap().contiguous().unwrap();
            let cos = Tensor::from_vec(rope.cos[4 * 4..7 * 4].to_vec(), (t, 4), &Device::Cpu).unwrap();
            let sin = Tensor::from_vec(rope.sin[4 * 4..7 * 4].to_vec(), (t, 4), &Device::Cpu).unwrap();
            let y = if interleaved {
                candle_nn::rotary_emb::rope_i(&xt, &cos, &sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope(&xt, &cos, &sin).unwrap()
            };
            let y: Vec<f32> = y.transpose(1, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for (a, b) in ours.iter().zip(&y) {
                assert!((a - b).abs() < 1e-6, "interleaved {interleaved}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn rope_rejects_positions_past_the_table() {
        let rope = Rope::new(&Rope::default_inv_freq(4, 10000.0), 2, true);
        let mut x = vec![0f32; 4];
        assert!(rope.apply(&mut x, &[2], 1, 4).is_err());
    }

    #[test]
    fn swiglu_is_silu_gate_times_up() {
        let mut out = Vec::new();
        swiglu_rows(&[0.0, 2.0, 3.0, -1.0], 2, &mut out);
        assert_eq!(out[0], 0.0);
        assert!((out[1] + 2.0 / (1.0 + (-2f32).exp())).abs() < 1e-6);
    }
}
