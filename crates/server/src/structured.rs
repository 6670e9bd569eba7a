//! Structured output: `response_format` (`text`, `json_object`, `json_schema`) and wick's
//! `grammar` extension (a grammar in llguidance's Lark-like syntax) become an engine grammar.
//! Every malformed field is a 400 naming it; a schema llguidance cannot compile is a 400 with
//! `param: "response_format"` (or `"grammar"`) and llguidance's message.

use std::sync::Arc;

use serde_json::Value;
use wick_engine::grammar::{CompiledGrammar, GrammarError, GrammarSpec, Trigger};

use crate::backend::Backend;
use crate::error::ApiError;

/// Longest `json_schema.name` OpenAI accepts.
const MAX_NAME: usize = 64;

/// What the request asks the output to match, if anything, and the parameter to blame.
pub fn spec(
    response_format: Option<&Value>,
    grammar: Option<&str>,
) -> Result<Option<(GrammarSpec, &'static str)>, ApiError> {
    let from_format = match response_format {
        None | Some(Value::Null) => None,
        Some(v) => response_format_spec(v)?,
    };
    match (from_format, grammar) {
        (Some(_), Some(_)) => Err(ApiError::invalid_value(
            "grammar",
            "`grammar` and a `response_format` other than text cannot be combined.",
        )),
        (Some(s), None) => Ok(Some((s, "response_format"))),
        (None, Some(g)) if g.trim().is_empty() => {
            Err(ApiError::invalid_value("grammar", "`grammar` must be a non-empty Lark grammar."))
        }
        (None, Some(g)) => Ok(Some((GrammarSpec::Lark(g.to_owned()), "grammar"))),
        (None, None) => Ok(None),
    }
}

fn response_format_spec(v: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    let obj = v.as_object().ok_or_else(|| {
        ApiError::invalid_value("response_format", "`response_format` must be an object with a `type`.")
    })?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid_value("response_format.type", "`response_format.type` must be a string."))?;
    let allowed: &[&str] = match kind {
        "text" | "json_object" => &["type"],
        "json_schema" => &["type", "json_schema"],
        other => {
            return Err(ApiError::invalid_value(
                "response_format.type",
                format!("Unknown `response_format.type` {other:?}; expected text, json_object or json_schema."),
            ))
        }
    };
    if let Some(extra) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            Some(&format!("response_format.{extra}")),
            format!("Unknown field `{extra}` in a `{kind}` response_format."),
        ));
    }
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(GrammarSpec::JsonObject)),
        _ => json_schema_spec(obj.get("json_schema")).map(Some),
    }
}

fn json_schema_spec(v: Option<&Value>) -> Result<GrammarSpec, ApiError> {
    let param = "response_format.json_schema";
    let obj = v.and_then(Value::as_object).ok_or_else(|| {
        ApiError::invalid_value(param, "A `json_schema` response_format needs a `json_schema` object.")
    })?;
    if let Some(extra) = obj.keys().find(|k| !["name", "schema", "strict", "description"].contains(&k.as_str())) {
        return Err(ApiError::invalid(
            Some(&format!("{param}.{extra}")),
            format!("Unknown field `{extra}` in `json_schema`."),
        ));
    }
    match obj.get("name") {
        Some(Value::String(n))
            if !n.is_empty()
                && n.len() <= MAX_NAME
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {}
        _ => {
            return Err(ApiError::invalid_value(
                &format!("{param}.name"),
                format!("`json_schema.name` is required: 1 to {MAX_NAME} characters of a-z, A-Z, 0-9, _ and -."),
            ))
        }
    }
    if !matches!(obj.get("strict"), None | Some(Value::Null | Value::Bool(_))) {
        return Err(ApiError::invalid_value(&format!("{param}.strict"), "`json_schema.strict` must be a boolean."));
    }
    if !matches!(obj.get("description"), None | Some(Value::Null | Value::String(_))) {
        return Err(ApiError::invalid_value(
            &format!("{param}.description"),
            "`json_schema.description` must be a string.",
        ));
    }
    // Constrained whether or not `strict` is set: every answer matches the schema.
    match obj.get("schema") {
        None | Some(Value::Null) => Ok(GrammarSpec::JsonSchema(Value::Object(Default::default()))),
        Some(s @ Value::Object(_)) => Ok(GrammarSpec::JsonSchema(s.clone())),
        Some(_) => Err(ApiError::invalid_value(&format!("{param}.schema"), "`json_schema.schema` must be an object.")),
    }
}

/// A grammar error as the client sees it, blaming `param`.
pub fn grammar_error(e: GrammarError, param: &str) -> ApiError {
    match e {
        GrammarError::Invalid(m) => ApiError::invalid_value(param, format!("Invalid `{param}`: {m}")),
        GrammarError::Setup(m) => ApiError::unsupported(param, m),
    }
}

/// Compiles `spec` off the async workers (a large schema takes milliseconds).
pub async fn compile(
    backend: Arc<dyn Backend>,
    spec: GrammarSpec,
    trigger: Option<Trigger>,
    param: &'static str,
) -> Result<Arc<CompiledGrammar>, ApiError> {
    tokio::task::spawn_blocking(move || backend.compile_grammar(&spec, trigger))
        .await
        .map_err(|e| ApiError::internal(format!("grammar compilation failed: {e}")))?
        .map_err(|e| grammar_error(e, param))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(rf: Value) -> ApiError {
        spec(Some(&rf), None).expect_err("rejected")
    }

    #[test]
    fn formats_map_to_grammars() {
        assert_eq!(spec(Some(&json!({"type": "text"})), None).expect("ok"), None);
        assert_eq!(spec(None, None).expect("ok"), None);
        let (s, p) = spec(Some(&json!({"type": "json_object"})), None).expect("ok").expect("some");
        assert_eq!((s, p), (GrammarSpec::JsonObject, "response_format"));
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let rf = json!({"type": "json_schema", "json_schema": {"name": "x-1", "schema": schema, "strict": true}});
        assert_eq!(spec(Some(&rf), None).expect("ok").expect("some").0, GrammarSpec::JsonSchema(schema));
        let (g, p) = spec(None, Some("start: \"a\"")).expect("ok").expect("some");
        assert_eq!((g, p), (GrammarSpec::Lark("start: \"a\"".into()), "grammar"));
    }

    #[test]
    fn malformed_formats_name_their_field() {
        for (rf, param) in [
            (json!("json"), "response_format"),
            (json!({"type": "yaml"}), "response_format.type"),
            (json!({"type": "json_object", "schema": {}}), "response_format.schema"),
            (json!({"type": "json_schema"}), "response_format.json_schema"),
            (json!({"type": "json_schema", "json_schema": {"schema": {}}}), "response_format.json_schema.name"),
            (json!({"type": "json_schema", "json_schema": {"name": "a b"}}), "response_format.json_schema.name"),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a", "strict": 1}}),
                "response_format.json_schema.strict",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a", "schema": []}}),
                "response_format.json_schema.schema",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a", "extra": 1}}),
                "response_format.json_schema.extra",
            ),
        ] {
            let e = err(rf.clone());
            assert_eq!(e.status, 400, "{rf}");
            assert_eq!(e.param.as_deref(), Some(param), "{rf}");
        }
        let both = spec(Some(&json!({"type": "json_object"})), Some("start: \"a\"")).expect_err("both");
        assert_eq!(both.param.as_deref(), Some("grammar"));
    }

    #[test]
    fn compile_errors_are_400s_with_llguidance_message() {
        let e = grammar_error(GrammarError::Invalid("Unknown type: frob".into()), "response_format");
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("response_format")));
        assert!(e.message.contains("Unknown type: frob"));
        let e = grammar_error(GrammarError::Setup("no eos".into()), "grammar");
        assert_eq!((e.status.as_u16(), e.code), (400, Some("unsupported_parameter")));
    }
}
