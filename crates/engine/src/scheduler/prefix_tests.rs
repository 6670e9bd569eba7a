//! Scheduler tests of the automatic prefix cache and of `fork` (payload `()`).

use super::*;
use crate::kv_cache::prefix::root_hash;

fn cached(num_blocks: usize, bs: usize, groups: Vec<AttentionKind>) -> Scheduler<()> {
    Scheduler::new(
        SchedulerConfig { max_num_seqs: 8, max_num_batched_tokens: 64, max_prefill_tokens_per_decode_step: 64 },
        BlockPool::new(num_blocks, bs).with_prefix_caching(),
        groups,
    )
}

fn seq(id: SeqId, tokens: &[u32]) -> Sequence<()> {
    Sequence::new(id, tokens.to_vec(), ())
}

/// Plans and commits one step; returns `(id, computed before, tokens run)` per scheduled seq.
fn step(s: &mut Scheduler<()>) -> Vec<(SeqId, usize, usize)> {
    let plan = s.plan();
    let out =
        plan.seqs.iter().map(|q| (q.id, s.get(q.id).map_or(0, |x| x.num_computed_tokens), q.num_tokens)).collect();
    s.commit(&plan);
    out
}

const PROMPT: [u32; 10] = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

#[test]
fn a_repeated_prompt_reuses_its_full_blocks_and_computes_the_rest() {
    let mut s = cached(16, 4, vec![AttentionKind::Full]);
    s.add(seq(0, &PROMPT));
    assert_eq!(step(&mut s), vec![(0, 0, 10)]);
    s.add(seq(1, &PROMPT));
    assert_eq!(step(&mut s), vec![(1, 8, 2)], "two full blocks hit, the tail is computed");
    let (a, b) = (&s.get(0).unwrap().block_tables[0], &s.get(1).unwrap().block_tables[0]);
    assert_eq!(a[..2], b[..2], "the prefix pages are shared");
    assert_ne!(a[2], b[2], "the partial block is not");
    assert_eq!(s.pool().refcount(a[0]), 2);
    assert_eq!(s.get(1).unwrap().cached_prompt_tokens, Some(8));
    assert_eq!(s.prefix_stats(), PrefixStats { queried_tokens: 20, hit_tokens: 8 });
}

#[test]
fn a_prompt_of_whole_blocks_still_computes_its_last_block() {
    let mut s = cached(16, 4, vec![AttentionKind::Full]);
    s.add(seq(0, &PROMPT[..8]));
    step(&mut s);
    s.add(seq(1, &PROMPT[..8]));
    assert_eq!(step(&mut s), vec![(1, 4, 4)], "the last token's logits must be computed");
}

#[test]
fn cached_blocks_outlive_their_sequence_and_salts_separate_tenants() {
    let mut s = cached(16, 4, vec![AttentionKind::Full]);
    s.add(seq(0, &PROMPT).with_hash_root(root_hash("m", Some("a"))));
    step(&mut s);
    s.remove(0);
    assert_eq!(s.pool().num_used(), 0);
    assert_eq!(s.pool().num_cached_free(), 3, "the two full blocks and the tail stay cached");
    s.add(seq(1, &PROMPT).with_hash_root(root_hash("m", Some("b"))));
    assert_eq!(step(&mut s), vec![(1, 0, 10)], "another salt never hits");
    s.add(seq(2, &PROMPT).with_hash_root(root_hash("m", Some("a"))));
    assert_eq!(step(&mut s), vec![(2, 8, 2)], "the same salt hits after its sequence ended");
}

#[test]
fn a_continuation_copies_the_tail_its_predecessor_left() {
    // A chat's next turn: the previous sequence computed 10 tokens (two full blocks of 4 and a
    // tail of 2), the next resends them and adds three.
    let mut s = cached(16, 4, vec![AttentionKind::Full]);
    s.add(seq(0, &PROMPT));
    step(&mut s);
    let tail = s.get(0).unwrap().block_tables[0][2];
    s.remove(0);
    let next: Vec<u32> = PROMPT.iter().copied().chain([20, 21, 22]).collect();
    s.add(seq(1, &next));
    let plan = s.plan();
    assert_eq!(plan.seqs, vec![ScheduledSeq { id: 1, num_tokens: 3, wants_logits: true }]);
    let own = s.get(1).unwrap().block_tables[0][2];
    assert_eq!(plan.copies, vec![PageCopy { src: tail, dst: own }], "the tail is copied into a page of its own");
    assert_ne!(own, tail);
    assert_eq!(s.get(1).unwrap().num_computed_tokens, 10);
    assert_eq!(s.get(1).unwrap().cached_prompt_tokens, Some(10));
    assert_eq!(s.prefix_stats(), PrefixStats { queried_tokens: 23, hit_tokens: 10 });
    assert_eq!(s.pool().refcount(tail), 0, "the cached tail is unpinned once the plan is made");
    s.commit(&plan);

    // The cached tail is still there for a third continuation; one that differs inside the
    // tail finds only the full blocks.
    s.add(seq(2, &next));
    assert_eq!(step(&mut s), vec![(2, 12, 1)], "seq 1's own third block is full now and registered");
    let mut other = next.clone();
    other[9] = 99;
    s.add(seq(3, &other));
    let plan = s.plan();
    assert_eq!(plan.seqs, vec![ScheduledSeq { id: 3, num_tokens: 5, wants_logits: true }]);
    assert!(plan.copies.is_empty());
}

#[test]
fn a_tail_serves_every_group_or_none() {
    // A sliding group and a full one: both pages of the tail are copied.
    let groups = vec![AttentionKind::Sliding(4), AttentionKind::Full];
    let mut s = cached(32, 4, groups);
    s.add(seq(0, &PROMPT));
    step(&mut s);
    s.remove(0);
    let next: Vec<u32> = PROMPT.iter().copied().chain([20]).collect();
    s.add(seq(1, &next));
    let plan = s.plan();
    assert_eq!(plan.seqs, vec![ScheduledSeq { id: 1, num_tokens: 1, wants_logits: true }]);
    assert_eq!(plan.copies.len(), 2);
    let x = s.get(1).unwrap();
    assert_eq!(plan.copies.iter().map(|c| c.dst).collect::<Vec<_>>(), [x.block_tables[0][2], x.block_tables[1][2]]);
}

#[test]
fn a_different_token_ends_the_hit_at_its_block() {
    let mut s = cached(16, 4, vec![AttentionKind::Full]);
    s.add(seq(0, &PROMPT));
    step(&mut s);
    let mut other = PROMPT;
    other[5] = 99; // inside block 1
    s.add(seq(1, &other));
    assert_eq!(step(&mut s), vec![(1, 4, 6)]);
}

#[test]
fn eviction_under_pressure_drops_the_tail_of_a_prefix_first() {
    // 5 pages of 4: seq 0 holds 3, leaves them cached (two full blocks and its tail; +2 free);
    // seq 1 (16 tokens) needs 4 pages, which evicts two cached pages: the end of seq 0's
    // prefix goes first.
    let mut s = cached(5, 4, vec![AttentionKind::Full]);
    s.add(seq(0, &PROMPT));
    step(&mut s);
    s.remove(0);
    s.add(seq(1, &[50; 16]));
    step(&mut s);
    assert_eq!(s.pool().num_evictions(), 2);
    s.remove(1);
    s.add(seq(2, &PROMPT));
    assert_eq!(step(&mut s), vec![(2, 4, 6)], "block 0 survived, block 1 and the tail were evicted");
}

#[test]
fn a_preempted_sequence_recomputes_from_its_own_cached_blocks() {
    // 6 pages of 2; two sequences of 5 prompt tokens grow until the pool runs out.
    let mut s = Scheduler::new(
        SchedulerConfig { max_num_seqs: 8, max_num_batched_tokens: 64, max_prefill_tokens_per_decode_step: 64 },
        BlockPool::new(6, 2).with_prefix_caching(),
        vec![AttentionKind::Full],
    );
    s.add(seq(0, &PROMPT[..5]));
    s.add(seq(1, &PROMPT[5..]));
    let mut readmitted = None;
    for t in 0..6 {
        let plan = s.plan();
        if let Some(&id) = plan.preempted.first() {
            assert_eq!(id, 1);
        }
        for q in &plan.seqs {
            let x = s.get(q.id).unwrap();
            if q.id == 1 && x.num_preemptions > 0 && readmitted.is_none() {
                readmitted = Some(x.num_computed_tokens);
            }
        }
        s.commit(&plan);
        for q in plan.sampled().map(|q| q.id).collect::<Vec<_>>() {
            s.append_token(q, 200 + t);
        }
        if t == 3 {
            s.remove(0);
        }
    }
    let computed = readmitted.expect("sequence 1 was preempted and admitted again");
    assert!(computed >= 4, "the recompute started from a hit on its own blocks, at {computed}");
}

#[test]
fn a_sliding_group_needs_only_the_window_before_the_hit() {
    // Window 4, blocks of 2: a hit at 10 tokens needs sliding blocks 3 and 4 only.
    let groups = vec![AttentionKind::Sliding(4), AttentionKind::Full];
    let mut s = cached(32, 2, groups);
    let prompt: Vec<u32> = (0..11).collect();
    s.add(seq(0, &prompt));
    step(&mut s);
    assert_eq!(s.get(0).unwrap().block_tables[0][..3], [NO_BLOCK; 3], "left the window");
    s.remove(0);
    s.add(seq(1, &prompt));
    let plan = s.plan();
    assert_eq!(plan.seqs, vec![ScheduledSeq { id: 1, num_tokens: 1, wants_logits: true }]);
    let t = &s.get(1).unwrap().block_tables;
    assert_eq!(s.get(1).unwrap().num_computed_tokens, 10);
    assert_eq!(t[0][..3], [NO_BLOCK; 3]);
    assert!(t[0][3..].iter().all(|&b| b != NO_BLOCK), "block 3 was released by seq 0 but is still cached");
    assert!(t[1].iter().all(|&b| b != NO_BLOCK));
}

#[test]
fn fork_shares_full_pages_and_copies_the_partial_one() {
    let mut s = cached(16, 4, vec![AttentionKind::Full]);
    s.add(seq(0, &PROMPT));
    step(&mut s);
    let copies = s.fork(0, seq(1, &[1])).map_err(|_| "fork refused").unwrap();
    let (a, b) = (s.get(0).unwrap(), s.get(1).unwrap());
    assert_eq!(b.tokens, a.tokens);
    assert_eq!(b.num_computed_tokens, 10);
    assert_eq!(a.block_tables[0][..2], b.block_tables[0][..2]);
    assert_eq!(copies, vec![PageCopy { src: a.block_tables[0][2], dst: b.block_tables[0][2] }]);
    assert_eq!(s.pool().refcount(a.block_tables[0][0]), 2);
    assert_eq!(s.pool().refcount(b.block_tables[0][2]), 1);
    // A fork of a sequence that is not exactly at its computed end is refused.
    s.append_token(0, 77);
    assert!(s.fork(0, seq(2, &[1])).is_err());
}

#[test]
fn prompts_arriving_together_compute_their_shared_blocks_once() {
    let mut s = cached(16, 4, vec![AttentionKind::Full]);
    s.add(seq(0, &PROMPT));
    s.add(seq(1, &PROMPT));
    s.add(seq(2, &[5, 6, 7, 8, 1, 2]));
    assert_eq!(step(&mut s), vec![(0, 0, 10)], "the others wait for the first one's blocks (FCFS)");
    s.append_token(0, 1);
    let second = step(&mut s);
    assert!(second.contains(&(1, 8, 2)), "the second hits both full blocks: {second:?}");
    assert!(second.contains(&(2, 4, 2)), "the third hits the one block it shares: {second:?}");
    assert_eq!(s.prefix_stats().hit_tokens, 12);
}

#[test]
fn a_sequence_sharing_nothing_with_a_prefilling_one_is_not_held_back() {
    let mut s = cached(16, 4, vec![AttentionKind::Full]);
    s.add(seq(0, &PROMPT));
    s.add(seq(1, &[1, 2, 3, 4, 5, 6]));
    assert_eq!(step(&mut s), vec![(0, 0, 10), (1, 0, 6)]);
}

#[test]
fn a_long_shared_prompt_is_awaited_chunk_by_chunk() {
    let mut s = Scheduler::new(
        SchedulerConfig { max_num_seqs: 8, max_num_batched_tokens: 4, max_prefill_tokens_per_decode_step: 4 },
        BlockPool::new(16, 4).with_prefix_caching(),
        vec![AttentionKind::Full],
    );
    s.add(seq(0, &PROMPT));
    s.add(seq(1, &PROMPT));
    assert_eq!(step(&mut s), vec![(0, 0, 4)]);
    assert_eq!(step(&mut s), vec![(0, 4, 4)]);
    assert_eq!(step(&mut s), vec![(0, 8, 2), (1, 8, 2)], "seq 1 joins with the two tokens of budget seq 0 leaves");
}
