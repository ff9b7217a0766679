//! Models over the network: real `oracle serve` processes offering the
//! default model on loopback, and `oracle fetch` downloading it — from three
//! peers of which one lies and one dies, and killed midway then resumed.
#![allow(clippy::unwrap_used)]

#[path = "../../shared-model/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use shard_tests::{Proc, one_at_a_time, oracle_bin, temp_dir};

/// A running oracle: its process, HTTP address and TCP p2p address.
struct Oracle {
    /// Killed when the oracle is dropped.
    _proc: Proc,
    http: String,
    p2p: String,
}

/// `oracle serve` on loopback TCP, with one block of the default model unless
/// `extra` says `--layers` (it serves the whole file either way; one block
/// only makes it start fast).
fn start_oracle(data_dir: &Path, extra: &[&str]) -> Oracle {
    let layers: &[&str] = if extra.contains(&"--layers") {
        &[]
    } else {
        &["--layers", "1"]
    };
    let mut child = Command::new(oracle_bin())
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args(layers)
        .args(["--max-sessions", "1", "--max-batch-tokens", "16"])
        .arg("--web-dir")
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
    let lines = lines_of(child.stdout.take().unwrap());
    let proc = Proc(child);
    let (mut http, mut p2p) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while http.is_none() || p2p.is_none() {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the oracle did not start in time");
        if let Some(addr) = line.strip_prefix("listening on http://") {
            http = Some(addr.to_owned());
        } else if let Some(addr) = line.strip_prefix("p2p listening on ") {
            p2p = Some(addr.to_owned());
        }
    }
    Oracle {
        _proc: proc,
        http: http.unwrap(),
        p2p: p2p.unwrap(),
    }
}

/// The lines `from` prints, as they come.
fn lines_of(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn http_get(addr: &str, path: &str) -> String {
    http_request(addr, "GET", path, "")
}

/// One HTTP/1.1 request; the body of the answer.
fn http_request(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The sum of the oracle's Prometheus metric `name` over its labels.
fn metric(oracle: &Oracle, name: &str) -> u64 {
    http_get(&oracle.http, "/metrics")
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The oracle's count of pieces it sent over p2p.
fn pieces_served(oracle: &Oracle) -> u64 {
    metric(oracle, "shard_pieces_served_p2p_total")
}

fn peer_id(oracle: &Oracle) -> String {
    oracle.p2p.rsplit('/').next().unwrap().to_owned()
}

/// The default model's content id, as `oracle manifest` prints it.
fn model_cid() -> String {
    let out = Command::new(oracle_bin())
        .arg("manifest")
        .arg(common::default_model())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// The default model's SHA-256 from `models/SHA256SUMS`.
fn expected_sha256() -> String {
    let sums = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SHA256SUMS"),
    )
    .unwrap();
    let name = common::default_model()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    sums.lines()
        .find_map(|l| l.strip_suffix(name.as_str()).map(|h| h.trim().to_owned()))
        .unwrap()
}

fn sha256_of(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    format!("{:x}", hasher.finalize())
}

/// `oracle fetch` started with `args`; its progress lines come on the receiver.
fn start_fetch(args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(oracle_bin())
        .arg("fetch")
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stderr.take().unwrap());
    (Proc(child), lines)
}

/// `done/total` of a progress line (`progress: 12/376 pieces, ...`).
fn pieces_done(line: &str) -> Option<(u32, u32)> {
    let rest = line.strip_prefix("progress: ")?;
    let (done, rest) = rest.split_once('/')?;
    let total = rest.split_once(' ')?.0;
    Some((done.parse().ok()?, total.parse().ok()?))
}

/// Waits for the process to end, echoing its output; its exit status.
fn finish(mut proc: Proc, lines: &mpsc::Receiver<String>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        while let Ok(line) = lines.try_recv() {
            eprintln!("fetch| {line}");
        }
        if let Some(status) = proc.0.try_wait().unwrap() {
            while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
                eprintln!("fetch| {line}");
            }
            return status.success();
        }
        assert!(
            Instant::now() < deadline,
            "oracle fetch did not finish in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `oracle`'s `/api/peers` lists `n` other oracles.
fn wait_for_oracles(oracle: &Oracle, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let peers: Value = serde_json::from_str(&http_get(&oracle.http, "/api/peers")).unwrap();
        let oracles = peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["role"] == "oracle")
            .count();
        if oracles >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the oracles did not meet: {peers}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_peers_one_lying_one_dying_give_the_exact_file() {
    let _serial = one_at_a_time();
    let dir = temp_dir("weights", "three");
    let honest = start_oracle(&dir.join("honest"), &[]);
    let dying = start_oracle(&dir.join("dying"), &["--bootstrap", &honest.p2p]);
    let liar = start_oracle(
        &dir.join("liar"),
        &["--bootstrap", &honest.p2p, "--misbehave", "corrupt-pieces"],
    );
    wait_for_oracles(&honest, 2);
    // The others' provider records reach the honest oracle's DHT store.
    std::thread::sleep(Duration::from_secs(2));
    let out = dir.join("model.gguf");
    let report = dir.join("report.json");
    let cid = model_cid();
    // Only the honest oracle is named: the others are found in the DHT.
    let (fetch, lines) = start_fetch(&[
        &cid,
        "--bootstrap",
        &honest.p2p,
        "--out",
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--data-dir",
        dir.join("fetcher").to_str().unwrap(),
        "--max-rate",
        "12M",
        "--per-peer",
        "2",
    ]);
    // Kill one provider a quarter of the way through.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut dying = Some(dying);
    while dying.is_some() {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no progress from oracle fetch");
        eprintln!("fetch| {line}");
        if pieces_done(&line).is_some_and(|(done, total)| done * 4 >= total) {
            let served = pieces_served(dying.as_ref().unwrap());
            eprintln!("killing a provider that served {served} pieces");
            assert!(served > 0, "the peer to kill has not served anything yet");
            drop(dying.take());
        }
    }
    assert!(
        finish(fetch, &lines, Duration::from_secs(180)),
        "oracle fetch failed"
    );

    assert_eq!(
        sha256_of(&out),
        expected_sha256(),
        "the file is not the model"
    );
    assert!(!dir.join("model.gguf.part").exists());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    eprintln!("{report:#}");
    let peer = |id: &str| {
        report["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer_id"] == id)
            .unwrap_or_else(|| panic!("{id} did not take part: {report}"))
            .clone()
    };
    let lied = peer(&peer_id(&liar));
    assert!(lied["bad_pieces"].as_u64().unwrap() >= 1, "{lied}");
    assert_eq!(lied["pieces"], 0, "a corrupted piece was accepted: {lied}");
    assert_eq!(lied["struck_off"], true, "{lied}");
    assert!(
        lied["reputation_after"].as_f64().unwrap() < lied["reputation_before"].as_f64().unwrap(),
        "the liar lost no reputation: {lied}"
    );
    // Every piece came from a peer that had it: the honest one, or the one
    // that died (before it died); none from the liar, none twice.
    let honest_id = peer_id(&honest);
    let sources = report["sources"].as_array().unwrap();
    assert_eq!(sources.len() as u64, report["pieces"].as_u64().unwrap());
    assert_eq!(report["resumed"], 0);
    assert_eq!(report["fetched"], report["pieces"]);
    let from_honest = sources.iter().filter(|s| **s == honest_id.as_str()).count();
    let dead_id = report["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer_id"].as_str().unwrap().to_owned())
        .find(|p| *p != honest_id && *p != peer_id(&liar))
        .expect("the peer that died never took part");
    let from_dead = sources.iter().filter(|s| **s == dead_id.as_str()).count();
    assert!(from_dead > 0, "the dying peer sent nothing before it died");
    assert_eq!(from_honest + from_dead, sources.len(), "{report}");
    drop(liar);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_download_resumes_without_fetching_verified_pieces_again() {
    let _serial = one_at_a_time();
    let dir = temp_dir("weights", "resume");
    let oracle = start_oracle(&dir.join("oracle"), &[]);
    let out = dir.join("model.gguf");
    let report = dir.join("report.json");
    let cid = model_cid();
    let fetcher = dir.join("fetcher");
    let args = |cap: bool| {
        let mut a = vec![
            cid.clone(),
            "--bootstrap".into(),
            oracle.p2p.clone(),
            "--out".into(),
            out.to_str().unwrap().to_owned(),
            "--report".into(),
            report.to_str().unwrap().to_owned(),
            "--data-dir".into(),
            fetcher.to_str().unwrap().to_owned(),
        ];
        if cap {
            a.extend(["--max-rate".into(), "8M".into()]);
        }
        a
    };
    // A point between 10% and 80% of the pieces, different each run.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let at = 10 + nanos % 71;
    eprintln!("killing the download at {at}% of its pieces");
    let first: Vec<String> = args(true);
    let (mut fetch, lines) = start_fetch(&first.iter().map(String::as_str).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no progress from oracle fetch");
        eprintln!("fetch| {line}");
        if pieces_done(&line).is_some_and(|(done, total)| done * 100 >= total * at) {
            // SIGKILL: no chance to tidy up.
            fetch.0.kill().unwrap();
            fetch.0.wait().unwrap();
            break;
        }
    }
    assert!(!out.exists(), "a partial download has the final name");
    assert!(dir.join("model.gguf.part").exists());
    // Reads for the killed fetcher that were under way end first.
    let mut served_before = pieces_served(&oracle);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = pieces_served(&oracle);
        if now == served_before {
            break;
        }
        served_before = now;
    }

    let second = args(false);
    let (fetch, lines) = start_fetch(&second.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        finish(fetch, &lines, Duration::from_secs(120)),
        "the resumed fetch failed"
    );
    assert_eq!(sha256_of(&out), expected_sha256());
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let (pieces, resumed, fetched) = (
        report["pieces"].as_u64().unwrap(),
        report["resumed"].as_u64().unwrap(),
        report["fetched"].as_u64().unwrap(),
    );
    eprintln!("{pieces} pieces: {resumed} resumed, {fetched} fetched");
    assert!(resumed > 0, "nothing was resumed");
    assert!(resumed < pieces);
    assert_eq!(resumed + fetched, pieces);
    // The oracle agrees: it sent exactly the missing pieces, none twice.
    assert_eq!(pieces_served(&oracle) - served_before, fetched);
    let sources = report["sources"].as_array().unwrap();
    assert_eq!(
        sources.iter().filter(|s| **s == "resumed").count() as u64,
        resumed
    );

    // A third run finds the file complete and fetches nothing.
    let (fetch, lines) = start_fetch(&second.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(finish(fetch, &lines, Duration::from_secs(60)));
    assert_eq!(pieces_served(&oracle) - served_before, fetched);

    // A destination that cannot be written is a clear error, not a panic.
    let output = Command::new(oracle_bin())
        .args(["fetch", &cid, "--bootstrap", &oracle.p2p])
        .args(["--out", "/proc/shard-nowhere/model.gguf", "--data-dir"])
        .arg(&fetcher)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot create /proc/shard-nowhere"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_model_nobody_offers_fails_clearly() {
    let _serial = one_at_a_time();
    let dir = temp_dir("weights", "nobody");
    let oracle = start_oracle(&dir.join("oracle"), &[]);
    let out = dir.join("model.gguf");
    let unknown = format!("1220{}", "ab".repeat(32));
    let output = Command::new(oracle_bin())
        .args([
            "fetch",
            &unknown,
            "--bootstrap",
            &oracle.p2p,
            "--stall-timeout-s",
            "3",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--data-dir")
        .arg(dir.join("fetcher"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no peer offers model"), "{stderr}");
    assert!(!out.exists() && !dir.join("model.gguf.part").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_scout_without_a_model_fetches_the_announced_one_and_drafts() {
    let _serial = one_at_a_time();
    let dir = temp_dir("weights", "scout");
    let oracle = start_oracle(
        &dir.join("oracle"),
        &["--layers", "30", "--draft-deadline-ms", "2000"],
    );
    let scout_dir = dir.join("scout");
    let mut child = Command::new(oracle_bin())
        .args(["scout", "--connect", &oracle.p2p, "--draft-layers", "6"])
        .arg("--data-dir")
        .arg(&scout_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stderr.take().unwrap());
    let _scout = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while serde_json::from_str::<Value>(&http_get(&oracle.http, "/api/status")).unwrap()["scouts_connected"]
        != 1
    {
        while let Ok(line) = lines.try_recv() {
            eprintln!("scout| {line}");
        }
        assert!(Instant::now() < deadline, "the scout did not join");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The model it fetched is the oracle's, byte for byte.
    let fetched = scout_dir
        .join("models")
        .join(format!("{}.gguf", model_cid()));
    assert_eq!(sha256_of(&fetched), expected_sha256());
    assert_eq!(pieces_served(&oracle), 376);

    let body = serde_json::json!({
        "prompt": "The capital of France is",
        "max_tokens": 16,
        "temperature": 0,
    });
    let answer = http_request(&oracle.http, "POST", "/v1/completions", &body.to_string());
    assert!(answer.contains("\"text\""), "{answer}");
    while let Ok(line) = lines.try_recv() {
        eprintln!("scout| {line}");
    }
    assert!(
        metric(&oracle, "shard_scout_claims_total") >= 1,
        "the scout claimed nothing"
    );
    assert!(
        metric(&oracle, "shard_scout_draft_tokens_accepted_total") >= 1,
        "no drafts of the scout were accepted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
