//! The oracle's command-line contract, run as a user would run it.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn model() -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "run `scripts/setup.sh model` first");
    path
}

fn oracle(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oracle"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn tokenize_prints_a_json_array_of_ids() {
    let model = model();
    let out = oracle(&[
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "Hello world",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!ids.is_empty());
    // Markup stays text for `tokenize`: no single <|im_start|> id.
    let out = oracle(&[
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "<|im_start|>",
        "--json",
    ]);
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    let out = oracle(&[
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "",
        "--json",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

#[test]
fn bad_input_gives_a_clear_error_and_exit_code() {
    let out = oracle(&[
        "tokenize",
        "--model",
        "/nonexistent/model.gguf",
        "--text",
        "x",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/model.gguf") && err.contains("No such file"),
        "{err}"
    );

    let not_gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = oracle(&[
        "tokenize",
        "--model",
        not_gguf.to_str().unwrap(),
        "--text",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a GGUF file"));

    // Usage errors are clap's: exit code 2.
    let out = oracle(&["tokenize", "--text", "x"]);
    assert_eq!(out.status.code(), Some(2));
}
