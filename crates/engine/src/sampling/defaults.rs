//! Sampling defaults, highest first: the request's fields; the model's recommendation (HF
//! `generation_config.json`, GGUF `general.sampling.*`); the server's `[sampling]` settings;
//! OpenAI's own (temperature 1, top_p 1, no top-k, min-p or repetition penalty). Each level
//! fills only what the levels above leave unset.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use serde::Serialize;

/// Defaults for the sampling fields a request may leave out; `None` defers to the next level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl SamplingDefaults {
    /// `self`, with what it leaves unset taken from `lower`.
    pub fn over(self, lower: SamplingDefaults) -> SamplingDefaults {
        SamplingDefaults {
            temperature: self.temperature.or(lower.temperature),
            top_p: self.top_p.or(lower.top_p),
            top_k: self.top_k.or(lower.top_k),
            min_p: self.min_p.or(lower.min_p),
            repetition_penalty: self.repetition_penalty.or(lower.repetition_penalty),
        }
    }

    /// Every field set: what is still unset takes OpenAI's value.
    pub fn resolved(self) -> SamplingDefaults {
        self.over(SamplingDefaults {
            temperature: Some(1.0),
            top_p: Some(1.0),
            top_k: Some(0),
            min_p: Some(0.0),
            repetition_penalty: Some(1.0),
        })
    }

    /// A GGUF file's `general.sampling.*` keys (llama.cpp's names), where present.
    pub fn from_gguf(content: &Content) -> SamplingDefaults {
        let f = |key: &str| content.metadata.get(&format!("general.sampling.{key}")).and_then(gguf_f32);
        SamplingDefaults {
            temperature: f("temp"),
            top_p: f("top_p"),
            top_k: f("top_k").filter(|k| *k >= 0.0).map(|k| k as usize),
            min_p: f("min_p"),
            repetition_penalty: f("penalty_repeat"),
        }
        .sane()
    }

    /// A Hugging Face folder's `generation_config.json`, where present. A config that turns
    /// sampling off (`do_sample: false`) recommends greedy decoding.
    pub fn from_generation_config(dir: &Path) -> SamplingDefaults {
        let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) else {
            return SamplingDefaults::default();
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return SamplingDefaults::default() };
        let f = |key: &str| v.get(key).and_then(serde_json::Value::as_f64).map(|x| x as f32);
        let greedy = v.get("do_sample").and_then(serde_json::Value::as_bool) == Some(false);
        SamplingDefaults {
            temperature: if greedy { Some(0.0) } else { f("temperature") },
            top_p: f("top_p"),
            top_k: f("top_k").filter(|k| *k >= 0.0).map(|k| k as usize),
            min_p: f("min_p"),
            repetition_penalty: f("repetition_penalty"),
        }
        .sane()
    }

    /// Drops values outside the ranges a request could ask for.
    fn sane(self) -> SamplingDefaults {
        let within = |v: Option<f32>, lo: f32, hi: f32| v.filter(|x| x.is_finite() && *x >= lo && *x <= hi);
        SamplingDefaults {
            temperature: within(self.temperature, 0.0, 2.0),
            top_p: within(self.top_p, f32::MIN_POSITIVE, 1.0),
            top_k: self.top_k,
            min_p: within(self.min_p, 0.0, 1.0),
            repetition_penalty: within(self.repetition_penalty, f32::MIN_POSITIVE, 10.0),
        }
    }
}

fn gguf_f32(v: &GgufValue) -> Option<f32> {
    match v {
        GgufValue::F32(x) => Some(*x),
        GgufValue::F64(x) => Some(*x as f32),
        GgufValue::U8(x) => Some(f32::from(*x)),
        GgufValue::I8(x) => Some(f32::from(*x)),
        GgufValue::U16(x) => Some(f32::from(*x)),
        GgufValue::I16(x) => Some(f32::from(*x)),
        GgufValue::U32(x) => Some(*x as f32),
        GgufValue::I32(x) => Some(*x as f32),
        GgufValue::U64(x) => Some(*x as f32),
        GgufValue::I64(x) => Some(*x as f32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_fill_only_what_the_higher_ones_leave_unset() {
        let model = SamplingDefaults { temperature: Some(0.6), top_p: Some(0.95), ..Default::default() };
        let server =
            SamplingDefaults { temperature: Some(0.2), top_k: Some(40), min_p: Some(0.05), ..Default::default() };
        let d = model.over(server).resolved();
        assert_eq!(d.temperature, Some(0.6));
        assert_eq!(d.top_p, Some(0.95));
        assert_eq!(d.top_k, Some(40));
        assert_eq!(d.min_p, Some(0.05));
        assert_eq!(d.repetition_penalty, Some(1.0), "OpenAI's own last");
    }

    #[test]
    fn generation_config_is_read_and_insane_values_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"temperature": 0.7, "top_p": 1.5, "top_k": 20, "repetition_penalty": 1.05}"#,
        )
        .expect("write");
        let d = SamplingDefaults::from_generation_config(dir.path());
        assert_eq!((d.temperature, d.top_p, d.top_k, d.repetition_penalty), (Some(0.7), None, Some(20), Some(1.05)));
        std::fs::write(dir.path().join("generation_config.json"), r#"{"do_sample": false, "temperature": 0.9}"#)
            .expect("write");
        assert_eq!(SamplingDefaults::from_generation_config(dir.path()).temperature, Some(0.0));
        assert_eq!(SamplingDefaults::from_generation_config(&dir.path().join("none")), SamplingDefaults::default());
    }
}
