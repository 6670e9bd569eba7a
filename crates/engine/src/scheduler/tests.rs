//! Scheduler tests with fake sequences (payload `()`): a tiny driver plays the engine's part,
//! "sampling" a token for every sequence whose logits the plan asks for.

use super::*;

fn sched(num_blocks: usize, block_size: usize, max_num_seqs: usize, budget: usize) -> Scheduler<()> {
    Scheduler::new(
        SchedulerConfig { max_num_seqs, max_num_batched_tokens: budget },
        BlockPool::new(num_blocks, block_size),
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
    assert_eq!(long.block_table.len(), 5);
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
    assert_eq!(batch.seqs[0].block_table.len(), 2);
    assert_eq!(batch.seqs[1].block_table.len(), 1);
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
    assert_eq!(victim.block_table.len(), 0);
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
    assert_eq!(s.get(1).map(|q| q.block_table.len()), Some(1));
}
