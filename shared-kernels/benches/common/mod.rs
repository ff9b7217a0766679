//! What the kernel benches share: the thread pool from the command line, the
//! table's header, and timing by the fastest of five batches.

use std::time::Instant;

use shared_kernels::{Isa, Pool};

/// The pool (as many threads as the first numeric argument says; none or 0:
/// one per core) and the instruction set the kernels use, after printing
/// them and the header of a table with `columns`.
pub(crate) fn start(columns: &[&str]) -> (Pool, Isa) {
    let threads = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(0);
    let pool = Pool::new(threads).unwrap_or_else(|e| panic!("{e}"));
    let isa = Isa::detect();
    println!(
        "isa {}, {} threads\n\n| {} |\n|{}",
        isa.name(),
        pool.threads(),
        columns.join(" | "),
        "---|".repeat(columns.len())
    );
    (pool, isa)
}

/// Seconds per call of `call` (given the call's index), the fastest of five
/// batches of `reps` calls after one unmeasured batch: on a shared machine a
/// batch that a neighbour interrupted says nothing about the kernel.
pub(crate) fn fastest_of_five(reps: usize, mut call: impl FnMut(usize)) -> f64 {
    (0..reps).for_each(&mut call);
    (0..5)
        .map(|_| {
            let start = Instant::now();
            (0..reps).for_each(&mut call);
            start.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}
