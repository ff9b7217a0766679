//! The threads a pass is spread over.
//!
//! A decoding step hands work to the threads about 150 times (every matrix
//! product and every layer's attention), each worth tens of microseconds, so
//! the hand-off itself must cost well under a microsecond: workers spin on an
//! atomic for a while after each job before they sleep, and the calling thread
//! takes tasks too. Tasks are claimed one at a time from a shared counter;
//! their results do not depend on which thread runs them, so the thread count
//! never changes a result.
#![allow(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::KernelError;

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(1);
/// Most threads a pool starts.
const MAX_THREADS: usize = 1024;
/// Most tasks one generation can hold (16 bits of the state word).
const MAX_TASKS: usize = u16::MAX as usize;

/// A task as the workers see it: a reference to the caller's closure.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// A fixed set of worker threads plus the calling thread.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time: callers on several threads take turns.
    turn: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish()
    }
}

/// What the caller and the workers share.
struct Shared {
    /// `generation << 32 | tasks << 16 | next task`: one word, so a worker
    /// that claims a task knows it claimed it from the job it read.
    state: AtomicU64,
    /// The current job, on the caller's stack: `*const Job`.
    job: AtomicPtr<()>,
    /// Tasks of the current generation finished.
    done: AtomicUsize,
    /// Whether a task of the current generation panicked.
    panicked: AtomicBool,
    /// Workers asleep (or about to be).
    sleepers: AtomicUsize,
    stop: AtomicBool,
    wake: (Mutex<()>, Condvar),
}

/// `threads`, with 0 meaning one per available core.
fn resolve(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

fn generation(state: u64) -> u64 {
    state >> 32
}

fn tasks_of(state: u64) -> usize {
    ((state >> 16) & 0xffff) as usize
}

fn next_of(state: u64) -> usize {
    (state & 0xffff) as usize
}

impl Shared {
    /// Claims and runs tasks of generation `generation` until none are left.
    fn work(&self, generation_seen: u64) {
        loop {
            let state = self.state.load(Ordering::Acquire);
            if generation(state) != generation_seen || next_of(state) >= tasks_of(state) {
                return;
            }
            if self
                .state
                .compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let job = self.job.load(Ordering::Acquire).cast::<Job<'_>>();
            // SAFETY: we claimed an unfinished task of this generation, so its
            // caller is still inside `Pool::run` (it returns only once `done`
            // counts every task) and `job` is the `Job` it published on its
            // stack before this generation's state (it writes the next job
            // only after this generation is done).
            let job = unsafe { *job };
            if catch_unwind(AssertUnwindSafe(|| job(next_of(state)))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn worker(&self) {
        let mut seen = generation(self.state.load(Ordering::Acquire));
        loop {
            let idle = Instant::now();
            let mut spins = 0u32;
            let state = loop {
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                let state = self.state.load(Ordering::Acquire);
                if generation(state) != seen {
                    break state;
                }
                spins = spins.wrapping_add(1);
                if !spins.is_multiple_of(64) || idle.elapsed() < SPIN {
                    std::hint::spin_loop();
                    continue;
                }
                let (lock, condvar) = &self.wake;
                let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                let unchanged = generation(self.state.load(Ordering::SeqCst)) == seen
                    && !self.stop.load(Ordering::SeqCst);
                if unchanged {
                    drop(
                        condvar
                            .wait_timeout(guard, Duration::from_millis(100))
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                }
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
            };
            seen = generation(state);
            self.work(seen);
        }
    }
}

impl Pool {
    /// A pool that runs work on `threads` threads, the caller's included
    /// (`0`: one per available core). On wasm32 everything runs on the caller.
    pub fn new(threads: usize) -> Result<Pool, KernelError> {
        let threads = if cfg!(target_arch = "wasm32") {
            1
        } else {
            resolve(threads)
        };
        if threads > MAX_THREADS {
            return Err(KernelError::Threads(format!(
                "{threads} threads asked for; at most {MAX_THREADS}"
            )));
        }
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
        });
        let mut pool = Pool {
            threads,
            shared,
            workers: Vec::with_capacity(threads - 1),
            turn: Mutex::new(()),
        };
        for i in 1..threads {
            let shared = Arc::clone(&pool.shared);
            // On failure `pool` is dropped here, which stops and joins the
            // workers started so far.
            let handle = std::thread::Builder::new()
                .name(format!("shard-kernel-{i}"))
                .spawn(move || shared.worker())
                .map_err(|e| KernelError::Threads(e.to_string()))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// The process's pool of `threads` threads (`0`: one per core), made on
    /// first use and shared by every model that asks for the same number.
    /// Models that take turns on one machine (a target and its draft) must
    /// share threads: a second pool's workers would spin on the cores the
    /// first one is using.
    pub fn shared(threads: usize) -> Result<Arc<Pool>, KernelError> {
        let threads = resolve(threads);
        static POOLS: Mutex<Vec<(usize, std::sync::Weak<Pool>)>> = Mutex::new(Vec::new());
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|(_, pool)| pool.strong_count() > 0);
        if let Some(pool) = pools
            .iter()
            .find(|(n, _)| *n == threads)
            .and_then(|(_, pool)| pool.upgrade())
        {
            return Ok(pool);
        }
        let pool = Arc::new(Pool::new(threads)?);
        pools.push((threads, Arc::downgrade(&pool)));
        Ok(pool)
    }

    /// Threads work runs on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(0..tasks)`, spread over the threads; returns when all are
    /// done. A panic in a task is raised here once every task has finished.
    /// Jobs from several calling threads take turns; a task must not call
    /// `run` on the same pool (it would wait for its own turn forever).
    pub fn run(&self, tasks: usize, task: impl Fn(usize) + Sync) {
        if self.workers.is_empty() || tasks <= 1 {
            (0..tasks).for_each(task);
            return;
        }
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        for first in (0..tasks).step_by(MAX_TASKS) {
            let count = MAX_TASKS.min(tasks - first);
            let offset = |t: usize| task(first + t);
            self.run_generation(count, &offset);
        }
    }

    fn run_generation(&self, tasks: usize, task: Job<'_>) {
        let s = &*self.shared;
        let job: *const Job<'_> = &task;
        s.done.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        s.job.store(job.cast_mut().cast(), Ordering::Release);
        let generation_now = generation(s.state.load(Ordering::Relaxed)) + 1;
        let state = (generation_now << 32) | ((tasks as u64) << 16);
        s.state.store(state, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.1.notify_all();
        }
        s.work(generation_now);
        while s.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        if s.panicked.load(Ordering::Relaxed) {
            panic!("a kernel task panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.1.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_any_number_of_threads() {
        for threads in 1..5 {
            let pool = Pool::new(threads).unwrap();
            for tasks in [0, 1, 2, 7, 100, 70_000] {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(tasks, |t| {
                    counts[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = Pool::new(2).unwrap();
        std::thread::sleep(SPIN * 5);
        let seen = Mutex::new(std::collections::HashSet::new());
        pool.run(64, |_| {
            std::thread::sleep(Duration::from_micros(200));
            seen.lock().unwrap().insert(std::thread::current().id());
        });
        assert_eq!(seen.lock().unwrap().len(), 2, "both threads took tasks");
    }

    #[test]
    fn a_panicking_task_panics_the_caller_after_the_others_finish() {
        let pool = Pool::new(3).unwrap();
        let finished = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(10, |t| {
                assert_ne!(t, 3, "task 3 fails");
                finished.fetch_add(1, Ordering::Relaxed);
            });
        }));
        assert!(result.is_err());
        assert_eq!(finished.load(Ordering::Relaxed), 9);
        // The pool still works.
        let count = AtomicUsize::new(0);
        pool.run(5, |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn absurd_thread_counts_are_refused() {
        assert!(matches!(Pool::new(1 << 20), Err(KernelError::Threads(_))));
    }

    #[test]
    fn pools_of_one_size_are_shared() {
        let a = Pool::shared(3).unwrap();
        let b = Pool::shared(3).unwrap();
        let c = Pool::shared(2).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let (all, same) = (Pool::shared(0).unwrap(), Pool::shared(cores).unwrap());
        assert!(Arc::ptr_eq(&all, &same), "0 means one per core");
    }

    #[test]
    fn callers_on_several_threads_take_turns() {
        let pool = Arc::new(Pool::new(2).unwrap());
        let total = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (pool, total) = (Arc::clone(&pool), Arc::clone(&total));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        pool.run(8, |_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 8);
    }
}
