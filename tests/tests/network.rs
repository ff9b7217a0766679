//! A real `oracle serve` and four native scouts (`oracle scout`) over real
//! libp2p transports on loopback — two over TCP, two over WebRTC-direct —
//! with completions sent through the HTTP API.
#![allow(clippy::unwrap_used)]

#[path = "../../shared-model/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shard_tests::{Proc, one_at_a_time, oracle_bin, temp_dir};

/// Starts `oracle serve` on loopback; returns it, its HTTP address and its
/// p2p addresses.
fn start_oracle(data_dir: &PathBuf, extra: &[&str]) -> (Proc, String, Vec<String>) {
    let sessions = if extra.contains(&"--max-sessions") {
        &[][..]
    } else {
        &["--max-sessions", "8"][..]
    };
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
        ])
        .args(sessions)
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
    let (status, _, body) = http_with(addr, method, path, body, &[]);
    (status, body)
}

/// Opens a request with extra headers, without reading the answer.
fn http_send(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

/// One HTTP/1.1 request with extra headers; the status, the headers and the body.
fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut stream = http_send(addr, method, path, body, headers);
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
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
    let _serial = one_at_a_time();
    let dir = temp_dir("net", "oracle");
    let (_oracle, addr, p2p) = start_oracle(&dir, &[]);
    let tcp = p2p.iter().find(|a| a.contains("/tcp/")).unwrap().clone();
    let webrtc = p2p
        .iter()
        .find(|a| a.contains("/webrtc-direct"))
        .unwrap()
        .clone();
    assert!(webrtc.contains("/certhash/"), "{webrtc}");

    // /api/status lists the peer id and every address, certhash included
    // (the HTTP server can answer before the last listener is up: wait).
    let listed = |status: &serde_json::Value| -> Vec<String> {
        status["p2p"]["listen_addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    wait_for(
        "every listen address in /api/status",
        Duration::from_secs(20),
        || {
            let all = listed(&json_of(&addr, "/api/status"));
            all.contains(&webrtc) && all.contains(&tcp)
        },
    );
    let status = json_of(&addr, "/api/status");
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
    let _serial = one_at_a_time();
    let dir = temp_dir("net", "trust");
    let fast_tickets = ["--golden-interval-s", "0.5"];
    let (oracle, addr, p2p) = start_oracle(&dir, &fast_tickets);
    // Finished greedy answers are what golden tickets are made of.
    for prompt in &PROMPTS[..2] {
        complete(&addr, prompt, 16);
    }
    let tcp = p2p.iter().find(|a| a.contains("/tcp/")).unwrap().clone();
    let (garbage_dir, wrong_dir, replay_dir, honest_dir) = (
        dir.join("garbage"),
        dir.join("wrong-key"),
        dir.join("replay"),
        dir.join("honest"),
    );
    let garbage = start_scout(&tcp, &garbage_dir, &["--misbehave", "garbage"]);
    let wrong = start_scout(&tcp, &wrong_dir, &["--misbehave", "wrong-key"]);
    let replay = start_scout(&tcp, &replay_dir, &["--misbehave", "replay"]);
    let honest = start_scout(&tcp, &honest_dir, &["honest"]);
    wait_for("scout keys", Duration::from_secs(60), || {
        [&garbage_dir, &wrong_dir, &replay_dir, &honest_dir]
            .iter()
            .all(|d| d.join("node.key").exists())
    });
    let record = |addr: &str, peer: &str| json_of(addr, &format!("/api/scouts/{peer}"));
    let bad = [
        peer_id_in(&garbage_dir),
        peer_id_in(&wrong_dir),
        peer_id_in(&replay_dir),
    ];
    let good = peer_id_in(&honest_dir);
    // Whatever the scouts send, answers stay the target's.
    let expected = reference(PROMPTS[3], 16);
    assert_eq!(complete(&addr, PROMPTS[3], 16), expected);
    wait_for("every bad scout banned", Duration::from_secs(120), || {
        bad.iter().all(|p| record(&addr, p)["banned"] == true)
    });
    for peer in &bad {
        let r = record(&addr, peer);
        assert!(r["record"]["golden_failed"].as_u64().unwrap() <= 5, "{r}");
        assert_eq!(r["record"]["bans"], 1, "{r}");
    }
    // A malformed peer id is a clear 400, not a lookup.
    let (status, body) = http(&addr, "GET", "/api/scouts/not-a-peer", None);
    assert_eq!(status, 400, "{body}");
    let honest_record = record(&addr, &good);
    assert_eq!(honest_record["banned"], false, "{honest_record}");
    let metrics = http(&addr, "GET", "/metrics", None).1;
    assert!(metric_sum(&metrics, "shard_bans_total") >= 3.0, "{metrics}");

    // The bans survive a restart: the banned scout is refused, the honest one joins.
    drop((oracle, garbage, wrong, replay, honest));
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
    let _serial = one_at_a_time();
    let dir = temp_dir("net", "results");
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

mod hostile {
    //! A libp2p peer in this process that writes raw bytes on Shard's
    //! protocols: oversized and malformed frames, and a flood of claims.

    use std::io;
    use std::time::Duration;

    use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
    use libp2p::request_response::{self, Codec, ProtocolSupport};
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
    use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, noise, tcp, yamux};
    use shared_proto::Keypair;
    use shared_proto::protocol::{CLAIM_PROTOCOL, HANDSHAKE_PROTOCOL};

    /// Writes requests as given, reads answers whole (at most 1 MiB).
    #[derive(Clone, Default)]
    pub(super) struct RawCodec;

    impl Codec for RawCodec {
        type Protocol = StreamProtocol;
        type Request = Vec<u8>;
        type Response = Vec<u8>;

        async fn read_request<T: AsyncRead + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
        ) -> io::Result<Vec<u8>> {
            let mut out = Vec::new();
            io.take(1 << 20).read_to_end(&mut out).await?;
            Ok(out)
        }

        async fn read_response<T: AsyncRead + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
        ) -> io::Result<Vec<u8>> {
            let mut out = Vec::new();
            io.take(1 << 20).read_to_end(&mut out).await?;
            if out.is_empty() {
                // The stream closed without an answer.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(out)
        }

        async fn write_request<T: AsyncWrite + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            req: Vec<u8>,
        ) -> io::Result<()> {
            io.write_all(&req).await?;
            io.close().await
        }

        async fn write_response<T: AsyncWrite + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            res: Vec<u8>,
        ) -> io::Result<()> {
            io.write_all(&res).await?;
            io.close().await
        }
    }

    type Raw = request_response::Behaviour<RawCodec>;

    #[derive(NetworkBehaviour)]
    pub(super) struct Hostile {
        pub(super) handshake: Raw,
        pub(super) claim: Raw,
    }

    fn raw(protocol: StreamProtocol) -> Raw {
        request_response::Behaviour::with_codec(
            RawCodec,
            [(protocol, ProtocolSupport::Outbound)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(10))
                .with_max_concurrent_streams(1024),
        )
    }

    pub(super) fn swarm(key: &Keypair) -> Swarm<Hostile> {
        libp2p::SwarmBuilder::with_existing_identity(key.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| Hostile {
                handshake: raw(HANDSHAKE_PROTOCOL),
                claim: raw(CLAIM_PROTOCOL),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    }

    /// Connects if needed; `false` when the oracle refuses the connection.
    pub(super) async fn connect(
        swarm: &mut Swarm<Hostile>,
        oracle: &PeerId,
        addr: &Multiaddr,
    ) -> bool {
        if swarm.is_connected(oracle) {
            return true;
        }
        swarm.dial(addr.clone()).unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), swarm.select_next_some()).await {
                Ok(SwarmEvent::ConnectionEstablished { .. }) => return true,
                Ok(SwarmEvent::OutgoingConnectionError { .. }) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    }

    /// Sends each request on the handshake (`claim == false`) or claim
    /// protocol; returns the answers (`None`: none came) and whether the
    /// oracle closed the connection.
    pub(super) async fn send(
        swarm: &mut Swarm<Hostile>,
        oracle: &PeerId,
        claim: bool,
        requests: Vec<Vec<u8>>,
        expect_close: bool,
    ) -> (Vec<Option<Vec<u8>>>, bool) {
        let ids: Vec<_> = requests
            .into_iter()
            .map(|r| {
                if claim {
                    swarm.behaviour_mut().claim.send_request(oracle, r)
                } else {
                    swarm.behaviour_mut().handshake.send_request(oracle, r)
                }
            })
            .collect();
        let mut answers: Vec<Option<Vec<u8>>> = vec![None; ids.len()];
        let mut open = ids.len();
        let mut closed = false;
        while open > 0 || (expect_close && !closed) {
            let event =
                match tokio::time::timeout(Duration::from_secs(15), swarm.select_next_some()).await
                {
                    Ok(e) => e,
                    Err(_) => break,
                };
            let (request_id, response) = match event {
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } => {
                    closed = true;
                    continue;
                }
                SwarmEvent::Behaviour(HostileEvent::Handshake(e) | HostileEvent::Claim(e)) => {
                    match e {
                        request_response::Event::Message {
                            message:
                                request_response::Message::Response {
                                    request_id,
                                    response,
                                },
                            ..
                        } => (request_id, Some(response)),
                        request_response::Event::OutboundFailure { request_id, .. } => {
                            (request_id, None)
                        }
                        _ => continue,
                    }
                }
                _ => continue,
            };
            if let Some(i) = ids.iter().position(|x| *x == request_id) {
                answers[i] = response;
                open -= 1;
            }
        }
        (answers, closed)
    }
}

#[test]
fn hostile_frames_and_floods_harm_no_one_else() {
    let _serial = one_at_a_time();
    let dir = temp_dir("net", "hostile");
    let (_oracle, addr, p2p) = start_oracle(&dir, &[]);
    let tcp = p2p.iter().find(|a| a.contains("/tcp/")).unwrap().clone();
    let _honest = start_scout(&tcp, &dir.join("honest"), &[]);
    wait_for("the honest scout", Duration::from_secs(60), || {
        json_of(&addr, "/api/status")["scouts_connected"] == 1
    });
    let oracle_addr: libp2p::Multiaddr = tcp.parse().unwrap();
    let oracle = match oracle_addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => unreachable!(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = shared_proto::Keypair::generate_ed25519();
    let mut swarm = runtime.block_on(async { hostile::swarm(&key) });

    // An oversized frame (a length prefix of 2 MiB) and a malformed one: the
    // oracle answers nothing and closes the connection.
    let mut oversized = Vec::new();
    shared_proto::frame::encode_varint(2 << 20, &mut oversized);
    oversized.extend(vec![0u8; 4096]);
    let malformed = vec![5u8, 0xff, 0xff, 0xff, 0xff, 0xff];
    for junk in [oversized, malformed] {
        let (answers, closed) = runtime.block_on(async {
            assert!(hostile::connect(&mut swarm, &oracle, &oracle_addr).await);
            hostile::send(&mut swarm, &oracle, false, vec![junk], true).await
        });
        assert_eq!(answers, [None]);
        assert!(closed, "the oracle keeps a peer that sent junk");
    }

    // A proper handshake, then a flood of claims: the rate limits refuse most,
    // while a client's request (served with the honest scout) goes on.
    let hello =
        scout_wasm::net::handshake_message(&key, pb_node_type_scout(), &[], None, vec![], None);
    let expected = reference(PROMPTS[1], 24);
    let answer = std::thread::scope(|s| {
        let client = s.spawn(|| complete(&addr, PROMPTS[1], 24));
        let passed = runtime.block_on(async {
            assert!(hostile::connect(&mut swarm, &oracle, &oracle_addr).await);
            let (answers, _) = hostile::send(
                &mut swarm,
                &oracle,
                false,
                vec![shared_proto::frame::encode(&hello).unwrap()],
                false,
            )
            .await;
            assert!(answers[0].is_some(), "a valid handshake is answered");
            let claims: Vec<Vec<u8>> = (0..200u32)
                .map(|i| {
                    let request = shared_proto::pb::ClaimRequest {
                        work_cid: shared_proto::ContentId::digest(&i.to_le_bytes()).to_bytes(),
                        model_cid: shared_proto::ContentId::digest(b"m").to_bytes(),
                    };
                    shared_proto::frame::encode(&request).unwrap()
                })
                .collect();
            let (answers, _) = hostile::send(&mut swarm, &oracle, true, claims, false).await;
            // Claims the limits let through: answered with anything but
            // UNAVAILABLE (streams over the per-connection cap get no answer).
            answers
                .iter()
                .flatten()
                .filter_map(|a| {
                    shared_proto::frame::decode::<shared_proto::pb::ClaimResponse>(a).ok()
                })
                .filter(|r| {
                    let code = r
                        .ack
                        .as_ref()
                        .and_then(|a| a.errors.first())
                        .map(|e| e.code.as_str());
                    code != Some("UNAVAILABLE")
                })
                .count()
        });
        (client.join().unwrap(), passed)
    });
    assert_eq!(answer.0, expected, "the client's answer is unharmed");
    // Burst 20, then 1 a second: little more than the burst gets through.
    assert!(
        answer.1 <= 30,
        "{} of 200 flooded claims got past the limits",
        answer.1
    );
    assert_eq!(http(&addr, "GET", "/health", None).0, 200);
    // The honest scout is still there (the flooder, which handshook as a
    // scout, may be too: it was throttled, not banned).
    let peers = json_of(&addr, "/api/peers").to_string();
    assert!(peers.contains(&peer_id_in(&dir.join("honest"))), "{peers}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `oracle ask` over p2p: its JSON answer and when the process ended.
fn ask(
    connect: &str,
    prompt: &str,
    max_tokens: usize,
    data_dir: Option<&PathBuf>,
) -> (Value, Instant) {
    let mut command = Command::new(oracle_bin());
    command
        .args(["ask", "--json", "--connect", connect, "--max-tokens"])
        .arg(max_tokens.to_string())
        .arg(prompt);
    if let Some(dir) = data_dir {
        command.arg("--data-dir").arg(dir);
    }
    let out = command.output().unwrap();
    let ended = Instant::now();
    assert!(
        out.status.success(),
        "oracle ask failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).unwrap(), ended)
}

#[test]
fn contributors_wait_ahead_of_leeches_and_leeches_ask_over_p2p() {
    let _serial = one_at_a_time();
    let dir = temp_dir("net", "credit");
    let (_oracle, addr, p2p) = start_oracle(&dir, &["--max-sessions", "1"]);
    let tcp = p2p.iter().find(|a| a.contains("/tcp/")).unwrap().clone();
    let scout_dir = dir.join("scout");
    let scout = start_scout(&tcp, &scout_dir, &["honest"]);
    wait_for("the scout", Duration::from_secs(60), || {
        json_of(&addr, "/api/status")["scouts_connected"] == 1
    });
    let peer = peer_id_in(&scout_dir);
    let credits = || {
        json_of(&addr, &format!("/api/scouts/{peer}"))["record"]["credits"]
            .as_u64()
            .unwrap()
    };
    // Drafting earns credit.
    complete(&addr, PROMPTS[0], 24);
    wait_for(
        "credit for accepted drafts",
        Duration::from_secs(30),
        || credits() > 0,
    );
    drop(scout);
    wait_for("the scout gone", Duration::from_secs(30), || {
        json_of(&addr, "/api/status")["scouts_connected"] == 0
    });
    std::thread::sleep(Duration::from_secs(1)); // the last credits are flushed

    // A leech asks over p2p and gets the target's answer.
    let (answer, _) = ask(&tcp, PROMPTS[2], 16, None);
    assert_eq!(
        answer["text"],
        reference(PROMPTS[2], 16).as_str(),
        "{answer}"
    );
    assert_eq!(answer["contributor"], false);

    // Over HTTP the scout's credit token buys priority and is spent.
    let out = Command::new(oracle_bin())
        .args(["credit-token", "--data-dir"])
        .arg(&scout_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let model = json_of(&addr, "/v1/models")["data"][0]["id"].clone();
    let body = json!({"model": model, "prompt": PROMPTS[3], "max_tokens": 4, "temperature": 0});
    let post = |headers: &[(&str, &str)]| {
        http_with(&addr, "POST", "/v1/completions", Some(&body), headers)
    };
    let before = credits();
    let (status, head, reply) = post(&[("X-Shard-Credit", &token)]);
    assert_eq!(status, 200, "{reply}");
    assert!(head.contains("x-shard-priority: contributor"), "{head}");
    let used = serde_json::from_str::<Value>(&reply).unwrap()["usage"]["completion_tokens"]
        .as_u64()
        .unwrap();
    wait_for("the credit spent", Duration::from_secs(10), || {
        credits() == before.saturating_sub(used)
    });
    let forged = token.replace("shard-credit.1.", "shard-credit.1.00");
    let (status, _, reply) = post(&[("X-Shard-Credit", &forged)]);
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("invalid_credit_token"), "{reply}");
    let (status, head, _) = post(&[]);
    assert_eq!(status, 200);
    assert!(head.contains("x-shard-priority: normal"), "{head}");

    // One slot, held by a long answer; a leech queues, then the contributor:
    // the contributor is served first.
    let long = json!({"model": model, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 1000,
        "temperature": 0, "stream": true});
    let mut holder = http_send(&addr, "POST", "/v1/completions", Some(&long), &[]);
    let mut first = [0u8; 64];
    holder.read_exact(&mut first).unwrap();
    let queued = || {
        json_of(&addr, "/api/status")["sessions"]["queued"]
            .as_u64()
            .unwrap()
    };
    let (leech, contributor) = std::thread::scope(|s| {
        let leech = s.spawn(|| ask(&tcp, PROMPTS[0], 8, None));
        wait_for("the leech queued", Duration::from_secs(60), || {
            queued() == 1
        });
        let contributor = s.spawn(|| ask(&tcp, PROMPTS[1], 8, Some(&scout_dir)));
        wait_for("the contributor queued", Duration::from_secs(60), || {
            queued() == 2
        });
        // The long answer's client leaves: its slot frees.
        holder.shutdown(std::net::Shutdown::Both).unwrap();
        (leech.join().unwrap(), contributor.join().unwrap())
    });
    assert_eq!(contributor.0["contributor"], true, "{}", contributor.0);
    assert_eq!(leech.0["contributor"], false, "{}", leech.0);
    assert!(
        contributor.1 < leech.1,
        "the leech was answered before the contributor"
    );
    assert_eq!(contributor.0["text"], reference(PROMPTS[1], 8).as_str());
    let _ = std::fs::remove_dir_all(&dir);
}

fn pb_node_type_scout() -> shared_proto::pb::NodeType {
    shared_proto::pb::NodeType::Scout
}

/// Oracles tell each other who they have on `shard-topology`: an oracle that
/// joined through another lists the other's scout (and the other oracle) in
/// `/api/peers`' `network`, without a connection to the scout, and forgets it
/// when the scout leaves.
#[test]
fn oracles_learn_each_others_scouts_from_the_topology_topic() {
    let _serial = one_at_a_time();
    let dir = temp_dir("net", "topology");
    let (_first, _first_http, first_p2p) = start_oracle(&dir.join("first"), &[]);
    let first_tcp = first_p2p.iter().find(|a| a.contains("/tcp/")).unwrap();
    let (_second, second_http, _) = start_oracle(&dir.join("second"), &["--bootstrap", first_tcp]);
    let scout = start_scout(first_tcp, &dir.join("scout"), &[]);
    let first_id = peer_id_in(&dir.join("first"));
    wait_for("the scout's key", Duration::from_secs(60), || {
        dir.join("scout/node.key").exists()
    });
    let scout_id = peer_id_in(&dir.join("scout"));

    let seen = |role: &str, id: &str| {
        let peers = json_of(&second_http, "/api/peers");
        peers["network"].as_array().unwrap().iter().any(|n| {
            n["role"] == role
                && n["peer_id"] == id
                && n["reported_by"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == first_id.as_str())
        })
    };
    wait_for(
        "the second oracle to learn the first's scout",
        Duration::from_secs(60),
        || seen("scout", &scout_id),
    );
    assert!(
        seen("oracle", &first_id),
        "{}",
        json_of(&second_http, "/api/peers")
    );
    // The scout is not connected to the second oracle: it knows it only by report.
    let direct = json_of(&second_http, "/api/peers");
    assert!(
        !direct["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer_id"] == scout_id.as_str()),
        "{direct}"
    );

    drop(scout);
    wait_for(
        "the second oracle to hear that the scout left",
        Duration::from_secs(60),
        || !seen("scout", &scout_id),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
