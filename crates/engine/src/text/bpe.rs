//! BPE over a compact [`Vocab`], for the vocabularies GGUF files carry. It gives the ids
//! Hugging Face `tokenizers`' `BPE` gives for the same vocabulary and merges (same merge order,
//! byte fallback and fused `<unk>`), and plugs into its pipeline as a `Model`, while holding a
//! 262k vocabulary in a few MB instead of ~80.
//!
//! Merges come in two kinds:
//! * **listed** (byte-level BPE, `tokenizer.ggml.merges`): rank = position in the file;
//! * **implied** (SentencePiece): any two adjacent tokens whose concatenation is a token merge.
//!   The Hugging Face converter lists every such split, ranked by the rank of the token made
//!   (higher first), then longer left piece, then longer right piece, then the token's first
//!   position; here that key is computed when a pair is met instead of stored for ~1M pairs.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BpeTrainer;
use tokenizers::{Model, Token};

use super::vocab::{probe, table_bits, Vocab};

/// Where two adjacent tokens merge: what they make and when (lower first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    key: (u32, Reverse<u32>, Reverse<u32>, u32),
}

#[derive(Debug, Clone)]
enum Merges {
    Listed {
        /// `[left, right, made]`, in rank order.
        pairs: Vec<[u32; 3]>,
        /// Open addressing over `pairs` indices (`u32::MAX` empty).
        slots: Box<[u32]>,
    },
    Implied {
        /// Per token: its rank class (0 = merges first); equal ranks share a class.
        class: Vec<u32>,
        /// First position of each string listed more than once (keyed by its last id).
        first: HashMap<u32, u32>,
    },
}

fn pair_hash(left: u32, right: u32) -> u64 {
    ((u64::from(left) << 32) | u64::from(right)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A byte-pair-encoding model over a [`Vocab`].
#[derive(Debug, Clone)]
pub(crate) struct Bpe {
    vocab: Vocab,
    merges: Merges,
    /// Characters with no token become their `<0xAB>` byte tokens.
    byte_fallback: bool,
    /// What is left unknown becomes this id, one per run.
    unk: Option<u32>,
    /// A word that is itself a token skips the merges (Llama 3).
    ignore_merges: bool,
}

/// Building a [`Bpe`] failed: a merge names text the vocabulary lacks.
#[derive(Debug, thiserror::Error)]
#[error("merge {0:?} uses a token the vocabulary does not have")]
pub(crate) struct MergeOutOfVocabulary(pub String);

impl Bpe {
    /// Byte-level BPE with the file's ranked merges (`"left right"` each).
    pub fn listed(
        vocab: Vocab,
        merges: &[(String, String)],
        ignore_merges: bool,
    ) -> Result<Self, MergeOutOfVocabulary> {
        let mut pairs = Vec::with_capacity(merges.len());
        for (l, r) in merges {
            let made = format!("{l}{r}");
            let (Some(a), Some(b), Some(m)) = (vocab.id(l), vocab.id(r), vocab.id(&made)) else {
                return Err(MergeOutOfVocabulary(format!("{l} {r}")));
            };
            pairs.push([a, b, m]);
        }
        let mut slots = vec![u32::MAX; 1 << table_bits(pairs.len())].into_boxed_slice();
        for (i, &[a, b, _]) in pairs.iter().enumerate() {
            // A pair listed twice keeps its later rank, as a map built from the list does.
            let at = probe(&slots, u32::MAX, pair_hash(a, b), |slot| pairs[slot as usize][..2] == [a, b]);
            slots[at] = i as u32;
        }
        let merges = Merges::Listed { pairs, slots };
        Ok(Self { vocab, merges, byte_fallback: false, unk: None, ignore_merges })
    }

    /// SentencePiece-style BPE: merges implied by the vocabulary, ranked by `rank` (higher
    /// merges first), with byte fallback and `unk` for what no byte token covers.
    pub fn implied(vocab: Vocab, rank: &[f64], unk: u32) -> Self {
        let mut order: Vec<u32> = (0..vocab.len() as u32).collect();
        order.sort_by(|&a, &b| rank[b as usize].partial_cmp(&rank[a as usize]).unwrap_or(Ordering::Equal));
        let mut class = vec![0u32; vocab.len()];
        let mut c = 0u32;
        for w in 0..order.len() {
            if w > 0 && rank[order[w] as usize] != rank[order[w - 1] as usize] {
                c += 1;
            }
            class[order[w] as usize] = c;
        }
        let mut first = HashMap::new();
        for id in 0..vocab.len() as u32 {
            if let Some(last) = vocab.token(id).and_then(|t| vocab.id(t)).filter(|&last| last != id) {
                first.entry(last).or_insert(id);
            }
        }
        let merges = Merges::Implied { class, first };
        Self { vocab, merges, byte_fallback: true, unk: Some(unk), ignore_merges: false }
    }

    /// The merge of adjacent tokens `a` and `b`, if any: its rank and the token it makes.
    fn merge(&self, a: u32, b: u32, scratch: &mut Vec<u8>) -> Option<(Rank, u32)> {
        match &self.merges {
            Merges::Listed { pairs, slots } => {
                let slot = slots[probe(slots, u32::MAX, pair_hash(a, b), |slot| pairs[slot as usize][..2] == [a, b])];
                let &[_, _, m] = pairs.get(slot as usize)?;
                Some((Rank { key: (slot, Reverse(0), Reverse(0), 0) }, m))
            }
            Merges::Implied { class, first } => {
                let (left, right) = (self.vocab.bytes(a)?, self.vocab.bytes(b)?);
                scratch.clear();
                scratch.extend_from_slice(left);
                scratch.extend_from_slice(right);
                let m = self.vocab.id_of_bytes(scratch)?;
                // UTF-8 characters: the bytes that do not continue one.
                let chars = |s: &[u8]| s.iter().filter(|&&b| b & 0xC0 != 0x80).count() as u32;
                let pos = first.get(&m).copied().unwrap_or(m);
                Some((Rank { key: (class[m as usize], Reverse(chars(left)), Reverse(chars(right)), pos) }, m))
            }
        }
    }

    /// Initial symbols of `word`: `(id, byte length)` per character, byte tokens for a
    /// character with no token, fused `unk` for what is left.
    fn symbols(&self, word: &str) -> Vec<(u32, usize)> {
        let mut out = Vec::with_capacity(word.len());
        let mut unk: Option<usize> = None;
        let mut buf = [0u8; 4];
        for c in word.chars() {
            let s = c.encode_utf8(&mut buf);
            if let Some(id) = self.vocab.id(s) {
                if let (Some(len), Some(u)) = (unk.take(), self.unk) {
                    out.push((u, len));
                }
                out.push((id, s.len()));
                continue;
            }
            if self.byte_fallback {
                // As Hugging Face's `BPE` does, byte tokens go out ahead of a pending `<unk>`
                // run (which only exists when some byte token is missing).
                let bytes: Option<Vec<u32>> = s.bytes().map(|b| self.vocab.id(&format!("<0x{b:02X}>"))).collect();
                if let Some(bytes) = bytes {
                    out.extend(bytes.into_iter().map(|id| (id, 1)));
                    continue;
                }
            }
            if self.unk.is_some() {
                unk = Some(unk.unwrap_or(0) + s.len());
            }
        }
        if let (Some(len), Some(u)) = (unk, self.unk) {
            out.push((u, len));
        }
        out
    }

    /// BPE on one word: the lowest-ranked adjacent pair merges first, the leftmost on a tie.
    fn encode_word(&self, word: &str) -> Vec<Token> {
        #[derive(Clone, Copy)]
        struct Symbol {
            id: u32,
            start: usize,
            len: usize,
            prev: Option<usize>,
            next: Option<usize>,
        }
        let mut start = 0;
        let mut symbols: Vec<Symbol> = self
            .symbols(word)
            .into_iter()
            .enumerate()
            .map(|(i, (id, len))| {
                let s = Symbol { id, start, len, prev: i.checked_sub(1), next: Some(i + 1) };
                start += len;
                s
            })
            .collect();
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut scratch = Vec::new();
        let mut queue = BinaryHeap::with_capacity(symbols.len());
        let mut merged = 0;
        for i in 0..symbols.len().saturating_sub(1) {
            let pair = [symbols[i].id, symbols[i + 1].id];
            if let Some((rank, made)) = self.merge(pair[0], pair[1], &mut scratch) {
                queue.push(Reverse((rank, i, made, pair)));
            }
        }
        while let Some(Reverse((_, pos, made, pair))) = queue.pop() {
            let (left, Some(next)) = (symbols[pos], symbols[pos].next) else { continue };
            if left.len == 0 {
                continue;
            }
            // An entry is stale when one of the two has merged since it was queued, unless the
            // pair now there makes the same token (Hugging Face's check, kept for equal ids).
            if [left.id, symbols[next].id] != pair
                && self.merge(left.id, symbols[next].id, &mut scratch).map(|(_, m)| m) != Some(made)
            {
                continue;
            }
            let right = symbols[next];
            symbols[pos] = Symbol { id: made, len: left.len + right.len, next: right.next, ..left };
            symbols[next].len = 0;
            merged += 1;
            if let Some(after) = right.next {
                symbols[after].prev = Some(pos);
            }
            if let Some(before) = left.prev {
                let pair = [symbols[before].id, made];
                if let Some((rank, m)) = self.merge(pair[0], pair[1], &mut scratch) {
                    queue.push(Reverse((rank, before, m, pair)));
                }
            }
            if let Some(after) = right.next {
                let pair = [made, symbols[after].id];
                if let Some((rank, m)) = self.merge(pair[0], pair[1], &mut scratch) {
                    queue.push(Reverse((rank, pos, m, pair)));
                }
            }
        }
        // Sized exactly: a long text's tokens all live until the encoding is assembled.
        let mut tokens = Vec::with_capacity(symbols.len() - merged);
        tokens.extend(symbols.iter().filter(|s| s.len > 0).map(|s| {
            Token::new(s.id, self.vocab.token(s.id).unwrap_or_default().to_owned(), (s.start, s.start + s.len))
        }));
        tokens
    }
}

impl Model for Bpe {
    type Trainer = BpeTrainer;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        if sequence.is_empty() {
            return Ok(Vec::new());
        }
        if self.ignore_merges {
            if let Some(id) = self.vocab.id(sequence) {
                return Ok(vec![Token::new(id, sequence.to_owned(), (0, sequence.len()))]);
            }
        }
        Ok(self.encode_word(sequence))
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.vocab.token(id).map(str::to_owned)
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        (0..self.vocab.len() as u32).filter_map(|id| self.vocab.token(id).map(|t| (t.to_owned(), id))).collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.vocab.distinct()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("a vocabulary read from a GGUF file is not saved as tokenizer files".into())
    }

    fn get_trainer(&self) -> BpeTrainer {
        BpeTrainer::default()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use tokenizers::models::bpe::BPE;

    use super::*;

    /// Ids and offsets `model` gives `text`.
    pub(in crate::text) fn ids(model: &impl Model, text: &str) -> Vec<(u32, (usize, usize))> {
        model.tokenize(text).unwrap().into_iter().map(|t| (t.id, t.offsets)).collect()
    }

    /// A xorshift generator of numbers below `n`, for reproducible random vocabularies.
    pub(in crate::text) fn rng(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        }
    }

    /// Listed merges in a pseudo-random order (one pair listed twice, a character outside the
    /// vocabulary that is dropped): random words give Hugging Face `BPE`'s ids and offsets.
    #[test]
    fn listed_merges_give_the_reference_bpe_ids_on_random_words() {
        let mut next = rng(0x9e37_79b9_7f4a_7c15);
        let alphabet = ["a", "b", "c", "Ġ", "é"];
        let mut tokens: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
        let mut merges: Vec<(String, String)> = Vec::new();
        while tokens.len() < 400 {
            let (l, r) = (tokens[next(tokens.len())].clone(), tokens[next(tokens.len())].clone());
            let made = format!("{l}{r}");
            if made.chars().count() <= 6 && !tokens.contains(&made) {
                tokens.push(made);
                merges.push((l, r));
            }
        }
        for i in (1..merges.len()).rev() {
            merges.swap(i, next(i + 1));
        }
        // The first merge of two characters, listed again last: it now merges last.
        let single = |s: &str| s.chars().count() == 1;
        let again = merges.iter().find(|(l, r)| single(l) && single(r)).cloned().unwrap();
        merges.push(again);
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let reference = BPE::builder().vocab_and_merges(vocab, merges.clone()).build().unwrap();
        let bpe = Bpe::listed(Vocab::new(&tokens), &merges, false).unwrap();
        for _ in 0..3000 {
            let len = 1 + next(16);
            let word: String =
                (0..len).map(|_| if next(20) == 0 { "z" } else { alphabet[next(alphabet.len())] }).collect();
            assert_eq!(ids(&bpe, &word), ids(&reference, &word), "{word:?}");
        }
        assert_eq!(bpe.get_vocab_size(), reference.get_vocab_size());
    }

    #[test]
    fn a_merge_outside_the_vocabulary_is_an_error() {
        let vocab = Vocab::new(["a", "b"]);
        let err = Bpe::listed(vocab, &[("a".into(), "b".into())], false).unwrap_err();
        assert!(err.to_string().contains("a b"), "{err}");
    }

    #[test]
    fn ignore_merges_takes_a_word_that_is_a_token_whole() {
        let tokens = ["a", "b", "ab", "ba", "aba"];
        let merges = [("a".to_owned(), "b".to_owned()), ("b".to_owned(), "a".to_owned())];
        let plain = Bpe::listed(Vocab::new(tokens), &merges, false).unwrap();
        let whole = Bpe::listed(Vocab::new(tokens), &merges, true).unwrap();
        assert_eq!(ids(&plain, "aba"), vec![(2, (0, 2)), (0, (2, 3))]);
        assert_eq!(ids(&whole, "aba"), vec![(4, (0, 3))]);
    }
}
