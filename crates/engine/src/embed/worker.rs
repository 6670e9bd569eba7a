//! The embedding engine thread: one per embedding model (any [`EmbedModel`], encoder or
//! decoder), beside (never inside) the chat engine's. It blocks for a request, then takes
//! whatever else is already queued, sorts all their inputs by length and runs them in forwards
//! of at most `max_batch_tokens` (batch size x longest input) each, so concurrent requests
//! share forwards. A request whose receiver is gone is skipped before its forward.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use super::encoder::EmbedInfo;
use super::EmbedModel;
use crate::{EngineError, Result, SubmitError};

/// Where a request's vectors arrive (one per input, in order), or why they could not be made.
pub type EmbedReceiver = oneshot::Receiver<Result<Vec<Vec<f32>>>>;

#[derive(Debug, Clone, Copy)]
pub struct EmbedderConfig {
    /// Most padded tokens (batch size x longest input) in one forward.
    pub max_batch_tokens: usize,
    /// Most requests queued before submissions are refused as overloaded.
    pub max_waiting: usize,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self { max_batch_tokens: 8192, max_waiting: 256 }
    }
}

/// Counters the thread publishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedStats {
    /// Requests submitted and not yet answered.
    pub in_flight: u64,
    pub requests_total: u64,
    pub inputs_total: u64,
    /// Input tokens embedded (padding not counted).
    pub tokens_total: u64,
    pub forwards_total: u64,
    pub forward_micros_total: u64,
}

#[derive(Default)]
struct Shared {
    in_flight: AtomicUsize,
    requests: AtomicU64,
    inputs: AtomicU64,
    tokens: AtomicU64,
    forwards: AtomicU64,
    forward_micros: AtomicU64,
    alive: AtomicBool,
}

struct Job {
    inputs: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

/// Handle to an embedding model's thread; dropping it stops the thread.
pub struct Embedder {
    tx: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    model: Arc<dyn EmbedModel>,
    cfg: EmbedderConfig,
    thread: Option<JoinHandle<()>>,
}

impl Embedder {
    pub fn start(model: impl EmbedModel + 'static, cfg: EmbedderConfig) -> Result<Self> {
        if cfg.max_batch_tokens == 0 || cfg.max_waiting == 0 {
            return Err(EngineError::InvalidRequest("max_batch_tokens and max_waiting must be positive".into()));
        }
        let model: Arc<dyn EmbedModel> = Arc::new(model);
        let shared = Arc::new(Shared { alive: AtomicBool::new(true), ..Shared::default() });
        let (tx, rx) = sync_channel(cfg.max_waiting);
        let (m, s) = (model.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("wick-embed".into())
            .spawn(move || run(m.as_ref(), &s, &rx, cfg.max_batch_tokens))?;
        Ok(Self { tx: Some(tx), shared, model, cfg, thread: Some(thread) })
    }

    pub fn info(&self) -> &EmbedInfo {
        self.model.info()
    }

    /// Token ids of `text`, special tokens included (see [`EmbedModel::tokenize`]).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.model.tokenize(text)
    }

    /// Queues `inputs` (each 1 to `max_len` in-vocabulary tokens); dropping the receiver cancels.
    pub fn submit(&self, inputs: Vec<Vec<u32>>) -> std::result::Result<EmbedReceiver, SubmitError> {
        let info = self.model.info();
        for (i, ids) in inputs.iter().enumerate() {
            if ids.is_empty() || ids.len() > info.max_len {
                return Err(SubmitError::Invalid(format!(
                    "input {i} has {} tokens; it must have 1 to {}",
                    ids.len(),
                    info.max_len
                )));
            }
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= info.vocab_size) {
                return Err(SubmitError::Invalid(format!(
                    "input {i}: token id {bad} is outside the vocabulary of {}",
                    info.vocab_size
                )));
            }
        }
        let tx = match &self.tx {
            Some(tx) if self.is_running() => tx,
            _ => return Err(SubmitError::Stopped),
        };
        let waiting = self.shared.in_flight.load(Ordering::Relaxed);
        if waiting >= self.cfg.max_waiting {
            return Err(SubmitError::Overloaded { waiting });
        }
        let (reply, rx) = oneshot::channel();
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(Job { inputs, reply }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Overloaded { waiting },
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    pub fn stats(&self) -> EmbedStats {
        let s = &self.shared;
        EmbedStats {
            in_flight: s.in_flight.load(Ordering::Relaxed) as u64,
            requests_total: s.requests.load(Ordering::Relaxed),
            inputs_total: s.inputs.load(Ordering::Relaxed),
            tokens_total: s.tokens.load(Ordering::Relaxed),
            forwards_total: s.forwards.load(Ordering::Relaxed),
            forward_micros_total: s.forward_micros.load(Ordering::Relaxed),
        }
    }

    pub fn is_running(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }
}

impl Drop for Embedder {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Marks the thread dead when it ends, by return or by panic.
struct AliveGuard<'a>(&'a Shared);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

fn run(model: &dyn EmbedModel, shared: &Shared, rx: &Receiver<Job>, budget: usize) {
    let _alive = AliveGuard(shared);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut queued: usize = jobs[0].inputs.iter().map(Vec::len).sum();
        while queued < budget {
            match rx.try_recv() {
                Ok(job) => {
                    queued += job.inputs.iter().map(Vec::len).sum::<usize>();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let done = jobs.len();
        step(model, shared, jobs, budget);
        shared.in_flight.fetch_sub(done, Ordering::Relaxed);
    }
}

/// Embeds every input of `jobs` and answers each job.
fn step(model: &dyn EmbedModel, shared: &Shared, jobs: Vec<Job>, budget: usize) {
    let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    // (job, input) of every input, longest first, so each forward pads little.
    let mut order: Vec<(usize, usize)> =
        jobs.iter().enumerate().flat_map(|(j, job)| (0..job.inputs.len()).map(move |i| (j, i))).collect();
    order.sort_by_key(|&(j, i)| std::cmp::Reverse(jobs[j].inputs[i].len()));
    let mut out: Vec<Vec<Vec<f32>>> = jobs.iter().map(|j| vec![Vec::new(); j.inputs.len()]).collect();
    let mut failed: Option<EngineError> = None;
    let mut start = 0;
    while start < order.len() && failed.is_none() {
        // Sorted longest first: the batch's width is its first input's length.
        let width = jobs[order[start].0].inputs[order[start].1].len().max(1);
        let n = (budget / width).clamp(1, order.len() - start);
        let batch = &order[start..start + n];
        let seqs: Vec<&[u32]> = batch.iter().map(|&(j, i)| jobs[j].inputs[i].as_slice()).collect();
        let t = Instant::now();
        match model.embed(&seqs) {
            Ok(vectors) => {
                for (&(j, i), v) in batch.iter().zip(vectors) {
                    out[j][i] = v;
                }
                shared.forwards.fetch_add(1, Ordering::Relaxed);
                shared.forward_micros.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                shared.tokens.fetch_add(seqs.iter().map(|s| s.len() as u64).sum(), Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!("embedding forward failed: {e}");
                failed = Some(e);
            }
        }
        start += n;
    }
    for (job, vectors) in jobs.into_iter().zip(out) {
        shared.requests.fetch_add(1, Ordering::Relaxed);
        shared.inputs.fetch_add(job.inputs.len() as u64, Ordering::Relaxed);
        let answer = match &failed {
            None => Ok(vectors),
            Some(e) => Err(EngineError::Forward(e.to_string())),
        };
        let _ = job.reply.send(answer);
    }
}
