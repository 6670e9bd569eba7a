//! Tiny llama models with seeded random weights, written as a Hugging Face folder
//! (config.json + model.safetensors, f32) and as a GGUF file (llama.* metadata, q/k rows
//! permuted the way llama.cpp's converter does for interleaved RoPE), both describing the
//! same network.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

/// Shape and seed of a tiny llama.
#[derive(Debug, Clone)]
pub struct TinyLlama {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    /// No separate LM head: the embedding matrix is reused.
    pub tied_embeddings: bool,
    /// Mistral-style sliding window on every layer (HF `sliding_window`, GGUF
    /// `llama.attention.sliding_window`).
    pub sliding_window: Option<usize>,
    pub seed: u64,
}

impl Default for TinyLlama {
    fn default() -> Self {
        Self {
            vocab_size: 320,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            max_position_embeddings: 256,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            tied_embeddings: false,
            sliding_window: None,
            seed: 42,
        }
    }
}

/// A named f32 tensor in Hugging Face layout (`[out, in]` for linear weights).
struct Named {
    name: String,
    dims: Vec<usize>,
    data: Vec<f32>,
}

impl TinyLlama {
    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Every tensor under its Hugging Face name.
    fn tensors(&self) -> Vec<Named> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim());
        let mut out = Vec::new();
        let mut push = |name: String, dims: Vec<usize>, scale: f32, norm: bool| {
            let n: usize = dims.iter().product();
            let data = (0..n)
                .map(|_| {
                    let r: f32 = rng.random_range(-1.0..1.0);
                    if norm {
                        1.0 + 0.2 * r
                    } else {
                        scale * r
                    }
                })
                .collect();
            out.push(Named { name, dims, data });
        };
        push("model.embed_tokens.weight".into(), vec![self.vocab_size, h], 1.0, false);
        let s = 1.0 / (h as f32).sqrt() * 1.7;
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            push(format!("{p}.input_layernorm.weight"), vec![h], 0.0, true);
            push(format!("{p}.self_attn.q_proj.weight"), vec![self.num_heads * hd, h], s, false);
            push(format!("{p}.self_attn.k_proj.weight"), vec![self.num_kv_heads * hd, h], s, false);
            push(format!("{p}.self_attn.v_proj.weight"), vec![self.num_kv_heads * hd, h], s, false);
            push(format!("{p}.self_attn.o_proj.weight"), vec![h, self.num_heads * hd], s, false);
            push(format!("{p}.post_attention_layernorm.weight"), vec![h], 0.0, true);
            push(format!("{p}.mlp.gate_proj.weight"), vec![i, h], s, false);
            push(format!("{p}.mlp.up_proj.weight"), vec![i, h], s, false);
            push(format!("{p}.mlp.down_proj.weight"), vec![h, i], 1.0 / (i as f32).sqrt() * 1.7, false);
        }
        push("model.norm.weight".into(), vec![h], 0.0, true);
        if !self.tied_embeddings {
            push("lm_head.weight".into(), vec![self.vocab_size, h], s, false);
        }
        out
    }

    /// The Hugging Face `config.json`.
    pub fn config_json(&self) -> serde_json::Value {
        let mut cfg = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tied_embeddings,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32"
        });
        if let Some(w) = self.sliding_window {
            // transformers' llama has no window; its mistral is llama with one.
            cfg["sliding_window"] = w.into();
            cfg["architectures"] = serde_json::json!(["MistralForCausalLM"]);
            cfg["model_type"] = "mistral".into();
        }
        cfg
    }

    /// Writes `config.json` and `model.safetensors` (f32) into `dir`.
    pub fn write_hf(&self, dir: &Path) -> candle_core::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("config.json"), self.config_json().to_string())?;
        let map: HashMap<String, Tensor> = self
            .tensors()
            .into_iter()
            .map(|t| Ok((t.name, Tensor::from_vec(t.data, t.dims, &Device::Cpu)?)))
            .collect::<candle_core::Result<_>>()?;
        candle_core::safetensors::save(&map, dir.join("model.safetensors"))
    }

    /// Writes a GGUF file with linear weights and embeddings in `dtype` (norms stay f32).
    pub fn write_gguf(&self, path: &Path, dtype: GgmlDType) -> candle_core::Result<()> {
        let hd = self.head_dim();
        let mut qtensors: Vec<(String, QTensor)> = Vec::new();
        for t in self.tensors() {
            let (name, data) = gguf_name_and_data(&t, self.num_heads, self.num_kv_heads, hd);
            let tensor = Tensor::from_vec(data, t.dims.clone(), &Device::Cpu)?;
            let ty = if t.dims.len() == 1 { GgmlDType::F32 } else { dtype };
            qtensors.push((name, QTensor::quantize(&tensor, ty)?));
        }
        let u = |x: usize| gguf_file::Value::U32(x as u32);
        let mut md: Vec<(&str, gguf_file::Value)> = vec![
            ("general.architecture", gguf_file::Value::String("llama".into())),
            ("general.name", gguf_file::Value::String("tiny-llama".into())),
            ("llama.block_count", u(self.num_layers)),
            ("llama.context_length", u(self.max_position_embeddings)),
            ("llama.embedding_length", u(self.hidden_size)),
            ("llama.feed_forward_length", u(self.intermediate_size)),
            ("llama.attention.head_count", u(self.num_heads)),
            ("llama.attention.head_count_kv", u(self.num_kv_heads)),
            ("llama.rope.dimension_count", u(hd)),
            ("llama.rope.freq_base", gguf_file::Value::F32(self.rope_theta)),
            ("llama.attention.layer_norm_rms_epsilon", gguf_file::Value::F32(self.rms_norm_eps)),
        ];
        if let Some(w) = self.sliding_window {
            md.push(("llama.attention.sliding_window", u(w)));
        }
        let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f = std::fs::File::create(path)?;
        gguf_file::write(&mut f, &md_refs, &t_refs)
    }
}

/// GGUF name of a Hugging Face tensor, with q/k rows permuted for interleaved RoPE exactly
/// as llama.cpp's `convert_hf_to_gguf.py` does: within each head, row `s * hd/2 + i` moves to
/// row `2i + s`.
fn gguf_name_and_data(t: &Named, heads: usize, kv_heads: usize, hd: usize) -> (String, Vec<f32>) {
    let n = &t.name;
    let name = if n == "model.embed_tokens.weight" {
        "token_embd.weight".to_string()
    } else if n == "model.norm.weight" {
        "output_norm.weight".to_string()
    } else if n == "lm_head.weight" {
        "output.weight".to_string()
    } else {
        let rest = n.strip_prefix("model.layers.").unwrap_or(n);
        let (layer, what) = rest.split_once('.').unwrap_or((rest, ""));
        let short = match what {
            "input_layernorm.weight" => "attn_norm",
            "self_attn.q_proj.weight" => "attn_q",
            "self_attn.k_proj.weight" => "attn_k",
            "self_attn.v_proj.weight" => "attn_v",
            "self_attn.o_proj.weight" => "attn_output",
            "post_attention_layernorm.weight" => "ffn_norm",
            "mlp.gate_proj.weight" => "ffn_gate",
            "mlp.up_proj.weight" => "ffn_up",
            "mlp.down_proj.weight" => "ffn_down",
            other => other,
        };
        format!("blk.{layer}.{short}.weight")
    };
    let permute_heads = if name.ends_with("attn_q.weight") {
        Some(heads)
    } else if name.ends_with("attn_k.weight") {
        Some(kv_heads)
    } else {
        None
    };
    let data = match permute_heads {
        None => t.data.clone(),
        Some(nh) => {
            let cols = t.dims[1];
            let mut out = vec![0f32; t.data.len()];
            for r in 0..nh * hd {
                let (h, rem) = (r / hd, r % hd);
                let old = h * hd + (rem % 2) * (hd / 2) + rem / 2;
                out[r * cols..(r + 1) * cols].copy_from_slice(&t.data[old * cols..(old + 1) * cols]);
            }
            out
        }
    };
    (name, data)
}
