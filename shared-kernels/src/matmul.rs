//! Quantised weights times a pass's rows, spread over threads by output column.
//!
//! Every output `(row, column)` is one call of the same row kernel on the
//! same bytes, whatever the number of rows or threads: a row's result is the
//! same alone, among k drafts or beside other sequences (batch invariance by
//! construction). Each weight row is read from memory once per pass and then
//! applied to every activation row while it sits in the L1 cache.

use crate::KernelError;
use crate::act::Activations;
use crate::disjoint::Disjoint;
use crate::dot::{Isa, columns_kernel, f32_kernel};
use crate::format::{ActKind, QMatrix};
use crate::pool::Pool;

/// Columns a task takes at least (keeps the task overhead small).
const MIN_TASK_COLUMNS: usize = 16;
/// Tasks per thread (evens out threads that fall behind).
const TASKS_PER_THREAD: usize = 4;

/// `out[r · n + o] = w.row(o) · x.row(r)` for every activation row `r` and
/// weight row (output) `o`; `out` is `x.rows() × w.rows()`, row-major.
#[allow(unsafe_code)]
pub fn matmul(
    pool: &Pool,
    isa: Isa,
    w: &QMatrix,
    x: &Activations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (m, n) = (x.rows(), w.rows());
    let kind = w.format().activations();
    if x.kind() != Some(kind) || x.cols() != w.cols() || out.len() != m * n {
        return Err(KernelError::Shape(format!(
            "{m} rows of {} {:?} activations times {n} × {} {:?} weights into {} outputs",
            x.cols(),
            x.kind(),
            w.cols(),
            w.format(),
            out.len()
        )));
    }
    let chunk = n
        .div_ceil(pool.threads() * TASKS_PER_THREAD)
        .max(MIN_TASK_COLUMNS);
    let tasks = n.div_ceil(chunk);
    let out = Disjoint::new(out);
    let columns = |t: usize| t * chunk..((t + 1) * chunk).min(n);
    let unsupported = || KernelError::Shape(format!("no kernel for {:?}", w.format()));
    match kind {
        ActKind::Q8 | ActKind::Q8K => {
            let kernel = columns_kernel(isa, w.format()).ok_or_else(unsupported)?;
            pool.run(tasks, |t| kernel(w, columns(t), x, &out));
        }
        ActKind::F32 => {
            let dot = f32_kernel(w.format()).ok_or_else(unsupported)?;
            pool.run(tasks, |t| {
                for o in columns(t) {
                    let row = w.row(o);
                    for r in 0..m {
                        // SAFETY: column `o` belongs to this task alone.
                        unsafe { out.set(r * n + o, dot(row, x.f32_row(r))) };
                    }
                }
            });
        }
    }
    Ok(())
}
