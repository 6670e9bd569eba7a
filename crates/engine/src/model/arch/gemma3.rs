//! gemma3: interleaved local (sliding-window) and global layers, each kind with its own RoPE
//! (local: `rope.freq_base_swa` / `rope_local_base_freq`, unscaled; global: the main base
//! with the configured scaling), `1 + w` RMSNorm (the GGUF converter already stores `1 + w`),
//! per-head q/k norms, norms on the attention and MLP outputs before their residual adds,
//! GELU-tanh, embeddings scaled by `sqrt(hidden)`, queries by `query_pre_attn_scalar^-1/2`, an
//! optional final logit softcap, and a 262k vocabulary.
//!
//! Which layers are local: GGUF `gemma3.attention.sliding_window_pattern` (a period, or a
//! per-layer bool array; absent in real files: llama.cpp then uses 6, layer `il` local iff
//! `il % 6 < 5`); HF `layer_types`, else `sliding_window_pattern` (default 6).

use super::{gguf_rope_scaling, Architecture, Common};
use crate::kv_cache::AttentionKind;
use crate::model::rope::{RopeScaling, RopeSpec};
use crate::model::source::{GgufMeta, HfConfig, TensorSource};
use crate::model::spec::{Activation, ModelSpec, TensorNames, GGUF_NAMES, HF_NAMES};
use crate::{EngineError, Result};

pub static ARCH: Architecture = Architecture {
    name: "gemma3",
    gguf: &["gemma3"],
    hf: &["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"],
    from_gguf: Some(from_gguf),
    from_hf,
};

/// transformers' Gemma 3 names: the attention's post-norm is `post_attention_layernorm`, the
/// MLP's pre-norm `pre_feedforward_layernorm`.
static HF_GEMMA3_NAMES: TensorNames = TensorNames {
    attn_post_norm: Some("post_attention_layernorm"),
    ffn_norm: "pre_feedforward_layernorm",
    ffn_post_norm: Some("post_feedforward_layernorm"),
    ..HF_NAMES
};

const LOCAL_ROPE: usize = 0;
const GLOBAL_ROPE: usize = 1;

/// Marks local layers and gives every layer its RoPE.
fn interleave(spec: &mut ModelSpec, window: usize, local: impl Fn(usize) -> bool) {
    for (il, l) in spec.layers.iter_mut().enumerate() {
        if local(il) {
            l.attention = AttentionKind::Sliding(window);
            l.rope = LOCAL_ROPE;
        } else {
            l.attention = AttentionKind::Full;
            l.rope = GLOBAL_ROPE;
        }
    }
}

fn gemma_common(spec: &mut ModelSpec, hidden: usize) {
    spec.embed_scale = Some((hidden as f32).sqrt());
    spec.activation = Activation::GeluTanh;
    spec.qk_norm = true;
    spec.post_norms = true;
}

fn from_gguf(m: &GgufMeta, src: &mut dyn TensorSource) -> Result<ModelSpec> {
    let c = Common::gguf(m, src)?;
    let local = RopeSpec::new(c.head_dim, m.f32("rope.freq_base_swa").unwrap_or(10000.0), &RopeScaling::None, false)?;
    let global = RopeSpec::new(c.head_dim, c.rope_theta, &gguf_rope_scaling(m)?, false)?;
    let mut spec = c.spec("gemma3", local, &GGUF_NAMES);
    spec.ropes.push(global);
    gemma_common(&mut spec, c.hidden_size);
    spec.attn_scale = 1.0 / (c.head_dim as f32).sqrt();
    spec.final_logit_softcap = m.f32("final_logit_softcapping");
    let window = m.need_usize("attention.sliding_window")?;
    match (m.bools("attention.sliding_window_pattern"), m.usize("attention.sliding_window_pattern")) {
        (Some(flags), _) => {
            if flags.len() != spec.num_layers() {
                return Err(EngineError::Load(format!(
                    "gemma3.attention.sliding_window_pattern has {} entries for {} layers",
                    flags.len(),
                    spec.num_layers()
                )));
            }
            interleave(&mut spec, window, |il| flags[il]);
        }
        (None, period) => {
            let period = period.unwrap_or(6).max(1);
            interleave(&mut spec, window, |il| il % period < period - 1);
        }
    }
    Ok(spec)
}

fn from_hf(cfg: &HfConfig) -> Result<ModelSpec> {
    let c = Common::hf(cfg)?;
    let local =
        RopeSpec::new(c.head_dim, cfg.f32("rope_local_base_freq").unwrap_or(10000.0), &RopeScaling::None, false)?;
    let scaling = RopeScaling::from_hf(&cfg.0["rope_scaling"], c.max_position_embeddings)?;
    let global = RopeSpec::new(c.head_dim, c.rope_theta, &scaling, false)?;
    let mut spec = c.spec("gemma3", local, &HF_GEMMA3_NAMES);
    spec.ropes.push(global);
    gemma_common(&mut spec, c.hidden_size);
    spec.norm_weight_offset = 1.0;
    let scalar = cfg.f32("query_pre_attn_scalar").unwrap_or(c.head_dim as f32);
    spec.attn_scale = 1.0 / scalar.sqrt();
    spec.final_logit_softcap = cfg.f32("final_logit_softcapping");
    if let Some(act) = cfg.str("hidden_activation").filter(|a| !matches!(*a, "gelu_pytorch_tanh" | "gelu_tanh")) {
        return Err(EngineError::Unsupported(format!("gemma3 hidden_activation {act:?}")));
    }
    let window = cfg.need_usize("sliding_window")?;
    match cfg.0["layer_types"].as_array() {
        Some(types) => {
            let local: Vec<bool> = types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect();
            if local.len() != spec.num_layers() {
                return Err(EngineError::Load(format!(
                    "config.json: layer_types has {} entries for {} layers",
                    local.len(),
                    spec.num_layers()
                )));
            }
            interleave(&mut spec, window, |il| local[il]);
        }
        None => {
            let period = cfg.usize("sliding_window_pattern").unwrap_or(6).max(1);
            interleave(&mut spec, window, |il| il % period < period - 1);
        }
    }
    Ok(spec)
}
