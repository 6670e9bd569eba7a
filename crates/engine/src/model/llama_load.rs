//! Reading a llama-family model from a GGUF file (metadata `llama.*`, tensors `blk.N.*`,
//! quantized weights kept quantized, q/k stored permuted for interleaved RoPE) or from a
//! Hugging Face folder (config.json + *.safetensors, NeoX RoPE), into a [`Llama`].

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use crate::model::layers::{RmsNorm, Rope};
use crate::model::llama::{Llama, LlamaHparams, LlamaLayer};
use crate::model::weights::{LinearBuilder, RawWeight, WeightOptions};
use crate::{EngineError, Result};

fn load_err(msg: impl Into<String>) -> EngineError {
    EngineError::Load(msg.into())
}

/// Bytes f32 copies of every linear weight would take.
fn dense_bytes(hp: &LlamaHparams) -> usize {
    let attn = hp.hidden_size * (hp.num_heads + 2 * hp.num_kv_heads) * hp.head_dim
        + hp.num_heads * hp.head_dim * hp.hidden_size;
    let mlp = 3 * hp.hidden_size * hp.intermediate_size;
    4 * (hp.num_layers * (attn + mlp) + hp.vocab_size * hp.hidden_size)
}

/// Tensor names of one storage convention.
struct Names {
    embed: &'static str,
    norm: &'static str,
    lm_head: &'static str,
    /// (attn_norm, q, k, v, o, ffn_norm, gate, up, down) for layer i.
    layer: fn(usize) -> [String; 9],
}

const GGUF_NAMES: Names = Names {
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    lm_head: "output.weight",
    layer: |i| {
        ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
            .map(|n| format!("blk.{i}.{n}.weight"))
    },
};

const HF_NAMES: Names = Names {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    layer: |i| {
        [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ]
        .map(|n| format!("model.layers.{i}.{n}.weight"))
    },
};

/// Assembles the model from a tensor source (`get` returns None for absent tensors).
fn assemble(
    hp: LlamaHparams,
    names: &Names,
    opts: &WeightOptions,
    mut get: impl FnMut(&str) -> Result<Option<RawWeight>>,
) -> Result<Llama> {
    let mut need = |name: &str| get(name)?.ok_or_else(|| load_err(format!("missing tensor {name}")));
    let embed_raw = need(names.embed)?;
    let builder = LinearBuilder::new(opts, dense_bytes(&hp));
    let norm_of = |w: RawWeight| -> Result<RmsNorm> {
        let w = match w {
            RawWeight::Quant(q) => q.dequantize(&Device::Cpu)?,
            RawWeight::Dense(t) => t.to_dtype(DType::F32)?,
        };
        RmsNorm::new(&w, hp.rms_norm_eps)
    };
    let embed = match &embed_raw {
        RawWeight::Quant(q) => q.dequantize(&Device::Cpu)?,
        RawWeight::Dense(t) => t.to_dtype(DType::F32)?,
    };
    if embed.dims2()? != (hp.vocab_size, hp.hidden_size) {
        return Err(load_err(format!("embedding shape {:?} does not match the config", embed.shape())));
    }
    let mut layers = Vec::with_capacity(hp.num_layers);
    for i in 0..hp.num_layers {
        let [an, q, k, v, o, fnn, g, u, d] = (names.layer)(i);
        layers.push(LlamaLayer {
            attn_norm: norm_of(need(&an)?)?,
            qkv: builder.build(vec![need(&q)?, need(&k)?, need(&v)?], None)?,
            o: builder.build(vec![need(&o)?], None)?,
            ffn_norm: norm_of(need(&fnn)?)?,
            gate_up: builder.build(vec![need(&g)?, need(&u)?], None)?,
            down: builder.build(vec![need(&d)?], None)?,
        });
    }
    let norm = norm_of(need(names.norm)?)?;
    let lm_head = match get(names.lm_head)? {
        Some(w) => builder.build(vec![w], None)?,
        None => builder.build(vec![embed_raw], Some(embed.clone()))?,
    };
    Ok(Llama::new(hp, embed, layers, norm, lm_head))
}

/// Loads a llama-family model from a parsed GGUF file.
pub fn llama_from_gguf<R: Read + Seek>(content: &Content, reader: &mut R, opts: &WeightOptions) -> Result<Llama> {
    let md = &content.metadata;
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if arch != "llama" {
        return Err(EngineError::Unsupported(format!("GGUF architecture {arch:?} (supported: llama)")));
    }
    let get_u = |k: &str| -> Option<usize> {
        md.get(&format!("llama.{k}"))
            .and_then(|v| v.to_u32().ok().map(|x| x as usize).or_else(|| v.to_u64().ok().map(|x| x as usize)))
    };
    let need_u = |k: &str| get_u(k).ok_or_else(|| load_err(format!("GGUF metadata llama.{k} missing")));
    let get_f = |k: &str| md.get(&format!("llama.{k}")).and_then(|v: &Value| v.to_f32().ok());
    let embd = content.tensor_infos.get("token_embd.weight").ok_or_else(|| load_err("missing token_embd.weight"))?;
    let (vocab_size, hidden_size) = embd.shape.dims2()?;
    let num_heads = need_u("attention.head_count")?;
    let head_dim = get_u("attention.key_length").unwrap_or(hidden_size / num_heads.max(1));
    let intermediate_size = match get_u("feed_forward_length") {
        Some(n) => n,
        None => {
            content
                .tensor_infos
                .get("blk.0.ffn_gate.weight")
                .ok_or_else(|| load_err("missing blk.0.ffn_gate.weight"))?
                .shape
                .dims2()?
                .0
        }
    };
    let rot_dim = get_u("rope.dimension_count").unwrap_or(head_dim);
    let mut inv_freq = Rope::default_inv_freq(rot_dim, get_f("rope.freq_base").unwrap_or(10000.0));
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        // Llama 3.1+ long-context scaling, stored as per-frequency divisors.
        let f: Vec<f32> = content
            .tensor(reader, "rope_freqs.weight", &Device::Cpu)?
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        if f.len() != inv_freq.len() {
            return Err(load_err("rope_freqs.weight has the wrong length"));
        }
        inv_freq.iter_mut().zip(&f).for_each(|(x, d)| *x /= d);
    }
    let hp = LlamaHparams {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers: need_u("block_count")?,
        num_heads,
        num_kv_heads: get_u("attention.head_count_kv").unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        max_position_embeddings: get_u("context_length").unwrap_or(4096),
        rope_inv_freq: full_rot(inv_freq, head_dim)?,
        rope_interleaved: true,
        sliding_window: None,
    };
    assemble(hp, &GGUF_NAMES, opts, |name| {
        if !content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        Ok(Some(RawWeight::Quant(content.tensor(reader, name, &Device::Cpu)?)))
    })
}

/// Partial rotary dimensions are not supported by the llama path (no llama model uses them).
fn full_rot(inv_freq: Vec<f32>, head_dim: usize) -> Result<Vec<f32>> {
    if inv_freq.len() * 2 != head_dim {
        return Err(EngineError::Unsupported(format!(
            "rotary dimension {} with head dim {head_dim}",
            inv_freq.len() * 2
        )));
    }
    Ok(inv_freq)
}

/// Hyperparameters from a Hugging Face `config.json` of a llama or mistral model.
pub fn llama_hparams_from_hf(cfg: &Json) -> Result<LlamaHparams> {
    let model_type = cfg["model_type"].as_str().unwrap_or("");
    if !matches!(model_type, "llama" | "mistral") {
        return Err(EngineError::Unsupported(format!("model_type {model_type:?} (supported: llama, mistral)")));
    }
    for flag in ["attention_bias", "mlp_bias"] {
        if cfg[flag].as_bool() == Some(true) {
            return Err(EngineError::Unsupported(format!("llama with {flag}")));
        }
    }
    let need =
        |k: &str| cfg[k].as_u64().map(|x| x as usize).ok_or_else(|| load_err(format!("config.json: {k} missing")));
    let hidden_size = need("hidden_size")?;
    let num_heads = need("num_attention_heads")?;
    let head_dim = cfg["head_dim"].as_u64().map(|x| x as usize).unwrap_or(hidden_size / num_heads.max(1));
    let theta = cfg["rope_theta"].as_f64().unwrap_or(10000.0) as f32;
    let mut inv_freq = Rope::default_inv_freq(head_dim, theta);
    let scaling = &cfg["rope_scaling"];
    if scaling.is_object() {
        let kind = scaling["rope_type"].as_str().or(scaling["type"].as_str()).unwrap_or("default");
        let factor = scaling["factor"].as_f64().unwrap_or(1.0) as f32;
        match kind {
            "default" => {}
            "linear" => inv_freq.iter_mut().for_each(|f| *f /= factor),
            "llama3" => {
                let low = scaling["low_freq_factor"].as_f64().unwrap_or(1.0) as f32;
                let high = scaling["high_freq_factor"].as_f64().unwrap_or(4.0) as f32;
                let orig = scaling["original_max_position_embeddings"].as_f64().unwrap_or(8192.0) as f32;
                let (low_wl, high_wl) = (orig / low, orig / high);
                for f in inv_freq.iter_mut() {
                    let wl = 2.0 * std::f32::consts::PI / *f;
                    *f = if wl < high_wl {
                        *f
                    } else if wl > low_wl {
                        *f / factor
                    } else {
                        let smooth = (orig / wl - low) / (high - low);
                        (1.0 - smooth) * *f / factor + smooth * *f
                    };
                }
            }
            other => return Err(EngineError::Unsupported(format!("rope_scaling type {other:?}"))),
        }
    }
    Ok(LlamaHparams {
        vocab_size: need("vocab_size")?,
        hidden_size,
        intermediate_size: need("intermediate_size")?,
        num_layers: need("num_hidden_layers")?,
        num_heads,
        num_kv_heads: cfg["num_key_value_heads"].as_u64().map(|x| x as usize).unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: cfg["rms_norm_eps"].as_f64().unwrap_or(1e-5) as f32,
        max_position_embeddings: cfg["max_position_embeddings"].as_u64().map(|x| x as usize).unwrap_or(4096),
        rope_inv_freq: inv_freq,
        rope_interleaved: false,
        sliding_window: cfg["sliding_window"].as_u64().map(|x| x as usize),
    })
}

/// Loads a llama-family model from a Hugging Face folder (config.json + safetensors).
pub fn llama_from_hf_dir(dir: &Path, opts: &WeightOptions) -> Result<Llama> {
    let cfg: Json = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
        .map_err(|e| load_err(format!("config.json: {e}")))?;
    let hp = llama_hparams_from_hf(&cfg)?;
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(load_err(format!("no .safetensors files in {}", dir.display())));
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for f in &files {
        tensors.extend(candle_core::safetensors::load(f, &Device::Cpu)?);
    }
    assemble(hp, &HF_NAMES, opts, |name| {
        if tied && name == HF_NAMES.lm_head {
            return Ok(None);
        }
        Ok(tensors.remove(name).map(RawWeight::Dense))
    })
}
