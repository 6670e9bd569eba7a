//! Grammars over real vocabularies (SmolLM2's 49k byte-level BPE, Gemma 3's 262k SentencePiece):
//! the text of a valid answer, tokenized the model's own way, passes the masks token by token
//! and ends where EOS is allowed; the Hermes tool grammar (lazy, with a text trigger on
//! SmolLM2, which has no `<tool_call>` token) waits for its trigger. Also prints the mask cost.

use std::time::Instant;

use serde_json::json;
use wick_engine::grammar::{Advance, Constraint, GrammarCompiler, GrammarSpec, Trigger};
use wick_engine::text::TextProcessor;
use wick_server::tools::{self, hermes, Format};

/// Feeds `ids` through `c`, checking each is allowed; returns the mean mask time in µs.
fn feed(text: &TextProcessor, c: &mut Constraint, ids: &[u32]) -> f64 {
    let (mut total, mut masks) = (0f64, 0);
    for (i, &id) in ids.iter().enumerate() {
        let piece = text.decode(&[id], false).expect("decode");
        if c.is_active() {
            let t = Instant::now();
            let mask = c.compute_mask().expect("active").expect("mask");
            total += t.elapsed().as_secs_f64() * 1e6;
            masks += 1;
            assert!(mask.allows(id), "token {i} ({piece:?}) refused");
        }
        assert_ne!(c.advance(id, &piece), Advance::Failed(String::new()));
    }
    total / masks.max(1) as f64
}

fn schema() -> serde_json::Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 2}},
        "required": ["name", "age", "tags"], "additionalProperties": false})
}

fn check_schema_answer(text: &TextProcessor, label: &str) {
    let compiler = GrammarCompiler::new(text).expect("compiler");
    let g = compiler.compile(&GrammarSpec::JsonSchema(schema()), None).expect("compiles");
    let mut c = Constraint::new(g);
    let answer = r#"{"name": "Ann Lee", "age": 31, "tags": ["a", "b"]}"#;
    let ids = text.encode(answer, false).expect("encode");
    let us = feed(text, &mut c, &ids);
    eprintln!("{label}: mean mask {us:.0} µs over {} tokens", ids.len());
    assert!(!c.is_active(), "the closing brace completes the grammar");
}

#[test]
fn smollm2_schema_answer_passes_the_masks() {
    if let Some(text) = crate::text::smollm2() {
        check_schema_answer(text, "smollm2");
    }
}

#[test]
fn gemma3_schema_answer_passes_the_masks() {
    if let Some(text) = crate::text::gemma3() {
        check_schema_answer(text, "gemma3");
    }
}

#[test]
fn hermes_grammar_is_lazy_until_the_trigger_then_forces_a_valid_call() {
    let Some(text) = crate::text::smollm2() else { return };
    let tools_json = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let req = tools::parse(Some(&tools_json), None, None).expect("ok").expect("tools");
    let format = Format::Hermes { trigger: Trigger::Text(hermes::OPEN.into()), special: false };
    let (spec, trigger) = format.grammar(&req).expect("a grammar");
    assert_eq!(trigger, Some(Trigger::Text("<tool_call>".into())));
    let compiler = GrammarCompiler::new(text).expect("compiler");
    let mut c = Constraint::new(compiler.compile(&spec, trigger).expect("hermes grammar compiles"));
    let before = text.encode("Let me check.\n<tool_call>", false).expect("encode");
    feed(text, &mut c, &before);
    assert!(c.is_active(), "the trigger text activates the grammar");
    let call = "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let ids = text.encode(call, false).expect("encode");
    feed(text, &mut c, &ids);
    assert!(!c.is_active(), "one call (no parallel calls): the grammar is complete");
    // With parallel calls the answer may end or go on with another call.
    let mut parallel = req.clone();
    parallel.parallel = true;
    let (spec_p, trigger_p) = format.grammar(&parallel).expect("a grammar");
    let mut c = Constraint::new(compiler.compile(&spec_p, trigger_p).expect("compiles"));
    feed(text, &mut c, &before);
    feed(text, &mut c, &ids);
    let mask = c.compute_mask().expect("active").expect("mask");
    assert!(mask.allows(text.eog_token_ids()[0]), "after a whole call the answer may end");
    assert!(mask.allows(text.encode("\n", false).expect("encode")[0]), "or another call may follow");
    // A wrong function name is refused.
    let mut c = Constraint::new(compiler.compile(&spec, Some(Trigger::Text("<tool_call>".into()))).expect("compiles"));
    feed(text, &mut c, &before);
    let bad = text.encode("\n{\"name\": \"get_time", false).expect("encode");
    let refused = bad.iter().any(|&id| {
        let ok = c.compute_mask().expect("active").expect("mask").allows(id);
        c.advance(id, "");
        !ok
    });
    assert!(refused, "a name outside the tools is refused");
}

#[test]
fn mistral_and_llama3_grammars_compile_and_accept_their_calls() {
    let Some(text) = crate::text::smollm2() else { return };
    let compiler = GrammarCompiler::new(text).expect("compiler");
    let tools_json = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let auto = tools::parse(Some(&tools_json), None, None).expect("ok").expect("tools");
    let enc = |s: &str| text.encode(s, false).expect("encode");

    let mistral = Format::Mistral { trigger: Trigger::Text("[TOOL_CALLS]".into()), special: false };
    let (spec, trigger) = mistral.grammar(&auto).expect("a grammar");
    let mut c = Constraint::new(compiler.compile(&spec, trigger).expect("mistral grammar compiles"));
    feed(text, &mut c, &enc("Checking.[TOOL_CALLS]"));
    assert!(c.is_active());
    feed(text, &mut c, &enc("[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]"));
    assert!(!c.is_active(), "one call: complete");

    let (spec, trigger) = Format::Llama3.grammar(&auto).expect("a grammar");
    let g = compiler.compile(&spec, trigger).expect("llama3 grammar compiles");
    let mut c = Constraint::new(g.clone());
    feed(text, &mut c, &enc("It is sunny today."));
    assert!(c.compute_mask().expect("active").expect("mask").allows(text.eog_token_ids()[0]), "text may end");
    let mut c = Constraint::new(g);
    feed(text, &mut c, &enc("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}"));
    assert!(!c.is_active(), "the call completes the answer");
}

/// The harmony tool grammar on the gpt-oss fixture's vocabulary (SmolLM2's, which spells the
/// markers as text): an analysis message then a call to `functions.get_weather` passes the
/// masks; the arguments are held to the tool's schema (a wrong city is refused).
#[test]
fn harmony_grammar_accepts_analysis_then_a_call_and_holds_the_arguments() {
    let path = crate::archs::fixtures_dir().join("gpt-oss.gguf");
    let mut f = std::fs::File::open(&path).expect("fixture");
    let content = wick_engine::model::GgufFile::read(&mut f).expect("gguf").content;
    let text = TextProcessor::from_gguf(&content, None).expect("text");
    let req = tools::ToolRequest {
        tools: vec![tools::Tool {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                               "required": ["city"], "additionalProperties": false}),
        }],
        choice: tools::Choice::Required,
        parallel: false,
    };
    let format = Format::Harmony { special: false };
    let (spec, trigger) = format.grammar(&req).expect("a grammar");
    assert!(trigger.is_none());
    let compiler = GrammarCompiler::new(&text).expect("compiler");
    let g = compiler.compile(&spec, None).expect("compiles");
    let answer = "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant\
                  <|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Rome\"}<|call|>";
    let mut c = Constraint::new(g.clone());
    let ids = text.encode(answer, false).expect("encode");
    let us = feed(&text, &mut c, &ids);
    eprintln!("harmony: mean mask {us:.0} µs over {} tokens", ids.len());
    assert!(!c.is_active(), "<|call|> completes the grammar");
    // A city outside the enum is refused somewhere in the arguments.
    let bad = answer.replace("Rome", "Oslo");
    let mut c = Constraint::new(g);
    let refused = text.encode(&bad, false).expect("encode").into_iter().any(|id| {
        let piece = text.decode(&[id], false).expect("decode");
        if c.is_active() && !c.compute_mask().expect("active").expect("mask").allows(id) {
            return true;
        }
        c.advance(id, &piece);
        false
    });
    assert!(refused, "the schema's enum holds");
}
