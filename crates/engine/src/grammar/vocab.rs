//! The model's vocabulary as llguidance sees it: a `TokTrie` built from wick's own token byte
//! strings (so GGUF tokenizers and `tokenizer.json` work alike). Special tokens (added tokens
//! marked special, and every end-of-generation token) get llguidance's `0xFF` marker before
//! their name, so no grammar can spell them as text; the end-of-generation ids are the trie's
//! EOS set, allowed exactly where the grammar may end.

use toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::GrammarError;
use crate::text::TextProcessor;

/// A tokenizer environment over wick's vocabulary. Tokenization of forced bytes is greedy over
/// the trie (not canonical): wick samples every token, so llguidance never forces any.
pub(super) struct WickTokEnv {
    trie: TokTrie,
}

impl TokenizerEnv for WickTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// The byte string of every id as the trie stores it: special tokens as `0xFF` + name.
pub(super) fn trie_words(text: &TextProcessor) -> Vec<Vec<u8>> {
    let special: std::collections::HashSet<u32> =
        text.special_token_ids().into_iter().chain(text.eog_token_ids().iter().copied()).collect();
    (0..text.vocab_size() as u32)
        .map(|id| {
            let (_, bytes) = text.token_text(id);
            if special.contains(&id) {
                let mut w = Vec::with_capacity(bytes.len() + 1);
                w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                w.extend_from_slice(&bytes);
                w
            } else {
                bytes
            }
        })
        .collect()
}

/// Builds the environment from `words` (one per id) with `eog` as the EOS set.
pub(super) fn tok_env(words: &[Vec<u8>], eog: &[u32]) -> Result<WickTokEnv, GrammarError> {
    let vocab_size = u32::try_from(words.len()).map_err(|_| GrammarError::Setup("vocabulary too large".into()))?;
    let eog: Vec<u32> = eog.iter().copied().filter(|&id| id < vocab_size).collect();
    let Some(&eos) = eog.first() else {
        return Err(GrammarError::Setup("the model has no end-of-generation token".into()));
    };
    let info =
        TokRxInfo { vocab_size, tok_eos: eos, tok_bos: None, tok_pad: None, tok_unk: None, tok_end_of_turn: None };
    // TokTrie asserts its invariants; a vocabulary that breaks one is a setup error, not a panic.
    let trie = std::panic::catch_unwind(|| TokTrie::from(&info, words).with_eos_tokens(&eog))
        .map_err(|_| GrammarError::Setup("the vocabulary could not be turned into a token trie".into()))?;
    Ok(WickTokEnv { trie })
}
