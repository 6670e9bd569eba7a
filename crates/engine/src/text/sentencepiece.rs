//! SentencePiece vocabularies from GGUF (`tokenizer.ggml.model = "llama"`): Gemma, Llama 2,
//! Mistral. The file lists tokens and scores but no merges: every split of a token into two
//! tokens is a merge, ranked best-first as the Hugging Face converter ranks them
//! ([`Bpe::implied`]); encoding is then BPE with byte fallback (`<0xAB>` tokens).
//!
//! Gemma differs from the others in three ways the reference converter also encodes: its
//! whitespace-run tokens are stored with real spaces and must be respelled with `▁`; its merge
//! rank follows token order, not score; and no prefix space is added (spaces simply become `▁`).

use std::collections::HashSet;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};

use super::bpe::Bpe;
use super::gguf_tokenizer::{add_gguf_added_tokens, TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};
use super::tokenizer::{TextModel, TextTokenizer};
use super::vocab::{Pieces, Vocab};
use crate::{EngineError, Result};

const SPACE: char = '\u{2581}';

/// What the GGUF says about a SentencePiece vocabulary.
pub(crate) struct Spec<'a> {
    pub tokens: &'a [String],
    pub types: &'a [i32],
    pub scores: &'a [f32],
    pub arch: &'a str,
    pub add_space_prefix: bool,
    /// Which added tokens swallow the whitespace after them.
    pub rstrip: &'a dyn Fn(&str) -> bool,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// Builds the tokenizer and the raw bytes of every token.
pub(crate) fn build(spec: &Spec<'_>) -> Result<(TextTokenizer, Pieces)> {
    if spec.scores.len() != spec.tokens.len() {
        return Err(tok_err("tokenizer.ggml.scores and tokenizer.ggml.tokens differ in length"));
    }
    let gemma = matches!(spec.arch, "gemma" | "gemma2" | "gemma3");
    let spelled: Vec<String> = if gemma {
        spec.tokens
            .iter()
            .map(|t| {
                if t.contains(' ') && t.trim().is_empty() {
                    SPACE.to_string().repeat(t.chars().count())
                } else {
                    t.clone()
                }
            })
            .collect()
    } else {
        spec.tokens.to_vec()
    };
    let rank: Vec<f64> = if gemma {
        (0..spelled.len()).map(|i| -(i as f64)).collect()
    } else {
        spec.scores.iter().map(|&s| f64::from(s)).collect()
    };
    let unk = spec
        .tokens
        .iter()
        .rposition(|t| t.as_str() == "<unk>")
        .ok_or_else(|| tok_err("SentencePiece vocabulary has no <unk> token"))?;
    let vocab = Vocab::new(&spelled);
    // The control and user-defined tokens the vocabulary holds (the only ones added below).
    let in_vocab: HashSet<&str> = spec
        .tokens
        .iter()
        .zip(spec.types)
        .filter(|(t, &ty)| (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED) && vocab.id(t).is_some())
        .map(|(t, _)| t.as_str())
        .collect();
    let mut tokenizer = TextTokenizer::new(TextModel::Gguf(Bpe::implied(vocab, &rank, unk as u32)));

    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE.to_string(), " ").map_err(tok_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if gemma {
        tokenizer.with_normalizer(Some(Replace::new(" ", SPACE.to_string()).map_err(tok_err)?)).map_err(tok_err)?;
    } else {
        let scheme = if spec.add_space_prefix { PrependScheme::First } else { PrependScheme::Never };
        tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE, scheme, false)));
        if spec.add_space_prefix {
            decoders.push(Strip::new(' ', 1, 0).into());
        }
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));

    add_gguf_added_tokens(&mut tokenizer, spec.tokens, spec.types, |t| in_vocab.contains(t), spec.rstrip)?;

    let token_bytes = spec.tokens.iter().zip(spec.types).map(|(t, &ty)| token_bytes(t, ty)).collect();
    Ok((tokenizer, token_bytes))
}

fn token_bytes(token: &str, ty: i32) -> Vec<u8> {
    if ty == TOKEN_TYPE_BYTE {
        if let Some(b) =
            token.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            return vec![b];
        }
    }
    if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
        return token.as_bytes().to_vec();
    }
    token.replace(SPACE, " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;
    use std::collections::HashMap;

    use super::super::bpe::tests::{ids, rng};
    use super::*;

    /// The reference: the Hugging Face converter's merge list (`generate_merges` in
    /// transformers), which `Bpe::implied` must order exactly as. Every way to cut a token into two tokens is a merge; merges are ranked by the rank of the
    /// token they make (higher first), then longer left piece, then longer right piece. Ties keep
    /// vocabulary order (the sort is stable), exactly like `generate_merges` in transformers.
    fn generate_merges(tokens: &[String], rank: &[f64]) -> Vec<(String, String)> {
        let mut ids: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
        // Python dict semantics: the key keeps its first position, the value is the last one.
        let mut first_seen: Vec<usize> = Vec::with_capacity(tokens.len());
        let mut last_index: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if ids.insert(t.as_str(), i as u32).is_none() {
                first_seen.push(i);
            }
            last_index.insert(t.as_str(), i);
        }
        struct Merge<'a> {
            left: &'a str,
            right: &'a str,
            rank: f64,
            left_len: usize,
            right_len: usize,
        }
        let mut merges: Vec<Merge<'_>> = Vec::new();
        for &i in &first_seen {
            let token = tokens[i].as_str();
            let score = last_index.get(token).map_or(rank[i], |&j| rank[j]);
            let mut local: Vec<Merge<'_>> = token
                .char_indices()
                .skip(1)
                .filter_map(|(at, _)| {
                    let (l, r) = token.split_at(at);
                    (ids.contains_key(l) && ids.contains_key(r)).then(|| Merge {
                        left: l,
                        right: r,
                        rank: score,
                        left_len: l.chars().count(),
                        right_len: r.chars().count(),
                    })
                })
                .collect();
            local.sort_by_key(|m| (ids[m.left], ids[m.right]));
            merges.extend(local);
        }
        merges.sort_by(|a, b| {
            b.rank
                .partial_cmp(&a.rank)
                .unwrap_or(Ordering::Equal)
                .then(b.left_len.cmp(&a.left_len))
                .then(b.right_len.cmp(&a.right_len))
        });
        merges.into_iter().map(|m| (m.left.to_owned(), m.right.to_owned())).collect()
    }

    /// Hugging Face `BPE` over the reference merge list, with SentencePiece's options.
    fn reference(tokens: &[String], rank: &[f64]) -> tokenizers::models::bpe::BPE {
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab, generate_merges(tokens, rank))
            .unk_token("<unk>".into())
            .fuse_unk(true)
            .byte_fallback(true)
            .build()
            .unwrap()
    }

    #[test]
    fn merges_are_ranked_by_the_token_they_make() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"].iter().map(|s| s.to_string()).collect();
        let rank = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let merges = generate_merges(&tokens, &rank);
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // "ab" (rank -1) first, then "bc" (-2), then the two ways to make "abc", longer left first.
        assert_eq!(pairs, vec![("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
        let bpe = Bpe::implied(Vocab::new(&tokens), &rank, 0);
        assert_eq!(ids(&bpe, "abc"), vec![(4, (0, 3))]);
        assert_eq!(ids(&bpe, "bcab"), vec![(5, (0, 2)), (3, (2, 4))]);
    }

    /// A pseudo-random vocabulary over a small alphabet (so that merges compete), with ties in
    /// rank, a duplicated string, byte tokens for fallback and `<unk>`; random texts must give
    /// the same ids and offsets as the reference.
    #[test]
    fn implied_merges_give_the_reference_bpe_ids_on_random_text() {
        let mut next = rng(0x2545_f491_4f6c_dd1d);
        let alphabet = ["a", "b", "c", "d", "\u{2581}", "é"];
        let mut tokens: Vec<String> = vec!["<unk>".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        tokens.extend(alphabet.iter().map(|s| s.to_string()));
        while tokens.len() < 600 {
            let len = 2 + next(5);
            let t: String = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
            tokens.push(t);
        }
        tokens.push("ab".into());
        let rank: Vec<f64> = (0..tokens.len()).map(|i| -((next(3) + i / 200) as f64)).collect();
        let reference = reference(&tokens, &rank);
        let bpe = Bpe::implied(Vocab::new(&tokens), &rank, 0);
        for _ in 0..3000 {
            let len = 1 + next(30);
            let text: String = (0..len)
                .map(|_| if next(12) == 0 { "ü".to_string() } else { alphabet[next(alphabet.len())].to_string() })
                .collect();
            assert_eq!(ids(&bpe, &text), ids(&reference, &text), "{text:?}");
        }
    }

    #[test]
    fn byte_tokens_map_to_their_byte_and_spaces_are_restored() {
        assert_eq!(token_bytes("<0x0A>", TOKEN_TYPE_BYTE), vec![b'\n']);
        assert_eq!(token_bytes("\u{2581}hello", 1), b" hello".to_vec());
        assert_eq!(token_bytes("<end_of_turn>", TOKEN_TYPE_CONTROL), b"<end_of_turn>".to_vec());
    }
}
