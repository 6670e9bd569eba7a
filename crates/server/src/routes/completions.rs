//! `POST /v1/completions`: legacy text completions for one or several prompts (strings or
//! token ids), JSON or streamed, with legacy-shaped logprobs and `echo`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use wick_engine::sampling::SamplingDefaults;
use wick_engine::{Event, TokenLogprob};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::extract::Json;
use crate::generation;
use crate::openai::common::{finish_reason_str, system_fingerprint, unix_now, Usage};
use crate::openai::completions::{Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptSpec};
use crate::sse::{self, ChunkWriter};
use crate::state::AppState;
use crate::structured;
use crate::validate;

/// Most prompts in one request.
const MAX_PROMPTS: usize = 64;

/// Token ids and text of each prompt.
fn prompts(spec: &PromptSpec, backend: &dyn Backend) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
    let from_text = |t: &str| backend.encode(t, true).map(|ids| (ids, t.to_owned())).map_err(super::text_error);
    let from_ids = |ids: &Vec<u32>| {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= backend.vocab_size()) {
            return Err(ApiError::invalid_value("prompt", format!("Token id {bad} is out of the vocabulary.")));
        }
        backend.decode(ids, false).map(|t| (ids.clone(), t)).map_err(super::text_error)
    };
    let out = match spec {
        PromptSpec::Text(t) => vec![from_text(t)?],
        PromptSpec::Texts(ts) => ts.iter().map(|t| from_text(t)).collect::<Result<_, _>>()?,
        PromptSpec::Tokens(ids) => vec![from_ids(ids)?],
        PromptSpec::TokenLists(lists) => lists.iter().map(from_ids).collect::<Result<_, _>>()?,
    };
    if out.is_empty() || out.len() > MAX_PROMPTS {
        return Err(ApiError::invalid_value("prompt", format!("Send between 1 and {MAX_PROMPTS} prompts.")));
    }
    if out.iter().any(|(ids, _)| ids.is_empty()) {
        return Err(ApiError::invalid_value("prompt", "A prompt must not be empty."));
    }
    Ok(out)
}

/// Creates a legacy text completion; with `stream: true`, `text_completion` chunks as
/// server-sent events ending with `data: [DONE]`.
#[utoipa::path(post, path = "/v1/completions", tag = "OpenAI", request_body = CompletionRequest,
    responses((status = 200, description = "The completion, or its chunks as server-sent events", content(
        (Completion = "application/json"),
        (crate::openapi::SseEvent = "text/event-stream"),
    ))))]
pub async fn handler(
    State(state): State<Arc<AppState>>,
    Json(req): Json<CompletionRequest>,
) -> Result<Response, ApiError> {
    if req.stream == Some(true) && state.models.needs_load(&req.model, crate::registry::ModelKind::Chat) {
        // What needs no model is checked before the stream starts (a 400, not an error event).
        validate::completion(&req, usize::MAX, &SamplingDefaults::default().resolved())?;
        structured::spec(req.response_format.as_ref(), req.grammar.as_deref())?;
        let (s, model) = (state.clone(), req.model.clone());
        let load = async move { s.chat(&model).await.map(drop) };
        return Ok(crate::load_wait::streaming(state.sse_keep_alive, load, move || respond(state, req)));
    }
    respond(state, req).await
}

async fn respond(state: Arc<AppState>, mut req: CompletionRequest) -> Result<Response, ApiError> {
    let ready = state.chat(&req.model).await?;
    let backend = ready.backend.as_ref();
    let mut v = validate::completion(&req, backend.vocab_size(), &ready.sampling)?;
    if let Some((spec, param)) = structured::spec(req.response_format.as_ref(), req.grammar.as_deref())? {
        v.params.grammar = Some(structured::compile(ready.backend.clone(), spec, None, param).await?);
    }
    let spec = std::mem::replace(&mut req.prompt, PromptSpec::Texts(Vec::new()));
    let text_bytes = match &spec {
        PromptSpec::Text(t) => t.len(),
        PromptSpec::Texts(ts) => ts.iter().map(String::len).sum(),
        PromptSpec::Tokens(_) | PromptSpec::TokenLists(_) => 0,
    };
    let longest = match &spec {
        PromptSpec::Text(t) => t.len(),
        PromptSpec::Texts(ts) => ts.iter().map(String::len).max().unwrap_or(0),
        PromptSpec::Tokens(_) | PromptSpec::TokenLists(_) => 0,
    };
    validate::fits_by_bytes(longest, backend.max_model_len(), ready.max_token_bytes, "prompt")?;
    let job_backend = ready.backend.clone();
    let prompts = state.cpu.run(text_bytes, move || prompts(&spec, job_backend.as_ref())).await??;
    let id = super::new_id("cmpl");
    tracing::info!(completion_id = %id, user = req.user.as_deref().unwrap_or(""), prompts = prompts.len(), n = v.n, stream = v.stream, "completion");
    let mut tracked = Vec::with_capacity(prompts.len());
    for (ids, _) in &prompts {
        let mut pv = v.clone();
        validate::resolve_max_tokens(&mut pv, ids.len(), backend.max_model_len(), "prompt")?;
        tracked.push(generation::submit(backend, &id, ids.clone(), pv.params, v.n, pv.cache_salt)?);
    }
    let total = prompts.len() * v.n;
    let echo: Vec<String> =
        if req.echo == Some(true) { prompts.iter().map(|(_, t)| t.clone()).collect() } else { Vec::new() };
    let events = generation::merge(tracked, v.n);
    let mut writer = CompletionChunks {
        id: id.clone(),
        created: unix_now(),
        model: req.model.clone(),
        include_usage: v.include_usage,
        with_logprobs: v.params.logprobs.is_some(),
        echo,
        n: v.n,
        offsets: vec![0; total],
    };
    if v.stream {
        return Ok(sse::respond(events, writer, state.sse_keep_alive));
    }
    let (choices, usage) = generation::collect(events, total).await?;
    let body = Completion {
        id,
        object: "text_completion",
        created: writer.created,
        model: req.model,
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let prefix = writer.echo.get(index / v.n).cloned().unwrap_or_default();
                writer.offsets[index] = prefix.len();
                let logprobs = writer.with_logprobs.then(|| writer.logprobs(index, &c.logprobs));
                CompletionChoice {
                    text: prefix + &c.text,
                    index,
                    logprobs,
                    finish_reason: c.finish.map(finish_reason_str),
                }
            })
            .collect(),
        usage: Some(Some(Usage::from(usage))),
        system_fingerprint: system_fingerprint(),
    };
    Ok(axum::Json(body).into_response())
}

/// Writes `text_completion` stream chunks.
pub struct CompletionChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    with_logprobs: bool,
    /// Prompt texts to echo (empty without `echo`).
    echo: Vec<String>,
    n: usize,
    /// Text offset of each choice so far, for legacy logprobs.
    offsets: Vec<usize>,
}

impl CompletionChunks {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        let c = Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
            system_fingerprint: system_fingerprint(),
        };
        serde_json::to_string(&c).unwrap_or_default()
    }

    /// Legacy logprobs of `tokens` for `choice`, advancing its text offset.
    fn logprobs(&mut self, choice: usize, tokens: &[TokenLogprob]) -> CompletionLogprobs {
        let mut lp = CompletionLogprobs::default();
        for t in tokens {
            lp.tokens.push(t.token.clone());
            lp.token_logprobs.push(t.logprob);
            lp.top_logprobs.push(t.top.iter().map(|a| (a.token.clone(), a.logprob)).collect::<HashMap<_, _>>());
            let offset = self.offsets.get(choice).copied().unwrap_or(0);
            lp.text_offset.push(offset);
            if let Some(o) = self.offsets.get_mut(choice) {
                *o += String::from_utf8_lossy(&t.bytes).len();
            }
        }
        lp
    }

    fn text(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<&'static str>,
    ) -> String {
        self.chunk(vec![CompletionChoice { text, index, logprobs, finish_reason: finish }], None)
    }
}

impl ChunkWriter for CompletionChunks {
    fn start(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for index in 0..self.offsets.len() {
            if let Some(p) = self.echo.get(index / self.n).cloned() {
                self.offsets[index] = p.len();
                out.push(self.text(index, p, None, None));
            }
        }
        out
    }

    fn event(&mut self, ev: Event) -> Vec<String> {
        match ev {
            Event::Token { choice, text, logprob, .. } => {
                let lp = match (logprob, self.with_logprobs) {
                    (Some(l), true) => Some(self.logprobs(choice, std::slice::from_ref(&l))),
                    _ => None,
                };
                if text.is_empty() && lp.is_none() {
                    return Vec::new();
                }
                vec![self.text(choice, text, lp, None)]
            }
            Event::Finished { choice, reason, text } => {
                vec![self.text(choice, text, None, Some(finish_reason_str(reason)))]
            }
            Event::Done { usage, .. } if self.include_usage => {
                vec![self.chunk(Vec::new(), Some(usage.into()))]
            }
            Event::Done { .. } | Event::Error(_) => Vec::new(),
        }
    }
}
