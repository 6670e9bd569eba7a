//! `POST /v1/chat/completions`: validate, render the chat template (with the tools when the
//! template knows them), compile the grammar (structured output or tool calls), submit, then
//! answer with one `chat.completion` or a stream of `chat.completion.chunk`s whose text goes
//! through the same per-choice parser (`output`) either way.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use wick_engine::grammar::GrammarSpec;
use wick_engine::sampling::SamplingDefaults;
use wick_engine::text::ChatMessage;
use wick_engine::{Event, FinishReason};

use crate::error::ApiError;
use crate::extract::Json;
use crate::generation;
use crate::openai::chat::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChoiceLogprobs, ChunkChoice, Delta,
    FunctionCall, FunctionDelta, ResponseMessage, TokenLogprob, ToolCall, ToolCallDelta,
};
use crate::openai::common::{finish_reason_str, system_fingerprint, unix_now, Usage};
use crate::output::{self, ChoiceParser, OutputFormat, Part};
use crate::reasoning;
use crate::sse::{self, ChunkWriter};
use crate::state::AppState;
use crate::state::Ready;
use crate::structured;
use crate::tools::{self, generic, Format, ParsedCall, ToolRequest};
use crate::validate;

/// `finish_reason`: `tool_calls` when a choice that stopped made calls.
fn finish_str(reason: FinishReason, made_calls: bool) -> &'static str {
    match reason {
        FinishReason::Stop if made_calls => "tool_calls",
        r => finish_reason_str(r),
    }
}

fn tool_call(call: ParsedCall) -> ToolCall {
    ToolCall {
        id: tools::new_call_id(),
        kind: "function",
        function: FunctionCall { name: call.name, arguments: call.arguments },
    }
}

/// `reasoning_effort` values OpenAI defines.
const EFFORTS: &[&str] = &["none", "minimal", "low", "medium", "high"];

/// Extra template variables: `chat_template_kwargs`, and `reasoning_effort` for templates that
/// read it (elsewhere it is a 400: it would do nothing). `effort_param` names the effort field
/// in errors (`reasoning_effort` here, `reasoning.effort` in the Responses API).
pub fn template_kwargs(
    kwargs: Option<&Value>,
    effort: Option<&Value>,
    effort_param: &str,
    template: &str,
) -> Result<Map<String, Value>, ApiError> {
    let mut extra = match kwargs {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(ApiError::invalid_value("chat_template_kwargs", "`chat_template_kwargs` must be an object."))
        }
    };
    match effort {
        None | Some(Value::Null) => {}
        Some(Value::String(e)) if EFFORTS.contains(&e.as_str()) => {
            if !template.contains("reasoning_effort") {
                return Err(ApiError::unsupported(
                    effort_param,
                    "This model's chat template has no reasoning effort setting.",
                ));
            }
            extra.insert("reasoning_effort".into(), Value::String(e.clone()));
        }
        Some(_) => {
            return Err(ApiError::invalid_value(
                effort_param,
                format!("`{effort_param}` must be one of {}.", EFFORTS.join(", ")),
            ))
        }
    }
    Ok(extra)
}

/// Harmony answers end at `<|return|>` or `<|call|>`: special end-of-generation tokens in
/// gpt-oss's vocabulary (the engine's end-of-generation set holds them), but text in one that
/// spells them (the tiny fixture), where they become stop strings (their text is then left out
/// of the answer, which the harmony parser allows).
pub(crate) fn harmony_stops(backend: &dyn crate::backend::Backend, stop: &mut Vec<String>) {
    for marker in tools::harmony::STOPS {
        let special = backend.single_token(marker).is_some_and(|(_, special)| special);
        if !special && !stop.iter().any(|s| s == marker) {
            stop.push(marker.to_owned());
        }
    }
}

/// What goes into the prompt: the messages, the bytes of their text (the CPU pool's budget),
/// the tools, the structured-output grammar and the extra template variables.
pub struct Prompt<'a> {
    pub messages: Vec<ChatMessage>,
    pub text_bytes: usize,
    pub tool_req: Option<&'a ToolRequest>,
    pub structured: Option<(GrammarSpec, &'static str)>,
    pub extra: Map<String, Value>,
}

/// A request ready for the engine: the prompt and how to read the model's text.
pub struct Prepared {
    pub prompt_ids: Vec<u32>,
    pub format: OutputFormat,
}

/// Renders the messages through the chat template (with the tools when the template knows
/// them, else the generic tool envelope), compiles the grammar (tool calls or structured
/// output) into `v.params`, adds harmony's stop strings, tokenizes on the CPU pool, tells
/// whether the model thinks in tags, and settles `max_tokens` against the prompt
/// (`prompt_param` names the prompt in context errors). Shared by chat completions and the
/// Responses API.
pub async fn prepare(
    state: &AppState,
    ready: &Ready,
    v: &mut validate::Validated,
    prompt: Prompt<'_>,
    prompt_param: &str,
) -> Result<Prepared, ApiError> {
    let Prompt { mut messages, text_bytes, tool_req, structured, mut extra } = prompt;
    let backend = ready.backend.as_ref();
    let template = backend.chat_template_source();
    let format = match tool_req {
        None => None,
        Some(t) => {
            if let Some((_, param)) = &structured {
                return Err(ApiError::unsupported(param, format!("`{param}` cannot be combined with `tools`.")));
            }
            let format = Format::detect(&template, |tag| backend.single_token(tag));
            if !format.template_renders_tools() {
                messages = generic::messages(t, messages);
            } else if t.choice != tools::Choice::None {
                extra.insert("tools".into(), t.template_tools());
            }
            match format.grammar(t) {
                Some((spec, trigger)) => {
                    v.params.grammar = Some(structured::compile(ready.backend.clone(), spec, trigger, "tools").await?);
                    Some(format)
                }
                // A model with its own tool format told not to call tools answers in plain text.
                None => None,
            }
        }
    };
    if let Some((spec, param)) = structured {
        v.params.grammar = Some(structured::compile(ready.backend.clone(), spec, None, param).await?);
    }
    let harmony = tools::harmony::is_harmony(&template);
    if harmony {
        harmony_stops(backend, &mut v.params.stop);
    }
    let job_backend = ready.backend.clone();
    let extra = Value::Object(extra);
    let prompt_ids = state
        .cpu
        .run(text_bytes, move || job_backend.encode_chat(&messages, &extra))
        .await?
        .map_err(super::text_error)?;
    let thinks = !harmony && (template.contains(reasoning::OPEN) || backend.single_token(reasoning::OPEN).is_some());
    let inside = thinks && {
        let tail = &prompt_ids[prompt_ids.len().saturating_sub(4)..];
        backend.decode(tail, false).is_ok_and(|t| t.trim_end().ends_with(reasoning::OPEN))
    };
    let format = OutputFormat { tools: format, reasoning: thinks.then_some(inside), harmony };
    validate::resolve_max_tokens(v, prompt_ids.len(), backend.max_model_len(), prompt_param)?;
    Ok(Prepared { prompt_ids, format })
}

/// Creates a chat completion; with `stream: true`, a stream of `chat.completion.chunk`s as
/// server-sent events (`data: {...}` lines, an error event on failure, `data: [DONE]` last).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "OpenAI", request_body = ChatCompletionRequest,
    responses((status = 200, description = "The completion, or its chunks as server-sent events", content(
        (ChatCompletion = "application/json"),
        (crate::openapi::SseEvent = "text/event-stream"),
    ))))]
pub async fn handler(
    State(state): State<Arc<AppState>>,
    Json(req): Json<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    if req.stream == Some(true) && state.models.needs_load(&req.model, crate::registry::ModelKind::Chat) {
        precheck(&req)?;
        let (s, model) = (state.clone(), req.model.clone());
        let load = async move { s.chat(&model).await.map(drop) };
        return Ok(crate::load_wait::streaming(state.sse_keep_alive, load, move || respond(state, req)));
    }
    respond(state, req).await
}

/// What can be checked without the model, checked before a stream that waits for its model
/// starts: a bad request is then a 400, not an error event after a 200. What needs the model
/// (token ids against its vocabulary, the prompt against its context) is checked after the load.
fn precheck(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    validate::chat(req, usize::MAX, &SamplingDefaults::default().resolved())?;
    tools::parse(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls.as_ref())?;
    structured::spec(req.response_format.as_ref(), req.grammar.as_deref())?;
    crate::messages::messages(&req.messages)?;
    Ok(())
}

async fn respond(state: Arc<AppState>, req: ChatCompletionRequest) -> Result<Response, ApiError> {
    let ready = state.chat(&req.model).await?;
    let backend = ready.backend.as_ref();
    let mut v = validate::chat(&req, backend.vocab_size(), &ready.sampling)?;
    let text_bytes: usize = req.messages.iter().map(|m| m.text_len()).sum();
    validate::fits_by_bytes(text_bytes, backend.max_model_len(), ready.max_token_bytes, "messages")?;
    let tool_req = tools::parse(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls.as_ref())?;
    let structured = structured::spec(req.response_format.as_ref(), req.grammar.as_deref())?;
    let messages = crate::messages::messages(&req.messages)?;
    let extra = template_kwargs(
        req.chat_template_kwargs.as_ref(),
        req.reasoning_effort.as_ref(),
        "reasoning_effort",
        &backend.chat_template_source(),
    )?;
    let prompt = Prompt { messages, text_bytes, tool_req: tool_req.as_ref(), structured, extra };
    let Prepared { prompt_ids, format } = prepare(&state, &ready, &mut v, prompt, "messages").await?;
    let id = super::new_id("chatcmpl");
    tracing::info!(completion_id = %id, user = req.user.as_deref().unwrap_or(""), prompt_tokens = prompt_ids.len(), n = v.n, stream = v.stream, tools = ?format, "chat completion");
    let with_logprobs = v.params.logprobs.is_some();
    let tracked = generation::submit(backend, &id, prompt_ids, v.params, v.n, v.cache_salt)?;
    let events = generation::merge(vec![tracked], v.n);
    let created = unix_now();
    if v.stream {
        let writer = ChatChunks {
            id,
            created,
            model: req.model,
            fingerprint: system_fingerprint(),
            include_usage: v.include_usage,
            with_logprobs,
            choices: (0..v.n).map(|_| StreamChoice::new(&format)).collect(),
        };
        return Ok(sse::respond(events, writer, state.sse_keep_alive));
    }
    let (choices, usage) = generation::collect(events, v.n).await?;
    let body = ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model: req.model,
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let m = output::parse_all(&format, &c.text);
                let made_calls = !m.calls.is_empty();
                Choice {
                    index,
                    message: ResponseMessage {
                        role: "assistant",
                        content: m.content,
                        refusal: None,
                        tool_calls: made_calls.then(|| m.calls.into_iter().map(tool_call).collect()),
                        reasoning_content: m.reasoning.clone(),
                        reasoning: m.reasoning,
                    },
                    logprobs: with_logprobs.then(|| ChoiceLogprobs {
                        content: c.logprobs.iter().map(TokenLogprob::from).collect(),
                        refusal: None,
                    }),
                    finish_reason: c.finish.map(|r| finish_str(r, made_calls)),
                }
            })
            .collect(),
        usage: usage.into(),
        system_fingerprint: system_fingerprint(),
    };
    Ok(axum::Json(body).into_response())
}

/// The stream state of one choice.
pub struct StreamChoice {
    role_sent: bool,
    parser: ChoiceParser,
    calls: usize,
}

impl StreamChoice {
    fn new(format: &OutputFormat) -> Self {
        Self { role_sent: false, parser: ChoiceParser::new(format), calls: 0 }
    }
}

/// Writes `chat.completion.chunk`s: a role delta first per choice, content and tool-call
/// deltas, a finish chunk per choice, and with `include_usage` a last chunk with empty
/// `choices` and the usage.
pub struct ChatChunks {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub fingerprint: String,
    pub include_usage: bool,
    pub with_logprobs: bool,
    pub choices: Vec<StreamChoice>,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> String {
        let c = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        };
        serde_json::to_string(&c).unwrap_or_default()
    }

    fn one(
        &self,
        index: usize,
        delta: Delta,
        logprobs: Option<ChoiceLogprobs>,
        finish: Option<&'static str>,
    ) -> String {
        self.chunk(vec![ChunkChoice { index, delta, logprobs, finish_reason: finish }], None)
    }

    fn role_once(&mut self, choice: usize, out: &mut Vec<String>) {
        let Some(c) = self.choices.get_mut(choice) else { return };
        if !c.role_sent {
            c.role_sent = true;
            let delta = Delta { role: Some("assistant"), content: Some(String::new()), ..Delta::default() };
            out.push(self.one(choice, delta, None, None));
        }
    }

    /// The chunks of `parts` for `choice`; `lp` rides on the first (or on an empty delta).
    fn parts(&mut self, choice: usize, parts: Vec<Part>, mut lp: Option<ChoiceLogprobs>, out: &mut Vec<String>) {
        for part in parts {
            match part {
                Part::Reasoning(text) => {
                    let delta =
                        Delta { reasoning_content: Some(text.clone()), reasoning: Some(text), ..Delta::default() };
                    out.push(self.one(choice, delta, lp.take(), None));
                }
                Part::Content(text) => {
                    let delta = Delta { content: Some(text), ..Delta::default() };
                    out.push(self.one(choice, delta, lp.take(), None));
                }
                Part::Call(call) => {
                    let Some(c) = self.choices.get_mut(choice) else { continue };
                    let index = c.calls;
                    c.calls += 1;
                    let head = ToolCallDelta {
                        index,
                        id: Some(tools::new_call_id()),
                        kind: Some("function"),
                        function: FunctionDelta { name: Some(call.name), arguments: Some(String::new()) },
                    };
                    let args = ToolCallDelta {
                        index,
                        id: None,
                        kind: None,
                        function: FunctionDelta { name: None, arguments: Some(call.arguments) },
                    };
                    for d in [head, args] {
                        let delta = Delta { tool_calls: Some(vec![d]), ..Delta::default() };
                        out.push(self.one(choice, delta, lp.take(), None));
                    }
                }
            }
        }
        if lp.is_some() {
            out.push(self.one(choice, Delta { content: Some(String::new()), ..Delta::default() }, lp, None));
        }
    }
}

impl ChunkWriter for ChatChunks {
    fn event(&mut self, ev: Event) -> Vec<String> {
        let mut out = Vec::new();
        match ev {
            Event::Token { choice, text, logprob, .. } => {
                self.role_once(choice, &mut out);
                let lp = match (&logprob, self.with_logprobs) {
                    (Some(l), true) => Some(ChoiceLogprobs { content: vec![TokenLogprob::from(l)], refusal: None }),
                    _ => None,
                };
                let parts = self.choices.get_mut(choice).map(|c| c.parser.push(&text)).unwrap_or_default();
                self.parts(choice, parts, lp, &mut out);
            }
            Event::Finished { choice, reason, text } => {
                self.role_once(choice, &mut out);
                let parts = match self.choices.get_mut(choice) {
                    Some(c) => {
                        let mut p = c.parser.push(&text);
                        p.extend(c.parser.finish());
                        p
                    }
                    None => Vec::new(),
                };
                self.parts(choice, parts, None, &mut out);
                let made_calls = self.choices.get(choice).is_some_and(|c| c.calls > 0);
                out.push(self.one(choice, Delta::default(), None, Some(finish_str(reason, made_calls))));
            }
            Event::Done { usage, .. } => {
                if self.include_usage {
                    out.push(self.chunk(Vec::new(), Some(usage.into())));
                }
            }
            Event::Error(_) => {}
        }
        out
    }
}
