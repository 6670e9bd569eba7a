//! Stop strings that may span tokens: text that could begin a stop string is held back.

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
pub struct StopChecker {}

impl StopChecker {
    pub fn new(_stops: Vec<String>) -> Self {
        todo!("text")
    }
    pub fn push(&mut self, _delta: &str) -> StopOutcome {
        todo!("text")
    }
    /// End of sequence without a stop: releases the held-back text.
    pub fn finish(&mut self) -> String {
        todo!("text")
    }
}
