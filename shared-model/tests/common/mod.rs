//! Helpers shared by shared-model's integration tests.
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

/// A fixture file from `tests/fixtures/`, parsed as JSON.
pub(crate) fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of token ids.
pub(crate) fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}
