//! Mistral's tool format: free text, then `[TOOL_CALLS]` and a JSON array of
//! `{"name": .., "arguments": {..}}`. `[TOOL_CALLS]` is a special token in Mistral's vocabularies,
//! so it is the lazy grammar's trigger in `auto`; the array after it is constrained.

use serde_json::json;

use super::generic::{call, value_end};
use super::{BufferedParser, Piece, ToolRequest};

pub const OPEN: &str = "[TOOL_CALLS]";

/// The Lark grammar (llguidance syntax); `lazy`: it starts after `[TOOL_CALLS]`.
pub fn grammar(req: &ToolRequest, special: bool, lazy: bool) -> String {
    let mut array = json!({"type": "array", "items": req.call_schema(), "minItems": 1});
    if !req.parallel {
        array["maxItems"] = json!(1);
    }
    let schema = wick_engine::grammar::with_json_options(array);
    let tag = if special { OPEN.to_owned() } else { format!("{OPEN:?}") };
    let first = if lazy { String::new() } else { tag };
    format!("start: {first} body\nbody: %json {schema}\n")
}

#[derive(Debug, Default)]
pub struct Parser {
    buf: String,
    inside: bool,
    done: bool,
}

/// The length of the longest suffix of `s` that is a proper prefix of `tag`.
pub(super) fn partial_tag(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| s.len() >= n && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

/// The calls of a JSON array of calls (those that parse).
pub(super) fn calls(array: &str, out: &mut Vec<Piece>) {
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(array) {
        for item in items {
            if let Some(c) = call(&item.to_string()) {
                out.push(Piece::Call(c));
            }
        }
    }
}

impl Parser {
    fn run(&mut self, out: &mut Vec<Piece>, at_end: bool) {
        if self.done {
            self.buf.clear();
            return;
        }
        if !self.inside {
            match self.buf.find(OPEN) {
                Some(start) => {
                    if start > 0 {
                        out.push(Piece::Content(self.buf[..start].to_owned()));
                    }
                    self.buf.drain(..start + OPEN.len());
                    self.inside = true;
                }
                None => {
                    let keep = if at_end { 0 } else { partial_tag(&self.buf, OPEN) };
                    let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                    if !text.is_empty() {
                        out.push(Piece::Content(text));
                    }
                    return;
                }
            }
        }
        let s = self.buf.trim_start();
        if let Some(end) = value_end(s) {
            calls(&s[..end], out);
            self.done = true;
            self.buf.clear();
        } else if at_end {
            self.buf.clear();
        }
    }
}

impl BufferedParser for Parser {
    fn buffer(&mut self) -> &mut String {
        &mut self.buf
    }

    fn decide(&mut self, out: &mut Vec<Piece>, at_end: bool) {
        self.run(out, at_end)
    }
}

#[cfg(test)]
mod tests {
    use super::super::split_tests::run;
    use super::super::ParsedCall;
    use super::*;

    #[test]
    fn text_then_a_call_array_under_every_split() {
        let c = |n: &str, a: &str| Piece::Call(ParsedCall { name: n.into(), arguments: a.into() });
        for (text, want) in [
            (
                "Sure [TOOL. [TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"]\"}}, {\"name\": \"now\", \"arguments\": {}}]",
                vec![Piece::Content("Sure [TOOL. ".into()), c("get_weather", r#"{"city":"]"}"#), c("now", "{}")],
            ),
            ("[TOOL_CALLS] [{\"name\": \"now\", \"arguments\": {}}]", vec![c("now", "{}")]),
            ("Plain [TOOL_CA", vec![Piece::Content("Plain [TOOL_CA".into())]),
        ] {
            for seed in 0..60 {
                assert_eq!(run(Box::new(Parser::default()), text, seed), want, "{text:?} seed {seed}");
            }
        }
    }
}
