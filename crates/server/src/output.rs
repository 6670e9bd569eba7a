//! One choice's generated text as message parts: content and tool calls (through the tool
//! format's parser when the request has tools). Streamed and non-streamed answers both go
//! through [`ChoiceParser`], so their concatenations are equal by construction.

use crate::tools::{Format, ParsedCall, Piece, ToolParser};

/// A part of an assistant message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Content(String),
    Call(ParsedCall),
}

/// Splits one choice's text into parts as it streams.
pub struct ChoiceParser {
    tools: Option<Box<dyn ToolParser>>,
    /// Whitespace-only content held while tools are on: between or around calls it is dropped.
    pending_ws: String,
    calls: usize,
}

impl ChoiceParser {
    pub fn new(format: Option<&Format>) -> Self {
        Self { tools: format.map(Format::parser), pending_ws: String::new(), calls: 0 }
    }

    /// Whether any tool call was found.
    pub fn has_calls(&self) -> bool {
        self.calls > 0
    }

    pub fn push(&mut self, text: &str) -> Vec<Part> {
        match self.tools.as_mut() {
            None if text.is_empty() => Vec::new(),
            None => vec![Part::Content(text.to_owned())],
            Some(p) => {
                let pieces = p.push(text);
                self.parts(pieces)
            }
        }
    }

    pub fn finish(&mut self) -> Vec<Part> {
        let Some(p) = self.tools.as_mut() else { return Vec::new() };
        let pieces = p.finish();
        let mut out = self.parts(pieces);
        if self.calls == 0 && !self.pending_ws.is_empty() {
            out.push(Part::Content(std::mem::take(&mut self.pending_ws)));
        }
        out
    }

    fn parts(&mut self, pieces: Vec<Piece>) -> Vec<Part> {
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Content(c) if c.trim().is_empty() => self.pending_ws.push_str(&c),
                Piece::Content(c) => {
                    let mut text = std::mem::take(&mut self.pending_ws);
                    text.push_str(&c);
                    out.push(Part::Content(text));
                }
                Piece::Call(c) => {
                    self.pending_ws.clear();
                    self.calls += 1;
                    out.push(Part::Call(c));
                }
            }
        }
        out
    }
}

/// The whole of a non-streamed choice: its content (`None` when it made calls and said nothing
/// else) and its calls.
pub fn parse_all(format: Option<&Format>, text: &str) -> (Option<String>, Vec<ParsedCall>) {
    let mut p = ChoiceParser::new(format);
    let mut parts = p.push(text);
    parts.extend(p.finish());
    let mut content = String::new();
    let mut calls = Vec::new();
    for part in parts {
        match part {
            Part::Content(c) => content.push_str(&c),
            Part::Call(c) => calls.push(c),
        }
    }
    let content = if content.is_empty() && !calls.is_empty() { None } else { Some(content) };
    (content, calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_around_calls_is_dropped_but_kept_in_plain_answers() {
        let f = Format::Hermes { trigger: wick_engine::grammar::Trigger::Token(1), special: false };
        let text = "\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n";
        let (content, calls) = parse_all(Some(&f), text);
        assert_eq!((content, calls.len()), (None, 1));
        let (content, calls) = parse_all(Some(&f), "  hi \n");
        assert_eq!((content.as_deref(), calls.len()), (Some("  hi \n"), 0));
        assert_eq!(parse_all(None, "").0.as_deref(), Some(""));
    }
}
