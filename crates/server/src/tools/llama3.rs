//! Llama 3.1/3.2/3.3's JSON tool format: the answer is either text or, from its first token,
//! one call `{"name": .., "parameters": {..}}` (optionally after `<|python_tag|>`). Since the call
//! can only start the answer, `auto` uses one grammar from the first token: free text that does
//! not begin with `{`, or a constrained call.

use serde_json::json;

use super::generic::{call, value_end};
use super::{BufferedParser, Choice, Piece, ToolRequest};

pub const PYTHON_TAG: &str = "<|python_tag|>";

/// The JSON schema of one call, with Llama's `parameters` key.
fn call_schema(req: &ToolRequest) -> serde_json::Value {
    let alts: Vec<serde_json::Value> = req
        .callable()
        .into_iter()
        .map(|t| {
            json!({"type": "object", "properties": {"name": {"const": t.name}, "parameters": t.parameters},
                   "required": ["name", "parameters"], "additionalProperties": false})
        })
        .collect();
    json!({"anyOf": alts})
}

/// The Lark grammar (llguidance syntax) of the answer.
pub fn grammar(req: &ToolRequest) -> String {
    let schema = wick_engine::grammar::with_json_options(call_schema(req));
    match req.choice {
        Choice::Auto => format!("start: TEXT | call\nTEXT: /[^{{\\s](.|\\n)*/\ncall: %json {schema}\n"),
        _ => format!("start: call\ncall: %json {schema}\n"),
    }
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Start,
    Call,
    /// After a call: another may follow, `;`-separated.
    Between,
    Text,
    Done,
}

#[derive(Debug, Default)]
pub struct Parser {
    state: State,
    buf: String,
}

impl Parser {
    fn run(&mut self, out: &mut Vec<Piece>, at_end: bool) {
        loop {
            match self.state {
                State::Start => {
                    let t = self.buf.trim_start();
                    let t = t.strip_prefix(PYTHON_TAG).map_or(t, str::trim_start);
                    if t.starts_with('{') {
                        self.buf = t.to_owned();
                        self.state = State::Call;
                    } else if !at_end && (t.is_empty() || PYTHON_TAG.starts_with(t)) {
                        return;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Text => {
                    if !self.buf.is_empty() {
                        out.push(Piece::Content(std::mem::take(&mut self.buf)));
                    }
                    return;
                }
                State::Call => match value_end(&self.buf) {
                    Some(end) => {
                        match call(&self.buf[..end]) {
                            Some(c) => out.push(Piece::Call(c)),
                            None => out.push(Piece::Content(self.buf[..end].to_owned())),
                        }
                        self.buf.drain(..end);
                        self.state = State::Between;
                    }
                    None => {
                        if at_end {
                            self.buf.clear();
                        }
                        return;
                    }
                },
                State::Between => {
                    let rest = self.buf.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
                    if rest.starts_with('{') {
                        self.buf = rest.to_owned();
                        self.state = State::Call;
                    } else if rest.is_empty() && !at_end {
                        return;
                    } else {
                        self.state = State::Done;
                    }
                }
                State::Done => {
                    self.buf.clear();
                    return;
                }
            }
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
    fn a_leading_call_or_plain_text_under_every_split() {
        let c = |n: &str, a: &str| Piece::Call(ParsedCall { name: n.into(), arguments: a.into() });
        for (text, want) in [
            (
                "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"{Paris}\"}}",
                vec![c("get_weather", r#"{"city":"{Paris}"}"#)],
            ),
            (
                " {\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"x\": 1}}",
                vec![c("a", "{}"), c("b", r#"{"x":1}"#)],
            ),
            ("The weather is {fine}.", vec![Piece::Content("The weather is {fine}.".into())]),
            ("<|python", vec![Piece::Content("<|python".into())]),
        ] {
            for seed in 0..60 {
                assert_eq!(run(Box::new(Parser::default()), text, seed), want, "{text:?} seed {seed}");
            }
        }
    }
}
