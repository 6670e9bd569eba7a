//! From one row of logits to events: sample, append, decide whether the choice ends
//! (end-of-generation or stop token, stop string, `max_tokens`, context limit), detokenize with
//! stop strings held back, and send `Token` / `Finished` / `Done`.

use std::time::Instant;

use super::worker::{MaskResult, Worker};
use crate::grammar::Advance;
use crate::request::{Event, FinishReason, TokenLogprob, TopLogprob, Usage};
use crate::sampling::Sampled;
use crate::sequence::SeqId;
use crate::text::{StopOutcome, TextProcessor};

impl Worker {
    /// Samples the next token of sequence `id` from its logits row (under its grammar's `mask`
    /// when it has an active one) and emits its events.
    pub(super) fn on_logits(&mut self, id: SeqId, row: &[f32], mask: Option<MaskResult>) {
        let Some(seq) = self.sched.get_mut(id) else { return };
        let key = seq.gen.request;
        let Some(req) = self.requests.get_mut(&key) else { return };
        let text = &*self.text;
        // A grammar that cannot go on ends the choice: only an end-of-generation token is left.
        let mut grammar_end = false;
        let mask = match mask {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                tracing::warn!(request = %req.id, "grammar failed: {e}");
                grammar_end = true;
                Some(crate::sampling::TokenMask::from_ids(text.eog_token_ids()))
            }
            None => None,
        };
        let sampled = {
            let (prompt, output) = seq.tokens.split_at(seq.prompt_len);
            seq.gen.sampler.sample_masked(row, mask.as_ref(), prompt, output)
        };
        let token = sampled.token_id;
        seq.tokens.push(token);
        if req.first_token_at.is_none() {
            req.first_token_at = Some(Instant::now());
            req.cached_tokens = seq.cached_prompt_tokens.unwrap_or(0);
        }
        req.completion_tokens += 1;
        let logprob = to_token_logprob(text, &sampled);

        let params = &req.params;
        let ends_generation = grammar_end
            || (!params.ignore_eos && text.eog_token_ids().contains(&token))
            || params.stop_token_ids.contains(&token);
        let mut finish = None;
        let mut delta = String::new();
        let mut stopped_by_string = false;
        if ends_generation {
            finish = Some(FinishReason::Stop);
        } else {
            let piece = seq.gen.detokenizer.push(text, token);
            let grammar = seq.gen.constraint.as_mut().map(|c| c.advance(token, &piece));
            match seq.gen.stop.push(&piece) {
                StopOutcome::Continue(t) => delta = t,
                StopOutcome::Stopped(t) => {
                    delta = t;
                    finish = Some(FinishReason::Stop);
                    stopped_by_string = true;
                }
            }
            match grammar {
                Some(Advance::Complete) => {
                    finish.get_or_insert(FinishReason::Stop);
                }
                Some(Advance::Failed(e)) => {
                    tracing::warn!(request = %req.id, "grammar rejected token {token}: {e}");
                    finish.get_or_insert(FinishReason::Stop);
                }
                Some(Advance::Continue) | None => {}
            }
        }
        if finish.is_none()
            && (seq.tokens.len() - seq.prompt_len >= params.max_tokens || seq.tokens.len() >= self.max_model_len)
        {
            finish = Some(FinishReason::Length);
        }
        let choice = seq.gen.choice;
        let _ = req.events.send(Event::Token { choice, token_id: token, text: delta, logprob });
        let Some(mut reason) = finish else { return };

        // Release held-back text unless a stop string cut the output.
        let mut tail = String::new();
        if !stopped_by_string {
            let rest = seq.gen.detokenizer.flush(text);
            match seq.gen.stop.push(&rest) {
                StopOutcome::Continue(t) => {
                    tail = t;
                    tail.push_str(&seq.gen.stop.finish());
                }
                StopOutcome::Stopped(t) => {
                    tail = t;
                    reason = FinishReason::Stop;
                }
            }
        }
        let _ = req.events.send(Event::Finished { choice, reason, text: tail });
        req.remaining -= 1;
        self.sched.remove(id);
        if req.remaining == 0 {
            if let Some(req) = self.requests.remove(&key) {
                let usage = Usage {
                    prompt_tokens: req.prompt_len,
                    completion_tokens: req.completion_tokens,
                    cached_tokens: req.cached_tokens,
                };
                let queue_time = req.scheduled_at.unwrap_or(req.arrival).saturating_duration_since(req.arrival);
                let first_token_time = req.first_token_at.map(|t| t.saturating_duration_since(req.arrival));
                let _ = req.events.send(Event::Done { usage, queue_time, first_token_time });
            }
        }
    }
}

/// The sampler's `(logprob, top)` as the wire-facing [`TokenLogprob`].
fn to_token_logprob(text: &TextProcessor, sampled: &Sampled) -> Option<TokenLogprob> {
    let (logprob, top) = sampled.logprobs.as_ref()?;
    let (token, bytes) = text.token_text(sampled.token_id);
    let top = top
        .iter()
        .map(|&(token_id, logprob)| {
            let (token, bytes) = text.token_text(token_id);
            TopLogprob { token_id, token, bytes, logprob }
        })
        .collect();
    Some(TokenLogprob { token_id: sampled.token_id, token, bytes, logprob: *logprob, top })
}
