//! Chat templates: the model's Jinja template (GGUF `tokenizer.chat_template`, or
//! `tokenizer_config.json`), a user override, or a built-in chosen by architecture for files that
//! carry none (see [`BuiltinTemplate`](super::BuiltinTemplate)). Rendered with minijinja configured like Hugging Face's
//! `apply_chat_template`: `trim_blocks`, `lstrip_blocks`, Python string methods (pycompat),
//! `raise_exception`, `strftime_now` and a Python-style `tojson`.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, Error as JinjaError, ErrorKind, Value};

use super::strftime::strftime_now;
use crate::{EngineError, Result};

/// ChatML, used when a model has no template of its own.
pub const CHATML_TEMPLATE: &str = include_str!("templates/chatml.jinja");
/// Gemma 3's template (Gemma GGUF files carry none).
pub const GEMMA3_TEMPLATE: &str = include_str!("templates/gemma3.jinja");

const NAME: &str = "chat";
/// Variables every render sets; extra variables may not shadow them.
const RESERVED: [&str; 4] = ["messages", "add_generation_prompt", "bos_token", "eos_token"];

/// One chat message as the template sees it (content already flattened to text). Assistant
/// tool calls and a tool result's call id are passed as HF templates expect them.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// `[{"id", "type": "function", "function": {"name", "arguments"}}]` (arguments as an object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The tool's name on a tool result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), ..Self::default() }
    }
}

/// A compiled chat template with the special-token strings it may print.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).finish_non_exhaustive()
    }
}

fn template_err(e: JinjaError) -> EngineError {
    // minijinja's alternate Display includes the template line the error points at.
    let mut msg = format!("{e:#}");
    if msg.is_empty() {
        msg = e.to_string();
    }
    EngineError::Template(msg)
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported now, not at the first request.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_owned()).map_err(template_err)?;
        Ok(Self { env, source: source.to_owned(), bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// The template source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation; `add_generation_prompt` appends the assistant's turn header.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Value::Null)
    }

    /// [`render`](Self::render) with extra template variables, like the keyword arguments of
    /// Hugging Face's `apply_chat_template(..., **kwargs)`: `extra` is `null` or a JSON object
    /// whose keys become top-level variables, e.g. `{"enable_thinking": false}` (Qwen3),
    /// `{"date_string": "26 Jul 2024"}` (Llama 3.1), or `{"tools": [...]}`. The variables the
    /// renderer sets itself (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`)
    /// cannot be overridden.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String> {
        let extra = match extra {
            serde_json::Value::Null => None,
            serde_json::Value::Object(map) => {
                if let Some(key) = map.keys().find(|k| RESERVED.contains(&k.as_str())) {
                    return Err(EngineError::Template(format!(
                        "the template variable {key:?} is set by the renderer and cannot be passed as an extra variable"
                    )));
                }
                Some(Value::from_serialize(map))
            }
            other => {
                return Err(EngineError::Template(format!(
                    "extra template variables must be a JSON object, got {other}"
                )))
            }
        };
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            ..extra.unwrap_or_default()
        };
        let template = self.env.get_template(NAME).map_err(template_err)?;
        template.render(ctx).map_err(template_err)
    }
}

/// `tojson` as Hugging Face defines it: Python's `json.dumps(x, ensure_ascii=False, indent=...)`,
/// so `{"a": 1, "b": [1, 2]}` keeps Python's separators and key order, and `<` stays `<`.
fn tojson(value: Value, indent: Option<usize>, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let indent = match kwargs.get::<Option<usize>>("indent")? {
        Some(n) => Some(n),
        None => indent,
    };
    // Accepted for compatibility; output is always ensure_ascii=False in insertion order.
    for ignored in ["ensure_ascii", "separators", "sort_keys"] {
        let _: Option<Value> = kwargs.get(ignored)?;
    }
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> std::result::Result<(), JinjaError> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    let json_err = |e: serde_json::Error| JinjaError::new(ErrorKind::BadSerialization, e.to_string());
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&serde_json::to_string(v).map_err(json_err)?),
        ValueKind::String => out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).map_err(json_err)?),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(&key.to_string()).map_err(json_err)?);
                out.push_str(": ");
                write_json(&v.get_item(key)?, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(v).map_err(json_err)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")]
    }

    #[test]
    fn chatml_renders_turns_and_the_generation_prompt() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        assert_eq!(
            t.render(&msgs(), true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!t.render(&msgs(), false).unwrap().ends_with("assistant\n"));
    }

    #[test]
    fn python_string_methods_and_special_tokens_are_available() {
        let src = "{{ bos_token }}{% for m in messages %}{{ m.role.upper() }}:{{ m.content.strip() }}|{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t.render(&[ChatMessage::new("user", "  padded  ")], false).unwrap();
        assert_eq!(out, "<s>USER:padded|</s>");
    }

    #[test]
    fn extra_variables_reach_the_template_and_may_not_override_the_fixed_ones() {
        let src = "{% if tools %}{{ tools | length }} tools|{% endif %}{{ enable_thinking }}|{{ messages | length }}|{{ messages[0].tool_calls[0].function.name }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let msg = ChatMessage {
            tool_calls: Some(
                serde_json::json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}]),
            ),
            ..ChatMessage::new("assistant", "")
        };
        let extra = serde_json::json!({"tools": [{"type": "function"}], "enable_thinking": false});
        assert_eq!(t.render_with(std::slice::from_ref(&msg), false, &extra).unwrap(), "1 tools|False|1|f");
        let shadow = serde_json::json!({"messages": []});
        assert!(t.render_with(std::slice::from_ref(&msg), false, &shadow).is_err());
        assert_eq!(t.render(&[msg], false).unwrap(), "|1|f");
    }

    #[test]
    fn raise_exception_becomes_a_template_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        match t.render(&msgs(), true) {
            Err(EngineError::Template(m)) => assert!(m.contains("roles must alternate"), "{m}"),
            other => panic!("expected a template error, got {other:?}"),
        }
    }

    #[test]
    fn a_syntax_error_fails_at_compile_time() {
        assert!(matches!(ChatTemplate::new("{% for m in messages %}", "", ""), Err(EngineError::Template(_))));
    }

    #[test]
    fn tojson_writes_python_json() {
        let t =
            ChatTemplate::new("{{ {'a': 1, 'b': ['<x>', true, none]} | tojson }}|{{ [1] | tojson(indent=2) }}", "", "")
                .unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "{\"a\": 1, \"b\": [\"<x>\", true, null]}|[\n  1\n]");
    }

    #[test]
    fn gemma3_template_maps_assistant_to_model_and_folds_the_system_prompt() {
        let t = ChatTemplate::new(GEMMA3_TEMPLATE, "<bos>", "<eos>").unwrap();
        let mut m = msgs();
        m.push(ChatMessage::new("assistant", "Hello!"));
        m.push(ChatMessage::new("user", "Bye"));
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }
}
