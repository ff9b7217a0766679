//! Helpers shared by the oracle's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

/// The default model, as placed by `scripts/setup.sh model` (or `$SHARD_MODEL`).
pub(crate) fn default_model() -> PathBuf {
    let path = std::env::var_os("SHARD_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing: run `scripts/setup.sh model` (scripts/test.sh does it for you)",
        path.display()
    );
    path
}
