//! The page's half of the browser scout: the libp2p node (WebRTC-direct to
//! the oracle, WebSocket when that fails; `RTCPeerConnection` exists only on a
//! page's main thread) and the model worker it starts and feeds.
//!
//! The worker downloads, checks and loads the draft model; then the node
//! dials, handshakes as a scout, claims announced work, and forwards the
//! oracle's rounds to the worker — all rounds that arrive while the worker
//! drafts go to it as the next batch — and the signed answers back.
//!
//! JavaScript (and the browser tests) drive it through [`ScoutNode`]; the web
//! app through [`start`].

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use libp2p::core::upgrade::Version;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::multiaddr::Protocol;
use libp2p::ping;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, Transport as _, noise};
use serde::{Deserialize, Serialize};
use shared_proto::protocol::{CLAIM_PROTOCOL, TOPOLOGY_TOPIC, VERIFY_PROTOCOL, WORK_TOPIC};
use shared_proto::{Keypair, ReplayWindow, frame, pb};
use wasm_bindgen::prelude::*;
use web_sys::{MessageEvent, Worker};
use web_time::{Instant, SystemTime, UNIX_EPOCH};

use crate::behaviour::{ScoutBehaviour, ScoutBehaviourEvent};
use crate::bridge::{
    BackendChoice, BackendKind, FromWorker, ModelOffer, ModelSource, RoundRequest, ToWorker,
    WorkerStats,
};
use crate::dial::{BrowserTransport, browser_dial_order};
use crate::net::{self, Backoff, HandshakeVerdict, NetTimeouts, PingPolicy};
use crate::round::Fault;

/// Where the node is, for the page to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The draft model is being downloaded, checked and loaded.
    Loading,
    /// Dialling an address.
    Dialling,
    /// Connected; our handshake is on its way.
    Connected,
    /// The oracle took our handshake: we draft for it.
    Ready,
    /// The oracle refused us (see `detail`).
    Refused,
    /// The oracle banned us until `banned_until_ms`.
    Banned,
    /// No address answered; retrying at `retry_at_ms`.
    Unreachable,
    /// Stopped by the page.
    Stopped,
    /// The scout cannot run (see `detail` and the model's error).
    Failed,
}

/// The draft model in the worker.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelState {
    /// Bytes downloaded.
    pub received: u64,
    /// Bytes in all.
    pub total: u64,
    /// Pieces verified so far (0 when the model comes whole).
    pub pieces: u32,
    /// Pieces in all.
    pub pieces_total: u32,
    /// Pieces found in this browser's cache (a resumed download).
    pub pieces_cached: u32,
    /// Pieces refused for a bad SHA-256 and fetched again.
    pub pieces_refused: u32,
    /// Checked and loaded.
    pub loaded: bool,
    /// Milliseconds from the start to loaded.
    pub load_ms: Option<f64>,
    /// The backend it runs on.
    pub backend: Option<BackendKind>,
    /// The WebGPU adapter.
    pub adapter: Option<String>,
    /// Why WebGPU is not used.
    pub fallback_reason: Option<String>,
    /// Where the model came from: the browser's cache or the network.
    pub source: Option<ModelSource>,
    /// Why the browser's cache could not serve or keep the model (shown to
    /// the person; the model is used anyway).
    pub cache_error: Option<String>,
    /// What failed (`fetch`, `checksum`, `model`, `webgpu`, `worker`, …).
    pub error_kind: Option<String>,
    /// How.
    pub error: Option<String>,
}

/// The node's state as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeState {
    /// Our peer id.
    pub peer_id: String,
    /// The oracle's.
    pub oracle: String,
    /// Where we are.
    pub phase: Phase,
    /// The transport of the connection (or of the dial in progress).
    pub transport: Option<&'static str>,
    /// The address dialled or connected.
    pub address: Option<String>,
    /// The last error, refusal or reason.
    pub detail: Option<String>,
    /// The end of a ban (unix ms).
    pub banned_until_ms: Option<u64>,
    /// When the next dial happens (unix ms).
    pub retry_at_ms: Option<u64>,
    /// Connections made since the start.
    pub connections: u32,
    /// The draft model.
    pub model: ModelState,
    /// The scout's counters.
    pub stats: WorkerStats,
    /// Unix ms of the first round answered with drafts.
    pub first_draft_at_ms: Option<u64>,
}

/// What the node needs to start.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeOptions {
    /// The oracle's listen addresses (`/api/status` → `p2p.listen_addrs`).
    pub addresses: Vec<String>,
    /// The draft model (`/api/status` → `scout_model`).
    pub model: ModelOffer,
    /// The backend wanted.
    #[serde(default)]
    pub backend: BackendChoice,
    /// The worker's script (trunk's loader shim).
    #[serde(default = "default_worker_url")]
    pub worker_url: String,
    /// Sessions drafted for at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Longest context drafted for.
    #[serde(default = "default_max_context")]
    pub max_context: usize,
    /// Misbehave on purpose, to watch the oracle's defences ban this tab
    /// (the web app's `?misbehave=garbage`); honest by default.
    #[serde(default)]
    pub misbehave: Fault,
}

fn default_worker_url() -> String {
    "/scout_worker_loader.js".into()
}

fn default_max_sessions() -> usize {
    2
}

fn default_max_context() -> usize {
    2048
}

/// A browser scout, for JavaScript: made from the oracle's description, it
/// loads the draft model in a worker, dials, handshakes, drafts, and redials
/// until stopped.
#[wasm_bindgen]
pub struct ScoutNode {
    state: Rc<RefCell<NodeState>>,
    stop: Option<oneshot::Sender<()>>,
}

#[wasm_bindgen]
impl ScoutNode {
    /// Starts a scout from [`NodeOptions`] as JSON.
    #[wasm_bindgen(constructor)]
    pub fn new(options: String) -> Result<ScoutNode, JsError> {
        super::console::init();
        let options: NodeOptions =
            serde_json::from_str(&options).map_err(|e| JsError::new(&format!("options: {e}")))?;
        start(super::identity::load_or_create(), options).map_err(|e| JsError::new(&e))
    }

    /// The node's state, as JSON ([`NodeState`]).
    #[wasm_bindgen(js_name = stateJson)]
    pub fn state_json(&self) -> String {
        serde_json::to_string(&*self.state.borrow()).unwrap_or_default()
    }

    /// Closes the connection, stops the worker, and stops.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl ScoutNode {
    /// The state, shared (the web app reads it).
    pub fn state(&self) -> Rc<RefCell<NodeState>> {
        self.state.clone()
    }
}

fn hardware_concurrency() -> i32 {
    web_sys::window()
        .map(|w| w.navigator().hardware_concurrency())
        .map_or(1, |n| n.clamp(1.0, 4096.0) as i32)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts a scout with `key`: the worker, then the node (spawned on the page).
pub fn start(key: Keypair, options: NodeOptions) -> Result<ScoutNode, String> {
    let connect = browser_dial_order(options.addresses.iter().map(String::as_str));
    let oracle = match connect.first().and_then(|a| a.iter().last()) {
        Some(Protocol::P2p(peer)) => peer,
        _ => {
            return Err(
                "the oracle has no address a browser can dial (WebRTC-direct or WebSocket)".into(),
            );
        }
    };
    let model_cid = hex::decode(options.model.cid.trim()).map_err(|e| format!("model cid: {e}"))?;
    let key_hex = key
        .to_protobuf_encoding()
        .map(hex::encode)
        .map_err(|e| format!("the scout key does not encode: {e}"))?;
    // A WebRTC connection the oracle closed (a ban, a restart) gives the tab
    // no sign of it (none in 100 s, seen in Chromium); pings are how it finds out, so it
    // pings twice as often as a native node: a dead oracle is noticed in
    // 10–20 s instead of 20–40 s.
    let timeouts = NetTimeouts {
        ping_interval: Duration::from_secs(5),
        ping_timeout: Duration::from_secs(5),
        ..NetTimeouts::default()
    };
    let swarm = build_swarm(&key, &timeouts)?;
    let (worker, from_worker) = spawn_worker(&options.worker_url)?;
    let state = Rc::new(RefCell::new(NodeState {
        peer_id: key.public().to_peer_id().to_string(),
        oracle: oracle.to_string(),
        phase: Phase::Loading,
        transport: None,
        address: None,
        detail: None,
        banned_until_ms: None,
        retry_at_ms: None,
        connections: 0,
        model: ModelState {
            total: options.model.size,
            ..Default::default()
        },
        stats: WorkerStats::default(),
        first_draft_at_ms: None,
    }));
    let (stop_tx, stop_rx) = oneshot::channel();
    let node = Node {
        key,
        swarm,
        oracle,
        connect,
        model_cid,
        timeouts,
        max_sessions: options.max_sessions.max(1),
        worker,
        state: state.clone(),
        ready: false,
        loaded: false,
        claims: HashMap::new(),
        held: HashSet::new(),
        granted: HashSet::new(),
        waiting: Vec::new(),
        to_draft: Vec::new(),
        in_flight: HashMap::new(),
        next_round_id: 0,
        replay: ReplayWindow::new(4096),
        worker_ready: false,
        outbox: RefCell::new(Vec::new()),
        ping: PingPolicy::default(),
    };
    node.outbox.borrow_mut().push(ToWorker::Start {
        key: key_hex,
        model: options.model,
        backend: options.backend,
        max_sessions: options.max_sessions.max(1),
        max_context: options.max_context,
        fault: options.misbehave,
    });
    wasm_bindgen_futures::spawn_local(node.run(stop_rx, from_worker));
    Ok(ScoutNode {
        state,
        stop: Some(stop_tx),
    })
}

/// Messages from the worker; more than this in one go means it floods us.
const FROM_WORKER: usize = 256;

/// Starts the model worker; its messages arrive on the returned channel
/// (a worker that fails to run reports a `worker` error there).
fn spawn_worker(url: &str) -> Result<(Worker, mpsc::Receiver<FromWorker>), String> {
    let worker = Worker::new(url).map_err(|e| format!("cannot start the model worker: {e:?}"))?;
    let (tx, rx) = mpsc::channel::<FromWorker>(FROM_WORKER);
    let mut on_message_tx = tx.clone();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        let message = event
            .data()
            .as_string()
            .and_then(|text| serde_json::from_str::<FromWorker>(&text).ok())
            .unwrap_or_else(|| FromWorker::error("message", "the worker sent a malformed message"));
        if on_message_tx.try_send(message).is_err() {
            log::error!("the page is not keeping up with the model worker");
        }
    });
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    let mut on_error_tx = tx;
    let on_error =
        Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(move |event: web_sys::ErrorEvent| {
            let _ = on_error_tx.try_send(FromWorker::error(
                "worker",
                format!("the model worker failed: {}", event.message()),
            ));
        });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    Ok((worker, rx))
}

fn build_swarm(key: &Keypair, timeouts: &NetTimeouts) -> Result<Swarm<ScoutBehaviour>, String> {
    let (t1, t2) = (timeouts.clone(), timeouts.clone());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_wasm_bindgen()
        .with_other_transport(|key| {
            libp2p::webrtc_websys::Transport::new(libp2p::webrtc_websys::Config::new(key))
        })
        .map_err(|e| e.to_string())?
        .with_other_transport(move |key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                libp2p::websocket_websys::Transport::default()
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(net::yamux(&t1)),
            )
        })
        .map_err(|e| e.to_string())?
        .with_behaviour(|key| ScoutBehaviour::new(key, &t2).map_err(Into::into))
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(timeouts.idle_connection))
        .build();
    Ok(swarm)
}

struct Node {
    key: Keypair,
    swarm: Swarm<ScoutBehaviour>,
    oracle: PeerId,
    /// The oracle's addresses, best first.
    connect: Vec<Multiaddr>,
    model_cid: Vec<u8>,
    timeouts: NetTimeouts,
    max_sessions: usize,
    worker: Worker,
    state: Rc<RefCell<NodeState>>,
    /// The oracle accepted our handshake.
    ready: bool,
    /// The worker has the model loaded.
    loaded: bool,
    /// Claims asked of the oracle: request → work id.
    claims: HashMap<OutboundRequestId, Vec<u8>>,
    /// Sessions the worker holds.
    held: HashSet<u64>,
    /// Works the oracle granted whose session the worker has not confirmed.
    granted: HashSet<Vec<u8>>,
    /// Rounds of sessions the worker has not confirmed yet.
    waiting: Vec<(pb::DraftRequest, ResponseChannel<pb::WorkResult>)>,
    /// Rounds for the worker's next batch.
    to_draft: Vec<(pb::DraftRequest, ResponseChannel<pb::WorkResult>)>,
    /// The batch the worker drafts now: round id → where the answer goes.
    in_flight: HashMap<u64, ResponseChannel<pb::WorkResult>>,
    next_round_id: u64,
    replay: ReplayWindow<Vec<u8>>,
    /// The worker said it is ready: messages posted before that are lost.
    worker_ready: bool,
    /// Messages for the worker until it is ready.
    outbox: RefCell<Vec<ToWorker>>,
    /// Failed pings per connection: how a closed WebRTC connection is noticed.
    ping: PingPolicy,
}

impl Node {
    async fn run(
        mut self,
        stop: oneshot::Receiver<()>,
        mut from_worker: mpsc::Receiver<FromWorker>,
    ) {
        for topic in [WORK_TOPIC, TOPOLOGY_TOPIC] {
            let _ = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&IdentTopic::new(topic));
        }
        let mut backoff = Backoff::new(self.timeouts.retry_min, self.timeouts.retry_max);
        // Each failed dial moves to the next address; a full round of
        // failures waits (doubling) before starting over. Dialling starts
        // once the model is loaded: before that there is nothing to offer.
        let mut next_address = 0usize;
        let mut redial_at: Option<Instant> = None;
        let mut banned_until_ms = 0u64;
        let mut stop = stop.fuse();
        loop {
            if redial_at.is_some_and(|at| at <= Instant::now()) {
                redial_at = None;
                let addr = self.connect[next_address % self.connect.len()].clone();
                next_address += 1;
                self.update(|s| {
                    s.phase = Phase::Dialling;
                    s.transport = BrowserTransport::of(&addr).map(BrowserTransport::label);
                    s.address = Some(addr.to_string());
                    s.retry_at_ms = None;
                });
                log::info!("dialling the oracle at {addr}");
                if let Err(e) = self.swarm.dial(addr) {
                    self.update(|s| s.detail = Some(format!("dial failed: {e}")));
                    redial_at = Some(Instant::now());
                }
            }
            let wait = redial_at.map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(Instant::now())
            });
            let mut timer = futures_timer::Delay::new(wait).fuse();
            let mut maybe_lost = false;
            futures::select! {
                _ = stop => break,
                () = timer => continue,
                message = from_worker.select_next_some() => {
                    let was_loaded = self.loaded;
                    self.worker_message(message);
                    if self.loaded && !was_loaded {
                        redial_at = Some(Instant::now());
                    }
                    if self.state.borrow().phase == Phase::Failed {
                        break;
                    }
                }
                event = self.swarm.select_next_some() => {
                    if let Some(until) = self.event(event) {
                        banned_until_ms = banned_until_ms.max(until);
                    }
                    // Drain what else is ready, so rounds that arrived
                    // together go to the worker as one batch.
                    for _ in 0..64 {
                        match self.swarm.select_next_some().now_or_never() {
                            Some(event) => {
                                if let Some(until) = self.event(event) {
                                    banned_until_ms = banned_until_ms.max(until);
                                }
                            }
                            None => break,
                        }
                    }
                    maybe_lost = true;
                }
            }
            self.send_batch();
            let lost = maybe_lost
                && self.loaded
                && !self.swarm.is_connected(&self.oracle)
                && self
                    .swarm
                    .network_info()
                    .connection_counters()
                    .num_pending_outgoing()
                    == 0;
            if lost && redial_at.is_none() {
                self.lost_oracle();
                // Try the next address at once, unless every one failed this
                // round: then back off (and never before a ban ends).
                let delay = if !next_address.is_multiple_of(self.connect.len())
                    && banned_until_ms <= now_ms()
                {
                    Duration::ZERO
                } else {
                    let ban = Duration::from_millis(banned_until_ms.saturating_sub(now_ms()));
                    backoff.next_delay().max(ban)
                };
                if delay > Duration::ZERO {
                    next_address = 0;
                    let at = now_ms() + delay.as_millis() as u64;
                    self.update(|s| {
                        if !matches!(s.phase, Phase::Refused | Phase::Banned) {
                            s.phase = Phase::Unreachable;
                        }
                        s.retry_at_ms = Some(at);
                    });
                }
                redial_at = Some(Instant::now() + delay);
            }
            if self.ready {
                backoff.reset();
            }
        }
        self.shut_down().await;
    }

    /// Closes the connection (waiting for it to close) and the worker.
    async fn shut_down(mut self) {
        let stopped_by_page = self.state.borrow().phase != Phase::Failed;
        let oracle = self.oracle;
        let _ = self.swarm.disconnect_peer_id(oracle);
        self.worker.terminate();
        // Keep the swarm alive until the connection has closed: dropping it
        // earlier leaves the browser's data channels calling into freed
        // closures.
        let swarm = &mut self.swarm;
        let closed = async {
            while swarm.is_connected(&oracle) {
                if swarm.next().await.is_none() {
                    break;
                }
            }
        };
        futures::select! {
            () = closed.fuse() => {},
            () = futures_timer::Delay::new(Duration::from_secs(2)).fuse() => {},
        }
        if stopped_by_page {
            self.update(|s| {
                s.phase = Phase::Stopped;
                s.retry_at_ms = None;
            });
        }
    }

    fn update(&self, change: impl FnOnce(&mut NodeState)) {
        change(&mut self.state.borrow_mut());
    }

    fn post(&self, message: &ToWorker) {
        if !self.worker_ready {
            self.outbox.borrow_mut().push(message.clone());
            return;
        }
        match serde_json::to_string(message) {
            Ok(text) => {
                if let Err(e) = self.worker.post_message(&JsValue::from_str(&text)) {
                    log::error!("posting to the model worker failed: {e:?}");
                }
            }
            Err(e) => log::error!("encoding a worker message failed: {e}"),
        }
    }

    /// The connection to the oracle is gone: so are its sessions.
    fn lost_oracle(&mut self) {
        self.ready = false;
        self.claims.clear();
        self.held.clear();
        self.granted.clear();
        self.waiting.clear();
        self.to_draft.clear();
        self.post(&ToWorker::ReleaseAll);
    }

    fn worker_message(&mut self, message: FromWorker) {
        match message {
            FromWorker::Ready => {
                self.worker_ready = true;
                for message in self.outbox.take() {
                    self.post(&message);
                }
            }
            FromWorker::Probe { .. } => {}
            FromWorker::Progress {
                received,
                total,
                pieces,
                pieces_total,
                pieces_cached,
                pieces_refused,
            } => self.update(|s| {
                s.model.received = received;
                s.model.total = total;
                s.model.pieces = pieces;
                s.model.pieces_total = pieces_total;
                s.model.pieces_cached = pieces_cached;
                s.model.pieces_refused = pieces_refused;
            }),
            FromWorker::Backend {
                kind,
                adapter,
                fallback_reason,
            } => self.update(|s| {
                s.model.backend = Some(kind);
                s.model.adapter = adapter;
                s.model.fallback_reason = fallback_reason;
            }),
            FromWorker::Loaded {
                ms,
                source,
                cache_error,
            } => {
                log::info!("draft model loaded in {ms:.0} ms (from the {source:?})");
                self.loaded = true;
                self.update(|s| {
                    s.model.loaded = true;
                    s.model.load_ms = Some(ms);
                    s.model.source = Some(source);
                    s.model.cache_error = cache_error;
                });
            }
            FromWorker::Claimed {
                work_cid,
                session,
                error,
            } => {
                let work = hex::decode(&work_cid).unwrap_or_default();
                self.granted.remove(&work);
                if let Some(session) = session {
                    self.held.insert(session);
                } else {
                    log::info!("claim not taken: {}", error.unwrap_or_default());
                }
                // Rounds of that work go to the worker now, or nowhere.
                let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
                    .into_iter()
                    .partition(|(r, _)| r.work_cid == work);
                self.waiting = rest;
                self.to_draft.extend(
                    ready
                        .into_iter()
                        .filter(|(r, _)| self.held.contains(&r.session_id)),
                );
            }
            FromWorker::Answers {
                answers,
                released,
                stats,
            } => {
                let mut drafted_any = false;
                for answer in answers {
                    let Some(channel) = self.in_flight.remove(&answer.id) else {
                        continue;
                    };
                    let result = answer
                        .result
                        .and_then(|text| hex::decode(text).ok())
                        .and_then(|bytes| frame::decode::<pb::WorkResult>(&bytes).ok());
                    match result {
                        Some(result) => {
                            drafted_any = true;
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .verify
                                .send_response(channel, result);
                        }
                        // Dropping the channel tells the oracle: no drafts.
                        None => {
                            log::debug!("round not drafted: {}", answer.error.unwrap_or_default())
                        }
                    }
                }
                for session in released {
                    self.held.remove(&session);
                }
                self.update(|s| {
                    s.stats = stats;
                    if drafted_any && s.first_draft_at_ms.is_none() {
                        s.first_draft_at_ms = Some(now_ms());
                    }
                });
            }
            FromWorker::Error { kind, message } => {
                log::error!("model worker: {kind}: {message}");
                let fatal = !self.loaded || kind == "worker";
                self.update(|s| {
                    s.model.error_kind = Some(kind);
                    s.model.error = Some(message.clone());
                    if fatal {
                        s.phase = Phase::Failed;
                        s.detail = Some(message);
                    }
                });
            }
        }
    }

    /// Sends the rounds waiting for the worker as one batch, unless it is
    /// drafting the previous one.
    fn send_batch(&mut self) {
        if !self.in_flight.is_empty() || self.to_draft.is_empty() {
            return;
        }
        let mut rounds = Vec::with_capacity(self.to_draft.len());
        for (request, channel) in std::mem::take(&mut self.to_draft) {
            let Ok(bytes) = frame::encode(&request) else {
                continue;
            };
            let id = self.next_round_id;
            self.next_round_id += 1;
            self.in_flight.insert(id, channel);
            rounds.push(RoundRequest {
                id,
                request: hex::encode(bytes),
            });
        }
        if !rounds.is_empty() {
            self.post(&ToWorker::Rounds { rounds });
        }
    }

    /// Handles one event; returns the end of a ban when the oracle refused us
    /// for one.
    fn event(&mut self, event: SwarmEvent<ScoutBehaviourEvent>) -> Option<u64> {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if peer_id == self.oracle => {
                let addr = endpoint.get_remote_address().clone();
                log::info!("connected to the oracle at {addr}; sending our handshake");
                self.update(|s| {
                    s.phase = Phase::Connected;
                    s.transport = BrowserTransport::of(&addr).map(BrowserTransport::label);
                    s.address = Some(addr.to_string());
                    s.connections += 1;
                    s.detail = None;
                });
                let hardware = {
                    let s = self.state.borrow();
                    pb::HardwareInfo {
                        webgpu_enabled: s.model.backend == Some(BackendKind::Webgpu),
                        gpu_model: s
                            .model
                            .adapter
                            .clone()
                            .unwrap_or_default()
                            .chars()
                            .take(64)
                            .collect(),
                        cpu_cores: hardware_concurrency(),
                        ..Default::default()
                    }
                };
                let hello = net::handshake_message(
                    &self.key,
                    pb::NodeType::Scout,
                    &[VERIFY_PROTOCOL, CLAIM_PROTOCOL],
                    Some(hardware),
                    vec![self.model_cid.clone()],
                    None,
                );
                self.swarm
                    .behaviour_mut()
                    .handshake
                    .send_request(&peer_id, hello);
                None
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                log::warn!("cannot reach the oracle: {error}");
                self.update(|s| s.detail = Some(error.to_string()));
                None
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } if peer_id == self.oracle => {
                self.ping.closed(connection_id);
                if let Some(cause) = cause {
                    self.update(|s| s.detail = Some(format!("connection closed: {cause}")));
                }
                None
            }
            SwarmEvent::Behaviour(event) => self.behaviour(event),
            _ => None,
        }
    }

    fn behaviour(&mut self, event: ScoutBehaviourEvent) -> Option<u64> {
        match event {
            ScoutBehaviourEvent::Handshake(request_response::Event::Message {
                peer,
                message: request_response::Message::Response { response, .. },
                ..
            }) => return self.handshake_reply(peer, response),
            ScoutBehaviourEvent::Handshake(request_response::Event::OutboundFailure {
                peer,
                error,
                ..
            }) => {
                log::warn!("handshake with {peer} failed: {error}");
                self.update(|s| s.detail = Some(format!("handshake failed: {error}")));
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            ScoutBehaviourEvent::Claim(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => {
                if let Some(work) = self.claims.remove(&request_id) {
                    let granted = response.ack.as_ref().is_some_and(|a| a.ok);
                    match frame::encode(&response) {
                        Ok(bytes) if granted => {
                            self.granted.insert(work.clone());
                            self.post(&ToWorker::Claimed {
                                work_cid: hex::encode(&work),
                                response: hex::encode(bytes),
                            });
                        }
                        _ => self.waiting.retain(|(r, _)| r.work_cid != work),
                    }
                }
            }
            ScoutBehaviourEvent::Claim(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some(work) = self.claims.remove(&request_id) {
                    self.waiting.retain(|(r, _)| r.work_cid != work);
                }
                log::debug!("claim failed: {error}");
            }
            ScoutBehaviourEvent::Verify(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => self.round_request(peer, request, channel),
            ScoutBehaviourEvent::Ping(ping::Event {
                connection, result, ..
            }) => {
                let max = self.timeouts.ping_max_failures;
                if self.ping.record(connection, result.is_ok(), max) {
                    log::warn!("the oracle stopped answering pings: closing the connection");
                    self.swarm.close_connection(connection);
                }
            }
            ScoutBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = self.gossip(&message);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            _ => {}
        }
        None
    }

    /// A round from the oracle: to the worker's next batch when the worker
    /// holds its session, held back while its claim is on the way,
    /// dropped (unanswered) otherwise.
    fn round_request(
        &mut self,
        peer: PeerId,
        request: pb::DraftRequest,
        channel: ResponseChannel<pb::WorkResult>,
    ) {
        if peer != self.oracle || !self.ready {
            return;
        }
        if self.held.contains(&request.session_id) {
            self.to_draft.push((request, channel));
        } else if self.granted.contains(&request.work_cid)
            || self.claims.values().any(|w| *w == request.work_cid)
        {
            self.waiting.push((request, channel));
        }
    }

    /// Checks a gossip message and claims work that suits us.
    fn gossip(&mut self, message: &gossipsub::Message) -> MessageAcceptance {
        if message.topic != IdentTopic::new(WORK_TOPIC).hash() {
            return net::relay_verdict(&message.data);
        }
        let assignment = match net::check_work_gossip(
            &message.data,
            now_ms(),
            self.timeouts.max_clock_skew,
            &mut self.replay,
        ) {
            Ok(a) => a,
            Err(verdict) => return verdict,
        };
        let busy = self.claims.len() + self.granted.len() + self.held.len();
        if message.source == Some(self.oracle)
            && self.ready
            && self.loaded
            && assignment.model_cid == self.model_cid
            && busy < self.max_sessions
        {
            let id = self
                .swarm
                .behaviour_mut()
                .claim
                .send_request(&self.oracle, net::claim_request(&assignment));
            self.claims.insert(id, assignment.prompt_cid);
        }
        MessageAcceptance::Accept
    }

    fn handshake_reply(&mut self, peer: PeerId, reply: pb::HandshakeReply) -> Option<u64> {
        let verdict = net::handshake_verdict(&peer, reply);
        log::info!("handshake with {peer}: {verdict:?}");
        let mut ban = None;
        match verdict {
            HandshakeVerdict::Accepted => {
                self.ready = true;
                self.update(|s| {
                    s.phase = Phase::Ready;
                    s.detail = None;
                    s.banned_until_ms = None;
                });
                return None;
            }
            HandshakeVerdict::NotAnOracle(_) => self.update(|s| {
                s.phase = Phase::Refused;
                s.detail = Some("the peer is not an oracle".into());
            }),
            HandshakeVerdict::Invalid(e) => self.update(|s| {
                s.phase = Phase::Refused;
                s.detail = Some(format!("the oracle's handshake is bad: {e}"));
            }),
            HandshakeVerdict::Refused {
                detail,
                banned_until_ms,
            } => {
                ban = banned_until_ms;
                self.update(|s| {
                    s.phase = if banned_until_ms.is_some() {
                        Phase::Banned
                    } else {
                        Phase::Refused
                    };
                    s.detail = Some(detail);
                    s.banned_until_ms = banned_until_ms;
                });
            }
        }
        let _ = self.swarm.disconnect_peer_id(peer);
        ban
    }
}
