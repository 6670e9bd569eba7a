//! Sampling: greedy, temperature/top-k/top-p/min-p, penalties, logit bias, logprobs, seeds.

use crate::request::SamplingParams;

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
pub struct Sampler {}

impl Sampler {
    /// `seed`: the request's seed, or a random one when absent. Choice `i` of a request
    /// with `n > 1` uses `seed + i`.
    pub fn new(_params: &SamplingParams, _seed: u64) -> Self {
        todo!("sampling")
    }
    /// Samples from one row of logits. `prompt_ids` and `output_ids` feed the penalties.
    pub fn sample(&mut self, _logits: &[f32], _prompt_ids: &[u32], _output_ids: &[u32]) -> Sampled {
        todo!("sampling")
    }
}
