//! candle-transformers as a second oracle, on Hugging Face folders the test writes
//! (`wick_tests::tiny_hf`): mistral, qwen2, qwen3, gemma3 and phi3, each loaded by wick from
//! safetensors in F32, F16 and BF16 and compared against candle's own model on the same
//! weights (upcast to f32). The prompt is longer than the sliding windows; wick's logits at
//! every prompt position and at greedy decode steps through the paged cache are compared with
//! candle prefilling the same prefix from scratch (candle's decode path does not window).
//!
//! candle's sliding-window mask lets a query see `w + 1` keys where transformers and
//! llama.cpp see `w` (`i - j < w`, which wick follows and the llama.cpp fixtures check), so
//! the oracle is configured with `w - 1`.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{gemma3, mistral, phi3, qwen2, qwen3};
use wick_engine::kv_cache::PagedKvCache;
use wick_engine::model::{load_safetensors_model, CausalLm, WeightOptions};
use wick_engine::ForwardBatch;
use wick_tests::group_tables;
use wick_tests::tiny_hf::{TinyArch, TinyHf};

const BLOCK: usize = 4;
const PROMPT: [u32; 13] = [1, 17, 250, 3, 99, 42, 42, 7, 310, 64, 5, 128, 77];

enum Candle {
    Mistral(mistral::Model),
    Qwen2(qwen2::ModelForCausalLM),
    Qwen3(qwen3::ModelForCausalLM),
    Gemma3(gemma3::Model),
    Phi3(phi3::Model),
}

impl Candle {
    fn load(dir: &std::path::Path, tiny: &TinyHf) -> Self {
        let mut cfg = tiny.config_json();
        if let Some(w) = cfg["sliding_window"].as_u64().filter(|_| tiny.arch != TinyArch::Qwen2) {
            cfg["sliding_window"] = (w - 1).into();
        }
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        match tiny.arch {
            TinyArch::Mistral => {
                let c: mistral::Config = serde_json::from_value(cfg).unwrap();
                Candle::Mistral(mistral::Model::new(&c, vb).unwrap())
            }
            TinyArch::Qwen2 => {
                let c: qwen2::Config = serde_json::from_value(cfg).unwrap();
                Candle::Qwen2(qwen2::ModelForCausalLM::new(&c, vb).unwrap())
            }
            TinyArch::Qwen3 => {
                let c: qwen3::Config = serde_json::from_value(cfg).unwrap();
                Candle::Qwen3(qwen3::ModelForCausalLM::new(&c, vb).unwrap())
            }
            TinyArch::Gemma3 => {
                let c: gemma3::Config = serde_json::from_value(cfg).unwrap();
                Candle::Gemma3(gemma3::Model::new(false, &c, vb).unwrap())
            }
            TinyArch::Phi3 => {
                let c: phi3::Config = serde_json::from_value(cfg).unwrap();
                Candle::Phi3(phi3::Model::new(&c, vb).unwrap())
            }
        }
    }

    /// Logits at the last position of `prefix`, prefilled from an empty cache.
    fn last_logits(&mut self, prefix: &[u32]) -> Vec<f32> {
        let x = Tensor::new(prefix, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let y = match self {
            Candle::Mistral(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
            Candle::Qwen2(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
            Candle::Qwen3(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
            Candle::Gemma3(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
            Candle::Phi3(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
        };
        let v: Vec<f32> = y.unwrap().flatten_all().unwrap().to_vec1().unwrap();
        v[v.len() - 320..].to_vec()
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0 as u32
}

/// Prompt in one step (logits for every row), then greedy decode steps one token each.
fn run_ours(model: &dyn CausalLm, prompt: &[u32], steps: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
    let cfg = model.config();
    let groups = cfg.kv_layout.num_groups();
    let mut cache = PagedKvCache::new(&cfg.kv_layout, groups * 16, BLOCK);
    let table: Vec<u32> = (0..16).rev().collect();
    let mut batch = ForwardBatch::default();
    batch.push_seq(prompt, prompt.len(), group_tables(groups, &table[..prompt.len().div_ceil(BLOCK)], 16), true);
    batch.logits_rows = (0..prompt.len()).collect();
    let mut rows: Vec<Vec<f32>> = model.forward(&batch, &mut cache).unwrap().to_vec2().unwrap();
    let mut tokens = prompt.to_vec();
    for _ in 0..steps {
        let next = argmax(rows.last().unwrap());
        tokens.push(next);
        let ctx = tokens.len();
        let mut batch = ForwardBatch::default();
        batch.push_seq(&[next], ctx, group_tables(groups, &table[..ctx.div_ceil(BLOCK)], 16), true);
        rows.extend(model.forward(&batch, &mut cache).unwrap().to_vec2::<f32>().unwrap());
    }
    (rows, tokens)
}

fn check(arch: TinyArch) {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let dir = tempfile::tempdir().unwrap();
        let tiny = TinyHf::new(arch).with_dtype(dtype);
        tiny.write(dir.path()).unwrap();
        let model = load_safetensors_model(dir.path(), &WeightOptions::default())
            .unwrap_or_else(|e| panic!("{arch:?} {dtype:?}: {e}"));
        let mut oracle = Candle::load(dir.path(), &tiny);
        let (rows, tokens) = run_ours(model.as_ref(), &PROMPT, 5);
        let mut worst = 0f32;
        for (p, row) in rows.iter().enumerate() {
            let want = oracle.last_logits(&tokens[..=p]);
            let d = max_diff(row, &want);
            worst = worst.max(d);
            assert!(d < 1e-4, "{arch:?} {dtype:?} position {p}: logits differ from candle by {d}");
        }
        eprintln!("{arch:?} {dtype:?}: {} positions, max diff {worst:.2e}", rows.len());
    }
}

#[test]
fn mistral_matches_candle() {
    check(TinyArch::Mistral);
}

#[test]
fn qwen2_matches_candle() {
    check(TinyArch::Qwen2);
}

#[test]
fn qwen3_matches_candle() {
    check(TinyArch::Qwen3);
}

#[test]
fn gemma3_matches_candle() {
    check(TinyArch::Gemma3);
}

#[test]
fn phi3_matches_candle() {
    check(TinyArch::Phi3);
}
