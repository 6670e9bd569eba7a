//! The periodic stats line of the server log (vLLM's "Avg prompt throughput ..." line): every
//! interval in which the engine did something, prompt and generation throughput, the running
//! and waiting requests, KV-cache usage and the prefix-cache hit rate (over the interval and
//! since start).

use std::sync::Arc;
use std::time::Duration;

use wick_engine::EngineStats;

use crate::backend::Backend;

/// Logs one line per `every` while the engine is active, until the engine stops.
pub async fn run(backend: Arc<dyn Backend>, every: Duration) {
    let mut last = backend.stats();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    while backend.is_running() {
        tick.tick().await;
        let now = backend.stats();
        if let Some(line) = line(&last, &now, every) {
            tracing::info!("{line}");
        }
        last = now;
    }
}

/// The stats line for the interval from `a` to `b`, or `None` if the engine was idle.
pub fn line(a: &EngineStats, b: &EngineStats, every: Duration) -> Option<String> {
    if b.steps_total == a.steps_total && b.running == 0 && b.waiting == 0 {
        return None;
    }
    let secs = every.as_secs_f64().max(1e-3);
    let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
    let pct = |hits: u64, queries: u64| if queries == 0 { 0.0 } else { 100.0 * hits as f64 / queries as f64 };
    let kv = if b.kv_blocks_total == 0 { 0.0 } else { 100.0 * b.kv_blocks_used as f64 / b.kv_blocks_total as f64 };
    Some(format!(
        "prompt {:.1} tok/s, generation {:.1} tok/s, running {}, waiting {}, KV cache {kv:.1}% used \
         ({} cached blocks), prefix cache hit rate {:.1}% ({:.1}% since start)",
        rate(a.prompt_tokens_total, b.prompt_tokens_total),
        rate(a.generation_tokens_total, b.generation_tokens_total),
        b.running,
        b.waiting,
        b.kv_blocks_cached,
        pct(
            b.prefix_cache_hits_total.saturating_sub(a.prefix_cache_hits_total),
            b.prefix_cache_queries_total.saturating_sub(a.prefix_cache_queries_total)
        ),
        pct(b.prefix_cache_hits_total, b.prefix_cache_queries_total),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_intervals_log_nothing_and_busy_ones_give_the_hit_rate() {
        let a = EngineStats { kv_blocks_total: 10, ..EngineStats::default() };
        assert_eq!(line(&a, &a, Duration::from_secs(10)), None);
        let b = EngineStats {
            steps_total: 5,
            prompt_tokens_total: 100,
            generation_tokens_total: 50,
            kv_blocks_used: 5,
            prefix_cache_queries_total: 400,
            prefix_cache_hits_total: 300,
            ..a
        };
        let l = line(&a, &b, Duration::from_secs(10)).unwrap();
        assert!(l.contains("prompt 10.0 tok/s"), "{l}");
        assert!(l.contains("generation 5.0 tok/s"), "{l}");
        assert!(l.contains("KV cache 50.0% used"), "{l}");
        assert!(l.contains("prefix cache hit rate 75.0% (75.0% since start)"), "{l}");
    }
}
