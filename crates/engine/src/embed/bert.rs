//! The BERT encoder forward (all-MiniLM, BGE, E5, GTE and the rest of the family) over a
//! ragged batch: every input's tokens sit one after another in one `[tokens, hidden]` matrix,
//! so no padding is computed. The linears run on wick's register-tiled float kernel (the
//! weights at their stored width, F32, F16 or BF16) on the compute pool, attention runs per
//! (input, head) with no mask, and the buffers of one forward are reused by the next.
//!
//! The arithmetic is that of Hugging Face's `BertModel` in f32 (exact GELU through an erf
//! accurate to 2e-7), so the hidden states match candle-transformers' and PyTorch's to f32
//! rounding; a token's result does not depend on the other inputs of its batch.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::model::backend::cpu::qmatmul::{FloatMatrix, TileKernel};
use crate::model::backend::cpu::weights::half_matrix;
use crate::model::backend::RawWeight;
use crate::thread_pool::pool;
use crate::{EngineError, Result};

/// `config.json` of a BERT-family folder (the fields the forward reads).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// The feed-forward activation `hidden_act` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// `gelu`: `x · Φ(x)` with the exact erf.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    Relu,
}

/// A layer norm's weight and bias.
struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

/// A linear layer: weights on the float kernel, and a bias.
struct Linear {
    w: FloatMatrix,
    b: Vec<f32>,
}

struct Layer {
    /// Query, key and value stacked: `[3 · hidden, hidden]`.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    ffn_norm: Norm,
}

/// A loaded BERT encoder.
pub struct Bert {
    hidden: usize,
    heads: usize,
    eps: f32,
    act: Activation,
    max_positions: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    /// The token-type-0 row (inputs are single segments).
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
}

/// One forward's buffers, kept for the next.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    proj: Vec<f32>,
    up: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The tensors of a folder by name, with the prefix (`bert.`, …) some checkpoints carry.
struct Tensors {
    map: HashMap<String, Tensor>,
    prefix: String,
}

impl Tensors {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.map
            .get(&format!("{}{name}", self.prefix))
            .ok_or_else(|| EngineError::Load(format!("BERT weights: no tensor `{}{name}`", self.prefix)))
    }

    fn vec(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.elem_count() != len {
            return Err(EngineError::Load(format!(
                "BERT weights: `{name}` holds {} values, not {len}",
                t.elem_count()
            )));
        }
        Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
    }

    fn norm(&self, name: &str, hidden: usize) -> Result<Norm> {
        Ok(Norm { w: self.vec(&format!("{name}.weight"), hidden)?, b: self.vec(&format!("{name}.bias"), hidden)? })
    }

    /// The linears `names` (each `[n_i, k]`) stacked into one `[Σ n_i, k]` matrix, kept at
    /// their stored width where they are all of one 16-bit type (as the decoders' linears are),
    /// else as f32.
    fn linear(&self, names: &[&str], k: usize) -> Result<Linear> {
        let ws: Vec<&Tensor> = names.iter().map(|n| self.get(&format!("{n}.weight"))).collect::<Result<_>>()?;
        let mut b = Vec::new();
        let mut n = 0;
        for (name, w) in names.iter().zip(&ws) {
            let (rows, cols) = w.dims2()?;
            if cols != k {
                return Err(EngineError::Load(format!(
                    "BERT weights: `{name}.weight` is [{rows}, {cols}], not [_, {k}]"
                )));
            }
            b.extend(self.vec(&format!("{name}.bias"), rows)?);
            n += rows;
        }
        let parts: Vec<RawWeight> = ws.iter().map(|w| RawWeight::Dense((*w).clone())).collect();
        let w = match half_matrix(&parts)? {
            Some(m) => m,
            None => {
                let mut all = Vec::with_capacity(n * k);
                for w in &ws {
                    all.extend(w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
                }
                FloatMatrix::from_f32(all, n, k)?
            }
        };
        Ok(Linear { w, b })
    }
}

impl Bert {
    /// Loads the `*.safetensors` files of `dir` as `config` describes them.
    pub fn load(dir: &Path, config: &BertConfig) -> Result<Self> {
        let act = match config.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return Err(EngineError::Unsupported(format!("BERT `hidden_act` {other:?}"))),
        };
        if let Some(p) = config.position_embedding_type.as_deref().filter(|p| *p != "absolute") {
            return Err(EngineError::Unsupported(format!("BERT `position_embedding_type` {p:?}")));
        }
        let (h, heads) = (config.hidden_size, config.num_attention_heads);
        if heads == 0 || h % heads != 0 {
            return Err(EngineError::Load(format!("hidden_size {h} is not a multiple of {heads} heads")));
        }
        let map = crate::model::source::read_safetensors(dir)?;
        let word_name = "embeddings.word_embeddings.weight";
        let prefix = [String::new(), format!("{}.", config.model_type.as_deref().unwrap_or("bert")), "bert.".into()]
            .into_iter()
            .find(|p| map.contains_key(&format!("{p}{word_name}")))
            .ok_or_else(|| EngineError::Load(format!("BERT weights: no tensor `{word_name}`")))?;
        let t = Tensors { map, prefix };
        let i = config.intermediate_size;
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let p = format!("encoder.layer.{l}");
                let qkv = ["query", "key", "value"].map(|n| format!("{p}.attention.self.{n}"));
                Ok(Layer {
                    qkv: t.linear(&[&qkv[0], &qkv[1], &qkv[2]], h)?,
                    attn_out: t.linear(&[&format!("{p}.attention.output.dense")], h)?,
                    attn_norm: t.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                    up: t.linear(&[&format!("{p}.intermediate.dense")], h)?,
                    down: t.linear(&[&format!("{p}.output.dense")], i)?,
                    ffn_norm: t.norm(&format!("{p}.output.LayerNorm"), h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            hidden: h,
            heads,
            eps: config.layer_norm_eps as f32,
            act,
            max_positions: config.max_position_embeddings,
            word: t.vec(word_name, config.vocab_size * h)?,
            position: t.vec("embeddings.position_embeddings.weight", config.max_position_embeddings * h)?,
            token_type: t.vec("embeddings.token_type_embeddings.weight", config.type_vocab_size * h)?[..h].to_vec(),
            embed_norm: t.norm("embeddings.LayerNorm", h)?,
            layers,
        })
    }

    /// The last hidden states of `seqs`, their rows one after another (`Σ len × hidden`),
    /// passed to `f`. Every id must be in the vocabulary and every input within the positions.
    pub fn forward<T>(&self, seqs: &[&[u32]], f: impl FnOnce(&[f32]) -> T) -> Result<T> {
        let h = self.hidden;
        let vocab = self.word.len() / h;
        for s in seqs {
            if s.len() > self.max_positions || s.iter().any(|&id| id as usize >= vocab) {
                return Err(EngineError::InvalidRequest(format!(
                    "inputs must hold at most {} tokens with ids below {vocab}",
                    self.max_positions
                )));
            }
        }
        SCRATCH.with(|cell| {
            let mut s = cell.borrow_mut();
            self.embed_tokens(seqs, &mut s.x);
            for layer in &self.layers {
                self.layer(layer, seqs, &mut s);
            }
            Ok(f(&s.x))
        })
    }

    /// Word + position + token-type embeddings, layer-normed, into `x`.
    fn embed_tokens(&self, seqs: &[&[u32]], x: &mut Vec<f32>) {
        let h = self.hidden;
        x.clear();
        for s in seqs {
            for (p, &id) in s.iter().enumerate() {
                let (w, pos) = (&self.word[id as usize * h..][..h], &self.position[p * h..][..h]);
                x.extend(w.iter().zip(pos).zip(&self.token_type).map(|((a, b), c)| a + c + b));
            }
        }
        for row in x.chunks_exact_mut(h) {
            layer_norm(row, &self.embed_norm, self.eps);
        }
    }

    fn layer(&self, l: &Layer, seqs: &[&[u32]], s: &mut Scratch) {
        let h = self.hidden;
        let tokens = s.x.len() / h;
        linear(&l.qkv, &s.x, &mut s.qkv);
        s.ctx.resize(tokens * h, 0.0);
        self.attention(seqs, &s.qkv, &mut s.ctx);
        linear(&l.attn_out, &s.ctx, &mut s.proj);
        add_and_norm(&mut s.x, &s.proj, &l.attn_norm, self.eps, h);
        linear(&l.up, &s.x, &mut s.up);
        activate(&mut s.up, self.act);
        linear(&l.down, &s.up, &mut s.proj);
        add_and_norm(&mut s.x, &s.proj, &l.ffn_norm, self.eps, h);
    }

    /// Softmax attention of each input over its own tokens, head by head, into `ctx`.
    fn attention(&self, seqs: &[&[u32]], qkv: &[f32], ctx: &mut [f32]) {
        let (h, heads) = (self.hidden, self.heads);
        let dh = h / heads;
        let scale = 1.0 / (dh as f32).sqrt();
        let starts: Vec<usize> = seqs
            .iter()
            .scan(0, |at, s| {
                let start = *at;
                *at += s.len();
                Some(start)
            })
            .collect();
        let out = RowsPtr(ctx.as_mut_ptr());
        pool().for_each_chunk(seqs.len() * heads, |items| {
            let out = &out;
            let mut scores = Vec::new();
            for item in items {
                let (seq, head) = (item / heads, item % heads);
                let (start, len) = (starts[seq], seqs[seq].len());
                let row = |t: usize, part: usize| &qkv[(start + t) * 3 * h + part * h + head * dh..][..dh];
                for i in 0..len {
                    let q = row(i, 0);
                    scores.clear();
                    scores.extend((0..len).map(|j| dot(q, row(j, 1)) * scale));
                    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    let mut sum = 0.0;
                    for v in scores.iter_mut() {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                    let inv = 1.0 / sum;
                    // SAFETY: item (seq, head) alone writes head `head` of its input's rows,
                    // which lie inside `ctx` (sized `tokens × hidden` by the caller).
                    let o = unsafe { std::slice::from_raw_parts_mut(out.0.add((start + i) * h + head * dh), dh) };
                    o.fill(0.0);
                    for (j, &p) in scores.iter().enumerate() {
                        let p = p * inv;
                        o.iter_mut().zip(row(j, 2)).for_each(|(o, v)| *o += p * v);
                    }
                }
            }
        });
    }
}

/// A raw pointer to rows that pool items write disjointly (attention's strided head slices;
/// contiguous chunks go through `ThreadPool::for_each_chunk_mut`).
struct RowsPtr(*mut f32);
// SAFETY: only used for disjoint writes inside one parallel region.
unsafe impl Sync for RowsPtr {}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `out = x · Wᵀ + b`.
fn linear(l: &Linear, x: &[f32], out: &mut Vec<f32>) {
    let (n, k) = l.w.dims();
    out.resize(x.len() / k * n, 0.0);
    l.w.matmul(x, out);
    for row in out.chunks_exact_mut(n) {
        row.iter_mut().zip(&l.b).for_each(|(o, b)| *o += b);
    }
}

fn layer_norm(row: &mut [f32], n: &Norm, eps: f32) {
    let len = row.len() as f32;
    let mean = row.iter().sum::<f32>() / len;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / len;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, w), b) in row.iter_mut().zip(&n.w).zip(&n.b) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// `x = LayerNorm(x + y)`, row by row, rows spread over the pool.
fn add_and_norm(x: &mut [f32], y: &[f32], n: &Norm, eps: f32, h: usize) {
    const ROWS: usize = 32;
    pool().for_each_chunk_mut(x, ROWS * h, |i, xs| {
        for (row, add) in xs.chunks_exact_mut(h).zip(y[i * ROWS * h..].chunks_exact(h)) {
            row.iter_mut().zip(add).for_each(|(v, a)| *v += a);
            layer_norm(row, n, eps);
        }
    });
}

/// The activation applied in place, spread over the pool.
fn activate(x: &mut [f32], act: Activation) {
    const CHUNK: usize = 16 * 1024;
    pool().for_each_chunk_mut(x, CHUNK, |_, v| match act {
        Activation::Gelu => gelu::erf_form(v),
        Activation::GeluTanh => gelu::tanh_form(v),
        Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
    });
}

/// GELU in loops the compiler vectorizes (AVX2 where the CPU has it): `exp` by the gated
/// activations' polynomial (`gated::exp`), `erf` by Abramowitz and Stegun's 7.1.26 (absolute
/// error under 1.5e-7).
mod gelu {
    use crate::model::backend::cpu::gated::exp;

    #[inline(always)]
    fn erf(x: f32) -> f32 {
        let a = x.abs();
        let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
        let poly = 1.061_405_4f32.mul_add(t, -1.453_152_1);
        let poly = poly.mul_add(t, 1.421_413_7);
        let poly = poly.mul_add(t, -0.284_496_74);
        let poly = poly.mul_add(t, 0.254_829_6);
        let y = 1.0 - poly * t * exp(-a * a);
        y.copysign(x)
    }

    #[inline(always)]
    fn erf_one(x: f32) -> f32 {
        0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
    }

    #[inline(always)]
    fn tanh_one(x: f32) -> f32 {
        let u = 0.797_884_6 * x * 0.044_715f32.mul_add(x * x, 1.0);
        // 0.5 · (1 + tanh(u)) = 1 / (1 + e^(-2u))
        x / (1.0 + exp(-2.0 * u))
    }

    macro_rules! vectorized {
        ($name:ident, $one:ident) => {
            pub(super) fn $name(v: &mut [f32]) {
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    #[target_feature(enable = "avx2,fma")]
                    fn simd(v: &mut [f32]) {
                        v.iter_mut().for_each(|x| *x = $one(*x));
                    }
                    // SAFETY: AVX2 and FMA were detected.
                    unsafe { simd(v) };
                    return;
                }
                v.iter_mut().for_each(|x| *x = $one(*x));
            }
        };
    }
    vectorized!(erf_form, erf_one);
    vectorized!(tanh_form, tanh_one);

    #[cfg(test)]
    mod tests {
        #[test]
        fn gelu_matches_the_exact_erf_form() {
            // f64 erf by its Taylor series (|x| ≤ 3), exact to f64 rounding there.
            fn erf64(x: f64) -> f64 {
                let (mut term, mut sum) = (x, x);
                for n in 1..200 {
                    term *= -x * x / n as f64;
                    sum += term / (2 * n + 1) as f64;
                }
                sum * 2.0 / std::f64::consts::PI.sqrt()
            }
            let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 / 1000.0).collect();
            let mut got = xs.clone();
            super::erf_form(&mut got);
            for (&x, &g) in xs.iter().zip(&got) {
                let want = 0.5 * x as f64 * (1.0 + erf64(x as f64 / 2f64.sqrt()));
                assert!((g as f64 - want).abs() <= 4e-7 * (1.0 + want.abs()), "gelu({x}) = {g}, want {want}");
            }
            let mut big = vec![-100.0f32, 100.0, -10.0, 10.0];
            super::erf_form(&mut big);
            assert_eq!(big, [-0.0, 100.0, -0.0, 10.0]);
        }
    }
}
