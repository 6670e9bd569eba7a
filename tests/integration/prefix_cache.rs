//! Prefix-cache hit == miss, exactly, through the real `Scheduler` and real models (the
//! llama.cpp fixtures, weights quantized in situ to Q8_0 so every matmul runs on wick's
//! batch-invariant kernels, K/V stored as f16 as the server does).
//!
//! The reference runs every prompt alone with the cache off. The cached runs send prompts that
//! share a long system prefix, repeat each other, and continue each other (a chat resent turn by
//! turn, and resent with their answers, which continue a cached tail), with the cache warm, with a
//! pool small enough to evict part of it, and with a token budget and pool that force preemption;
//! they are teacher-forced with the reference's tokens, so every logits row must be bit-identical
//! to the reference's, and the runs must actually hit (and evict, and preempt) for the test to
//! count.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;
use wick_engine::kv_cache::{BlockPool, KvDtype, KvLayout, PagedKvCache};
use wick_engine::model::{load_gguf_model, CausalLm, WeightOptions};
use wick_engine::scheduler::{PrefixStats, Scheduler, SchedulerConfig};
use wick_engine::sequence::Sequence;

const BLOCK: usize = 4;
const GEN: usize = 6;

/// Per prompt: generated tokens and the logits row behind each.
type Outputs = HashMap<u64, (Vec<u32>, Vec<Vec<f32>>)>;

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0 as u32
}

/// A 23-token system prefix shared by most prompts, distinct tails, exact repeats, and a
/// conversation whose turns extend each other.
fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    let sys: Vec<u32> = (0..23).map(|j| (j * 53 + 7) % vocab).collect();
    let tail = |k: u32, n: u32| (0..n).map(move |j| (j * 31 + k * 97 + 3) % vocab);
    let with = |k: u32, n: u32| sys.iter().copied().chain(tail(k, n)).collect::<Vec<u32>>();
    let turn1 = with(1, 5);
    let turn2: Vec<u32> = turn1.iter().copied().chain(tail(9, 11)).collect();
    let turn3: Vec<u32> = turn2.iter().copied().chain(tail(10, 6)).collect();
    vec![with(0, 9), turn1, with(2, 1), with(0, 9), turn2, sys.clone(), with(3, 17), turn3, with(2, 1)]
}

struct Run {
    budget: usize,
    num_blocks: usize,
    caching: bool,
    /// Prompt `i` is added at step `arrival(i)`.
    arrival: fn(usize) -> usize,
}

/// What a cached run did.
#[derive(Debug, Default)]
struct Report {
    prefix: PrefixStats,
    evictions: u64,
    preemptions: u64,
    /// Pages copied from cached tails (the partly filled last page an ended sequence left).
    tail_copies: usize,
}

fn run(
    model: &dyn CausalLm,
    layout: &KvLayout,
    prompts: &[Vec<u32>],
    cfg: &Run,
    forced: Option<&Outputs>,
) -> (Outputs, Report) {
    let mut cache = PagedKvCache::new(layout, cfg.num_blocks, BLOCK);
    let mut pool = BlockPool::new(cfg.num_blocks, BLOCK);
    if cfg.caching {
        pool = pool.with_prefix_caching();
    }
    let sched_cfg = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: cfg.budget,
        max_prefill_tokens_per_decode_step: cfg.budget,
    };
    let mut sched: Scheduler<()> = Scheduler::new(sched_cfg, pool, layout.groups.clone());
    let mut out: Outputs = HashMap::new();
    let mut added = 0;
    let mut tail_copies = 0;
    for step in 0..20_000 {
        while added < prompts.len() && (cfg.arrival)(added) <= step {
            sched.add(Sequence::new(added as u64, prompts[added].clone(), ()));
            added += 1;
        }
        if added == prompts.len() && sched.is_empty() {
            let report = Report {
                prefix: sched.prefix_stats(),
                evictions: sched.pool().num_evictions(),
                preemptions: sched.num_preemptions(),
                tail_copies,
            };
            return (out, report);
        }
        let plan = sched.plan();
        for c in &plan.copies {
            cache.copy_page(c.src as usize, c.dst as usize);
        }
        tail_copies += plan.copies.len();
        if plan.is_empty() {
            continue;
        }
        let batch = sched.build_batch(&plan);
        let logits = model.forward(&batch, &mut cache).expect("forward").to_vec2::<f32>().expect("f32 logits");
        sched.commit(&plan);
        for (s, row) in plan.sampled().zip(logits) {
            let (toks, rows) = out.entry(s.id).or_default();
            let idx = sched.get(s.id).map(|q| q.output_ids().len()).expect("scheduled sequence exists");
            let next = forced.map_or_else(|| argmax(&row), |f| f[&s.id].0[idx]);
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
    panic!("the scheduler did not finish within 20000 steps");
}

/// Every prompt alone, cache off: the reference.
fn reference(model: &dyn CausalLm, layout: &KvLayout, prompts: &[Vec<u32>]) -> Outputs {
    let mut all = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        let cfg = Run { budget: 1024, num_blocks: 64 * layout.num_groups(), caching: false, arrival: |_| 0 };
        let (o, _) = run(model, layout, std::slice::from_ref(p), &cfg, None);
        all.insert(i as u64, o[&0].clone());
    }
    all
}

fn assert_same(reference: &Outputs, got: &Outputs, what: &str) {
    for (id, (tokens, rows)) in reference {
        let (g_tokens, g_rows) = &got[id];
        assert_eq!(g_tokens, tokens, "{what}: prompt {id}");
        for (k, (a, b)) in rows.iter().zip(g_rows).enumerate() {
            assert!(a == b, "{what}: prompt {id} output {k}: logits differ from the cache-off run");
        }
    }
}

fn check(name: &str) {
    let path = crate::archs::fixtures_dir().join(format!("{name}.gguf"));
    let opts = WeightOptions { quantize_floats: Some(GgmlDType::Q8_0), ..WeightOptions::default() };
    let model = load_gguf_model(&path, &opts).unwrap();
    let layout = model.config().kv_layout.clone().with_dtype(KvDtype::F16);
    let g = layout.num_groups();
    let vocab = model.config().vocab_size as u32;
    let mut prompts = prompts(vocab);
    // Chat turns resent with their answers: prompts 1 and 7 followed by what they generate and
    // a new message, so each continues a finished sequence's computed tokens, its partly filled
    // last page (1 and 2 of 4 tokens) included: a tail hit.
    let first = reference(model.as_ref(), &layout, &prompts);
    for (i, k) in [(1u64, 11u32), (7, 12)] {
        let message = (0..5).map(|j| (j * 17 + k * 29) % vocab);
        prompts.push(prompts[i as usize].iter().chain(&first[&i].0).copied().chain(message).collect());
    }
    let want = reference(model.as_ref(), &layout, &prompts);

    // Warm: prompts arrive one after another, plenty of pages.
    let warm = Run { budget: 64, num_blocks: 96 * g, caching: true, arrival: |i| 3 * i };
    let (got, r) = run(model.as_ref(), &layout, &prompts, &warm, Some(&want));
    assert_same(&want, &got, &format!("{name} warm"));
    assert!(r.prefix.hit_tokens >= 100, "{name} warm: expected hits, got {r:?}");
    assert_eq!(r.tail_copies, 2 * g, "{name} warm: each resent turn copies its tail in every group: {r:?}");
    eprintln!("{name} warm: {r:?}");

    // Partly evicted: a pool that holds about two prompts, so cached blocks are evicted and
    // later prompts find only part of their prefix.
    let small = Run { budget: 64, num_blocks: 20 * g, caching: true, arrival: |i| 3 * i };
    let (got, r) = run(model.as_ref(), &layout, &prompts, &small, Some(&want));
    assert_same(&want, &got, &format!("{name} partly evicted"));
    assert!(r.evictions > 0 && r.prefix.hit_tokens > 0, "{name} partly evicted: {r:?}");
    eprintln!("{name} partly evicted: {r:?}");

    // Under preemption: everything at once, 10-token steps, a pool too small for the batch
    // (how small depends on the model's groups: smaller pools until one run preempts).
    let mut preempted = false;
    for pages in [18, 12, 9, 7] {
        let tight = Run { budget: 10, num_blocks: pages * g, caching: true, arrival: |i| i / 2 };
        let (got, r) = run(model.as_ref(), &layout, &prompts, &tight, Some(&want));
        assert_same(&want, &got, &format!("{name} with {pages} pages per group"));
        eprintln!("{name} with {pages} pages per group: {r:?}");
        if r.preemptions > 0 && r.prefix.hit_tokens > 0 {
            preempted = true;
            break;
        }
    }
    assert!(preempted, "{name}: no pool size forced preemption");
}

#[test]
fn prefix_cache_hit_equals_miss_exactly_llama() {
    check("llama");
}

/// Gemma 3's local layers have a 16-token window: their groups cache only the window before a
/// hit, and release blocks as sequences grow.
#[test]
fn prefix_cache_hit_equals_miss_exactly_with_sliding_windows_gemma3() {
    check("gemma3");
}
