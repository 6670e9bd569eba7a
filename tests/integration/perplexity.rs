//! Perplexity through our batched, chunked, paged forward equals the same llama-perplexity
//! computation done window by window with candle-transformers' quantized llama as the oracle.

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use wick_engine::kv_cache::KvDtype;
use wick_engine::model::{load_gguf_model, WeightOptions};
use wick_engine::perplexity::{perplexity, PerplexityOptions};
use wick_tests::tiny_model::TinyLlama;

/// llama-perplexity's scoring with the oracle: each window from an empty cache, token by
/// token, rows `ctx/2 .. ctx-1` scored against the next token. Returns per-window NLL sums.
fn oracle_nll(path: &std::path::Path, tokens: &[u32], ctx: usize) -> Vec<f64> {
    let mut windows = Vec::new();
    for win in tokens.chunks_exact(ctx) {
        let mut f = std::fs::File::open(path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        let mut model = ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap();
        let mut nll = 0f64;
        for j in 0..ctx - 1 {
            let x = Tensor::new(&win[j..=j], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let row: Vec<f32> = model.forward(&x, j).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            if j >= ctx / 2 {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                nll -= row[win[j + 1] as usize] as f64 - max - z.ln();
            }
        }
        windows.push(nll);
    }
    windows
}

#[test]
fn perplexity_matches_the_oracle_window_by_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let tiny = TinyLlama::default();
    tiny.write_gguf(&path, GgmlDType::Q8_0).unwrap();
    let model = load_gguf_model(&path, &WeightOptions::as_stored()).unwrap();
    let ctx = 24;
    let tokens: Vec<u32> = (0..ctx as u32 * 3 + 7).map(|i| (i * 7919 + 13) % tiny.vocab_size as u32).collect();
    // Two windows per batch, 20-token steps: windows are batched and prefilled in chunks.
    let opts = PerplexityOptions {
        ctx,
        windows_per_batch: 2,
        max_batch_tokens: 20,
        block_size: 4,
        bos: None,
        kv_dtype: KvDtype::F32,
    };
    let mut printed = Vec::new();
    let report = perplexity(model.as_ref(), &tokens, &opts, |w| printed.push(w.running_ppl)).unwrap();
    let want = oracle_nll(&path, &tokens, ctx);
    assert_eq!(report.windows.len(), 3, "the 7-token tail is dropped");
    assert_eq!(printed.len(), 3);
    for (w, (got, want)) in report.windows.iter().zip(&want).enumerate() {
        assert_eq!(got.count, ctx - 1 - ctx / 2);
        assert!((got.nll - want).abs() < 1e-3 * want.abs().max(1.0), "window {w}: {} vs oracle {want}", got.nll);
    }
    let want_ppl = (want.iter().sum::<f64>() / report.tokens_scored as f64).exp();
    assert!((report.ppl - want_ppl).abs() < 1e-3 * want_ppl, "ppl {} vs oracle {want_ppl}", report.ppl);
    assert_eq!(printed.last().copied(), Some(report.ppl));
}

/// llama.cpp's `llama-perplexity` on the same file and settings (SmolLM2-135M-Instruct Q4_1,
/// /usr/share/common-licenses/GPL-3, -c 512, no BOS): 14 windows, 3570 scored tokens.
const LLAMA_CPP_GPL3_PPL: f64 = 18.3914;

#[test]
fn smollm2_perplexity_on_gpl3_is_within_one_percent_of_llama_cpp() {
    let Ok(path) = std::env::var("WICK_TEST_MODEL_SMOLLM2") else {
        eprintln!("NOTICE: WICK_TEST_MODEL_SMOLLM2 unset; SmolLM2 perplexity test not run");
        return;
    };
    let loaded = wick_engine::load(std::path::Path::new(&path), &Default::default()).unwrap();
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3").unwrap();
    let (_, add_bos) = loaded.text.bos();
    assert!(!add_bos, "SmolLM2 does not add BOS");
    let tokens = loaded.text.encode(&text, true).unwrap();
    let mut ppl = Vec::new();
    // The server's default KV cache (f16), then f32 (exact) and q8: f16 within 0.5% of f32.
    for kv_dtype in [KvDtype::F16, KvDtype::F32, KvDtype::Q8] {
        let opts = PerplexityOptions { kv_dtype, ..PerplexityOptions::default() };
        let report = perplexity(loaded.model.as_ref(), &tokens, &opts, |_| {}).unwrap();
        assert_eq!(report.windows.len(), 14);
        assert_eq!(report.tokens_scored, 3570);
        let rel = (report.ppl - LLAMA_CPP_GPL3_PPL).abs() / LLAMA_CPP_GPL3_PPL;
        eprintln!("SmolLM2 PPL with a {kv_dtype} KV cache: {:.4} ({:.2}% off llama.cpp)", report.ppl, rel * 100.0);
        assert!(
            rel < 0.01,
            "{kv_dtype}: PPL {:.4} vs llama.cpp {LLAMA_CPP_GPL3_PPL} ({:.2}% off)",
            report.ppl,
            rel * 100.0
        );
        ppl.push(report.ppl);
    }
    let f16_vs_f32 = (ppl[0] - ppl[1]).abs() / ppl[1];
    assert!(f16_vs_f32 < 0.005, "f16 KV PPL {:.4} vs f32 {:.4}", ppl[0], ppl[1]);
}

/// llama.cpp's `llama-perplexity` on Gemma 3 270M Q4_K_M (`scripts/fetch-model.sh gemma3`),
/// GPL-3, `-c 512` (BOS first in every window): the figure the architecture issue gives.
const LLAMA_CPP_GEMMA3_GPL3_PPL: f64 = 13.9062;

#[test]
fn gemma3_perplexity_on_gpl3_is_within_one_percent_of_llama_cpp() {
    let Ok(path) = std::env::var("WICK_TEST_MODEL_GEMMA3") else {
        eprintln!("NOTICE: WICK_TEST_MODEL_GEMMA3 unset; Gemma 3 perplexity test not run");
        return;
    };
    let loaded = wick_engine::load(std::path::Path::new(&path), &Default::default()).unwrap();
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3").unwrap();
    let (bos, add_bos) = loaded.text.bos();
    assert!(add_bos && bos.is_some(), "Gemma adds BOS");
    let tokens = loaded.text.encode(&text, true).unwrap();
    let opts = PerplexityOptions { bos, ..PerplexityOptions::default() };
    let report = perplexity(loaded.model.as_ref(), &tokens, &opts, |_| {}).unwrap();
    assert_eq!(report.windows.len(), 14);
    let rel = (report.ppl - LLAMA_CPP_GEMMA3_GPL3_PPL).abs() / LLAMA_CPP_GEMMA3_GPL3_PPL;
    eprintln!("Gemma 3 270M PPL {:.4} vs llama.cpp {LLAMA_CPP_GEMMA3_GPL3_PPL} ({:.2}% off)", report.ppl, rel * 100.0);
    assert!(rel < 0.01, "PPL {:.4} vs llama.cpp {LLAMA_CPP_GEMMA3_GPL3_PPL} ({:.2}% off)", report.ppl, rel * 100.0);
}
