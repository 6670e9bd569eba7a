//! CPU-heavy request work (chat templates, tokenization) off the async workers: each job runs
//! on tokio's blocking pool, at most `permits` at once and with at most [`INPUT_BUDGET`] bytes
//! of input between them (the rest wait their turn), so a few huge prompts cannot stall
//! `/health` or the streams of other requests on the two HTTP workers, and the memory the
//! tokenizer takes (up to ~180 bytes per input byte) is bounded by the budget, whatever the
//! number of clients.
//!
//! After a job over a large input the allocator is asked to give its free pages back to the
//! system (`malloc_trim` on glibc), so a burst of big prompts does not leave the process at its
//! peak RSS for good.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Inputs from this size on are followed by a heap trim.
const TRIM_FROM_BYTES: usize = 256 << 10;

/// Most input bytes in jobs at once (a larger input runs alone).
pub const INPUT_BUDGET: usize = 4 << 20;
const BUDGET_KIB: u32 = (INPUT_BUDGET >> 10) as u32;

/// A bound on concurrent CPU-heavy jobs, by count and by input size.
#[derive(Debug, Clone)]
pub struct CpuPool {
    permits: Arc<Semaphore>,
    input_kib: Arc<Semaphore>,
}

impl CpuPool {
    pub fn new(permits: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits.max(1))),
            input_kib: Arc::new(Semaphore::new(BUDGET_KIB as usize)),
        }
    }

    /// Runs `job` (whose input is `input_bytes` long) on the blocking pool once a permit is free.
    pub async fn run<T, F>(&self, input_bytes: usize, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let closed = |_| ApiError::internal("worker pool closed");
        let kib = ((input_bytes >> 10) as u32).clamp(1, BUDGET_KIB);
        let budget = self.input_kib.clone().acquire_many_owned(kib).await.map_err(closed)?;
        let permit = self.permits.clone().acquire_owned().await.map_err(closed)?;
        let out = tokio::task::spawn_blocking(move || {
            let out = job();
            if input_bytes >= TRIM_FROM_BYTES {
                trim_heap();
            }
            drop((permit, budget));
            out
        })
        .await;
        out.map_err(|_| ApiError::internal("The server hit an internal error while preparing this request."))
    }
}

/// Makes glibc serve every allocation from 256 KiB up (request bodies, prompt strings, token
/// buffers) with its own mapping, returned to the system when freed. Without this glibc raises
/// the threshold after the first large free and keeps such buffers in its heap for good.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc tunables; called once at startup.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Returns the allocator's free memory to the system.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
