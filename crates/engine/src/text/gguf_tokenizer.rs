//! Tokenizer built from GGUF metadata (`tokenizer.ggml.*`), for files that carry no
//! `tokenizer.json`. Two vocabulary kinds are supported:
//! * `gpt2`: byte-level BPE with the merges the file lists, split first by the regexes that
//!   `tokenizer.ggml.pre` names, with llama.cpp's names and flags (`PRE_TOKENIZERS`: SmolLM2's
//!   `smollm` isolates every digit before GPT-2's regex, Llama 3's `llama-bpe` groups 1-3
//!   digits, Qwen's `qwen2` splits single digits, `gpt-4o`, Mistral Nemo's `tekken`, ...);
//!   a file naming none gets llama.cpp's `default` set, with a warning;
//! * `llama`: SentencePiece with byte fallback (Gemma, Llama 2, Mistral v0.3, Phi-3), see
//!   `sentencepiece.rs`; `tokenizer.ggml.pre` does not apply.
//!
//! Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
//! tokens, so text like `<|im_start|>` encodes to its single id. No prefix space is inserted after
//! them (the byte-level pre-tokenizer runs with `add_prefix_space = false`). Anything the file
//! asks for that is not supported (an unknown `tokenizer.ggml.pre` included) is a load error
//! naming it, never a silent fallback.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::bpe::Bpe;
use super::byte_level;
use super::sentencepiece;
use super::tokenizer::{TextModel, TextTokenizer};
use super::vocab::{Pieces, Vocab};
use crate::{EngineError, Result};

/// GGUF token types (llama.cpp's `llama_token_type`).
pub(crate) const TOKEN_TYPE_CONTROL: i32 = 3;
pub(crate) const TOKEN_TYPE_USER_DEFINED: i32 = 4;
pub(crate) const TOKEN_TYPE_BYTE: i32 = 6;

/// A tokenizer and the facts about its vocabulary the text side needs.
pub(crate) struct TokenizerParts {
    pub tokenizer: TextTokenizer,
    /// Raw bytes of every token id, as generated text would contain them.
    pub token_bytes: Pieces,
    /// Token strings as the vocabulary spells them (used to find end-of-turn tokens).
    pub tokens: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Whether `encode(.., add_special_tokens = true)` prepends BOS.
    pub add_bos: bool,
    /// Further end-of-generation ids the file declares (`eot`, `eom`).
    pub extra_eog: Vec<u32>,
    /// Ids the model's tokenizer appends to every encoded text (GGUF
    /// `tokenizer.ggml.add_eos_token`: EOS; a Hugging Face post-processor's trailing special
    /// tokens). Embedding models read them (Qwen3-Embedding pools the appended
    /// `<|endoftext|>`); generation prompts never get them.
    pub append_ids: Vec<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

fn meta<'a>(content: &'a Content, key: &str) -> Option<&'a Value> {
    content.metadata.get(key)
}

pub(crate) fn meta_string(content: &Content, key: &str) -> Option<String> {
    meta(content, key).and_then(|v| v.to_string().ok()).cloned()
}

fn meta_u32(content: &Content, key: &str) -> Option<u32> {
    let v = meta(content, key)?;
    let n: i64 = match v {
        Value::U8(x) => i64::from(*x),
        Value::I8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    };
    u32::try_from(n).ok()
}

fn meta_bool(content: &Content, key: &str) -> Option<bool> {
    meta(content, key).and_then(|v| v.to_bool().ok())
}

fn meta_strings(content: &Content, key: &str) -> Result<Option<Vec<String>>> {
    let Some(v) = meta(content, key) else {
        return Ok(None);
    };
    let items = v.to_vec().map_err(|e| tok_err(format!("{key}: {e}")))?;
    items
        .iter()
        .map(|i| i.to_string().cloned().map_err(|e| tok_err(format!("{key}: {e}"))))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn meta_numbers<T>(content: &Content, key: &str, f: impl Fn(&Value) -> Option<T>) -> Result<Option<Vec<T>>> {
    let Some(v) = meta(content, key) else {
        return Ok(None);
    };
    let items = v.to_vec().map_err(|e| tok_err(format!("{key}: {e}")))?;
    items
        .iter()
        .map(|i| f(i).ok_or_else(|| tok_err(format!("{key}: unexpected element type"))))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Builds the tokenizer the GGUF metadata describes.
pub(crate) fn from_gguf(content: &Content) -> Result<TokenizerParts> {
    let model = meta_string(content, "tokenizer.ggml.model")
        .ok_or_else(|| tok_err("the GGUF file has no tokenizer.ggml.model"))?;
    let tokens = meta_strings(content, "tokenizer.ggml.tokens")?
        .ok_or_else(|| tok_err("the GGUF file has no tokenizer.ggml.tokens"))?;
    let types = meta_numbers(content, "tokenizer.ggml.token_type", |v| match v {
        Value::I32(x) => Some(*x),
        Value::U32(x) => i32::try_from(*x).ok(),
        _ => None,
    })?
    .unwrap_or_else(|| vec![1; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(tok_err("tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length"));
    }
    let pre_name = meta_string(content, "tokenizer.ggml.pre");
    let arch = meta_string(content, "general.architecture").unwrap_or_default();
    let no_rstrip = |_: &str| false;

    let (tokenizer, token_bytes, default_add_bos) = match model.as_str() {
        "gpt2" => {
            let merges = meta_strings(content, "tokenizer.ggml.merges")?
                .ok_or_else(|| tok_err("a gpt2 GGUF tokenizer needs tokenizer.ggml.merges"))?;
            let pre_name = pre_name.unwrap_or_else(|| {
                tracing::warn!(
                    "the GGUF file names no tokenizer.ggml.pre; using llama.cpp's \"default\" pre-tokenizer \
                     (tokenization may differ from the model's own; consider regenerating the file)"
                );
                "default".into()
            });
            let pre = pre_tokenizer(&pre_name).ok_or_else(|| {
                tok_err(format!(
                    "unsupported GGUF pre-tokenizer tokenizer.ggml.pre = {pre_name:?} for a gpt2 (byte-level BPE) \
                     vocabulary (supported: {})",
                    known_pre_tokenizers()
                ))
            })?;
            let (t, b) = byte_level_bpe(&tokens, &types, &merges, &pre, &no_rstrip)?;
            (t, b, pre.add_bos)
        }
        "llama" => {
            let scores = meta_numbers(content, "tokenizer.ggml.scores", |v| v.to_f32().ok())?
                .ok_or_else(|| tok_err("a llama (SentencePiece) GGUF tokenizer needs tokenizer.ggml.scores"))?;
            let add_space_prefix = meta_bool(content, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
            // Phi-3 / 3.5 (SentencePiece; Phi-4-mini shares the arch but is BPE): the special
            // tokens swallow the whitespace after them, as `rstrip: true` in the model's
            // tokenizer.json says (and llama.cpp reproduces for files named "phi-3").
            let phi3 = arch == "phi3";
            let phi3_rstrip = move |t: &str| phi3 && !matches!(t, "<unk>" | "<s>" | "<|endoftext|>");
            let spm = sentencepiece::Spec {
                tokens: &tokens,
                types: &types,
                scores: &scores,
                arch: &arch,
                add_space_prefix,
                rstrip: &phi3_rstrip,
            };
            let (t, b) = sentencepiece::build(&spm)?;
            (t, b, true)
        }
        other => {
            return Err(tok_err(format!(
            "unsupported GGUF tokenizer model {other:?} (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece)"
        )))
        }
    };

    let bos_id = meta_u32(content, "tokenizer.ggml.bos_token_id");
    let eos_id = meta_u32(content, "tokenizer.ggml.eos_token_id");
    let add_bos = meta_bool(content, "tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos) && bos_id.is_some();
    let extra_eog = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
        .iter()
        .filter_map(|k| meta_u32(content, k))
        .collect();
    let add_eos = meta_bool(content, "tokenizer.ggml.add_eos_token").unwrap_or(false);
    let append_ids = eos_id.filter(|_| add_eos).into_iter().collect();
    Ok(TokenizerParts { tokenizer, token_bytes, tokens, bos_id, eos_id, add_bos, extra_eog, append_ids })
}

// The split regexes, in Hugging Face `tokenizer.json` form (the "original regex" llama.cpp quotes
// beside each of its hand-adapted versions in `src/llama-vocab.cpp`). `tests.rs` pins each set
// against known splits.
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
/// Mistral's Tekken (Nemo, Pixtral): GPT-4o's letter classes without contractions, single digits.
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
/// llama.cpp's `default` set, used when a BPE file names no pre-tokenizer (llama.cpp warns that
/// quality will be degraded, and so do we): punctuation runs, then GPT-2's regex, then digit
/// runs, then three-digit groups.
const DEFAULT_SPLITS: [&str; 4] = [r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]"];

/// How a `tokenizer.ggml.pre` name pre-tokenizes a byte-level BPE vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreTokenizer {
    /// Regexes applied in sequence; each splits every piece further (matches isolated).
    pub splits: Vec<&'static str>,
    /// Whole words found in the vocabulary skip the merges (`ignore_merges`).
    pub ignore_merges: bool,
    /// Whether BOS is added when the file has no `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
}

/// The `tokenizer.ggml.pre` names this table knows, grouped as llama.cpp groups them
/// (`llama_vocab::impl::load`), each with its split regexes and flags.
const PRE_TOKENIZERS: &[(&[&str], &[&str], bool, bool)] = &[
    // (names, splits, ignore_merges, add_bos)
    (&["default"], &DEFAULT_SPLITS, false, false),
    (&["gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling"], &[GPT2_SPLIT], false, false),
    // Digits isolated one by one, then GPT-2's regex (SmolLM, StarCoder).
    (
        &["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2"],
        &[r"\p{N}", GPT2_SPLIT],
        false,
        false,
    ),
    (
        &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"],
        &[LLAMA3_SPLIT],
        true,
        true,
    ),
    (&["dbrx", "smaug-bpe"], &[LLAMA3_SPLIT], false, false),
    (
        &["qwen2", "deepseek-r1-qwen", "kormo", "megrez", "stablelm2", "hunyuan", "solar-open"],
        &[QWEN2_SPLIT],
        false,
        false,
    ),
    (&["gpt-4o", "llama4", "kanana2", "minimax-m2"], &[GPT4O_SPLIT], false, false),
    (&["tekken"], &[TEKKEN_SPLIT], true, true),
];

/// The pre-tokenizer a `tokenizer.ggml.pre` name stands for, or `None` for a name not in the
/// table (a load error: a wrong regex is a silent quality bug).
pub(crate) fn pre_tokenizer(pre: &str) -> Option<PreTokenizer> {
    PRE_TOKENIZERS.iter().find(|(names, ..)| names.contains(&pre)).map(|(_, splits, ignore_merges, add_bos)| {
        PreTokenizer { splits: splits.to_vec(), ignore_merges: *ignore_merges, add_bos: *add_bos }
    })
}

fn known_pre_tokenizers() -> String {
    let names: Vec<&str> = PRE_TOKENIZERS.iter().flat_map(|(names, ..)| names.iter().copied()).collect();
    names.join(", ")
}

/// Builds the pre-tokenizer (splits, then GPT-2's byte mapping) for `pre`.
pub(crate) fn byte_level_pre_tokenizer(pre: &PreTokenizer) -> Result<Sequence> {
    let mut pieces: Vec<PreTokenizerWrapper> = Vec::new();
    for split in &pre.splits {
        let s = Split::new(SplitPattern::Regex((*split).to_owned()), SplitDelimiterBehavior::Isolated, false)
            .map_err(tok_err)?;
        pieces.push(s.into());
    }
    pieces.push(ByteLevel::new(false, true, false).into());
    Ok(Sequence::new(pieces))
}

fn byte_level_bpe(
    tokens: &[String],
    types: &[i32],
    merges: &[String],
    pre: &PreTokenizer,
    rstrip: &dyn Fn(&str) -> bool,
) -> Result<(TextTokenizer, Pieces)> {
    // Tokens outside the byte alphabet (rare mislabels) are spelled byte by byte, as the
    // reference converter does, so every entry of the BPE vocabulary is in the alphabet.
    let spell = |t: &str| -> String {
        if byte_level::is_spelled(t) {
            t.to_owned()
        } else {
            t.bytes().map(|b| byte_level::byte_to_char()[b as usize]).collect()
        }
    };
    let vocab = Vocab::new(tokens.iter().map(|t| spell(t)));
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| tok_err(format!("malformed merge {m:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = Bpe::listed(vocab, &merges, pre.ignore_merges).map_err(tok_err)?;
    let mut tokenizer = TextTokenizer::new(TextModel::Gguf(bpe));
    tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevel::default()));

    add_gguf_added_tokens(&mut tokenizer, tokens, types, byte_level::is_spelled, rstrip)?;

    let token_bytes = tokens
        .iter()
        .zip(types)
        .map(|(t, &ty)| {
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                t.as_bytes().to_vec()
            } else {
                byte_level::token_to_bytes(t).unwrap_or_else(|| t.as_bytes().to_vec())
            }
        })
        .collect();
    Ok((tokenizer, token_bytes))
}

/// Adds control tokens as special tokens and user-defined ones as plain added tokens, both
/// matched verbatim in the input. `keep` filters out tokens the vocabulary cannot hold;
/// `rstrip` says which of them swallow the whitespace that follows them (Phi-3).
pub(crate) fn add_gguf_added_tokens(
    tokenizer: &mut TextTokenizer,
    tokens: &[String],
    types: &[i32],
    keep: impl Fn(&str) -> bool,
    rstrip: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let added = |ty: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|(t, &tt)| tt == ty && keep(t))
            .map(|(t, _)| AddedToken::from(t.clone(), special).normalized(false).rstrip(rstrip(t)))
            .collect()
    };
    tokenizer.add_special_tokens(added(TOKEN_TYPE_CONTROL, true)).map_err(tok_err)?;
    tokenizer.add_tokens(added(TOKEN_TYPE_USER_DEFINED, false)).map_err(tok_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Each `tokenizer.ggml.pre` set must split text exactly as the model's official
    //! pre-tokenizer regex does. The expected pieces were derived by hand from the regexes and
    //! cross-checked with Python's `regex` module applying the same patterns in sequence
    //! (isolated matches), which is how Hugging Face's `Split` and llama.cpp's
    //! `unicode_regex_split` chain them.

    use tokenizers::tokenizer::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer as _};

    use super::*;

    /// The pieces the split regexes of `pre` cut `text` into (before the byte-level mapping).
    fn split(pre: &str, text: &str) -> Vec<String> {
        let pre = pre_tokenizer(pre).unwrap_or_else(|| panic!("{pre} is known"));
        let mut pieces: Vec<PreTokenizerWrapper> = Vec::new();
        for s in &pre.splits {
            pieces.push(
                Split::new(SplitPattern::Regex((*s).to_owned()), SplitDelimiterBehavior::Isolated, false)
                    .unwrap()
                    .into(),
            );
        }
        let mut pts = PreTokenizedString::from(text);
        Sequence::new(pieces).pre_tokenize(&mut pts).unwrap();
        pts.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(s, ..)| s.to_owned()).collect()
    }

    fn check(pre: &str, cases: &[(&str, &[&str])]) {
        for (text, want) in cases {
            assert_eq!(split(pre, text), *want, "{pre}: {text:?}");
        }
    }

    const DIGITS: &str = "abc 12345 x";
    const CONTRACTIONS: &str = "I'm can't WE'LL";
    const WHITESPACE: &str = "a\n\n  b  \n";
    const PUNCT_NEWLINE: &str = "Hi!\n\nYo";
    const NON_LATIN: &str = "日本語のテキスト 123 Привет мир";
    const COMBINING: &str = "cafe\u{301}s";
    const HAN_DIGITS: &str = "价格是100元";
    const SYMBOLS: &str = "Hello, world!! $x+1 = 12345";

    #[test]
    fn gpt2_keeps_digit_runs_with_their_space_and_matches_contractions_case_sensitively() {
        check(
            "gpt-2",
            &[
                (DIGITS, &["abc", " 12345", " x"]),
                (CONTRACTIONS, &["I", "'m", " can", "'t", " WE", "'", "LL"]),
                (WHITESPACE, &["a", "\n\n ", " b", "  \n"]),
                (PUNCT_NEWLINE, &["Hi", "!", "\n", "\n", "Yo"]),
                (NON_LATIN, &["日本語のテキスト", " 123", " Привет", " мир"]),
                (COMBINING, &["cafe", "\u{301}", "s"]),
                (SYMBOLS, &["Hello", ",", " world", "!!", " $", "x", "+", "1", " =", " 12345"]),
            ],
        );
    }

    #[test]
    fn smollm_isolates_every_digit_before_gpt2() {
        check(
            "smollm",
            &[
                (DIGITS, &["abc", " ", "1", "2", "3", "4", "5", " x"]),
                (CONTRACTIONS, &["I", "'m", " can", "'t", " WE", "'", "LL"]),
                (WHITESPACE, &["a", "\n\n ", " b", "  \n"]),
                (NON_LATIN, &["日本語のテキスト", " ", "1", "2", "3", " Привет", " мир"]),
                (HAN_DIGITS, &["价格是", "1", "0", "0", "元"]),
            ],
        );
    }

    #[test]
    fn llama3_groups_one_to_three_digits_and_folds_contraction_case() {
        check(
            "llama-bpe",
            &[
                (DIGITS, &["abc", " ", "123", "45", " x"]),
                (CONTRACTIONS, &["I", "'m", " can", "'t", " WE", "'LL"]),
                (WHITESPACE, &["a", "\n\n", " ", " b", "  \n"]),
                (PUNCT_NEWLINE, &["Hi", "!\n\n", "Yo"]),
                (NON_LATIN, &["日本語のテキスト", " ", "123", " Привет", " мир"]),
                (COMBINING, &["cafe", "\u{301}s"]),
                (HAN_DIGITS, &["价格是", "100", "元"]),
                (SYMBOLS, &["Hello", ",", " world", "!!", " $", "x", "+", "1", " =", " ", "123", "45"]),
            ],
        );
        assert_eq!(split("llama3", DIGITS), split("llama-bpe", DIGITS));
    }

    #[test]
    fn qwen2_splits_single_digits_with_llama3s_other_rules() {
        check(
            "qwen2",
            &[
                (DIGITS, &["abc", " ", "1", "2", "3", "4", "5", " x"]),
                (CONTRACTIONS, &["I", "'m", " can", "'t", " WE", "'LL"]),
                (WHITESPACE, &["a", "\n\n", " ", " b", "  \n"]),
                (PUNCT_NEWLINE, &["Hi", "!\n\n", "Yo"]),
                (NON_LATIN, &["日本語のテキスト", " ", "1", "2", "3", " Привет", " мир"]),
                (HAN_DIGITS, &["价格是", "1", "0", "0", "元"]),
            ],
        );
    }

    #[test]
    fn gpt4o_attaches_contractions_and_marks_to_words() {
        check(
            "gpt-4o",
            &[
                (DIGITS, &["abc", " ", "123", "45", " x"]),
                (CONTRACTIONS, &["I'm", " can't", " WE'LL"]),
                (WHITESPACE, &["a", "\n\n", " ", " b", "  \n"]),
                (NON_LATIN, &["日本語のテキスト", " ", "123", " Привет", " мир"]),
                (COMBINING, &["cafe\u{301}s"]),
            ],
        );
    }

    #[test]
    fn tekken_has_gpt4o_letters_single_digits_and_no_contractions() {
        check(
            "tekken",
            &[
                (DIGITS, &["abc", " ", "1", "2", "3", "4", "5", " x"]),
                (CONTRACTIONS, &["I", "'m", " can", "'t", " WE", "'LL"]),
                (WHITESPACE, &["a", "\n\n", " ", " b", "  \n"]),
                (PUNCT_NEWLINE, &["Hi", "!\n\n", "Yo"]),
                (COMBINING, &["cafe\u{301}s"]),
                (HAN_DIGITS, &["价格是", "1", "0", "0", "元"]),
            ],
        );
        let t = pre_tokenizer("tekken").unwrap();
        assert!(t.ignore_merges && t.add_bos);
    }

    #[test]
    fn default_is_llama_cpps_punctuation_then_gpt2_then_digit_groups() {
        check(
            "default",
            &[
                (DIGITS, &["abc", " ", "123", "45", " x"]),
                (CONTRACTIONS, &["I", "'", "m", " can", "'", "t", " WE", "'", "LL"]),
                (SYMBOLS, &["Hello", ",", " world", "!!", " ", "$", "x", "+", "1", " ", "=", " ", "123", "45"]),
            ],
        );
    }

    #[test]
    fn flags_follow_llama_cpp() {
        let flags = |p: &str| pre_tokenizer(p).map(|t| (t.ignore_merges, t.add_bos));
        assert_eq!(flags("llama-bpe"), Some((true, true)));
        assert_eq!(flags("dbrx"), Some((false, false)));
        assert_eq!(flags("qwen2"), Some((false, false)));
        assert_eq!(flags("smollm"), Some((false, false)));
        assert_eq!(flags("gpt-4o"), Some((false, false)));
        assert_eq!(flags("gpt2"), None, "llama.cpp spells it gpt-2");
        assert_eq!(flags("gemma"), None, "Gemma is SentencePiece, not a BPE pre-tokenizer");
        for (names, ..) in PRE_TOKENIZERS {
            for n in *names {
                assert!(pre_tokenizer(n).is_some());
                // Every regex compiles in the tokenizer's engine.
                byte_level_pre_tokenizer(&pre_tokenizer(n).unwrap()).unwrap();
            }
        }
    }
}
