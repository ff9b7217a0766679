//! Cross-crate integration tests live in this package's `tests/` folder (an
//! oracle plus many native scouts, faults, load; models over the network).
//! The library holds the helpers those tests share: the `oracle` binary,
//! child processes that die with the test, scratch directories.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Child;

/// The `oracle` binary cargo built beside the running test.
pub fn oracle_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join(format!("oracle{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build -p oracle`)",
        bin.display()
    );
    bin
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh, empty scratch directory for test `name` of `suite`.
pub fn temp_dir(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shard-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tests of one suite start model-running processes: one test at a time,
/// so they do not starve each other of the machine's cores.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
