//! The command line of the `wick` binary. Every `serve` flag also reads a `WICK_*` environment
//! variable (flags win); unset flags fall back to the config file, then to built-in defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, LogFormat, Settings};

#[derive(Debug, Parser)]
#[command(name = "wick", version, about = "An OpenAI-compatible LLM inference server on candle (CPU).")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenAI API (chat completions, completions, responses, models, tokenize, metrics) and the chat page.
    Serve(Box<ServeArgs>),
    /// Perplexity of a model on a text file, llama-perplexity style.
    Perplexity(PerplexityArgs),
    /// Engine throughput: prompt processing, single-sequence and concurrent decode.
    Bench(BenchArgs),
    /// Chat in the terminal with a running server (streamed answers; Ctrl-C stops one).
    Chat(crate::chat_client::ChatArgs),
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Config file (TOML, the shape of config/default.toml).
    #[arg(long, env = "WICK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "WICK_HOST")]
    pub host: Option<String>,
    /// Port to listen on [default: 8080].
    #[arg(long, env = "WICK_PORT")]
    pub port: Option<u16>,
    /// A GGUF file, a Hugging Face model folder, or a Hugging Face repo id. Default: SmolLM2-135M-Instruct Q4_1.
    /// Repeatable: each further one is served beside the first (e.g. `--model all-minilm-l6-v2`, an
    /// embedding model); `default` names the default model.
    #[arg(long, env = "WICK_MODEL", value_delimiter = ',')]
    pub model: Vec<String>,
    /// Hub revision (branch, tag or commit) for a repo id [default: main].
    #[arg(long, env = "WICK_REVISION")]
    pub revision: Option<String>,
    /// For a GGUF repo: the file name, or a quant (e.g. Q4_K_M) to pick the file by.
    #[arg(long, env = "WICK_GGUF_FILE")]
    pub gguf_file: Option<String>,
    /// Model id(s) clients use; the first is listed by /v1/models [default: derived from the model].
    #[arg(long, env = "WICK_SERVED_MODEL_NAME", value_delimiter = ',')]
    pub served_model_name: Vec<String>,
    /// A Jinja chat template file overriding the model's.
    #[arg(long, env = "WICK_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,
    /// Use only local caches; never touch the network.
    #[arg(long, env = "WICK_OFFLINE", num_args = 0..=1, default_missing_value = "true")]
    pub offline: Option<bool>,
    /// Accepted API key (repeatable; WICK_API_KEY may hold a comma-separated list). No key: open.
    #[arg(long = "api-key", env = "WICK_API_KEY", value_delimiter = ',', hide_env_values = true)]
    pub api_key: Vec<String>,
    /// File with one API key per line.
    #[arg(long, env = "WICK_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Allowed CORS origin (repeatable, or `*`). None: CORS off.
    #[arg(long = "cors-allow-origin", env = "WICK_CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,
    /// Log format [default: text].
    #[arg(long, env = "WICK_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter (tracing EnvFilter syntax) [default: info].
    #[arg(long, env = "WICK_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Largest accepted request body in bytes [default: 4 MiB].
    #[arg(long, env = "WICK_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most open client connections; more wait in the listen backlog [default: 1024].
    #[arg(long, env = "WICK_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a client may take to send request headers (also the keep-alive idle limit) [default: 15].
    #[arg(long, env = "WICK_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds a client may take to send a request body [default: 60].
    #[arg(long, env = "WICK_BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<u64>,
    /// Seconds in-flight requests get to finish after SIGTERM/Ctrl-C [default: 30].
    #[arg(long, env = "WICK_SHUTDOWN_TIMEOUT_SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Also export vLLM's metric names (for endpoint pickers that read them) [default: none].
    #[arg(long, env = "WICK_METRICS_COMPAT", value_enum)]
    pub metrics_compat: Option<crate::metrics::Compat>,
    /// Seconds between SSE keep-alive comments [default: 10].
    #[arg(long, env = "WICK_SSE_KEEP_ALIVE_SECS")]
    pub sse_keep_alive_secs: Option<u64>,
    /// Tokens per KV-cache block [default: 16].
    #[arg(long, env = "WICK_BLOCK_SIZE")]
    pub block_size: Option<usize>,
    /// KV-cache memory budget in MiB [default: 512].
    #[arg(long, env = "WICK_KV_CACHE_MB")]
    pub kv_cache_mb: Option<usize>,
    /// Exact KV block count, overriding --kv-cache-mb.
    #[arg(long, env = "WICK_NUM_BLOCKS")]
    pub num_blocks: Option<usize>,
    /// Most sequences in the running batch [default: 64].
    #[arg(long, env = "WICK_MAX_NUM_SEQS")]
    pub max_num_seqs: Option<usize>,
    /// Token budget per engine step, shared by prefill chunks and decodes [default: 512].
    #[arg(long, env = "WICK_MAX_NUM_BATCHED_TOKENS")]
    pub max_num_batched_tokens: Option<usize>,
    /// Most prompt tokens in a step that also decodes, so new prompts slow running streams
    /// by a bounded amount [default: 256].
    #[arg(long, env = "WICK_MAX_PREFILL_TOKENS_PER_DECODE_STEP")]
    pub max_prefill_tokens_per_decode_step: Option<usize>,
    /// Most requests waiting for admission before 429s [default: 256].
    #[arg(long, env = "WICK_MAX_WAITING")]
    pub max_waiting: Option<usize>,
    /// Context length cap [default: the model's].
    #[arg(long, env = "WICK_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    /// Memory all loaded models may take together, in MiB; the least recently used idle one is
    /// unloaded to make room [default: 0, no limit].
    #[arg(long, env = "WICK_MEMORY_BUDGET_MB")]
    pub memory_budget_mb: Option<u64>,
    /// Data folder (the response store) [default: $XDG_DATA_HOME/wick or ~/.local/share/wick].
    #[arg(long, env = "WICK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Response store of /v1/responses: a SQLite file, a postgres:// URL, or `off` [default: <data-dir>/responses.sqlite3].
    #[arg(long, env = "WICK_RESPONSES_STORE")]
    pub responses_store: Option<String>,
    /// Drop stored responses older than this many days (0: never) [default: 30].
    #[arg(long, env = "WICK_RESPONSES_MAX_AGE_DAYS")]
    pub responses_max_age_days: Option<u64>,
    /// Drop the oldest stored responses beyond this many MiB (0: no limit) [default: 1024].
    #[arg(long, env = "WICK_RESPONSES_MAX_MB")]
    pub responses_max_mb: Option<u64>,
    /// Do not serve the chat page at `/`.
    #[arg(long, env = "WICK_NO_UI", num_args = 0..=1, default_missing_value = "true")]
    pub no_ui: Option<bool>,
    /// Turn automatic prefix caching off (every prompt is prefilled from scratch).
    #[arg(long, env = "WICK_NO_PREFIX_CACHING")]
    pub no_prefix_caching: bool,
    /// How the KV cache stores K/V: f16, q8 (8-bit, per-row scale) or f32 [default: f16].
    #[arg(long, env = "WICK_KV_CACHE_DTYPE", value_parser = parse_kv_dtype)]
    pub kv_cache_dtype: Option<wick_engine::kv_cache::KvDtype>,
}

fn parse_kv_dtype(s: &str) -> Result<wick_engine::kv_cache::KvDtype, String> {
    wick_engine::kv_cache::KvDtype::parse(s).ok_or_else(|| format!("unknown KV cache dtype `{s}` (f16, q8 or f32)"))
}

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// Model to score (same forms as `serve --model`; default: the default model).
    #[arg(long, env = "WICK_MODEL")]
    pub model: Option<String>,
    /// Text file to score.
    #[arg(long)]
    pub file: PathBuf,
    /// Context window per chunk.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// How the KV cache stores K/V while scoring (as `serve --kv-cache-dtype`).
    #[arg(long, default_value = "f16", value_parser = parse_kv_dtype)]
    pub kv_cache_dtype: wick_engine::kv_cache::KvDtype,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model to measure (same forms as `serve --model`; default: the default model).
    #[arg(long, env = "WICK_MODEL")]
    pub model: Option<String>,
    /// Prompt length of the prompt-processing run.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens generated per sequence in the decode runs.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Concurrency levels of the aggregate runs (comma-separated): decode at each, and prefill
    /// of that many prompts at once at each above 1.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Repetitions of each measurement; the best is reported.
    #[arg(long, default_value_t = 2)]
    pub repetitions: usize,
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

impl ServeArgs {
    /// Settings from the config file (if any) with the flags/environment applied on top.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let mut s = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        self.apply(&mut s);
        Ok(s)
    }

    pub fn apply(&self, s: &mut Settings) {
        let a = self;
        set(&mut s.server.host, a.host.clone());
        set(&mut s.server.port, a.port);
        if !a.api_key.is_empty() {
            s.server.api_keys = a.api_key.clone();
        }
        if a.api_key_file.is_some() {
            s.server.api_key_file = a.api_key_file.clone();
        }
        if !a.cors_allow_origin.is_empty() {
            s.server.cors_allow_origins = a.cors_allow_origin.clone();
        }
        set(&mut s.server.log_format, a.log_format);
        set(&mut s.server.log_level, a.log_level.clone());
        set(&mut s.server.max_body_bytes, a.max_body_bytes);
        set(&mut s.server.max_connections, a.max_connections);
        set(&mut s.server.header_read_timeout_secs, a.header_read_timeout_secs);
        set(&mut s.server.body_read_timeout_secs, a.body_read_timeout_secs);
        set(&mut s.server.shutdown_timeout_secs, a.shutdown_timeout_secs);
        set(&mut s.server.sse_keep_alive_secs, a.sse_keep_alive_secs);
        set(&mut s.server.metrics_compat, a.metrics_compat);
        if let Some((first, more)) = a.model.split_first() {
            s.model.model = Some(first.clone());
            s.models.extend(more.iter().map(crate::config::ModelEntrySettings::new));
        }
        set(&mut s.engine.memory_budget_mb, a.memory_budget_mb);
        set(&mut s.model.revision, a.revision.clone());
        if a.gguf_file.is_some() {
            s.model.gguf_file = a.gguf_file.clone();
        }
        if !a.served_model_name.is_empty() {
            s.model.served_model_name = a.served_model_name.clone();
        }
        if a.chat_template.is_some() {
            s.model.chat_template = a.chat_template.clone();
        }
        set(&mut s.model.offline, a.offline);
        set(&mut s.engine.block_size, a.block_size);
        set(&mut s.engine.kv_cache_mb, a.kv_cache_mb);
        if a.num_blocks.is_some() {
            s.engine.num_blocks = a.num_blocks;
        }
        set(&mut s.engine.max_num_seqs, a.max_num_seqs);
        set(&mut s.engine.max_num_batched_tokens, a.max_num_batched_tokens);
        set(&mut s.engine.max_prefill_tokens_per_decode_step, a.max_prefill_tokens_per_decode_step);
        set(&mut s.engine.max_waiting, a.max_waiting);
        if a.max_model_len.is_some() {
            s.engine.max_model_len = a.max_model_len;
        }
        if a.data_dir.is_some() {
            s.server.data_dir = a.data_dir.clone();
        }
        if let Some(no_ui) = a.no_ui {
            s.server.ui = !no_ui;
        }
        set(&mut s.responses.store, a.responses_store.clone());
        set(&mut s.responses.max_age_days, a.responses_max_age_days);
        set(&mut s.responses.max_mb, a.responses_max_mb);
        if a.no_prefix_caching {
            s.engine.prefix_caching = false;
        }
        if let Some(d) = a.kv_cache_dtype {
            s.engine.kv_cache_dtype = d.name().to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["wick", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Serve(a) => *a,
            _ => panic!("expected serve"),
        }
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wick.toml");
        std::fs::write(&path, "[server]\nport = 9000\nhost = \"0.0.0.0\"\n[engine]\nmax_waiting = 3\n").expect("write");
        let cfg = path.to_str().expect("utf8");
        let s = serve(&["--config", cfg, "--port", "9100", "--api-key", "a", "--api-key", "b", "--offline"])
            .settings()
            .expect("settings");
        assert_eq!(s.server.port, 9100, "flag beats file");
        assert_eq!(s.server.host, "0.0.0.0", "file beats default");
        assert_eq!(s.engine.max_waiting, 3);
        assert_eq!(s.server.api_keys, vec!["a".to_string(), "b".to_string()]);
        assert!(s.model.offline);
        assert_eq!(s.engine.max_num_seqs, Settings::default().engine.max_num_seqs, "untouched knob keeps its default");
    }

    #[test]
    fn model_is_repeatable() {
        let s = serve(&["--model", "chat.gguf", "--model", "all-minilm-l6-v2", "--memory-budget-mb", "900"])
            .settings()
            .expect("settings");
        assert_eq!(s.model.model.as_deref(), Some("chat.gguf"));
        assert_eq!(s.models, vec![crate::config::ModelEntrySettings::new("all-minilm-l6-v2")]);
        assert_eq!(s.engine.memory_budget_mb, 900);
        let one = serve(&[]).settings().expect("settings");
        assert!(one.model.model.is_none() && one.models.is_empty(), "no flag: the default model alone");
    }

    #[test]
    fn key_file_lines_are_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(&path, "k1\n\n# comment\n k2 \n").expect("write");
        let s =
            serve(&["--api-key", "k0", "--api-key-file", path.to_str().expect("utf8")]).settings().expect("settings");
        assert_eq!(s.all_api_keys().expect("keys"), vec!["k0", "k1", "k2"]);
    }
}
