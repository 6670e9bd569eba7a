//! Embedding models against oracles: wick's batched, ragged BERT forward (the embedding
//! thread, several requests at once) against candle-transformers' `BertModel` run on each
//! sequence alone and pooled here (within 1e-5 cosine), on a tiny random BERT written at test
//! time (F32 and F16 weights; batched == alone, bit for bit) and on the real all-MiniLM-L6-v2; and the real model against reference vectors from
//! sentence-transformers on PyTorch (tests/fixtures/minilm_reference.json, recorded once by
//! scripts/embedding-reference.py), within 1e-4, plus the retrieval sanity of paraphrases.
//!
//! Decoder embedding models (Qwen3-Embedding style, wick's own model layer) against llama.cpp's
//! `llama-embedding` on the tiny qwen3 fixtures (tests/fixtures/decoder_embedding_reference.json,
//! recorded by scripts/decoder-embedding-reference.py): the same token ids, last-token and mean
//! pooling, a GGUF whose `pooling_type` and `add_eos_token` say what to do; and batched ==
//! alone, bit for bit.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use wick_engine::embed::{DecoderModel, EmbedModel, EmbedOptions, Embedder, EmbedderConfig, EncoderModel, Pooling};
use wick_engine::kv_cache::KvDtype;

const HIDDEN: usize = 32;
const VOCAB: usize = 120;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A 2-layer BERT with random weights (its linears stored as `dtype`) and a word-level
/// tokenizer, as a sentence-transformers folder with `pooling` (`cls` or `mean`) and
/// normalization.
fn write_tiny_bert(dir: &Path, pooling: &str, dtype: DType) {
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": VOCAB, "hidden_size": HIDDEN,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 64,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "position_embedding_type": "absolute"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut add = |name: &str, dims: &[usize], scale: f64| {
        let x = (Tensor::randn(0f32, 1f32, dims, &Device::Cpu).unwrap() * scale).unwrap();
        t.insert(name.to_owned(), x);
    };
    add("embeddings.word_embeddings.weight", &[VOCAB, HIDDEN], 1.0);
    add("embeddings.position_embeddings.weight", &[64, HIDDEN], 0.5);
    add("embeddings.token_type_embeddings.weight", &[2, HIDDEN], 0.5);
    let norm = |t: &mut HashMap<String, Tensor>, name: &str| {
        t.insert(format!("{name}.weight"), Tensor::ones(HIDDEN, DType::F32, &Device::Cpu).unwrap());
        t.insert(format!("{name}.bias"), Tensor::zeros(HIDDEN, DType::F32, &Device::Cpu).unwrap());
    };
    norm(&mut t, "embeddings.LayerNorm");
    for l in 0..2 {
        let p = format!("encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", HIDDEN, HIDDEN),
            ("attention.self.key", HIDDEN, HIDDEN),
            ("attention.self.value", HIDDEN, HIDDEN),
            ("attention.output.dense", HIDDEN, HIDDEN),
            ("intermediate.dense", 64, HIDDEN),
            ("output.dense", HIDDEN, 64),
        ] {
            let w =
                (Tensor::randn(0f32, 1f32, (out, inp), &Device::Cpu).unwrap() * (1.0 / (inp as f64).sqrt())).unwrap();
            t.insert(format!("{p}.{name}.weight"), w.to_dtype(dtype).unwrap());
            let b = (Tensor::randn(0f32, 1f32, out, &Device::Cpu).unwrap() * 0.1).unwrap();
            t.insert(format!("{p}.{name}.bias"), b);
        }
        norm(&mut t, &format!("{p}.attention.output.LayerNorm"));
        norm(&mut t, &format!("{p}.output.LayerNorm"));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = (0..VOCAB)
        .map(|i| {
            let word = match i {
                0 => "[PAD]".to_owned(),
                1 => "[UNK]".to_owned(),
                2 => "[CLS]".to_owned(),
                3 => "[SEP]".to_owned(),
                i => format!("w{i}"),
            };
            (word, serde_json::json!(i))
        })
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let cfg = serde_json::json!({"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean"});
    std::fs::write(dir.join("1_Pooling/config.json"), cfg.to_string()).unwrap();
}

/// candle-transformers' BERT on one sequence alone (no padding, no mask), pooled and
/// normalized here.
struct Oracle {
    bert: BertModel,
}

impl Oracle {
    fn load(dir: &Path) -> Self {
        let config: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        Self { bert: BertModel::load(vb, &config).unwrap() }
    }

    fn embed(&self, ids: &[u32], pooling: Pooling) -> Vec<f32> {
        let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let types = input.zeros_like().unwrap();
        let out = self.bert.forward(&input, &types, None).unwrap().squeeze(0).unwrap();
        let v: Vec<f32> = match pooling {
            Pooling::Cls => out.get(0).unwrap().to_vec1().unwrap(),
            Pooling::Mean => out.mean(0).unwrap().to_vec1().unwrap(),
            Pooling::LastToken => out.get(ids.len() - 1).unwrap().to_vec1().unwrap(),
        };
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }
}

/// Submits `seqs` as several concurrent requests (so the thread batches them together) and
/// returns the vectors in order.
fn embed_concurrently(embedder: &Embedder, seqs: &[Vec<u32>], per_request: usize) -> Vec<Vec<f32>> {
    let receivers: Vec<_> = seqs.chunks(per_request).map(|c| embedder.submit(c.to_vec()).unwrap()).collect();
    receivers.into_iter().flat_map(|rx| rx.blocking_recv().unwrap().unwrap()).collect()
}

#[test]
fn tiny_bert_batched_matches_candle_alone_and_itself_alone() {
    for (pooling, dtype) in [("mean", DType::F32), ("cls", DType::F32), ("mean", DType::F16)] {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), pooling, dtype);
        let model = EncoderModel::load(dir.path()).unwrap();
        let info = model.info().clone();
        assert_eq!((info.dim, info.max_len, info.normalize), (HIDDEN, 64, true));
        assert_eq!(wick_engine::embed::kv_bytes_bound(dir.path(), KvDtype::F16).unwrap(), 0, "an encoder has no cache");
        assert_eq!(info.pooling, if pooling == "cls" { Pooling::Cls } else { Pooling::Mean });
        assert_eq!(model.tokenize("w5 w6 nope").unwrap(), [2, 5, 6, 1, 3], "[CLS] ... [SEP], unknown words");
        let oracle = Oracle::load(dir.path());
        // A small token budget forces several forwards of inputs of lengths 1..40.
        let embedder = Embedder::start(model, EmbedderConfig { max_batch_tokens: 96, max_waiting: 64 }).unwrap();
        let seqs: Vec<Vec<u32>> = (0..23u32)
            .map(|i| (0..1 + (i * 7) % 40).map(|j| 2 + (i * 13 + j * 5) % (VOCAB as u32 - 2)).collect())
            .collect();
        let got = embed_concurrently(&embedder, &seqs, 4);
        assert_eq!(got.len(), seqs.len());
        for (i, (s, v)) in seqs.iter().zip(&got).enumerate() {
            let want = oracle.embed(s, info.pooling);
            let c = cosine(v, &want);
            assert!(1.0 - c < 1e-5, "{pooling} pooling, {dtype:?}, sequence {i} ({} tokens): cosine {c}", s.len());
            let alone = embed_concurrently(&embedder, std::slice::from_ref(s), 1).remove(0);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(v), bits(&alone), "sequence {i}: batched != alone");
        }
        let stats = embedder.stats();
        assert!(stats.forwards_total >= 3, "the budget split the batch: {stats:?}");
        assert_eq!(stats.inputs_total, 2 * 23, "23 together, then each alone");
        assert!(embedder.submit(vec![vec![]]).is_err(), "an empty input is refused");
        assert!(embedder.submit(vec![vec![5; 65]]).is_err(), "an input over max_len is refused");
        assert!(embedder.submit(vec![vec![VOCAB as u32]]).is_err(), "an id outside the vocabulary is refused");
    }
}

#[test]
fn a_cancelled_request_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), "mean", DType::F32);
    let embedder = Embedder::start(EncoderModel::load(dir.path()).unwrap(), EmbedderConfig::default()).unwrap();
    let dropped = embedder.submit(vec![vec![4, 5, 6]; 50]).unwrap();
    drop(dropped);
    let kept = embedder.submit(vec![vec![4, 5, 6]]).unwrap();
    assert_eq!(kept.blocking_recv().unwrap().unwrap().len(), 1);
    assert!(embedder.is_running());
}

#[derive(serde::Deserialize)]
struct Reference {
    versions: HashMap<String, String>,
    sentences: Vec<String>,
    tokens: Vec<usize>,
    embeddings: Vec<Vec<f32>>,
}

#[test]
fn minilm_matches_candle_alone_and_sentence_transformers() {
    let Ok(path) = std::env::var("WICK_TEST_MODEL_MINILM") else {
        eprintln!("NOTICE: WICK_TEST_MODEL_MINILM unset (scripts/fetch-model.sh minilm); MiniLM test not run");
        return;
    };
    let dir = Path::new(&path);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/minilm_reference.json");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    eprintln!("reference vectors from {:?}", reference.versions);
    let model = EncoderModel::load(dir).unwrap();
    let info = model.info().clone();
    assert_eq!((info.dim, info.max_len, info.pooling, info.normalize), (384, 256, Pooling::Mean, true));
    let ids: Vec<Vec<u32>> = reference.sentences.iter().map(|s| model.tokenize(s).unwrap()).collect();
    let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
    assert_eq!(lens, reference.tokens, "the same tokenization as sentence-transformers");
    let oracle = Oracle::load(dir);
    let embedder = Embedder::start(model, EmbedderConfig::default()).unwrap();
    let got = embed_concurrently(&embedder, &ids, 3);
    for (i, v) in got.iter().enumerate() {
        let alone = oracle.embed(&ids[i], Pooling::Mean);
        let c = cosine(v, &alone);
        assert!(1.0 - c < 1e-5, "sentence {i}: cosine {c} against candle-transformers alone");
        let want = &reference.embeddings[i];
        let c = cosine(v, want);
        let max_diff = v.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(1.0 - c < 1e-4 && max_diff < 1e-4, "sentence {i}: cosine {c}, max |diff| {max_diff} vs reference");
    }
    let sim = |a: usize, b: usize| cosine(&got[a], &got[b]);
    assert!(sim(0, 1) > sim(0, 2) + 0.3, "cat/kitten {} vs cat/revenue {}", sim(0, 1), sim(0, 2));
    assert!(sim(3, 4) > sim(3, 0) + 0.3, "password pair {} vs password/cat {}", sim(3, 4), sim(3, 0));
}

#[derive(serde::Deserialize)]
struct DecoderReference {
    llama_cpp: HashMap<String, String>,
    prompts: Vec<String>,
    models: HashMap<String, DecoderModelReference>,
}

#[derive(serde::Deserialize)]
struct DecoderModelReference {
    sha256: String,
    tokens: Vec<Vec<u32>>,
    /// By pooling (`last`, `mean`, or `file`: the GGUF's own `pooling_type`).
    embeddings: HashMap<String, Vec<Vec<f32>>>,
}

fn decoder_reference() -> DecoderReference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/decoder_embedding_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sha256_hex(path: &Path) -> String {
    wick_server::model_source::sha256_file(path).unwrap()
}

/// Loads a decoder embedding model with an f32 KV cache (what the references used).
fn decoder(path: &Path, pooling: Option<Pooling>) -> DecoderModel {
    DecoderModel::load(path, &EmbedOptions { pooling, kv_dtype: KvDtype::F32, ..EmbedOptions::default() }).unwrap()
}

/// `qwen3.gguf` with the two keys a Qwen3-Embedding GGUF carries: `qwen3.pooling_type = 3`
/// (last) and `tokenizer.ggml.add_eos_token = true` (as the reference script writes it).
fn write_embedding_variant(src: &Path, dst: &Path) {
    use candle_core::quantized::gguf_file::{self, Value};
    let mut f = std::fs::File::open(src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut meta = content.metadata.clone();
    meta.insert("qwen3.pooling_type".into(), Value::U32(3));
    meta.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| (name.clone(), content.tensor(&mut f, name, &Device::Cpu).unwrap()))
        .collect();
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = std::fs::File::create(dst).unwrap();
    gguf_file::write(&mut out, &meta_refs, &tensor_refs).unwrap();
}

/// Checks `model`'s tokenization and vectors (embedded together, through the embedding thread)
/// against llama.cpp's. Returns the worst cosine distance and element difference.
fn check_against_llama_cpp(
    what: &str,
    model: DecoderModel,
    prompts: &[String],
    reference: &DecoderModelReference,
    pooling: &str,
) -> (f64, f32) {
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| model.tokenize(p).unwrap()).collect();
    assert_eq!(ids, reference.tokens, "{what}: the token ids llama-embedding fed");
    let embedder = Embedder::start(model, EmbedderConfig::default()).unwrap();
    let got = embed_concurrently(&embedder, &ids, 2);
    let (mut worst_cos, mut worst_diff) = (0f64, 0f32);
    for (i, (v, want)) in got.iter().zip(&reference.embeddings[pooling]).enumerate() {
        assert_eq!(v.len(), want.len(), "{what}: width");
        let c = cosine(v, want);
        let diff = v.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{what}, prompt {i}: L2-normalized, norm {norm}");
        eprintln!(
            "{what} {pooling}, prompt {i} ({} tokens): 1 - cosine {:.3e}, max |diff| {diff:.3e}",
            ids[i].len(),
            1.0 - c
        );
        worst_cos = worst_cos.max(1.0 - c);
        worst_diff = worst_diff.max(diff);
    }
    (worst_cos, worst_diff)
}

// Tolerances. These vectors are the final-normed hidden states, 64 wide, unit length, so each
// element is ~0.1. For the F32 fixture no step rounds activations on either side: the one F16
// tensor is the embedding, which both look up exactly (llama.cpp rounds activations to f16 only
// for F16 *matmuls*, i.e. the LM head, which an embedding never runs), the KV cache is f32 on
// both, and llama.cpp prints 7 decimals (5e-8). What remains is f32 summation order over 2
// layers. Measured (commit of this test): max |diff| 4.9e-7, 1 - cosine 1.5e-12. The bounds,
// 1e-5 per element and 1e-9 in cosine distance, leave 20x room for summation order and nothing
// else (a wrong RoPE, norm, pooling row or missing EOS moves a random-weight vector's cosine
// distance by far more than 1e-2). For Q8_0 llama.cpp quantizes activations to Q8_0 per block
// of 32 before each matmul and wick's Q8_0 kernel does the same: measured 8.9e-8 per element;
// but one rounding landing on the other side of a boundary moves later activations (fixture
// README: Q8_0 logits within 2e-2 to 5e-2 over 49152-wide rows). Since wick's Q8_0 kernel sums
// even and odd blocks in separate lanes (llama.cpp: one chain), one Q8_0 vector here has
// such a flip: 1.75e-3 per element, 1 - cosine 5.7e-6 (the others stay under 1.2e-7). So the
// bound is 3e-3 per element and 1e-5 in cosine distance.
const F32_COS: f64 = 1e-9;
const F32_DIFF: f32 = 1e-5;
const Q8_COS: f64 = 1e-5;
const Q8_DIFF: f32 = 3e-3;

#[test]
fn decoder_embeddings_match_llama_cpp() {
    let reference = decoder_reference();
    eprintln!("llama.cpp reference: {:?}", reference.llama_cpp);
    let dir = crate::archs::fixtures_dir();
    for (name, cos_tol, diff_tol) in [("qwen3", F32_COS, F32_DIFF), ("qwen3-q8_0", Q8_COS, Q8_DIFF)] {
        let path = dir.join(format!("{name}.gguf"));
        let r = &reference.models[name];
        assert_eq!(sha256_hex(&path), r.sha256, "{name}: the fixture the reference was made from");
        // The fixtures carry no pooling_type: pooling is forced, as `[[models]] pooling` does.
        for (pooling, p) in [("last", Pooling::LastToken), ("mean", Pooling::Mean)] {
            let model = decoder(&path, Some(p));
            assert_eq!(model.info().pooling, p);
            assert_eq!((model.info().dim, model.info().normalize), (64, true));
            let (c, d) = check_against_llama_cpp(name, model, &reference.prompts, r, pooling);
            assert!(c < cos_tol && d < diff_tol, "{name} {pooling}: 1 - cosine {c:.3e}, max |diff| {d:.3e}");
        }
    }
}

#[test]
fn a_gguf_with_pooling_type_and_add_eos_is_an_embedding_model() {
    let reference = decoder_reference();
    let tmp = tempfile::tempdir().unwrap();
    let plain = crate::archs::fixtures_dir().join("qwen3.gguf");
    let path = tmp.path().join("qwen3-embed.gguf");
    write_embedding_variant(&plain, &path);
    assert!(!wick_engine::embed::is_embedding_model(&plain), "no pooling_type: a chat model");
    assert!(wick_engine::embed::is_embedding_model(&path), "pooling_type 3: an embedding model");
    let model = decoder(&path, None);
    assert_eq!(model.info().pooling, Pooling::LastToken, "from qwen3.pooling_type");
    let eos = 2; // SmolLM2's <|im_end|>, the fixture's tokenizer.ggml.eos_token_id
    assert_eq!(model.tokenize("short").unwrap().last(), Some(&eos), "add_eos_token appends EOS");
    let r = &reference.models["qwen3-embed"];
    let (c, d) = check_against_llama_cpp("qwen3-embed", model, &reference.prompts, r, "file");
    assert!(c < F32_COS && d < F32_DIFF, "1 - cosine {c:.3e}, max |diff| {d:.3e}");
}

/// On the Q8_0 fixture, whose every matmul runs on wick's batch-invariant kernel (float weights
/// go through a gemm whose summation order depends on the number of rows, so float models agree
/// batched vs alone only to ~1e-6, as in tests/integration/batching.rs).
#[test]
fn decoder_embeddings_batched_equal_alone_bit_for_bit() {
    let path = crate::archs::fixtures_dir().join("qwen3-q8_0.gguf");
    for pooling in [Pooling::LastToken, Pooling::Mean] {
        let model = decoder(&path, Some(pooling));
        // Lengths 1..70 (several KV pages), ids across the vocabulary.
        let seqs: Vec<Vec<u32>> =
            (0..17u32).map(|i| (0..1 + (i * 11) % 70).map(|j| (i * 7919 + j * 104_729) % 49_152).collect()).collect();
        let alone: Vec<Vec<f32>> = seqs.iter().map(|s| model.embed(&[s.as_slice()]).unwrap().remove(0)).collect();
        // A small budget splits them into several ragged forwards; concurrent requests mix.
        let embedder = Embedder::start(model, EmbedderConfig { max_batch_tokens: 200, max_waiting: 64 }).unwrap();
        let together = embed_concurrently(&embedder, &seqs, 3);
        assert!(embedder.stats().forwards_total >= 3, "{:?}", embedder.stats());
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a, b, "{pooling:?}, sequence {i} ({} tokens): batched differs from alone", seqs[i].len());
        }
        assert!(embedder.submit(vec![vec![]]).is_err(), "an empty input is refused");
        assert!(embedder.submit(vec![vec![49_152]]).is_err(), "an id outside the vocabulary is refused");
    }
}

/// A decoder embedding model's KV cache never outgrows the bound the memory budget counts:
/// inputs needing more pages than that run as several forwards, with the same bits.
#[test]
fn decoder_embedding_cache_stays_within_its_bound() {
    let path = crate::archs::fixtures_dir().join("qwen3-q8_0.gguf");
    // 3 layers x (K and V) x 2 kv heads x 32 dims x 16 tokens per page, f32; inputs up to the
    // file's 40960 positions take 2560 pages.
    let bound = wick_engine::embed::kv_bytes_bound(&path, KvDtype::F32).unwrap();
    assert_eq!(bound, 2560 * 3 * 2 * 2 * 32 * 16 * 4);
    assert_eq!(wick_engine::embed::kv_bytes_bound(&path, KvDtype::F16).unwrap(), bound / 2);
    let model = decoder(&path, Some(Pooling::LastToken));
    // 2600 one-token inputs need 2600 pages: two forwards.
    let seqs: Vec<Vec<u32>> = (0..2600u32).map(|i| vec![(i * 7919) % 49_152]).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let together = model.embed(&refs).unwrap();
    assert_eq!(together.len(), seqs.len());
    for i in [0, 1, 2559, 2560, 2599] {
        assert_eq!(together[i], model.embed(&refs[i..i + 1]).unwrap()[0], "input {i}");
    }
}
