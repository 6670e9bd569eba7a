//! wick's compute thread pool: the threads the quantized matmuls, the activation quantization
//! and attention split their work over. Workers spin briefly after a job and then park, and
//! nobody ever waits for a thread that has not started on the job, so a CPU shared with other
//! busy processes slows wick down instead of collapsing it.
//!
//! A parallel region hands out its items from a shared cursor in small chunks: the calling
//! thread starts on them at once, and a worker joins when it wakes. A worker that is not
//! scheduled (the CPU is busy elsewhere) simply claims nothing, and the caller does its share.
//! The caller waits only for chunks already claimed, spinning briefly and then parking until
//! the worker that finishes the last chunk unparks it. candle's barrier pool, which this
//! replaces, has every region wait, spinning, for every worker to arrive and finish its
//! fixed slot: with one competing process on two cores, single-sequence decode fell from
//! ~70 to ~5 tokens/s.
//!
//! Which thread runs which items never changes what an item computes, so results are the same
//! bits however the work is split. A region started from inside a region (or while another
//! thread's region holds the pool) runs on the calling thread.

use std::any::Any;
use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long a worker keeps polling for the next region before it parks, and how long a
/// caller polls for its region's last chunks before it parks. Regions of one forward step
/// follow each other within microseconds, so workers stay awake through a step and sleep
/// between steps.
const SPIN: Duration = Duration::from_micros(60);

/// Polling for `SPIN` before parking, reading the clock only every 64th poll (reading it on
/// every poll cost 1-2% of a step).
struct Spin {
    start: Instant,
    polls: u32,
}

impl Spin {
    fn new() -> Self {
        Self { start: Instant::now(), polls: 0 }
    }

    /// Whether to keep polling (after a `spin_loop` hint) rather than park.
    fn poll(&mut self) -> bool {
        self.polls = self.polls.wrapping_add(1);
        if !self.polls.is_multiple_of(64) || self.start.elapsed() < SPIN {
            std::hint::spin_loop();
            return true;
        }
        false
    }
}

/// Chunks per thread a region's items are cut into at most: fast threads absorb a slow one's
/// share. Near the end chunks shrink (`Job::claim`), so that the threads finish together.
const CHUNKS_PER_THREAD: usize = 8;

thread_local! {
    /// Set on pool workers and on a caller while it runs a region: nested regions run inline.
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

/// The closure of a region, its lifetime erased: only called on a claimed chunk, and the
/// caller does not return before every claimed chunk is done.
type RegionFn = dyn Fn(Range<usize>) + Sync;

/// One parallel region.
struct Job {
    items: usize,
    chunk: usize,
    threads: usize,
    cursor: AtomicUsize,
    done: AtomicUsize,
    func: *const RegionFn,
    caller: Thread,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `func` points to a `Sync` closure that outlives every use of it (see `RegionFn`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs chunks until none is left; returns when this thread has no more to do.
    fn work(&self) {
        while let Some((start, end)) = self.claim() {
            // SAFETY: the chunk is claimed and not yet counted done, so the caller is still
            // waiting and the closure alive.
            let f = unsafe { &*self.func };
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(start..end))) {
                self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
            }
            if self.done.fetch_add(end - start, Ordering::AcqRel) + (end - start) == self.items {
                // The last chunk: the caller may be parked.
                self.caller.unpark();
            }
        }
    }

    /// The next chunk, if any is left: `chunk` items, or fewer once less than `2 · threads`
    /// chunks remain (a share of what is left, at least one item), so that no thread starts a
    /// long chunk while the others run out of work.
    fn claim(&self) -> Option<(usize, usize)> {
        let mut start = self.cursor.load(Ordering::Relaxed);
        loop {
            if start >= self.items {
                return None;
            }
            let len = self.chunk.min((self.items - start).div_ceil(2 * self.threads));
            match self.cursor.compare_exchange_weak(start, start + len, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some((start, start + len)),
                Err(now) => start = now,
            }
        }
    }

    fn finished(&self) -> bool {
        self.done.load(Ordering::Acquire) == self.items
    }
}

/// What the workers and the callers share.
struct Shared {
    /// The region on offer and a count of regions started, both changed under the lock.
    current: Mutex<(u64, Option<Arc<Job>>)>,
    /// The count of regions started, read without the lock while spinning.
    generation: AtomicU64,
    wake: Condvar,
    /// Workers parked on `wake` (changed under `current`'s lock).
    sleepers: AtomicUsize,
    stop: AtomicBool,
}

/// A fixed set of worker threads plus the calling thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held by the thread whose region is running.
    busy: Mutex<()>,
}

impl ThreadPool {
    /// A pool in which `threads` threads (the caller and `threads - 1` workers) run a region.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            current: Mutex::new((0, None)),
            generation: AtomicU64::new(0),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("wick-compute-{i}"))
                    .spawn(move || worker(&shared))
                    .expect("failed to spawn a compute thread")
            })
            .collect();
        Self { shared, workers, busy: Mutex::new(()) }
    }

    /// Threads that run a region, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i, chunk)` on each `chunk_len`-long chunk `i` of `data` (the last may be
    /// shorter), spread over the pool like [`ThreadPool::for_each_chunk`]: the safe form of
    /// "each item writes its own rows".
    pub fn for_each_chunk_mut<T: Send, F: Fn(usize, &mut [T]) + Sync>(&self, data: &mut [T], chunk_len: usize, f: F) {
        /// `data`'s pointer, shared by the region's threads; each chunk is handed out once.
        struct Base<T>(*mut T);
        // SAFETY: only dereferenced at disjoint chunks inside the region below, which returns
        // before `data`'s borrow ends; `T: Send` lets a chunk be written from another thread.
        unsafe impl<T: Send> Sync for Base<T> {}
        let (len, chunk_len) = (data.len(), chunk_len.max(1));
        let base = Base(data.as_mut_ptr());
        self.for_each_chunk(len.div_ceil(chunk_len), |items| {
            let base = &base;
            for i in items {
                let r = i * chunk_len..len.min((i + 1) * chunk_len);
                // SAFETY: item `i` alone covers `r`, which lies inside `data`.
                f(i, unsafe { std::slice::from_raw_parts_mut(base.0.add(r.start), r.len()) });
            }
        });
    }

    /// Calls `f` on chunks of `0..items` that together cover each item exactly once, on the
    /// pool's threads and the caller's; returns when all are done. A panic in `f` is re-raised
    /// here once every chunk has finished.
    pub fn for_each_chunk<F: Fn(Range<usize>) + Sync>(&self, items: usize, f: F) {
        if items == 0 {
            return;
        }
        if self.workers.is_empty() || items == 1 || IN_REGION.with(Cell::get) {
            f(0..items);
            return;
        }
        // Another thread's region holds the pool (several engines in one process, tests):
        // this one runs on its own thread rather than wait.
        let Ok(_busy) = self.busy.try_lock() else {
            f(0..items);
            return;
        };
        let func: &(dyn Fn(Range<usize>) + Sync + '_) = &f;
        // SAFETY: only the lifetime is erased; see `RegionFn`.
        let func: *const RegionFn =
            unsafe { std::mem::transmute::<&(dyn Fn(Range<usize>) + Sync + '_), &'static RegionFn>(func) };
        let job = Arc::new(Job {
            items,
            chunk: items.div_ceil(self.threads() * CHUNKS_PER_THREAD).max(1),
            threads: self.threads(),
            cursor: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            func,
            caller: std::thread::current(),
            panic: Mutex::new(None),
        });
        {
            let mut cur = self.shared.current.lock().unwrap_or_else(|e| e.into_inner());
            cur.0 += 1;
            cur.1 = Some(job.clone());
            self.shared.generation.store(cur.0, Ordering::Release);
            if self.shared.sleepers.load(Ordering::Relaxed) > 0 {
                self.shared.wake.notify_all();
            }
        }
        IN_REGION.with(|r| r.set(true));
        job.work();
        IN_REGION.with(|r| r.set(false));
        // Wait for the chunks other threads claimed: poll briefly, then park until the thread
        // that finishes the last one unparks this one.
        let mut spin = Spin::new();
        while !job.finished() {
            if !spin.poll() {
                std::thread::park_timeout(Duration::from_millis(10));
            }
        }
        self.shared.current.lock().unwrap_or_else(|e| e.into_inner()).1 = None;
        let panic = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _cur = self.shared.current.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.stop.store(true, Ordering::Release);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker: runs each region it sees, polls for the next one for `SPIN`, then parks.
fn worker(shared: &Shared) {
    IN_REGION.with(|r| r.set(true));
    let mut seen = 0u64;
    loop {
        let mut spin = Spin::new();
        while shared.generation.load(Ordering::Acquire) == seen && !shared.stop.load(Ordering::Acquire) {
            if spin.poll() {
                continue;
            }
            let mut cur = shared.current.lock().unwrap_or_else(|e| e.into_inner());
            shared.sleepers.fetch_add(1, Ordering::Relaxed);
            while cur.0 == seen && !shared.stop.load(Ordering::Acquire) {
                cur = shared.wake.wait(cur).unwrap_or_else(|e| e.into_inner());
            }
            shared.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let job = {
            let cur = shared.current.lock().unwrap_or_else(|e| e.into_inner());
            seen = cur.0;
            cur.1.clone()
        };
        if let Some(job) = job {
            job.work();
        }
    }
}

/// The process's compute pool, started on first use with as many threads as candle's CPU
/// matmuls use (`RAYON_NUM_THREADS`, else the physical cores).
pub fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(candle_core::utils::get_num_threads()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_shrink_near_the_end_so_the_threads_finish_together() {
        let f = |_: Range<usize>| {};
        let func: &RegionFn = &f;
        for (items, threads) in [(64usize, 2usize), (1000, 3), (5, 2), (1, 4)] {
            let chunk = items.div_ceil(threads * CHUNKS_PER_THREAD).max(1);
            let job = Job {
                items,
                chunk,
                threads,
                cursor: AtomicUsize::new(0),
                done: AtomicUsize::new(0),
                func,
                caller: std::thread::current(),
                panic: Mutex::new(None),
            };
            let mut next = 0;
            let mut sizes = Vec::new();
            while let Some((start, end)) = job.claim() {
                assert_eq!(start, next, "chunks follow each other");
                let left = items - start;
                assert!(end - start <= chunk.min(left.div_ceil(2 * threads)) && end > start, "{items}: {start}..{end}");
                sizes.push(end - start);
                next = end;
            }
            assert_eq!(next, items, "every item is claimed once");
            assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
            assert_eq!(sizes.last(), Some(&1), "the last chunk is one item: {sizes:?}");
        }
    }

    #[test]
    fn each_mutable_chunk_is_handed_out_once_with_its_index() {
        let pool = ThreadPool::new(3);
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (1000, 7), (64, 64)] {
            let mut data = vec![0usize; len];
            pool.for_each_chunk_mut(&mut data, chunk, |i, c| {
                assert!(c.len() == chunk || (i + 1) * chunk >= len, "only the last chunk is short");
                c.iter_mut().enumerate().for_each(|(j, v)| *v += i * chunk + j + 1);
            });
            assert!(data.iter().enumerate().all(|(j, &v)| v == j + 1), "len {len} chunk {chunk}");
        }
    }

    #[test]
    fn every_item_runs_exactly_once() {
        let pool = ThreadPool::new(3);
        for items in [1, 2, 7, 100, 10_000] {
            let hits: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each_chunk(items, |r| {
                for i in r {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{items} items");
        }
    }

    #[test]
    fn work_reaches_the_workers_and_after_parking_too() {
        let pool = ThreadPool::new(2);
        for round in 0..3 {
            if round > 0 {
                // Long enough for the worker to park.
                std::thread::sleep(Duration::from_millis(20));
            }
            let names = Mutex::new(std::collections::HashSet::new());
            pool.for_each_chunk(64, |_| {
                std::thread::sleep(Duration::from_millis(1));
                names.lock().unwrap().insert(std::thread::current().id());
            });
            assert_eq!(names.lock().unwrap().len(), 2, "round {round}: both threads took chunks");
        }
    }

    #[test]
    fn nested_regions_run_inline_and_panics_reach_the_caller() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        pool.for_each_chunk(4, |r| {
            for _ in r {
                pool.for_each_chunk(3, |inner| {
                    total.fetch_add(inner.len(), Ordering::Relaxed);
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.for_each_chunk(16, |r| assert!(!r.contains(&9), "item nine"));
        }));
        assert!(caught.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        pool.for_each_chunk(50, |r| {
            n.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 50);
    }

    #[test]
    fn a_region_beside_a_running_one_does_not_wait_for_it() {
        // One thread's region is stuck in a chunk (its worker, or itself, is not getting the
        // CPU); a region started meanwhile on another thread runs at once on that thread.
        let pool = ThreadPool::new(2);
        let stall = AtomicBool::new(true);
        let started = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                pool.for_each_chunk(2, |r| {
                    if r.contains(&1) {
                        started.store(true, Ordering::Release);
                        while stall.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                });
            });
            while !started.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let n = AtomicUsize::new(0);
            pool.for_each_chunk(1000, |r| {
                n.fetch_add(r.len(), Ordering::Relaxed);
            });
            assert_eq!(n.load(Ordering::Relaxed), 1000);
            stall.store(false, Ordering::Release);
        });
    }
}
