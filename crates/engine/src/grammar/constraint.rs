//! One sequence's grammar state: waiting for its trigger (a lazy grammar: free text, no mask,
//! no cost), active (a llguidance `Matcher` that gives this step's mask and consumes the
//! sampled token), or done.

use std::sync::Arc;

use llguidance::Matcher;

use super::{CompiledGrammar, Trigger};
use crate::sampling::TokenMask;

/// What a sampled token did to the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// Generation goes on.
    Continue,
    /// The grammar is complete and nothing may follow: the choice ends here.
    Complete,
    /// The grammar rejected the token or failed inside llguidance (the mask should make this
    /// impossible); the choice ends.
    Failed(String),
}

enum State {
    /// A lazy grammar before its trigger; `tail` keeps the end of the text so far, for a text
    /// trigger split across tokens.
    Waiting {
        tail: String,
    },
    Active(Box<Matcher>),
    Done,
}

/// The grammar of one sequence.
pub struct Constraint {
    grammar: Arc<CompiledGrammar>,
    state: State,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Waiting { .. } => "waiting",
            State::Active(_) => "active",
            State::Done => "done",
        };
        f.debug_struct("Constraint").field("state", &state).finish_non_exhaustive()
    }
}

impl Constraint {
    pub fn new(grammar: Arc<CompiledGrammar>) -> Self {
        let state = match grammar.trigger {
            None => State::Active(Box::new(grammar.matcher())),
            Some(_) => State::Waiting { tail: String::new() },
        };
        Self { grammar, state }
    }

    /// Whether the next token must be sampled under a mask.
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active(_))
    }

    /// The ids the grammar allows next (end-of-generation ids where it may end). `None` when no
    /// mask applies (waiting for the trigger, or done). An error means the grammar cannot go on.
    pub fn compute_mask(&mut self) -> Option<Result<TokenMask, String>> {
        let State::Active(m) = &mut self.state else { return None };
        Some(match m.compute_mask() {
            Ok(v) if v.is_zero() => Err("the grammar allows no token here".to_owned()),
            Ok(v) => Ok(TokenMask::from_words(v.into())),
            Err(e) => Err(e.to_string()),
        })
    }

    /// Feeds the sampled `token` (whose newly decoded text is `piece`).
    pub fn advance(&mut self, token: u32, piece: &str) -> Advance {
        match &mut self.state {
            State::Done => Advance::Continue,
            State::Waiting { tail } => {
                let fired = match &self.grammar.trigger {
                    Some(Trigger::Token(id)) => *id == token,
                    Some(Trigger::Text(t)) => {
                        tail.push_str(piece);
                        let fired = tail.ends_with(t.as_str());
                        let keep = tail.len().saturating_sub(t.len());
                        let cut = (keep..=tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
                        tail.drain(..cut);
                        fired
                    }
                    None => false,
                };
                if fired {
                    self.state = State::Active(Box::new(self.grammar.matcher()));
                }
                Advance::Continue
            }
            State::Active(m) => {
                if let Err(e) = m.consume_token(token) {
                    self.state = State::Done;
                    return Advance::Failed(e.to_string());
                }
                if m.is_stopped() {
                    self.state = State::Done;
                    return Advance::Complete;
                }
                Advance::Continue
            }
        }
    }
}
