//! Tiny Hugging Face folders (config.json + model.safetensors) of the architectures wick runs
//! besides llama: mistral (sliding window), qwen2 (q/k/v biases), qwen3 (q/k norms, own head
//! size), gemma3 (local/global layers, pre/post norms, `1 + w` norms) and phi3 (fused qkv and
//! gate_up, partial rotary). Seeded random weights, written in F32, F16 or BF16; the config
//! carries every field candle-transformers' configs require, so both engines read one folder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Which architecture a tiny folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyArch {
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
}

/// Shape of a tiny model (vocabulary 320, hidden 64, 4 heads over 2 kv heads, 3 layers).
#[derive(Debug, Clone)]
pub struct TinyHf {
    pub arch: TinyArch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Sliding window (mistral, gemma3 local layers); shorter than the test prompts.
    pub sliding_window: usize,
    pub dtype: DType,
    pub seed: u64,
}

impl TinyHf {
    pub fn new(arch: TinyArch) -> Self {
        Self {
            arch,
            vocab_size: 320,
            hidden_size: 64,
            intermediate_size: 96,
            num_layers: 3,
            num_heads: 4,
            // Gemma 3 270M has one kv head (and candle's gemma3 prefill needs it to be one).
            num_kv_heads: if arch == TinyArch::Gemma3 { 1 } else { 2 },
            // qwen3 and gemma3 have a head size of their own.
            head_dim: if arch == TinyArch::Qwen3 { 24 } else { 16 },
            sliding_window: 6,
            dtype: DType::F32,
            seed: 7,
        }
    }

    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// `config.json`.
    pub fn config_json(&self) -> serde_json::Value {
        let mut c = json!({
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
        });
        let extra = match self.arch {
            TinyArch::Mistral => json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                "sliding_window": self.sliding_window}),
            TinyArch::Qwen2 => json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                "sliding_window": 4096, "max_window_layers": self.num_layers, "use_sliding_window": false}),
            TinyArch::Qwen3 => json!({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                "attention_bias": false, "sliding_window": null, "max_window_layers": self.num_layers,
                "use_sliding_window": false}),
            TinyArch::Gemma3 => json!({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
                "attention_bias": false, "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 1000000.0,
                "rope_local_base_freq": 10000.0, "final_logit_softcapping": null, "attn_logit_softcapping": null,
                "query_pre_attn_scalar": self.head_dim, "sliding_window": self.sliding_window,
                "sliding_window_pattern": 3, "tie_word_embeddings": true}),
            TinyArch::Phi3 => json!({"architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
                "partial_rotary_factor": 0.75, "rope_scaling": null, "original_max_position_embeddings": 256,
                // candle's phi3 attends fully: a window longer than the test prompts.
                "sliding_window": 2047}),
        };
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    /// Every tensor under its Hugging Face name, as f32 data with dims.
    fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let (h, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (qw, kw) = (self.num_heads * hd, self.num_kv_heads * hd);
        let gemma = self.arch == TinyArch::Gemma3;
        let mut out = Vec::new();
        // Norm weights: around 1, or around 0 for Gemma's `1 + w`.
        let mut push = |name: String, dims: Vec<usize>, kind: char| {
            let n: usize = dims.iter().product();
            let fan_in = *dims.last().unwrap_or(&1) as f32;
            let data = (0..n)
                .map(|_| {
                    let r: f32 = rng.random_range(-1.0..1.0);
                    match kind {
                        'n' if gemma => 0.3 * r,
                        'n' => 1.0 + 0.3 * r,
                        'b' => 0.5 * r,
                        'e' => r,
                        _ => 1.7 * r / fan_in.sqrt(),
                    }
                })
                .collect();
            out.push((name, dims, data));
        };
        push("model.embed_tokens.weight".into(), vec![self.vocab_size, h], 'e');
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            push(format!("{p}.input_layernorm.weight"), vec![h], 'n');
            if self.arch == TinyArch::Phi3 {
                push(format!("{p}.self_attn.qkv_proj.weight"), vec![qw + 2 * kw, h], 'w');
            } else {
                push(format!("{p}.self_attn.q_proj.weight"), vec![qw, h], 'w');
                push(format!("{p}.self_attn.k_proj.weight"), vec![kw, h], 'w');
                push(format!("{p}.self_attn.v_proj.weight"), vec![kw, h], 'w');
            }
            if self.arch == TinyArch::Qwen2 {
                push(format!("{p}.self_attn.q_proj.bias"), vec![qw], 'b');
                push(format!("{p}.self_attn.k_proj.bias"), vec![kw], 'b');
                push(format!("{p}.self_attn.v_proj.bias"), vec![kw], 'b');
            }
            if matches!(self.arch, TinyArch::Qwen3 | TinyArch::Gemma3) {
                push(format!("{p}.self_attn.q_norm.weight"), vec![hd], 'n');
                push(format!("{p}.self_attn.k_norm.weight"), vec![hd], 'n');
            }
            push(format!("{p}.self_attn.o_proj.weight"), vec![h, qw], 'w');
            push(format!("{p}.post_attention_layernorm.weight"), vec![h], 'n');
            if gemma {
                push(format!("{p}.pre_feedforward_layernorm.weight"), vec![h], 'n');
                push(format!("{p}.post_feedforward_layernorm.weight"), vec![h], 'n');
            }
            if self.arch == TinyArch::Phi3 {
                push(format!("{p}.mlp.gate_up_proj.weight"), vec![2 * f, h], 'w');
            } else {
                push(format!("{p}.mlp.gate_proj.weight"), vec![f, h], 'w');
                push(format!("{p}.mlp.up_proj.weight"), vec![f, h], 'w');
            }
            push(format!("{p}.mlp.down_proj.weight"), vec![h, f], 'w');
        }
        push("model.norm.weight".into(), vec![h], 'n');
        if !gemma {
            push("lm_head.weight".into(), vec![self.vocab_size, h], 'w');
        }
        out
    }

    /// Writes `config.json` and `model.safetensors` (in `self.dtype`) into `dir`.
    pub fn write(&self, dir: &Path) -> candle_core::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("config.json"), self.config_json().to_string())?;
        let map: HashMap<String, Tensor> = self
            .tensors()
            .into_iter()
            .map(|(name, dims, data)| Ok((name, Tensor::from_vec(data, dims, &Device::Cpu)?.to_dtype(self.dtype)?)))
            .collect::<candle_core::Result<_>>()?;
        candle_core::safetensors::save(&map, dir.join("model.safetensors"))
    }
}
