//! Stop strings that may span tokens: text that could begin a stop string is held back.
//!
//! The checker keeps a small buffer: the held-back tail plus each new piece. It looks for the
//! earliest stop string in it; without a match it releases everything except the longest
//! tail that is a proper prefix of some stop string (cut on a char boundary, so multi-byte
//! stop strings work). A match can never hide in text already released, because released
//! text had no stop-string prefix at its end.

/// What the checker says about a new piece of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop yet; this text is safe to emit (may be empty while held back).
    Continue(String),
    /// A stop string matched; this is the text before it not yet emitted. Generation ends.
    Stopped(String),
}

/// Per-sequence stop-string state.
#[derive(Debug, Clone, Default)]
pub struct StopChecker {
    stops: Vec<String>,
    /// Text received but not yet released (a possible start of a stop string).
    held: String,
    stopped: bool,
}

impl StopChecker {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self { stops, held: String::new(), stopped: false }
    }

    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::Stopped(String::new());
        }
        if self.stops.is_empty() {
            return StopOutcome::Continue(delta.to_string());
        }
        self.held.push_str(delta);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            self.held.truncate(at);
            return StopOutcome::Stopped(std::mem::take(&mut self.held));
        }
        let keep_from = self.hold_start();
        let rest = self.held.split_off(keep_from);
        StopOutcome::Continue(std::mem::replace(&mut self.held, rest))
    }

    /// End of sequence without a stop: releases the held-back text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Whether a stop string has matched.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Start of the longest tail of `held` that is a proper prefix of some stop string
    /// (`held.len()` when none is).
    fn hold_start(&self) -> usize {
        let text = &self.held;
        let mut start = text.len();
        for stop in &self.stops {
            // Only tails shorter than the stop string can be proper prefixes of it.
            let earliest = text.len().saturating_sub(stop.len() - 1);
            let mut candidates = (earliest..start).filter(|&i| text.is_char_boundary(i));
            if let Some(i) = candidates.find(|&i| stop.starts_with(&text[i..])) {
                start = i;
            }
        }
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::detokenizer::testing::{ByteTokenizer, SplitMix};
    use crate::text::IncrementalDetokenizer;

    /// Cuts `text` into random pieces of 0..=4 chars (empty pieces happen: a token may
    /// release no text while the detokenizer waits for a character to complete).
    fn random_pieces(text: &str, rng: &mut SplitMix) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let (mut pieces, mut i) = (Vec::new(), 0);
        while i < chars.len() {
            let end = (i + rng.below(5)).min(chars.len());
            pieces.push(chars[i..end].iter().collect());
            i = end;
        }
        pieces
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// Feeds `pieces`; returns (all released text, whether it stopped), checking on the way
    /// that released text is always a prefix of `expected`.
    fn run(stops: &[&str], pieces: &[String], expected: &str) -> (String, bool) {
        let mut checker = StopChecker::new(s(stops));
        let mut out = String::new();
        for piece in pieces {
            match checker.push(piece) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
            assert!(expected.starts_with(&out), "released {out:?}, beyond {expected:?}");
        }
        out.push_str(&checker.finish());
        (out, false)
    }

    #[test]
    fn random_splits_stop_at_the_first_occurrence_and_never_release_past_it() {
        let cases: &[(&str, &[&str])] = &[
            ("Hello there. User: hi\nUser: again", &["User:"]),
            ("abc<|end|>def<|end|>", &["<|end|>", "|>"]),
            ("aaab aab ab", &["aab"]),
            ("Ответ: 42 ∎ и ещё текст", &["∎", "ещё"]),
            ("emoji 😀👍🏽 then 🛑 stop", &["🛑", "👍🏾"]),
            ("数字：一二三四五六", &["四五", "三四五六七"]),
        ];
        let mut rng = SplitMix(7);
        for &(text, stops) in cases {
            let first = stops.iter().filter_map(|st| text.find(st)).min().expect("case has a stop");
            let expected = &text[..first];
            for round in 0..100 {
                let pieces = random_pieces(text, &mut rng);
                let (out, stopped) = run(stops, &pieces, expected);
                assert!(stopped, "{text:?} round {round}: no stop seen");
                assert_eq!(out, expected, "{text:?} round {round}: pieces {pieces:?}");
            }
        }
    }

    #[test]
    fn without_a_match_everything_is_released_by_finish() {
        let mut rng = SplitMix(11);
        let text = "The stop word almost appears: Use, Usr, U, and ends with Us";
        for _ in 0..100 {
            let pieces = random_pieces(text, &mut rng);
            let (out, stopped) = run(&["User:"], &pieces, text);
            assert!(!stopped);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn byte_level_tokens_through_the_detokenizer_stop_exactly_before_a_multibyte_stop() {
        let text = "Résumé: 日本語 ✅ done. ✅✅ after the stop";
        let stop = "✅✅";
        let expected = &text[..text.find(stop).expect("stop in text")];
        let mut rng = SplitMix(23);
        for round in 0..200 {
            let (tok, ids) = ByteTokenizer::split(text, &mut rng);
            let mut detok = IncrementalDetokenizer::new();
            let mut checker = StopChecker::new(s(&[stop]));
            let mut out = String::new();
            let mut stopped = false;
            for &id in &ids {
                match checker.push(&detok.push_with(id, |w| tok.decode(w))) {
                    StopOutcome::Continue(t) => out.push_str(&t),
                    StopOutcome::Stopped(t) => {
                        out.push_str(&t);
                        stopped = true;
                        break;
                    }
                }
                assert!(expected.starts_with(&out), "round {round}: released {out:?}");
            }
            assert!(stopped, "round {round}: the stop string was missed");
            assert_eq!(out, expected, "round {round}");
        }
    }

    #[test]
    fn a_possible_stop_prefix_is_held_back_and_released_when_it_diverges() {
        let mut c = StopChecker::new(s(&["<stop>"]));
        assert_eq!(c.push("abc<st"), StopOutcome::Continue("abc".into()));
        assert_eq!(c.push("ay"), StopOutcome::Continue("<stay".into()));
        assert_eq!(c.push("x<"), StopOutcome::Continue("x".into()));
        assert_eq!(c.push("stop> more"), StopOutcome::Stopped(String::new()));
        assert!(c.is_stopped());
        assert_eq!(c.push("later"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn multibyte_stop_prefixes_are_held_on_char_boundaries() {
        let mut c = StopChecker::new(s(&["éé"]));
        assert_eq!(c.push("caf"), StopOutcome::Continue("caf".into()));
        assert_eq!(c.push("é"), StopOutcome::Continue(String::new()));
        assert_eq!(c.push("!"), StopOutcome::Continue("é!".into()));
        assert_eq!(c.push("é"), StopOutcome::Continue(String::new()));
        assert_eq!(c.finish(), "é");
    }

    #[test]
    fn no_stop_strings_pass_text_straight_through_and_empty_ones_are_ignored() {
        let mut c = StopChecker::new(s(&[""]));
        assert_eq!(c.push("anything"), StopOutcome::Continue("anything".into()));
        assert_eq!(c.finish(), "");
    }
}
