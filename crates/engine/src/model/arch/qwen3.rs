//! qwen3: Qwen 2's layout without biases, plus a per-head RMSNorm of q and k before RoPE;
//! the head size is its own hyperparameter (`key_length` / `head_dim`), not hidden / heads.

use super::{gguf_rope_scaling, gguf_rot_dim, hf_qwen_windows, Architecture, Common};
use crate::model::rope::{RopeScaling, RopeSpec};
use crate::model::source::{GgufMeta, HfConfig, TensorSource};
use crate::model::spec::{ModelSpec, GGUF_NAMES, HF_NAMES};
use crate::Result;

pub static ARCH: Architecture = Architecture {
    name: "qwen3",
    gguf: &["qwen3"],
    hf: &["Qwen3ForCausalLM", "Qwen3Model"],
    from_gguf: Some(from_gguf),
    from_hf,
};

fn from_gguf(m: &GgufMeta, src: &mut dyn TensorSource) -> Result<ModelSpec> {
    let c = Common::gguf(m, src)?;
    let rope = RopeSpec::new(gguf_rot_dim(m, c.head_dim)?, c.rope_theta, &gguf_rope_scaling(m)?, false)?;
    let mut spec = c.spec("qwen3", rope, &GGUF_NAMES);
    spec.qk_norm = true;
    Ok(spec)
}

fn from_hf(cfg: &HfConfig) -> Result<ModelSpec> {
    let c = Common::hf(cfg)?;
    let scaling = RopeScaling::from_hf(&cfg.0["rope_scaling"], c.max_position_embeddings)?;
    let mut spec = c.spec("qwen3", RopeSpec::new(c.head_dim, c.rope_theta, &scaling, false)?, &HF_NAMES);
    spec.qk_norm = true;
    hf_qwen_windows(cfg, &mut spec);
    Ok(spec)
}
