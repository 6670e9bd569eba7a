//! Engine tests over `FakeLm` with the real sampler, detokenizer and stop checker: event order,
//! `n` choices and their seeds, batched == alone under chunked prefill and preemption,
//! cancellation wherever a request is, overload, context checks and forward errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use super::testing::{char_ids, char_text, greedy, greedy_windowed, tiny_text, FakeLm, Gate, OpenOnDrop};
use super::Engine;
use crate::grammar::{GrammarCompiler, GrammarSpec, Trigger};
use crate::request::{Event, FinishReason, GenerateRequest, SamplingParams};
use crate::{EngineConfig, EngineStats, SubmitError};

const BLOCK: usize = 4;

fn config() -> EngineConfig {
    EngineConfig {
        block_size: BLOCK,
        num_blocks: Some(64),
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        max_waiting: 16,
        max_model_len: Some(128),
        ..EngineConfig::default()
    }
}

fn engine(model: FakeLm, cfg: EngineConfig) -> Engine {
    Engine::start(Box::new(model), tiny_text(), cfg).expect("engine starts")
}

fn greedy_params(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens, temperature: 0.0, ..SamplingParams::default() }
}

fn request(prompt: Vec<u32>, params: SamplingParams) -> GenerateRequest {
    GenerateRequest::new("test", prompt, params)
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| 2 + (i * 5 + salt * 11) % 60).collect()
}

/// Receives every event until `Done`, `Error` or a closed channel (fails after 20 s).
fn collect(rx: &mut UnboundedReceiver<Event>) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut events = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(ev) => {
                let last = matches!(ev, Event::Done { .. } | Event::Error(_));
                events.push(ev);
                if last {
                    return events;
                }
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return events,
            Err(_) if Instant::now() > deadline => panic!("no Done within 20 s; got {events:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// The token ids of choice `choice`.
fn tokens(events: &[Event], choice: usize) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Token { choice: c, token_id, .. } if *c == choice => Some(*token_id),
            _ => None,
        })
        .collect()
}

fn wait_for(engine: &Engine, what: &str, pred: impl Fn(&EngineStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pred(&engine.stats()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", engine.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn greedy_request_streams_tokens_then_finished_then_done() {
    let engine = engine(FakeLm::new(BLOCK, 128), config());
    let p = prompt(7, 1);
    let mut rx = engine.submit(request(p.clone(), greedy_params(5))).unwrap();
    let events = collect(&mut rx);
    assert_eq!(events.len(), 7, "{events:?}");
    assert_eq!(tokens(&events, 0), greedy(&p, 5));
    assert!(matches!(events[5], Event::Finished { choice: 0, reason: FinishReason::Length, .. }));
    match &events[6] {
        Event::Done { usage, first_token_time, .. } => {
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 5));
            assert!(first_token_time.is_some());
        }
        other => panic!("expected Done, got {other:?}"),
    }
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Token { text, .. } | Event::Finished { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let want: String = greedy(&p, 5).iter().map(|&t| engine.text().token_text(t).0).collect();
    assert_eq!(text.replace(' ', ""), want.replace(' ', ""));
    wait_for(&engine, "idle", |s| s.running == 0 && s.waiting == 0 && s.kv_blocks_used == 0);
}

#[test]
fn n_choices_each_finish_and_choice_i_uses_seed_plus_i() {
    let engine = engine(FakeLm::new(BLOCK, 128), config());
    let p = prompt(5, 2);
    let sampled = SamplingParams { max_tokens: 12, temperature: 1.5, seed: Some(40), ..SamplingParams::default() };
    let mut rx = engine.submit(GenerateRequest { n: 3, ..request(p.clone(), sampled.clone()) }).unwrap();
    let events = collect(&mut rx);
    for choice in 0..3 {
        assert_eq!(tokens(&events, choice).len(), 12);
        let finished = events.iter().filter(|e| matches!(e, Event::Finished { choice: c, .. } if *c == choice));
        assert_eq!(finished.count(), 1);
    }
    match events.last() {
        Some(Event::Done { usage, .. }) => assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 36)),
        other => panic!("expected Done last, got {other:?}"),
    }
    let mut alone = engine.submit(request(p, SamplingParams { seed: Some(42), ..sampled })).unwrap();
    assert_eq!(tokens(&collect(&mut alone), 0), tokens(&events, 2), "choice 2 of seed 40 is seed 42");
}

#[test]
fn concurrent_requests_match_their_solo_outputs_under_chunking_and_preemption() {
    // 12 blocks of 4 tokens = 48 tokens of cache for 8 requests needing up to 30 each, and a
    // budget of 8 tokens per step: prompts are chunked and sequences get preempted. Arrivals
    // race the engine thread, so whether a given run preempts depends on timing: the outputs
    // must match in every run, and some run (of up to 8) must have preempted.
    let mut preempted = 0;
    for _ in 0..8 {
        let cfg = EngineConfig { num_blocks: Some(12), max_num_batched_tokens: 8, ..config() };
        let engine = engine(FakeLm::new(BLOCK, 128), cfg);
        let cases: Vec<(Vec<u32>, usize)> = (0..8).map(|i| (prompt(3 + 3 * i, i as u32), 6 + i)).collect();
        let mut rxs = Vec::new();
        for (i, (p, max)) in cases.iter().enumerate() {
            rxs.push(engine.submit(request(p.clone(), greedy_params(*max))).unwrap());
            if i % 3 == 2 {
                std::thread::sleep(Duration::from_millis(2)); // staggered arrivals
            }
        }
        for ((p, max), rx) in cases.iter().zip(rxs.iter_mut()) {
            assert_eq!(tokens(&collect(rx), 0), greedy(p, *max), "prompt of {} tokens", p.len());
        }
        wait_for(&engine, "all blocks freed", |s| s.kv_blocks_used == 0 && s.running == 0);
        preempted += engine.stats().preemptions_total;
        if preempted > 0 {
            break;
        }
    }
    assert!(preempted > 0, "the cache was small enough to force preemption");
}

#[test]
fn stop_token_ids_and_eos_end_a_choice_with_stop() {
    let engine = engine(FakeLm::new(BLOCK, 128), config());
    let p = prompt(6, 3);
    let want = greedy(&p, 10);
    let params = SamplingParams { stop_token_ids: vec![want[3]], ..greedy_params(10) };
    let mut rx = engine.submit(request(p.clone(), params)).unwrap();
    let events = collect(&mut rx);
    let first_stop = want.iter().position(|&t| t == want[3]).unwrap();
    assert_eq!(tokens(&events, 0), want[..=first_stop].to_vec());
    assert!(events.iter().any(|e| matches!(e, Event::Finished { reason: FinishReason::Stop, .. })));

    let eos_params = SamplingParams { logit_bias: [(0u32, 100.0)].into_iter().collect(), ..greedy_params(10) };
    let events = collect(&mut engine.submit(request(p.clone(), eos_params.clone())).unwrap());
    assert_eq!(tokens(&events, 0), vec![0]);
    assert!(events.iter().any(|e| matches!(e, Event::Finished { reason: FinishReason::Stop, .. })));
    let ignore = SamplingParams { ignore_eos: true, max_tokens: 3, ..eos_params };
    let events = collect(&mut engine.submit(request(p, ignore)).unwrap());
    assert_eq!(tokens(&events, 0), vec![0, 0, 0], "ignore_eos keeps going to max_tokens");
}

#[test]
fn dropped_receivers_cancel_queued_prefilling_and_decoding_requests() {
    let gate = Arc::new(Gate::default());
    let mut model = FakeLm::new(BLOCK, 128);
    model.gate = Some(gate.clone());
    let cfg = EngineConfig { max_num_seqs: 2, max_num_batched_tokens: 4, ..config() };
    let engine = engine(model, cfg);
    let _open = OpenOnDrop(gate.clone());
    let long = greedy_params(80);
    let mut decoding = engine.submit(request(prompt(3, 1), long.clone())).unwrap();
    let prefilling = engine.submit(request(prompt(40, 2), long.clone())).unwrap();
    let queued = engine.submit(request(prompt(3, 3), long)).unwrap();
    gate.release(3);
    wait_for(&engine, "two running, one waiting", |s| s.running == 2 && s.waiting == 1 && s.steps_total >= 3);
    assert!(decoding.try_recv().is_ok(), "the short request decodes while the long one prefills");
    drop(queued);
    drop(prefilling);
    gate.release(2);
    wait_for(&engine, "cancelled requests reaped", |s| s.running == 1 && s.waiting == 0);
    // The decoding request holds 6 to 8 tokens by now: 2 blocks; the prefilling one held 3 more.
    assert_eq!(engine.stats().kv_blocks_used, 2, "the cancelled requests' blocks are freed");
    drop(decoding);
    gate.release(usize::MAX / 2);
    wait_for(&engine, "everything reaped", |s| s.running == 0 && s.waiting == 0 && s.kv_blocks_used == 0);
}

#[test]
fn full_queue_answers_overloaded() {
    let gate = Arc::new(Gate::default());
    let mut model = FakeLm::new(BLOCK, 128);
    model.gate = Some(gate.clone());
    let engine = engine(model, EngineConfig { max_waiting: 2, ..config() });
    let _open = OpenOnDrop(gate.clone());
    let _running = engine.submit(request(prompt(3, 1), greedy_params(50))).unwrap();
    while gate.entered() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _a = engine.submit(request(prompt(3, 2), greedy_params(5))).unwrap();
    let _b = engine.submit(request(prompt(3, 3), greedy_params(5))).unwrap();
    let refused = engine.submit(request(prompt(3, 4), greedy_params(5)));
    assert_eq!(refused.err(), Some(SubmitError::Overloaded { waiting: 2 }));
}

#[test]
fn requests_beyond_context_or_cache_are_refused_at_submit() {
    let engine = engine(FakeLm::new(BLOCK, 128), EngineConfig { num_blocks: Some(8), ..config() });
    let too_long = engine.submit(request(prompt(100, 1), greedy_params(40)));
    assert_eq!(
        too_long.err(),
        Some(SubmitError::ContextLength { max_context: 128, requested: 140, prompt: 100, completion: 40 })
    );
    // 8 blocks of 4 = 32 tokens of cache.
    assert!(matches!(engine.submit(request(prompt(20, 1), greedy_params(13))), Err(SubmitError::Invalid(_))));
    assert!(engine.submit(request(prompt(20, 1), greedy_params(12))).is_ok());
    assert!(matches!(engine.submit(request(vec![], greedy_params(4))), Err(SubmitError::Invalid(_))));
}

#[test]
fn sliding_window_requests_longer_than_the_cache_run_and_match_their_solo_outputs() {
    // Window 6, blocks of 4, 8-token steps: a sequence holds at most ceil((6 - 1 + 8) / 4) + 1
    // = 5 pages, so 8 pages (32 tokens) serve four requests of about 50 tokens each, reusing
    // the pages their windows left. (Preemption with groups is covered by the scheduler tests.)
    let cfg = EngineConfig { num_blocks: Some(8), max_num_batched_tokens: 8, ..config() };
    let eng = engine(FakeLm::sliding(BLOCK, 128, 6), cfg.clone());
    let cases: Vec<(Vec<u32>, usize)> = (0..4).map(|i| (prompt(14 + 3 * i, i as u32), 36 - 3 * i)).collect();
    let mut rxs = Vec::new();
    for (p, max) in &cases {
        rxs.push(eng.submit(request(p.clone(), greedy_params(*max))).unwrap());
    }
    for ((p, max), rx) in cases.iter().zip(rxs.iter_mut()) {
        let want = greedy_windowed(p, *max, Some(6));
        assert_ne!(want, greedy(p, *max), "the window changes the output");
        assert_eq!(tokens(&collect(rx), 0), want, "prompt of {} tokens", p.len());
    }
    wait_for(&eng, "all blocks freed", |s| s.kv_blocks_used == 0 && s.running == 0);
    // The fit check counts the window's pages: 5 fit in 6, not in 4.
    let small = engine(FakeLm::sliding(BLOCK, 128, 6), EngineConfig { num_blocks: Some(4), ..cfg });
    assert!(matches!(small.submit(request(prompt(20, 1), greedy_params(30))), Err(SubmitError::Invalid(_))));
    assert!(small.submit(request(prompt(3, 1), greedy_params(9))).is_ok(), "12 tokens: 3 pages");
}

#[test]
fn forward_error_fails_the_affected_request_and_the_engine_keeps_serving() {
    let mut model = FakeLm::new(BLOCK, 128);
    model.poison = Some(63);
    let engine = engine(model, config());
    let events = collect(&mut engine.submit(request(vec![5, 63, 7], greedy_params(4))).unwrap());
    assert!(matches!(events.as_slice(), [Event::Error(_)]), "{events:?}");
    let p = prompt(4, 9);
    let events = collect(&mut engine.submit(request(p.clone(), greedy_params(4))).unwrap());
    assert_eq!(tokens(&events, 0), greedy(&p, 4));
    assert!(engine.is_running());
    wait_for(&engine, "blocks freed", |s| s.kv_blocks_used == 0);
}

/// The text of choice `choice`.
fn text_of(events: &[Event], choice: usize) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Token { choice: c, text, .. } | Event::Finished { choice: c, text, .. } if *c == choice => {
                Some(text.as_str())
            }
            _ => None,
        })
        .collect()
}

fn finish_of(events: &[Event], choice: usize) -> Option<FinishReason> {
    events.iter().find_map(|e| match e {
        Event::Finished { choice: c, reason, .. } if *c == choice => Some(*reason),
        _ => None,
    })
}

#[test]
fn a_grammar_constrains_every_choice_and_leaves_other_requests_alone() {
    let text = char_text();
    let compiler = GrammarCompiler::new(&text).expect("compiler");
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "a": {"enum": ["x", "yz"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
            "l": {"type": "array", "items": {"enum": ["p", "q"]}, "minItems": 1, "maxItems": 3}
        },
        "required": ["a", "n", "l"], "additionalProperties": false
    });
    let grammar = compiler.compile(&GrammarSpec::JsonSchema(schema), None).expect("compiles");
    let engine = Engine::start(Box::new(FakeLm::new(BLOCK, 128)), text, config()).expect("engine");
    let p = char_ids("hello");
    let plain_params = greedy_params(12);
    let mut plain = engine.submit(request(p.clone(), plain_params)).unwrap();
    let mut runs = Vec::new();
    for temperature in [0.0, 1.0] {
        let params = SamplingParams {
            max_tokens: 100,
            temperature,
            seed: Some(3),
            grammar: Some(grammar.clone()),
            ..SamplingParams::default()
        };
        let mut req = request(p.clone(), params);
        req.n = 3;
        runs.push(engine.submit(req).unwrap());
    }
    for rx in &mut runs {
        let events = collect(rx);
        for choice in 0..3 {
            let out = text_of(&events, choice);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
            assert!(["x", "yz"].contains(&v["a"].as_str().unwrap_or("")), "{out}");
            assert!(v["n"].as_u64().is_some_and(|n| n <= 99), "{out}");
            let l = v["l"].as_array().expect("array");
            assert!((1..=3).contains(&l.len()) && l.iter().all(|x| x == "p" || x == "q"), "{out}");
            assert_eq!(v.as_object().map(|o| o.len()), Some(3), "{out}");
            assert_eq!(finish_of(&events, choice), Some(FinishReason::Stop), "the grammar's end stops the choice");
        }
    }
    assert_eq!(tokens(&collect(&mut plain), 0), greedy(&p, 12), "a request without grammar is unaffected");
}

#[test]
fn a_lazy_grammar_is_free_text_until_its_trigger_then_constrained() {
    let text = char_text();
    let compiler = GrammarCompiler::new(&text).expect("compiler");
    let grammar =
        compiler.compile(&GrammarSpec::Lark("start: \"ab\" \"c\"*".into()), Some(Trigger::Token(2))).expect("lark");
    let engine = Engine::start(Box::new(FakeLm::new(BLOCK, 128)), text, config()).expect("engine");
    let p = char_ids("hi");
    // Without the trigger the output is the model's own.
    let params = SamplingParams { grammar: Some(grammar.clone()), ..greedy_params(6) };
    let free = collect(&mut engine.submit(request(p.clone(), params)).unwrap());
    let free_tokens = tokens(&free, 0);
    if !free_tokens.contains(&2) {
        assert_eq!(free_tokens, greedy(&p, 6));
    }
    // A bias forces the trigger first; from then on the grammar rules despite the bias.
    let mut params = SamplingParams { grammar: Some(grammar), ..greedy_params(20) };
    params.logit_bias.insert(2, 100.0);
    let events = collect(&mut engine.submit(request(p, params)).unwrap());
    let out = text_of(&events, 0);
    assert!(out.starts_with("<t>ab"), "{out:?}");
    assert!(out["<t>ab".len()..].chars().all(|c| c == 'c'), "{out:?}");
}
