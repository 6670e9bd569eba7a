//! `wick bench`: engine throughput through the real scheduler and engine thread — prompt
//! processing of one and of several prompts at once, single-sequence decode, and aggregate
//! decode with several concurrent sequences.
//! Figures comparable with llama.cpp's `llama-bench` pp/tg numbers.

use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::request::{Event, GenerateRequest, SamplingParams};
use crate::{EngineError, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Prompt length for the prompt-processing run (llama-bench's pp).
    pub prompt_tokens: usize,
    /// Generated tokens per sequence in the decode runs (llama-bench's tg).
    pub gen_tokens: usize,
    /// Concurrency levels for aggregate prefill (those above 1) and decode.
    pub concurrency: Vec<usize>,
    /// Repetitions of each measurement; the best is reported.
    pub repetitions: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self { prompt_tokens: 512, gen_tokens: 128, concurrency: vec![1, 4, 16], repetitions: 2 }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub name: String,
    pub tokens: usize,
    pub seconds: f64,
}

impl BenchResult {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Deterministic filler prompt of `len` ordinary token ids (no special tokens at the ends).
fn synthetic_prompt(len: usize, vocab: usize, salt: usize) -> Vec<u32> {
    let lo = 300.min(vocab / 2);
    let span = (vocab - lo).max(1);
    (0..len).map(|i| (lo + (i * 7919 + salt * 104_729) % span) as u32).collect()
}

struct RunTimes {
    first_token: Duration,
    end: Duration,
    generated: usize,
}

/// Submits `prompts` at once, each generating exactly `gen` tokens, and waits for all.
fn run_concurrent(engine: &Engine, prompts: Vec<Vec<u32>>, gen: usize) -> Result<Vec<RunTimes>> {
    let start = Instant::now();
    let mut receivers = Vec::new();
    for (i, prompt) in prompts.into_iter().enumerate() {
        let params = SamplingParams { max_tokens: gen, temperature: 0.0, ignore_eos: true, ..Default::default() };
        let rx = engine
            .submit(GenerateRequest::new(format!("bench-{i}"), prompt, params))
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        receivers.push(rx);
    }
    // One reader per request, so each event is timed when it arrives, not when drained.
    let read = |mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>| -> Result<RunTimes> {
        let mut first = None;
        let mut generated = 0;
        loop {
            match rx.blocking_recv() {
                Some(Event::Token { .. }) => {
                    generated += 1;
                    first.get_or_insert_with(|| start.elapsed());
                }
                Some(Event::Finished { .. }) => {}
                Some(Event::Done { .. }) => break,
                Some(Event::Error(e)) => return Err(EngineError::InvalidRequest(e)),
                None => return Err(EngineError::Stopped),
            }
        }
        Ok(RunTimes { first_token: first.unwrap_or_default(), end: start.elapsed(), generated })
    };
    let out = std::thread::scope(|scope| {
        let handles: Vec<_> = receivers.into_iter().map(|rx| scope.spawn(move || read(rx))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(Err(EngineError::Stopped))).collect::<Result<Vec<_>>>()
    })?;
    Ok(out)
}

fn best(results: Vec<BenchResult>) -> BenchResult {
    results
        .into_iter()
        .max_by(|a, b| a.tokens_per_second().total_cmp(&b.tokens_per_second()))
        .expect("at least one repetition")
}

/// Runs the benchmark; `on_result` sees each line as it is measured.
pub fn run(engine: &Engine, opts: &BenchOptions, mut on_result: impl FnMut(&BenchResult)) -> Result<Vec<BenchResult>> {
    let vocab = engine.model_config().vocab_size;
    let reps = opts.repetitions.max(1);
    let mut report = Vec::new();

    // Warm-up: first-touch of weights and caches.
    run_concurrent(engine, vec![synthetic_prompt(32, vocab, 99)], 4)?;

    let pp = best(
        (0..reps)
            .map(|r| {
                let t = run_concurrent(engine, vec![synthetic_prompt(opts.prompt_tokens, vocab, r)], 1)?;
                Ok(BenchResult {
                    name: format!("pp{}", opts.prompt_tokens),
                    tokens: opts.prompt_tokens,
                    seconds: t[0].first_token.as_secs_f64(),
                })
            })
            .collect::<Result<Vec<_>>>()?,
    );
    on_result(&pp);
    report.push(pp);

    for &c in opts.concurrency.iter().filter(|&&c| c > 1) {
        // Prefill of `c` prompts submitted together (llama-batched-bench's S_PP): all their
        // tokens over the time to the last first token.
        let line = best(
            (0..reps)
                .map(|r| {
                    let prompts =
                        (0..c).map(|i| synthetic_prompt(opts.prompt_tokens, vocab, 500 + r * 64 + i)).collect();
                    let times = run_concurrent(engine, prompts, 1)?;
                    Ok(BenchResult {
                        name: format!("pp{} x{c} (aggregate)", opts.prompt_tokens),
                        tokens: c * opts.prompt_tokens,
                        seconds: times.iter().map(|t| t.first_token).max().unwrap_or_default().as_secs_f64(),
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        );
        on_result(&line);
        report.push(line);
    }

    for &c in &opts.concurrency {
        let line = best(
            (0..reps)
                .map(|r| {
                    let prompts = (0..c).map(|i| synthetic_prompt(16, vocab, 1000 + r * 64 + i)).collect();
                    let times = run_concurrent(engine, prompts, opts.gen_tokens)?;
                    // Decode rate: tokens after each sequence's first, over the span in which all
                    // sequences were decoding (last first-token to last end).
                    let start = times.iter().map(|t| t.first_token).max().unwrap_or_default();
                    let end = times.iter().map(|t| t.end).max().unwrap_or_default();
                    let tokens: usize = times.iter().map(|t| t.generated.saturating_sub(1)).sum();
                    Ok(BenchResult {
                        name: if c == 1 {
                            format!("tg{}", opts.gen_tokens)
                        } else {
                            format!("tg{} x{c} (aggregate)", opts.gen_tokens)
                        },
                        tokens,
                        seconds: (end - start).as_secs_f64(),
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        );
        on_result(&line);
        report.push(line);
    }
    Ok(report)
}
