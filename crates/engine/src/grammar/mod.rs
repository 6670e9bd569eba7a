//! Grammar-constrained decoding with llguidance: JSON objects, JSON schemas and Lark grammars
//! (llguidance's Lark-like syntax, which may embed `%json { ... }`), optionally lazy (free text
//! until a trigger token or string, then constrained: tool calls in `auto` mode).
//!
//! [`GrammarCompiler`] is built once per model from wick's own token byte strings (see `vocab`)
//! and compiles a [`GrammarSpec`] into a [`CompiledGrammar`]; compiling is where an invalid or
//! unsupported schema is reported (with llguidance's message), before anything is queued. Each
//! choice of a request then gets its own [`Constraint`] (a cheap clone of the compiled parser)
//! whose mask the engine computes for the sequences that have one, and only for those.
//!
//! JSON is generated with Python's separators (`", "` and `": "`) and no other whitespace
//! unless the schema's `x-guidance` says otherwise: flexible whitespace lets a small model
//! loop on newlines until `max_tokens`.

mod constraint;
mod vocab;

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::{json, Value};
use toktrie::{InferenceCapabilities, TokEnv};

pub use constraint::{Advance, Constraint};

use crate::text::TextProcessor;

/// Why a grammar could not be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GrammarError {
    /// The schema or grammar is invalid or unsupported (llguidance's message).
    #[error("{0}")]
    Invalid(String),
    /// The grammar engine could not be built for this model's vocabulary.
    #[error("structured output is unavailable for this model: {0}")]
    Setup(String),
}

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object.
    JsonObject,
    /// A JSON schema.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark-like syntax.
    Lark(String),
}

/// Where a lazy grammar starts: right after this token, or after this text at a token boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Token(u32),
    Text(String),
}

/// A grammar compiled for one model, shared (`Arc`) by the choices of a request.
pub struct CompiledGrammar {
    parser: TokenParser,
    trigger: Option<Trigger>,
}

impl std::fmt::Debug for CompiledGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledGrammar").field("trigger", &self.trigger).finish_non_exhaustive()
    }
}

impl CompiledGrammar {
    /// A fresh matcher at the grammar's start.
    fn matcher(&self) -> Matcher {
        Matcher::new(Ok(self.parser.clone()))
    }

    pub fn trigger(&self) -> Option<&Trigger> {
        self.trigger.as_ref()
    }
}

/// The JSON whitespace wick asks for unless a schema's `x-guidance` sets its own.
pub fn default_json_options() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// `schema` with wick's JSON options filled in where its `x-guidance` leaves them unset.
pub fn with_json_options(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        let opts = map.entry("x-guidance").or_insert_with(|| json!({}));
        if let (Value::Object(o), Value::Object(d)) = (opts, default_json_options()) {
            for (k, v) in d {
                o.entry(k).or_insert(v);
            }
        }
    }
    schema
}

/// Compiles grammars against one model's vocabulary.
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// Builds the token trie and llguidance's parser factory for `text`'s vocabulary.
    pub fn new(text: &TextProcessor) -> Result<Self, GrammarError> {
        let words = vocab::trie_words(text);
        let env: TokEnv = Arc::new(vocab::tok_env(&words, text.eog_token_ids())?);
        let slices = llguidance::earley::SlicedBiasComputer::general_slices();
        let mut factory = ParserFactory::new(&env, InferenceCapabilities::default(), &slices)
            .map_err(|e| GrammarError::Setup(e.to_string()))?;
        factory.quiet();
        // Bounded work per grammar and per mask: a hostile schema fails, it never hangs.
        *factory.limits_mut() = ParserLimits { verbose_errors: false, ..ParserLimits::default() };
        Ok(Self { factory })
    }

    /// Compiles `spec`; with a `trigger` the grammar applies only from the trigger on.
    pub fn compile(&self, spec: &GrammarSpec, trigger: Option<Trigger>) -> Result<Arc<CompiledGrammar>, GrammarError> {
        let grammar = match spec {
            GrammarSpec::JsonObject => TopLevelGrammar::from_json_schema(with_json_options(json!({"type": "object"}))),
            GrammarSpec::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(GrammarError::Invalid("a JSON schema must be an object or a boolean".into()));
                }
                TopLevelGrammar::from_json_schema(with_json_options(schema.clone()))
            }
            GrammarSpec::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        };
        let parser = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.factory.create_parser(grammar)))
            .map_err(|_| GrammarError::Invalid("the grammar could not be compiled".into()))?
            .map_err(|e| GrammarError::Invalid(e.to_string()))?;
        // A grammar that fails at its first step is as invalid as one that does not compile.
        let mut probe = Matcher::new(Ok(parser.clone()));
        if let Err(e) = probe.compute_mask() {
            return Err(GrammarError::Invalid(e.to_string()));
        }
        Ok(Arc::new(CompiledGrammar { parser, trigger }))
    }
}

#[cfg(test)]
mod tests;
