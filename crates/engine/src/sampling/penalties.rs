//! Sparse logit adjustments: logit bias, repetition, presence and frequency penalties.
//!
//! They touch only the few ids named by the bias map, the prompt and the output so far, so
//! instead of copying a (possibly 262k-wide) logits row we compute the adjusted value of each
//! touched id once ([`Adjustments`]) and read the row through [`Adjustments::scan`], which walks
//! the untouched runs as plain slices. NaN logits are read as `-inf` (never chosen).
//!
//! Order and semantics follow vLLM: the bias is added to the raw logit first; then the
//! repetition penalty (HF/vLLM: over prompt + output ids, positive logits divided by it,
//! negative ones multiplied); then OpenAI's frequency (`count * f`) and presence (`p` once)
//! penalties over the output ids.

use std::collections::HashMap;

/// The penalty settings of one request, in the form the sampler keeps them.
#[derive(Debug, Clone, Default)]
pub struct Penalties {
    pub repetition: f32,
    pub presence: f32,
    pub frequency: f32,
    /// Sorted by id.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Penalties {
    pub fn new(repetition: f32, presence: f32, frequency: f32, bias: &HashMap<u32, f32>) -> Self {
        let mut logit_bias: Vec<(u32, f32)> = bias.iter().map(|(&id, &b)| (id, b)).collect();
        logit_bias.sort_unstable_by_key(|&(id, _)| id);
        Self { repetition, presence, frequency, logit_bias }
    }

    fn uses_repetition(&self) -> bool {
        self.repetition != 1.0 && self.repetition > 0.0
    }

    fn uses_output_counts(&self) -> bool {
        self.presence != 0.0 || self.frequency != 0.0
    }

    /// Whether any adjustment can change a logit.
    pub fn is_active(&self) -> bool {
        self.uses_repetition() || self.uses_output_counts() || !self.logit_bias.is_empty()
    }

    /// The adjusted logits of every touched id of `logits`.
    pub fn adjustments(&self, logits: &[f32], prompt_ids: &[u32], output_ids: &[u32]) -> Adjustments {
        if !self.is_active() {
            return Adjustments::default();
        }
        let vocab = logits.len() as u32;
        let mut output_sorted: Vec<u32> =
            if self.uses_repetition() || self.uses_output_counts() { output_ids.to_vec() } else { Vec::new() };
        output_sorted.sort_unstable();
        let mut prompt_sorted: Vec<u32> = if self.uses_repetition() { prompt_ids.to_vec() } else { Vec::new() };
        prompt_sorted.sort_unstable();
        prompt_sorted.dedup();

        let mut touched: Vec<u32> = self.logit_bias.iter().map(|&(id, _)| id).collect();
        touched.extend_from_slice(&output_sorted);
        touched.extend_from_slice(&prompt_sorted);
        touched.sort_unstable();
        touched.dedup();
        touched.retain(|&id| id < vocab);

        let overrides = touched
            .into_iter()
            .map(|id| {
                let mut v = read(logits[id as usize]);
                if let Ok(i) = self.logit_bias.binary_search_by_key(&id, |&(b, _)| b) {
                    v += self.logit_bias[i].1;
                }
                let count = count_of(&output_sorted, id);
                if self.uses_repetition() && (count > 0 || prompt_sorted.binary_search(&id).is_ok()) {
                    v = if v > 0.0 { v / self.repetition } else { v * self.repetition };
                }
                if count > 0 {
                    v -= self.frequency * count as f32 + self.presence;
                }
                (id, read(v))
            })
            .collect();
        Adjustments { overrides }
    }
}

/// How often `id` occurs in the sorted `ids`.
fn count_of(sorted: &[u32], id: u32) -> usize {
    let start = sorted.partition_point(|&x| x < id);
    let end = sorted.partition_point(|&x| x <= id);
    end - start
}

/// A logit as the sampler reads it: NaN never wins.
#[inline]
fn read(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v
    }
}

/// Adjusted values of the touched ids, sorted by id; every other id keeps its raw logit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adjustments {
    overrides: Vec<(u32, f32)>,
}

impl Adjustments {
    /// Calls `f(id, adjusted_logit)` for every id of `logits`, in id order.
    #[inline]
    pub fn scan(&self, logits: &[f32], mut f: impl FnMut(u32, f32)) {
        let mut next = 0usize;
        for &(id, v) in &self.overrides {
            let id = id as usize;
            for (j, &x) in logits[next..id].iter().enumerate() {
                f((next + j) as u32, read(x));
            }
            f(id as u32, v);
            next = id + 1;
        }
        for (j, &x) in logits[next..].iter().enumerate() {
            f((next + j) as u32, read(x));
        }
    }

    /// Adjustments setting the given ids' values (sorted by id), for tests of the scans.
    #[cfg(test)]
    pub(super) fn with_overrides(overrides: Vec<(u32, f32)>) -> Self {
        Self { overrides }
    }

    /// Whether no id is adjusted (the raw logits are the adjusted ones, NaN read as `-inf`).
    pub fn is_empty(&self) -> bool {
        self.overrides.is_empty()
    }

    /// The adjusted logit of one id.
    pub fn value(&self, logits: &[f32], id: u32) -> f32 {
        match self.overrides.binary_search_by_key(&id, |&(i, _)| i) {
            Ok(i) => self.overrides[i].1,
            Err(_) => read(logits[id as usize]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adjusted(p: &Penalties, logits: &[f32], prompt: &[u32], output: &[u32]) -> Vec<f32> {
        let adj = p.adjustments(logits, prompt, output);
        let mut out = Vec::new();
        adj.scan(logits, |id, v| {
            assert_eq!(id as usize, out.len(), "scan must visit ids in order");
            out.push(v);
        });
        out
    }

    #[test]
    fn repetition_divides_positive_and_multiplies_negative_over_prompt_and_output() {
        let p = Penalties::new(2.0, 0.0, 0.0, &HashMap::new());
        let logits = [4.0, -4.0, 4.0, -4.0, 4.0];
        // id 0 in the prompt, id 1 in the output, id 3 in both; 2 and 4 untouched.
        let got = adjusted(&p, &logits, &[0, 3], &[1, 3, 3]);
        assert_eq!(got, vec![2.0, -8.0, 4.0, -8.0, 4.0]);
    }

    #[test]
    fn frequency_and_presence_apply_to_output_ids_only() {
        let p = Penalties::new(1.0, 0.5, 0.25, &HashMap::new());
        let logits = [1.0, 1.0, 1.0, 1.0];
        // id 0 only in the prompt: untouched. id 1 once, id 2 three times.
        let got = adjusted(&p, &logits, &[0], &[2, 1, 2, 2]);
        assert_eq!(got, vec![1.0, 1.0 - 0.25 - 0.5, 1.0 - 0.75 - 0.5, 1.0]);
    }

    #[test]
    fn bias_is_added_before_the_repetition_penalty() {
        let mut bias = HashMap::new();
        bias.insert(1, 3.0);
        bias.insert(99, 5.0); // out of the vocabulary: ignored, no panic
        let p = Penalties::new(2.0, 0.0, 0.0, &bias);
        let logits = [0.0, -1.0, 0.0];
        let got = adjusted(&p, &logits, &[], &[1]);
        // -1 + 3 = 2 > 0, so divided: 1.
        assert_eq!(got, vec![0.0, 1.0, 0.0]);
        assert_eq!(p.adjustments(&logits, &[], &[1]).value(&logits, 1), 1.0);
    }

    #[test]
    fn inactive_penalties_leave_the_row_untouched_and_nan_reads_as_minus_infinity() {
        let p = Penalties::new(1.0, 0.0, 0.0, &HashMap::new());
        assert!(!p.is_active());
        let logits = [0.5, f32::NAN, -2.0];
        let got = adjusted(&p, &logits, &[0, 1], &[2]);
        assert_eq!(got, vec![0.5, f32::NEG_INFINITY, -2.0]);
    }
}
