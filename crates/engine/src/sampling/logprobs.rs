//! Logprobs as OpenAI clients see them: the log-softmax of the model's raw logits (before
//! bias, penalties and temperature, like vLLM's default), for the chosen token and the top `k`.
//! No vocab-sized allocation: one pass for the normalizer, a `k`-sized heap for the top list.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// `log(sum(exp(logits)))`, computed stably. NaN logits count as `-inf`.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if max.is_infinite() {
        return max;
    }
    let sum: f64 = logits.iter().filter(|v| !v.is_nan()).map(|&v| f64::from((v - max).exp())).sum();
    max + (sum.ln() as f32)
}

/// A logit ordered by value (descending wins) and then by id (lower wins).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ranked {
    value: f32,
    id: u32,
}

impl Eq for Ranked {}

impl Ord for Ranked {
    /// Greater = better: higher value, then lower id.
    fn cmp(&self, other: &Self) -> Ordering {
        self.value.total_cmp(&other.value).then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The `k` best `(id, logit)` of `logits`, best first (ties: lower id first). NaN is skipped.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(k + 1);
    for (id, &value) in logits.iter().enumerate() {
        if value.is_nan() {
            continue;
        }
        let r = Ranked { value, id: id as u32 };
        if heap.len() < k {
            heap.push(Reverse(r));
        } else if let Some(Reverse(worst)) = heap.peek() {
            if r > *worst {
                heap.pop();
                heap.push(Reverse(r));
            }
        }
    }
    let mut best: Vec<Ranked> = heap.into_iter().map(|Reverse(r)| r).collect();
    best.sort_unstable_by(|a, b| b.cmp(a));
    best.into_iter().map(|r| (r.id, r.value)).collect()
}

/// The chosen token's logprob and the top `k` `(id, logprob)`, best first.
pub fn logprobs(logits: &[f32], chosen: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let lse = log_sum_exp(logits);
    let of = |v: f32| {
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v - lse
        }
    };
    let chosen_lp = logits.get(chosen as usize).map_or(f32::NEG_INFINITY, |&v| of(v));
    let top = top_k(logits, k).into_iter().map(|(id, v)| (id, of(v))).collect();
    (chosen_lp, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct, allocation-heavy reference: log(softmax(x)) in f64.
    fn reference_log_softmax(x: &[f32]) -> Vec<f64> {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
        x.iter().map(|&v| v as f64 - max - z.ln()).collect()
    }

    #[test]
    fn values_equal_a_direct_log_softmax_and_are_sorted() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1013) as f32 * 0.013 - 6.0).collect();
        let reference = reference_log_softmax(&logits);
        let (chosen, top) = logprobs(&logits, 17, 20);
        assert!((chosen as f64 - reference[17]).abs() < 1e-4);
        assert_eq!(top.len(), 20);
        for w in top.windows(2) {
            assert!(w[0].1 >= w[1].1, "top logprobs must be sorted descending: {top:?}");
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| reference[b].total_cmp(&reference[a]).then(a.cmp(&b)));
        for (rank, &(id, lp)) in top.iter().enumerate() {
            assert_eq!(id as usize, order[rank]);
            assert!((lp as f64 - reference[id as usize]).abs() < 1e-4);
        }
        let total: f64 = reference.iter().map(|lp| lp.exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let lse = log_sum_exp(&logits) as f64;
        let mass: f64 = logits.iter().map(|&v| (v as f64 - lse).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-4, "probabilities must sum to 1, got {mass}");
    }

    #[test]
    fn ties_rank_lower_ids_first_and_k_larger_than_vocab_returns_everything() {
        let logits = [1.0, 3.0, 3.0, f32::NAN, 2.0];
        let top = top_k(&logits, 10);
        let ids: Vec<u32> = top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, vec![1, 2, 4, 0]);
        assert!(top_k(&logits, 0).is_empty());
    }
}
