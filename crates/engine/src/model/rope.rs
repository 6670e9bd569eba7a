//! Rotary position embeddings: the inverse frequencies of each scaling type (`linear`,
//! `llama3`, `yarn`, `longrope`/`su`, or per-frequency divisors stored in a GGUF), the pairing
//! (interleaved as llama.cpp's permuted llama q/k, or NeoX halves), partial rotary (only the
//! first `rot_dim` features of a head turn), and the cos/sin rows of one step's positions.
//!
//! Tables are built per step for the positions in it (not for the whole context at load):
//! a 262k-position table per RoPE would cost hundreds of MB, a step's rows cost microseconds.

use serde_json::Value as Json;

use crate::{EngineError, Result};

/// How the base frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (theta / factor).
    Linear {
        factor: f32,
    },
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
    /// Per-frequency divisors (GGUF `rope_freqs.weight`, Llama 3.1+ as converted).
    Divisors(Vec<f32>),
    /// YaRN (NTK-by-parts with an attention temperature), as llama.cpp and transformers do it.
    Yarn {
        factor: f32,
        original_max_position_embeddings: f32,
        beta_fast: f32,
        beta_slow: f32,
        attention_factor: Option<f32>,
        /// Round the correction range outward to whole dimensions (llama.cpp always does;
        /// transformers unless `truncate: false`, as gpt-oss's config says).
        truncate: bool,
    },
    /// Phi-3's LongRoPE: per-frequency factors; the set follows the served context.
    LongRope {
        factors: Vec<f32>,
        factor: f32,
        original_max_position_embeddings: f32,
        attention_factor: Option<f32>,
    },
}

impl RopeScaling {
    /// Reads transformers' `rope_scaling` object (`rope_type` or `type`). `max_positions` is
    /// the model's context, which picks LongRoPE's long or short factors.
    pub fn from_hf(scaling: &Json, max_positions: usize) -> Result<Self> {
        if !scaling.is_object() {
            return Ok(RopeScaling::None);
        }
        let kind = scaling["rope_type"].as_str().or(scaling["type"].as_str()).unwrap_or("default");
        let num = |k: &str, default: f32| scaling[k].as_f64().map_or(default, |v| v as f32);
        let factor = num("factor", 1.0);
        Ok(match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor },
            "llama3" => RopeScaling::Llama3 {
                factor,
                low_freq_factor: num("low_freq_factor", 1.0),
                high_freq_factor: num("high_freq_factor", 4.0),
                original_max_position_embeddings: num("original_max_position_embeddings", 8192.0),
            },
            "yarn" => RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: num("original_max_position_embeddings", 4096.0),
                beta_fast: num("beta_fast", 32.0),
                beta_slow: num("beta_slow", 1.0),
                attention_factor: scaling["attention_factor"].as_f64().map(|v| v as f32),
                truncate: scaling["truncate"].as_bool().unwrap_or(true),
            },
            "longrope" | "su" => {
                let orig = scaling["original_max_position_embeddings"].as_f64().map(|v| v as f32);
                let orig = orig.ok_or_else(|| unsupported("longrope without original_max_position_embeddings"))?;
                let key = if max_positions as f32 > orig { "long_factor" } else { "short_factor" };
                let factors = scaling[key]
                    .as_array()
                    .ok_or_else(|| unsupported(&format!("longrope without {key}")))?
                    .iter()
                    .map(|v| v.as_f64().map(|f| f as f32).ok_or_else(|| unsupported("longrope factor is not a number")))
                    .collect::<Result<Vec<_>>>()?;
                RopeScaling::LongRope {
                    factors,
                    factor: max_positions as f32 / orig,
                    original_max_position_embeddings: orig,
                    attention_factor: scaling["attention_factor"].as_f64().map(|v| v as f32),
                }
            }
            other => return Err(unsupported(&format!("rope_scaling type {other:?}"))),
        })
    }
}

fn unsupported(msg: &str) -> EngineError {
    EngineError::Unsupported(msg.to_string())
}

/// One RoPE as a model uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    /// `rot_dim / 2` inverse frequencies, scaling applied.
    pub inv_freq: Vec<f32>,
    /// Rotate pairs `(2i, 2i+1)` (llama.cpp's llama convention, q/k permuted by its converter)
    /// rather than NeoX halves `(i, i + rot_dim/2)`.
    pub interleaved: bool,
    /// cos and sin are multiplied by this (YaRN's and LongRoPE's attention factor).
    pub mscale: f32,
}

impl RopeSpec {
    /// RoPE over the first `rot_dim` features of a head with base `theta`.
    pub fn new(rot_dim: usize, theta: f32, scaling: &RopeScaling, interleaved: bool) -> Result<Self> {
        if rot_dim == 0 || !rot_dim.is_multiple_of(2) {
            return Err(EngineError::Load(format!("rotary dimension {rot_dim} must be even and positive")));
        }
        let base: Vec<f32> = (0..rot_dim).step_by(2).map(|i| 1f32 / theta.powf(i as f32 / rot_dim as f32)).collect();
        let half = base.len();
        let mut mscale = 1.0;
        let inv_freq = match scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Divisors(d) => {
                if d.len() != half {
                    return Err(EngineError::Load(format!("rope_freqs has {} entries, expected {half}", d.len())));
                }
                base.iter().zip(d).map(|(f, d)| f / d).collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: orig,
            } => {
                let (low_wl, high_wl) = (orig / low, orig / high);
                base.iter()
                    .map(|&f| {
                        let wl = 2.0 * std::f32::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else {
                            let smooth = (orig / wl - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => {
                // llama.cpp's ggml_rope_yarn_corr_dims and rope_yarn_ramp, per rotated pair.
                let n = rot_dim as f32;
                let corr = |b: f32| n * (orig / (b * 2.0 * std::f32::consts::PI)).ln() / (2.0 * theta.ln());
                let (lo, hi) = (corr(*beta_fast), corr(*beta_slow));
                let (lo, hi) = if *truncate { (lo.floor(), hi.ceil()) } else { (lo, hi) };
                let (lo, hi) = (lo.max(0.0), hi.min(n - 1.0));
                mscale = attention_factor.unwrap_or(1.0 + 0.1 * factor.ln());
                base.iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = 1.0 - ((i as f32 - lo) / (hi - lo).max(0.001)).clamp(0.0, 1.0);
                        f / factor * (1.0 - ramp) + f * ramp
                    })
                    .collect()
            }
            RopeScaling::LongRope { factors, factor, original_max_position_embeddings: orig, attention_factor } => {
                if factors.len() != half {
                    return Err(EngineError::Load(format!("longrope has {} factors, expected {half}", factors.len())));
                }
                mscale = attention_factor.unwrap_or(if *factor > 1.0 {
                    (1.0 + factor.ln() / orig.ln()).sqrt()
                } else {
                    1.0
                });
                base.iter().zip(factors).map(|(f, e)| f / e).collect()
            }
        };
        Ok(Self { inv_freq, interleaved, mscale })
    }

    pub fn rot_dim(&self) -> usize {
        2 * self.inv_freq.len()
    }

    /// cos/sin rows for `positions` (one row of `rot_dim / 2` per position).
    pub fn rows(&self, positions: &[u32]) -> RopeRows {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos() * self.mscale);
                sin.push(a.sin() * self.mscale);
            }
        }
        RopeRows { cos, sin, half, interleaved: self.interleaved }
    }
}

/// The cos/sin of one step's positions for one [`RopeSpec`]; backends apply them.
#[derive(Debug, Clone, Default)]
pub struct RopeRows {
    /// `[tokens, half]`.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
    pub interleaved: bool,
}

impl RopeRows {
    /// Rotates the first `2 * half` features of every head of every token of host `x`
    /// (`[tokens, heads, head_dim]`).
    pub fn apply_host(&self, x: &mut [f32], heads: usize, head_dim: usize) {
        let half = self.half;
        for (t, tok) in x.chunks_exact_mut(heads * head_dim).enumerate() {
            let cos = &self.cos[t * half..(t + 1) * half];
            let sin = &self.sin[t * half..(t + 1) * half];
            for v in tok.chunks_exact_mut(head_dim) {
                if self.interleaved {
                    for i in 0..half {
                        let (a, b) = (v[2 * i], v[2 * i + 1]);
                        v[2 * i] = a * cos[i] - b * sin[i];
                        v[2 * i + 1] = a * sin[i] + b * cos[i];
                    }
                } else {
                    for i in 0..half {
                        let (a, b) = (v[i], v[i + half]);
                        v[i] = a * cos[i] - b * sin[i];
                        v[i + half] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn rotation_matches_candle_in_both_conventions() {
        let (heads, hd, t) = (2, 8, 3);
        let x: Vec<f32> = (0..t * heads * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let positions = [4u32, 5, 6];
        for interleaved in [true, false] {
            let spec = RopeSpec::new(hd, 10000.0, &RopeScaling::None, interleaved).unwrap();
            let rows = spec.rows(&positions);
            let mut ours = x.clone();
            rows.apply_host(&mut ours, heads, hd);
            let xt = Tensor::from_vec(x.clone(), (1, t, heads, hd), &Device::Cpu).unwrap();
            let xt = xt.transpose(1, 2).unwrap().contiguous().unwrap();
            let cos = Tensor::from_vec(rows.cos.clone(), (t, 4), &Device::Cpu).unwrap();
            let sin = Tensor::from_vec(rows.sin.clone(), (t, 4), &Device::Cpu).unwrap();
            let y = if interleaved {
                candle_nn::rotary_emb::rope_i(&xt, &cos, &sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope(&xt, &cos, &sin).unwrap()
            };
            let y: Vec<f32> = y.transpose(1, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for (a, b) in ours.iter().zip(&y) {
                assert!((a - b).abs() < 1e-6, "interleaved {interleaved}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn partial_rotary_leaves_the_tail_of_each_head_alone() {
        let spec = RopeSpec::new(4, 10000.0, &RopeScaling::None, false).unwrap();
        let mut x: Vec<f32> = (0..12).map(|i| i as f32 + 1.0).collect();
        spec.rows(&[3]).apply_host(&mut x, 2, 6);
        assert_eq!(&x[4..6], &[5.0, 6.0]);
        assert_eq!(&x[10..12], &[11.0, 12.0]);
        assert_ne!(x[0], 1.0);
    }

    #[test]
    fn scalings_rescale_as_their_definitions_say() {
        let none = RopeSpec::new(8, 10000.0, &RopeScaling::None, false).unwrap().inv_freq;
        let lin = RopeSpec::new(8, 10000.0, &RopeScaling::Linear { factor: 8.0 }, false).unwrap().inv_freq;
        for (a, b) in none.iter().zip(&lin) {
            assert!((a / 8.0 - b).abs() < 1e-9);
        }
        // YaRN: the fastest frequency is kept (extrapolated), the slowest interpolated; cos/sin
        // carry 1 + 0.1 ln(factor).
        let yarn = RopeScaling::Yarn {
            factor: 32.0,
            original_max_position_embeddings: 4096.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            truncate: true,
        };
        let y = RopeSpec::new(64, 150000.0, &yarn, false).unwrap();
        let base = RopeSpec::new(64, 150000.0, &RopeScaling::None, false).unwrap().inv_freq;
        assert_eq!(y.inv_freq[0], base[0]);
        assert!((y.inv_freq[31] - base[31] / 32.0).abs() < 1e-12);
        assert!((y.mscale - (1.0 + 0.1 * 32f32.ln())).abs() < 1e-6);
        let hf = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let l3 = RopeSpec::new(64, 500000.0, &RopeScaling::from_hf(&hf, 131072).unwrap(), false).unwrap();
        let base = RopeSpec::new(64, 500000.0, &RopeScaling::None, false).unwrap().inv_freq;
        assert_eq!(l3.inv_freq[0], base[0]);
        assert!((l3.inv_freq[31] - base[31] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn longrope_picks_factors_by_context_and_unknown_types_are_refused() {
        let hf = serde_json::json!({"type": "longrope", "short_factor": [1.0, 1.0], "long_factor": [2.0, 4.0],
            "original_max_position_embeddings": 4096});
        let short = RopeScaling::from_hf(&hf, 4096).unwrap();
        let long = RopeScaling::from_hf(&hf, 131072).unwrap();
        assert!(matches!(&short, RopeScaling::LongRope { factors, .. } if factors == &[1.0, 1.0]));
        let spec = RopeSpec::new(4, 10000.0, &long, false).unwrap();
        assert!((spec.inv_freq[1] - 0.01 / 4.0).abs() < 1e-9);
        assert!(spec.mscale > 1.0);
        let err = RopeScaling::from_hf(&serde_json::json!({"type": "dynamic-ntk-by-moonlight"}), 10).unwrap_err();
        assert!(err.to_string().contains("dynamic-ntk-by-moonlight"), "{err}");
    }
}
