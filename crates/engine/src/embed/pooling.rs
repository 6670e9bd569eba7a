//! How token vectors become one sentence vector, and where a model says so: sentence-transformers'
//! files (`modules.json` lists the pipeline — Transformer, Pooling, Normalize —, the Pooling
//! module's `config.json` the pooling, `sentence_bert_config.json` the longest input,
//! `config_sentence_transformers.json` the instruction prompts), or a GGUF's
//! `<arch>.pooling_type` (llama.cpp's enum). Pooling itself runs here, over a model's rows.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::{EngineError, Result};

/// How a sequence's token vectors become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's vector (`[CLS]`).
    Cls,
    /// The mean over the sequence's tokens (padding left out).
    Mean,
    /// The last token's vector (decoder embedding models).
    LastToken,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::LastToken => "last_token",
        }
    }

    /// A pooling named in a config file: `mean`, `cls`, or `last` (also `last_token`, `lasttoken`).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "last" | "last_token" | "lasttoken" => Ok(Pooling::LastToken),
            other => Err(EngineError::Unsupported(format!("pooling {other:?} (supported: mean, cls, last)"))),
        }
    }

    /// A GGUF's `<arch>.pooling_type` (llama.cpp's `llama_pooling_type`: 0 none, 1 mean, 2 cls,
    /// 3 last, 4 rank). None: the file is not an embedding model (0).
    pub fn from_gguf(value: u32) -> Result<Option<Self>> {
        match value {
            0 => Ok(None),
            1 => Ok(Some(Pooling::Mean)),
            2 => Ok(Some(Pooling::Cls)),
            3 => Ok(Some(Pooling::LastToken)),
            4 => Err(EngineError::Unsupported("pooling_type 4 (rank: a reranker, not an embedding model)".into())),
            n => Err(EngineError::Unsupported(format!("pooling_type {n} (llama.cpp's are 0 to 4)"))),
        }
    }

    /// The rows of a sequence of `len` tokens this pooling reads (indices from 0).
    pub fn rows(self, len: usize) -> std::ops::Range<usize> {
        match self {
            Pooling::Cls => 0..len.min(1),
            Pooling::LastToken => len.saturating_sub(1)..len,
            Pooling::Mean => 0..len,
        }
    }

    /// Pools the first `len` rows of `rows` (row-major, `dim` wide) into `out`.
    pub fn pool(self, rows: &[f32], len: usize, dim: usize, out: &mut [f32]) {
        debug_assert!(len >= 1 && rows.len() >= len * dim && out.len() == dim);
        match self {
            Pooling::Cls => out.copy_from_slice(&rows[..dim]),
            Pooling::LastToken => out.copy_from_slice(&rows[(len - 1) * dim..len * dim]),
            Pooling::Mean => {
                out.fill(0.0);
                for row in rows[..len * dim].chunks_exact(dim) {
                    out.iter_mut().zip(row).for_each(|(o, x)| *o += x);
                }
                let inv = 1.0 / len as f32;
                out.iter_mut().for_each(|o| *o *= inv);
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PoolingConfig {
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BertConfig {
    max_seq_length: Option<usize>,
}

/// `config_sentence_transformers.json`: named instruction prompts.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PromptsConfig {
    prompts: BTreeMap<String, String>,
    default_prompt_name: Option<String>,
}

/// What sentence-transformers' files say about a folder.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceTransformersConfig {
    /// Whether the folder has a `modules.json` (else the rest are sentence-transformers' defaults).
    pub has_modules: bool,
    pub pooling: Pooling,
    pub normalize: bool,
    /// `max_seq_length` of `sentence_bert_config.json`, if given.
    pub max_seq_length: Option<usize>,
    /// Named prompts put before an input's text (`config_sentence_transformers.json`).
    pub prompts: BTreeMap<String, String>,
    /// The prompt used when a request names none.
    pub default_prompt_name: Option<String>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))
}

impl SentenceTransformersConfig {
    /// Reads `dir`'s sentence-transformers files. A folder without `modules.json` is a plain
    /// Hugging Face encoder: mean pooling, no normalization (sentence-transformers' defaults).
    pub fn read(dir: &Path) -> Result<Self> {
        let max_seq_length = match dir.join("sentence_bert_config.json") {
            p if p.is_file() => read_json::<BertConfig>(&p)?.max_seq_length,
            _ => None,
        };
        let prompts = match dir.join("config_sentence_transformers.json") {
            p if p.is_file() => read_json::<PromptsConfig>(&p)?,
            _ => PromptsConfig::default(),
        };
        let modules_path = dir.join("modules.json");
        let (prompts, default_prompt_name) = (prompts.prompts, prompts.default_prompt_name);
        if !modules_path.is_file() {
            return Ok(Self {
                has_modules: false,
                pooling: Pooling::Mean,
                normalize: false,
                max_seq_length,
                prompts,
                default_prompt_name,
            });
        }
        let modules: Vec<Module> = read_json(&modules_path)?;
        let mut pooling = None;
        let mut normalize = false;
        for m in &modules {
            let kind = m.kind.rsplit('.').next().unwrap_or(&m.kind);
            match kind {
                "Transformer" => {}
                "Normalize" => normalize = true,
                "Pooling" => pooling = Some(Self::pooling(&dir.join(&m.path).join("config.json"))?),
                other => {
                    return Err(EngineError::Unsupported(format!(
                        "sentence-transformers module `{other}` ({}) is not supported (Transformer, Pooling and \
                         Normalize are)",
                        m.kind
                    )))
                }
            }
        }
        Ok(Self {
            has_modules: true,
            pooling: pooling.unwrap_or(Pooling::Mean),
            normalize,
            max_seq_length,
            prompts,
            default_prompt_name,
        })
    }

    fn pooling(path: &Path) -> Result<Pooling> {
        let c: PoolingConfig = read_json(path)?;
        let unsupported = [
            (c.pooling_mode_max_tokens, "max"),
            (c.pooling_mode_mean_sqrt_len_tokens, "mean_sqrt_len"),
            (c.pooling_mode_weightedmean_tokens, "weightedmean"),
        ];
        if let Some((_, name)) = unsupported.iter().find(|(on, _)| *on) {
            return Err(EngineError::Unsupported(format!("{}: {name} pooling is not supported", path.display())));
        }
        match (c.pooling_mode_cls_token, c.pooling_mode_mean_tokens, c.pooling_mode_lasttoken) {
            (true, false, false) => Ok(Pooling::Cls),
            (false, true, false) => Ok(Pooling::Mean),
            (false, false, true) => Ok(Pooling::LastToken),
            _ => Err(EngineError::Unsupported(format!(
                "{}: exactly one of cls, mean and last-token pooling must be on",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes() {
        let rows = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        let mut out = [0.0; 2];
        Pooling::Mean.pool(&rows, 2, 2, &mut out);
        assert_eq!(out, [2.0, 3.0], "the padding row is left out");
        Pooling::Cls.pool(&rows, 2, 2, &mut out);
        assert_eq!(out, [1.0, 2.0]);
        Pooling::LastToken.pool(&rows, 2, 2, &mut out);
        assert_eq!(out, [3.0, 4.0]);
        assert_eq!((Pooling::Cls.rows(5), Pooling::LastToken.rows(5), Pooling::Mean.rows(5)), (0..1, 4..5, 0..5));
    }

    #[test]
    fn pooling_from_config_names_and_gguf_values() {
        assert_eq!(Pooling::parse("last").expect("last"), Pooling::LastToken);
        assert_eq!(Pooling::parse("Mean").expect("mean"), Pooling::Mean);
        assert_eq!(Pooling::parse("cls").expect("cls"), Pooling::Cls);
        assert!(Pooling::parse("max").is_err(), "max pooling is refused, not ignored");
        assert_eq!(Pooling::from_gguf(0).expect("none"), None);
        assert_eq!(Pooling::from_gguf(1).expect("mean"), Some(Pooling::Mean));
        assert_eq!(Pooling::from_gguf(2).expect("cls"), Some(Pooling::Cls));
        assert_eq!(Pooling::from_gguf(3).expect("last"), Some(Pooling::LastToken));
        assert!(Pooling::from_gguf(4).is_err(), "rank pooling (rerankers) is refused");
        assert!(Pooling::from_gguf(9).is_err());
    }

    #[test]
    fn reads_the_sentence_transformers_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(
            d.join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .expect("write");
        std::fs::create_dir(d.join("1_Pooling")).expect("mkdir");
        std::fs::write(d.join("1_Pooling/config.json"), r#"{"pooling_mode_cls_token": true}"#).expect("write");
        std::fs::write(d.join("sentence_bert_config.json"), r#"{"max_seq_length": 256}"#).expect("write");
        std::fs::write(
            d.join("config_sentence_transformers.json"),
            r#"{"prompts": {"query": "Instruct: find\nQuery:", "document": ""}, "default_prompt_name": null}"#,
        )
        .expect("write");
        let c = SentenceTransformersConfig::read(d).expect("reads");
        let prompts: BTreeMap<String, String> =
            [("query".into(), "Instruct: find\nQuery:".into()), ("document".into(), String::new())].into();
        assert_eq!(
            c,
            SentenceTransformersConfig {
                has_modules: true,
                pooling: Pooling::Cls,
                normalize: true,
                max_seq_length: Some(256),
                prompts,
                default_prompt_name: None
            }
        );
        std::fs::write(d.join("1_Pooling/config.json"), r#"{"pooling_mode_lasttoken": true}"#).expect("write");
        assert_eq!(SentenceTransformersConfig::read(d).expect("reads").pooling, Pooling::LastToken);
        std::fs::write(d.join("1_Pooling/config.json"), r#"{"pooling_mode_max_tokens": true}"#).expect("write");
        assert!(SentenceTransformersConfig::read(d).is_err(), "max pooling is refused, not ignored");
    }
}
