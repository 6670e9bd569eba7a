//! mistral (Hugging Face `MistralForCausalLM`): llama's layers with a sliding window on every
//! layer where the config sets one (Mistral 7B v0.1: 4096; later versions: none). Mistral GGUF
//! files say `llama` and load through that architecture, as llama.cpp does.

use super::{Architecture, Common};
use crate::kv_cache::AttentionKind;
use crate::model::rope::{RopeScaling, RopeSpec};
use crate::model::source::HfConfig;
use crate::model::spec::{ModelSpec, HF_NAMES};
use crate::Result;

pub static ARCH: Architecture =
    Architecture { name: "mistral", gguf: &[], hf: &["MistralForCausalLM"], from_gguf: None, from_hf };

fn from_hf(cfg: &HfConfig) -> Result<ModelSpec> {
    let c = Common::hf(cfg)?;
    let scaling = RopeScaling::from_hf(&cfg.0["rope_scaling"], c.max_position_embeddings)?;
    let mut spec = c.spec("mistral", RopeSpec::new(c.head_dim, c.rope_theta, &scaling, false)?, &HF_NAMES);
    if let Some(w) = cfg.usize("sliding_window") {
        spec.layers.iter_mut().for_each(|l| l.attention = AttentionKind::Sliding(w));
    }
    Ok(spec)
}
