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

    // `oracle logits` (the browser tests' reference): ids outside the vocabulary.
    let m = model();
    let out = oracle(&[
        "logits",
        "--model",
        m.to_str().unwrap(),
        "--layers",
        "1",
        "--tokens",
        "1,999999",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the vocabulary"));
    let out = oracle(&["logits", "--model", m.to_str().unwrap(), "--tokens", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let out = oracle(&[
        "logits",
        "--model",
        m.to_str().unwrap(),
        "--tokens",
        "1",
        "--engine",
        "gpu",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Both CPU engines answer; their logits agree to 8-bit-activation accuracy.
    let logits = |engine: &str| -> serde_json::Value {
        let out = oracle(&[
            "logits",
            "--model",
            m.to_str().unwrap(),
            "--layers",
            "2",
            "--tokens",
            "504,3458",
            "--values",
            "64",
            "--engine",
            engine,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (tensors, host) = (logits("tensors"), logits("host"));
    assert_eq!(tensors["argmax"], host["argmax"]);
    assert_ne!(
        tensors["rows"], host["rows"],
        "the engines compute differently"
    );
    // An impossible thread count is a clear error, not a crash.
    let out = oracle(&[
        "bench",
        "--model",
        m.to_str().unwrap(),
        "--threads",
        "5000000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most 1024"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = oracle(&["bench", "--model", m.to_str().unwrap(), "--threads", "-1"]);
    assert_eq!(out.status.code(), Some(2));
    // A bench of zero blocks measures nothing.
    let out = oracle(&["bench", "--model", m.to_str().unwrap(), "--layers", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--layers"));
}

#[derive(serde::Deserialize)]
struct Generated {
    tokens: Vec<u32>,
    text: String,
    stats: serde_json::Value,
}

fn generate(extra: &[&str]) -> Generated {
    let model = model();
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = oracle(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn generate_prints_tokens_text_and_stats() {
    let g = generate(&["--prompt", "The capital of France is", "--max-tokens", "8"]);
    assert_eq!(g.tokens.len(), 8);
    // The same first token as llama.cpp and the f32 reference: " Paris".
    assert_eq!(g.tokens[0], 7042);
    assert!(g.text.starts_with(" Paris"), "{:?}", g.text);
    assert_eq!(g.stats["generated_tokens"], 8);
    assert_eq!(g.stats["stop_reason"], "max_tokens");
    // Chat markup in the prompt becomes special tokens; the reply ends at <|im_end|>.
    let chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    let g = generate(&["--prompt", chat, "--max-tokens", "40"]);
    assert_eq!(g.stats["stop_reason"], "end_of_generation", "{:?}", g.text);
    assert!(g.text.contains('4'), "{:?}", g.text);
}

#[test]
fn a_draft_model_does_not_change_the_tokens() {
    let model = model();
    let draft = model.to_str().unwrap();
    let prompt = ["--prompt", "def fibonacci(n):\n", "--max-tokens", "12"];
    for sampling in [
        &["--temperature", "0"][..],
        &["--temperature", "0.9", "--top-p", "0.95", "--seed", "5"],
    ] {
        let plain = generate(&[&prompt[..], sampling].concat());
        for layers in ["30", "18"] {
            let args = [
                &prompt[..],
                sampling,
                &[
                    "--draft-model",
                    draft,
                    "--draft-k",
                    "3",
                    "--draft-layers",
                    layers,
                ],
            ]
            .concat();
            let spec = generate(&args);
            assert_eq!(
                spec.tokens, plain.tokens,
                "sampling {sampling:?}, draft layers {layers}"
            );
            assert!(spec.stats["draft_tokens_proposed"].as_u64().unwrap() > 0);
        }
    }
}

#[test]
fn generate_rejects_bad_arguments() {
    let model = model();
    let m = model.to_str().unwrap();
    for (args, needle) in [
        (vec!["--prompt", "x", "--max-tokens", "0"], "--max-tokens"),
        (
            vec!["--prompt", "x", "--max-tokens", "2", "--temperature=-1"],
            "--temperature",
        ),
        (
            vec!["--prompt", "x", "--max-tokens", "2", "--top-p", "0"],
            "--top-p",
        ),
        (vec!["--prompt", "", "--max-tokens", "2"], "prompt is empty"),
        (
            vec![
                "--prompt",
                "x",
                "--max-tokens",
                "2",
                "--draft-model",
                m,
                "--draft-k",
                "99",
            ],
            "--draft-k",
        ),
        (
            vec![
                "--prompt",
                "x",
                "--max-tokens",
                "2",
                "--draft-model",
                "/nonexistent.gguf",
            ],
            "/nonexistent.gguf",
        ),
    ] {
        let mut full = vec!["generate", "--model", m, "--json"];
        full.extend(args);
        let out = oracle(&full);
        assert_eq!(out.status.code(), Some(1), "{full:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{full:?}: {err}");
    }
    // --draft-k without --draft-model is a usage error.
    let out = oracle(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "x",
        "--max-tokens",
        "2",
        "--draft-k",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// Sends one HTTP/1.1 request and returns the whole response text.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serve_listens_answers_and_stops_gracefully_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("shard-serve-test-{}", std::process::id()));
    let config = dir.join("oracle.toml");
    std::fs::create_dir_all(&dir).unwrap();
    // Flags win over the file: the file's port would clash, the flag's is free.
    std::fs::write(&config, "http = \"127.0.0.1:1\"\nmax_sessions = 2\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oracle"))
        .args([
            "serve",
            "--model",
            model().to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args([
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let health = http_get(&addr, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let status = http_get(&addr, "/api/status");
    assert!(status.contains("\"max_sessions\":2"), "{status}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{log}", out.status);
    assert!(log.contains("shutdown requested"), "{log}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn serve_refuses_bad_configuration_clearly() {
    let dir = std::env::temp_dir().join(format!("shard-serve-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "max_sesions = 2\n").unwrap();
    let m = model();
    let m = m.to_str().unwrap();
    for (args, needle) in [
        (vec!["--config", typo.to_str().unwrap()], "max_sesions"),
        (
            vec!["--config", "/nonexistent/oracle.toml"],
            "/nonexistent/oracle.toml",
        ),
        (vec!["--max-sessions", "0"], "--max-sessions"),
        (vec!["--kv-cache-mib", "1"], "--kv-cache-mib"),
        (vec!["--draft-model", m, "--draft-k", "99"], "--draft-k"),
        (
            vec!["--draft-model", "/nonexistent/draft.gguf"],
            "/nonexistent/draft.gguf",
        ),
        (
            vec!["--config", dir.to_str().unwrap()],
            "cannot read the config file",
        ),
        (vec!["--model=/nonexistent/model.gguf"], "scripts/setup.sh"),
        (vec!["--p2p-listen", "nonsense"], "is not a multiaddr"),
        (vec!["--golden-interval-s", "0"], "--golden-interval-s"),
        (vec!["--scout-layers", "0"], "--scout-layers"),
        (vec!["--layers", "0"], "--layers must be at least 1"),
        (
            vec![
                "--p2p-listen",
                "/ip4/127.0.0.1/tcp/0",
                "--bootstrap",
                "/ip4/127.0.0.1/tcp/1",
                "--data-dir",
                dir.to_str().unwrap(),
            ],
            "does not end in /p2p/",
        ),
    ] {
        let mut full = vec!["serve", "--http", "127.0.0.1:0"];
        if !args[0].starts_with("--model") {
            full.extend(["--model", m]);
        }
        full.extend(args);
        let out = oracle(&full);
        assert_eq!(out.status.code(), Some(1), "{full:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{full:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn asking_for_a_backend_that_was_not_built_in_is_a_clear_error() {
    let model = model();
    // An unknown backend is a usage error in every build.
    let out = oracle(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "tpu",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let generate_on = |backend: &str| {
        oracle(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
            "--max-tokens",
            "1",
            "--backend",
            backend,
        ])
    };
    let out = generate_on("cuda");
    if cfg!(feature = "cuda") {
        // Built in: it runs where a GPU is, and says why not where none is.
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--features cuda"));
    }
    if !cfg!(feature = "wgpu") {
        let out = generate_on("wgpu");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--features wgpu"));
    }
}

#[test]
fn network_commands_refuse_bad_input_clearly() {
    let dir = std::env::temp_dir().join(format!("shard-net-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.key");
    std::fs::write(&garbage, b"not a key").unwrap();
    let m = model();
    let m = m.to_str().unwrap();
    let d = dir.to_str().unwrap();
    let g = garbage.to_str().unwrap();
    let empty = dir.join("empty");
    let e = empty.to_str().unwrap();
    for (args, needle) in [
        (vec!["scout", "--connect", "nonsense"], "is not a multiaddr"),
        (
            vec![
                "scout",
                "--connect",
                "/ip4/127.0.0.1/tcp/1",
                "--draft-model",
                m,
                "--draft-layers",
                "1",
                "--data-dir",
                d,
            ],
            "does not end in /p2p/",
        ),
        (
            vec!["certify", "--network-key", g, "--data-dir", d],
            "is not a key",
        ),
        (vec!["network-key", "--out", g], "not overwriting"),
        (
            vec!["ask", "--connect", "nonsense", "hi"],
            "is not a multiaddr",
        ),
        (
            vec!["ask", "--connect", "/ip4/127.0.0.1/tcp/1", "hi"],
            "does not end in /p2p/",
        ),
        (
            vec![
                "ask",
                "--connect",
                "/ip4/127.0.0.1/tcp/1",
                "--max-tokens",
                "0",
                "hi",
            ],
            "--max-tokens must be between 1 and 1024",
        ),
        (
            vec![
                "ask",
                "--connect",
                "/ip4/127.0.0.1/tcp/1",
                "--stop",
                "",
                "hi",
            ],
            "stop[0]",
        ),
        (
            vec![
                "fetch",
                "xyz",
                "--bootstrap",
                "/ip4/127.0.0.1/tcp/1",
                "--out",
                g,
            ],
            "is not a model content id",
        ),
        (
            vec!["fetch", CID, "--bootstrap", "nonsense", "--out", g],
            "is not a multiaddr",
        ),
        (
            vec![
                "fetch",
                CID,
                "--bootstrap",
                "/ip4/127.0.0.1/tcp/1",
                "--out",
                d,
            ],
            "is a directory",
        ),
        (
            vec![
                "fetch",
                CID,
                "--bootstrap",
                "/ip4/127.0.0.1/tcp/1",
                "--out",
                g,
                "--data-dir",
                d,
            ],
            "does not end in /p2p/",
        ),
        // No scout key there: a new one would have no credit.
        (vec!["credit-token", "--data-dir", e], "no scout key at"),
        (
            vec!["credit-token", "--data-dir", e, "--days", "0"],
            "--days must be between 1 and 366",
        ),
    ] {
        let out = oracle(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A rate that is not one is refused before anything starts.
    let out = oracle(&[
        "fetch",
        CID,
        "--bootstrap",
        "/ip4/127.0.0.1/tcp/1",
        "--out",
        g,
        "--max-rate",
        "fast",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a rate like 20M"));
    std::fs::remove_dir_all(&dir).ok();
}

/// A well-formed model content id no peer offers.
const CID: &str = "1220abababababababababababababababababababababababababababababababab";

#[test]
fn manifest_names_the_model_by_content_id_and_is_deterministic() {
    let model = model();
    let path = model.to_str().unwrap();
    let out = oracle(&["manifest", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let cid = text.lines().last().unwrap().to_owned();
    assert!(cid.starts_with("1220") && cid.len() == 68, "{text}");
    assert!(text.contains("376 of 256 KiB"), "{text}");

    let out = oracle(&["manifest", path, "--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The same file, the same name on the network.
    assert_eq!(json["cid"], cid.as_str());
    let sums = std::fs::read_to_string(model.with_file_name("SHA256SUMS")).unwrap();
    let expected = sums
        .lines()
        .find(|l| l.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert_eq!(json["file_sha256"], expected);
    assert_eq!(json["file_size"], 98_362_432);
    assert_eq!(json["piece_sha256"].as_array().unwrap().len(), 376);
    assert_eq!(json["architecture"], "llama");
    // SmolLM2-135M has 30 blocks; each lies in a run of the file's pieces.
    let layers = json["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 30);
    for (i, l) in layers.iter().enumerate() {
        let (layer, first, count) = (
            l[0].as_u64(),
            l[1].as_u64().unwrap(),
            l[2].as_u64().unwrap(),
        );
        assert_eq!(layer, Some(i as u64));
        assert!(count >= 1 && first + count <= 376, "{l}");
    }

    // One flipped byte is another model.
    let dir = std::env::temp_dir().join(format!("shard-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The same bytes under another name are the same model.
    let copy = dir.join("renamed.gguf");
    let mut bytes = std::fs::read(&model).unwrap();
    std::fs::write(&copy, &bytes).unwrap();
    let out = oracle(&["manifest", copy.to_str().unwrap()]);
    let same = String::from_utf8(out.stdout).unwrap();
    assert_eq!(same.lines().last().unwrap(), cid);
    bytes[50_000_000] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    let out = oracle(&["manifest", copy.to_str().unwrap()]);
    let other = String::from_utf8(out.stdout).unwrap();
    assert_ne!(other.lines().last().unwrap(), cid);

    let missing = dir.join("missing.gguf");
    let out = oracle(&["manifest", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));
    std::fs::remove_dir_all(&dir).unwrap();
}
