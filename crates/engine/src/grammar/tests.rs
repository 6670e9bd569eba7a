//! The compiler over a character-level vocabulary: masks allow exactly what JSON may say next,
//! special tokens are never text, lazy grammars wait for their trigger, bad schemas fail to
//! compile with llguidance's message.

use serde_json::json;

use super::*;
use crate::engine::testing::{char_ids, char_text};

fn compiler() -> GrammarCompiler {
    GrammarCompiler::new(&char_text()).expect("compiler")
}

fn allowed(c: &mut Constraint) -> Vec<u32> {
    c.compute_mask().expect("active").expect("mask").ids().collect()
}

#[test]
fn a_schema_mask_allows_only_its_next_characters_and_eos_at_the_end() {
    let g = compiler()
        .compile(
            &GrammarSpec::JsonSchema(json!({"type": "object", "properties": {"a": {"enum": ["x", "yz"]}},
                                             "required": ["a"], "additionalProperties": false})),
            None,
        )
        .expect("compiles");
    let mut c = Constraint::new(g);
    assert!(c.is_active());
    assert_eq!(allowed(&mut c), char_ids("{"));
    for t in char_ids("{\"a\": \"") {
        assert_eq!(c.advance(t, ""), Advance::Continue);
    }
    let mut next = allowed(&mut c);
    next.sort_unstable();
    let mut want = char_ids("xy");
    want.sort_unstable();
    assert_eq!(next, want, "only the enum's first letters");
    for t in char_ids("yz\"") {
        assert_eq!(c.advance(t, ""), Advance::Continue);
    }
    assert_eq!(allowed(&mut c), char_ids("}"));
    // The closing brace completes the grammar: nothing may follow.
    assert_eq!(c.advance(char_ids("}")[0], ""), Advance::Complete);
    assert!(!c.is_active());
}

#[test]
fn json_object_accepts_any_object_but_never_a_special_token() {
    let mut c = Constraint::new(compiler().compile(&GrammarSpec::JsonObject, None).expect("compiles"));
    let first = allowed(&mut c);
    assert_eq!(first, char_ids("{"));
    for t in char_ids("{\"k\": ") {
        c.advance(t, "");
    }
    let next = allowed(&mut c);
    assert!(!next.contains(&0) && !next.contains(&2), "no EOS or added token inside a value: {next:?}");
    assert!(next.contains(&char_ids("1")[0]) && next.contains(&char_ids("[")[0]));
    // Rejected token: the constraint fails rather than panicking.
    assert!(matches!(c.advance(char_ids("}")[0], ""), Advance::Failed(_)));
}

#[test]
fn a_lazy_grammar_waits_for_its_token_or_text_trigger() {
    let spec = GrammarSpec::Lark("start: \"ab\"".into());
    let mut c = Constraint::new(compiler().compile(&spec, Some(Trigger::Token(2))).expect("compiles"));
    assert!(!c.is_active() && c.compute_mask().is_none());
    assert_eq!(c.advance(char_ids("q")[0], "q"), Advance::Continue);
    assert!(!c.is_active());
    c.advance(2, "<t>");
    assert!(c.is_active());
    assert_eq!(allowed(&mut c), char_ids("a"));

    let mut c = Constraint::new(compiler().compile(&spec, Some(Trigger::Text("TOOL:".into()))).expect("compiles"));
    for piece in ["x", "TO", "OL", ":"] {
        assert!(!c.is_active());
        c.advance(1, piece);
    }
    assert!(c.is_active(), "the trigger split over three pieces fires");
    assert_eq!(allowed(&mut c), char_ids("a"));
}

#[test]
fn invalid_grammars_fail_to_compile_with_a_message() {
    let comp = compiler();
    for spec in [
        GrammarSpec::JsonSchema(json!({"type": "object", "properties": {"a": {"type": "frobnicate"}}})),
        GrammarSpec::JsonSchema(json!({"type": "integer", "minimum": 5, "maximum": 1})),
        GrammarSpec::JsonSchema(json!([1, 2])),
        GrammarSpec::Lark("start: (".into()),
        GrammarSpec::JsonSchema(json!({"$ref": "#/$defs/missing"})),
    ] {
        match comp.compile(&spec, None) {
            Err(GrammarError::Invalid(m)) => assert!(!m.is_empty(), "{spec:?}"),
            other => panic!("{spec:?} should be invalid, got {other:?}"),
        }
    }
}

#[test]
fn json_options_default_to_python_separators_unless_the_schema_sets_them() {
    let s = with_json_options(json!({"type": "object", "x-guidance": {"whitespace_flexible": true}}));
    assert_eq!(s["x-guidance"]["whitespace_flexible"], true);
    assert_eq!(s["x-guidance"]["key_separator"], ": ");
}
