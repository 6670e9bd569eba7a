//! `ModelSpec`: what an architecture file declares about one model — hyperparameters, a spec
//! per layer (attention kind, which RoPE), norms, activation, scales, softcaps and the tensor
//! names of its storage format. The decoder (`decoder`) runs any spec; the registry (`arch`)
//! builds specs from GGUF metadata or a Hugging Face `config.json`.

use crate::kv_cache::AttentionKind;
use crate::model::rope::RopeSpec;

/// The gated MLP's activation: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// SiLU (SwiGLU): llama, mistral, qwen, phi3.
    Silu,
    /// GELU with the tanh approximation (GeGLU): gemma.
    GeluTanh,
    /// gpt-oss's clamped SwiGLU: `g = min(gate, limit)`, `u = clamp(up, -limit, limit)`,
    /// `g · sigmoid(alpha · g) · (u + 1)` (alpha 1.702, limit 7).
    ClampedSwiglu { alpha: f32, limit: f32 },
}

/// A mixture-of-experts feed-forward (gpt-oss): a router with a bias picks `top_k` of
/// `num_experts` experts per token (softmax over the chosen logits), each a gated MLP of
/// width `expert_ff` with biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeSpec {
    pub num_experts: usize,
    pub top_k: usize,
    pub expert_ff: usize,
}

/// One decoder layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    pub attention: AttentionKind,
    /// Index into [`ModelSpec::ropes`].
    pub rope: usize,
}

/// Everything the decoder needs to know about a model, whatever file it came from.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Registry name of the architecture (`llama`, `qwen3`, ...).
    pub arch: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    /// Added to every stored norm weight at load (Gemma's HF weights hold `w` for `1 + w`;
    /// its GGUF weights already hold `1 + w`).
    pub norm_weight_offset: f32,
    /// Input embeddings are multiplied by this (Gemma: `sqrt(hidden)`).
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    /// Multiplier of q·k (usually `1/sqrt(head_dim)`).
    pub attn_scale: f32,
    /// `cap * tanh(logits / cap)` on the final logits.
    pub final_logit_softcap: Option<f32>,
    /// Per-head RMSNorm of q and k before RoPE (qwen3, gemma3).
    pub qk_norm: bool,
    /// Norms of the attention and MLP outputs before their residual adds (gemma3).
    pub post_norms: bool,
    /// One learned logit per head in every attention softmax (gpt-oss).
    pub attn_sinks: bool,
    /// A mixture of experts instead of the dense MLP (gpt-oss); `activation` is the experts'.
    pub moe: Option<MoeSpec>,
    pub layers: Vec<LayerSpec>,
    pub ropes: Vec<RopeSpec>,
    pub names: &'static TensorNames,
}

impl ModelSpec {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

/// Where a storage format keeps each weight. Layer names are `{layer}.{N}.{role}` plus the
/// weight or bias suffix; roles a format lacks are `None`.
#[derive(Debug)]
pub struct TensorNames {
    pub embed: &'static str,
    pub output_norm: &'static str,
    pub output: &'static str,
    pub layer: &'static str,
    pub weight: &'static str,
    pub bias: &'static str,
    pub attn_norm: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    /// Fused `[q; k; v]` (phi3, and any llama.cpp arch).
    pub qkv: &'static str,
    pub o: &'static str,
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    pub attn_post_norm: Option<&'static str>,
    pub ffn_norm: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    /// Fused `[gate; up]`: a separate tensor (HF phi3), or `None` where the fused weight is
    /// stored under `up` with twice the rows (GGUF phi3).
    pub gate_up: Option<&'static str>,
    pub down: &'static str,
    pub ffn_post_norm: Option<&'static str>,
    /// Attention sinks, the whole name after `{layer}.{N}.` (gpt-oss).
    pub sinks: &'static str,
    /// The MoE router (weight and bias).
    pub router: &'static str,
    /// Stacked expert weights `[experts, out, in]` and biases `[experts, out]`.
    pub gate_exps: &'static str,
    pub up_exps: &'static str,
    pub down_exps: &'static str,
}

impl TensorNames {
    /// Full name of layer `i`'s tensor `role`, weight or bias.
    pub fn layer_tensor(&self, i: usize, role: &str, bias: bool) -> String {
        format!("{}.{i}.{role}{}", self.layer, if bias { self.bias } else { self.weight })
    }

    /// Full name of layer `i`'s tensor `rest` (a role with its suffix).
    pub fn layer_raw(&self, i: usize, rest: &str) -> String {
        format!("{}.{i}.{rest}", self.layer)
    }

    /// Full name of a model-level weight.
    pub fn global(&self, name: &str) -> String {
        format!("{name}{}", self.weight)
    }
}

/// llama.cpp's names, shared by every GGUF architecture.
pub static GGUF_NAMES: TensorNames = TensorNames {
    embed: "token_embd",
    output_norm: "output_norm",
    output: "output",
    layer: "blk",
    weight: ".weight",
    bias: ".bias",
    attn_norm: "attn_norm",
    q: "attn_q",
    k: "attn_k",
    v: "attn_v",
    qkv: "attn_qkv",
    o: "attn_output",
    q_norm: "attn_q_norm",
    k_norm: "attn_k_norm",
    attn_post_norm: Some("post_attention_norm"),
    ffn_norm: "ffn_norm",
    gate: "ffn_gate",
    up: "ffn_up",
    gate_up: None,
    down: "ffn_down",
    ffn_post_norm: Some("post_ffw_norm"),
    sinks: "attn_sinks.weight",
    router: "ffn_gate_inp",
    gate_exps: "ffn_gate_exps",
    up_exps: "ffn_up_exps",
    down_exps: "ffn_down_exps",
};

/// Hugging Face transformers' llama-style names (llama, mistral, qwen2, qwen3, phi3).
pub static HF_NAMES: TensorNames = TensorNames {
    embed: "model.embed_tokens",
    output_norm: "model.norm",
    output: "lm_head",
    layer: "model.layers",
    weight: ".weight",
    bias: ".bias",
    attn_norm: "input_layernorm",
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    qkv: "self_attn.qkv_proj",
    o: "self_attn.o_proj",
    q_norm: "self_attn.q_norm",
    k_norm: "self_attn.k_norm",
    attn_post_norm: None,
    ffn_norm: "post_attention_layernorm",
    gate: "mlp.gate_proj",
    up: "mlp.up_proj",
    gate_up: Some("mlp.gate_up_proj"),
    down: "mlp.down_proj",
    ffn_post_norm: None,
    sinks: "self_attn.sinks",
    router: "mlp.router",
    // transformers' gpt-oss stores `mlp.experts.gate_up_proj` (gate and up interleaved) and
    // `down_proj`, as MXFP4 `_blocks`/`_scales` or floats; `HfSource` presents them under
    // these names in the `[experts, out, in]` orientation.
    gate_exps: "mlp.experts.gate",
    up_exps: "mlp.experts.up",
    down_exps: "mlp.experts.down",
};
