//! Submitting to the engine and reading its events: latency metrics per request, merging the
//! event streams of several prompts into one, and collecting a non-streamed result.
//!
//! Whoever holds the returned stream owns the engine receivers: dropping it (a client gone,
//! a handler future dropped) cancels the requests in the engine.

use std::time::{Duration, Instant};

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;
use wick_engine::{Event, FinishReason, GenerateRequest, SamplingParams, TokenLogprob, Usage};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::metrics;

/// An engine receiver that records latency metrics as events pass.
pub struct Tracked {
    rx: UnboundedReceiver<Event>,
    arrival: Instant,
    first_token: bool,
    last_token: Vec<Option<Instant>>,
}

impl Tracked {
    pub fn new(rx: UnboundedReceiver<Event>, arrival: Instant, n: usize) -> Self {
        Self { rx, arrival, first_token: false, last_token: vec![None; n] }
    }

    pub async fn recv(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await?;
        let now = Instant::now();
        match &ev {
            Event::Token { choice, .. } => {
                if !self.first_token {
                    self.first_token = true;
                    metrics::record_ttft(now - self.arrival);
                }
                if let Some(slot) = self.last_token.get_mut(*choice) {
                    if let Some(prev) = slot.replace(now) {
                        metrics::record_itl(now - prev);
                    }
                }
            }
            Event::Finished { reason, .. } => {
                metrics::record_finished(crate::openai::common::finish_reason_str(*reason))
            }
            Event::Done { queue_time, .. } => {
                metrics::record_e2e(now - self.arrival);
                metrics::record_queue(*queue_time);
            }
            Event::Error(_) => {}
        }
        Some(ev)
    }
}

/// Submits one prompt with `n` choices.
pub fn submit(
    backend: &dyn Backend,
    id: &str,
    prompt_ids: Vec<u32>,
    params: SamplingParams,
    n: usize,
    cache_salt: Option<String>,
) -> Result<Tracked, ApiError> {
    let mut req = GenerateRequest::new(id, prompt_ids, params);
    req.n = n;
    req.cache_salt = cache_salt;
    let arrival = req.arrival;
    let rx = backend.submit(req)?;
    Ok(Tracked::new(rx, arrival, n))
}

/// Merges the events of several prompts (each with `n` choices) into one stream: choice
/// indices become `prompt * n + choice`, the `Done`s are summed into one final `Done`, and an
/// `Error` (or a receiver closed early) ends the stream.
pub fn merge(requests: Vec<Tracked>, n: usize) -> BoxStream<'static, Event> {
    let count = requests.len();
    let streams = requests.into_iter().enumerate().map(|(i, t)| {
        stream::unfold(Some(t), move |state| async move {
            let mut t = state?;
            match t.recv().await {
                Some(ev) => {
                    let last = matches!(ev, Event::Done { .. } | Event::Error(_));
                    Some(((i, ev), if last { None } else { Some(t) }))
                }
                None => Some(((i, Event::Error("the engine dropped the request".into())), None)),
            }
        })
        .boxed()
    });
    struct Acc {
        remaining: usize,
        usage: Usage,
        queue: Duration,
        first: Option<Duration>,
        failed: bool,
    }
    let acc = Acc { remaining: count, usage: Usage::default(), queue: Duration::ZERO, first: None, failed: false };
    stream::select_all(streams)
        .scan(acc, move |acc, (i, ev)| {
            if acc.failed {
                return futures::future::ready(None);
            }
            let out = match ev {
                Event::Token { choice, token_id, text, logprob } => {
                    Some(Event::Token { choice: i * n + choice, token_id, text, logprob })
                }
                Event::Finished { choice, reason, text } => {
                    Some(Event::Finished { choice: i * n + choice, reason, text })
                }
                Event::Done { usage, queue_time, first_token_time } => {
                    acc.usage.prompt_tokens += usage.prompt_tokens;
                    acc.usage.completion_tokens += usage.completion_tokens;
                    acc.usage.cached_tokens += usage.cached_tokens;
                    acc.queue = acc.queue.max(queue_time);
                    acc.first = match (acc.first, first_token_time) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    acc.remaining -= 1;
                    (acc.remaining == 0).then_some(Event::Done {
                        usage: acc.usage,
                        queue_time: acc.queue,
                        first_token_time: acc.first,
                    })
                }
                Event::Error(m) => {
                    acc.failed = true;
                    Some(Event::Error(m))
                }
            };
            futures::future::ready(Some(out))
        })
        .filter_map(futures::future::ready)
        .boxed()
}

/// One choice of a finished, non-streamed request.
#[derive(Debug, Clone, Default)]
pub struct ChoiceResult {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
}

/// Reads `events` to the end. An engine error is a 500 (the SDKs may retry it); the shutdown
/// deadline a 503.
pub async fn collect(
    mut events: BoxStream<'static, Event>,
    choices: usize,
) -> Result<(Vec<ChoiceResult>, Usage), ApiError> {
    let mut out = vec![ChoiceResult::default(); choices];
    loop {
        let ev = tokio::select! {
            biased;
            ev = events.next() => ev,
            () = crate::shutdown::streams_ended() => return Err(ApiError::shutting_down()),
        };
        let Some(ev) = ev else { break };
        match ev {
            Event::Token { choice, text, logprob, .. } => {
                if let Some(c) = out.get_mut(choice) {
                    c.text.push_str(&text);
                    c.logprobs.extend(logprob);
                }
            }
            Event::Finished { choice, reason, text } => {
                if let Some(c) = out.get_mut(choice) {
                    c.text.push_str(&text);
                    c.finish = Some(reason);
                }
            }
            Event::Done { usage, .. } => return Ok((out, usage)),
            Event::Error(m) => return Err(ApiError::internal(format!("generation failed: {m}"))),
        }
    }
    Err(ApiError::internal("generation ended without a result"))
}
