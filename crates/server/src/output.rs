//! One choice's generated text as message parts: reasoning (when the model thinks in tags),
//! content and tool calls (through the tool format's parser when the request has tools).
//! Streamed and non-streamed answers both go through [`ChoiceParser`], so their
//! concatenations are equal by construction.

use crate::reasoning::{ReasoningParser, Split};
use crate::tools::harmony;
use crate::tools::{Format, ParsedCall, Piece, ToolParser};

/// A part of an assistant message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Reasoning(String),
    Content(String),
    Call(ParsedCall),
}

/// How a choice's text is read: the tool format, and whether (and where) the model thinks.
#[derive(Debug, Clone, Default)]
pub struct OutputFormat {
    pub tools: Option<Format>,
    /// `Some(inside)`: split `<think>` reasoning; `inside` when the prompt opened it already.
    pub reasoning: Option<bool>,
    /// The answer is harmony (gpt-oss): its parser splits reasoning, content and calls, and
    /// the two fields above are not used.
    pub harmony: bool,
}

/// Splits one choice's text into parts as it streams.
pub struct ChoiceParser {
    harmony: Option<harmony::Parser>,
    reasoning: Option<ReasoningParser>,
    tools: Option<Box<dyn ToolParser>>,
    /// Whitespace-only content held while tools are on: between or around calls it is dropped.
    pending_ws: String,
    calls: usize,
}

impl ChoiceParser {
    pub fn new(format: &OutputFormat) -> Self {
        if format.harmony {
            return Self {
                harmony: Some(harmony::Parser::default()),
                reasoning: None,
                tools: None,
                pending_ws: String::new(),
                calls: 0,
            };
        }
        Self {
            harmony: None,
            reasoning: format.reasoning.map(ReasoningParser::new),
            tools: format.tools.as_ref().map(Format::parser),
            pending_ws: String::new(),
            calls: 0,
        }
    }

    /// Whether any tool call was found.
    pub fn has_calls(&self) -> bool {
        self.calls > 0
    }

    /// Harmony's pieces as parts.
    fn harmony_parts(&mut self, out: Vec<harmony::Out>) -> Vec<Part> {
        out.into_iter()
            .map(|o| match o {
                harmony::Out::Reasoning(r) => Part::Reasoning(r),
                harmony::Out::Content(c) => Part::Content(c),
                harmony::Out::Call(c) => {
                    self.calls += 1;
                    Part::Call(c)
                }
            })
            .collect()
    }

    pub fn push(&mut self, text: &str) -> Vec<Part> {
        if let Some(h) = self.harmony.as_mut() {
            let out = h.push(text);
            return self.harmony_parts(out);
        }
        let Some(r) = self.reasoning.as_mut() else { return self.content(text) };
        let splits = r.push(text);
        self.splits(splits)
    }

    fn splits(&mut self, splits: Vec<Split>) -> Vec<Part> {
        let mut out = Vec::new();
        for s in splits {
            match s {
                Split::Reasoning(t) => out.push(Part::Reasoning(t)),
                Split::Content(t) => out.extend(self.content(&t)),
            }
        }
        out
    }

    /// Content text, through the tool parser when there is one.
    fn content(&mut self, text: &str) -> Vec<Part> {
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
        if let Some(h) = self.harmony.as_mut() {
            let out = h.finish();
            return self.harmony_parts(out);
        }
        let mut out = match self.reasoning.as_mut() {
            Some(r) => {
                let splits = r.finish();
                self.splits(splits)
            }
            None => Vec::new(),
        };
        let Some(p) = self.tools.as_mut() else { return out };
        let pieces = p.finish();
        out.extend(self.parts(pieces));
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

/// A non-streamed choice as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// `None` when the choice made calls and said nothing else.
    pub content: Option<String>,
    pub reasoning: Option<String>,
    pub calls: Vec<ParsedCall>,
}

/// Reads a whole non-streamed choice.
pub fn parse_all(format: &OutputFormat, text: &str) -> Message {
    let mut p = ChoiceParser::new(format);
    let mut parts = p.push(text);
    parts.extend(p.finish());
    let mut content = String::new();
    let mut reasoning: Option<String> = None;
    let mut calls = Vec::new();
    for part in parts {
        match part {
            Part::Reasoning(r) => reasoning.get_or_insert_with(String::new).push_str(&r),
            Part::Content(c) => content.push_str(&c),
            Part::Call(c) => calls.push(c),
        }
    }
    let content = if content.is_empty() && !calls.is_empty() { None } else { Some(content) };
    Message { content, reasoning, calls }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_around_calls_is_dropped_but_kept_in_plain_answers() {
        let f = OutputFormat {
            tools: Some(Format::Hermes { trigger: wick_engine::grammar::Trigger::Token(1), special: false }),
            reasoning: None,
            harmony: false,
        };
        let text = "\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n";
        let m = parse_all(&f, text);
        assert_eq!((m.content, m.calls.len()), (None, 1));
        let m = parse_all(&f, "  hi \n");
        assert_eq!((m.content.as_deref(), m.calls.len()), (Some("  hi \n"), 0));
        assert_eq!(parse_all(&OutputFormat::default(), "").content.as_deref(), Some(""));
    }

    #[test]
    fn reasoning_comes_before_tool_calls_and_never_into_content() {
        let f = OutputFormat {
            tools: Some(Format::Hermes { trigger: wick_engine::grammar::Trigger::Token(1), special: false }),
            reasoning: Some(false),
            harmony: false,
        };
        let text =
            "<think>I need the weather.</think>\n\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
        let m = parse_all(&f, text);
        assert_eq!(m.reasoning.as_deref(), Some("I need the weather."));
        assert_eq!((m.content, m.calls.len()), (None, 1));
    }

    #[test]
    fn harmony_streamed_in_any_pieces_equals_the_whole() {
        let f = OutputFormat { tools: Some(Format::Harmony { special: false }), reasoning: None, harmony: true };
        let text = "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary \
                    to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}";
        let whole = parse_all(&f, text);
        assert_eq!(whole.reasoning.as_deref(), Some("Need weather."));
        assert_eq!(whole.content, None);
        assert_eq!(
            whole.calls,
            vec![ParsedCall { name: "get_weather".into(), arguments: "{\"city\":\"Paris\"}".into() }]
        );
        for step in 1..12 {
            let mut p = ChoiceParser::new(&f);
            let chars: Vec<char> = text.chars().collect();
            let mut parts = Vec::new();
            for piece in chars.chunks(step) {
                parts.extend(p.push(&piece.iter().collect::<String>()));
            }
            parts.extend(p.finish());
            let reasoning: String =
                parts.iter().filter_map(|x| if let Part::Reasoning(r) = x { Some(r.as_str()) } else { None }).collect();
            let calls: Vec<&ParsedCall> =
                parts.iter().filter_map(|x| if let Part::Call(c) = x { Some(c) } else { None }).collect();
            assert_eq!(Some(reasoning.as_str()), whole.reasoning.as_deref(), "step {step}");
            assert_eq!(calls, whole.calls.iter().collect::<Vec<_>>(), "step {step}");
            assert!(p.has_calls());
        }
    }
}
