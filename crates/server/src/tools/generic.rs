//! The generic tool format, for chat templates that know no tools: the tools are described in
//! the system message, and the answer is one JSON envelope, `{"tool_calls": [{"name": ..,
//! "arguments": {..}}, ..]}` or, when the model may answer in text, `{"response": ".."}`.
//! The grammar forces the envelope, so the parser knows its exact opening; it still reads any
//! spacing, and plain text that is no envelope passes through as content.

use serde_json::{json, Value};
use wick_engine::text::ChatMessage;

use super::{BufferedParser, Choice, ParsedCall, Piece, ToolRequest};

/// The JSON schema of the envelope the answer must be.
pub fn envelope_schema(req: &ToolRequest) -> Value {
    let mut calls = json!({"type": "array", "items": req.call_schema(), "minItems": 1});
    if !req.parallel {
        calls["maxItems"] = json!(1);
    }
    let tool_calls = json!({"type": "object", "properties": {"tool_calls": calls},
                            "required": ["tool_calls"], "additionalProperties": false});
    let response = json!({"type": "object", "properties": {"response": {"type": "string"}},
                          "required": ["response"], "additionalProperties": false});
    match req.choice {
        Choice::None => response,
        Choice::Auto => json!({"anyOf": [tool_calls, response]}),
        Choice::Required | Choice::Named(_) => tool_calls,
    }
}

/// The system-message text describing the tools and the envelope.
pub fn system_prompt(req: &ToolRequest) -> String {
    let tools: Vec<Value> = req
        .callable()
        .iter()
        .map(|t| json!({"name": t.name, "description": t.description.clone().unwrap_or_default(), "parameters": t.parameters}))
        .collect();
    let tools = serde_json::to_string_pretty(&tools).unwrap_or_default();
    let many = if req.parallel { "one or more tools" } else { "one tool" };
    if req.choice == Choice::None {
        return "Answer with one JSON object and nothing else: {\"response\": \"<your answer>\"}.".to_owned();
    }
    let answer = match req.choice {
        Choice::Auto => format!(
            "To call {many}, answer with {{\"tool_calls\": [{{\"name\": \"<tool name>\", \"arguments\": {{...}}}}]}}.\n\
             To answer the user directly, answer with {{\"response\": \"<your answer>\"}}."
        ),
        _ => format!(
            "Call {many}: answer with {{\"tool_calls\": [{{\"name\": \"<tool name>\", \"arguments\": {{...}}}}]}}."
        ),
    };
    format!("You can use these tools:\n{tools}\n\nAnswer with one JSON object and nothing else.\n{answer}")
}

/// The conversation as the generic format presents it: the tools in the system message,
/// assistant tool calls as their envelope, tool results as user turns (consecutive results
/// merged, so templates that insist on alternating roles accept them).
pub fn messages(req: &ToolRequest, msgs: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let prompt = system_prompt(req);
    let mut out: Vec<ChatMessage> = Vec::with_capacity(msgs.len() + 1);
    let mut msgs = msgs.into_iter().peekable();
    match msgs.peek() {
        Some(m) if m.role == "system" => {
            let m = msgs.next().unwrap_or_default();
            out.push(ChatMessage::new("system", format!("{}\n\n{prompt}", m.content)));
        }
        _ => out.push(ChatMessage::new("system", prompt)),
    }
    for m in msgs {
        match m.role.as_str() {
            "assistant" if m.tool_calls.is_some() => {
                let calls: Vec<Value> = m
                    .tool_calls
                    .as_ref()
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|c| json!({"name": c.pointer("/function/name"), "arguments": c.pointer("/function/arguments")}))
                            .collect()
                    })
                    .unwrap_or_default();
                let content = serde_json::to_string(&json!({"tool_calls": calls})).unwrap_or_default();
                out.push(ChatMessage::new("assistant", content));
            }
            "tool" => {
                let result = json!({"tool_response": {"name": m.name, "content": m.content}});
                let text = serde_json::to_string(&result).unwrap_or_default();
                match out.last_mut() {
                    Some(prev) if prev.role == "user" && prev.content.starts_with("{\"tool_response\"") => {
                        prev.content.push('\n');
                        prev.content.push_str(&text);
                    }
                    _ => out.push(ChatMessage::new("user", text)),
                }
            }
            _ => out.push(m),
        }
    }
    out
}

const CALLS_OPEN: &[&str] = &["{", "\"tool_calls\"", ":", "["];
const RESPONSE_OPEN: &[&str] = &["{", "\"response\"", ":", "\""];

#[derive(Debug, Default)]
enum State {
    /// Reading the envelope's opening.
    #[default]
    Start,
    /// Inside `"response": "...`: decoding the string.
    Response,
    /// Inside the `tool_calls` array.
    Calls,
    /// After the envelope's payload: the rest is ignored.
    Tail,
    /// Not an envelope: everything is content.
    Raw,
}

/// The generic format's streaming parser.
#[derive(Debug, Default)]
pub struct Parser {
    state: State,
    /// Text not consumed yet.
    buf: String,
}

enum Open {
    /// The opening is complete; its byte length.
    Done(usize),
    /// A prefix of it so far.
    Partial,
    No,
}

/// Matches `parts` (separated by optional whitespace) at the start of `s`.
fn open(s: &str, parts: &[&str]) -> Open {
    let mut rest = s;
    for p in parts {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Open::Partial;
        }
        if let Some(r) = rest.strip_prefix(p) {
            rest = r;
        } else if p.starts_with(rest) {
            return Open::Partial;
        } else {
            return Open::No;
        }
    }
    Open::Done(s.len() - rest.len())
}

impl Parser {
    fn run(&mut self, out: &mut Vec<Piece>, at_end: bool) {
        loop {
            match self.state {
                State::Start => match (open(&self.buf, CALLS_OPEN), open(&self.buf, RESPONSE_OPEN)) {
                    (Open::Done(n), _) => {
                        self.buf.drain(..n);
                        self.state = State::Calls;
                    }
                    (_, Open::Done(n)) => {
                        self.buf.drain(..n);
                        self.state = State::Response;
                    }
                    (Open::No, Open::No) => self.state = State::Raw,
                    _ if at_end => self.state = State::Raw,
                    _ => return,
                },
                State::Raw => {
                    if !self.buf.is_empty() {
                        out.push(Piece::Content(std::mem::take(&mut self.buf)));
                    }
                    return;
                }
                State::Tail => {
                    self.buf.clear();
                    return;
                }
                State::Response => {
                    let (text, used, closed) = decode_string(&self.buf, at_end);
                    self.buf.drain(..used);
                    if !text.is_empty() {
                        out.push(Piece::Content(text));
                    }
                    if closed {
                        self.state = State::Tail;
                        continue;
                    }
                    return;
                }
                State::Calls => {
                    let s = self.buf.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
                    let skipped = self.buf.len() - s.len();
                    if s.starts_with(']') {
                        self.state = State::Tail;
                        continue;
                    }
                    match value_end(s) {
                        Some(end) => {
                            if let Some(call) = call(&s[..end]) {
                                out.push(Piece::Call(call));
                            }
                            self.buf.drain(..skipped + end);
                        }
                        None => {
                            if at_end {
                                self.buf.clear();
                            }
                            return;
                        }
                    }
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

/// `{"name": .., "arguments": ..}` as a call (arguments re-serialized compactly).
pub(super) fn call(json_text: &str) -> Option<ParsedCall> {
    let v: Value = serde_json::from_str(json_text).ok()?;
    let name = v.get("name")?.as_str()?.to_owned();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(a) => serde_json::to_string(a).ok()?,
    };
    Some(ParsedCall { name, arguments })
}

/// The byte length of the complete JSON object or array at the start of `s`, if it is complete.
pub(super) fn value_end(s: &str) -> Option<usize> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, c) in s.char_indices() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ if depth == 0 => return None,
            _ => {}
        }
    }
    None
}

/// Decodes the JSON string body at the start of `s` (its opening quote already consumed):
/// `(text, bytes used, closed)`. An escape split at the end waits for more, unless `at_end`.
fn decode_string(s: &str, at_end: bool) -> (String, usize, bool) {
    let mut out = String::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        match bytes[i] {
            b'"' => return (out, i + 1, true),
            b'\\' => {
                let Some(&e) = bytes.get(i + 1) else { break };
                let simple = match e {
                    b'n' => Some('\n'),
                    b't' => Some('\t'),
                    b'r' => Some('\r'),
                    b'b' => Some('\u{8}'),
                    b'f' => Some('\u{c}'),
                    b'"' => Some('"'),
                    b'\\' => Some('\\'),
                    b'/' => Some('/'),
                    _ => None,
                };
                if let Some(c) = simple {
                    out.push(c);
                    i += 2;
                    continue;
                }
                // \uXXXX, possibly a surrogate pair \uD8xx\uDCxx.
                let hex = |at: usize| s.get(at..at + 4).and_then(|h| u32::from_str_radix(h, 16).ok());
                let Some(hi) = hex(i + 2) else { break };
                if (0xD800..0xDC00).contains(&hi) {
                    if s.len() < i + 12 {
                        break;
                    }
                    let lo = if &s[i + 6..i + 8] == "\\u" { hex(i + 8) } else { None };
                    match lo.filter(|lo| (0xDC00..0xE000).contains(lo)) {
                        Some(lo) => {
                            out.extend(char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)));
                            i += 12;
                        }
                        None => {
                            out.push('\u{FFFD}');
                            i += 6;
                        }
                    }
                } else {
                    out.push(char::from_u32(hi).unwrap_or('\u{FFFD}'));
                    i += 6;
                }
            }
            _ => {
                let c = s[i..].chars().next().unwrap_or('\u{FFFD}');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    if at_end {
        return (out, s.len(), false);
    }
    (out, i, false)
}

#[cfg(test)]
mod tests {
    use super::super::split_tests::run;
    use super::super::ToolParser;
    use super::*;

    fn parse_all(text: &str) -> Vec<Piece> {
        let mut p = Parser::default();
        let mut out = p.push(text);
        out.extend(p.finish());
        super::super::split_tests::merge(out)
    }

    #[test]
    fn calls_and_responses_parse_the_same_under_every_split() {
        let cases = [
            (
                r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris \"15e\""}}, {"name": "now", "arguments": {}}]}"#,
                vec![
                    Piece::Call(ParsedCall {
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris \"15e\""}"#.into(),
                    }),
                    Piece::Call(ParsedCall { name: "now".into(), arguments: "{}".into() }),
                ],
            ),
            (
                r#"{"response": "Bonjour \u00e9t\u00e9 \ud83d\ude00 \"x\"\nok"}"#,
                vec![Piece::Content("Bonjour été 😀 \"x\"\nok".into())],
            ),
            (
                "{ \"tool_calls\" :[ {\"name\":\"now\",\"arguments\":{\"a\":[1,{\"b\":\"]}\"}]}} ] }",
                vec![Piece::Call(ParsedCall { name: "now".into(), arguments: r#"{"a":[1,{"b":"]}"}]}"#.into() })],
            ),
            ("Just text, no envelope.", vec![Piece::Content("Just text, no envelope.".into())]),
            ("{\"other\": 1}", vec![Piece::Content("{\"other\": 1}".into())]),
        ];
        for (text, want) in cases {
            assert_eq!(parse_all(text), want, "{text}");
            for seed in 0..50 {
                assert_eq!(run(Box::new(Parser::default()), text, seed), want, "{text} seed {seed}");
            }
        }
    }

    #[test]
    fn a_truncated_envelope_keeps_what_was_complete() {
        let text = r#"{"tool_calls": [{"name": "now", "arguments": {}}, {"name": "get_wea"#;
        assert_eq!(parse_all(text), vec![Piece::Call(ParsedCall { name: "now".into(), arguments: "{}".into() })]);
        assert_eq!(parse_all(r#"{"response": "Hel"#), vec![Piece::Content("Hel".into())]);
    }

    #[test]
    fn the_envelope_schema_and_prompt_follow_the_choice() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let mut req = super::super::parse(Some(&tools), None, Some(&json!(false))).expect("ok").expect("some");
        let auto = envelope_schema(&req);
        assert_eq!(auto["anyOf"][0]["properties"]["tool_calls"]["maxItems"], 1);
        assert!(system_prompt(&req).contains("\"response\""));
        req.choice = Choice::Required;
        assert!(envelope_schema(&req).get("anyOf").is_none());
        assert!(!system_prompt(&req).contains("\"response\""));
        let msgs = vec![
            ChatMessage::new("user", "hi"),
            ChatMessage {
                tool_calls: Some(
                    json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]),
                ),
                ..ChatMessage::new("assistant", "")
            },
            ChatMessage { tool_call_id: Some("c1".into()), name: Some("f".into()), ..ChatMessage::new("tool", "42") },
        ];
        let out = messages(&req, msgs);
        assert_eq!(out[0].role, "system");
        assert_eq!(out[2].content, r#"{"tool_calls":[{"name":"f","arguments":{"x":1}}]}"#);
        assert_eq!(
            (out[3].role.as_str(), out[3].content.as_str()),
            ("user", r#"{"tool_response":{"name":"f","content":"42"}}"#)
        );
    }
}
