//! phi3 (Phi-3, Phi-3.5, Phi-4-mini): fused `qkv` and `gate_up` projections (GGUF stores the
//! fused MLP input under `ffn_up` with twice the rows), NeoX RoPE on the first `rot_dim`
//! features of each head (partial rotary), and LongRoPE (`longrope` / `su`): per-frequency
//! factors, long or short by the served context, with their attention factor.
//!
//! Sliding window: llama.cpp disables it for phi3 GGUF files (it attends fully), and so does
//! wick there; a Hugging Face config's `sliding_window` is honoured as transformers does.

use super::{gguf_rope_scaling, gguf_rot_dim, Architecture, Common};
use crate::kv_cache::AttentionKind;
use crate::model::rope::{RopeScaling, RopeSpec};
use crate::model::source::{GgufMeta, HfConfig, TensorSource};
use crate::model::spec::{ModelSpec, GGUF_NAMES, HF_NAMES};
use crate::Result;

pub static ARCH: Architecture =
    Architecture { name: "phi3", gguf: &["phi3"], hf: &["Phi3ForCausalLM"], from_gguf: Some(from_gguf), from_hf };

fn from_gguf(m: &GgufMeta, src: &mut dyn TensorSource) -> Result<ModelSpec> {
    let c = Common::gguf(m, src)?;
    let rot = gguf_rot_dim(m, c.head_dim)?;
    let orig = m.usize("rope.scaling.original_context_length");
    let long = orig.is_some_and(|o| c.max_position_embeddings > o);
    let factors = src.read(if long { "rope_factors_long.weight" } else { "rope_factors_short.weight" })?;
    let scaling = match (factors, orig) {
        (Some(f), Some(orig)) => RopeScaling::LongRope {
            factors: f.to_f32()?.flatten_all()?.to_vec1()?,
            factor: c.max_position_embeddings as f32 / orig as f32,
            original_max_position_embeddings: orig as f32,
            attention_factor: m.f32("rope.scaling.attn_factor"),
        },
        _ => gguf_rope_scaling(m)?,
    };
    Ok(c.spec("phi3", RopeSpec::new(rot, c.rope_theta, &scaling, false)?, &GGUF_NAMES))
}

fn from_hf(cfg: &HfConfig) -> Result<ModelSpec> {
    let c = Common::hf(cfg)?;
    let rot = (c.head_dim as f32 * cfg.f32("partial_rotary_factor").unwrap_or(1.0)) as usize;
    let scaling = RopeScaling::from_hf(&cfg.0["rope_scaling"], c.max_position_embeddings)?;
    let mut spec = c.spec("phi3", RopeSpec::new(rot, c.rope_theta, &scaling, false)?, &HF_NAMES);
    if let Some(w) = cfg.usize("sliding_window") {
        spec.layers.iter_mut().for_each(|l| l.attention = AttentionKind::Sliding(w));
    }
    Ok(spec)
}
