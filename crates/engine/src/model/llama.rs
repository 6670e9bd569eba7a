//! The llama family (Llama 2/3, Mistral, SmolLM2): one ragged batched forward over every
//! token of a step. Linear layers see all T tokens at once (q/k/v and gate/up fused), RoPE
//! uses each token's own position, attention runs per sequence against its paged context,
//! and the final norm + LM head run only for the rows whose logits are wanted.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::batch::ForwardBatch;
use crate::kv_cache::{paged_attention, AttentionKind, AttnParams, KvLayout, PagedKvCache};
use crate::model::layers::{swiglu_rows, Linear, RmsNorm, Rope};
use crate::model::{Arch, CausalLm, ModelConfig};
use crate::{EngineError, Result};

/// Hyperparameters of a llama-family model, whatever file it came from.
#[derive(Debug, Clone)]
pub struct LlamaHparams {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    /// Rotary inverse frequencies (`head_dim / 2` entries, any scaling already applied).
    pub rope_inv_freq: Vec<f32>,
    /// GGUF files store q/k permuted for interleaved RoPE; HF safetensors use NeoX halves.
    pub rope_interleaved: bool,
    /// Mistral-style sliding-window attention.
    pub sliding_window: Option<usize>,
}

/// One decoder layer's weights.
pub struct LlamaLayer {
    pub attn_norm: RmsNorm,
    /// Fused `[q; k; v]` projection.
    pub qkv: Linear,
    pub o: Linear,
    pub ffn_norm: RmsNorm,
    /// Fused `[gate; up]` projection.
    pub gate_up: Linear,
    pub down: Linear,
}

/// A llama-family model ready to run ragged batches.
pub struct Llama {
    config: ModelConfig,
    hp: LlamaHparams,
    /// f32 `[vocab, hidden]`.
    embed: Tensor,
    layers: Vec<LlamaLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    /// Buffers of the forward pass (one pass at a time: the engine thread owns the model).
    scratch: Mutex<Scratch>,
}

impl Llama {
    pub fn new(hp: LlamaHparams, embed: Tensor, layers: Vec<LlamaLayer>, norm: RmsNorm, lm_head: Linear) -> Self {
        let config = ModelConfig {
            arch: Arch::Llama,
            vocab_size: hp.vocab_size,
            hidden_size: hp.hidden_size,
            num_layers: hp.num_layers,
            num_heads: hp.num_heads,
            num_kv_heads: hp.num_kv_heads,
            head_dim: hp.head_dim,
            max_position_embeddings: hp.max_position_embeddings,
            kv_layout: {
                let kind = hp.sliding_window.map_or(AttentionKind::Full, AttentionKind::Sliding);
                KvLayout::new(&vec![kind; hp.num_layers], hp.num_kv_heads, hp.head_dim)
            },
        };
        let rope = Rope::new(&hp.rope_inv_freq, hp.max_position_embeddings, hp.rope_interleaved);
        Self { config, hp, embed, layers, norm, lm_head, rope, scratch: Mutex::new(Scratch::default()) }
    }

    fn check(&self, batch: &ForwardBatch, cache: &PagedKvCache) -> Result<()> {
        if cache.num_layers() != self.hp.num_layers
            || cache.num_kv_heads() != self.hp.num_kv_heads
            || cache.head_dim() != self.hp.head_dim
        {
            return Err(EngineError::InvalidRequest(format!(
                "KV cache shaped for {} layers x {} kv heads x {} dims, model needs {} x {} x {}",
                cache.num_layers(),
                cache.num_kv_heads(),
                cache.head_dim(),
                self.hp.num_layers,
                self.hp.num_kv_heads,
                self.hp.head_dim
            )));
        }
        cache.validate(batch)?;
        if let Some(&id) = batch.input_ids.iter().find(|&&id| id as usize >= self.hp.vocab_size) {
            return Err(EngineError::InvalidRequest(format!("token id {id} is outside the vocabulary")));
        }
        if let Some(&r) = batch.logits_rows.iter().find(|&&r| r >= batch.num_tokens()) {
            return Err(EngineError::InvalidRequest(format!("logits row {r} is outside the batch")));
        }
        Ok(())
    }

    /// Attention block of one layer: `s.h` (normed input) → `s.out` (o-projection output).
    fn attention(&self, l: usize, batch: &ForwardBatch, cache: &mut PagedKvCache, s: &mut Scratch) -> Result<()> {
        let hp = &self.hp;
        let (t, hd) = (batch.num_tokens(), hp.head_dim);
        let (qw, kw) = (hp.num_heads * hd, hp.num_kv_heads * hd);
        self.layers[l].qkv.forward_host(&s.h, t, &mut s.proj)?;
        let width = qw + 2 * kw;
        s.q.clear();
        s.k.clear();
        s.v.clear();
        for row in s.proj.chunks_exact(width) {
            s.q.extend_from_slice(&row[..qw]);
            s.k.extend_from_slice(&row[qw..qw + kw]);
            s.v.extend_from_slice(&row[qw + kw..]);
        }
        self.rope.apply(&mut s.q, &batch.positions, hp.num_heads, hd)?;
        self.rope.apply(&mut s.k, &batch.positions, hp.num_kv_heads, hd)?;
        cache.write(l, batch, &s.k, &s.v);
        let params = AttnParams { scale: 1.0 / (hd as f32).sqrt(), window: hp.sliding_window };
        let att = paged_attention(cache, l, batch, &s.q, hp.num_heads, params);
        self.layers[l].o.forward_host(&att, t, &mut s.out)
    }

    /// MLP block of one layer: `s.h` → `s.out`.
    fn mlp(&self, l: usize, t: usize, s: &mut Scratch) -> Result<()> {
        self.layers[l].gate_up.forward_host(&s.h, t, &mut s.proj)?;
        swiglu_rows(&s.proj, self.hp.intermediate_size, &mut s.act);
        self.layers[l].down.forward_host(&s.act, t, &mut s.out)
    }
}

/// Host buffers of one forward pass, reused from layer to layer and step to step.
#[derive(Default)]
struct Scratch {
    /// Residual stream `[T, hidden]`.
    x: Vec<f32>,
    /// Normed input of the current block.
    h: Vec<f32>,
    /// Fused projection output (qkv or gate/up).
    proj: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    act: Vec<f32>,
    /// Block output, added into `x`.
    out: Vec<f32>,
}

/// `x += y`.
fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

impl CausalLm for Llama {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward(&self, batch: &ForwardBatch, cache: &mut PagedKvCache) -> Result<Tensor> {
        self.check(batch, cache)?;
        let t = batch.num_tokens();
        if t == 0 {
            return Ok(Tensor::zeros((0, self.hp.vocab_size), DType::F32, &Device::Cpu)?);
        }
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        let ids = Tensor::from_slice(&batch.input_ids, t, &Device::Cpu)?;
        s.x = self.embed.index_select(&ids, 0)?.flatten_all()?.to_vec1()?;
        for (l, layer) in self.layers.iter().enumerate() {
            layer.attn_norm.forward_rows(&s.x, &mut s.h);
            self.attention(l, batch, cache, s)?;
            add_into(&mut s.x, &s.out);
            layer.ffn_norm.forward_rows(&s.x, &mut s.h);
            self.mlp(l, t, s)?;
            add_into(&mut s.x, &s.out);
        }
        let hidden = self.hp.hidden_size;
        let rows = batch.logits_rows.len();
        if rows == 0 {
            return Ok(Tensor::zeros((0, self.hp.vocab_size), DType::F32, &Device::Cpu)?);
        }
        s.act.clear();
        for &r in &batch.logits_rows {
            s.act.extend_from_slice(&s.x[r * hidden..(r + 1) * hidden]);
        }
        self.norm.forward_rows(&s.act, &mut s.h);
        self.lm_head.forward_host(&s.h, rows, &mut s.out)?;
        Ok(Tensor::from_slice(&s.out, (rows, self.hp.vocab_size), &Device::Cpu)?)
    }
}
