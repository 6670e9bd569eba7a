//! The Hermes tool format (Qwen 2.5/3, NousResearch Hermes and their templates):
//! `<tool_call>\n{"name": "f", "arguments": {..}}\n</tool_call>`, calls one after another,
//! free text before them. The parser streams the text outside the tags as content (holding back
//! what may be the start of a tag) and turns each tagged body into a call; no tag ever reaches
//! the content.

use super::generic::call;
use super::{BufferedParser, Choice, Piece, ToolRequest};

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// The Lark grammar (llguidance syntax) of the calls. `special`: the tags are special tokens
/// (written `<tool_call>` in the grammar, not as strings). `lazy`: the grammar starts after the
/// opening tag (the trigger), so it begins with the first call's body.
pub fn grammar(req: &ToolRequest, special: bool, lazy: bool) -> String {
    let tag = |t: &str| if special { t.to_owned() } else { format!("{t:?}") };
    let schema = wick_engine::grammar::with_json_options(req.call_schema());
    let more = if req.parallel {
        format!("(\"\\n\" {} \"\\n\" body \"\\n\" {})*", tag(OPEN), tag(CLOSE))
    } else {
        String::new()
    };
    let first = if lazy { String::new() } else { tag(OPEN) };
    // A required or named choice allows no text before the first call.
    debug_assert!(lazy == (req.choice == Choice::Auto));
    format!("start: {first} \"\\n\" body \"\\n\" {close} {more}\nbody: %json {schema}\n", close = tag(CLOSE))
}

#[derive(Debug, Default)]
pub struct Parser {
    buf: String,
    inside: bool,
}

/// The length of the longest suffix of `s` that is a proper prefix of `tag`.
fn partial_tag(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| s.len() >= n && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

impl Parser {
    fn run(&mut self, out: &mut Vec<Piece>, at_end: bool) {
        loop {
            if self.inside {
                match self.buf.find(CLOSE) {
                    Some(end) => {
                        let body: String = self.buf.drain(..end + CLOSE.len()).collect();
                        self.body(&body[..end], out);
                        self.inside = false;
                    }
                    None if at_end => {
                        let body = std::mem::take(&mut self.buf);
                        self.body(&body, out);
                        return;
                    }
                    None => return,
                }
            } else {
                match self.buf.find(OPEN) {
                    Some(start) => {
                        let text: String = self.buf.drain(..start + OPEN.len()).collect();
                        if start > 0 {
                            out.push(Piece::Content(text[..start].to_owned()));
                        }
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
        }
    }

    /// A tagged body: a call, or (not JSON of a call) its text as content without the tags.
    fn body(&self, body: &str, out: &mut Vec<Piece>) {
        match call(body.trim()) {
            Some(c) => out.push(Piece::Call(c)),
            None if !body.trim().is_empty() => out.push(Piece::Content(body.to_owned())),
            None => {}
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
    use serde_json::json;

    use super::super::split_tests::run;
    use super::super::ParsedCall;
    use super::*;

    fn c(name: &str, args: &str) -> Piece {
        Piece::Call(ParsedCall { name: name.into(), arguments: args.into() })
    }

    #[test]
    fn text_and_calls_split_the_same_way_under_every_split() {
        let cases = [
            (
                "Let me check <tool.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"<b>\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>",
                vec![
                    Piece::Content("Let me check <tool.\n".into()),
                    c("get_weather", r#"{"city":"<b>"}"#),
                    Piece::Content("\n".into()),
                    c("now", "{}"),
                ],
            ),
            ("No calls here, just < and <tool_ca", vec![Piece::Content("No calls here, just < and <tool_ca".into())]),
            (
                "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}",
                vec![c("now", "{}")],
            ),
            ("<tool_call>not json</tool_call>done", vec![Piece::Content("not jsondone".into())]),
        ];
        for (text, want) in cases {
            for seed in 0..60 {
                assert_eq!(run(Box::new(Parser::default()), text, seed), want, "{text:?} seed {seed}");
            }
        }
    }

    #[test]
    fn grammars_compile_shapes() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let req = super::super::parse(Some(&tools), Some(&json!("required")), None).expect("ok").expect("some");
        let g = grammar(&req, false, false);
        assert!(g.starts_with("start: \"<tool_call>\" \"\\n\" body"), "{g}");
        assert!(g.contains("%json {"), "{g}");
        let special = grammar(&req, true, false);
        assert!(special.starts_with("start: <tool_call> "), "{special}");
    }
}
