//! Embedding models against oracles: wick's batched, padded, masked forward (the embedding
//! thread, several requests at once) against candle-transformers' `BertModel` run on each
//! sequence alone and pooled here (within 1e-5 cosine), on a tiny random BERT written at test
//! time and on the real all-MiniLM-L6-v2; and the real model against reference vectors from
//! sentence-transformers on PyTorch (tests/fixtures/minilm_reference.json, recorded once by
//! scripts/embedding-reference.py), within 1e-4, plus the retrieval sanity of paraphrases.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use wick_engine::embed::{Embedder, EmbedderConfig, EncoderModel, Pooling};

const HIDDEN: usize = 32;
const VOCAB: usize = 120;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A 2-layer BERT with random weights and a word-level tokenizer, as a sentence-transformers
/// folder with `pooling` (`cls` or `mean`) and normalization.
fn write_tiny_bert(dir: &Path, pooling: &str) {
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
            t.insert(format!("{p}.{name}.weight"), w);
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

/// Submits `seqs` as several concurrent requests (so the thread batches them together with
/// padding) and returns the vectors in order.
fn embed_concurrently(embedder: &Embedder, seqs: &[Vec<u32>], per_request: usize) -> Vec<Vec<f32>> {
    let receivers: Vec<_> = seqs.chunks(per_request).map(|c| embedder.submit(c.to_vec()).unwrap()).collect();
    receivers.into_iter().flat_map(|rx| rx.blocking_recv().unwrap().unwrap()).collect()
}

#[test]
fn tiny_bert_batched_and_padded_matches_candle_alone() {
    for pooling in ["mean", "cls"] {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), pooling);
        let model = EncoderModel::load(dir.path()).unwrap();
        let info = model.info().clone();
        assert_eq!((info.dim, info.max_len, info.normalize), (HIDDEN, 64, true));
        assert_eq!(info.pooling, if pooling == "cls" { Pooling::Cls } else { Pooling::Mean });
        assert_eq!(model.tokenize("w5 w6 nope").unwrap(), [2, 5, 6, 1, 3], "[CLS] ... [SEP], unknown words");
        let oracle = Oracle::load(dir.path());
        // A small token budget forces several forwards; lengths 1..40 force padding.
        let embedder = Embedder::start(model, EmbedderConfig { max_batch_tokens: 96, max_waiting: 64 }).unwrap();
        let seqs: Vec<Vec<u32>> = (0..23u32)
            .map(|i| (0..1 + (i * 7) % 40).map(|j| 2 + (i * 13 + j * 5) % (VOCAB as u32 - 2)).collect())
            .collect();
        let got = embed_concurrently(&embedder, &seqs, 4);
        assert_eq!(got.len(), seqs.len());
        for (i, (s, v)) in seqs.iter().zip(&got).enumerate() {
            let want = oracle.embed(s, info.pooling);
            let c = cosine(v, &want);
            assert!(1.0 - c < 1e-5, "{pooling} pooling, sequence {i} ({} tokens): cosine {c}", s.len());
        }
        let stats = embedder.stats();
        assert!(stats.forwards_total >= 3, "the budget split the batch: {stats:?}");
        assert_eq!(stats.inputs_total, 23);
        assert!(embedder.submit(vec![vec![]]).is_err(), "an empty input is refused");
        assert!(embedder.submit(vec![vec![5; 65]]).is_err(), "an input over max_len is refused");
        assert!(embedder.submit(vec![vec![VOCAB as u32]]).is_err(), "an id outside the vocabulary is refused");
    }
}

#[test]
fn a_cancelled_request_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), "mean");
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
