//! Batched == alone: prompts of different lengths run one at a time, then together through the
//! real `Scheduler` and a tiny random llama, with staggered arrivals, a token budget small
//! enough to force chunked prefill and a KV cache small enough to force preemption by
//! recompute. The together run is teacher-forced with the alone run's tokens, so every logits
//! row must match its alone counterpart within tolerance, and greedy picks must agree.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;
use wick_engine::kv_cache::{BlockPool, PagedKvCache};
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

/// Drives the scheduler and the model as the engine does, greedy or teacher-forced.
fn run(model: &dyn CausalLm, prompts: &[Vec<u32>], cfg: &Run) -> (Outputs, u64) {
    let mc = model.config();
    let mut cache = PagedKvCache::new(&mc.kv_layout, cfg.num_blocks, BLOCK);
    let sched_cfg = SchedulerConfig { max_num_seqs: 8, max_num_batched_tokens: cfg.budget };
    let mut sched: Scheduler<()> = Scheduler::new(sched_cfg, BlockPool::new(cfg.num_blocks, BLOCK));
    let mut out: Outputs = HashMap::new();
    let mut added = 0;
    for step in 0..10_000 {
        while added < prompts.len() && (cfg.arrival)(added) <= step {
            sched.add(Sequence::new(added as u64, prompts[added].clone(), ()));
            added += 1;
        }
        if added == prompts.len() && sched.is_empty() {
            return (out, sched.num_preemptions());
        }
        let plan = sched.plan();
        if plan.is_empty() {
            continue;
        }
        let batch = sched.build_batch(&plan);
        assert!(batch.num_tokens() <= cfg.budget, "token budget exceeded");
        let logits = model.forward(&batch, &mut cache).expect("forward").to_vec2::<f32>().expect("f32 logits");
        sched.commit(&plan);
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

fn check_batched_equals_alone(model: &dyn CausalLm, tol: f32) {
    let prompts = prompts(model.config().vocab_size as u32);
    // Alone: each sequence by itself, whole prompt in one step, plenty of cache.
    let mut alone: Outputs = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        let solo = Run { budget: 1024, num_blocks: 64, arrival: |_| 0, forced: None };
        let (o, preempted) = run(model, std::slice::from_ref(p), &solo);
        assert_eq!(preempted, 0);
        alone.insert(i as u64, o[&0].clone());
    }
    // Together: 12-token steps, 14 blocks (56 tokens) for 228 tokens of demand, staggered.
    let together = Run { budget: 12, num_blocks: 14, arrival: |i| (i / 3) * 2, forced: Some(alone.clone()) };
    let (batched, preemptions) = run(model, &prompts, &together);
    assert!(preemptions > 0, "the cache was meant to force preemption");
    for (id, (tokens, rows)) in &alone {
        let (b_tokens, b_rows) = &batched[id];
        assert_eq!(b_tokens, tokens);
        for (k, (a, b)) in rows.iter().zip(b_rows).enumerate() {
            let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(d <= tol, "sequence {id} output {k}: batched logits differ from alone by {d}");
            assert_eq!(argmax(b), tokens[k], "sequence {id} output {k}: greedy pick changed");
        }
    }
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
