//! The llama family (Llama 2/3, Mistral, SmolLM2): one ragged batched forward over every
//! token of a step. Linear layers see all T tokens at once (q/k/v and gate/up fused), RoPE
//! uses each token's own position, attention runs per sequence against its paged context,
//! and the final norm + LM head run only for the rows whose logits are wanted.

use candle_core::{DType, Device, Tensor};

use crate::batch::ForwardBatch;
use crate::kv_cache::{paged_attention, AttnParams, PagedKvCache};
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
        };
        let rope = Rope::new(&hp.rope_inv_freq, hp.max_position_embeddings, hp.rope_interleaved);
        Self { config, hp, embed, layers, norm, lm_head, rope }
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

    /// Attention block of one layer: returns the o-projection output for all tokens.
    fn attention(&self, l: usize, h: &Tensor, batch: &ForwardBatch, cache: &mut PagedKvCache) -> Result<Tensor> {
        let hp = &self.hp;
        let (t, hd) = (batch.num_tokens(), hp.head_dim);
        let (qw, kw) = (hp.num_heads * hd, hp.num_kv_heads * hd);
        let qkv: Vec<f32> = self.layers[l].qkv.forward(h)?.flatten_all()?.to_vec1()?;
        let width = qw + 2 * kw;
        let mut q = Vec::with_capacity(t * qw);
        let mut k = Vec::with_capacity(t * kw);
        let mut v = Vec::with_capacity(t * kw);
        for row in qkv.chunks_exact(width) {
            q.extend_from_slice(&row[..qw]);
            k.extend_from_slice(&row[qw..qw + kw]);
            v.extend_from_slice(&row[qw + kw..]);
        }
        self.rope.apply(&mut q, &batch.positions, hp.num_heads, hd)?;
        self.rope.apply(&mut k, &batch.positions, hp.num_kv_heads, hd)?;
        cache.write(l, batch, &k, &v);
        let params = AttnParams { scale: 1.0 / (hd as f32).sqrt(), window: hp.sliding_window };
        let att = paged_attention(cache, l, batch, &q, hp.num_heads, params);
        let att = Tensor::from_vec(att, (t, qw), &Device::Cpu)?;
        self.layers[l].o.forward(&att)
    }

    fn mlp(&self, l: usize, h: &Tensor) -> Result<Tensor> {
        let t = h.dim(0)?;
        let n = self.hp.intermediate_size;
        let gu: Vec<f32> = self.layers[l].gate_up.forward(h)?.flatten_all()?.to_vec1()?;
        let act = Tensor::from_vec(swiglu_rows(&gu, n), (t, n), &Device::Cpu)?;
        self.layers[l].down.forward(&act)
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
        let ids = Tensor::from_slice(&batch.input_ids, t, &Device::Cpu)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            x = (x + self.attention(l, &h, batch, cache)?)?;
            let h = layer.ffn_norm.forward(&x)?;
            x = (x + self.mlp(l, &h)?)?;
        }
        if batch.logits_rows.is_empty() {
            return Ok(Tensor::zeros((0, self.hp.vocab_size), DType::F32, &Device::Cpu)?);
        }
        let rows: Vec<u32> = batch.logits_rows.iter().map(|&r| r as u32).collect();
        let rows = Tensor::from_vec(rows, batch.logits_rows.len(), &Device::Cpu)?;
        let x = self.norm.forward(&x.index_select(&rows, 0)?)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}
