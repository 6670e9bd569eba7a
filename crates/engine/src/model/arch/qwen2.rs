//! qwen2 (Qwen 2 and 2.5): llama's layers with q/k/v biases and NeoX RoPE in both formats;
//! the optional sliding window of transformers' `use_sliding_window`.

use super::{gguf_rope_scaling, gguf_rot_dim, hf_qwen_windows, Architecture, Common};
use crate::model::rope::{RopeScaling, RopeSpec};
use crate::model::source::{GgufMeta, HfConfig, TensorSource};
use crate::model::spec::{ModelSpec, GGUF_NAMES, HF_NAMES};
use crate::Result;

pub static ARCH: Architecture =
    Architecture { name: "qwen2", gguf: &["qwen2"], hf: &["Qwen2ForCausalLM"], from_gguf: Some(from_gguf), from_hf };

fn from_gguf(m: &GgufMeta, src: &mut dyn TensorSource) -> Result<ModelSpec> {
    let c = Common::gguf(m, src)?;
    let rope = RopeSpec::new(gguf_rot_dim(m, c.head_dim)?, c.rope_theta, &gguf_rope_scaling(m)?, false)?;
    Ok(c.spec("qwen2", rope, &GGUF_NAMES))
}

fn from_hf(cfg: &HfConfig) -> Result<ModelSpec> {
    let c = Common::hf(cfg)?;
    let scaling = RopeScaling::from_hf(&cfg.0["rope_scaling"], c.max_position_embeddings)?;
    let mut spec = c.spec("qwen2", RopeSpec::new(c.head_dim, c.rope_theta, &scaling, false)?, &HF_NAMES);
    hf_qwen_windows(cfg, &mut spec);
    Ok(spec)
}
