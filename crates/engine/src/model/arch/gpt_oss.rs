//! gpt-oss (OpenAI's open-weight gpt-oss-20b and -120b; llama.cpp `LLM_ARCH_OPENAI_MOE`): a
//! mixture of experts on every layer (a router with a bias picks the top 4 of 32 or 128
//! experts per token, weights softmax over the chosen logits; experts are clamped-SwiGLU MLPs
//! with biases, stored as MXFP4), attention with q/k/v/o biases and one learned sink logit per
//! head, a sliding window of 128 on alternating layers (even ones), YaRN RoPE (NeoX halves),
//! head size from the file (64; `n_heads · head_dim` differs from the hidden size), untied
//! LM head.
//!
//! GGUF: `gpt-oss.expert_count`, `.expert_used_count`, `.expert_feed_forward_length`,
//! `.attention.sliding_window`, `.attention.key_length`; the FFN input norm is
//! `post_attention_norm`. Sliding layers: `.attention.sliding_window_pattern` if present
//! (period or per-layer bools), else llama.cpp's default of 2 (layer `il` local iff
//! `il % 2 == 0`). YaRN's betas are written by the converter but llama.cpp always uses 32
//! and 1 (as `gguf_rope_scaling` does).
//!
//! Hugging Face: `GptOssForCausalLM` with `num_local_experts`, `num_experts_per_tok`
//! (or `experts_per_token`), `swiglu_limit`, `layer_types`, `sliding_window`,
//! `rope_scaling` (`yarn`, `truncate: false`); experts as `*_blocks`/`*_scales` MXFP4 or
//! floats (see `HfSource`).

use super::{gguf_rope_scaling, Architecture, Common};
use crate::kv_cache::AttentionKind;
use crate::model::rope::{RopeScaling, RopeSpec};
use crate::model::source::{GgufMeta, HfConfig, TensorSource};
use crate::model::spec::{Activation, ModelSpec, MoeSpec, TensorNames, GGUF_NAMES, HF_NAMES};
use crate::{EngineError, Result};

pub static ARCH: Architecture = Architecture {
    name: "gpt-oss",
    gguf: &["gpt-oss"],
    hf: &["GptOssForCausalLM"],
    from_gguf: Some(from_gguf),
    from_hf,
};

/// The clamped SwiGLU's constants in transformers' `GptOssExperts` (alpha is not configurable;
/// the limit is `swiglu_limit`).
pub const ALPHA: f32 = 1.702;
pub const LIMIT: f32 = 7.0;

/// llama.cpp's names; the FFN input norm is `post_attention_norm` (there is no `ffn_norm`).
static GGUF_GPT_OSS_NAMES: TensorNames =
    TensorNames { ffn_norm: "post_attention_norm", attn_post_norm: None, ffn_post_norm: None, ..GGUF_NAMES };

fn gpt_oss_common(spec: &mut ModelSpec, moe: MoeSpec, limit: f32) -> Result<()> {
    if moe.top_k == 0 || moe.top_k > moe.num_experts {
        return Err(EngineError::Load(format!("gpt-oss: {} experts per token of {}", moe.top_k, moe.num_experts)));
    }
    spec.moe = Some(moe);
    spec.activation = Activation::ClampedSwiglu { alpha: ALPHA, limit };
    spec.attn_sinks = true;
    Ok(())
}

fn window_layers(spec: &mut ModelSpec, window: usize, local: impl Fn(usize) -> bool) {
    for (il, l) in spec.layers.iter_mut().enumerate() {
        l.attention = if local(il) { AttentionKind::Sliding(window) } else { AttentionKind::Full };
    }
}

fn from_gguf(m: &GgufMeta, src: &mut dyn TensorSource) -> Result<ModelSpec> {
    let c = Common::gguf(m, src)?;
    let scaling = gguf_rope_scaling(m)?;
    let mut spec = c.spec("gpt-oss", RopeSpec::new(c.head_dim, c.rope_theta, &scaling, false)?, &GGUF_GPT_OSS_NAMES);
    let moe = MoeSpec {
        num_experts: m.need_usize("expert_count")?,
        top_k: m.need_usize("expert_used_count")?,
        expert_ff: m.need_usize("expert_feed_forward_length")?,
    };
    gpt_oss_common(&mut spec, moe, LIMIT)?;
    let window = m.need_usize("attention.sliding_window")?;
    let n = spec.num_layers();
    match (m.bools("attention.sliding_window_pattern"), m.usize("attention.sliding_window_pattern")) {
        (Some(flags), _) => {
            if flags.len() != n {
                return Err(EngineError::Load(format!(
                    "gpt-oss.attention.sliding_window_pattern has {} entries for {n} layers",
                    flags.len()
                )));
            }
            window_layers(&mut spec, window, |il| flags[il]);
        }
        (None, period) => {
            let period = period.unwrap_or(2).max(1);
            window_layers(&mut spec, window, |il| il % period < period - 1);
        }
    }
    Ok(spec)
}

fn from_hf(cfg: &HfConfig) -> Result<ModelSpec> {
    let mut c = Common::hf(cfg)?;
    // gpt-oss configs carry `intermediate_size` as the experts' width.
    let expert_ff = c.intermediate_size;
    c.rms_norm_eps = cfg.f32("rms_norm_eps").unwrap_or(1e-5);
    let scaling = RopeScaling::from_hf(&cfg.0["rope_scaling"], c.max_position_embeddings)?;
    let mut spec = c.spec("gpt-oss", RopeSpec::new(c.head_dim, c.rope_theta, &scaling, false)?, &HF_NAMES);
    let num_experts = cfg.need_usize("num_local_experts")?;
    let top_k = cfg
        .usize("num_experts_per_tok")
        .or(cfg.usize("experts_per_token"))
        .ok_or_else(|| EngineError::Load("config.json: num_experts_per_tok is missing".into()))?;
    let limit = cfg.f32("swiglu_limit").unwrap_or(LIMIT);
    gpt_oss_common(&mut spec, MoeSpec { num_experts, top_k, expert_ff }, limit)?;
    let window = cfg.usize("sliding_window").unwrap_or(128);
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
            window_layers(&mut spec, window, |il| local[il]);
        }
        None => window_layers(&mut spec, window, |il| il % 2 == 0),
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gpt-oss-20b's config.json (transformers), trimmed to what the spec reads.
    fn config_20b() -> serde_json::Value {
        let types: Vec<&str> =
            (0..24).map(|i| if i % 2 == 0 { "sliding_attention" } else { "full_attention" }).collect();
        serde_json::json!({
            "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
            "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24,
            "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
            "num_local_experts": 32, "num_experts_per_tok": 4, "experts_per_token": 4,
            "vocab_size": 201088, "rms_norm_eps": 1e-05, "rope_theta": 150000,
            "max_position_embeddings": 131072, "sliding_window": 128, "swiglu_limit": 7.0,
            "layer_types": types, "attention_bias": true, "tie_word_embeddings": false,
            "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false}
        })
    }

    #[test]
    fn the_20b_config_gives_its_spec() {
        let cfg = config_20b();
        let spec = from_hf(&HfConfig(&cfg)).unwrap();
        assert_eq!(spec.moe, Some(MoeSpec { num_experts: 32, top_k: 4, expert_ff: 2880 }));
        assert_eq!(spec.activation, Activation::ClampedSwiglu { alpha: 1.702, limit: 7.0 });
        assert!(spec.attn_sinks);
        assert_eq!((spec.num_heads, spec.num_kv_heads, spec.head_dim), (64, 8, 64));
        assert_eq!(spec.layers[0].attention, AttentionKind::Sliding(128));
        assert_eq!(spec.layers[1].attention, AttentionKind::Full);
        assert_eq!(spec.layers[23].attention, AttentionKind::Full);
        assert!((spec.attn_scale - 0.125).abs() < 1e-7);
        // YaRN without truncation: the ramp's ends are not whole dimensions.
        let y = &spec.ropes[0];
        assert!((y.mscale - (1.0 + 0.1 * 32f32.ln())).abs() < 1e-6);
        let base = RopeSpec::new(64, 150000.0, &RopeScaling::None, false).unwrap().inv_freq;
        assert_eq!(y.inv_freq[0], base[0]);
        assert!((y.inv_freq[31] - base[31] / 32.0).abs() < 1e-12);
        let truncated = RopeScaling::Yarn {
            factor: 32.0,
            original_max_position_embeddings: 4096.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            truncate: true,
        };
        let t = RopeSpec::new(64, 150000.0, &truncated, false).unwrap();
        assert!(t.inv_freq.iter().zip(&y.inv_freq).any(|(a, b)| a != b));
        let mut bad = cfg.clone();
        bad["num_experts_per_tok"] = serde_json::json!(33);
        assert!(from_hf(&HfConfig(&bad)).is_err());
    }
}
