//! gpt-oss from a Hugging Face folder: the fixture GGUF (`shared/fixtures/archs/gpt-oss.gguf`)
//! rewritten as transformers stores gpt-oss — `GptOssForCausalLM` names, experts as MXFP4
//! `gate_up_proj_blocks`/`_scales` with gate and up interleaved (even and odd rows) and
//! transformers' nibble order (byte `j` holds values `2j` and `2j+1`), `down_proj_*`,
//! `self_attn.sinks`, `mlp.router` — then loaded by `load_safetensors_model` and held against
//! llama.cpp's logits on the exact F32 dequantization of the same weights (the fixture's
//! `reference_dequantized_f32`, tolerance 1e-3), and, on wick's MXFP4 kernel, against the
//! GGUF load of the same file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;
use wick_engine::kv_cache::PagedKvCache;
use wick_engine::model::{load_gguf_model, load_safetensors_model, CausalLm, GgufFile, WeightOptions};
use wick_engine::ForwardBatch;
use wick_tests::group_tables;

use crate::archs::fixtures_dir;

/// ggml MXFP4 blocks `[rows, k/32 × 17 bytes]` as transformers' `(_blocks, _scales)`.
fn to_hf_blocks(ggml: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut blocks, mut scales) = (Vec::new(), Vec::new());
    for b in ggml.chunks_exact(17) {
        scales.push(b[0]);
        let v = |i: usize| if i < 16 { b[1 + i] & 0x0F } else { b[1 + i - 16] >> 4 };
        blocks.extend((0..16).map(|j| v(2 * j) | (v(2 * j + 1) << 4)));
    }
    (blocks, scales)
}

/// Writes the HF twin of the fixture into `dir`.
fn write_hf(gguf_path: &Path, dir: &Path) {
    let mut f = std::fs::File::open(gguf_path).unwrap();
    let g = GgufFile::read(&mut f).unwrap();
    let dev = &Device::Cpu;
    let mut read = |name: &str| -> Tensor { g.content.tensor(&mut f, name, dev).unwrap().dequantize(dev).unwrap() };
    let mut out: HashMap<String, Tensor> = HashMap::new();
    out.insert("model.embed_tokens.weight".into(), read("token_embd.weight"));
    out.insert("lm_head.weight".into(), read("output.weight"));
    out.insert("model.norm.weight".into(), read("output_norm.weight"));
    let (ne, ff, hidden) = (4usize, 96usize, 64usize);
    for l in 0..3 {
        let p = format!("model.layers.{l}.");
        let b = format!("blk.{l}.");
        for (ours, theirs) in [
            ("attn_norm.weight", "input_layernorm.weight"),
            ("post_attention_norm.weight", "post_attention_layernorm.weight"),
            ("attn_q.weight", "self_attn.q_proj.weight"),
            ("attn_q.bias", "self_attn.q_proj.bias"),
            ("attn_k.weight", "self_attn.k_proj.weight"),
            ("attn_k.bias", "self_attn.k_proj.bias"),
            ("attn_v.weight", "self_attn.v_proj.weight"),
            ("attn_v.bias", "self_attn.v_proj.bias"),
            ("attn_output.weight", "self_attn.o_proj.weight"),
            ("attn_output.bias", "self_attn.o_proj.bias"),
            ("attn_sinks.weight", "self_attn.sinks"),
            ("ffn_gate_inp.weight", "mlp.router.weight"),
            ("ffn_gate_inp.bias", "mlp.router.bias"),
            ("ffn_down_exps.bias", "mlp.experts.down_proj_bias"),
        ] {
            out.insert(format!("{p}{theirs}"), read(&format!("{b}{ours}")));
        }
        // gate/up biases interleaved: [E, ff, 2] -> [E, 2ff].
        let (gb, ub) = (read(&format!("{b}ffn_gate_exps.bias")), read(&format!("{b}ffn_up_exps.bias")));
        let gub = Tensor::stack(&[gb, ub], 2).unwrap().reshape((ne, 2 * ff)).unwrap();
        out.insert(format!("{p}mlp.experts.gate_up_proj_bias"), gub);
        let raw = |name: &str| g.read_raw(&mut std::fs::File::open(gguf_path).unwrap(), name).unwrap().unwrap().1;
        let (gate, up, down) = (
            raw(&format!("{b}ffn_gate_exps.weight")),
            raw(&format!("{b}ffn_up_exps.weight")),
            raw(&format!("{b}ffn_down_exps.weight")),
        );
        // Interleave the rows of gate and up per expert.
        let row = hidden / 32 * 17;
        let mut gu = Vec::new();
        for e in 0..ne {
            for r in 0..ff {
                let at = (e * ff + r) * row;
                gu.extend_from_slice(&gate[at..at + row]);
                gu.extend_from_slice(&up[at..at + row]);
            }
        }
        let (blocks, scales) = to_hf_blocks(&gu);
        let u8s = |v: Vec<u8>, shape: &[usize]| Tensor::from_vec(v, shape, dev).unwrap();
        out.insert(format!("{p}mlp.experts.gate_up_proj_blocks"), u8s(blocks, &[ne, 2 * ff, hidden / 32, 16]));
        out.insert(format!("{p}mlp.experts.gate_up_proj_scales"), u8s(scales, &[ne, 2 * ff, hidden / 32]));
        let (blocks, scales) = to_hf_blocks(&down);
        out.insert(format!("{p}mlp.experts.down_proj_blocks"), u8s(blocks, &[ne, hidden, ff / 32, 16]));
        out.insert(format!("{p}mlp.experts.down_proj_scales"), u8s(scales, &[ne, hidden, ff / 32]));
    }
    candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();
    let config = json!({
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "num_local_experts": 4, "num_experts_per_tok": 2, "vocab_size": 49152,
        "rms_norm_eps": 1e-5, "rope_theta": 150000.0, "max_position_embeddings": 131072,
        "sliding_window": 8, "swiglu_limit": 7.0, "attention_bias": true, "tie_word_embeddings": false,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        // llama.cpp rounds YaRN's correction range (transformers' default `truncate`).
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                          "original_max_position_embeddings": 4096}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Every position's logits for `tokens` in one step.
fn logits(model: &dyn CausalLm, tokens: &[u32]) -> Vec<Vec<f32>> {
    let cfg = model.config();
    let stride = 16;
    let mut cache = PagedKvCache::new(&cfg.kv_layout, cfg.kv_layout.num_groups() * stride, 16);
    let mut batch = ForwardBatch::default();
    let table: Vec<u32> = (0..tokens.len().div_ceil(16) as u32).collect();
    batch.push_seq(tokens, tokens.len(), group_tables(cfg.kv_layout.num_groups(), &table, stride), false);
    batch.logits_rows = (0..tokens.len()).collect();
    model.forward(&batch, &mut cache).unwrap().to_vec2().unwrap()
}

#[test]
fn gpt_oss_from_a_hugging_face_folder_matches_llama_cpp_and_the_gguf() {
    let gguf = fixtures_dir().join("gpt-oss.gguf");
    let dir = tempfile::tempdir().unwrap();
    write_hf(&gguf, dir.path());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("gpt-oss.ref.json")).unwrap()).unwrap();
    let reference = &json["reference_dequantized_f32"];
    let exact = load_safetensors_model(dir.path(), &WeightOptions::dequantized()).unwrap();
    let hf = load_safetensors_model(dir.path(), &WeightOptions::default()).unwrap();
    let from_gguf = load_gguf_model(&gguf, &WeightOptions::default()).unwrap();
    for (s, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let tokens: Vec<u32> = p["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let rows = logits(exact.as_ref(), &tokens);
        let mut max = 0f32;
        for (pos, (row, want)) in rows.iter().zip(p["positions"].as_array().unwrap()).enumerate() {
            for pair in want["top"].as_array().unwrap() {
                let (id, l) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
                let d = (row[id] - l).abs();
                max = max.max(d);
                assert!(d <= 1e-3, "prompt {s} position {pos} token {id}: {} vs llama.cpp {l}", row[id]);
            }
        }
        // On the MXFP4 kernel the HF folder and the GGUF file differ only in the embedding and
        // LM head (f32 in the folder, Q8_0 in the file).
        let (a, b) = (logits(hf.as_ref(), &tokens), logits(from_gguf.as_ref(), &tokens));
        let d = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 0.05, "prompt {s}: HF (MXFP4) and GGUF differ by {d}");
        eprintln!("gpt-oss HF prompt {s}: max err vs llama.cpp (dequantized) {max:.2e}; HF vs GGUF {d:.2e}");
    }
}
