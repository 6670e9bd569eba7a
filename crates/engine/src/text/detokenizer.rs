//! Incremental detokenization that never emits a broken UTF-8 character.
//!
//! The prefix/read-offset algorithm of TGI and vLLM: keep a small window of recent ids,
//! decode it twice, `window[..read]` (already emitted) and the whole window (with the new
//! ids), and emit the difference. Decoding a window instead of single tokens keeps
//! SentencePiece's leading spaces right (a lone `▁world` decodes to `world`; after `▁Hello`
//! it is ` world`). [`IncrementalDetokenizer::with_prompt`] seeds the window with the
//! prompt's tail so the first generated token gets its space too.
//!
//! Decoders mark an incomplete trailing character with U+FFFD (byte-level BPE: one; byte
//! fallback: one per byte). Text up to such a trailing run is emitted at once (tracked in
//! `partial`); the run itself waits for the bytes that complete it, and the window only
//! slides (dropping older ids) when the decoded text ends cleanly.

use super::TextProcessor;

/// Prompt ids kept as left context by [`IncrementalDetokenizer::with_prompt`] (as vLLM).
const PROMPT_CONTEXT: usize = 5;
/// After this many tokens without a clean end the trailing U+FFFDs are taken as genuinely
/// invalid bytes and released, so garbage output cannot grow the window without bound.
/// (Valid text ends cleanly at least every 4 byte tokens.)
const MAX_PENDING: usize = 64;

/// Per-sequence detokenizer state.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDetokenizer {
    /// The decode window: left context, then ids whose text is not fully emitted.
    ids: Vec<u32>,
    /// `ids[..read_offset]` is context whose text was emitted before.
    read_offset: usize,
    /// Bytes of the text after the context already emitted (complete characters before a
    /// pending incomplete one).
    partial: usize,
}

impl IncrementalDetokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A detokenizer whose window starts with the last few prompt ids, so the first
    /// generated token decodes as it would after the prompt (leading spaces kept).
    pub fn with_prompt(prompt_ids: &[u32]) -> Self {
        let start = prompt_ids.len().saturating_sub(PROMPT_CONTEXT);
        let ids = prompt_ids[start..].to_vec();
        let read_offset = ids.len();
        Self { ids, read_offset, partial: 0 }
    }

    /// Feeds one generated token; returns the newly complete text (possibly empty).
    pub fn push(&mut self, text: &TextProcessor, id: u32) -> String {
        self.push_with(id, |ids| text.decode(ids, false).unwrap_or_default())
    }

    /// End of sequence: whatever remains (an incomplete character becomes U+FFFD).
    pub fn flush(&mut self, text: &TextProcessor) -> String {
        self.flush_with(|ids| text.decode(ids, false).unwrap_or_default())
    }

    /// [`push`](Self::push) with any decoder (`ids -> text`, invalid bytes as U+FFFD).
    pub fn push_with(&mut self, id: u32, decode: impl Fn(&[u32]) -> String) -> String {
        self.ids.push(id);
        let prefix_text = decode(&self.ids[..self.read_offset]);
        let new_text = decode(&self.ids);
        let forced = self.ids.len() - self.read_offset >= MAX_PENDING;
        let complete = if forced { new_text.as_str() } else { new_text.trim_end_matches('\u{FFFD}') };
        if complete.len() <= prefix_text.len() + self.partial {
            return String::new();
        }
        let delta = suffix_after(complete, &prefix_text).get(self.partial..).unwrap_or("").to_string();
        if complete.len() == new_text.len() {
            self.slide();
        } else {
            self.partial += delta.len();
        }
        delta
    }

    /// [`flush`](Self::flush) with any decoder.
    pub fn flush_with(&mut self, decode: impl Fn(&[u32]) -> String) -> String {
        if self.read_offset == self.ids.len() {
            return String::new();
        }
        let prefix_text = decode(&self.ids[..self.read_offset]);
        let new_text = decode(&self.ids);
        let delta = suffix_after(&new_text, &prefix_text).get(self.partial..).unwrap_or("").to_string();
        self.slide();
        delta
    }

    /// All text is emitted: the ids after the old context become the new context.
    fn slide(&mut self) {
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        self.partial = 0;
    }
}

/// The part of `new` after `old`. Normally `old` is a prefix of `new`; if a decoder
/// normalizes differently with more context, fall back to the longest common char prefix.
fn suffix_after<'a>(new: &'a str, old: &str) -> &'a str {
    if let Some(rest) = new.strip_prefix(old) {
        return rest;
    }
    let common: usize = new
        .char_indices()
        .zip(old.chars())
        .take_while(|((_, a), b)| a == b)
        .last()
        .map_or(0, |((i, c), _)| i + c.len_utf8());
    &new[common..]
}

#[cfg(test)]
mod tests {
    use super::testing::{ByteTokenizer, SplitMix};
    use super::*;

    type Decode<'a> = dyn Fn(&[u32]) -> String + 'a;

    const TEXTS: &[&str] = &[
        "مرحبا بالعالم، كيف حالك اليوم؟",
        "Family: 👨‍👩‍👧‍👦 and flags 🇯🇵🇫🇷 and skin 👍🏽!",
        "日本語のテキスト、中文文本，한국어 텍스트。",
        "mixed: café ñ ü 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√ — end",
    ];

    #[test]
    fn random_byte_splits_of_multibyte_text_round_trip_without_broken_characters() {
        let mut rng = SplitMix(0x5EED);
        for round in 0..200 {
            let text = TEXTS[round % TEXTS.len()];
            let (tok, ids) = ByteTokenizer::split(text, &mut rng);
            // Both conventions: one U+FFFD per incomplete character, or one per byte.
            let decoders: [&Decode; 2] = [&|w| tok.decode(w), &|w| tok.decode_per_byte(w)];
            for decode in decoders {
                let mut detok = IncrementalDetokenizer::new();
                let mut out = String::new();
                for &id in &ids {
                    let piece = detok.push_with(id, decode);
                    assert!(!piece.contains('\u{FFFD}'), "round {round}: broken char in {piece:?}");
                    out.push_str(&piece);
                    assert!(text.starts_with(&out), "round {round}: emitted {out:?} is not a prefix");
                }
                out.push_str(&detok.flush_with(decode));
                assert_eq!(out, text, "round {round}");
            }
        }
    }

    #[test]
    fn an_incomplete_character_is_held_until_it_completes_and_flush_marks_a_dangling_one() {
        let tok = ByteTokenizer { vocab: vec![b"a".to_vec(), vec![0xE2, 0x82], vec![0xAC], vec![0xF0]] };
        let mut d = IncrementalDetokenizer::new();
        assert_eq!(d.push_with(0, |w| tok.decode(w)), "a");
        assert_eq!(d.push_with(1, |w| tok.decode(w)), "");
        assert_eq!(d.push_with(2, |w| tok.decode(w)), "€");
        assert_eq!(d.push_with(3, |w| tok.decode(w)), "");
        assert_eq!(d.flush_with(|w| tok.decode(w)), "\u{FFFD}");
        assert_eq!(d.flush_with(|w| tok.decode(w)), "");
    }

    #[test]
    fn invalid_bytes_are_released_with_the_next_text_or_after_max_pending_tokens() {
        let tok = ByteTokenizer { vocab: vec![vec![0xFF], b"ok".to_vec()] };
        let mut d = IncrementalDetokenizer::new();
        assert_eq!(d.push_with(0, |w| tok.decode(w)), "");
        assert_eq!(d.push_with(0, |w| tok.decode(w)), "");
        assert_eq!(d.push_with(1, |w| tok.decode(w)), "\u{FFFD}\u{FFFD}ok");
        let mut out = String::new();
        for i in 0..MAX_PENDING {
            let piece = d.push_with(0, |w| tok.decode(w));
            assert_eq!(piece.is_empty(), i + 1 < MAX_PENDING, "push {i}: {piece:?}");
            out.push_str(&piece);
        }
        assert_eq!(out, "\u{FFFD}".repeat(MAX_PENDING));
    }

    #[test]
    fn complete_characters_before_a_pending_one_are_emitted_at_once() {
        // "👨‍👩" cut inside every character: 👨 + 2 bytes of ZWJ, 1 byte + 2 bytes of 👩, ...
        let bytes = "👨\u{200d}👩".as_bytes();
        let tok = ByteTokenizer { vocab: vec![bytes[..6].to_vec(), bytes[6..9].to_vec(), bytes[9..].to_vec()] };
        let mut d = IncrementalDetokenizer::new();
        assert_eq!(d.push_with(0, |w| tok.decode(w)), "👨");
        assert_eq!(d.push_with(1, |w| tok.decode(w)), "\u{200d}");
        assert_eq!(d.push_with(2, |w| tok.decode(w)), "👩");
    }

    /// SentencePiece-style pieces: `▁` is a space, and the decoder drops the leading space
    /// of the decoded text (like Llama's `Strip` decoder).
    fn sp_decode(vocab: &[&str], ids: &[u32]) -> String {
        let s: String = ids.iter().map(|&id| vocab[id as usize]).collect::<String>().replace('▁', " ");
        s.strip_prefix(' ').map(str::to_string).unwrap_or(s)
    }

    #[test]
    fn sentencepiece_leading_spaces_survive_between_tokens_and_after_the_prompt() {
        let vocab = ["▁Hello", "▁world", ",", "▁how", "▁are", "▁you", "?", "▁The", "▁answer", "▁is"];
        let mut d = IncrementalDetokenizer::new();
        let pieces: Vec<String> =
            [0u32, 2, 1, 3, 4, 5, 6].iter().map(|&id| d.push_with(id, |w| sp_decode(&vocab, w))).collect();
        assert_eq!(pieces.concat(), "Hello, world how are you?");
        assert_eq!(pieces[2], " world");
        // Decoding tokens one by one would lose the spaces; with the prompt as context the
        // first generated token keeps its space.
        let mut d = IncrementalDetokenizer::with_prompt(&[7, 8, 9]);
        assert_eq!(d.push_with(1, |w| sp_decode(&vocab, w)), " world");
        assert_eq!(d.push_with(6, |w| sp_decode(&vocab, w)), "?");
        assert_eq!(d.flush_with(|w| sp_decode(&vocab, w)), "");
    }

    #[test]
    fn suffix_after_falls_back_to_the_common_prefix_on_char_boundaries() {
        assert_eq!(suffix_after("héllo", "hé"), "llo");
        assert_eq!(suffix_after("héllo", "hèx"), "éllo");
        assert_eq!(suffix_after("abc", ""), "abc");
    }
}

/// Test helpers shared with the stop-string tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A deterministic generator so failing splits reproduce.
    pub struct SplitMix(pub u64);
    impl SplitMix {
        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A byte-level toy tokenizer: each token is a random run (1..=5 bytes) of the text's
    /// UTF-8 bytes, cut anywhere, even inside a character; decoding concatenates the bytes
    /// and converts lossily, as a byte-level BPE decoder does.
    pub struct ByteTokenizer {
        pub vocab: Vec<Vec<u8>>,
    }

    impl ByteTokenizer {
        pub fn split(text: &str, rng: &mut SplitMix) -> (Self, Vec<u32>) {
            let bytes = text.as_bytes();
            let (mut vocab, mut ids, mut i) = (Vec::new(), Vec::new(), 0);
            while i < bytes.len() {
                let end = (i + 1 + rng.below(5)).min(bytes.len());
                ids.push(vocab.len() as u32);
                vocab.push(bytes[i..end].to_vec());
                i = end;
            }
            (Self { vocab }, ids)
        }
        pub fn decode(&self, ids: &[u32]) -> String {
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.vocab[id as usize].clone()).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        /// Like a SentencePiece byte-fallback decoder: one U+FFFD per undecodable byte.
        pub fn decode_per_byte(&self, ids: &[u32]) -> String {
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.vocab[id as usize].clone()).collect();
            let (mut out, mut rest) = (String::new(), &bytes[..]);
            loop {
                match std::str::from_utf8(rest) {
                    Ok(valid) => {
                        out.push_str(valid);
                        return out;
                    }
                    Err(e) => {
                        let (valid, after) = rest.split_at(e.valid_up_to());
                        out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                        let bad = e.error_len().unwrap_or(after.len());
                        out.extend(std::iter::repeat_n('\u{FFFD}', bad));
                        rest = &after[bad..];
                    }
                }
            }
        }
    }
}
