//! The threads a pass is spread over.

use crate::KernelError;

/// A fixed set of worker threads. Work is split into tasks whose results do
/// not depend on which thread runs them or in what order, so the thread count
/// never changes a result.
#[derive(Debug)]
pub struct Pool {
    threads: usize,
    #[cfg(not(target_arch = "wasm32"))]
    inner: Option<rayon::ThreadPool>,
}

impl Pool {
    /// A pool of `threads` threads (`0`: one per available core). On wasm32
    /// everything runs on the calling thread.
    pub fn new(threads: usize) -> Result<Pool, KernelError> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            threads
        };
        #[cfg(target_arch = "wasm32")]
        {
            Ok(Pool { threads: 1 })
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let inner = if threads > 1 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("shard-kernel-{i}"))
                    .build()
                    .map_err(|e| KernelError::Threads(e.to_string()))?;
                Some(pool)
            } else {
                None
            };
            Ok(Pool { threads, inner })
        }
    }

    /// Threads work runs on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(0..tasks)`, spread over the threads; returns when all are done.
    pub fn run(&self, tasks: usize, task: impl Fn(usize) + Sync + Send) {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(pool) = &self.inner
            && tasks > 1
        {
            use rayon::prelude::*;
            pool.install(|| (0..tasks).into_par_iter().for_each(&task));
            return;
        }
        (0..tasks).for_each(task);
    }
}
