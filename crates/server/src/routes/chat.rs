//! `POST /v1/chat/completions`: validate, render the chat template, submit, then answer with
//! one `chat.completion` or a stream of `chat.completion.chunk`s.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use wick_engine::Event;

use crate::error::ApiError;
use crate::extract::Json;
use crate::generation;
use crate::openai::chat::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChoiceLogprobs, ChunkChoice, Delta,
    ResponseMessage, TokenLogprob,
};
use crate::openai::common::{finish_reason_str, system_fingerprint, unix_now, Usage};
use crate::sse::{self, ChunkWriter};
use crate::state::AppState;
use crate::structured;
use crate::validate;

pub async fn handler(
    State(state): State<Arc<AppState>>,
    Json(req): Json<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    ready.check_model(&req.model)?;
    let backend = ready.backend.as_ref();
    let mut v = validate::chat(&req, backend.vocab_size())?;
    if let Some((spec, param)) = structured::spec(req.response_format.as_ref(), req.grammar.as_deref())? {
        v.params.grammar = Some(structured::compile(ready.backend.clone(), spec, None, param).await?);
    }
    let messages = crate::messages::messages(&req.messages)?;
    let prompt_ids = backend.encode_chat(&messages).map_err(super::text_error)?;
    validate::resolve_max_tokens(&mut v, prompt_ids.len(), backend.max_model_len(), "messages")?;
    let id = super::new_id("chatcmpl");
    tracing::info!(completion_id = %id, user = req.user.as_deref().unwrap_or(""), prompt_tokens = prompt_ids.len(), n = v.n, stream = v.stream, "chat completion");
    let with_logprobs = v.params.logprobs.is_some();
    let tracked = generation::submit(backend, &id, prompt_ids, v.params, v.n)?;
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
            role_sent: vec![false; v.n],
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
            .map(|(index, c)| Choice {
                index,
                message: ResponseMessage { role: "assistant", content: c.text, refusal: None },
                logprobs: with_logprobs.then(|| ChoiceLogprobs {
                    content: c.logprobs.iter().map(TokenLogprob::from).collect(),
                    refusal: None,
                }),
                finish_reason: c.finish.map(finish_reason_str),
            })
            .collect(),
        usage: usage.into(),
        system_fingerprint: system_fingerprint(),
    };
    Ok(axum::Json(body).into_response())
}

/// Writes `chat.completion.chunk`s: a role delta first per choice, content deltas, a finish
/// chunk per choice, and with `include_usage` a last chunk with empty `choices` and the usage.
pub struct ChatChunks {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub fingerprint: String,
    pub include_usage: bool,
    pub with_logprobs: bool,
    pub role_sent: Vec<bool>,
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
        if let Some(sent) = self.role_sent.get_mut(choice) {
            if !*sent {
                *sent = true;
                out.push(self.one(choice, Delta { role: Some("assistant"), content: Some(String::new()) }, None, None));
            }
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
                if !text.is_empty() || lp.is_some() {
                    out.push(self.one(choice, Delta { role: None, content: Some(text) }, lp, None));
                }
            }
            Event::Finished { choice, reason, text } => {
                self.role_once(choice, &mut out);
                if !text.is_empty() {
                    out.push(self.one(choice, Delta { role: None, content: Some(text) }, None, None));
                }
                out.push(self.one(choice, Delta::default(), None, Some(finish_reason_str(reason))));
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
