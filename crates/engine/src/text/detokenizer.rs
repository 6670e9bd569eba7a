//! Incremental detokenization that never emits a broken UTF-8 character.

use super::TextProcessor;

/// Per-sequence detokenizer state.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDetokenizer {}

impl IncrementalDetokenizer {
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds one generated token; returns the newly complete text (possibly empty).
    pub fn push(&mut self, _text: &TextProcessor, _id: u32) -> String {
        todo!("text")
    }
    /// End of sequence: whatever remains (an incomplete character becomes U+FFFD).
    pub fn flush(&mut self, _text: &TextProcessor) -> String {
        todo!("text")
    }
}
