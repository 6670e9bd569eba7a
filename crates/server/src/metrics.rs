//! Prometheus metrics at `/metrics`, named after vLLM's with a `wick:` prefix. Engine gauges and
//! counters are read from the engine's stats at scrape time; latency histograms are recorded by
//! the request handlers as events arrive.
//!
//! `wick:cache_config_info` (value 1) carries the KV cache's `block_size` and `num_gpu_blocks`
//! as labels, like vLLM's `vllm:cache_config_info`. With `--metrics-compat vllm` the gauges a
//! Gateway API Inference Extension endpoint picker reads by default are exported under vLLM's
//! names too (`vllm:num_requests_waiting`, `vllm:num_requests_running`,
//! `vllm:kv_cache_usage_perc`, `vllm:cache_config_info`), for pickers whose flags cannot be
//! pointed at wick's names.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use wick_engine::EngineStats;

pub const RUNNING: &str = "wick:num_requests_running";
pub const WAITING: &str = "wick:num_requests_waiting";
pub const KV_USAGE: &str = "wick:kv_cache_usage_perc";
pub const PROMPT_TOKENS: &str = "wick:prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "wick:generation_tokens_total";
pub const PREEMPTIONS: &str = "wick:num_preemptions_total";
pub const TTFT: &str = "wick:time_to_first_token_seconds";
pub const ITL: &str = "wick:inter_token_latency_seconds";
pub const E2E: &str = "wick:e2e_request_latency_seconds";
pub const QUEUE: &str = "wick:request_queue_time_seconds";
pub const SUCCESS: &str = "wick:request_success_total";
pub const STEP_TIME: &str = "wick:engine_step_seconds";
pub const MASK_TIME: &str = "wick:grammar_mask_seconds";
pub const MASKS: &str = "wick:grammar_masks_total";
pub const PREFIX_QUERIES: &str = "wick:prefix_cache_queries_total";
pub const PREFIX_HITS: &str = "wick:prefix_cache_hits_total";
pub const KV_CACHED_BLOCKS: &str = "wick:kv_cache_cached_blocks";
pub const CACHE_CONFIG: &str = "wick:cache_config_info";

/// Whether vLLM's names are exported as well.
static VLLM_COMPAT: AtomicBool = AtomicBool::new(false);

/// Which extra metric names `/metrics` exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compat {
    /// wick's names only.
    #[default]
    None,
    /// vLLM's queue, running and KV-cache gauges and cache info as well.
    Vllm,
}

pub fn set_compat(c: Compat) {
    VLLM_COMPAT.store(c == Compat::Vllm, Ordering::Relaxed);
}

/// Publishes the KV cache's shape (once the engine is up).
pub fn set_cache_config(block_size: usize, num_blocks: u64) {
    let (bs, nb) = (block_size.to_string(), num_blocks.to_string());
    gauge!(CACHE_CONFIG, "block_size" => bs.clone(), "num_gpu_blocks" => nb.clone()).set(1.0);
    if VLLM_COMPAT.load(Ordering::Relaxed) {
        gauge!("vllm:cache_config_info", "block_size" => bs, "num_gpu_blocks" => nb).set(1.0);
    }
}

const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(RUNNING, "Requests in the running batch.");
    describe_gauge!(WAITING, "Requests waiting for admission.");
    describe_gauge!(KV_USAGE, Unit::Percent, "Fraction of KV-cache blocks in use (0 to 1).");
    describe_counter!(PROMPT_TOKENS, "Prompt tokens processed.");
    describe_counter!(GENERATION_TOKENS, "Tokens generated.");
    describe_counter!(PREEMPTIONS, "Sequences preempted for lack of KV blocks.");
    describe_counter!(SUCCESS, "Requests finished, by finish reason.");
    describe_histogram!(TTFT, Unit::Seconds, "Time from arrival to the first token.");
    describe_histogram!(ITL, Unit::Seconds, "Time between consecutive tokens of a sequence.");
    describe_histogram!(E2E, Unit::Seconds, "Time from arrival to the last token.");
    describe_histogram!(QUEUE, Unit::Seconds, "Time spent waiting for admission.");
    describe_gauge!(STEP_TIME, Unit::Seconds, "Wall time of all engine steps so far (cumulative).");
    describe_gauge!(MASK_TIME, Unit::Seconds, "Part of the engine steps spent computing grammar masks (cumulative).");
    describe_counter!(MASKS, "Grammar masks computed (one per constrained sequence per step).");
    describe_counter!(PREFIX_QUERIES, "Prompt tokens looked up in the prefix cache.");
    describe_counter!(PREFIX_HITS, "Prompt tokens found in the prefix cache (not recomputed).");
    describe_gauge!(KV_CACHED_BLOCKS, "Free KV-cache blocks still holding a cached prefix (reusable until evicted).");
    describe_gauge!(CACHE_CONFIG, "KV cache configuration (labels block_size, num_gpu_blocks); value 1.");
}

/// Renders the exposition text, refreshing the engine-derived values first.
pub fn render(handle: &PrometheusHandle, stats: Option<EngineStats>) -> String {
    if let Some(s) = stats {
        gauge!(RUNNING).set(s.running as f64);
        gauge!(WAITING).set(s.waiting as f64);
        let usage = if s.kv_blocks_total == 0 { 0.0 } else { s.kv_blocks_used as f64 / s.kv_blocks_total as f64 };
        gauge!(KV_USAGE).set(usage);
        if VLLM_COMPAT.load(Ordering::Relaxed) {
            gauge!("vllm:num_requests_running").set(s.running as f64);
            gauge!("vllm:num_requests_waiting").set(s.waiting as f64);
            gauge!("vllm:kv_cache_usage_perc").set(usage);
        }
        counter!(PROMPT_TOKENS).absolute(s.prompt_tokens_total);
        counter!(GENERATION_TOKENS).absolute(s.generation_tokens_total);
        counter!(PREEMPTIONS).absolute(s.preemptions_total);
        counter!(PREFIX_QUERIES).absolute(s.prefix_cache_queries_total);
        counter!(PREFIX_HITS).absolute(s.prefix_cache_hits_total);
        gauge!(KV_CACHED_BLOCKS).set(s.kv_blocks_cached as f64);
        gauge!(STEP_TIME).set(s.step_micros_total as f64 / 1e6);
        gauge!(MASK_TIME).set(s.grammar_mask_micros_total as f64 / 1e6);
        counter!(MASKS).absolute(s.grammar_masks_total);
    }
    handle.run_upkeep();
    handle.render()
}

pub fn record_ttft(d: Duration) {
    histogram!(TTFT).record(d.as_secs_f64());
}
pub fn record_itl(d: Duration) {
    histogram!(ITL).record(d.as_secs_f64());
}
pub fn record_e2e(d: Duration) {
    histogram!(E2E).record(d.as_secs_f64());
}
pub fn record_queue(d: Duration) {
    histogram!(QUEUE).record(d.as_secs_f64());
}
pub fn record_finished(reason: &'static str) {
    counter!(SUCCESS, "finished_reason" => reason).increment(1);
}
