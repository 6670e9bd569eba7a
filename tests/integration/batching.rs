//! Batched == alone: prompts of different lengths run one at a time, then together through the
//! real `Scheduler` and a tiny random llama, with staggered arrivals, a token budget small
//! enough to force chunked prefill and a KV cache small enough to force preemption by
//! recompute. The together run is teacher-forced with the alone run's tokens, so every logits
//! row must match its alone counterpart within tolerance, and greedy picks must agree.
//!
//! The same again for a sliding-window (mistral-style) tiny llama whose window is shorter
//! than most prompts: its KV-cache group releases the blocks that leave the window, so blocks
//! are freed and handed to other sequences mid-sequence, and the results must not change.

use std::collections::{HashMap, HashSet};

use candle_core::quantized::GgmlDType;
use wick_engine::kv_cache::{AttentionKind, BlockPool, KvLayout, PagedKvCache, NO_BLOCK};
use wick_engine::model::{load_gguf_model, load_safetensors_model, CausalLm, WeightOptions};
use wick_engine::scheduler::{Scheduler, SchedulerConfig};
use wick_engine::sequence::Sequence;
use wick_tests::tiny_model::TinyLlama;

const BLOCK: usize = 4;
const GEN: usize = 8;

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0 as u32
}

fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    [5usize, 17, 3, 31, 9, 24, 1, 40, 12, 6]
        .iter()
        .enumerate()
        .map(|(i, &len)| (0..len as u32).map(|j| (j * 37 + i as u32 * 101 + 11) % vocab).collect())
        .collect()
}

/// What a run produced per sequence: generated tokens and the logits row behind each.
type Outputs = HashMap<u64, (Vec<u32>, Vec<Vec<f32>>)>;

struct Run {
    budget: usize,
    num_blocks: usize,
    /// Sequence `i` is added at step `arrival(i)`.
    arrival: fn(usize) -> usize,
    /// Tokens to force instead of greedy picks (teacher forcing), per sequence.
    forced: Option<Outputs>,
}

/// What a run did with the KV cache.
#[derive(Debug, Default)]
struct CacheEvents {
    preemptions: u64,
    /// Blocks a sliding-window group released while its sequence kept running.
    released: usize,
    /// Allocations of a block that an earlier release had returned.
    reused: usize,
}

/// Drives the scheduler and the model as the engine does, greedy or teacher-forced, with the
/// KV cache and the scheduler's groups built from `layout`.
fn run(model: &dyn CausalLm, layout: &KvLayout, prompts: &[Vec<u32>], cfg: &Run) -> (Outputs, CacheEvents) {
    let mut cache = PagedKvCache::new(layout, cfg.num_blocks, BLOCK);
    let sched_cfg = SchedulerConfig { max_num_seqs: 8, max_num_batched_tokens: cfg.budget };
    let pool = BlockPool::new(cfg.num_blocks, BLOCK);
    let mut sched: Scheduler<()> = Scheduler::new(sched_cfg, pool, layout.groups.clone());
    let mut out: Outputs = HashMap::new();
    let mut events = CacheEvents::default();
    let mut released_ids: HashSet<u32> = HashSet::new();
    let held = |sched: &Scheduler<()>| -> HashMap<(u64, usize, usize), u32> {
        let mut m = HashMap::new();
        for q in sched.iter() {
            for (g, t) in q.block_tables.iter().enumerate() {
                m.extend(t.iter().enumerate().filter(|(_, &b)| b != NO_BLOCK).map(|(i, &b)| ((q.id, g, i), b)));
            }
        }
        m
    };
    let mut added = 0;
    for step in 0..10_000 {
        while added < prompts.len() && (cfg.arrival)(added) <= step {
            sched.add(Sequence::new(added as u64, prompts[added].clone(), ()));
            added += 1;
        }
        if added == prompts.len() && sched.is_empty() {
            events.preemptions = sched.num_preemptions();
            return (out, events);
        }
        let before_plan = held(&sched);
        let plan = sched.plan();
        if plan.is_empty() {
            continue;
        }
        let planned = held(&sched);
        for (key, b) in &planned {
            if !before_plan.contains_key(key) && released_ids.remove(b) {
                events.reused += 1;
            }
        }
        let batch = sched.build_batch(&plan);
        assert!(batch.num_tokens() <= cfg.budget, "token budget exceeded");
        let logits = model.forward(&batch, &mut cache).expect("forward").to_vec2::<f32>().expect("f32 logits");
        sched.commit(&plan);
        let committed = held(&sched);
        for ((id, g, i), b) in &planned {
            if !committed.contains_key(&(*id, *g, *i)) && sched.get(*id).is_some() {
                assert_eq!(sched.get(*id).unwrap().block_tables[*g][*i], NO_BLOCK);
                events.released += 1;
                released_ids.insert(*b);
            }
        }
        for (s, row) in plan.sampled().zip(logits) {
            let (toks, rows) = out.entry(s.id).or_default();
            let idx = sched.get(s.id).map(|q| q.output_ids().len()).expect("scheduled sequence exists");
            let next = match &cfg.forced {
                Some(forced) => forced[&s.id].0[idx],
                None => argmax(&row),
            };
            // A preempted sequence's recompute re-derives output `idx`: keep the first logits.
            if rows.len() == idx {
                rows.push(row);
                toks.push(next);
            }
            sched.append_token(s.id, next);
            if idx + 1 == GEN {
                sched.remove(s.id);
            }
        }
    }
    panic!("the scheduler did not finish within 10000 steps");
}

/// Each prompt alone: whole prompt in one step, plenty of cache.
fn run_alone(model: &dyn CausalLm, layout: &KvLayout) -> Outputs {
    let prompts = prompts(model.config().vocab_size as u32);
    let mut alone: Outputs = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        let solo = Run { budget: 1024, num_blocks: 64, arrival: |_| 0, forced: None };
        let (o, events) = run(model, layout, std::slice::from_ref(p), &solo);
        assert_eq!(events.preemptions, 0);
        alone.insert(i as u64, o[&0].clone());
    }
    alone
}

fn check_batched_equals_alone(model: &dyn CausalLm, tol: f32) {
    check_batched_equals_alone_with(model, &model.config().kv_layout, 14, tol);
}

/// Alone, then together (12-token steps, `num_blocks` blocks, staggered arrivals), with the
/// KV cache laid out by `layout`. Returns what the together run did with the cache.
fn check_batched_equals_alone_with(
    model: &dyn CausalLm,
    layout: &KvLayout,
    num_blocks: usize,
    tol: f32,
) -> CacheEvents {
    let prompts = prompts(model.config().vocab_size as u32);
    let alone = run_alone(model, layout);
    // 12-token steps, few blocks (14 = 56 tokens for the full layout, for 228 tokens of
    // demand), staggered arrivals.
    let together = Run { budget: 12, num_blocks, arrival: |i| (i / 3) * 2, forced: Some(alone.clone()) };
    let (batched, events) = run(model, layout, &prompts, &together);
    assert!(events.preemptions > 0, "the cache was meant to force preemption");
    for (id, (tokens, rows)) in &alone {
        let (b_tokens, b_rows) = &batched[id];
        assert_eq!(b_tokens, tokens);
        for (k, (a, b)) in rows.iter().zip(b_rows).enumerate() {
            let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(d <= tol, "sequence {id} output {k}: batched logits differ from alone by {d}");
            assert_eq!(argmax(b), tokens[k], "sequence {id} output {k}: greedy pick changed");
        }
    }
    events
}

#[test]
fn batched_equals_alone_with_chunked_prefill_and_preemption_f32() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = TinyLlama::default();
    tiny.write_hf(dir.path()).unwrap();
    let model = load_safetensors_model(dir.path(), &WeightOptions::default()).unwrap();
    check_batched_equals_alone(model.as_ref(), 1e-4);
}

#[test]
fn batched_equals_alone_with_chunked_prefill_and_preemption_q8_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&path, GgmlDType::Q8_0).unwrap();
    let model = load_gguf_model(&path, &WeightOptions::as_stored()).unwrap();
    check_batched_equals_alone(model.as_ref(), 1e-3);
}

#[test]
fn batched_equals_alone_with_chunked_prefill_and_preemption_q4_1() {
    // Q4_1 runs on wick's own 4-bit kernel (the default for SmolLM2's file); it must be as
    // row-independent as the Q8_0 one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    TinyLlama::default().write_gguf(&path, GgmlDType::Q4_1).unwrap();
    let model = load_gguf_model(&path, &WeightOptions::default()).unwrap();
    check_batched_equals_alone(model.as_ref(), 0.0);
}

/// Window of the sliding tiny llama: shorter than 7 of the 10 prompts, and every sequence
/// (prompt + 8 generated tokens) grows past it.
const WINDOW: usize = 7;

fn sliding_tiny() -> TinyLlama {
    TinyLlama { sliding_window: Some(WINDOW), ..TinyLlama::default() }
}

/// The layout the sliding tiny llama's HF config gives: every layer `Sliding(WINDOW)`.
fn sliding_layout(dir: &std::path::Path) -> KvLayout {
    sliding_tiny().write_hf(dir).unwrap();
    let model = load_safetensors_model(dir, &WeightOptions::default()).unwrap();
    let layout = model.config().kv_layout.clone();
    assert_eq!(layout.groups, vec![AttentionKind::Sliding(WINDOW)], "HF sliding_window gives one sliding group");
    layout
}

/// Batched == alone on a sliding-window layout with 7 blocks (28 tokens, for sequences of up
/// to 48 tokens and 228 tokens of demand), where blocks must be released and reused
/// mid-sequence for the run to fit at all.
fn check_sliding(model: &dyn CausalLm, layout: &KvLayout, tol: f32) {
    let events = check_batched_equals_alone_with(model, layout, 7, tol);
    assert!(events.released > 0, "blocks left the window and were released mid-sequence: {events:?}");
    assert!(events.reused > 0, "released blocks were handed out again: {events:?}");
    eprintln!("sliding window {WINDOW}, 7 blocks of {BLOCK}: {events:?}");
}

#[test]
fn sliding_window_batched_equals_alone_with_blocks_released_mid_sequence_f32() {
    let dir = tempfile::tempdir().unwrap();
    let layout = sliding_layout(dir.path());
    let model = load_safetensors_model(dir.path(), &WeightOptions::default()).unwrap();
    assert_eq!(&model.config().kv_layout, &layout);
    check_sliding(model.as_ref(), &layout, 1e-4);
    // Releasing blocks changes nothing: the same model alone over a cache that keeps every
    // block (full layout; the model still masks with its window) gives the same bits.
    let kept = run_alone(model.as_ref(), &KvLayout::uniform(layout.num_layers(), layout.num_kv_heads, layout.head_dim));
    assert_eq!(kept, run_alone(model.as_ref(), &layout));
    // And the window matters: without it the long prompts continue differently.
    let full_dir = tempfile::tempdir().unwrap();
    TinyLlama::default().write_hf(full_dir.path()).unwrap();
    let full = load_safetensors_model(full_dir.path(), &WeightOptions::default()).unwrap();
    let unwindowed = run_alone(full.as_ref(), &full.config().kv_layout);
    let differ = (0..10u64).filter(|id| unwindowed[id].1 != kept[id].1).count();
    assert!(differ >= 7, "only {differ} sequences changed with the window");
}

/// The GGUF twin of the sliding tiny llama, on a quantized path, with the KV layout of the HF
/// config (every layer `Sliding(WINDOW)`): the cache's layout alone windows the attention.
fn sliding_gguf(dtype: GgmlDType, opts: &WeightOptions, tol: f32) {
    let dir = tempfile::tempdir().unwrap();
    let layout = sliding_layout(dir.path());
    let path = dir.path().join("tiny.gguf");
    sliding_tiny().write_gguf(&path, dtype).unwrap();
    let model = load_gguf_model(&path, opts).unwrap();
    check_sliding(model.as_ref(), &layout, tol);
}

#[test]
fn sliding_window_batched_equals_alone_with_blocks_released_mid_sequence_q8_0() {
    sliding_gguf(GgmlDType::Q8_0, &WeightOptions::default(), 0.0);
}

#[test]
fn sliding_window_batched_equals_alone_with_blocks_released_mid_sequence_q4_1() {
    sliding_gguf(GgmlDType::Q4_1, &WeightOptions::default(), 0.0);
}

/// Batched == alone, exactly, per architecture: every dense fixture of
/// `shared/fixtures/archs` (gemma3's local layers have a 16-token window, shorter than most
/// prompts here), its float weights quantized in situ to Q8_0 so every matmul runs on wick's
/// batch-invariant kernel, with chunked prefill and forced preemption; sliding-window groups
/// release blocks mid-sequence.
fn check_fixture_batched_equals_alone(name: &str) {
    let path = crate::archs::fixtures_dir().join(format!("{name}.gguf"));
    let opts = WeightOptions { quantize_floats: Some(GgmlDType::Q8_0), ..WeightOptions::default() };
    let model = load_gguf_model(&path, &opts).unwrap();
    let layout = model.config().kv_layout.clone();
    let events = check_batched_equals_alone_with(model.as_ref(), &layout, 14 * layout.num_groups(), 0.0);
    eprintln!("{name}: {} KV groups, {events:?}", layout.num_groups());
}

#[test]
fn every_architecture_batched_equals_alone_exactly() {
    for name in ["llama", "qwen2", "qwen3", "gemma3", "phi3", "llama-q4_k_m", "qwen3-q8_0", "gpt-oss"] {
        check_fixture_batched_equals_alone(name);
    }
}
