//! Bounded fuzzing of the parsers that read what clients and files send, as ordinary tests (the
//! instrumented `cargo fuzz` build of candle does not fit CI on two cores): each target runs
//! seeded random inputs for `WICK_FUZZ_SECS` seconds (default 3; scripts/test.sh sets 40) and
//! asserts that nothing panics and that the invariants hold.
//! - the request extractor and validation: arbitrary bytes, and arbitrary JSON built from the
//!   requests' own field names (`fuzz_request_*`);
//! - the chat-template renderer with hostile message contents (`fuzz_chat_template`);
//! - the GGUF reader on mutated and truncated copies of a real file (`fuzz_gguf_reader`);
//! - the incremental detokenizer and stop checker on random ids and stops (`fuzz_detokenizer`).
//!
//! A failure prints the seed; `WICK_FUZZ_SEED=<seed>` replays it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use wick_engine::text::{ChatMessage, IncrementalDetokenizer, StopChecker, StopOutcome, TextProcessor};
use wick_server::openai::chat::ChatCompletionRequest;
use wick_server::openai::completions::CompletionRequest;

use crate::archs::fixtures_dir;

fn budget() -> Duration {
    let secs = std::env::var("WICK_FUZZ_SECS").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// Runs `case` with fresh seeds until the budget is spent; a panic names its seed.
fn fuzz(name: &str, mut case: impl FnMut(&mut StdRng)) {
    let replay = std::env::var("WICK_FUZZ_SEED").ok().and_then(|v| v.parse::<u64>().ok());
    let start = Instant::now();
    let mut runs = 0u64;
    let mut seed = replay.unwrap_or_else(rand::random);
    loop {
        let mut rng = StdRng::seed_from_u64(seed);
        if catch_unwind(AssertUnwindSafe(|| case(&mut rng))).is_err() {
            panic!("{name}: case with WICK_FUZZ_SEED={seed} panicked (after {runs} passing cases)");
        }
        runs += 1;
        if replay.is_some() || start.elapsed() >= budget() {
            break;
        }
        seed = rand::random();
    }
    eprintln!("{name}: {runs} cases in {:.1} s", start.elapsed().as_secs_f64());
}

const HOSTILE: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    "\u{0}",
    "\u{202e}",
    "\u{fffd}",
    "\r\n",
    "\\",
    "\"",
    "'",
    "{{ raise_exception('x') }}",
    "{% for x in range(99999999) %}",
    "<tool_call>",
    "<think>",
    "[TOOL_CALLS]",
    "é",
    "😀",
    "\u{1F3F3}\u{FE0F}\u{200D}\u{1F308}",
    " ",
    "\t",
];

fn hostile_text(rng: &mut StdRng) -> String {
    let mut s = String::new();
    for _ in 0..rng.random_range(0..12) {
        match rng.random_range(0..3) {
            0 => s.push_str(HOSTILE[rng.random_range(0..HOSTILE.len())]),
            1 => s.push(char::from_u32(rng.random_range(0..0x11000)).unwrap_or('?')),
            _ => s.push_str(&"ab ".repeat(rng.random_range(0..20))),
        }
    }
    s
}

/// The field names of the requests, so random JSON reaches past the unknown-field check.
const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "name",
    "tool_calls",
    "tool_call_id",
    "id",
    "function",
    "arguments",
    "parameters",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "seed",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "stream",
    "stream_options",
    "include_usage",
    "response_format",
    "json_schema",
    "schema",
    "grammar",
    "prompt",
    "echo",
    "suffix",
    "best_of",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "stop_token_ids",
    "ignore_eos",
    "reasoning_effort",
    "chat_template_kwargs",
    "user",
    "image_url",
    "refusal",
];

fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 3 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random_range(-3i64..300)),
        3 => json!([i64::MIN, i64::MAX, -1, 0, 1, 128, 129, u32::MAX as i64][rng.random_range(0..8)]),
        4 => json!(rng.random::<f64>() * 4.0 - 1.0),
        5 => Value::String(match rng.random_range(0..4) {
            0 => [
                "user",
                "assistant",
                "system",
                "tool",
                "developer",
                "function",
                "json_schema",
                "json_object",
                "text",
                "auto",
                "none",
                "required",
                "tiny",
                "alias",
            ][rng.random_range(0..14)]
            .to_owned(),
            _ => hostile_text(rng),
        }),
        6 => Value::Array((0..rng.random_range(0..4)).map(|_| random_json(rng, depth + 1)).collect()),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.random_range(0..6) {
                m.insert(KEYS[rng.random_range(0..KEYS.len())].to_owned(), random_json(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// A request that is valid in shape and then mutated: fields dropped, retyped or added.
fn mutated_chat(rng: &mut StdRng) -> Value {
    let mut v = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]});
    let m = v.as_object_mut().expect("object");
    for _ in 0..rng.random_range(1..8) {
        let key = KEYS[rng.random_range(0..KEYS.len())].to_owned();
        match rng.random_range(0..4) {
            0 => {
                m.remove(&key);
            }
            _ => {
                m.insert(key, random_json(rng, 1));
            }
        }
    }
    v
}

/// What a handler does with a parsed request before it touches the engine.
fn validate_chat(req: &ChatCompletionRequest) {
    let defaults = wick_engine::sampling::SamplingDefaults::default().resolved();
    let _ = wick_server::validate::chat(req, 320, &defaults);
    let _ = wick_server::tools::parse(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls.as_ref());
    let _ = wick_server::structured::spec(req.response_format.as_ref(), req.grammar.as_deref());
    let _ = wick_server::messages::messages(&req.messages);
}

#[test]
fn fuzz_request_bytes() {
    let seeds: Vec<Vec<u8>> = vec![
        br#"{"model":"tiny","messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
        br#"{"model":"tiny","prompt":[[1,2],[3]],"n":2,"stream":true}"#.to_vec(),
    ];
    fuzz("request bytes", |rng| {
        let mut bytes = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(0..10) {
            let at = rng.random_range(0..=bytes.len());
            match rng.random_range(0..4) {
                0 if !bytes.is_empty() => {
                    let i = at.min(bytes.len() - 1);
                    bytes[i] = rng.random();
                }
                1 => bytes.insert(at, b"{}[],:\"\\0123456789e-.tfn \x00\xff"[rng.random_range(0..26)]),
                2 => bytes.truncate(at),
                _ => bytes.splice(at..at, br#","n":1e999,"x":[[[[["#.iter().copied()).for_each(drop),
            }
        }
        if let Ok(req) = wick_server::extract::parse::<ChatCompletionRequest>(&bytes) {
            validate_chat(&req);
        }
        if let Ok(req) = wick_server::extract::parse::<CompletionRequest>(&bytes) {
            let defaults = wick_engine::sampling::SamplingDefaults::default().resolved();
            let _ = wick_server::validate::completion(&req, 320, &defaults);
        }
    });
}

#[test]
fn fuzz_request_json() {
    fuzz("request json", |rng| {
        let v = mutated_chat(rng);
        let bytes = serde_json::to_vec(&v).expect("serializes");
        match wick_server::extract::parse::<ChatCompletionRequest>(&bytes) {
            Ok(req) => validate_chat(&req),
            Err(e) => assert!(e.status.is_client_error(), "{e}"),
        }
    });
}

fn fixture_text() -> TextProcessor {
    let path = fixtures_dir().join("llama.gguf");
    let mut f = std::fs::File::open(&path).expect("fixture");
    let content = gguf_file::Content::read(&mut f).expect("gguf");
    TextProcessor::from_gguf(&content, None).expect("text processor")
}

#[test]
fn fuzz_chat_template() {
    let text = fixture_text();
    fuzz("chat template", |rng| {
        let roles = ["system", "user", "assistant", "tool", "wizard", ""];
        let messages: Vec<ChatMessage> = (0..rng.random_range(0..6))
            .map(|_| {
                let mut m = ChatMessage::new(roles[rng.random_range(0..roles.len())], hostile_text(rng));
                if rng.random_range(0..4) == 0 {
                    m.tool_calls = Some(random_json(rng, 2));
                }
                if rng.random_range(0..4) == 0 {
                    m.name = Some(hostile_text(rng));
                }
                m
            })
            .collect();
        let extra = if rng.random() { random_json(rng, 1) } else { Value::Null };
        // Errors are fine (they are 400s); a panic or a hang is not.
        if let Ok(rendered) = text.render_chat_with(&messages, rng.random(), &extra) {
            let _ = text.encode(&rendered, false);
        }
    });
}

#[test]
fn fuzz_detokenizer_and_stop_checker() {
    let text = fixture_text();
    let vocab = text.vocab_size() as u32;
    let specials = text.special_token_ids();
    fuzz("detokenizer", |rng| {
        let ids: Vec<u32> = (0..rng.random_range(1..40))
            .map(|_| match rng.random_range(0..5) {
                0 if !specials.is_empty() => specials[rng.random_range(0..specials.len())],
                _ => rng.random_range(0..vocab),
            })
            .collect();
        // Without stops, the pieces add up to the whole decode.
        let mut d = IncrementalDetokenizer::new();
        let mut out: String = ids.iter().map(|&id| d.push(&text, id)).collect();
        out.push_str(&d.flush(&text));
        let whole = text.decode(&ids, false).expect("decodes");
        assert_eq!(out, whole, "{ids:?}");
        // With stops, the text released never contains a stop, and is a prefix of the whole.
        let stops: Vec<String> = (0..rng.random_range(1..4))
            .map(|_| {
                let a = rng.random_range(0..whole.len().max(1));
                let b = (a + rng.random_range(1..4)).min(whole.len());
                whole.get(a..b).filter(|s| !s.is_empty()).unwrap_or("\u{1}").to_owned()
            })
            .collect();
        let mut checker = StopChecker::new(stops.clone());
        let mut d = IncrementalDetokenizer::new();
        let mut released = String::new();
        for &id in &ids {
            match checker.push(&d.push(&text, id)) {
                StopOutcome::Continue(t) => released.push_str(&t),
                StopOutcome::Stopped(t) => {
                    released.push_str(&t);
                    break;
                }
            }
        }
        if !checker.is_stopped() {
            released.push_str(&checker.finish());
        }
        assert!(whole.starts_with(&released), "released {released:?} is not a prefix of {whole:?}");
        for s in &stops {
            assert!(!released.contains(s.as_str()), "released {released:?} contains stop {s:?}");
        }
    });
}

#[test]
fn fuzz_gguf_reader() {
    let good = std::fs::read(fixtures_dir().join("llama.gguf")).expect("fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mutated.gguf");
    fuzz("gguf reader", |rng| {
        let mut bytes = good.clone();
        for _ in 0..rng.random_range(1..6) {
            // The header, metadata and tensor index live in the first few hundred KiB.
            let hot = bytes.len().min(400 << 10);
            if hot == 0 {
                break;
            }
            let at = rng.random_range(0..hot);
            match rng.random_range(0..4) {
                0 => bytes[at] = rng.random(),
                1 => bytes[at] ^= 1 << rng.random_range(0..8),
                2 => {
                    // A length or count field made huge.
                    let end = (at + 8).min(bytes.len());
                    bytes[at..end].copy_from_slice(&u64::MAX.to_le_bytes()[..end - at]);
                }
                _ => bytes.truncate(rng.random_range(0..bytes.len())),
            }
        }
        std::fs::write(&path, &bytes).expect("write");
        // Any result but a panic (or an abort on a huge allocation) is fine.
        let _ = wick_engine::load(&path, &wick_engine::LoadOptions::default());
    });
}
