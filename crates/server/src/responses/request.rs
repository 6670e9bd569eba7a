//! A Responses request checked field by field and mapped onto the chat path: sampling through
//! `validate::chat`, tools (Responses shape: `{"type":"function","name",...}`) and
//! `tool_choice` through `tools::parse`, `text.format` through `structured::spec`, and
//! `reasoning.effort` through the chat template's kwargs. Every field is honoured or rejected
//! with a 400 naming it; parameters in errors use the Responses names.

use serde_json::{json, Map, Value};
use wick_engine::grammar::GrammarSpec;
use wick_engine::sampling::SamplingDefaults;

use crate::error::ApiError;
use crate::openai::chat::ChatCompletionRequest;
use crate::openai::responses::{CreateResponse, OutputItem, ReasoningConfig, ResponseObject, ResponseUsage};
use crate::tools::{self, ToolRequest};
use crate::validate::{self, Validated};

/// Most `metadata` pairs, and the longest key and value (OpenAI's limits).
const MAX_METADATA: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

/// What the response object echoes of the request.
#[derive(Debug, Clone)]
pub struct Echo {
    pub model: String,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub reasoning: ReasoningConfig,
    pub store: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub text: Value,
    pub tool_choice: Value,
    pub tools: Vec<Value>,
    pub user: Option<String>,
    pub metadata: Map<String, Value>,
}

impl Echo {
    /// The response object in `status` with `output` and `usage`.
    pub fn response(
        &self,
        id: &str,
        created_at: u64,
        status: &str,
        output: Vec<OutputItem>,
        usage: Option<ResponseUsage>,
    ) -> ResponseObject {
        let done = matches!(status, "completed" | "incomplete" | "failed");
        ResponseObject {
            id: id.to_owned(),
            object: "response".into(),
            created_at,
            status: status.to_owned(),
            completed_at: done.then(crate::openai::common::unix_now),
            error: None,
            incomplete_details: (status == "incomplete")
                .then(|| crate::openai::responses::IncompleteDetails { reason: "max_output_tokens".into() }),
            instructions: self.instructions.clone(),
            max_output_tokens: self.max_output_tokens,
            model: self.model.clone(),
            output,
            parallel_tool_calls: self.parallel_tool_calls,
            previous_response_id: self.previous_response_id.clone(),
            reasoning: self.reasoning.clone(),
            store: self.store,
            temperature: self.temperature,
            text: self.text.clone(),
            tool_choice: self.tool_choice.clone(),
            tools: self.tools.clone(),
            top_p: self.top_p,
            truncation: "disabled".into(),
            usage,
            user: self.user.clone(),
            metadata: self.metadata.clone(),
            background: false,
            service_tier: "default".into(),
        }
    }
}

/// A checked request, ready for `routes::chat::prepare`.
pub struct Plan {
    pub v: Validated,
    pub tool_req: Option<ToolRequest>,
    pub structured: Option<(GrammarSpec, &'static str)>,
    /// `reasoning.effort` as the template variable, when set.
    pub effort: Option<Value>,
    pub echo: Echo,
}

fn reject(param: &str, why: &str) -> ApiError {
    ApiError::unsupported(param, format!("`{param}` is not supported by this server: {why}"))
}

/// Fields wick does not implement: a 400 naming each, unless it carries a no-op value.
fn unsupported(req: &CreateResponse) -> Result<(), ApiError> {
    let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if req.background.as_ref().is_some_and(|v| v != &json!(false) && !v.is_null()) {
        return Err(reject("background", "responses run in the foreground only."));
    }
    if req.include.as_ref().is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()) && !v.is_null()) {
        return Err(reject("include", "no extra output data (logprobs, encrypted reasoning, sources) is available."));
    }
    if set(&req.max_tool_calls) {
        return Err(reject("max_tool_calls", "limit calls with `parallel_tool_calls` instead."));
    }
    if set(&req.prompt) {
        return Err(reject("prompt", "stored prompt templates are not available."));
    }
    if req.top_logprobs.as_ref().is_some_and(|v| !v.is_null() && v != &json!(0)) {
        return Err(reject("top_logprobs", "log probabilities are not available in the Responses API here."));
    }
    if set(&req.conversation) {
        return Err(reject("conversation", "conversations are not available; use `previous_response_id`."));
    }
    if set(&req.context_management) {
        return Err(reject("context_management", "context compaction is not available."));
    }
    if req.prompt_cache_retention.as_ref().is_some_and(|v| !v.is_null() && v != &json!("in_memory")) {
        return Err(reject("prompt_cache_retention", "the prefix cache lives in memory only (\"in_memory\")."));
    }
    if set(&req.moderation) {
        return Err(reject("moderation", "moderation is not available."));
    }
    if req.truncation.as_ref().is_some_and(|v| !v.is_null() && v != &json!("disabled")) {
        return Err(reject("truncation", "only \"disabled\" (a too-long input is a 400) is supported."));
    }
    if req.service_tier.as_ref().is_some_and(|v| !v.is_null() && !matches!(v.as_str(), Some("auto" | "default"))) {
        return Err(reject("service_tier", "only \"auto\" and \"default\" are accepted."));
    }
    match &req.stream_options {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) if req.stream == Some(true) => {
            if let Some(k) = o.keys().find(|k| k.as_str() != "include_obfuscation") {
                return Err(ApiError::invalid(Some(&format!("stream_options.{k}")), format!("Unknown field `{k}`.")));
            }
            if o.get("include_obfuscation").is_some_and(|v| v == &json!(true)) {
                return Err(reject("stream_options.include_obfuscation", "padding obfuscation is not implemented."));
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_value(
                "stream_options",
                "`stream_options` is an object, allowed only when `stream` is true.",
            ))
        }
    }
    Ok(())
}

fn metadata(v: Option<&Value>) -> Result<Map<String, Value>, ApiError> {
    let m = match v {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::invalid_value("metadata", "`metadata` must be an object of strings.")),
    };
    if m.len() > MAX_METADATA {
        return Err(ApiError::invalid_value("metadata", format!("`metadata` holds at most {MAX_METADATA} pairs.")));
    }
    for (k, v) in m {
        let ok = k.chars().count() <= MAX_METADATA_KEY
            && v.as_str().is_some_and(|s| s.chars().count() <= MAX_METADATA_VALUE);
        if !ok {
            return Err(ApiError::invalid_value(
                &format!("metadata.{k}"),
                format!("`metadata` keys are at most {MAX_METADATA_KEY} characters, values strings of at most {MAX_METADATA_VALUE}."),
            ));
        }
    }
    Ok(m.clone())
}

/// `tools` in the Responses shape, as chat-completions tools; hosted tools are rejected.
fn chat_tools(tools: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid_value("tools", "`tools` must be an array of function tools.")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let at = |f: &str| format!("tools[{i}]{f}");
        let obj = t.as_object().ok_or_else(|| ApiError::invalid_value(&at(""), "A tool must be an object."))?;
        match obj.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(ApiError::unsupported(
                    &at(".type"),
                    format!(
                        "Hosted tools such as {other:?} are not available here; only \"function\" tools are supported."
                    ),
                ))
            }
            None => return Err(ApiError::invalid_value(&at(".type"), "A tool needs a `type`.")),
        }
        if let Some(k) =
            obj.keys().find(|k| !["type", "name", "description", "parameters", "strict"].contains(&k.as_str()))
        {
            return Err(ApiError::invalid(
                Some(&at(&format!(".{k}"))),
                format!("Unknown field `{k}` in a function tool."),
            ));
        }
        let mut function = obj.clone();
        function.remove("type");
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Some(Value::Array(out)))
}

/// `tool_choice` in the Responses shape, as chat completions takes it.
fn chat_tool_choice(choice: Option<&Value>) -> Result<Option<Value>, ApiError> {
    match choice {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::String(_)) => Ok(Some(v.clone())),
        Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some("function") => match o.get("name").and_then(Value::as_str) {
                Some(name) => Ok(Some(json!({"type": "function", "function": {"name": name}}))),
                None => Err(ApiError::invalid_value("tool_choice.name", "A function `tool_choice` needs a `name`.")),
            },
            Some(other) => Err(ApiError::unsupported(
                "tool_choice.type",
                format!("`tool_choice` of type {other:?} is not supported; use none, auto, required or a function."),
            )),
            None => Err(ApiError::invalid_value("tool_choice.type", "`tool_choice` needs a `type`.")),
        },
        Some(_) => Err(ApiError::invalid_value("tool_choice", "`tool_choice` must be a string or an object.")),
    }
}

/// `text.format` as a chat `response_format` (its `json_schema` fields are nested there).
fn chat_response_format(text: Option<&Value>) -> Result<(Option<Value>, Value), ApiError> {
    let obj = match text {
        None | Some(Value::Null) => return Ok((None, json!({"format": {"type": "text"}}))),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(ApiError::invalid_value("text", "`text` must be an object.")),
    };
    if let Some(k) = obj.keys().find(|k| !["format", "verbosity"].contains(&k.as_str())) {
        return Err(ApiError::invalid(Some(&format!("text.{k}")), format!("Unknown field `{k}` in `text`.")));
    }
    if obj.get("verbosity").is_some_and(|v| !v.is_null()) {
        return Err(reject("text.verbosity", "verbosity control is not implemented."));
    }
    let format = match obj.get("format") {
        None | Some(Value::Null) => return Ok((None, json!({"format": {"type": "text"}}))),
        Some(f @ Value::Object(_)) => f.clone(),
        Some(_) => return Err(ApiError::invalid_value("text.format", "`text.format` must be an object.")),
    };
    let echo = json!({"format": format});
    let rf = match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let mut inner = format.as_object().cloned().unwrap_or_default();
            inner.remove("type");
            json!({"type": "json_schema", "json_schema": inner})
        }
        _ => format,
    };
    Ok((Some(rf), echo))
}

/// `response_format.json_schema.name` → `text.format.name`, `tools[0].function.name` →
/// `tools[0].name`, `max_completion_tokens` → `max_output_tokens`.
fn rename(mut e: ApiError) -> ApiError {
    e.param = e.param.map(|p| {
        let p = p.replace("response_format.json_schema", "text.format").replace("response_format", "text.format");
        let p = p.replace(".function.", ".").replace(".function", "");
        if p == "max_completion_tokens" {
            "max_output_tokens".into()
        } else {
            p
        }
    });
    e
}

/// Checks `req` and maps it onto the chat path.
pub fn plan(
    req: &CreateResponse,
    vocab_size: usize,
    defaults: &SamplingDefaults,
    store_available: bool,
) -> Result<Plan, ApiError> {
    unsupported(req)?;
    let store = req.store.unwrap_or(store_available);
    if store && !store_available {
        return Err(reject("store", "this server runs without a response store (--responses-store off)."));
    }
    let instructions = match &req.instructions {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid_value("instructions", "`instructions` must be a string.")),
    };
    let metadata = metadata(req.metadata.as_ref())?;
    let tools = chat_tools(req.tools.as_ref())?;
    let tool_choice = chat_tool_choice(req.tool_choice.as_ref())?;
    let (response_format, text_echo) = chat_response_format(req.text.as_ref())?;
    let (effort, summary) = match &req.reasoning {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| !["effort", "summary", "generate_summary"].contains(&k.as_str())) {
                return Err(ApiError::invalid(Some(&format!("reasoning.{k}")), format!("Unknown field `{k}`.")));
            }
            for key in ["summary", "generate_summary"] {
                match o.get(key) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) if ["auto", "concise", "detailed"].contains(&s.as_str()) => {}
                    Some(_) => {
                        return Err(ApiError::invalid_value(
                            &format!("reasoning.{key}"),
                            format!("`reasoning.{key}` must be auto, concise or detailed."),
                        ))
                    }
                }
            }
            let summary = o.get("summary").or(o.get("generate_summary")).and_then(Value::as_str).map(str::to_owned);
            (o.get("effort").filter(|v| !v.is_null()).cloned(), summary)
        }
        Some(_) => return Err(ApiError::invalid_value("reasoning", "`reasoning` must be an object.")),
    };
    let mut chat = json!({"model": req.model, "messages": [{"role": "user", "content": ""}]});
    let c = chat.as_object_mut().ok_or_else(|| ApiError::internal("chat request"))?;
    let fields = [
        ("temperature", req.temperature.map(|t| json!(t))),
        ("top_p", req.top_p.map(|t| json!(t))),
        ("max_completion_tokens", req.max_output_tokens.map(|m| json!(m))),
        ("stream", req.stream.map(|s| json!(s))),
        ("tools", tools),
        ("tool_choice", tool_choice),
        ("parallel_tool_calls", req.parallel_tool_calls.clone()),
        ("response_format", response_format),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            c.insert(k.into(), v);
        }
    }
    let chat: ChatCompletionRequest = crate::extract::parse(chat.to_string().as_bytes()).map_err(rename)?;
    let v = validate::chat(&chat, vocab_size, defaults).map_err(rename)?;
    let tool_req = tools::parse(chat.tools.as_ref(), chat.tool_choice.as_ref(), chat.parallel_tool_calls.as_ref())
        .map_err(rename)?;
    let structured = crate::structured::spec(chat.response_format.as_ref(), None).map_err(rename)?;
    let structured = structured.map(|(s, _)| (s, "text.format"));
    let echo = Echo {
        model: req.model.clone(),
        instructions,
        max_output_tokens: req.max_output_tokens,
        parallel_tool_calls: tool_req.as_ref().is_some_and(|t| t.parallel),
        previous_response_id: req.previous_response_id.clone(),
        reasoning: ReasoningConfig { effort: effort.as_ref().and_then(Value::as_str).map(str::to_owned), summary },
        store,
        temperature: f64::from(v.params.temperature),
        top_p: f64::from(v.params.top_p),
        text: text_echo,
        tool_choice: req.tool_choice.clone().filter(|v| !v.is_null()).unwrap_or(json!("auto")),
        tools: req.tools.as_ref().and_then(Value::as_array).cloned().unwrap_or_default(),
        user: req.user.clone(),
        metadata,
    };
    Ok(Plan { v, tool_req, structured, effort, echo })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse;

    fn req(extra: Value) -> CreateResponse {
        let mut body = json!({"model": "m", "input": "hi"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        parse(body.to_string().as_bytes()).expect("parses")
    }

    fn err(extra: Value) -> ApiError {
        match plan(&req(extra.clone()), 100, &SamplingDefaults::default(), true) {
            Err(e) => e,
            Ok(_) => panic!("accepted: {extra}"),
        }
    }

    #[test]
    fn honoured_fields_map_onto_the_chat_path() {
        let p = plan(
            &req(json!({"temperature": 0.5, "top_p": 0.9, "max_output_tokens": 9, "stream": true,
                         "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}, "strict": true}],
                         "tool_choice": {"type": "function", "name": "get"}, "metadata": {"k": "v"},
                         "reasoning": {"summary": "auto"}, "store": false, "instructions": "be brief"})),
            100,
            &SamplingDefaults::default(),
            true,
        )
        .expect("valid");
        assert_eq!((p.v.params.temperature, p.v.params.top_p, p.v.max_tokens, p.v.stream), (0.5, 0.9, Some(9), true));
        let t = p.tool_req.expect("tools");
        assert_eq!(t.choice, tools::Choice::Named("get".into()));
        assert_eq!(t.tools[0].name, "get");
        assert!(!p.echo.store);
        assert_eq!(p.echo.metadata["k"], "v");
        assert_eq!(p.echo.instructions.as_deref(), Some("be brief"));
        let p = plan(
            &req(json!({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}})),
            100,
            &SamplingDefaults::default(),
            true,
        )
        .expect("valid");
        assert_eq!(p.structured.expect("grammar").0, GrammarSpec::JsonSchema(json!({"type": "object"})));
        assert!(p.echo.store, "store defaults to true when a store is configured");
    }

    #[test]
    fn unsupported_and_bad_fields_are_400s_naming_them() {
        for (extra, param) in [
            (json!({"background": true}), "background"),
            (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
            (json!({"tools": [{"type": "file_search", "vector_store_ids": []}]}), "tools[0].type"),
            (json!({"tools": [{"type": "function", "name": "a b"}]}), "tools[0].name"),
            (json!({"include": ["reasoning.encrypted_content"]}), "include"),
            (json!({"max_tool_calls": 2}), "max_tool_calls"),
            (json!({"truncation": "auto"}), "truncation"),
            (json!({"temperature": 3}), "temperature"),
            (json!({"max_output_tokens": 0}), "max_output_tokens"),
            (json!({"text": {"format": {"type": "json_schema"}}}), "text.format.name"),
            (json!({"text": {"verbosity": "low"}}), "text.verbosity"),
            (json!({"tool_choice": {"type": "web_search_preview"}}), "tool_choice.type"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"reasoning": {"summary": "long"}}), "reasoning.summary"),
            (json!({"metadata": {"k": 1}}), "metadata.k"),
            (json!({"prompt": {"id": "p"}}), "prompt"),
            (json!({"conversation": "c"}), "conversation"),
            (json!({"stream_options": {"include_obfuscation": false}}), "stream_options"),
            (json!({"instructions": 3}), "instructions"),
        ] {
            let e = err(extra.clone());
            assert_eq!(e.status, 400, "{extra}");
            assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        }
        let e = plan(&req(json!({"store": true})), 100, &SamplingDefaults::default(), false).err().expect("no store");
        assert_eq!(e.param.as_deref(), Some("store"));
        for ok in [json!({"background": false}), json!({"include": []}), json!({"truncation": "disabled"})] {
            assert!(plan(&req(ok.clone()), 100, &SamplingDefaults::default(), true).is_ok(), "{ok}");
        }
    }
}
