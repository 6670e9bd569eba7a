//! OpenAI's harmony format (gpt-oss): the answer is a run of messages
//! `<|start|>ROLE[ to=RECIPIENT]<|channel|>CHANNEL[ to=RECIPIENT][ <|constrain|>json]<|message|>BODY`
//! ended by `<|end|>` (more messages follow), `<|return|>` (the final answer, the end) or
//! `<|call|>` (a tool call, the end). The generation prompt already wrote `<|start|>assistant`,
//! so the text starts in the first message's header.
//!
//! The parser works on decoded text, so it reads the markers whether they are special tokens
//! (gpt-oss's o200k vocabulary, decoded with their text) or plain text (the tiny fixture, whose
//! SmolLM2 vocabulary spells them in several tokens). Markers split across pieces are held back
//! until they are whole. What goes where:
//! - `analysis` → reasoning (`reasoning_content` / `reasoning`);
//! - `commentary` to `functions.NAME` → a tool call (the body is the arguments);
//! - `final`, and `commentary` with no recipient (a preamble), → content;
//! - an answer with no harmony header at all (a model ignoring the format) → content as is;
//! - nothing after `<|return|>` or `<|call|>`.
//!
//! [`grammar`] constrains a tools request: the headers, the tool names and each tool's
//! arguments against its `parameters`, with free text in the analysis and final bodies.

use super::{Choice, ParsedCall, ToolRequest};

pub const START: &str = "<|start|>";
pub const CHANNEL: &str = "<|channel|>";
pub const MESSAGE: &str = "<|message|>";
pub const CONSTRAIN: &str = "<|constrain|>";
pub const END: &str = "<|end|>";
pub const RETURN: &str = "<|return|>";
pub const CALL: &str = "<|call|>";
const MARKERS: [&str; 7] = [START, CHANNEL, MESSAGE, CONSTRAIN, END, RETURN, CALL];

/// The end markers that stop generation (where they are not end-of-generation tokens, the
/// server stops on them as text).
pub const STOPS: [&str; 2] = [RETURN, CALL];

/// Whether a chat template writes harmony (gpt-oss's own template, wick's built-in).
pub fn is_harmony(template: &str) -> bool {
    template.contains(CHANNEL) && template.contains(MESSAGE)
}

/// What the parser makes of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Reasoning(String),
    Content(String),
    Call(ParsedCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Content,
    /// A call's arguments, collected until the message ends.
    Call,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// In a header (after `<|start|>`, or at the very beginning); `first`: the answer's first.
    Header { first: bool },
    /// In a body of this kind; `name` is the function of a call.
    Body { kind: Kind, name: String },
    /// Between messages (after `<|end|>`): only `<|start|>` matters.
    Between,
    /// After `<|return|>` / `<|call|>`.
    Done,
    /// No harmony header: everything is content, markers included.
    Raw,
}

#[derive(Debug)]
pub struct Parser {
    state: State,
    buf: String,
    /// A call's arguments so far.
    args: String,
}

impl Default for Parser {
    fn default() -> Self {
        Self { state: State::Header { first: true }, buf: String::new(), args: String::new() }
    }
}

/// The length of the longest suffix of `s` that is a proper prefix of a marker.
fn partial_marker(s: &str) -> usize {
    let Some(at) = s.rfind('<') else { return 0 };
    let tail = &s[at..];
    if MARKERS.iter().any(|m| m.len() > tail.len() && m.starts_with(tail)) {
        tail.len()
    } else {
        0
    }
}

/// The first marker in `s` of `set`, as (position, marker).
fn find_first<'a>(s: &str, set: &[&'a str]) -> Option<(usize, &'a str)> {
    set.iter().filter_map(|m| s.find(m).map(|i| (i, *m))).min_by_key(|(i, _)| *i)
}

/// The body kind and call name of a header (`<|channel|>commentary to=functions.f <|constrain|>json`,
/// ` to=functions.f<|channel|>commentary json`, `assistant<|channel|>final`, ...).
fn read_header(header: &str) -> (Kind, String) {
    let recipient = header
        .split(|c: char| c.is_whitespace() || c == '<')
        .find_map(|w| w.strip_prefix("to="))
        .map(|r| r.trim_end_matches(['|', '>']).to_owned());
    let channel = header
        .split(CHANNEL)
        .nth(1)
        .map(|c| c.split(|ch: char| ch.is_whitespace() || ch == '<').find(|w| !w.is_empty()).unwrap_or("").to_owned());
    match (recipient, channel.as_deref()) {
        // Messages to the user ("to=user") are ordinary; anything else addressed is a call.
        (Some(r), _) if r != "user" && r != "assistant" => {
            let name = r.strip_prefix("functions.").unwrap_or(&r).to_owned();
            (Kind::Call, name)
        }
        (_, Some("analysis")) => (Kind::Reasoning, String::new()),
        _ => (Kind::Content, String::new()),
    }
}

impl Parser {
    pub fn push(&mut self, text: &str) -> Vec<Out> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        self.run(&mut out, false);
        out
    }

    pub fn finish(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        self.run(&mut out, true);
        // A message cut off (max_tokens, or a stop string that took the end marker).
        match std::mem::replace(&mut self.state, State::Done) {
            State::Body { kind: Kind::Call, name } => out.push(Out::Call(self.call(name))),
            State::Header { first: true } if !self.buf.is_empty() => {
                out.push(Out::Content(std::mem::take(&mut self.buf)))
            }
            _ => {}
        }
        out
    }

    fn call(&mut self, name: String) -> ParsedCall {
        let raw = std::mem::take(&mut self.args);
        let arguments = match serde_json::from_str::<serde_json::Value>(raw.trim()) {
            Ok(v) => v.to_string(),
            Err(_) => raw.trim().to_owned(),
        };
        ParsedCall { name, arguments }
    }

    fn emit(&mut self, kind: Kind, text: String, out: &mut Vec<Out>) {
        if text.is_empty() {
            return;
        }
        match kind {
            Kind::Reasoning => out.push(Out::Reasoning(text)),
            Kind::Content => out.push(Out::Content(text)),
            Kind::Call => self.args.push_str(&text),
        }
    }

    fn run(&mut self, out: &mut Vec<Out>, at_end: bool) {
        loop {
            match self.state.clone() {
                State::Done => {
                    self.buf.clear();
                    return;
                }
                State::Raw => {
                    if !self.buf.is_empty() {
                        out.push(Out::Content(std::mem::take(&mut self.buf)));
                    }
                    return;
                }
                State::Header { first } => {
                    if first && !self.buf.is_empty() && !looks_like_header(&self.buf) {
                        // No harmony at all: the whole answer is content.
                        self.state = State::Raw;
                        continue;
                    }
                    match self.buf.find(MESSAGE) {
                        Some(at) => {
                            let header: String = self.buf.drain(..at + MESSAGE.len()).collect();
                            let (kind, name) = read_header(&header[..at]);
                            self.state = State::Body { kind, name };
                        }
                        None => return,
                    }
                }
                State::Body { kind, name } => match find_first(&self.buf, &[END, RETURN, CALL, START]) {
                    Some((at, marker)) => {
                        let text: String = self.buf.drain(..at).collect();
                        self.emit(kind, text, out);
                        self.buf.drain(..marker.len());
                        if kind == Kind::Call {
                            out.push(Out::Call(self.call(name)));
                        }
                        self.state = match marker {
                            END => State::Between,
                            START => State::Header { first: false },
                            _ => State::Done,
                        };
                    }
                    None => {
                        let keep = if at_end { 0 } else { partial_marker(&self.buf) };
                        let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                        self.emit(kind, text, out);
                        return;
                    }
                },
                State::Between => match find_first(&self.buf, &[START, RETURN, CALL]) {
                    Some((at, marker)) => {
                        self.buf.drain(..at + marker.len());
                        self.state = if marker == START { State::Header { first: false } } else { State::Done };
                    }
                    None => {
                        let keep = if at_end { 0 } else { partial_marker(&self.buf) };
                        self.buf.drain(..self.buf.len() - keep);
                        return;
                    }
                },
            }
        }
    }
}

/// The harmony parser as a [`super::ToolParser`]: calls and content, reasoning dropped.
/// (Chat choices use [`Parser`] itself, which keeps the reasoning.)
#[derive(Debug, Default)]
pub struct ToolsOnly(Parser);

impl ToolsOnly {
    fn pieces(out: Vec<Out>) -> Vec<super::Piece> {
        out.into_iter()
            .filter_map(|o| match o {
                Out::Reasoning(_) => None,
                Out::Content(c) => Some(super::Piece::Content(c)),
                Out::Call(c) => Some(super::Piece::Call(c)),
            })
            .collect()
    }
}

impl super::ToolParser for ToolsOnly {
    fn push(&mut self, text: &str) -> Vec<super::Piece> {
        Self::pieces(self.0.push(text))
    }

    fn finish(&mut self) -> Vec<super::Piece> {
        Self::pieces(self.0.finish())
    }
}

/// Whether the start of an answer can be a harmony header: a marker (or its beginning), or a
/// recipient, possibly after the role.
fn looks_like_header(s: &str) -> bool {
    let t = s.strip_prefix("assistant").unwrap_or(s);
    let t = t.trim_start_matches(' ');
    if t.is_empty() {
        return true;
    }
    let starts = |p: &str| t.starts_with(p) || (t.len() < p.len() && p.starts_with(t));
    MARKERS.iter().any(|m| starts(m)) || starts("to=") || starts("assistant")
}

/// The Lark grammar (llguidance syntax) of a harmony answer that may call `req`'s tools, from
/// the first header on. `special`: the markers are special tokens (gpt-oss's vocabulary: written
/// bare, and free text cannot contain them); otherwise they are text (and free text may not
/// contain `<`). `auto` allows a final answer; `required` and named choices end in a call.
/// Analysis comes first if the model wants; each call's arguments follow their tool's schema.
pub fn grammar(req: &ToolRequest, special: bool) -> String {
    let m = |t: &str| if special { t.to_owned() } else { format!("{t:?}") };
    let (channel, message, end, start, constrain) = (m(CHANNEL), m(MESSAGE), m(END), m(START), m(CONSTRAIN));
    let call_end = if special { String::new() } else { format!(" {}", m(CALL)) };
    let ret_end = if special { String::new() } else { format!(" {}?", m(RETURN)) };
    // Lexemes are greedy in llguidance: where the markers are text, free text stops at `<`.
    let text = if special { "/(.|\\n)*/" } else { "/[^<]*/" };
    let tools = req.callable();
    let mut src = String::new();
    let answers = if req.choice == Choice::Auto { "analysis | final | preamble | call" } else { "analysis | call" };
    src.push_str(&format!("start: {channel} body\nbody: {answers}\n"));
    src.push_str(&format!("next: {start} \"assistant\" ({channel} body | hcall)\n"));
    src.push_str(&format!("analysis: \"analysis\" {message} TEXT {end} next\n"));
    if req.choice == Choice::Auto {
        src.push_str(&format!("final: \"final\" {message} TEXT{ret_end}\n"));
        src.push_str(&format!("preamble: \"commentary\" {message} TEXT {end} next\n"));
    }
    let names: Vec<String> = (0..tools.len()).map(|i| format!("f{i}")).collect();
    src.push_str(&format!("call: \"commentary to=functions.\" ({})\n", names.join(" | ")));
    src.push_str(&format!(
        "hcall: \" to=functions.\" ({})\n",
        names.iter().map(|n| format!("h{n}")).collect::<Vec<_>>().join(" | ")
    ));
    for (i, t) in tools.iter().enumerate() {
        let name = format!("{:?}", t.name);
        let schema = wick_engine::grammar::with_json_options(t.parameters.clone());
        src.push_str(&format!("f{i}: {name} (\" \" {constrain} \"json\")? {message} a{i}{call_end}\n"));
        src.push_str(&format!("hf{i}: {name} {channel} \"commentary\" (\" json\" | \" \" {constrain} \"json\")? {message} a{i}{call_end}\n"));
        src.push_str(&format!("a{i}: %json {schema}\n"));
    }
    src.push_str(&format!("TEXT: {text}\n"));
    src
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the parser over `text` cut at pseudo-random points, merging neighbours of a kind.
    fn run(text: &str, seed: u64) -> Vec<Out> {
        let mut p = Parser::default();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let n = 1 + (s % 9) as usize;
            out.extend(p.push(&chars[i..(i + n).min(chars.len())].iter().collect::<String>()));
            i += n;
        }
        out.extend(p.finish());
        let mut merged: Vec<Out> = Vec::new();
        for x in out {
            match (merged.last_mut(), x) {
                (Some(Out::Reasoning(a)), Out::Reasoning(b)) | (Some(Out::Content(a)), Out::Content(b)) => {
                    a.push_str(&b)
                }
                (_, x) => merged.push(x),
            }
        }
        merged
    }

    fn r(s: &str) -> Out {
        Out::Reasoning(s.into())
    }
    fn c(s: &str) -> Out {
        Out::Content(s.into())
    }
    fn call(name: &str, args: &str) -> Out {
        Out::Call(ParsedCall { name: name.into(), arguments: args.into() })
    }

    #[test]
    fn transcripts_split_the_same_under_every_split() {
        for (text, want) in [
            // Analysis, then a call (the turn ends at <|call|>).
            (
                "<|channel|>analysis<|message|>User asks weather in Paris. Use get_weather.<|end|>\
                 <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>\
                 {\"city\":\"Paris\"}<|call|>",
                vec![r("User asks weather in Paris. Use get_weather."), call("get_weather", "{\"city\":\"Paris\"}")],
            ),
            // After a tool result: analysis, then the final answer.
            (
                "<|channel|>analysis<|message|>It is sunny, 21 C.<|end|><|start|>assistant<|channel|>final<|message|>\
                 Sunny in Paris, 21 °C.<|return|>",
                vec![r("It is sunny, 21 C."), c("Sunny in Paris, 21 °C.")],
            ),
            // The recipient in the role part of the header, `json` without <|constrain|>.
            (
                "<|channel|>analysis<|message|>need it<|end|><|start|>assistant to=functions.now<|channel|>commentary json\
                 <|message|>{}<|call|>",
                vec![r("need it"), call("now", "{}")],
            ),
            // A preamble on commentary is content; text after the end marker is ignored.
            (
                "<|channel|>commentary<|message|>Checking...<|end|><|start|>assistant<|channel|>final<|message|>\
                 Done <|a|> < b<|return|>ignored",
                vec![c("Checking...Done <|a|> < b")],
            ),
            // Cut off by max_tokens in the analysis; cut off inside call arguments.
            ("<|channel|>analysis<|message|>Thinking about <|", vec![r("Thinking about <|")]),
            (
                "<|channel|>commentary to=functions.f<|message|>{\"a\": 1",
                vec![call("f", "{\"a\": 1")],
            ),
            // No harmony at all (a model ignoring the format, the tiny fixture): content.
            ("Just some text <|end|> here", vec![c("Just some text <|end|> here")]),
            ("", vec![]),
            // A final answer ended by a stop string (the marker itself removed).
            ("<|channel|>final<|message|>Four.", vec![c("Four.")]),
        ] {
            for seed in 0..50 {
                assert_eq!(run(text, seed), want, "{text:?} seed {seed}");
            }
        }
    }

    #[test]
    fn arguments_are_normalized_json() {
        let got = run("<|channel|>commentary to=functions.f <|constrain|>json<|message|>{ \"x\" : [1, 2] }<|call|>", 3);
        assert_eq!(got, vec![call("f", "{\"x\":[1,2]}")]);
    }

    #[test]
    fn grammars_compile_shapes() {
        let req = ToolRequest {
            tools: vec![super::super::Tool {
                name: "get_weather".into(),
                description: None,
                parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            }],
            choice: Choice::Auto,
            parallel: false,
        };
        let g = grammar(&req, true);
        assert!(g.contains("final: \"final\" <|message|> TEXT\n"), "{g}");
        assert!(g.contains("f0: \"get_weather\""), "{g}");
        let g = grammar(&ToolRequest { choice: Choice::Required, ..req.clone() }, false);
        assert!(!g.contains("final:") && g.contains("\"<|call|>\""), "{g}");
    }
}
