//! `CpuBackend`: the [`Backend`] on host memory. Activations are `Vec<f32>` buffers reused
//! from layer to layer and step to step; linear layers run on wick's batch-invariant
//! quantized kernels (`qmatmul`) or candle's CPU matmuls (`layers`, `weights`); attention is
//! the AVX2-tiled ragged paged attention of `kv_cache`. This module and the loaders are the
//! only places that name `Device::Cpu`.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::batch::ForwardBatch;
use crate::kv_cache::attention::paged_attention_with_sinks;
use crate::kv_cache::{paged_attention, AttnParams, KvLayout, PagedKvCache};
use crate::model::backend::{Backend, RawWeight};
use crate::model::rope::RopeRows;
use crate::model::spec::{Activation, MoeSpec};
use crate::{EngineError, Result};

pub mod gated;
pub mod layers;
pub mod qmatmul;
pub mod weights;

use gated::{clamped_swiglu_rows, geglu_rows, swiglu_rows};
use layers::{Linear, QuantWeight, RmsNorm};
use qmatmul::{Q6KMatrix, Q8Matrix};
use weights::{LinearBuilder, WeightOptions};

/// The host backend, with the weight options it loads under.
pub struct CpuBackend {
    builder: LinearBuilder,
}

impl CpuBackend {
    /// `dense_bytes`: what f32 copies of every linear weight would take (for the optional
    /// f32-copy budget of `WeightOptions`).
    pub fn new(opts: &WeightOptions, dense_bytes: usize) -> Self {
        keep_candle_off_amx();
        static LOGGED: std::sync::Once = std::sync::Once::new();
        LOGGED.call_once(|| {
            let level = crate::kernel_level::KernelLevel::current();
            let threads = crate::thread_pool::pool().threads();
            tracing::info!(kernels = %level, threads, "CPU kernels: {level} (WICK_KERNELS=avx512|avx2|scalar forces one), {threads} compute threads");
        });
        Self { builder: LinearBuilder::new(opts, dense_bytes) }
    }
}

/// candle's repacked Q4_K matmul switches to AMX tiles for 32+ rows wherever CPUID
/// advertises AMX, and on some of the machines wick runs on AMX instructions trap although
/// advertised. Where AMX is advertised, candle is told (before its first quantized matmul
/// reads the setting) to use its 256-bit AVX-VNNI tier, which every AMX CPU has; its AMX
/// path is only taken on the 512-bit tier.
fn keep_candle_off_amx() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: CPUID leaf 7 exists on every x86-64 CPU that runs this build (AVX2).
            #[allow(unused_unsafe)]
            let edx = unsafe { core::arch::x86_64::__cpuid_count(7, 0) }.edx;
            let amx = edx & (1 << 24) != 0 || edx & (1 << 25) != 0;
            if amx && std::env::var_os("MISTRALRS_FORCE_AVX2").is_none() {
                let var = if std::is_x86_feature_detected!("avxvnni") {
                    "MISTRALRS_FORCE_AVXVNNI"
                } else {
                    "MISTRALRS_FORCE_AVX2"
                };
                tracing::info!("CPU advertises AMX: candle's K-quant kernels kept on their 256-bit tier ({var}=1)");
                // Set while the model loads, before any quantized matmul has run.
                std::env::set_var(var, "1");
            }
        }
    });
}

/// gpt-oss's routing of every row of `router` (`[rows, experts]` biased logits): the `k`
/// highest logits (ties to the lower expert index), in that order, each with its weight, the
/// softmax over the chosen logits (transformers' `GptOssTopKRouter`, llama.cpp's
/// `LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX_WEIGHT`). Returns `rows · k` `(expert, weight)`.
pub fn route(router: &[f32], experts: usize, k: usize) -> Vec<(usize, f32)> {
    let mut out = Vec::with_capacity(router.len() / experts.max(1) * k);
    let mut order: Vec<usize> = Vec::with_capacity(experts);
    for logits in router.chunks_exact(experts) {
        order.clear();
        order.extend(0..experts);
        // Stable: equal logits keep the lower index first.
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let chosen = &order[..k];
        let max = logits[chosen[0]];
        let exps: Vec<f32> = chosen.iter().map(|&e| (logits[e] - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        out.extend(chosen.iter().zip(&exps).map(|(&e, &x)| (e, x / sum)));
    }
    out
}

/// A linear layer: one fused weight, or parts of different types (a Q4_K_M file may store q
/// and k as Q4_K and v as Q6_K) run as one matmul where their kernels take the same activations
/// (`shared_kernels`), else one after another; plus an optional bias.
pub struct CpuLinear {
    parts: Vec<(Linear, usize)>,
    out: usize,
    bias: Option<Vec<f32>>,
}

impl CpuLinear {
    /// The parts' wick kernels for a step of `rows` rows when every part has one and they all
    /// take the same activations (a Q4_K q and k beside a Q6_K v): then they run as one
    /// matmul, writing their columns in place.
    fn shared_kernels(&self, rows: usize) -> Option<Vec<&dyn qmatmul::TileKernel>> {
        let kernels: Vec<_> = self.parts.iter().map(|(lin, _)| lin.kernel_for(rows)).collect::<Option<_>>()?;
        kernels.windows(2).all(|p| p[0].act_blocks() == p[1].act_blocks()).then_some(kernels)
    }
}

/// Token embeddings: rows dequantized on demand (a 262k-token vocabulary stays at its stored
/// size), read from the tied LM head's Q8_0 or Q6_K matrix (one copy of the table for both),
/// or a float tensor.
pub enum CpuEmbedding {
    Quant { dtype: GgmlDType, bytes: Vec<u8>, row_bytes: usize, hidden: usize },
    Tied(TiedTable),
    Dense(Tensor),
}

/// The LM head's matrix, read as the token embedding too.
pub enum TiedTable {
    Q8(Q8Matrix),
    Q6K(Q6KMatrix),
}

impl TiedTable {
    fn append_row(&self, r: usize, out: &mut Vec<f32>) -> Option<()> {
        match self {
            Self::Q8(m) => m.append_row(r, out),
            Self::Q6K(m) => m.append_row(r, out),
        }
    }
}

fn flat_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

impl Backend for CpuBackend {
    type Act = Vec<f32>;
    type Linear = CpuLinear;
    type Norm = RmsNorm;
    type Embedding = CpuEmbedding;
    type Sinks = Vec<f32>;
    type Kv = PagedKvCache;

    fn linear(&self, parts: Vec<RawWeight>, biases: Vec<Option<RawWeight>>) -> Result<CpuLinear> {
        let outs: Vec<usize> = parts.iter().map(|p| p.dims().first().copied().unwrap_or(0)).collect();
        let out = outs.iter().sum();
        let bias = if biases.iter().any(Option::is_some) {
            let mut b = Vec::with_capacity(out);
            for (raw, n) in biases.iter().zip(&outs) {
                match raw {
                    Some(raw) => {
                        let v = flat_f32(&raw.to_f32()?)?;
                        if v.len() != *n {
                            return Err(EngineError::Load(format!("bias of {} values for {n} outputs", v.len())));
                        }
                        b.extend(v);
                    }
                    None => b.extend(std::iter::repeat_n(0.0, *n)),
                }
            }
            Some(b)
        } else {
            None
        };
        // Parts that run as the same type are fused into one matrix (a Q5_0 q/k beside a
        // Q8_0 v all run as Q8_0: one matrix); others are parts of one matmul where their
        // kernels take the same activations (`matmul`), else run one after another.
        let same = parts.windows(2).all(|w| self.builder.runs_as(&w[0]) == self.builder.runs_as(&w[1]));
        let parts = if same {
            vec![(self.builder.build(parts, None)?, out)]
        } else {
            parts
                .into_iter()
                .zip(outs)
                .map(|(p, n)| Ok((self.builder.build(vec![p], None)?, n)))
                .collect::<Result<_>>()?
        };
        Ok(CpuLinear { parts, out, bias })
    }

    fn router(&self, w: RawWeight, bias: Option<RawWeight>) -> Result<CpuLinear> {
        let float = match &w {
            RawWeight::Quant(q) => matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16),
            RawWeight::Dense(_) => true,
            RawWeight::Mxfp4 { .. } => false,
        };
        if !float {
            // Quantized routers run on kernels that are row-invariant already.
            return self.linear(vec![w], vec![bias]);
        }
        let out = w.dims().first().copied().unwrap_or(0);
        let bias = bias.map(|b| flat_f32(&b.to_f32()?)).transpose()?;
        if bias.as_ref().is_some_and(|b| b.len() != out) {
            return Err(EngineError::Load(format!(
                "router bias of {} values for {out} experts",
                bias.map_or(0, |b| b.len())
            )));
        }
        let dense = Linear::DenseRows(w.to_f32()?.contiguous()?);
        Ok(CpuLinear { parts: vec![(dense, out)], out, bias })
    }

    fn norm(&self, w: RawWeight, eps: f32, offset: f32) -> Result<RmsNorm> {
        let w = w.to_f32()?;
        let w = if offset != 0.0 { (w + offset as f64)? } else { w };
        RmsNorm::new(&w, eps)
    }

    fn embedding(&self, w: &RawWeight) -> Result<CpuEmbedding> {
        let (_, hidden) = match w.dims()[..] {
            [v, h] => (v, h),
            ref d => return Err(EngineError::Load(format!("embedding of shape {d:?}"))),
        };
        Ok(match w {
            RawWeight::Quant(q) if !matches!(q.dtype(), GgmlDType::F32) => {
                let dtype = q.dtype();
                let row_bytes = hidden / dtype.block_size() * dtype.type_size();
                CpuEmbedding::Quant { dtype, bytes: q.data()?.into_owned(), row_bytes, hidden }
            }
            RawWeight::Quant(q) => CpuEmbedding::Dense(q.dequantize(&Device::Cpu)?),
            RawWeight::Dense(t) => CpuEmbedding::Dense(t.clone()),
            RawWeight::Mxfp4 { .. } => CpuEmbedding::Dense(w.to_f32()?),
        })
    }

    fn tied_embedding(&self, w: RawWeight) -> Result<(CpuEmbedding, CpuLinear)> {
        let embed = match &w {
            RawWeight::Quant(q) if self.builder.keeps_stored(q.dtype()) => None,
            _ => Some(self.embedding(&w)?),
        };
        let head = self.linear(vec![w], vec![None])?;
        let embed = match (embed, &head.parts[..]) {
            (Some(e), _) => e,
            (None, [(Linear::Quant { q: QuantWeight::Q8(m), .. }, _)]) => CpuEmbedding::Tied(TiedTable::Q8(m.clone())),
            (None, [(Linear::Quant { q: QuantWeight::Q6K(m), .. }, _)]) => {
                CpuEmbedding::Tied(TiedTable::Q6K(m.clone()))
            }
            (None, _) => return Err(EngineError::Load("a tied LM head loaded as another kind".into())),
        };
        Ok((embed, head))
    }

    fn sinks(&self, w: RawWeight) -> Result<Vec<f32>> {
        flat_f32(&w.to_f32()?)
    }

    fn kv_cache(&self, layout: &KvLayout, num_blocks: usize, block_size: usize) -> Result<PagedKvCache> {
        Ok(PagedKvCache::new(layout, num_blocks, block_size))
    }

    fn validate(&self, kv: &PagedKvCache, batch: &ForwardBatch) -> Result<()> {
        kv.validate(batch)
    }

    fn embed(&self, e: &CpuEmbedding, ids: &[u32], scale: Option<f32>, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        match e {
            CpuEmbedding::Quant { dtype, bytes, row_bytes, hidden } => {
                for &id in ids {
                    let at = id as usize * row_bytes;
                    let row = bytes.get(at..at + row_bytes).ok_or_else(|| {
                        EngineError::InvalidRequest(format!("token id {id} is outside the vocabulary"))
                    })?;
                    let q = qtensor_from_ggml(*dtype, row, vec![1, *hidden], &Device::Cpu)?;
                    out.extend(flat_f32(&q.dequantize(&Device::Cpu)?)?);
                }
            }
            CpuEmbedding::Tied(m) => {
                for &id in ids {
                    m.append_row(id as usize, out).ok_or_else(|| {
                        EngineError::InvalidRequest(format!("token id {id} is outside the vocabulary"))
                    })?;
                }
            }
            CpuEmbedding::Dense(t) => {
                let idx = Tensor::from_slice(ids, ids.len(), &Device::Cpu)?;
                out.extend(flat_f32(&t.index_select(&idx, 0)?)?);
            }
        }
        if let Some(s) = scale {
            out.iter_mut().for_each(|x| *x *= s);
        }
        Ok(())
    }

    fn matmul(&self, w: &CpuLinear, x: &Vec<f32>, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        if let [(lin, _)] = &w.parts[..] {
            lin.forward_host(x, rows, out)?;
        } else if let Some(kernels) = w.shared_kernels(rows) {
            out.resize(rows * w.out, 0.0);
            qmatmul::matmul_parts(&kernels, x, out);
        } else {
            out.clear();
            out.resize(rows * w.out, 0.0);
            let mut part = Vec::new();
            let mut col = 0;
            for (lin, n) in &w.parts {
                lin.forward_host(x, rows, &mut part)?;
                for (dst, src) in out.chunks_exact_mut(w.out).zip(part.chunks_exact(*n)) {
                    dst[col..col + n].copy_from_slice(src);
                }
                col += n;
            }
        }
        if let Some(b) = &w.bias {
            for row in out.chunks_exact_mut(w.out) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        Ok(())
    }

    fn rms_norm(&self, n: &RmsNorm, x: &Vec<f32>, out: &mut Vec<f32>) {
        n.forward_rows(x, out);
    }

    fn rms_norm_in_place(&self, n: &RmsNorm, x: &mut Vec<f32>) {
        let mut out = Vec::with_capacity(x.len());
        n.forward_rows(x, &mut out);
        *x = out;
    }

    fn split3(&self, x: &Vec<f32>, [a, b, c]: [usize; 3], [qa, qb, qc]: [&mut Vec<f32>; 3]) {
        qa.clear();
        qb.clear();
        qc.clear();
        for row in x.chunks_exact(a + b + c) {
            qa.extend_from_slice(&row[..a]);
            qb.extend_from_slice(&row[a..a + b]);
            qc.extend_from_slice(&row[a + b..]);
        }
    }

    fn rope(&self, x: &mut Vec<f32>, rows: &RopeRows, heads: usize, head_dim: usize) {
        rows.apply_host(x, heads, head_dim);
    }

    fn attention(
        &self,
        kv: &mut PagedKvCache,
        layer: usize,
        batch: &ForwardBatch,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        num_heads: usize,
        params: AttnParams,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        kv.write(layer, batch, k, v);
        *out = paged_attention(kv, layer, batch, q, num_heads, params);
        Ok(())
    }

    fn attention_with_sinks(
        &self,
        kv: &mut PagedKvCache,
        layer: usize,
        batch: &ForwardBatch,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        num_heads: usize,
        params: AttnParams,
        sinks: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        if sinks.len() != num_heads {
            return Err(EngineError::Load(format!("{} attention sinks for {num_heads} heads", sinks.len())));
        }
        kv.write(layer, batch, k, v);
        *out = paged_attention_with_sinks(kv, layer, batch, q, num_heads, params, Some(sinks));
        Ok(())
    }

    fn moe(
        &self,
        experts: &[(CpuLinear, CpuLinear)],
        moe: &MoeSpec,
        act: Activation,
        x: &Vec<f32>,
        router: &Vec<f32>,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (ne, k) = (moe.num_experts, moe.top_k);
        if experts.len() != ne || router.len() != rows * ne || rows == 0 && !x.is_empty() {
            return Err(EngineError::Load(format!(
                "{} experts, router of {} values for {rows} rows",
                experts.len(),
                router.len()
            )));
        }
        let hidden = x.len() / rows.max(1);
        let routes = route(router, ne, k);
        // Rows per expert, in row order, with the slot they fill.
        let mut by_expert: Vec<Vec<(usize, usize)>> = vec![Vec::new(); ne];
        for (i, &(e, _)) in routes.iter().enumerate() {
            by_expert[e].push((i / k, i % k));
        }
        let mut ys = vec![0f32; rows * k * hidden];
        let (mut xe, mut gu, mut a, mut y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (e, members) in by_expert.iter().enumerate().filter(|(_, m)| !m.is_empty()) {
            xe.clear();
            for &(r, _) in members {
                xe.extend_from_slice(&x[r * hidden..(r + 1) * hidden]);
            }
            let (gate_up, down) = &experts[e];
            self.matmul(gate_up, &xe, members.len(), &mut gu)?;
            self.gated(act, &gu, moe.expert_ff, &mut a);
            self.matmul(down, &a, members.len(), &mut y)?;
            for (&(r, slot), yr) in members.iter().zip(y.chunks_exact(hidden)) {
                ys[(r * k + slot) * hidden..(r * k + slot + 1) * hidden].copy_from_slice(yr);
            }
        }
        // Each row's weighted sum in its own order of experts.
        out.clear();
        out.resize(rows * hidden, 0.0);
        for (r, o) in out.chunks_exact_mut(hidden).enumerate() {
            for slot in 0..k {
                let w = routes[r * k + slot].1;
                let yr = &ys[(r * k + slot) * hidden..(r * k + slot + 1) * hidden];
                o.iter_mut().zip(yr).for_each(|(o, y)| *o = w.mul_add(*y, *o));
            }
        }
        Ok(())
    }

    fn gated(&self, act: Activation, gate_up: &Vec<f32>, n: usize, out: &mut Vec<f32>) {
        match act {
            Activation::Silu => swiglu_rows(gate_up, n, out),
            Activation::GeluTanh => geglu_rows(gate_up, n, out),
            Activation::ClampedSwiglu { alpha, limit } => clamped_swiglu_rows(gate_up, n, alpha, limit, out),
        }
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
    }

    fn gather_rows(&self, x: &Vec<f32>, rows: &[usize], width: usize, out: &mut Vec<f32>) {
        out.clear();
        for &r in rows {
            out.extend_from_slice(&x[r * width..(r + 1) * width]);
        }
    }

    fn softcap(&self, x: &mut Vec<f32>, cap: f32) {
        x.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
    }

    fn to_tensor(&self, x: &Vec<f32>, rows: usize, width: usize) -> Result<Tensor> {
        Ok(Tensor::from_slice(&x[..rows * width], (rows, width), &Device::Cpu)?)
    }

    fn read_rows(&self, x: &Vec<f32>, rows: usize, width: usize, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        out.extend_from_slice(&x[..rows * width]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;

    #[test]
    fn a_tied_q8_0_or_q6_k_embedding_shares_the_lm_heads_matrix_and_reads_candles_rows() {
        let (vocab, hidden) = (40, 256);
        let v: Vec<f32> = (0..vocab * hidden).map(|i| ((i * 7919 % 1001) as f32 / 500.0) - 1.0).collect();
        let w = Tensor::from_vec(v, (vocab, hidden), &Device::Cpu).unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q6K] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
            let b = CpuBackend::new(&WeightOptions::default(), 0);
            let (embed, head) = b.tied_embedding(RawWeight::Quant(q)).unwrap();
            let shared = match (&embed, &head.parts[..]) {
                (CpuEmbedding::Tied(TiedTable::Q8(m)), [(Linear::Quant { q: QuantWeight::Q8(h), .. }, _)]) => {
                    m.shares_storage_with(h)
                }
                (CpuEmbedding::Tied(TiedTable::Q6K(m)), [(Linear::Quant { q: QuantWeight::Q6K(h), .. }, _)]) => {
                    m.shares_storage_with(h)
                }
                _ => false,
            };
            assert!(shared, "{dtype:?}: one copy of the table");
            let mut out = Vec::new();
            b.embed(&embed, &[3, 0, 39], Some(2.0), &mut out).unwrap();
            for (i, id) in [3, 0, 39].into_iter().enumerate() {
                let row: Vec<f32> = want[id].iter().map(|x| x * 2.0).collect();
                assert_eq!(&out[i * hidden..(i + 1) * hidden], &row[..], "{dtype:?} token {id}");
            }
            let rows = out.clone();
            assert!(b.embed(&embed, &[40], None, &mut out).is_err(), "a token outside the vocabulary is an error");
            // With every weight dequantized (the oracle setting) the head is f32 and the
            // embedding keeps its own rows, the same values.
            let b = CpuBackend::new(&WeightOptions::dequantized(), 0);
            let q = QTensor::quantize(&w, dtype).unwrap();
            let (embed, head) = b.tied_embedding(RawWeight::Quant(q)).unwrap();
            assert!(matches!(head.parts[..], [(Linear::Dense(_), _)]), "dequantized head");
            let mut dq = Vec::new();
            b.embed(&embed, &[3, 0, 39], Some(2.0), &mut dq).unwrap();
            assert_eq!(dq, rows, "{dtype:?}");
        }
    }
}
