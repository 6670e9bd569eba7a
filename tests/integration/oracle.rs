//! Oracle tests of the model: our ragged paged forward against candle-transformers' llama
//! (safetensors) and quantized llama (GGUF) on the same tiny files, GGUF and safetensors
//! variants of one network against each other, a mixed batch against its sequences run
//! alone, and (when WICK_TEST_MODEL_SMOLLM2 is set) the greedy token of the real SmolLM2.

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, quantized_llama};
use wick_engine::kv_cache::PagedKvCache;
use wick_engine::model::{load_gguf_model, load_safetensors_model, CausalLm, WeightOptions};
use wick_engine::{EngineError, ForwardBatch};
use wick_tests::tiny_model::TinyLlama;

const BLOCK: usize = 4;
const PROMPT: [u32; 11] = [1, 17, 250, 3, 99, 42, 42, 7, 310, 64, 5];

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().expect("logits are [rows, vocab] f32")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0 as u32
}

/// Block ids for a sequence, deliberately out of order so tables are really followed.
fn blocks(first: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| first + (n as u32 - 1 - i) * 3).collect()
}

/// The block tables of a one-group model (the tiny llamas here have no sliding window).
fn one_group(model: &dyn CausalLm, table: &[u32]) -> Vec<Vec<u32>> {
    assert_eq!(model.config().kv_layout.num_groups(), 1, "these tests drive one KV-cache group");
    vec![table.to_vec()]
}

/// Our model on one sequence: the prompt in one step (logits for every row), then
/// `decode` tokens one step each. Returns logits per position.
fn run_ours(model: &dyn CausalLm, prompt: &[u32], decode: &[u32]) -> Vec<Vec<f32>> {
    let cfg = model.config();
    let mut cache = PagedKvCache::new(&cfg.kv_layout, 64, BLOCK);
    let table = blocks(2, (prompt.len() + decode.len()).div_ceil(BLOCK));
    let mut batch = ForwardBatch::default();
    batch.push_seq(prompt, prompt.len(), one_group(model, &table[..prompt.len().div_ceil(BLOCK)]), true);
    batch.logits_rows = (0..prompt.len()).collect();
    let mut out = rows(&model.forward(&batch, &mut cache).expect("prefill"));
    for (i, &tok) in decode.iter().enumerate() {
        let ctx = prompt.len() + i + 1;
        let mut batch = ForwardBatch::default();
        batch.push_seq(&[tok], ctx, one_group(model, &table[..ctx.div_ceil(BLOCK)]), true);
        out.extend(rows(&model.forward(&batch, &mut cache).expect("decode")));
    }
    out
}

/// An oracle: `step(tokens, index_pos)` returns the last position's logits, keeping its own cache.
trait Oracle {
    fn step(&mut self, tokens: &[u32], index_pos: usize) -> Vec<f32>;
    fn reset(&mut self);
}

struct CandleLlama {
    model: llama::Llama,
    cfg: llama::Config,
    cache: llama::Cache,
}

impl CandleLlama {
    fn load(dir: &Path, tiny: &TinyLlama) -> Self {
        let cfg: llama::LlamaConfig = serde_json::from_value(tiny.config_json()).unwrap();
        let cfg = cfg.into_config(false);
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = llama::Llama::load(vb, &cfg).unwrap();
        let cache = llama::Cache::new(true, DType::F32, &cfg, &Device::Cpu).unwrap();
        Self { model, cfg, cache }
    }
}

impl Oracle for CandleLlama {
    fn step(&mut self, tokens: &[u32], index_pos: usize) -> Vec<f32> {
        let x = Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let y = self.model.forward(&x, index_pos, &mut self.cache).unwrap();
        y.flatten_all().unwrap().to_vec1().unwrap()
    }
    fn reset(&mut self) {
        self.cache = llama::Cache::new(true, DType::F32, &self.cfg, &Device::Cpu).unwrap();
    }
}

struct CandleQuantLlama(quantized_llama::ModelWeights);

impl CandleQuantLlama {
    fn load(path: &Path) -> Self {
        let mut f = std::fs::File::open(path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        Self(quantized_llama::ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap())
    }
}

impl Oracle for CandleQuantLlama {
    fn step(&mut self, tokens: &[u32], index_pos: usize) -> Vec<f32> {
        let x = Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        self.0.forward(&x, index_pos).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }
    fn reset(&mut self) {
        self.0.clear_kv_cache();
    }
}

/// Prompt in one step (last row), the prompt token by token (every row), then greedy decode
/// steps: all within `tol` of the oracle.
fn check_against(model: &dyn CausalLm, oracle: &mut dyn Oracle, tol: f32) {
    let ours = run_ours(model, &PROMPT, &[]);
    let want = oracle.step(&PROMPT, 0);
    let d = max_diff(&ours[PROMPT.len() - 1], &want);
    assert!(d < tol, "prompt logits differ by {d}");
    // Every prompt row, with the oracle fed one token at a time.
    oracle.reset();
    for (p, &tok) in PROMPT.iter().enumerate() {
        let want = oracle.step(&[tok], p);
        let d = max_diff(&ours[p], &want);
        assert!(d < tol, "position {p}: logits differ by {d}");
    }
    // Greedy decode through the paged cache, crossing several blocks.
    let mut decode = Vec::new();
    let mut last = ours[PROMPT.len() - 1].clone();
    for _ in 0..6 {
        decode.push(argmax(&last));
        let ours = run_ours(model, &PROMPT, &decode);
        let want = oracle.step(&[*decode.last().unwrap()], PROMPT.len() + decode.len() - 1);
        let got = ours.last().unwrap();
        let d = max_diff(got, &want);
        assert!(d < tol, "decode step {}: logits differ by {d}", decode.len());
        last = got.clone();
    }
}

#[test]
fn safetensors_model_matches_candle_llama() {
    for tied in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let tiny = TinyLlama { tied_embeddings: tied, ..TinyLlama::default() };
        tiny.write_hf(dir.path()).unwrap();
        let ours = load_safetensors_model(dir.path(), &WeightOptions::default()).unwrap();
        let mut oracle = CandleLlama::load(dir.path(), &tiny);
        check_against(ours.as_ref(), &mut oracle, 1e-3);
    }
}

#[test]
fn gguf_model_matches_candle_quantized_llama() {
    for (dtype, tied) in [(GgmlDType::F32, false), (GgmlDType::Q8_0, false), (GgmlDType::Q8_0, true)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        TinyLlama { tied_embeddings: tied, ..TinyLlama::default() }.write_gguf(&path, dtype).unwrap();
        let ours = load_gguf_model(&path, &WeightOptions::as_stored()).unwrap();
        let mut oracle = CandleQuantLlama::load(&path);
        check_against(ours.as_ref(), &mut oracle, 1e-3);
    }
}

#[test]
fn q4_1_gguf_on_wicks_kernel_matches_candle_quantized_llama() {
    // SmolLM2's file is Q4_1: by default wick runs it on its own 4-bit kernel, candle on its
    // scalar `vec_dot_q4_1_q8_1`. Same quantized operands, different summation order.
    for tied in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        TinyLlama { tied_embeddings: tied, ..TinyLlama::default() }.write_gguf(&path, GgmlDType::Q4_1).unwrap();
        let ours = load_gguf_model(&path, &WeightOptions::default()).unwrap();
        let mut oracle = CandleQuantLlama::load(&path);
        check_against(ours.as_ref(), &mut oracle, 1e-3);
    }
}

#[test]
fn gguf_and_safetensors_of_one_network_agree() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = TinyLlama::default();
    tiny.write_hf(dir.path()).unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny.write_gguf(&gguf, GgmlDType::F32).unwrap();
    let a = run_ours(load_safetensors_model(dir.path(), &WeightOptions::default()).unwrap().as_ref(), &PROMPT, &[9, 8]);
    let b = run_ours(load_gguf_model(&gguf, &WeightOptions::default()).unwrap().as_ref(), &PROMPT, &[9, 8]);
    for (p, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = max_diff(x, y);
        assert!(d < 1e-3, "position {p}: interleaved GGUF and NeoX safetensors differ by {d}");
    }
}

/// One sequence's schedule: tokens run per step (empty = not in that step).
struct Plan {
    tokens: Vec<u32>,
    chunks: [usize; 3],
    first_block: u32,
}

/// Runs the plans together (all sequences in each step) or one sequence at a time, asking
/// for logits of every row; returns per sequence per step its rows of logits.
fn run_plans(model: &dyn CausalLm, plans: &[Plan], together: bool) -> Vec<Vec<Vec<Vec<f32>>>> {
    let cfg = model.config();
    let mut out: Vec<Vec<Vec<Vec<f32>>>> = plans.iter().map(|_| Vec::new()).collect();
    let groups: Vec<Vec<usize>> =
        if together { vec![(0..plans.len()).collect()] } else { (0..plans.len()).map(|i| vec![i]).collect() };
    for group in groups {
        let mut cache = PagedKvCache::new(&cfg.kv_layout, 96, BLOCK);
        let mut done = vec![0usize; plans.len()];
        for step in 0..3 {
            let mut batch = ForwardBatch::default();
            let mut spans = Vec::new();
            for &i in &group {
                let p = &plans[i];
                let n = p.chunks[step];
                if n == 0 {
                    continue;
                }
                let ctx = done[i] + n;
                let start = batch.num_tokens();
                let table = blocks(p.first_block, p.tokens.len().div_ceil(BLOCK));
                batch.push_seq(&p.tokens[done[i]..ctx], ctx, one_group(model, &table[..ctx.div_ceil(BLOCK)]), false);
                spans.push((i, start, n));
                done[i] = ctx;
            }
            batch.logits_rows = (0..batch.num_tokens()).collect();
            let logits = rows(&model.forward(&batch, &mut cache).expect("forward"));
            for (i, start, n) in spans {
                out[i].push(logits[start..start + n].to_vec());
            }
        }
    }
    out
}

#[test]
fn mixed_batch_gives_the_same_logits_as_each_sequence_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = TinyLlama::default();
    tiny.write_hf(dir.path()).unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny.write_gguf(&gguf, GgmlDType::Q8_0).unwrap();
    let gguf_q4_1 = dir.path().join("tiny-q4_1.gguf");
    tiny.write_gguf(&gguf_q4_1, GgmlDType::Q4_1).unwrap();
    let tokens = |seed: u32, n: u32| (0..n).map(|i| (seed * 31 + i * 17) % 300).collect::<Vec<u32>>();
    // A: prefill 9 then decodes; B: chunked prefill 5 + 6 then a decode; C: arrives in step 2.
    let plans = vec![
        Plan { tokens: tokens(1, 11), chunks: [9, 1, 1], first_block: 1 },
        Plan { tokens: tokens(2, 12), chunks: [5, 6, 1], first_block: 2 },
        Plan { tokens: tokens(3, 8), chunks: [0, 7, 1], first_block: 40 },
    ];
    let models: [(Box<dyn CausalLm>, f32); 3] = [
        // Quantized matmuls and our attention are row-independent: exactly equal.
        (load_gguf_model(&gguf, &WeightOptions::as_stored()).unwrap(), 0.0),
        (load_gguf_model(&gguf_q4_1, &WeightOptions::default()).unwrap(), 0.0),
        // The f32 gemm may block differently with more rows.
        (load_safetensors_model(dir.path(), &WeightOptions::default()).unwrap(), 1e-4),
    ];
    for (model, tol) in models {
        let together = run_plans(model.as_ref(), &plans, true);
        let alone = run_plans(model.as_ref(), &plans, false);
        for (s, (a, b)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(a.len(), b.len());
            for (step, (ra, rb)) in a.iter().zip(b).enumerate() {
                for (r, (x, y)) in ra.iter().zip(rb).enumerate() {
                    let d = max_diff(x, y);
                    assert!(d <= tol, "seq {s} step {step} row {r}: batched vs alone differ by {d}");
                }
            }
        }
    }
}

#[test]
fn unsupported_architecture_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = TinyLlama::default();
    tiny.write_hf(dir.path()).unwrap();
    let mut cfg = tiny.config_json();
    cfg["model_type"] = "gpt_neox".into();
    cfg["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    match load_safetensors_model(dir.path(), &WeightOptions::default()) {
        Err(EngineError::Unsupported(msg)) => {
            assert!(msg.contains("GPTNeoXForCausalLM") && msg.contains("Qwen3ForCausalLM"), "{msg}")
        }
        Err(e) => panic!("expected Unsupported, got {e}"),
        Ok(_) => panic!("a gpt_neox config loaded as llama"),
    }
}

#[test]
fn smollm2_greedy_token_matches_candle() {
    let Ok(path) = std::env::var("WICK_TEST_MODEL_SMOLLM2") else {
        eprintln!("WICK_TEST_MODEL_SMOLLM2 is not set: skipping the real-model greedy check");
        return;
    };
    let path = Path::new(&path);
    // "The capital of France is" in SmolLM2's vocabulary would do; fixed ids keep the test
    // independent of the tokenizer.
    let prompt: [u32; 8] = [504, 3575, 282, 4649, 314, 3458, 30, 378];
    let mut oracle = CandleQuantLlama::load(path);
    let want = oracle.step(&prompt, 0);
    for opts in [WeightOptions::as_stored(), WeightOptions::default()] {
        let model = load_gguf_model(path, &opts).unwrap();
        let ours = run_ours(model.as_ref(), &prompt, &[]);
        let got = &ours[prompt.len() - 1];
        assert_eq!(argmax(got), argmax(&want), "greedy next token differs ({opts:?})");
        // Both sides quantize activations to 8 bits before each quantized matmul, so rounding
        // flips from tiny float differences add up over 30 layers (with weights dequantized
        // to f32 on both sides the difference is ~3e-5); a loose bound still catches a broken
        // layer, which moves logits by several units.
        let d = max_diff(got, &want);
        eprintln!("SmolLM2 {opts:?}: max logit diff {d}");
        assert!(d < 2.0, "logits differ by {d}");
    }
}
