//! Test doubles for the engine's unit tests: `FakeLm`, a `CausalLm` whose logits depend on the
//! whole context (or, with a sliding window, the window's part of it) *as read back through the
//! block tables* (so a wrong block table, a block reused while still live, or a missed
//! recompute changes its output), and `Gate`, which lets a
//! test hold the engine thread inside `forward` to observe queued and running states.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use candle_core::{Device, Tensor};

use crate::batch::ForwardBatch;
use crate::kv_cache::{AttentionKind, KvLayout, PagedKvCache};
use crate::model::{CausalLm, ModelConfig};
use crate::{EngineError, Result};

/// Lets a test hold `forward` until it releases permits.
#[derive(Default)]
pub struct Gate {
    permits: Mutex<usize>,
    cv: Condvar,
    entered: AtomicUsize,
}

impl Gate {
    pub fn release(&self, n: usize) {
        let mut p = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        *p = p.saturating_add(n);
        self.cv.notify_all();
    }
    /// How many forwards have started (including one waiting at the gate).
    pub fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
    fn pass(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut p = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        while *p == 0 {
            p = self.cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        *p -= 1;
    }
}

/// Opens the gate for good when dropped, so a failing test cannot hang in `Engine::drop`.
pub struct OpenOnDrop(pub Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.release(usize::MAX / 2);
    }
}

pub const VOCAB: usize = 64;

/// The next token the fake model predicts after `context` (never 0 or 1: EOS and UNK).
pub fn next_token(context: &[u32]) -> u32 {
    let h = context.iter().fold(0xcbf29ce484222325u64, |h, &t| (h ^ (t as u64 + 1)).wrapping_mul(0x100000001b3));
    2 + (h % (VOCAB as u64 - 2)) as u32
}

/// Greedy continuation of `prompt` by the fake model.
pub fn greedy(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    greedy_windowed(prompt, max_tokens, None)
}

/// Greedy continuation by the fake model that sees only the last `window` tokens.
pub fn greedy_windowed(prompt: &[u32], max_tokens: usize, window: Option<usize>) -> Vec<u32> {
    let mut ctx = prompt.to_vec();
    for _ in 0..max_tokens {
        let lo = window.map_or(0, |w| ctx.len().saturating_sub(w));
        ctx.push(next_token(&ctx[lo..]));
    }
    ctx[prompt.len()..].to_vec()
}

pub struct FakeLm {
    cfg: ModelConfig,
    block_size: usize,
    pub gate: Option<Arc<Gate>>,
    /// A forward containing this token fails.
    pub poison: Option<u32>,
}

impl FakeLm {
    pub fn new(block_size: usize, max_len: usize) -> Self {
        let cfg = ModelConfig {
            arch: "fake",
            vocab_size: VOCAB,
            hidden_size: 8,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 8,
            max_position_embeddings: max_len,
            kv_layout: KvLayout::uniform(1, 1, 8),
        };
        Self { cfg, block_size, gate: None, poison: None }
    }

    /// A fake model whose one layer has a sliding window of `window` tokens: it reads only the
    /// window, and its KV layout lets the scheduler release the blocks before it.
    pub fn sliding(block_size: usize, max_len: usize, window: usize) -> Self {
        let mut lm = Self::new(block_size, max_len);
        lm.cfg.kv_layout = KvLayout::new(&[AttentionKind::Sliding(window)], 1, 8);
        lm
    }
}

impl CausalLm for FakeLm {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward(&self, batch: &ForwardBatch, cache: &mut PagedKvCache) -> Result<Tensor> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        if self.poison.is_some_and(|p| batch.input_ids.contains(&p)) {
            return Err(EngineError::InvalidRequest("poisoned batch".into()));
        }
        // Each token is stored in the real KV cache as its id + 1 (0: never written), in
        // every lane of its K and V rows, so page copies and block tables are exercised.
        let bs = self.block_size;
        let hd = self.cfg.head_dim;
        let rows: Vec<f32> = batch.input_ids.iter().flat_map(|&t| std::iter::repeat_n(t as f32 + 1.0, hd)).collect();
        cache.validate(batch)?;
        cache.write(0, batch, &rows, &rows);
        let read = |table: &[u32], pos: usize| -> Option<u32> {
            let block = *table.get(pos / bs).filter(|&&b| b != crate::kv_cache::NO_BLOCK)?;
            let (mut k, mut v) = (Vec::new(), Vec::new());
            let (tile, slot) = (cache.offset(block as usize, 0, 0), pos % bs);
            cache.gather(0, &[tile], &[cache.offset(block as usize, 0, slot)], &mut k, &mut v);
            // K is the page's dimension-major tile: the token's first value is column `slot`.
            (k[slot] >= 1.0 && k[slot] == v[0]).then(|| k[slot] as u32 - 1)
        };
        let mut logits = vec![0f32; batch.logits_rows.len() * VOCAB];
        for (r, &row) in batch.logits_rows.iter().enumerate() {
            let s = batch.seqs.iter().find(|s| row >= s.token_start && row < s.token_start + s.num_tokens);
            let s = s.ok_or_else(|| EngineError::InvalidRequest(format!("row {row} outside every sequence")))?;
            let pos = batch.positions[row] as usize;
            let ctx: Vec<u32> = (self.cfg.kv_layout.layer_kind(0).first_visible(pos)..=pos)
                .map(|p| read(&s.block_tables[0], p))
                .collect::<Option<_>>()
                .ok_or_else(|| EngineError::InvalidRequest("read of an unwritten KV slot".into()))?;
            let next = next_token(&ctx) as usize;
            logits[r * VOCAB + next] = 8.0;
            logits[r * VOCAB + 2 + (next + 7) % (VOCAB - 2)] = 7.0;
        }
        Ok(Tensor::from_vec(logits, (batch.logits_rows.len(), VOCAB), &Device::Cpu)?)
    }
}

/// A word-level tokenizer over the fake vocabulary: id 0 `</s>` (EOS), 1 `<unk>`, then `w2..w63`.
pub fn tiny_text() -> Arc<crate::text::TextProcessor> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vocab = serde_json::Map::new();
    vocab.insert("</s>".into(), 0.into());
    vocab.insert("<unk>".into(), 1.into());
    for i in 2..VOCAB {
        vocab.insert(format!("w{i}"), i.into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "</s>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).expect("write tokenizer");
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "</s>"}"#).expect("write config");
    Arc::new(crate::text::TextProcessor::from_hf_dir(dir.path(), None).expect("tiny tokenizer"))
}

/// Characters of [`char_text`], ids 3.. in order.
pub const CHARS: &str = "{}[]\":, 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

/// A character-level tokenizer over the fake vocabulary, so a grammar can spell JSON with it:
/// id 0 `</s>` (EOS, special), 1 `<unk>`, 2 `<t>` (a plain added token, used as a trigger),
/// then one id per character of [`CHARS`]; decoding concatenates.
pub fn char_text() -> Arc<crate::text::TextProcessor> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vocab = serde_json::Map::new();
    vocab.insert("</s>".into(), 0.into());
    vocab.insert("<unk>".into(), 1.into());
    vocab.insert("<t>".into(), 2.into());
    for (i, c) in CHARS.chars().enumerate() {
        vocab.insert(c.to_string(), (3 + i).into());
    }
    assert_eq!(vocab.len(), VOCAB);
    let added = |id: u32, content: &str, special: bool| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": special})
    };
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "</s>", true), added(2, "<t>", false)],
        "normalizer": null, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null, "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).expect("write tokenizer");
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "</s>"}"#).expect("write config");
    Arc::new(crate::text::TextProcessor::from_hf_dir(dir.path(), None).expect("char tokenizer"))
}

/// Token ids of `s` in [`char_text`] (characters of [`CHARS`] only).
pub fn char_ids(s: &str) -> Vec<u32> {
    s.chars().map(|c| 3 + CHARS.chars().position(|x| x == c).expect("a CHARS character") as u32).collect()
}
