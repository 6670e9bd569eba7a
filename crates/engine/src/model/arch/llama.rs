//! llama: Llama 2, Llama 3.x (`llama3` RoPE scaling, or its GGUF `rope_freqs.weight`
//! divisors), SmolLM2, and Mistral files converted by llama.cpp (which reads no sliding window
//! for `llama`). GGUF stores q/k permuted for interleaved RoPE; HF weights use NeoX halves.

use super::{gguf_rope_scaling, gguf_rot_dim, Architecture, Common};
use crate::model::rope::{RopeScaling, RopeSpec};
use crate::model::source::{GgufMeta, HfConfig, TensorSource};
use crate::model::spec::{ModelSpec, GGUF_NAMES, HF_NAMES};
use crate::{EngineError, Result};

pub static ARCH: Architecture =
    Architecture { name: "llama", gguf: &["llama"], hf: &["LlamaForCausalLM"], from_gguf: Some(from_gguf), from_hf };

fn from_gguf(m: &GgufMeta, src: &mut dyn TensorSource) -> Result<ModelSpec> {
    let c = Common::gguf(m, src)?;
    let rot = gguf_rot_dim(m, c.head_dim)?;
    if rot != c.head_dim {
        return Err(EngineError::Load(format!(
            "llama.rope.dimension_count {rot} must equal the head size {}",
            c.head_dim
        )));
    }
    let scaling = match src.read("rope_freqs.weight")? {
        Some(w) => RopeScaling::Divisors(w.to_f32()?.flatten_all()?.to_vec1()?),
        None => gguf_rope_scaling(m)?,
    };
    Ok(c.spec("llama", RopeSpec::new(rot, c.rope_theta, &scaling, true)?, &GGUF_NAMES))
}

fn from_hf(cfg: &HfConfig) -> Result<ModelSpec> {
    let c = Common::hf(cfg)?;
    let scaling = RopeScaling::from_hf(&cfg.0["rope_scaling"], c.max_position_embeddings)?;
    Ok(c.spec("llama", RopeSpec::new(c.head_dim, c.rope_theta, &scaling, false)?, &HF_NAMES))
}
