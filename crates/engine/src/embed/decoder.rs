//! A decoder embedding model (Qwen3-Embedding style): a GGUF file or a Hugging Face /
//! sentence-transformers folder run by wick's own model layer ([`CausalLm`], any registered
//! architecture), stopping before the LM head. A batch of inputs is one ragged forward over a
//! small paged KV cache of its own (each input in its own pages, no padding), the final-normed
//! hidden states of the rows the pooling reads (last token, mean, or first) come back, and
//! are pooled and L2-normalized.
//!
//! Texts are tokenized as the model's tokenizer says, with what it appends (Qwen3-Embedding's
//! `<|endoftext|>`: GGUF `tokenizer.ggml.add_eos_token`, or the folder's post-processor), since
//! last-token pooling reads exactly that token.

use std::path::Path;
use std::sync::Mutex;

use super::encoder::EmbedInfo;
use super::pooling::{Pooling, SentenceTransformersConfig};
use super::{EmbedModel, EmbedOptions};
use crate::batch::ForwardBatch;
use crate::engine::new_kv_cache;
use crate::kv_cache::{KvDtype, KvLayout, PagedKvCache};
use crate::model::{self, CausalLm, GgufFile, WeightOptions};
use crate::text::TextProcessor;
use crate::{EngineError, Result};

/// Tokens per KV page of the embedding cache.
const BLOCK_SIZE: usize = 16;
/// Tokens whose pages one forward may hold (more inputs run as several forwards, which give
/// the same bits); an input longer than this gets pages of its own length.
const FORWARD_TOKENS: usize = 8192;

/// Most pages (over all KV groups) the cache of a model with `groups` KV groups and inputs of
/// at most `max_len` tokens ever holds.
fn page_bound(groups: usize, max_len: usize) -> usize {
    groups * (FORWARD_TOKENS / BLOCK_SIZE).max(max_len.div_ceil(BLOCK_SIZE))
}

/// Bytes of the KV cache a decoder embedding model at `path` may hold at most, from its
/// header alone.
pub(super) fn kv_bytes_bound(path: &Path, dtype: KvDtype) -> Result<u64> {
    let spec = if path.is_dir() {
        model::hf_spec(path)?
    } else {
        let (gguf, mut file) = model::source::open_gguf(path)?;
        model::gguf_spec(&gguf.content, &mut file)?
    };
    let kinds: Vec<_> = spec.layers.iter().map(|l| l.attention).collect();
    let layout = KvLayout::new(&kinds, spec.num_kv_heads, spec.head_dim).with_dtype(dtype);
    let pages = page_bound(layout.num_groups(), spec.max_position_embeddings);
    Ok((pages * layout.bytes_per_block(BLOCK_SIZE)) as u64)
}

/// The network and the cache it runs over; the embedding thread is its only user.
struct Runner {
    lm: Box<dyn CausalLm>,
    /// Sized for the largest batch so far (grown on demand, reused after).
    cache: Option<PagedKvCache>,
}

pub struct DecoderModel {
    info: EmbedInfo,
    text: TextProcessor,
    kv_dtype: KvDtype,
    runner: Mutex<Runner>,
}

/// `<arch>.pooling_type` of a parsed GGUF header, if the file has one.
pub(crate) fn gguf_pooling_type(gguf: &GgufFile) -> Option<u32> {
    let arch = gguf.content.metadata.get("general.architecture")?.to_string().ok()?;
    let v = gguf.content.metadata.get(&format!("{arch}.pooling_type"))?;
    v.to_u32().ok().or_else(|| v.to_i32().ok().and_then(|n| u32::try_from(n).ok()))
}

impl DecoderModel {
    /// Loads a GGUF file or a Hugging Face folder. Pooling: `opts.pooling`, else the file's
    /// (`pooling_type`, or the folder's `1_Pooling`), else last token. Normalization: the
    /// folder's `Normalize` module when it has `modules.json`, else L2 (llama.cpp's default).
    pub fn load(path: &Path, opts: &EmbedOptions) -> Result<Self> {
        let weights = WeightOptions::default();
        let (lm, text, pooling, normalize, max_seq, prompts) = if path.is_dir() {
            let lm = model::load_safetensors_model(path, &weights)?;
            let text = TextProcessor::from_hf_dir(path, None)?;
            let st = SentenceTransformersConfig::read(path)?;
            let pooling = if st.has_modules { st.pooling } else { Pooling::LastToken };
            let normalize = !st.has_modules || st.normalize;
            (lm, text, pooling, normalize, st.max_seq_length, (st.prompts, st.default_prompt_name))
        } else {
            let (gguf, mut file) = model::source::open_gguf(path)?;
            let pooling = match gguf_pooling_type(&gguf) {
                Some(v) => Pooling::from_gguf(v).map_err(|e| e.in_file(path))?,
                None => None,
            };
            let lm = model::load_gguf_file(&gguf, &mut file, &weights).map_err(|e| e.in_file(path))?;
            let text = TextProcessor::from_gguf(&gguf.content, None)?;
            (lm, text, pooling.unwrap_or(Pooling::LastToken), true, None, Default::default())
        };
        let cfg = lm.config();
        let max_len = max_seq.unwrap_or(cfg.max_position_embeddings).min(cfg.max_position_embeddings);
        let info = EmbedInfo {
            dim: cfg.hidden_size,
            max_len,
            vocab_size: cfg.vocab_size,
            pooling: opts.pooling.unwrap_or(pooling),
            normalize,
            prompts: prompts.0,
            default_prompt_name: prompts.1,
        };
        Ok(Self { info, text, kv_dtype: opts.kv_dtype, runner: Mutex::new(Runner { lm, cache: None }) })
    }

    pub(crate) fn info_mut(&mut self) -> &mut EmbedInfo {
        &mut self.info
    }
}

impl EmbedModel for DecoderModel {
    fn info(&self) -> &EmbedInfo {
        &self.info
    }

    /// Token ids of `text`: BOS when the model adds one, the text, then what the tokenizer
    /// appends (EOS for Qwen3-Embedding).
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.text.encode(text, true)?;
        ids.extend_from_slice(self.text.appended_ids());
        Ok(ids)
    }

    /// Embeds `seqs` in ragged forwards (each sequence in its own pages, positions from 0)
    /// whose pages stay within the model's bound: one pooled (and, as the model says,
    /// normalized) vector per sequence, in order.
    fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if seqs.iter().any(|s| s.is_empty() || s.len() > self.info.max_len) {
            return Err(EngineError::InvalidRequest(format!(
                "every sequence must hold 1 to {} tokens",
                self.info.max_len
            )));
        }
        let mut guard = self.runner.lock().unwrap_or_else(|p| p.into_inner());
        let runner = &mut *guard;
        let groups = runner.lm.config().kv_layout.num_groups();
        let bound = page_bound(groups, self.info.max_len);
        let mut out = Vec::with_capacity(seqs.len());
        let need = |s: &[u32]| s.len().div_ceil(BLOCK_SIZE) * groups;
        let mut start = 0;
        while start < seqs.len() {
            let (mut end, mut pages) = (start, 0);
            while end < seqs.len() && pages + need(seqs[end]) <= bound {
                pages += need(seqs[end]);
                end += 1;
            }
            out.extend(self.forward(runner, &seqs[start..end], pages)?);
            start = end;
        }
        Ok(out)
    }
}

impl DecoderModel {
    /// One ragged forward of `seqs`, which take `pages` pages.
    fn forward(&self, runner: &mut Runner, seqs: &[&[u32]], pages: usize) -> Result<Vec<Vec<f32>>> {
        let groups = runner.lm.config().kv_layout.num_groups();
        let cache = match runner.cache.take() {
            Some(c) if c.num_blocks >= pages => c,
            _ => new_kv_cache(runner.lm.config(), self.kv_dtype, pages, BLOCK_SIZE)?,
        };
        let cache = runner.cache.insert(cache);
        let pooling = self.info.pooling;
        let mut batch = ForwardBatch::default();
        let mut next = 0u32;
        for s in seqs {
            let nb = s.len().div_ceil(BLOCK_SIZE) as u32;
            let tables = (0..groups)
                .map(|_| {
                    let t = (next..next + nb).collect();
                    next += nb;
                    t
                })
                .collect();
            let start = batch.num_tokens();
            batch.push_seq(s, s.len(), tables, false);
            batch.logits_rows.extend(pooling.rows(s.len()).map(|r| start + r));
        }
        let hidden = runner.lm.hidden_states(&batch, cache)?;
        let dim = self.info.dim;
        if hidden.dims() != [batch.logits_rows.len(), dim] {
            return Err(EngineError::Forward(format!(
                "hidden states of shape {:?}, expected [{}, {dim}]",
                hidden.dims(),
                batch.logits_rows.len()
            )));
        }
        let host = hidden.flatten_all()?.to_vec1::<f32>()?;
        let mut at = 0;
        let out = seqs
            .iter()
            .map(|s| {
                let n = pooling.rows(s.len()).len();
                let rows = &host[at * dim..(at + n) * dim];
                at += n;
                let mut v = vec![0.0f32; dim];
                // The rows are exactly the pooled ones: pool them as a sequence of `n`.
                match pooling {
                    Pooling::Mean => Pooling::Mean.pool(rows, n, dim, &mut v),
                    _ => v.copy_from_slice(rows),
                }
                if self.info.normalize {
                    super::normalize(&mut v);
                }
                v
            })
            .collect();
        Ok(out)
    }
}
