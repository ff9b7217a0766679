//! The fuzz target builds with the workspace and survives a short run.
//!
//! Built without coverage instrumentation (that needs nightly and cargo-fuzz, see
//! README.md), libFuzzer still feeds random mutations through the decoders, which
//! is a smoke test of the target itself: every decoder is reachable, none panics
//! on the first few thousand inputs. `cargo test` builds the binary with the same
//! features as the rest of the workspace, so this costs one link, not a rebuild.

use std::process::Command;

#[test]
fn frame_decoder_survives_random_inputs() {
    let out = Command::new(env!("CARGO_BIN_EXE_frame_decoder"))
        .args(["-runs=20000", "-max_len=4096", "-seed=1"])
        .output()
        .expect("the fuzz target starts");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the fuzz target failed:\n{log}");
    assert!(
        log.contains("Done 20000 runs"),
        "libFuzzer did not finish its runs:\n{log}"
    );
}
