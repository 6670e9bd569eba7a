//! OpenAI chat-completions fields wick knows but does not implement (audio, storage, ...): each
//! is rejected with a 400 naming it, unless it carries a no-op value such as `store: false`.

use serde_json::Value;

use crate::error::ApiError;
use crate::openai::chat::ChatCompletionRequest;

/// Rejects a known-but-unsupported field unless its value is a no-op.
fn reject_unless(param: &str, value: &Option<Value>, noop: impl Fn(&Value) -> bool, why: &str) -> Result<(), ApiError> {
    match value {
        Some(v) if !noop(v) => {
            Err(ApiError::unsupported(param, format!("`{param}` is not supported by this server: {why}")))
        }
        _ => Ok(()),
    }
}

/// Rejects every unsupported field of `req` that is set to something other than a no-op.
pub fn check(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    reject_unless("functions", &req.functions, |_| false, "function calling is not supported.")?;
    reject_unless(
        "function_call",
        &req.function_call,
        |v| v.as_str() == Some("none"),
        "function calling is not supported.",
    )?;
    reject_unless("audio", &req.audio, |_| false, "this model produces text only.")?;
    reject_unless(
        "modalities",
        &req.modalities,
        |v| v.as_array().is_some_and(|a| a.iter().all(|m| m.as_str() == Some("text"))),
        "this model produces text only.",
    )?;
    reject_unless("prediction", &req.prediction, |_| false, "predicted outputs are not implemented.")?;
    reject_unless("store", &req.store, |v| v.as_bool() == Some(false), "completions are not stored.")?;
    reject_unless("metadata", &req.metadata, |_| false, "completions are not stored, so metadata has no use.")?;
    reject_unless(
        "service_tier",
        &req.service_tier,
        |v| matches!(v.as_str(), Some("auto" | "default")),
        "only \"auto\" and \"default\" are accepted.",
    )?;
    reject_unless("web_search_options", &req.web_search_options, |_| false, "web search is not available.")?;
    reject_unless("verbosity", &req.verbosity, |_| false, "verbosity control is not implemented.")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse;

    fn chat_err(extra: &str) -> ApiError {
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
        check(&parse(body.as_bytes()).expect("parses")).expect_err("should be rejected")
    }

    fn chat_ok(extra: &str) -> bool {
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
        check(&parse(body.as_bytes()).expect("parses")).is_ok()
    }

    #[test]
    fn unsupported_fields_are_rejected_by_name_but_noops_pass() {
        for (extra, param) in [(r#","audio":{}"#, "audio"), (r#","store":true"#, "store")] {
            assert_eq!(chat_err(extra).param.as_deref(), Some(param), "{extra}");
        }
        for extra in [r#","tool_choice":"none""#, r#","store":false"#, r#","user":"u1""#] {
            assert!(chat_ok(extra), "{extra}");
        }
    }
}
