//! Sampling: greedy, temperature/top-k/top-p/min-p, penalties, logit bias, logprobs, seeds,
//! and grammar masks.
//!
//! One [`Sampler`] per sequence. Each call: the sparse adjustments (bias, penalties; see
//! [`penalties`]), then either the greedy argmax (temperature 0; no vocab-sized allocation)
//! or truncation and a seeded draw (see [`filter`]), both over the ids a [`TokenMask`] allows
//! when the sequence has a grammar (see [`mask`]); logprobs come from the raw logits
//! (see [`logprobs`]).

pub mod defaults;
pub mod filter;
pub mod logprobs;
pub mod mask;
pub mod penalties;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::request::SamplingParams;
pub use defaults::SamplingDefaults;
use filter::Truncation;
pub use mask::TokenMask;
use penalties::Penalties;

/// The outcome of sampling one row of logits.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token_id: u32,
    /// With `params.logprobs = Some(k)`: the chosen token's logprob and the top `k`
    /// `(id, logprob)` alternatives, from the model's raw log-softmax (before penalties,
    /// bias and temperature, as vLLM reports them).
    pub logprobs: Option<(f32, Vec<(u32, f32)>)>,
}

/// Per-sequence sampler state (its own seeded RNG, so a seeded request gives the same
/// output whatever else runs beside it).
pub struct Sampler {
    truncation: Truncation,
    penalties: Penalties,
    logprobs: Option<usize>,
    rng: StdRng,
}

impl Sampler {
    /// `seed`: the request's seed, or a random one when absent. Choice `i` of a request
    /// with `n > 1` uses `seed + i`.
    pub fn new(params: &SamplingParams, seed: u64) -> Self {
        Self {
            truncation: Truncation {
                temperature: params.temperature,
                top_k: params.top_k,
                top_p: params.top_p,
                min_p: params.min_p,
            },
            penalties: Penalties::new(
                params.repetition_penalty,
                params.presence_penalty,
                params.frequency_penalty,
                &params.logit_bias,
            ),
            logprobs: params.logprobs,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Temperature 0 (or below, or NaN): always the most likely token.
    pub fn is_greedy(&self) -> bool {
        let t = self.truncation.temperature;
        t.is_nan() || t <= 0.0
    }

    /// Samples from one row of logits. `prompt_ids` and `output_ids` feed the penalties.
    pub fn sample(&mut self, logits: &[f32], prompt_ids: &[u32], output_ids: &[u32]) -> Sampled {
        self.sample_masked(logits, None, prompt_ids, output_ids)
    }

    /// [`sample`](Self::sample) restricted to the ids `mask` allows (a grammar's mask): bias,
    /// penalties and truncation apply among them, and logprobs stay those of the raw row.
    pub fn sample_masked(
        &mut self,
        logits: &[f32],
        mask: Option<&TokenMask>,
        prompt_ids: &[u32],
        output_ids: &[u32],
    ) -> Sampled {
        let adj = self.penalties.adjustments(logits, prompt_ids, output_ids);
        let token_id = if self.is_greedy() {
            filter::argmax(logits, &adj, mask)
        } else {
            match filter::candidates(logits, &adj, &self.truncation, mask) {
                Some(mut cands) => {
                    filter::apply_top_k(&mut cands, self.truncation.top_k);
                    filter::apply_top_p(&mut cands, self.truncation.top_p);
                    filter::draw(&cands, &mut self.rng).unwrap_or_else(|| filter::argmax(logits, &adj, mask))
                }
                None => filter::argmax(logits, &adj, mask),
            }
        };
        let logprobs = self.logprobs.map(|k| logprobs::logprobs(logits, token_id, k));
        Sampled { token_id, logprobs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random logits row (xorshift), wide enough to exercise the
    /// partial sorts.
    fn logits_row(seed: u64, vocab: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..vocab)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
            })
            .collect()
    }

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    fn argmax(x: &[f32]) -> u32 {
        let mut best = 0;
        for (i, &v) in x.iter().enumerate() {
            if v > x[best] {
                best = i;
            }
        }
        best as u32
    }

    fn draws(p: &SamplingParams, seed: u64, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(p, seed);
        (0..n).map(|_| s.sample(logits, &[], &[]).token_id).collect()
    }

    #[test]
    fn greedy_picks_the_argmax_with_ties_to_the_lowest_id() {
        let logits = logits_row(1, 50_000);
        let mut s = Sampler::new(&params(|p| p.temperature = 0.0), 7);
        assert_eq!(s.sample(&logits, &[], &[]).token_id, argmax(&logits));
        let tied = [0.0, 2.0, 1.0, 2.0];
        assert_eq!(s.sample(&tied, &[], &[]).token_id, 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_another_seed_differs() {
        let logits = logits_row(2, 1000);
        let p = params(|p| p.temperature = 1.0);
        let a = draws(&p, 42, &logits, 50);
        assert_eq!(a, draws(&p, 42, &logits, 50));
        assert_ne!(a, draws(&p, 43, &logits, 50));
        // Sampling really samples: a flat-ish row gives many distinct tokens.
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 10, "only {} distinct tokens", distinct.len());
    }

    #[test]
    fn top_k_one_and_a_tiny_top_p_equal_greedy() {
        for seed in 0..5 {
            let logits = logits_row(10 + seed, 20_000);
            let top1 = params(|p| p.top_k = 1);
            let tiny_p = params(|p| p.top_p = 1e-6);
            for id in draws(&top1, seed, &logits, 5).into_iter().chain(draws(&tiny_p, seed, &logits, 5)) {
                assert_eq!(id, argmax(&logits));
            }
        }
    }

    #[test]
    fn draws_follow_the_distribution_and_stay_inside_top_k() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 (approximately, via logits).
        let logits = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
        let got = draws(&params(|_| {}), 5, &logits, 8000);
        let share = |id: u32| got.iter().filter(|&&t| t == id).count() as f64 / got.len() as f64;
        assert!((share(0) - 0.5).abs() < 0.03, "share of 0: {}", share(0));
        assert!((share(1) - 0.25).abs() < 0.03, "share of 1: {}", share(1));
        let top2 = draws(&params(|p| p.top_k = 2), 5, &logits, 2000);
        assert!(top2.iter().all(|&t| t < 2));
        assert!(top2.contains(&1), "top_k=2 must still sample the second token");
    }

    #[test]
    fn min_p_removes_unlikely_tokens() {
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln(), 0.01f32.ln()];
        // 0.01 / 0.5 = 0.02 < 0.1: token 3 must never come out.
        let got = draws(&params(|p| p.min_p = 0.1), 9, &logits, 3000);
        assert!(!got.contains(&3));
        assert!(got.contains(&2));
        // 0.2 / 0.5 = 0.4 < 0.5: only 0 and 1 remain.
        let got = draws(&params(|p| p.min_p = 0.5), 9, &logits, 3000);
        assert!(got.iter().all(|&t| t < 2) && got.contains(&1));
    }

    #[test]
    fn logit_bias_forces_and_bans_tokens() {
        let logits = logits_row(3, 5000);
        let force = params(|p| {
            p.logit_bias.insert(4321, 100.0);
        });
        assert!(draws(&force, 1, &logits, 20).iter().all(|&t| t == 4321));
        let greedy_force = params(|p| {
            p.temperature = 0.0;
            p.logit_bias.insert(17, 100.0);
        });
        assert_eq!(draws(&greedy_force, 1, &logits, 1), vec![17]);
        let top = argmax(&logits);
        let ban = params(|p| {
            p.temperature = 0.0;
            p.logit_bias.insert(top, -100.0);
        });
        assert_ne!(draws(&ban, 1, &logits, 1), vec![top]);
    }

    #[test]
    fn penalties_steer_greedy_away_from_repeated_tokens() {
        let logits = [3.0, 2.9, 2.8, 0.0];
        let rep = params(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = 1.2;
        });
        let mut s = Sampler::new(&rep, 0);
        // 3.0 / 1.2 = 2.5 < 2.9: token 0 (in the prompt) loses to token 1.
        assert_eq!(s.sample(&logits, &[0], &[]).token_id, 1);
        // Token 0 and 1 both penalized: token 2 wins.
        assert_eq!(s.sample(&logits, &[0], &[1]).token_id, 2);
        let pres = params(|p| {
            p.temperature = 0.0;
            p.presence_penalty = 0.15;
        });
        let mut s = Sampler::new(&pres, 0);
        // The prompt does not count for presence; one occurrence in the output does.
        assert_eq!(s.sample(&logits, &[0], &[]).token_id, 0);
        assert_eq!(s.sample(&logits, &[], &[0]).token_id, 1);
        let freq = params(|p| {
            p.temperature = 0.0;
            p.frequency_penalty = 0.06;
        });
        let mut s = Sampler::new(&freq, 0);
        // Once: 3.0 - 0.06 > 2.9 stays; twice: 3.0 - 0.12 < 2.9 gives way.
        assert_eq!(s.sample(&logits, &[], &[0]).token_id, 0);
        assert_eq!(s.sample(&logits, &[], &[0, 0]).token_id, 1);
    }

    #[test]
    fn a_mask_restricts_greedy_and_sampled_draws_even_against_the_bias() {
        let logits = logits_row(5, 5000);
        let top = argmax(&logits);
        let allowed: Vec<u32> = vec![3, 777, 4999];
        let mask = TokenMask::from_ids(&allowed);
        let best_allowed =
            *allowed.iter().max_by(|a, b| logits[**a as usize].total_cmp(&logits[**b as usize])).unwrap();
        let mut greedy = Sampler::new(&params(|p| p.temperature = 0.0), 0);
        assert_eq!(greedy.sample_masked(&logits, Some(&mask), &[], &[]).token_id, best_allowed);
        // A huge bias on a disallowed id cannot bring it back.
        let mut biased = Sampler::new(
            &params(|p| {
                p.temperature = 0.0;
                p.logit_bias.insert(top, 100.0);
            }),
            0,
        );
        assert_eq!(biased.sample_masked(&logits, Some(&mask), &[], &[]).token_id, best_allowed);
        let mut s = Sampler::new(&params(|p| p.temperature = 1.5), 11);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let id = s.sample_masked(&logits, Some(&mask), &[], &[]).token_id;
            assert!(allowed.contains(&id), "{id} is not allowed");
            seen.insert(id);
        }
        assert!(seen.len() > 1, "sampling under a mask still samples");
        // A mask whose only allowed id has a -inf logit still yields that id.
        let mut row = logits.clone();
        row[42] = f32::NEG_INFINITY;
        let only = TokenMask::from_ids(&[42]);
        assert_eq!(greedy.sample_masked(&row, Some(&only), &[], &[]).token_id, 42);
        assert_eq!(s.sample_masked(&row, Some(&only), &[], &[]).token_id, 42);
    }

    #[test]
    fn logprobs_come_from_the_raw_logits_whatever_the_sampling_settings() {
        let logits = logits_row(4, 3000);
        let p = params(|p| {
            p.temperature = 0.0;
            p.logprobs = Some(5);
            p.logit_bias.insert(9, 100.0);
        });
        let out = Sampler::new(&p, 0).sample(&logits, &[], &[]);
        assert_eq!(out.token_id, 9);
        let (chosen, top) = out.logprobs.expect("logprobs requested");
        let lse = logprobs::log_sum_exp(&logits);
        assert!((chosen - (logits[9] - lse)).abs() < 1e-5, "the bias must not change the logprob");
        assert_eq!(top.len(), 5);
        assert_eq!(top[0].0, argmax(&logits));
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(top.iter().all(|&(id, lp)| (lp - (logits[id as usize] - lse)).abs() < 1e-5));
        let none = Sampler::new(&params(|_| {}), 0).sample(&logits, &[], &[]);
        assert!(none.logprobs.is_none());
    }
}
