//! Tool calling: the request's `tools`, `tool_choice` and `parallel_tool_calls`, the output
//! format the model writes calls in, the grammar that constrains them, and the parsers that turn
//! the model's text back into content and calls.
//!
//! Four formats, one module each, named after them:
//! - [`hermes`]: `<tool_call>\n{"name": .., "arguments": ..}\n</tool_call>`, for chat templates
//!   that render `tools` themselves and write that tag (Qwen 2.5/3, Hermes). `auto` is free text
//!   until the `<tool_call>` trigger, then grammar-constrained (a lazy grammar); `required` and
//!   named choices are constrained from the first token.
//! - [`mistral`]: `[TOOL_CALLS][{"name": .., "arguments": ..}, ..]` (Mistral templates); lazy on
//!   the `[TOOL_CALLS]` token in `auto`.
//! - [`llama3`]: `{"name": .., "parameters": ..}` as the whole answer (Llama 3.1-3.3 templates);
//!   in `auto` one grammar allows free text or a constrained call from the first token.
//! - [`generic`]: for templates that know no tools (SmolLM2, Gemma 3): the tools are described in
//!   the system message and the whole answer is one JSON envelope, `{"tool_calls": [..]}` or (in
//!   `auto`) `{"response": ".."}`, constrained from the first token (llama.cpp's generic handler).
//!
//! - [`harmony`]: gpt-oss's harmony messages; a call is a `commentary` message addressed to
//!   `functions.NAME` whose body is the arguments. The grammar covers the whole answer (headers,
//!   free analysis and final text, tool names and arguments), and the parser also splits the
//!   `analysis` channel into reasoning.
//!
//! In every mode the arguments of every call are valid against their tool's `parameters`.

pub mod generic;
pub mod harmony;
pub mod hermes;
pub mod llama3;
pub mod mistral;

use serde_json::{json, Value};
use wick_engine::grammar::{GrammarSpec, Trigger};

use crate::error::ApiError;

/// One function tool.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of the arguments (an empty object schema when the tool takes none).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// No calls: the model answers in text (the history may still hold calls and results).
    None,
    Auto,
    Required,
    Named(String),
}

/// What the request asks of tools (absent when it has none).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRequest {
    pub tools: Vec<Tool>,
    pub choice: Choice,
    pub parallel: bool,
}

impl ToolRequest {
    /// The tools the model may call under this choice.
    pub fn callable(&self) -> Vec<&Tool> {
        match &self.choice {
            Choice::Named(n) => self.tools.iter().filter(|t| &t.name == n).collect(),
            Choice::None => Vec::new(),
            _ => self.tools.iter().collect(),
        }
    }

    /// The tools as HF chat templates take them (`tools=` of `apply_chat_template`).
    pub fn template_tools(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description.clone().unwrap_or_default(),
                        "parameters": t.parameters}})
                })
                .collect(),
        )
    }

    /// The JSON schema of one call: `{"name": <one of the tools>, "arguments": <its schema>}`.
    pub fn call_schema(&self) -> Value {
        let alts: Vec<Value> = self
            .callable()
            .into_iter()
            .map(|t| {
                json!({"type": "object",
                       "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                       "required": ["name", "arguments"], "additionalProperties": false})
            })
            .collect();
        match <[Value; 1]>::try_from(alts) {
            Ok([one]) => one,
            Err(alts) => json!({"anyOf": alts}),
        }
    }
}

/// A call the parser found: the function name and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// What a format parser makes of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Content(String),
    Call(ParsedCall),
}

/// A streaming parser of one output format: text arrives in arbitrary pieces; the pieces it
/// returns, concatenated, do not depend on how the text was split.
pub trait ToolParser: Send {
    fn push(&mut self, text: &str) -> Vec<Piece>;
    /// End of the output: whatever is still held.
    fn finish(&mut self) -> Vec<Piece>;
}

/// How a model writes tool calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Generic,
    /// `special`: `<tool_call>`/`</tool_call>` are special tokens (written as such in grammars);
    /// `trigger`: the token id of `<tool_call>` when it is one token.
    Hermes {
        trigger: Trigger,
        special: bool,
    },
    /// `trigger`/`special` as for Hermes, for `[TOOL_CALLS]`.
    Mistral {
        trigger: Trigger,
        special: bool,
    },
    Llama3,
    /// `special`: the harmony markers are special tokens (gpt-oss's own vocabulary).
    Harmony {
        special: bool,
    },
}

impl Format {
    /// The format of a chat template that renders `tools`: Hermes when it writes `<tool_call>`,
    /// Mistral when it writes `[TOOL_CALLS]`, Llama 3 when it has Llama's ipython tool turns;
    /// generic otherwise. `single_token(text)`: the id of `text` when it is one token, and
    /// whether that token is special.
    pub fn detect(template: &str, single_token: impl Fn(&str) -> Option<(u32, bool)>) -> Self {
        let trigger = |tag: &str| match single_token(tag) {
            Some((id, special)) => (Trigger::Token(id), special),
            None => (Trigger::Text(tag.into()), false),
        };
        if harmony::is_harmony(template) {
            return Format::Harmony { special: single_token(harmony::CHANNEL).is_some_and(|(_, s)| s) };
        }
        if !template.contains("tools") {
            return Format::Generic;
        }
        if template.contains(hermes::OPEN) {
            let (trigger, special) = trigger(hermes::OPEN);
            Format::Hermes { trigger, special }
        } else if template.contains(mistral::OPEN) {
            let (trigger, special) = trigger(mistral::OPEN);
            Format::Mistral { trigger, special }
        } else if template.contains(llama3::PYTHON_TAG) || template.contains("ipython") {
            Format::Llama3
        } else {
            Format::Generic
        }
    }

    /// Whether the model's own template renders the tools (all but the generic format).
    pub fn template_renders_tools(&self) -> bool {
        !matches!(self, Format::Generic)
    }

    /// The grammar that constrains the answer, and its trigger for a lazy one (none for a
    /// Hermes model told not to call tools: it answers in free text).
    pub fn grammar(&self, req: &ToolRequest) -> Option<(GrammarSpec, Option<Trigger>)> {
        match self {
            Format::Generic => Some((GrammarSpec::JsonSchema(generic::envelope_schema(req)), None)),
            _ if req.choice == Choice::None => None,
            Format::Hermes { trigger, special } => {
                let lazy = req.choice == Choice::Auto;
                let src = hermes::grammar(req, *special, lazy);
                Some((GrammarSpec::Lark(src), lazy.then(|| trigger.clone())))
            }
            Format::Mistral { trigger, special } => {
                let lazy = req.choice == Choice::Auto;
                let src = mistral::grammar(req, *special, lazy);
                Some((GrammarSpec::Lark(src), lazy.then(|| trigger.clone())))
            }
            Format::Llama3 => Some((GrammarSpec::Lark(llama3::grammar(req)), None)),
            Format::Harmony { special } => Some((GrammarSpec::Lark(harmony::grammar(req, *special)), None)),
        }
    }

    pub fn parser(&self) -> Box<dyn ToolParser> {
        match self {
            Format::Generic => Box::new(generic::Parser::default()),
            Format::Hermes { .. } => Box::new(hermes::Parser::default()),
            Format::Mistral { .. } => Box::new(mistral::Parser::default()),
            Format::Llama3 => Box::new(llama3::Parser::default()),
            Format::Harmony { .. } => Box::new(harmony::ToolsOnly::default()),
        }
    }
}

/// Parses `tools`, `tool_choice` and `parallel_tool_calls`. `None`: no tools apply (none given,
/// or `tool_choice: "none"`).
pub fn parse(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel: Option<&Value>,
) -> Result<Option<ToolRequest>, ApiError> {
    let tools = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().enumerate().map(|(i, t)| tool(i, t)).collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(ApiError::invalid_value("tools", "`tools` must be an array of function tools.")),
    };
    for (i, t) in tools.iter().enumerate() {
        if tools[..i].iter().any(|u| u.name == t.name) {
            return Err(ApiError::invalid_value(
                &format!("tools[{i}].function.name"),
                format!("Duplicate tool name {:?}.", t.name),
            ));
        }
    }
    // As llama-server: one call per turn unless the client asks for parallel calls (OpenAI's
    // default is true, but small models asked for "one or more" calls tend to repeat them).
    let parallel = match parallel {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid_value("parallel_tool_calls", "`parallel_tool_calls` must be a boolean."))
        }
    };
    let choice = match tool_choice {
        None | Some(Value::Null) => Some(Choice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Some(Choice::None),
            "auto" => Some(Choice::Auto),
            "required" => Some(Choice::Required),
            other => {
                return Err(ApiError::invalid_value(
                    "tool_choice",
                    format!("Unknown `tool_choice` {other:?}; expected none, auto, required or a named function."),
                ))
            }
        },
        Some(v @ Value::Object(_)) => {
            let name = (v.get("type").and_then(Value::as_str) == Some("function"))
                .then(|| v.pointer("/function/name").and_then(Value::as_str))
                .flatten()
                .ok_or_else(|| {
                    ApiError::invalid_value(
                        "tool_choice",
                        "A named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                    )
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid_value(
                    "tool_choice",
                    format!("`tool_choice` names {name:?}, which is not in `tools`."),
                ));
            }
            Some(Choice::Named(name.to_owned()))
        }
        Some(_) => return Err(ApiError::invalid_value("tool_choice", "`tool_choice` must be a string or an object.")),
    };
    let Some(choice) = choice else { return Ok(None) };
    if tools.is_empty() {
        return match choice {
            Choice::Auto | Choice::None => Ok(None),
            _ => Err(ApiError::invalid_value("tool_choice", "`tool_choice` requires `tools`.")),
        };
    }
    Ok(Some(ToolRequest { tools, choice, parallel }))
}

fn tool(i: usize, t: &Value) -> Result<Tool, ApiError> {
    let at = |f: &str| format!("tools[{i}]{f}");
    let obj = t.as_object().ok_or_else(|| ApiError::invalid_value(&at(""), "A tool must be an object."))?;
    if let Some(extra) = obj.keys().find(|k| !["type", "function"].contains(&k.as_str())) {
        return Err(ApiError::invalid(Some(&at(&format!(".{extra}"))), format!("Unknown field `{extra}` in a tool.")));
    }
    if obj.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ApiError::unsupported(&at(".type"), "Only tools of type \"function\" are supported."));
    }
    let f = obj
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid_value(&at(".function"), "A function tool needs a `function` object."))?;
    if let Some(extra) = f.keys().find(|k| !["name", "description", "parameters", "strict"].contains(&k.as_str())) {
        return Err(ApiError::invalid(
            Some(&at(&format!(".function.{extra}"))),
            format!("Unknown field `{extra}` in a function."),
        ));
    }
    let name = match f.get("name").and_then(Value::as_str) {
        Some(n)
            if !n.is_empty()
                && n.len() <= 64
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            n.to_owned()
        }
        _ => {
            return Err(ApiError::invalid_value(
                &at(".function.name"),
                "A function name is 1 to 64 characters of a-z, A-Z, 0-9, _ and -.",
            ))
        }
    };
    let description = match f.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => {
            return Err(ApiError::invalid_value(&at(".function.description"), "`description` must be a string."))
        }
    };
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(ApiError::invalid_value(
                &at(".function.parameters"),
                "`parameters` must be a JSON schema object.",
            ))
        }
    };
    if !matches!(f.get("strict"), None | Some(Value::Null | Value::Bool(_))) {
        return Err(ApiError::invalid_value(&at(".function.strict"), "`strict` must be a boolean."));
    }
    // Arguments are constrained to `parameters` whether or not `strict` is set.
    Ok(Tool { name, description, parameters })
}

/// A fresh tool-call id.
pub fn new_call_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("call_{}", &hex[..24])
}

#[cfg(test)]
pub(crate) mod split_tests {
    //! Shared by the format parsers' tests: feed a text in random pieces.
    use super::{Piece, ToolParser};

    /// Runs `parser` over `text` cut at pseudo-random points (seeded), merging adjacent content.
    pub fn run(mut parser: Box<dyn ToolParser>, text: &str, seed: u64) -> Vec<Piece> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let n = 1 + (s % 7) as usize;
            let piece: String = chars[i..(i + n).min(chars.len())].iter().collect();
            out.extend(parser.push(&piece));
            i += n;
        }
        out.extend(parser.finish());
        merge(out)
    }

    pub fn merge(pieces: Vec<Piece>) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        for p in pieces {
            match (out.last_mut(), p) {
                (_, Piece::Content(c)) if c.is_empty() => {}
                (Some(Piece::Content(a)), Piece::Content(b)) => a.push_str(&b),
                (_, p) => out.push(p),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
               {"type": "function", "function": {"name": "now"}}])
    }

    #[test]
    fn choices_parse_and_none_disables_tools() {
        let t = tools();
        let r = parse(Some(&t), None, None).expect("ok").expect("tools");
        assert_eq!((r.choice.clone(), r.parallel, r.tools.len()), (Choice::Auto, false, 2));
        assert_eq!(r.tools[1].parameters, json!({"type": "object", "properties": {}}));
        let none = parse(Some(&t), Some(&json!("none")), None).expect("ok").expect("tools");
        assert!(none.callable().is_empty());
        assert!(parse(Some(&json!([])), Some(&json!("none")), None).expect("ok").is_none());
        let named = json!({"type": "function", "function": {"name": "now"}});
        let r = parse(Some(&t), Some(&named), Some(&json!(true))).expect("ok").expect("tools");
        assert_eq!((r.choice.clone(), r.parallel), (Choice::Named("now".into()), true));
        assert_eq!(r.callable().len(), 1);
        assert_eq!(r.call_schema()["properties"]["name"]["const"], "now");
        assert!(parse(None, Some(&json!("auto")), None).expect("ok").is_none());
    }

    #[test]
    fn bad_tool_fields_name_their_param() {
        let t = tools();
        for (tools, choice, parallel, param) in [
            (json!({}), None, None, "tools"),
            (json!([{"type": "code_interpreter"}]), None, None, "tools[0].type"),
            (json!([{"type": "function", "function": {"name": "a b"}}]), None, None, "tools[0].function.name"),
            (
                json!([{"type": "function", "function": {"name": "a", "parameters": 3}}]),
                None,
                None,
                "tools[0].function.parameters",
            ),
            (json!([{"type": "function", "function": {"name": "a", "x": 3}}]), None, None, "tools[0].function.x"),
            (t.clone(), Some(json!("sometimes")), None, "tool_choice"),
            (t.clone(), Some(json!({"type": "function", "function": {"name": "missing"}})), None, "tool_choice"),
            (t.clone(), None, Some(json!("yes")), "parallel_tool_calls"),
            (json!([]), Some(json!("required")), None, "tool_choice"),
        ] {
            let e = parse(Some(&tools), choice.as_ref(), parallel.as_ref()).expect_err("rejected");
            assert_eq!(e.param.as_deref(), Some(param), "{tools} {choice:?}");
        }
    }

    #[test]
    fn formats_are_detected_from_the_template() {
        assert_eq!(Format::detect("{{ messages }}", |_| None), Format::Generic);
        let qwen = "{% if tools %}<tools>{% endif %}<tool_call>";
        assert_eq!(
            Format::detect(qwen, |_| Some((7, false))),
            Format::Hermes { trigger: Trigger::Token(7), special: false }
        );
        assert_eq!(
            Format::detect(qwen, |_| None),
            Format::Hermes { trigger: Trigger::Text("<tool_call>".into()), special: false }
        );
        let mistral = "{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]";
        assert_eq!(
            Format::detect(mistral, |_| Some((5, true))),
            Format::Mistral { trigger: Trigger::Token(5), special: true }
        );
        assert_eq!(Format::detect("{% if tools %}{% endif %}<|python_tag|>", |_| None), Format::Llama3);
        assert_eq!(Format::detect("{% if tools %}{% endif %}", |_| None), Format::Generic);
        let harmony = "<|start|>assistant<|channel|>final<|message|>";
        assert_eq!(Format::detect(harmony, |_| Some((3, true))), Format::Harmony { special: true });
        assert_eq!(Format::detect(harmony, |_| None), Format::Harmony { special: false });
    }
}
