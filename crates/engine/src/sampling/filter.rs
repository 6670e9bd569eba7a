//! Truncating the distribution and drawing from it: temperature, min-p, top-k, top-p, then
//! a draw from the renormalized rest. Order as in vLLM: temperature, min-p (relative to the
//! most likely token), top-k, top-p (over what top-k kept).
//!
//! Built for big vocabularies: min-p filters while gathering, top-k is a
//! `select_nth_unstable`, top-p sorts only a growing head of the candidates (64, 512, ...)
//! until it holds the requested mass, never the whole vocabulary unless it must.
//! Candidates are totally ordered (value, then lower id first), so results are deterministic.

use std::cmp::Ordering;

use rand::Rng;

use super::mask::TokenMask;
use super::penalties::Adjustments;

/// `(id, logit / temperature)`.
pub type Candidate = (u32, f32);

/// Better first: higher value, then lower id.
#[inline]
fn better_first(a: &Candidate, b: &Candidate) -> Ordering {
    b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0))
}

/// Calls `f(id, adjusted_logit)` for every id the mask allows (every id without a mask). The
/// unmasked path is the plain scan: a sequence without a grammar pays no per-id check.
#[inline]
fn scan_allowed(logits: &[f32], adj: &Adjustments, mask: Option<&TokenMask>, mut f: impl FnMut(u32, f32)) {
    match mask {
        None => adj.scan(logits, f),
        Some(m) => adj.scan(logits, |id, v| {
            if m.allows(id) {
                f(id, v)
            }
        }),
    }
}

/// The argmax of the adjusted logits among the allowed ids; ties go to the lowest id. No
/// allocation. With a mask, an allowed id is returned even when every allowed logit is `-inf`.
pub fn argmax(logits: &[f32], adj: &Adjustments, mask: Option<&TokenMask>) -> u32 {
    if mask.is_none() && adj.is_empty() {
        return argmax_raw(logits);
    }
    let mut best = f32::NEG_INFINITY;
    let mut best_id = 0u32;
    let mut any = false;
    scan_allowed(logits, adj, mask, |id, v| {
        if !any || v > best {
            best = v;
            best_id = id;
            any = true;
        }
    });
    best_id
}

/// [`argmax`] of unadjusted, unmasked logits in two vectorizable passes (the greedy path of
/// every step, over a whole vocabulary per sequence): the maximum with NaN ignored, then the
/// first id holding it. When nothing beats `-inf` the scan above returns id 0, and so does this.
fn argmax_raw(logits: &[f32]) -> u32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = logits.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            // `f32::max` ignores a NaN operand, as `read` makes NaN lose.
            *m = m.max(x);
        }
    }
    let best = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if best == f32::NEG_INFINITY {
        return 0;
    }
    logits.iter().position(|&x| x == best).unwrap_or(0) as u32
}

/// How the distribution is truncated before the draw.
#[derive(Debug, Clone, Copy)]
pub struct Truncation {
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
}

/// The allowed tokens left after temperature and min-p, as `(id, logit / temperature)`. `None`
/// when the row has no finite maximum (all `-inf`, or a `+inf`): the caller falls back to argmax.
pub fn candidates(
    logits: &[f32],
    adj: &Adjustments,
    t: &Truncation,
    mask: Option<&TokenMask>,
) -> Option<Vec<Candidate>> {
    let mut max = f32::NEG_INFINITY;
    scan_allowed(logits, adj, mask, |_, v| max = max.max(v));
    if !max.is_finite() {
        return None;
    }
    // p_i / p_max >= min_p  <=>  x_i >= x_max + T * ln(min_p)
    let threshold = if t.min_p > 0.0 { max + t.temperature * t.min_p.ln() } else { f32::NEG_INFINITY };
    let cap = match mask {
        Some(m) => m.count().min(logits.len()),
        None if t.min_p > 0.0 => 64,
        None => logits.len(),
    };
    let mut out = Vec::with_capacity(cap);
    let inv_t = 1.0 / t.temperature;
    scan_allowed(logits, adj, mask, |id, v| {
        if v >= threshold && v > f32::NEG_INFINITY {
            out.push((id, v * inv_t));
        }
    });
    Some(out)
}

/// Keeps the `k` best candidates (unordered). `k == 0` keeps all.
pub fn apply_top_k(cands: &mut Vec<Candidate>, k: usize) {
    if k > 0 && k < cands.len() {
        cands.select_nth_unstable_by(k - 1, better_first);
        cands.truncate(k);
    }
}

/// Keeps the smallest best-first head whose probability mass reaches `p` (at least one
/// token). Sorts only as much of the head as it needs.
pub fn apply_top_p(cands: &mut Vec<Candidate>, p: f32) {
    if p >= 1.0 || cands.len() <= 1 {
        return;
    }
    let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = cands.iter().map(|c| f64::from((c.1 - max).exp())).sum();
    let target = f64::from(p.max(0.0)) * total;
    let len = cands.len();
    let (mut sorted, mut step, mut mass) = (0usize, 64usize, 0f64);
    while sorted < len {
        let end = (sorted + step).min(len);
        if end < len {
            cands[sorted..].select_nth_unstable_by(end - sorted - 1, better_first);
        }
        cands[sorted..end].sort_unstable_by(better_first);
        for i in sorted..end {
            mass += f64::from((cands[i].1 - max).exp());
            if mass >= target {
                cands.truncate(i + 1);
                return;
            }
        }
        sorted = end;
        step = step.saturating_mul(8);
    }
}

/// Draws one id with probability proportional to `exp(value)`. Always consumes one random
/// number, so a seeded sequence stays in step whatever the candidates are.
pub fn draw(cands: &[Candidate], rng: &mut impl Rng) -> Option<u32> {
    let u: f64 = rng.random();
    let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = cands.iter().map(|c| f64::from((c.1 - max).exp())).sum();
    let target = u * total;
    let mut acc = 0f64;
    for c in cands {
        acc += f64::from((c.1 - max).exp());
        if acc > target {
            return Some(c.0);
        }
    }
    // Rounding left `target` at the very end: the last token with any mass.
    cands.iter().rev().find(|c| c.1 > f32::NEG_INFINITY).map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_ids(c: &[Candidate]) -> Vec<u32> {
        let mut ids: Vec<u32> = c.iter().map(|c| c.0).collect();
        ids.sort_unstable();
        ids
    }

    fn trunc(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> Truncation {
        Truncation { temperature, top_k, top_p, min_p }
    }

    #[test]
    fn min_p_keeps_tokens_at_least_that_fraction_of_the_top_probability() {
        // probabilities proportional to 1, 1/2, 1/4, 1/8
        let logits: Vec<f32> = (0..4).map(|i| -(i as f32) * std::f32::consts::LN_2).collect();
        let adj = Adjustments::default();
        let c = candidates(&logits, &adj, &trunc(1.0, 0, 1.0, 0.3), None).unwrap();
        assert_eq!(sorted_ids(&c), vec![0, 1]);
        let c = candidates(&logits, &adj, &trunc(1.0, 0, 1.0, 0.2), None).unwrap();
        assert_eq!(sorted_ids(&c), vec![0, 1, 2]);
        // Temperature 2 flattens: ratios become 1, 0.71, 0.5, 0.35.
        let c = candidates(&logits, &adj, &trunc(2.0, 0, 1.0, 0.3), None).unwrap();
        assert_eq!(sorted_ids(&c), vec![0, 1, 2, 3]);
    }

    #[test]
    fn top_p_keeps_the_smallest_head_reaching_the_mass_even_past_the_first_window() {
        // 1000 equally likely tokens: p = 0.5 must keep exactly 500 of them (lowest ids).
        let logits = vec![0.0f32; 1000];
        let mut c = candidates(&logits, &Adjustments::default(), &trunc(1.0, 0, 1.0, 0.0), None).unwrap();
        apply_top_p(&mut c, 0.5);
        assert_eq!(sorted_ids(&c), (0..500).collect::<Vec<u32>>());
        // A peaked row: the top token alone holds > 0.9.
        let mut logits = vec![0.0f32; 1000];
        logits[321] = 20.0;
        let mut c = candidates(&logits, &Adjustments::default(), &trunc(1.0, 0, 1.0, 0.0), None).unwrap();
        apply_top_p(&mut c, 0.9);
        assert_eq!(sorted_ids(&c), vec![321]);
    }

    #[test]
    fn top_k_keeps_the_k_best_with_ties_to_lower_ids() {
        let logits = [1.0, 5.0, 3.0, 5.0, 4.0];
        let mut c = candidates(&logits, &Adjustments::default(), &trunc(1.0, 0, 1.0, 0.0), None).unwrap();
        apply_top_k(&mut c, 3);
        assert_eq!(sorted_ids(&c), vec![1, 3, 4]);
        apply_top_k(&mut c, 1);
        assert_eq!(sorted_ids(&c), vec![1]);
    }

    /// The vectorized greedy path picks what the scan with adjustments picks: the maximum, the
    /// lowest id on a tie, NaN never, id 0 when nothing beats `-inf`.
    #[test]
    fn raw_argmax_agrees_with_the_adjusted_scan() {
        let scan = |l: &[f32]| {
            // The same logits through the general path: an adjustment that changes nothing.
            let adj = Adjustments::with_overrides(vec![(0, if l[0].is_nan() { f32::NEG_INFINITY } else { l[0] })]);
            argmax(l, &adj, None)
        };
        let mut cases: Vec<Vec<f32>> = vec![
            vec![f32::NEG_INFINITY; 40],
            vec![f32::NAN, f32::NEG_INFINITY, 1.0],
            vec![f32::NAN, f32::NEG_INFINITY],
            vec![f32::NAN; 33],
            vec![2.0, 7.0, 7.0, f32::NAN, 7.0],
        ];
        let mut seed = 0x1234_5678_9abc_def1u64;
        for len in [1, 15, 16, 17, 100, 49152] {
            let row: Vec<f32> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    match seed % 50 {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        2 => f32::NEG_INFINITY,
                        r => (r % 9) as f32,
                    }
                })
                .collect();
            cases.push(row);
        }
        for l in &cases {
            assert_eq!(argmax(l, &Adjustments::default(), None), scan(l), "{:?}", &l[..l.len().min(8)]);
        }
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, 1.0], &Adjustments::default(), None), 2);
        assert_eq!(argmax(&[2.0, 7.0, 7.0, f32::NAN, 7.0], &Adjustments::default(), None), 1);
    }

    #[test]
    fn all_minus_infinity_gives_no_candidates_and_argmax_stays_in_range() {
        let logits = [f32::NEG_INFINITY; 3];
        assert!(candidates(&logits, &Adjustments::default(), &trunc(1.0, 0, 1.0, 0.0), None).is_none());
        assert_eq!(argmax(&logits, &Adjustments::default(), None), 0);
    }
}
