//! Request validation: every field is either turned into engine parameters or rejected with a
//! 400 naming it. Ranges follow OpenAI's (and vLLM's for the extensions).

use std::collections::HashMap;

use wick_engine::sampling::SamplingDefaults;
use wick_engine::SamplingParams;

use crate::error::ApiError;
use crate::openai::chat::ChatCompletionRequest;
use crate::openai::common::{StopSpec, StreamOptions};
use crate::openai::completions::CompletionRequest;

/// Most choices per request.
pub const MAX_N: usize = 128;
/// Most stop strings per request.
pub const MAX_STOP: usize = 16;
/// Most alternatives per token in logprobs.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A validated request: engine parameters (max_tokens still to be resolved against the prompt).
#[derive(Debug, Clone)]
pub struct Validated {
    pub params: SamplingParams,
    /// The client's limit, or none to use the rest of the context.
    pub max_tokens: Option<usize>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Prefix-cache isolation key (`cache_salt`).
    pub cache_salt: Option<String>,
}

/// Fields both endpoints share.
struct Common<'a> {
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<i64>,
    stop: Option<&'a StopSpec>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<&'a HashMap<String, f64>>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    repetition_penalty: Option<f64>,
    ignore_eos: Option<bool>,
    stop_token_ids: Option<&'a Vec<u32>>,
    stream: Option<bool>,
    stream_options: Option<&'a StreamOptions>,
}

fn range(param: &str, v: Option<f64>, lo: f64, hi: f64, default: f64) -> Result<f32, ApiError> {
    match v {
        None => Ok(default as f32),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x as f32),
        Some(x) => Err(ApiError::invalid_value(param, format!("`{param}` must be between {lo} and {hi}, got {x}."))),
    }
}

fn common(c: Common<'_>, vocab_size: usize, d: &SamplingDefaults) -> Result<Validated, ApiError> {
    let d = d.resolved();
    let dflt = |v: Option<f32>| f64::from(v.unwrap_or(1.0));
    let mut p = SamplingParams {
        temperature: range("temperature", c.temperature, 0.0, 2.0, dflt(d.temperature))?,
        top_p: range("top_p", c.top_p, 0.0, 1.0, dflt(d.top_p))?,
        ..SamplingParams::default()
    };
    if p.top_p <= 0.0 {
        return Err(ApiError::invalid_value("top_p", "`top_p` must be greater than 0 and at most 1."));
    }
    p.presence_penalty = range("presence_penalty", c.presence_penalty, -2.0, 2.0, 0.0)?;
    p.frequency_penalty = range("frequency_penalty", c.frequency_penalty, -2.0, 2.0, 0.0)?;
    p.min_p = range("min_p", c.min_p, 0.0, 1.0, f64::from(d.min_p.unwrap_or(0.0)))?;
    p.repetition_penalty = range("repetition_penalty", c.repetition_penalty, 0.0, 10.0, dflt(d.repetition_penalty))?;
    if p.repetition_penalty <= 0.0 {
        return Err(ApiError::invalid_value("repetition_penalty", "`repetition_penalty` must be greater than 0."));
    }
    p.top_k = match c.top_k {
        None => d.top_k.unwrap_or(0),
        Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid_value(
                "top_k",
                format!("`top_k` must be -1 (disabled) or positive, got {k}."),
            ))
        }
    };
    p.seed = c.seed.map(|s| s as u64);
    let n = match c.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => return Err(ApiError::invalid_value("n", format!("`n` must be between 1 and {MAX_N}, got {n}."))),
    };
    if let Some(stop) = c.stop {
        let stops = stop.clone().into_vec();
        if stops.len() > MAX_STOP {
            return Err(ApiError::invalid_value("stop", format!("At most {MAX_STOP} stop sequences are allowed.")));
        }
        if stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid_value("stop", "Stop sequences must not be empty."));
        }
        p.stop = stops;
    }
    if let Some(bias) = c.logit_bias {
        for (k, v) in bias {
            let id: u32 = k.parse().map_err(|_| {
                ApiError::invalid_value("logit_bias", format!("`logit_bias` keys must be token ids, got {k:?}."))
            })?;
            if id as usize >= vocab_size {
                return Err(ApiError::invalid_value(
                    "logit_bias",
                    format!("Token id {id} in `logit_bias` is out of the vocabulary (size {vocab_size})."),
                ));
            }
            if !(-100.0..=100.0).contains(v) {
                return Err(ApiError::invalid_value(
                    "logit_bias",
                    format!("`logit_bias` values must be between -100 and 100, got {v}."),
                ));
            }
            p.logit_bias.insert(id, *v as f32);
        }
    }
    if let Some(ids) = c.stop_token_ids {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(ApiError::invalid_value(
                "stop_token_ids",
                format!("Token id {bad} is out of the vocabulary (size {vocab_size})."),
            ));
        }
        p.stop_token_ids = ids.clone();
    }
    p.ignore_eos = c.ignore_eos.unwrap_or(false);
    let stream = c.stream.unwrap_or(false);
    let mut include_usage = false;
    if let Some(opts) = c.stream_options {
        if !stream {
            return Err(ApiError::invalid_value(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true.",
            ));
        }
        include_usage = opts.include_usage.unwrap_or(false);
        if opts.include_obfuscation == Some(true) {
            return Err(ApiError::unsupported(
                "stream_options.include_obfuscation",
                "`include_obfuscation` is not supported.",
            ));
        }
    }
    Ok(Validated { params: p, max_tokens: None, n, stream, include_usage, cache_salt: None })
}

fn cache_salt(salt: &Option<String>) -> Result<Option<String>, ApiError> {
    match salt {
        Some(s) if s.is_empty() => {
            Err(ApiError::invalid_value("cache_salt", "`cache_salt` must be a non-empty string when given."))
        }
        s => Ok(s.clone()),
    }
}

fn max_tokens(param: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(m) if m >= 1 => Ok(Some(m as usize)),
        Some(m) => Err(ApiError::invalid_value(param, format!("`{param}` must be at least 1, got {m}."))),
    }
}

/// Validates a chat request's parameters.
/// `defaults` fill the sampling fields the request leaves out.
pub fn chat(
    req: &ChatCompletionRequest,
    vocab_size: usize,
    defaults: &SamplingDefaults,
) -> Result<Validated, ApiError> {
    crate::unsupported::check(req)?;
    // Prefix caching is automatic, so a cache key is a valid no-op hint; the safety id is
    // logged like `user`.
    if req.messages.is_empty() {
        return Err(ApiError::invalid_value("messages", "`messages` must contain at least one message."));
    }
    let mut v = common(
        Common {
            temperature: req.temperature,
            top_p: req.top_p,
            n: req.n,
            stop: req.stop.as_ref(),
            seed: req.seed,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            logit_bias: req.logit_bias.as_ref(),
            top_k: req.top_k,
            min_p: req.min_p,
            repetition_penalty: req.repetition_penalty,
            ignore_eos: req.ignore_eos,
            stop_token_ids: req.stop_token_ids.as_ref(),
            stream: req.stream,
            stream_options: req.stream_options.as_ref(),
        },
        vocab_size,
        defaults,
    )?;
    v.cache_salt = cache_salt(&req.cache_salt)?;
    v.max_tokens = match req.max_completion_tokens {
        Some(_) => max_tokens("max_completion_tokens", req.max_completion_tokens)?,
        None => max_tokens("max_tokens", req.max_tokens)?,
    };
    let logprobs = req.logprobs.unwrap_or(false);
    v.params.logprobs = match (logprobs, req.top_logprobs) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid_value("top_logprobs", "`top_logprobs` requires `logprobs` to be true."))
        }
        (true, None) => Some(0),
        (true, Some(k)) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Some(k as usize),
        (true, Some(k)) => {
            return Err(ApiError::invalid_value(
                "top_logprobs",
                format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
            ))
        }
    };
    Ok(v)
}

/// Validates a legacy completions request's parameters.
pub fn completion(
    req: &CompletionRequest,
    vocab_size: usize,
    defaults: &SamplingDefaults,
) -> Result<Validated, ApiError> {
    if req.suffix.as_ref().is_some_and(|s| s.as_str() != Some("")) {
        return Err(ApiError::unsupported("suffix", "`suffix` (fill-in-the-middle) is not supported."));
    }
    let mut v = common(
        Common {
            temperature: req.temperature,
            top_p: req.top_p,
            n: req.n,
            stop: req.stop.as_ref(),
            seed: req.seed,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            logit_bias: req.logit_bias.as_ref(),
            top_k: req.top_k,
            min_p: req.min_p,
            repetition_penalty: req.repetition_penalty,
            ignore_eos: req.ignore_eos,
            stop_token_ids: req.stop_token_ids.as_ref(),
            stream: req.stream,
            stream_options: req.stream_options.as_ref(),
        },
        vocab_size,
        defaults,
    )?;
    if let Some(b) = req.best_of {
        if b != v.n as i64 {
            return Err(ApiError::unsupported("best_of", "`best_of` is supported only when equal to `n`."));
        }
    }
    v.cache_salt = cache_salt(&req.cache_salt)?;
    // OpenAI's default for legacy completions is 16 tokens.
    v.max_tokens = Some(max_tokens("max_tokens", req.max_tokens)?.unwrap_or(16));
    v.params.logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid_value(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
            ))
        }
    };
    if req.echo == Some(true) && v.params.logprobs.is_some() {
        return Err(ApiError::unsupported(
            "echo",
            "`echo` together with `logprobs` (prompt logprobs) is not supported.",
        ));
    }
    Ok(v)
}

/// Refuses, before tokenizing, text that cannot fit the context whatever its tokens: no token
/// is longer than `max_token_bytes`, so `bytes` of text are at least `bytes / max_token_bytes`
/// tokens (halved again, as a margin for normalizers that shrink text, such as NFKC).
pub fn fits_by_bytes(bytes: usize, max_model_len: usize, max_token_bytes: usize, param: &str) -> Result<(), ApiError> {
    let min_tokens = bytes / (2 * max_token_bytes.max(1));
    if min_tokens > max_model_len {
        let mut e = ApiError::context_length(format!(
            "This model's maximum context length is {max_model_len} tokens. However, your {param} ({bytes} bytes of text) are at least {min_tokens} tokens. Please reduce the length of the {param}."
        ));
        e.param = Some(param.to_owned());
        return Err(e);
    }
    Ok(())
}

/// The longest token of a vocabulary, in bytes (at least 1): the bound [`fits_by_bytes`] uses.
pub fn longest_token(backend: &dyn crate::backend::Backend) -> usize {
    (0..backend.vocab_size() as u32).map(|id| backend.token_text(id).1.len()).max().unwrap_or(1).max(1)
}

/// Settles `max_tokens` against the prompt length and the context: an explicit limit that does
/// not fit is a `context_length_exceeded` 400; no limit means the rest of the context.
pub fn resolve_max_tokens(
    v: &mut Validated,
    prompt_len: usize,
    max_model_len: usize,
    param: &str,
) -> Result<(), ApiError> {
    let room = max_model_len.saturating_sub(prompt_len);
    let wanted = v.max_tokens.unwrap_or(room);
    if wanted == 0 || prompt_len + wanted > max_model_len {
        let mut e = ApiError::context_length(format!(
            "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({prompt_len} in the {param}, {wanted} in the completion). Please reduce the length of the {param} or the completion.",
            prompt_len + wanted.max(1)
        ));
        e.param = Some(param.to_owned());
        return Err(e);
    }
    v.params.max_tokens = wanted;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse;

    fn chat_req(extra: &str) -> ChatCompletionRequest {
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
        parse(body.as_bytes()).expect("parses")
    }

    fn chat_err(extra: &str) -> ApiError {
        chat(&chat_req(extra), 100, &SamplingDefaults::default()).expect_err("should be rejected")
    }

    #[test]
    fn left_out_fields_take_the_defaults_and_explicit_ones_win() {
        let d = SamplingDefaults { temperature: Some(0.8), top_k: Some(40), min_p: Some(0.05), ..Default::default() };
        let v = chat(&chat_req(""), 100, &d).expect("valid");
        let p = &v.params;
        assert_eq!((p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty), (0.8, 1.0, 40, 0.05, 1.0));
        let v = chat(&chat_req(r#","temperature":0,"top_k":-1,"min_p":0"#), 100, &d).expect("valid");
        assert_eq!((v.params.temperature, v.params.top_k, v.params.min_p), (0.0, 0, 0.0));
    }

    #[test]
    fn honoured_fields_reach_sampling_params() {
        let v = chat(
            &chat_req(r#","temperature":0.5,"top_p":0.9,"n":3,"stop":["a","b"],"seed":7,"presence_penalty":1,"frequency_penalty":-1,"logit_bias":{"5":-100},"logprobs":true,"top_logprobs":2,"max_completion_tokens":9,"top_k":4,"min_p":0.1,"repetition_penalty":1.2,"stream":true,"stream_options":{"include_usage":true}"#),
            100,
            &SamplingDefaults::default(),
        )
        .expect("valid");
        assert_eq!(v.n, 3);
        assert_eq!(v.max_tokens, Some(9));
        assert!(v.stream && v.include_usage);
        let p = &v.params;
        assert_eq!((p.temperature, p.top_p, p.top_k, p.min_p), (0.5, 0.9, 4, 0.1));
        assert_eq!((p.presence_penalty, p.frequency_penalty, p.repetition_penalty), (1.0, -1.0, 1.2));
        assert_eq!(p.seed, Some(7));
        assert_eq!(p.stop, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(p.logit_bias.get(&5), Some(&-100.0));
        assert_eq!(p.logprobs, Some(2));
    }

    #[test]
    fn out_of_range_values_name_their_param() {
        for (extra, param) in [
            (r#","temperature":2.5"#, "temperature"),
            (r#","top_p":0"#, "top_p"),
            (r#","n":0"#, "n"),
            (r#","max_tokens":0"#, "max_tokens"),
            (r#","presence_penalty":3"#, "presence_penalty"),
            (r#","logit_bias":{"100":1}"#, "logit_bias"),
            (r#","logit_bias":{"x":1}"#, "logit_bias"),
            (r#","top_logprobs":2"#, "top_logprobs"),
            (r#","logprobs":true,"top_logprobs":21"#, "top_logprobs"),
            (r#","stream_options":{"include_usage":true}"#, "stream_options"),
            (r#","stop":[""]"#, "stop"),
            (r#","top_k":-2"#, "top_k"),
        ] {
            let e = chat_err(extra);
            assert_eq!(e.status, 400, "{extra}");
            assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        }
    }

    #[test]
    fn max_tokens_resolution() {
        let mut v = chat(&chat_req(""), 100, &SamplingDefaults::default()).expect("valid");
        resolve_max_tokens(&mut v, 10, 64, "messages").expect("fits");
        assert_eq!(v.params.max_tokens, 54);
        v.max_tokens = Some(60);
        let e = resolve_max_tokens(&mut v, 10, 64, "messages").expect_err("too long");
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(e.message.contains("64") && e.message.contains("70"));
    }
}
