//! Scheduler tests with fake sequences (payload `()`): a tiny driver plays the engine's part,
//! "sampling" a token for every sequence whose logits the plan asks for.

use super::*;

fn sched(num_blocks: usize, block_size: usize, max_num_seqs: usize, budget: usize) -> Scheduler<()> {
    sched_groups(num_blocks, block_size, max_num_seqs, budget, vec![AttentionKind::Full])
}

fn sched_groups(
    num_blocks: usize,
    block_size: usize,
    max_num_seqs: usize,
    budget: usize,
    groups: Vec<AttentionKind>,
) -> Scheduler<()> {
    Scheduler::new(
        SchedulerConfig { max_num_seqs, max_num_batched_tokens: budget, max_prefill_tokens_per_decode_step: budget },
        BlockPool::new(num_blocks, block_size),
        groups,
    )
}

fn seq(id: SeqId, prompt_len: usize) -> Sequence<()> {
    Sequence::new(id, (0..prompt_len as u32).map(|t| t + 100 * id as u32).collect(), ())
}

/// Runs one step as the engine would: plan, commit, append a token to every sampled sequence
/// (the token is `id * 1000 + output length`, so outputs are checkable), then remove the
/// sequences that reached `total_len(id)` tokens. Returns the plan.
fn step(s: &mut Scheduler<()>, total_len: impl Fn(SeqId) -> usize) -> StepPlan {
    let plan = s.plan();
    let batch = s.build_batch(&plan);
    assert_eq!(batch.num_tokens(), plan.num_tokens());
    assert_eq!(batch.logits_rows.len(), plan.sampled().count());
    s.commit(&plan);
    for sc in plan.sampled() {
        let out_len = s.get(sc.id).map(|q| q.output_ids().len()).unwrap_or(0);
        s.append_token(sc.id, sc.id as u32 * 1000 + out_len as u32);
        if s.get(sc.id).map(|q| q.len()) == Some(total_len(sc.id)) {
            s.remove(sc.id);
        }
    }
    plan
}

fn tokens_of(plan: &StepPlan, id: SeqId) -> usize {
    plan.seqs.iter().filter(|s| s.id == id).map(|s| s.num_tokens).sum()
}

#[test]
fn token_budget_is_respected_and_fills_with_a_chunk() {
    let mut s = sched(100, 4, 8, 16);
    for id in 0..5 {
        s.add(seq(id, 10));
    }
    let plan = s.plan();
    assert_eq!(plan.num_tokens(), 16);
    assert_eq!(plan.seqs[0], ScheduledSeq { id: 0, num_tokens: 10, wants_logits: true });
    assert_eq!(plan.seqs[1], ScheduledSeq { id: 1, num_tokens: 6, wants_logits: false });
    assert_eq!(s.num_running(), 2);
    assert_eq!(s.num_waiting(), 3);
}

#[test]
fn waiting_sequences_are_admitted_in_arrival_order() {
    // The head needs 5 blocks but only 4 are free: the small sequence behind it must wait too.
    let mut s = sched(6, 4, 8, 64);
    s.add(seq(0, 8)); // 2 blocks
    assert_eq!(tokens_of(&s.plan(), 0), 8);
    s.add(seq(1, 20)); // 5 blocks, 4 free
    s.add(seq(2, 3)); // 1 block would fit
    let plan = s.plan();
    assert_eq!(tokens_of(&plan, 1), 0);
    assert_eq!(tokens_of(&plan, 2), 0, "a later arrival must not overtake the head of the queue");
    s.remove(0);
    let plan = s.plan();
    let order: Vec<(SeqId, usize)> = plan.seqs.iter().map(|q| (q.id, q.num_tokens)).collect();
    assert_eq!(order, vec![(1, 20), (2, 3)]);
}

#[test]
fn max_num_seqs_caps_the_running_batch() {
    let mut s = sched(100, 4, 2, 100);
    for id in 0..3 {
        s.add(seq(id, 3));
    }
    let plan = s.plan();
    assert_eq!(plan.seqs.len(), 2);
    assert_eq!(s.num_running(), 2);
    assert_eq!(s.num_waiting(), 1);
}

#[test]
fn long_prompt_is_prefilled_in_chunks_while_decodes_keep_flowing() {
    let mut s = sched(100, 4, 8, 8);
    s.add(seq(0, 3));
    let first = step(&mut s, |_| 1000);
    assert_eq!(tokens_of(&first, 0), 3);
    s.add(seq(1, 20));
    let mut chunks = Vec::new();
    for _ in 0..3 {
        let plan = step(&mut s, |_| 1000);
        assert!(plan.num_tokens() <= 8);
        assert_eq!(plan.seqs[0], ScheduledSeq { id: 0, num_tokens: 1, wants_logits: true }, "decode first");
        let chunk = plan.seqs.iter().find(|q| q.id == 1).copied().unwrap();
        chunks.push((chunk.num_tokens, chunk.wants_logits));
    }
    assert_eq!(chunks, vec![(7, false), (7, false), (6, true)]);
    let long = s.get(1).unwrap();
    assert_eq!(long.num_computed_tokens, 20);
    assert_eq!(long.output_ids(), &[1000]);
    assert_eq!(long.block_tables.len(), 1, "one group");
    assert_eq!(long.block_tables[0].len(), 5);
}

#[test]
fn build_batch_packs_positions_and_block_tables() {
    let mut s = sched(100, 4, 8, 8);
    s.add(seq(0, 6));
    s.add(seq(1, 5));
    let plan = s.plan();
    let batch = s.build_batch(&plan);
    assert_eq!(batch.input_ids, vec![0, 1, 2, 3, 4, 5, 100, 101]);
    assert_eq!(batch.positions, vec![0, 1, 2, 3, 4, 5, 0, 1]);
    assert_eq!(batch.logits_rows, vec![5], "seq 1's chunk does not end its prompt");
    assert_eq!(batch.seqs[0].block_tables[0].len(), 2);
    assert_eq!(batch.seqs[1].block_tables[0].len(), 1);
    assert_eq!(batch.seqs[1].context_len, 2);
    s.commit(&plan);
    s.append_token(0, 7);
    let plan = s.plan();
    let batch = s.build_batch(&plan);
    assert_eq!(batch.input_ids, vec![7, 102, 103, 104]);
    assert_eq!(batch.positions, vec![6, 2, 3, 4]);
    assert_eq!(batch.logits_rows, vec![0, 3]);
}

#[test]
fn preemption_frees_blocks_and_the_victim_resumes_with_its_output() {
    // 4 blocks of 2 tokens. Two sequences of 3 prompt tokens (2 blocks each) fill the cache;
    // the first decode that crosses a block boundary preempts the younger one.
    let mut s = sched(4, 2, 8, 64);
    s.add(seq(0, 3));
    s.add(seq(1, 3));
    let total = |_| 7;
    let plan = step(&mut s, total);
    assert_eq!(plan.seqs.len(), 2);
    assert_eq!(s.pool().num_free(), 0);
    // Both now have 4 tokens, 3 computed: the decode of token 4 fits in block 2 for both.
    let plan = step(&mut s, total);
    assert!(plan.preempted.is_empty());
    // 5 tokens, 4 computed: position 4 needs a third block each; none is free.
    let plan = step(&mut s, total);
    assert_eq!(plan.preempted, vec![1]);
    assert_eq!(plan.seqs, vec![ScheduledSeq { id: 0, num_tokens: 1, wants_logits: true }]);
    let victim = s.get(1).unwrap();
    assert_eq!(victim.status, SeqStatus::Waiting);
    assert_eq!(victim.num_blocks_held(), 0);
    assert_eq!(victim.num_computed_tokens, 0);
    assert_eq!(victim.output_ids(), &[1000, 1001], "generated tokens are kept for the recompute");
    assert_eq!(s.pool().num_used(), 3, "the victim's two blocks were freed, one went to seq 0");
    // Seq 0 finishes (7 tokens), then seq 1 is recomputed over prompt + output and resumes.
    let mut resumed = None;
    for _ in 0..10 {
        let plan = step(&mut s, total);
        if let Some(sc) = plan.seqs.iter().find(|q| q.id == 1 && q.num_tokens > 1) {
            resumed = Some(*sc);
        }
        if s.is_empty() {
            break;
        }
    }
    assert_eq!(resumed, Some(ScheduledSeq { id: 1, num_tokens: 5, wants_logits: true }));
    assert!(s.is_empty(), "both sequences finish");
    assert_eq!(s.pool().num_free(), 4);
    assert_eq!(s.num_preemptions(), 1);
}

#[test]
fn youngest_sequence_short_of_blocks_preempts_itself_without_deadlock() {
    // 4 blocks of 2. Seq 0 (3 tokens) and seq 1 (4 tokens) take 2 blocks each. Next step seq 0's
    // decode (position 3) fits its second block, but seq 1's (position 4) needs a third: seq 1
    // is the most recently admitted, so it preempts itself.
    let mut s = sched(4, 2, 8, 64);
    s.add(seq(0, 3));
    s.add(seq(1, 4));
    let total = |id| if id == 0 { 6 } else { 7 };
    step(&mut s, total);
    let plan = step(&mut s, total);
    assert_eq!(plan.preempted, vec![1]);
    assert_eq!(plan.seqs, vec![ScheduledSeq { id: 0, num_tokens: 1, wants_logits: true }]);
    for _ in 0..20 {
        if s.is_empty() {
            break;
        }
        step(&mut s, total);
    }
    assert!(s.is_empty(), "every sequence completes");
    assert_eq!(s.pool().num_free(), 4);
}

#[test]
fn removing_a_sequence_frees_its_blocks_wherever_it_is() {
    let mut s = sched(10, 4, 8, 64);
    s.add(seq(0, 9)); // 3 blocks
    s.add(seq(1, 4)); // 1 block
    s.plan();
    s.add(seq(2, 4)); // still waiting
    assert_eq!(s.pool().num_used(), 4);
    let removed = s.remove_where(|q| q.id != 1);
    assert_eq!(removed.len(), 2);
    assert_eq!(s.pool().num_used(), 1);
    assert_eq!(s.num_running(), 1);
    assert_eq!(s.num_waiting(), 0);
    assert_eq!(s.get(1).map(|q| q.num_blocks_held()), Some(1));
}

// ---- KV-cache groups: sliding-window groups release pages, counted over all groups ----

use crate::kv_cache::{AttentionKind::Full, AttentionKind::Sliding, KvLayout, NO_BLOCK};

/// Between steps: every running sequence has one table per group; a sliding group's entries
/// before the next query's window are released and the rest are real; no page is in two
/// places, and the pool counts exactly the pages the sequences hold.
fn check_tables(s: &Scheduler<()>) {
    let bs = s.pool().block_size();
    let mut seen = std::collections::HashSet::new();
    for q in s.iter() {
        if q.status == SeqStatus::Waiting {
            assert!(q.block_tables.is_empty(), "a waiting sequence holds no pages");
            continue;
        }
        assert_eq!(q.block_tables.len(), s.groups().len());
        for (kind, table) in s.groups().iter().zip(&q.block_tables) {
            assert!(table.len() >= q.num_computed_tokens.div_ceil(bs), "table covers the computed tokens");
            let live = kind.first_live_block(q.num_computed_tokens, bs);
            for (j, &b) in table.iter().enumerate() {
                assert_eq!(b == NO_BLOCK, j < live, "seq {} {kind:?} entry {j} of {table:?}", q.id);
                if b != NO_BLOCK {
                    assert!(seen.insert(b), "block {b} held twice");
                }
            }
        }
    }
    assert_eq!(seen.len(), s.pool().num_used(), "the pool counts exactly the held pages");
}

#[test]
fn sliding_sequence_past_the_window_holds_its_window_and_reuses_freed_blocks() {
    // Window 8, blocks of 4, 4-token steps: a 6-block pool runs a 90-token sequence (23 blocks
    // of context) only because released blocks come back and are handed out again.
    let (w, bs, budget) = (8, 4, 4);
    let mut s = sched_groups(6, bs, 4, budget, vec![Sliding(w)]);
    s.add(seq(0, 10));
    let mut handed_out = std::collections::HashSet::new();
    let mut max_held = 0;
    for _ in 0..200 {
        if s.is_empty() {
            break;
        }
        let plan = step(&mut s, |_| 90);
        assert!(plan.preempted.is_empty());
        check_tables(&s);
        if let Some(q) = s.get(0) {
            handed_out.extend(q.block_tables[0].iter().copied().filter(|&b| b != NO_BLOCK));
            max_held = max_held.max(q.num_blocks_held());
            if q.num_computed_tokens > w + bs {
                assert_eq!(q.num_blocks_held(), Sliding(w).blocks_held(q.num_computed_tokens, bs));
                assert!(q.block_tables[0][0] == NO_BLOCK, "the first block left the window");
            }
        }
    }
    assert!(s.is_empty(), "the sequence finished");
    assert!(max_held <= Sliding(w).peak_blocks(90, budget, bs), "held {max_held} blocks");
    assert!(max_held <= 4, "O(window) blocks: {max_held}");
    // 23 blocks of context on at most `max_held` pages: released pages are handed out again,
    // before the pool's never-used ones (their memory is resident already).
    assert!(handed_out.len() <= max_held + 1, "{} distinct pages for {max_held} held", handed_out.len());
    assert_eq!(s.pool().num_free(), 6);
}

#[test]
fn mixed_groups_hold_full_context_and_window() {
    // One sliding and one full group per sequence, several sequences decoding side by side.
    let (w, bs) = (6, 2);
    let layout = KvLayout::new(&[Sliding(w), Full], 1, 8);
    let mut s = sched_groups(200, bs, 4, 8, layout.groups.clone());
    for id in 0..3 {
        s.add(seq(id, 5 + 7 * id as usize));
    }
    for _ in 0..100 {
        if s.is_empty() {
            break;
        }
        step(&mut s, |id| 30 + id as usize);
        check_tables(&s);
        for q in s.iter() {
            if q.num_uncomputed() == 1 {
                assert_eq!(q.num_blocks_held(), layout.blocks_held(q.num_computed_tokens, bs));
                assert_eq!(q.block_tables[1].len(), q.num_computed_tokens.div_ceil(bs), "full group keeps all");
            }
        }
    }
    assert!(s.is_empty());
    assert_eq!(s.pool().num_free(), 200);
}

#[test]
fn admission_counts_pages_over_groups() {
    // Two sliding groups (window 4) and one full, blocks of 4, 8-token steps. A 40-token
    // prompt needs 10 full-group pages and at most ceil((4 - 1 + 8) / 4) + 1 = 4 per sliding
    // group: 18 pages, not the 30 of three full groups.
    let groups = vec![Sliding(4), Sliding(4), Full];
    let s = sched_groups(18, 4, 4, 8, groups.clone());
    assert_eq!(s.peak_blocks(40), 18);
    let mut short = sched_groups(17, 4, 4, 8, groups.clone());
    short.add(seq(0, 40));
    assert!(short.plan().is_empty(), "17 free pages are one too few");
    assert_eq!(short.num_waiting(), 1);
    let mut s = sched_groups(18, 4, 4, 8, groups);
    s.add(seq(0, 40));
    let plan = s.plan();
    assert_eq!(plan.seqs, vec![ScheduledSeq { id: 0, num_tokens: 8, wants_logits: false }]);
    assert_eq!(s.pool().num_used(), 6, "only the first chunk's pages, in each of the 3 groups");
    s.commit(&plan);
    // The whole prompt runs without preemption, and the pool never goes past the bound.
    let mut max_used = 0;
    while s.get(0).is_some_and(|q| q.num_uncomputed() > 0) {
        let plan = step(&mut s, |_| 41);
        assert!(plan.preempted.is_empty());
        check_tables(&s);
        max_used = max_used.max(s.pool().num_used());
    }
    assert!(max_used <= 18, "used {max_used}");
}

#[test]
fn preemption_frees_every_group_and_counts_pages_over_groups() {
    // [sliding(4), full], blocks of 2, 8 pages. Two 3-token prompts take 2 + 2 pages each.
    // The decode at position 4 needs a third block in both groups of both sequences (4 pages)
    // and none is free: the younger is preempted, all 4 of its pages return.
    let mut s = sched_groups(8, 2, 8, 64, vec![Sliding(4), Full]);
    s.add(seq(0, 3));
    s.add(seq(1, 3));
    let total = |_| 9;
    let plan = step(&mut s, total);
    assert_eq!(plan.seqs.len(), 2);
    assert_eq!(s.pool().num_free(), 0);
    check_tables(&s);
    assert!(step(&mut s, total).preempted.is_empty(), "position 3 fits the second blocks");
    let plan = step(&mut s, total);
    assert_eq!(plan.preempted, vec![1]);
    assert_eq!(plan.seqs, vec![ScheduledSeq { id: 0, num_tokens: 1, wants_logits: true }]);
    let victim = s.get(1).unwrap();
    assert!(victim.block_tables.is_empty());
    assert_eq!(victim.num_computed_tokens, 0);
    check_tables(&s);
    // Seq 0 has 5 computed tokens: the next query (position 5) sees 2..=5, so the sliding
    // group released block 0: 2 sliding + 3 full pages.
    let q = s.get(0).unwrap();
    assert_eq!(q.block_tables[0][0], NO_BLOCK);
    assert_eq!((q.num_blocks_held(), s.pool().num_used()), (5, 5));
    for _ in 0..40 {
        if s.is_empty() {
            break;
        }
        step(&mut s, total);
        check_tables(&s);
    }
    assert!(s.is_empty(), "both sequences finish");
    assert_eq!(s.pool().num_free(), 8);
}

#[test]
fn remove_frees_the_pages_of_every_group() {
    let mut s = sched_groups(40, 2, 8, 64, vec![Sliding(3), Full, Sliding(3)]);
    s.add(seq(0, 9));
    s.add(seq(1, 4));
    for _ in 0..6 {
        step(&mut s, |_| 100);
    }
    s.add(seq(2, 4));
    check_tables(&s);
    let held0 = s.get(0).unwrap().num_blocks_held();
    assert!(s.get(0).unwrap().block_tables[0].contains(&NO_BLOCK), "seq 0 is past its window");
    let used = s.pool().num_used();
    let removed = s.remove(0).unwrap();
    assert!(removed.block_tables.is_empty());
    assert_eq!(s.pool().num_used(), used - held0);
    s.remove_where(|_| true);
    assert_eq!(s.pool().num_free(), 40);
}

#[test]
fn kv_bytes_per_token_of_a_4k_sequence_on_gemma3_270m() {
    // Gemma 3 270M's KV shape: 18 layers (5 of every 6 sliding, window 512), 1 kv head,
    // head_dim 256, blocks of 16. A 4096-token prompt runs through the real scheduler in
    // 512-token chunks; what its tables hold afterwards, in bytes per token.
    let kinds: Vec<_> = (0..18).map(|il| if il % 6 < 5 { Sliding(512) } else { Full }).collect();
    let (len, bs) = (4096, 16);
    let held_bytes_per_token = |layout: &KvLayout| {
        let mut s = sched_groups(1000, bs, 1, 512, layout.groups.clone());
        s.add(seq(0, len));
        while s.get(0).unwrap().num_computed_tokens < len {
            let plan = s.plan();
            s.commit(&plan);
            check_tables(&s);
        }
        let used = s.pool().num_used();
        assert_eq!(used, layout.blocks_held(len, bs));
        (used * layout.bytes_per_block(bs)) as f64 / len as f64
    };
    let before = held_bytes_per_token(&KvLayout::uniform(18, 1, 256));
    let grouped = KvLayout::new(&kinds, 1, 256);
    let after = held_bytes_per_token(&grouped);
    println!(
        "Gemma 3 270M, 4096-token sequence: KV bytes per token {before:.0} with every layer full, \
         {after:.0} with KV-cache groups ({}), {:.2}x",
        grouped.describe(),
        after / before
    );
    assert_eq!(before, 36864.0, "18 layers x 2 x 256 dims x 4 bytes");
    assert_eq!(after, grouped.kv_bytes_per_token(len, bs));
    assert!(after < 0.5 * before, "{after} vs {before}");
}

#[test]
fn prompt_tokens_are_capped_in_steps_that_decode() {
    let mut s = Scheduler::new(
        SchedulerConfig { max_num_seqs: 4, max_num_batched_tokens: 32, max_prefill_tokens_per_decode_step: 8 },
        BlockPool::new(64, 4),
        vec![AttentionKind::Full],
    );
    s.add(seq(0, 20));
    let first = step(&mut s, |_| 100);
    assert_eq!(tokens_of(&first, 0), 20, "nothing decodes yet: the whole budget prefills");
    s.add(seq(1, 20));
    let second = step(&mut s, |_| 100);
    assert_eq!((tokens_of(&second, 0), tokens_of(&second, 1)), (1, 8), "a decode step takes 8 prompt tokens");
    let third = step(&mut s, |_| 100);
    assert_eq!(tokens_of(&third, 1), 8);
}
