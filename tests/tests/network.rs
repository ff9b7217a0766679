//! A real `oracle serve` and four native scouts (`oracle scout`) over real
//! libp2p transports on loopback — two over TCP, two over WebRTC-direct —
//! with completions sent through the HTTP API.
#![allow(clippy::unwrap_used)]

#[path = "../../shared-model/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The `oracle` binary cargo built beside this test.
fn oracle_bin() -> PathBuf {
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
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shard-net-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `oracle serve` on loopback; returns it, its HTTP address and its
/// p2p addresses.
fn start_oracle(data_dir: &PathBuf, extra: &[&str]) -> (Proc, String, Vec<String>) {
    let mut child = Command::new(oracle_bin())
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--p2p-listen",
            "/ip4/127.0.0.1/udp/0/webrtc-direct",
            "--draft-deadline-ms",
            "2000",
            "--max-sessions",
            "8",
            "--web-dir",
        ])
        .arg(data_dir.join("no-web-app"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--model")
        .arg(common::default_model())
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut http = None;
    let mut p2p = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while http.is_none() || p2p.len() < 2 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the oracle did not start in time");
        if let Some(addr) = line.strip_prefix("listening on http://") {
            http = Some(addr.to_owned());
        } else if let Some(addr) = line.strip_prefix("p2p listening on ") {
            p2p.push(addr.to_owned());
        }
    }
    (proc, http.unwrap(), p2p)
}

fn start_scout(connect: &str, data_dir: &PathBuf, extra: &[&str]) -> Proc {
    let layers = if extra.is_empty() {
        ["--draft-layers", "6"]
    } else {
        ["--draft-layers", "30"]
    };
    let extra: Vec<&str> = extra.iter().copied().filter(|a| *a != "honest").collect();
    Proc(
        Command::new(oracle_bin())
            .args(["scout", "--connect", connect])
            .args(layers)
            .args(&extra)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--draft-model")
            .arg(common::default_model())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// One HTTP/1.1 request; the status and the body.
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn json_of(addr: &str, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn complete(addr: &str, prompt: &str, max_tokens: usize) -> String {
    let model = json_of(addr, "/v1/models")["data"][0]["id"].clone();
    let (status, body) = http(
        addr,
        "POST",
        "/v1/completions",
        Some(
            &json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["choices"][0]["text"].as_str().unwrap().to_owned()
}

/// What `oracle generate` prints for `prompt`, greedy.
fn reference(prompt: &str, max_tokens: usize) -> String {
    let out = Command::new(oracle_bin())
        .args(["generate", "--json", "--prompt", prompt, "--max-tokens"])
        .arg(max_tokens.to_string())
        .arg("--model")
        .arg(common::default_model())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["text"].as_str().unwrap().to_owned()
}

fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
];

#[test]
fn scouts_draft_over_tcp_and_webrtc_and_outputs_equal_the_target_alone() {
    let dir = temp_dir("oracle");
    let (_oracle, addr, p2p) = start_oracle(&dir, &[]);
    let tcp = p2p.iter().find(|a| a.contains("/tcp/")).unwrap().clone();
    let webrtc = p2p
        .iter()
        .find(|a| a.contains("/webrtc-direct"))
        .unwrap()
        .clone();
    assert!(webrtc.contains("/certhash/"), "{webrtc}");

    // /api/status lists the peer id and every address, certhash included.
    let status = json_of(&addr, "/api/status");
    let listed: Vec<String> = status["p2p"]["listen_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert!(
        listed.contains(&webrtc) && listed.contains(&tcp),
        "{status}"
    );
    assert!(webrtc.ends_with(status["p2p"]["peer_id"].as_str().unwrap()));

    let mut scouts: Vec<Proc> = (0..4)
        .map(|i| {
            let connect = if i % 2 == 0 { &tcp } else { &webrtc };
            start_scout(connect, &dir.join(format!("scout-{i}")), &[])
        })
        .collect();
    wait_for("4 scouts", Duration::from_secs(120), || {
        json_of(&addr, "/api/status")["scouts_connected"] == 4
    });
    let peers = json_of(&addr, "/api/peers");
    let roles: Vec<&str> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["scout"; 4], "{peers}");

    // Greedy completions, concurrently, equal `oracle generate`'s.
    let max_tokens = 24;
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = PROMPTS
            .iter()
            .map(|p| {
                let addr = addr.clone();
                s.spawn(move || complete(&addr, p, max_tokens))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (prompt, answer) in PROMPTS.iter().zip(&answers) {
        assert_eq!(answer, &reference(prompt, max_tokens), "{prompt:?}");
    }
    let metrics = http(&addr, "GET", "/metrics", None).1;
    let claims = metric_sum(&metrics, "shard_scout_claims_total");
    let accepted = metric_sum(&metrics, "shard_scout_draft_tokens_accepted_total");
    assert!(claims >= 1.0, "no claims:\n{metrics}");
    assert!(accepted >= 1.0, "no scout drafts accepted:\n{metrics}");

    // A scout killed mid-session changes nothing in the output.
    let prompt = "Write a short story about a robot who learns to paint.";
    let expected = reference(prompt, 48);
    let got = std::thread::scope(|s| {
        let answer = s.spawn(|| complete(&addr, prompt, 48));
        std::thread::sleep(Duration::from_millis(1500));
        // Kill every scout: whichever holds the session is among them.
        for scout in scouts.iter_mut() {
            let _ = scout.0.kill();
        }
        answer.join().unwrap()
    });
    assert_eq!(got, expected);
    // TCP notices at once; WebRTC (UDP) when pings fail.
    wait_for("scouts gone", Duration::from_secs(90), || {
        json_of(&addr, "/api/status")["scouts_connected"] == 0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The peer id a scout made for itself in `dir`.
fn peer_id_in(dir: &std::path::Path) -> String {
    let bytes = std::fs::read(dir.join("node.key")).unwrap();
    shared_proto::Keypair::from_protobuf_encoding(&bytes)
        .unwrap()
        .public()
        .to_peer_id()
        .to_string()
}

#[test]
fn misbehaving_scouts_are_banned_by_golden_tickets_and_stay_banned_after_a_restart() {
    let dir = temp_dir("trust");
    let fast_tickets = ["--golden-interval-s", "0.5"];
    let (oracle, addr, p2p) = start_oracle(&dir, &fast_tickets);
    // Finished greedy answers are what golden tickets are made of.
    for prompt in &PROMPTS[..2] {
        complete(&addr, prompt, 16);
    }
    let tcp = p2p.iter().find(|a| a.contains("/tcp/")).unwrap().clone();
    let (garbage_dir, wrong_dir, honest_dir) = (
        dir.join("garbage"),
        dir.join("wrong-key"),
        dir.join("honest"),
    );
    let garbage = start_scout(&tcp, &garbage_dir, &["--misbehave", "garbage"]);
    let wrong = start_scout(&tcp, &wrong_dir, &["--misbehave", "wrong-key"]);
    let honest = start_scout(&tcp, &honest_dir, &["honest"]);
    wait_for("scout keys", Duration::from_secs(60), || {
        [&garbage_dir, &wrong_dir, &honest_dir]
            .iter()
            .all(|d| d.join("node.key").exists())
    });
    let record = |addr: &str, peer: &str| json_of(addr, &format!("/api/scouts/{peer}"));
    let bad = [peer_id_in(&garbage_dir), peer_id_in(&wrong_dir)];
    let good = peer_id_in(&honest_dir);
    wait_for("both bad scouts banned", Duration::from_secs(120), || {
        bad.iter().all(|p| record(&addr, p)["banned"] == true)
    });
    for peer in &bad {
        let r = record(&addr, peer);
        assert!(r["record"]["golden_failed"].as_u64().unwrap() <= 5, "{r}");
        assert_eq!(r["record"]["bans"], 1, "{r}");
    }
    let honest_record = record(&addr, &good);
    assert_eq!(honest_record["banned"], false, "{honest_record}");
    let metrics = http(&addr, "GET", "/metrics", None).1;
    assert!(metric_sum(&metrics, "shard_bans_total") >= 2.0, "{metrics}");

    // The bans survive a restart: the banned scout is refused, the honest one joins.
    drop((oracle, garbage, wrong, honest));
    let (_oracle, addr, p2p) = start_oracle(&dir, &fast_tickets);
    let tcp = p2p.iter().find(|a| a.contains("/tcp/")).unwrap().clone();
    let _garbage = start_scout(&tcp, &garbage_dir, &["--misbehave", "garbage"]);
    let _honest = start_scout(&tcp, &honest_dir, &[]);
    wait_for("the honest scout", Duration::from_secs(60), || {
        json_of(&addr, "/api/status")["scouts_connected"] == 1
    });
    std::thread::sleep(Duration::from_secs(3));
    let peers = json_of(&addr, "/api/peers").to_string();
    assert!(peers.contains(&good), "{peers}");
    assert!(!peers.contains(&bad[0]), "{peers}");
    assert_eq!(record(&addr, &bad[0])["banned"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn certified_results_reach_a_subscriber_that_verifies_them() {
    let dir = temp_dir("results");
    let network_key = dir.join("network.key");
    let run = |args: &[&str]| {
        let out = Command::new(oracle_bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["network-key", "--out", network_key.to_str().unwrap()]);
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    for d in [&a_dir, &b_dir] {
        let printed = run(&[
            "certify",
            "--network-key",
            network_key.to_str().unwrap(),
            "--data-dir",
            d.to_str().unwrap(),
        ]);
        assert!(printed.contains("certified oracle"), "{printed}");
    }
    let (_a, a_addr, a_p2p) = start_oracle(&a_dir, &[]);
    let tcp = a_p2p.iter().find(|a| a.contains("/tcp/")).unwrap().clone();
    let (_b, b_addr, _) = start_oracle(&b_dir, &["--bootstrap", &tcp]);
    wait_for("the oracles to meet", Duration::from_secs(60), || {
        json_of(&a_addr, "/api/peers")
            .to_string()
            .contains("\"oracle\"")
    });
    // Gossip meshes form on heartbeats: keep answering until B has seen a result.
    wait_for(
        "a verified result at the subscriber",
        Duration::from_secs(90),
        || {
            complete(&a_addr, PROMPTS[0], 4);
            let metrics = http(&b_addr, "GET", "/metrics", None).1;
            metric_sum(&metrics, "shard_results_received_total{valid=\"true\"}") >= 1.0
        },
    );
    let metrics = http(&a_addr, "GET", "/metrics", None).1;
    assert!(metric_sum(&metrics, "shard_results_published_total") >= 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}
