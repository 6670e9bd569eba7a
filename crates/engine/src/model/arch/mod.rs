//! The architecture registry. Each architecture is one file named after it that declares an
//! [`Architecture`]: the names it goes by in GGUF (`general.architecture`) and in Hugging Face
//! `config.json` (`architectures`), and how to read its [`ModelSpec`] from either. Loaders
//! dispatch here; an unknown name gets an error listing what is supported.
//!
//! The shared readers below take the hyperparameters every llama-like model has (llama.cpp's
//! `{arch}.*` keys, transformers' config fields); each architecture adjusts what differs.

use crate::kv_cache::AttentionKind;
use crate::model::rope::{RopeScaling, RopeSpec};
use crate::model::source::{GgufMeta, HfConfig, TensorSource};
use crate::model::spec::{Activation, LayerSpec, ModelSpec, TensorNames};
use crate::{EngineError, Result};

mod gemma3;
mod gpt_oss;
mod llama;
mod mistral;
mod phi3;
mod qwen2;
mod qwen3;

/// Reads a GGUF file's spec (metadata plus tensors such as `rope_freqs.weight`).
pub type FromGguf = fn(&GgufMeta, &mut dyn TensorSource) -> Result<ModelSpec>;
/// Reads a Hugging Face folder's spec from its `config.json`.
pub type FromHf = fn(&HfConfig) -> Result<ModelSpec>;

/// One registered architecture.
pub struct Architecture {
    pub name: &'static str,
    /// `general.architecture` values.
    pub gguf: &'static [&'static str],
    /// `config.json` `architectures` entries.
    pub hf: &'static [&'static str],
    pub from_gguf: Option<FromGguf>,
    pub from_hf: FromHf,
}

/// Every architecture wick runs.
pub static ARCHITECTURES: &[&Architecture] =
    &[&llama::ARCH, &mistral::ARCH, &qwen2::ARCH, &qwen3::ARCH, &gemma3::ARCH, &phi3::ARCH, &gpt_oss::ARCH];

/// The architecture of a GGUF file's `general.architecture`.
pub fn by_gguf(name: &str) -> Result<(&'static Architecture, FromGguf)> {
    ARCHITECTURES.iter().find_map(|a| a.from_gguf.filter(|_| a.gguf.contains(&name)).map(|f| (*a, f))).ok_or_else(
        || {
            let names: Vec<&str> = ARCHITECTURES.iter().flat_map(|a| a.gguf.iter().copied()).collect();
            EngineError::Unsupported(format!("GGUF architecture {name:?} (supported: {})", names.join(", ")))
        },
    )
}

/// The architecture of a `config.json`'s `architectures` list (or, for configs without one,
/// its `model_type`).
pub fn by_hf(cfg: &serde_json::Value) -> Result<&'static Architecture> {
    let listed: Vec<&str> =
        cfg["architectures"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    let by_type = || {
        let t = cfg["model_type"].as_str().filter(|_| listed.is_empty())?;
        ARCHITECTURES.iter().find(|a| a.name == t).copied()
    };
    let found = listed.iter().find_map(|name| ARCHITECTURES.iter().find(|a| a.hf.contains(name)).copied());
    found.or_else(by_type).ok_or_else(|| {
        let names: Vec<&str> = ARCHITECTURES.iter().flat_map(|a| a.hf.iter().copied()).collect();
        EngineError::Unsupported(format!("config.json architectures {listed:?} (supported: {})", names.join(", ")))
    })
}

fn load_err(msg: impl Into<String>) -> EngineError {
    EngineError::Load(msg.into())
}

/// The hyperparameters every dense architecture shares.
pub(crate) struct Common {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
}

impl Common {
    /// From llama.cpp's `{arch}.*` keys; the vocabulary from `token_embd`'s shape.
    pub fn gguf(m: &GgufMeta, src: &dyn TensorSource) -> Result<Self> {
        let embd = src.shape("token_embd.weight").ok_or_else(|| load_err("missing tensor token_embd.weight"))?;
        let [vocab_size, hidden_size] = embd[..] else {
            return Err(load_err(format!("token_embd.weight has shape {embd:?}")));
        };
        let num_heads = m.need_usize("attention.head_count")?;
        if num_heads == 0 {
            return Err(load_err(format!("{}.attention.head_count is 0", m.arch)));
        }
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size: m.need_usize("feed_forward_length")?,
            num_layers: m.need_usize("block_count")?,
            num_heads,
            num_kv_heads: m.usize("attention.head_count_kv").unwrap_or(num_heads),
            head_dim: m.usize("attention.key_length").unwrap_or(hidden_size / num_heads),
            max_position_embeddings: m.usize("context_length").unwrap_or(4096),
            rms_norm_eps: m.need_f32("attention.layer_norm_rms_epsilon")?,
            rope_theta: m.f32("rope.freq_base").unwrap_or(10000.0),
        })
    }

    /// From transformers' config fields.
    pub fn hf(c: &HfConfig) -> Result<Self> {
        let hidden_size = c.need_usize("hidden_size")?;
        let num_heads = c.need_usize("num_attention_heads")?;
        if num_heads == 0 {
            return Err(load_err("config.json: num_attention_heads is 0"));
        }
        Ok(Self {
            vocab_size: c.need_usize("vocab_size")?,
            hidden_size,
            intermediate_size: c.need_usize("intermediate_size")?,
            num_layers: c.need_usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads: c.usize("num_key_value_heads").unwrap_or(num_heads),
            head_dim: c.usize("head_dim").unwrap_or(hidden_size / num_heads),
            max_position_embeddings: c.usize("max_position_embeddings").unwrap_or(4096),
            rms_norm_eps: c.f32("rms_norm_eps").unwrap_or(1e-6),
            rope_theta: c.f32("rope_theta").unwrap_or(10000.0),
        })
    }

    /// A plain pre-norm SwiGLU spec with one RoPE and full attention on every layer.
    pub fn spec(&self, arch: &'static str, rope: RopeSpec, names: &'static TensorNames) -> ModelSpec {
        ModelSpec {
            arch,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            norm_weight_offset: 0.0,
            embed_scale: None,
            activation: Activation::Silu,
            attn_scale: 1.0 / (self.head_dim as f32).sqrt(),
            final_logit_softcap: None,
            qk_norm: false,
            post_norms: false,
            attn_sinks: false,
            moe: None,
            layers: vec![LayerSpec { attention: AttentionKind::Full, rope: 0 }; self.num_layers],
            ropes: vec![rope],
            names,
        }
    }
}

/// llama.cpp's `{arch}.rope.scaling.*` keys (`none`, `linear`, `yarn`).
pub(crate) fn gguf_rope_scaling(m: &GgufMeta) -> Result<RopeScaling> {
    let factor = m.f32("rope.scaling.factor").unwrap_or(1.0);
    match m.string("rope.scaling.type").as_deref() {
        None | Some("none") => Ok(RopeScaling::None),
        Some(_) if factor == 1.0 => Ok(RopeScaling::None),
        Some("linear") => Ok(RopeScaling::Linear { factor }),
        Some("yarn") => Ok(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: m.need_f32("rope.scaling.original_context_length")?,
            // llama.cpp writes but does not read the betas: it always uses 32 and 1.
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            truncate: true,
        }),
        Some(other) => Err(EngineError::Unsupported(format!("{}.rope.scaling.type {other:?}", m.arch))),
    }
}

/// The rotary dimension of a GGUF model (`rope.dimension_count`, default the head size).
pub(crate) fn gguf_rot_dim(m: &GgufMeta, head_dim: usize) -> Result<usize> {
    let rot = m.usize("rope.dimension_count").unwrap_or(head_dim);
    if rot > head_dim {
        return Err(load_err(format!("{}.rope.dimension_count {rot} exceeds the head size {head_dim}", m.arch)));
    }
    Ok(rot)
}

/// transformers' Qwen-style sliding window: `use_sliding_window`, applied to layers from
/// `max_window_layers` on.
pub(crate) fn hf_qwen_windows(c: &HfConfig, spec: &mut ModelSpec) {
    if c.bool("use_sliding_window") != Some(true) {
        return;
    }
    if let Some(w) = c.usize("sliding_window") {
        let from = c.usize("max_window_layers").unwrap_or(0);
        for l in spec.layers.iter_mut().skip(from) {
            l.attention = AttentionKind::Sliding(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_by_name_and_clear_errors_for_unknown_ones() {
        assert_eq!(by_gguf("qwen3").unwrap().0.name, "qwen3");
        assert_eq!(by_gguf("gemma3").unwrap().0.name, "gemma3");
        let err = by_gguf("mamba").err().unwrap().to_string();
        assert!(err.contains("\"mamba\"") && err.contains("llama") && err.contains("phi3"), "{err}");
        let cfg = serde_json::json!({"architectures": ["Qwen2ForCausalLM"]});
        assert_eq!(by_hf(&cfg).unwrap().name, "qwen2");
        let err = by_hf(&serde_json::json!({"architectures": ["BertModel"]})).err().unwrap().to_string();
        assert!(err.contains("BertModel") && err.contains("Gemma3ForCausalLM"), "{err}");
    }
}
