//! The event loop around the oracle's swarm.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, Transport, identify, kad, mdns, noise, ping, tcp};
use scout_wasm::net::{self, Backoff, NetTimeouts, PingPolicy};
use scout_wasm::wire::params_to_wire;
use serde::Serialize;
use shared_proto::protocol::{
    CLAIM_PROTOCOL, COMPLETE_PROTOCOL, HANDSHAKE_PROTOCOL, TOPOLOGY_TOPIC, VERIFY_PROTOCOL,
    WEIGHTS_PROTOCOL, WORK_RESULT_TOPIC, WORK_TOPIC,
};
use shared_proto::{PublicKey, ReplayWindow, Signed, Validate, check_fresh, frame, pb};
use thiserror::Error;
use tokio::sync::mpsc;

use super::behaviour::{OracleBehaviour, OracleBehaviourEvent};
use super::golden::{GoldenRun, Step, Ticket, TicketBook};
use super::identity::{self, IdentityError};
use super::results;
use super::topology::{NetworkNode, TopologyBook, role_name};
use super::webrtc::{self, BrowserGate};
use super::weights::{Offered, Reply, ResponseBudget};
use crate::engine::{ClaimGrant, EngineHandle, ToNetwork};
use crate::metrics::Metrics;
use crate::scheduler::SessionId;
use crate::trust::{Ledger, RateLimiter};

use super::leech::{self, Completions};

/// The network's settings.
#[derive(Clone)]
pub struct NetConfig {
    /// Addresses to listen on (TCP, QUIC, `/webrtc-direct`, `/ws`).
    pub listen: Vec<Multiaddr>,
    /// Peers to join the network through, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Every timeout and stream limit.
    pub timeouts: NetTimeouts,
    /// Where the key and certificate live.
    pub data_dir: PathBuf,
    /// Connections at once.
    pub max_connections: u32,
    /// Content id of the draft model scouts must hold.
    pub scout_model_cid: Vec<u8>,
    /// The model files served on `/shard/1.0.0/weights` and announced in the
    /// DHT (the scout model first).
    pub offered: Offered,
    /// Seconds a work announcement stays valid.
    pub work_ttl_s: u32,
    /// How often a golden ticket is slipped to the scouts.
    pub golden_interval: Duration,
    /// Reputation, credits and bans.
    pub ledger: Arc<Ledger>,
    /// Our certificate from the network key, if we have one: results are
    /// published only with it.
    pub certificate: Option<pb::OracleCertificate>,
    /// The network key whose certificates we accept on results.
    pub network_key: Option<PublicKey>,
    /// The model's tokenizer, for leeches' prompts.
    pub tokenizer: Arc<shared_model::tokenizer::Tokenizer>,
    /// Longest prompt + answer of a leech's completion.
    pub max_context: usize,
}

/// How long after a peer joins or leaves the next topology report goes out.
const TOPOLOGY_SETTLE: Duration = Duration::from_secs(2);
/// Topology reports are at least this far apart.
const TOPOLOGY_MIN_GAP: Duration = Duration::from_secs(10);
/// How often the snapshot's topology (report ages) is refreshed when quiet.
const TOPOLOGY_VIEW_REFRESH: Duration = Duration::from_secs(5);
/// Bytes of piece responses one peer may have waiting (four of the largest).
const WEIGHTS_BYTES_PER_PEER: u64 = 64 << 20;
/// Bytes of piece responses all peers together may have waiting.
const WEIGHTS_BYTES_TOTAL: u64 = 512 << 20;
/// How long a refused peer keeps its connection, so the refusal reaches it:
/// "sent" means written, and closing a WebRTC connection at once drops what
/// is still on the way (a banned tab then never learned why, and dialled on).
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// A peer as `/api/peers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    /// Its peer id.
    pub peer_id: String,
    /// `oracle`, `scout`, `leech`, or `unknown` before its handshake.
    pub role: &'static str,
    /// The address of its connection.
    pub address: String,
    /// Its agent string from identify.
    pub agent: Option<String>,
}

/// What the node looks like now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetStatus {
    /// Our peer id.
    pub peer_id: String,
    /// Every address we listen on, each ending in `/p2p/<peer id>`; the
    /// webrtc-direct one carries its `/certhash`.
    pub listen_addrs: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerView>,
    /// The nodes other oracles report on `shard-topology` (this one left out).
    pub network: Vec<NetworkNode>,
}

/// A shared, read-mostly snapshot of the node.
pub type NetView = Arc<RwLock<NetStatus>>;

/// Why the node did not start.
#[derive(Debug, Error)]
pub enum NetError {
    /// The key or certificate could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The swarm could not be built.
    #[error("cannot build the libp2p node: {0}")]
    Build(String),
    /// An address cannot be listened on.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A bootstrap address has no peer id.
    #[error("bootstrap address {0} does not end in /p2p/<peer id>")]
    Bootstrap(Multiaddr),
}

/// Starts the node on the current tokio runtime.
pub fn start(
    config: NetConfig,
    engine: EngineHandle,
    from_engine: mpsc::Receiver<ToNetwork>,
    metrics: Arc<Metrics>,
    view: NetView,
) -> Result<tokio::task::JoinHandle<()>, NetError> {
    scout_wasm::native::install_crypto_provider();
    let key = identity::load_or_create_key(&config.data_dir)?;
    let cert = identity::load_or_create_certificate(&config.data_dir)?;
    let mut swarm = build_swarm(&key, cert, &config)?;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    let mut bootstrap = Vec::new();
    for addr in &config.bootstrap {
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                bootstrap.push((peer, addr.clone()));
            }
            _ => return Err(NetError::Bootstrap(addr.clone())),
        }
    }
    for topic in [WORK_TOPIC, WORK_RESULT_TOPIC, TOPOLOGY_TOPIC] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(topic))
            .map_err(|e| NetError::Build(e.to_string()))?;
    }
    for cid in config.offered.cids() {
        provide(&mut swarm, cid);
    }
    let peer_id = key.public().to_peer_id();
    if let Ok(mut v) = view.write() {
        v.peer_id = peer_id.to_string();
    }
    tracing::info!(%peer_id, "p2p node started");
    let backoff = Backoff::new(config.timeouts.retry_min, config.timeouts.retry_max);
    let completions = Completions {
        engine: engine.clone(),
        tokenizer: config.tokenizer.clone(),
        max_context: config.max_context,
        ledger: config.ledger.clone(),
    };
    let node = Node {
        completions,
        completions_done: mpsc::channel(256),
        weights_done: mpsc::channel(64),
        key,
        peer_id,
        swarm,
        config,
        engine,
        metrics,
        view,
        peers: HashMap::new(),
        refused: HashMap::new(),
        work: HashMap::new(),
        rounds: HashMap::new(),
        replay: ReplayWindow::new(16_384),
        ping: PingPolicy::default(),
        listen_addrs: Vec::new(),
        bootstrap,
        bootstrap_backoff: backoff,
        next_bootstrap: Some(Instant::now()),
        next_topology: Instant::now() + Duration::from_secs(2),
        last_topology: Instant::now(),
        topology: TopologyBook::default(),
        topology_dirty: false,
        next_topology_view: Instant::now(),
        claims_done: mpsc::channel(256),
        tickets: TicketBook::new(64),
        golden_work: HashMap::new(),
        golden: HashMap::new(),
        golden_rounds: HashMap::new(),
        golden_ids: 0,
        next_golden: Instant::now() + Duration::from_secs(1),
        peer_limits: RateLimiter::new(60, 20, 65_536),
        ip_limits: RateLimiter::new(120, 40, 65_536),
        gossip_limits: RateLimiter::new(60_000, 1_000, 65_536),
        // Against floods only: a fast downloader asks for a few hundred
        // pieces a second at most.
        weights_limits: RateLimiter::new(120_000, 2_000, 65_536),
        weights_budget: ResponseBudget::new(WEIGHTS_BYTES_PER_PEER, WEIGHTS_BYTES_TOTAL),
        credits: HashMap::new(),
    };
    Ok(tokio::spawn(node.run(from_engine)))
}

fn build_swarm(
    key: &libp2p::identity::Keypair,
    cert: libp2p_webrtc::tokio::Certificate,
    config: &NetConfig,
) -> Result<Swarm<OracleBehaviour>, NetError> {
    let err = |e: &dyn std::fmt::Display| NetError::Build(e.to_string());
    let t = config.timeouts.clone();
    let (t1, t2) = (t.clone(), t.clone());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            move || net::yamux(&t1),
        )
        .map_err(|e| err(&e))?
        .with_quic()
        .with_other_transport(|key| {
            Ok(libp2p_webrtc::tokio::Transport::new(key.clone(), cert).map(
                |(peer, conn), endpoint| {
                    let conn = if endpoint.is_listener() {
                        BrowserGate::gated(conn, webrtc::OUTBOUND_GRACE)
                    } else {
                        BrowserGate::open(conn)
                    };
                    (peer, StreamMuxerBox::new(conn))
                },
            ))
        })
        .map_err(|e| err(&e))?
        .with_dns()
        .map_err(|e| err(&e))?;
    let swarm = futures::executor::block_on(
        swarm.with_websocket(noise::Config::new, move || net::yamux(&t2)),
    )
    .map_err(|e| err(&e))?
    .with_behaviour(|key| {
        OracleBehaviour::new(key, &t, config.max_connections, config.mdns).map_err(Into::into)
    })
    .map_err(|e| err(&e))?
    .with_swarm_config(|c| c.with_idle_connection_timeout(t.idle_connection))
    .build();
    Ok(swarm)
}

/// Announces in the DHT that we serve the model `cid` (libp2p republishes
/// it every [`super::behaviour::PROVIDER_REPUBLISH`]).
fn provide(swarm: &mut Swarm<OracleBehaviour>, cid: &[u8]) {
    if let Err(e) = swarm
        .behaviour_mut()
        .kad
        .start_providing(kad::RecordKey::new(&cid))
    {
        tracing::warn!(error = %e, "cannot announce a model in the DHT");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Peer {
    role: Option<pb::NodeType>,
    key: Option<PublicKey>,
    models: Vec<Vec<u8>>,
    address: Multiaddr,
    agent: Option<String>,
    connected_at: Instant,
}

struct Work {
    id: SessionId,
    expires: Instant,
}

struct Round {
    id: SessionId,
    scout: PeerId,
    work_cid: Vec<u8>,
    round: u32,
    k: usize,
}

type ClaimDone = (ResponseChannel<pb::ClaimResponse>, pb::ClaimResponse);
type WeightsDone = (
    InboundRequestId,
    ResponseChannel<pb::WeightsResponse>,
    pb::WeightsResponse,
);
type CompletionDone = (
    ResponseChannel<pb::CompletionResponse>,
    pb::CompletionResponse,
);

struct Node {
    key: libp2p::identity::Keypair,
    peer_id: PeerId,
    swarm: Swarm<OracleBehaviour>,
    config: NetConfig,
    engine: EngineHandle,
    metrics: Arc<Metrics>,
    view: NetView,
    peers: HashMap<PeerId, Peer>,
    /// Peers whose handshake was refused, and when: closed [`REFUSAL_GRACE`]
    /// later (a refused peer normally hangs up itself once it has read why).
    refused: HashMap<PeerId, Instant>,
    /// Announced work by work id.
    work: HashMap<Vec<u8>, Work>,
    rounds: HashMap<OutboundRequestId, Round>,
    replay: ReplayWindow<Vec<u8>>,
    ping: PingPolicy,
    listen_addrs: Vec<Multiaddr>,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    bootstrap_backoff: Backoff,
    next_bootstrap: Option<Instant>,
    next_topology: Instant,
    /// When our last topology report went out.
    last_topology: Instant,
    /// What other oracles report on `shard-topology`.
    topology: TopologyBook,
    /// A report came in since the snapshot was last made.
    topology_dirty: bool,
    next_topology_view: Instant,
    claims_done: (mpsc::Sender<ClaimDone>, mpsc::Receiver<ClaimDone>),
    /// Leeches' completions.
    completions: Completions,
    completions_done: (mpsc::Sender<CompletionDone>, mpsc::Receiver<CompletionDone>),
    /// Pieces read from disk, to send.
    weights_done: (mpsc::Sender<WeightsDone>, mpsc::Receiver<WeightsDone>),
    tickets: TicketBook,
    /// Announced golden tickets: who claimed each already.
    golden_work: HashMap<Vec<u8>, (Ticket, Instant, HashSet<PeerId>)>,
    /// Ticket runs by session id.
    golden: HashMap<u64, (PeerId, GoldenRun)>,
    golden_rounds: HashMap<OutboundRequestId, u64>,
    golden_ids: u64,
    next_golden: Instant,
    peer_limits: RateLimiter<PeerId>,
    ip_limits: RateLimiter<std::net::IpAddr>,
    gossip_limits: RateLimiter<PeerId>,
    /// Weights requests (a piece is a disk read): per peer.
    weights_limits: RateLimiter<PeerId>,
    /// Bytes of piece responses not yet sent.
    weights_budget: ResponseBudget<InboundRequestId>,
    /// Credits not yet written to the ledger.
    credits: HashMap<PeerId, u64>,
}

/// Session ids of golden-ticket runs: a range engine sessions never reach.
const GOLDEN_SESSION_BASE: u64 = 1 << 62;

impl Node {
    async fn run(mut self, mut from_engine: mpsc::Receiver<ToNetwork>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.event(event),
                request = from_engine.recv() => match request {
                    Some(request) => self.engine_request(request),
                    None => break,
                },
                Some((channel, response)) = self.claims_done.1.recv() => {
                    let _ = self.swarm.behaviour_mut().claim.send_response(channel, response);
                }
                Some((channel, response)) = self.completions_done.1.recv() => {
                    let _ = self.swarm.behaviour_mut().complete.send_response(channel, response);
                }
                Some((id, channel, response)) = self.weights_done.1.recv() => {
                    let piece = matches!(response.answer, Some(pb::weights_response::Answer::Piece(_)));
                    match self.swarm.behaviour_mut().weights.send_response(channel, response) {
                        // Its bytes are freed when it is sent (or fails).
                        Ok(()) if piece => {
                            self.metrics.pieces_served_p2p.inc();
                        }
                        Ok(()) => {}
                        Err(_) => self.weights_budget.release(&id),
                    }
                }
                _ = tick.tick() => self.tick(),
            }
        }
        tracing::info!("p2p node stopped");
    }

    fn tick(&mut self) {
        let now = Instant::now();
        // Peers that never finished a handshake are closed.
        let late: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.role.is_none() && now - p.connected_at > self.config.timeouts.handshake
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in late {
            tracing::info!(%peer, "no handshake in time: closing");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let refused: Vec<PeerId> = self
            .refused
            .iter()
            .filter(|(_, at)| now - **at >= REFUSAL_GRACE)
            .map(|(id, _)| *id)
            .collect();
        for peer in refused {
            self.refused.remove(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.work.retain(|_, w| w.expires > now);
        if self.next_bootstrap.is_some_and(|at| at <= now) {
            self.next_bootstrap = None;
            if !self.bootstrap.is_empty() {
                for (_, addr) in &self.bootstrap {
                    let _ = self.swarm.dial(addr.clone());
                }
                match self.swarm.behaviour_mut().kad.bootstrap() {
                    Ok(_) => tracing::debug!("kademlia bootstrap started"),
                    Err(e) => {
                        let delay = self.bootstrap_backoff.next_delay();
                        tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "bootstrap failed");
                        self.next_bootstrap = Some(now + delay);
                    }
                }
            }
        }
        if now >= self.next_topology {
            self.next_topology = now + self.config.timeouts.topology_interval;
            self.last_topology = now;
            self.publish_topology();
        }
        // The snapshot's report ages go stale too: refresh it now and then.
        let expired = self.topology.expire(now_ms());
        let ages_due = !self.topology.is_empty() && now >= self.next_topology_view;
        if self.topology_dirty || expired || ages_due {
            self.topology_dirty = false;
            self.next_topology_view = now + TOPOLOGY_VIEW_REFRESH;
            self.update_view();
        }
        self.golden_work.retain(|_, (_, expires, _)| *expires > now);
        if now >= self.next_golden {
            self.next_golden = now + self.config.golden_interval;
            self.announce_golden();
        }
        self.flush_credits();
    }

    /// Writes the credits earned since the last flush (one transaction per scout).
    fn flush_credits(&mut self) {
        for (peer, tokens) in std::mem::take(&mut self.credits) {
            if let Err(e) = self
                .config
                .ledger
                .update(&peer, |r, _| r.credits = r.credits.saturating_add(tokens))
            {
                tracing::error!(error = %e, "cannot record credits");
            }
        }
    }

    /// Publishes a finished session's output on `shard-work-result`, when
    /// this oracle holds a certificate.
    fn publish_result(&mut self, id: SessionId, prompt: &[u32], output: Vec<u32>) {
        let Some(cert) = self.config.certificate.clone() else {
            return;
        };
        let mut seed = self.peer_id.to_bytes();
        seed.extend_from_slice(&id.to_le_bytes());
        seed.extend_from_slice(&now_ms().to_le_bytes());
        for t in prompt {
            seed.extend_from_slice(&t.to_le_bytes());
        }
        let work_cid = shared_proto::ContentId::digest(&seed).to_bytes();
        match results::sign_result(&self.key, &cert, work_cid, output, now_ms()) {
            Ok(broadcast) => {
                self.publish(WORK_RESULT_TOPIC, &broadcast);
                self.metrics.results_published.inc();
            }
            Err(e) => tracing::warn!(error = %e, "cannot sign a result"),
        }
    }

    /// Offers a golden ticket as ordinary work, when there are scouts.
    fn announce_golden(&mut self) {
        let scouts = self
            .peers
            .values()
            .any(|p| p.role == Some(pb::NodeType::Scout));
        let Some(ticket) = scouts.then(|| self.tickets.pick()).flatten() else {
            return;
        };
        self.golden_ids += 1;
        let mut seed = b"golden".to_vec();
        seed.extend_from_slice(&self.golden_ids.to_le_bytes());
        seed.extend_from_slice(&now_ms().to_le_bytes());
        seed.extend_from_slice(&self.peer_id.to_bytes());
        let work_cid = shared_proto::ContentId::digest(&seed).to_bytes();
        let ttl = self.config.work_ttl_s;
        let message = pb::GossipWorkMessage {
            assignment: Some(pb::WorkAssignment {
                prompt_cid: work_cid.clone(),
                max_tokens: ticket.known.len().min(4096) as i32,
                priority: 5,
                model_cid: self.config.scout_model_cid.clone(),
                timeout_ms: i64::from(ttl) * 1000,
                node_type: pb::NodeType::Scout as i32,
                draft_k: 4,
                sampling: Some(params_to_wire(
                    &shared_model::sampling::SamplingParams::GREEDY,
                )),
            }),
            prior_work_ids: Vec::new(),
            ttl,
            issued_at_ms: now_ms(),
        };
        self.golden_work.insert(
            work_cid,
            (
                ticket,
                Instant::now() + Duration::from_secs(u64::from(ttl)),
                HashSet::new(),
            ),
        );
        self.publish(WORK_TOPIC, &message);
    }

    /// Sends the next round of a golden run, or scores it.
    fn golden_step(&mut self, session: u64, step: Step) {
        match step {
            Step::Next(request) => {
                let Some((peer, _)) = self.golden.get(&session) else {
                    return;
                };
                let peer = *peer;
                let id = self
                    .swarm
                    .behaviour_mut()
                    .verify
                    .send_request(&peer, request);
                self.golden_rounds.insert(id, session);
            }
            Step::Done { passed } => {
                if let Some((peer, run)) = self.golden.remove(&session) {
                    tracing::info!(%peer, passed, summary = %run.summary(), "golden ticket scored");
                    self.check(peer, passed);
                }
            }
        }
    }

    /// Records a check of `peer` in the ledger; bans when it must.
    fn check(&mut self, peer: PeerId, passed: bool) {
        let now = now_ms();
        let mut banned = None;
        let result = self.config.ledger.update(&peer, |r, policy| {
            banned = r.checked(passed, policy, now);
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot record a check");
        }
        if let Some(until) = banned {
            // Its other runs end unscored: one ban per offence.
            self.golden.retain(|_, (p, _)| *p != peer);
            self.metrics.bans.inc();
            tracing::warn!(%peer, banned_for_s = until.saturating_sub(now) / 1000, "scout banned");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Takes a token from the peer's and its IP's buckets.
    fn rate_ok(&mut self, peer: &PeerId) -> bool {
        let now = now_ms();
        let ip = self.peers.get(peer).and_then(|p| ip_of(&p.address));
        let peer_ok = self.peer_limits.allow(peer, now);
        let ip_ok = ip.is_none_or(|ip| self.ip_limits.allow(&ip, now));
        peer_ok && ip_ok
    }

    /// A scout or an oracle joined or left: tell the network within a few
    /// seconds instead of at the next periodic report. Changes close together
    /// share one report, and reports stay [`TOPOLOGY_MIN_GAP`] apart however
    /// busy the door is.
    fn topology_changed(&mut self, role: Option<pb::NodeType>) {
        if !matches!(role, Some(pb::NodeType::Scout | pb::NodeType::Oracle)) {
            return;
        }
        let now = Instant::now();
        let soon = (now + TOPOLOGY_SETTLE).max(self.last_topology + TOPOLOGY_MIN_GAP);
        self.next_topology = self.next_topology.min(soon);
    }

    fn publish_topology(&mut self) {
        let me = pb::NodeInfo {
            peer_id: self.peer_id.to_bytes(),
            node_type: pb::NodeType::Oracle as i32,
            supported_protocols: [
                HANDSHAKE_PROTOCOL,
                CLAIM_PROTOCOL,
                VERIFY_PROTOCOL,
                COMPLETE_PROTOCOL,
                WEIGHTS_PROTOCOL,
            ]
            .iter()
            .map(|p| p.to_string())
            .collect(),
            hardware_info: Some(net::local_hardware()),
            model_cids: self.model_cids(),
        };
        let mut nodes = vec![me];
        for (id, peer) in self.peers.iter().take(1000) {
            if let Some(role) = peer.role {
                nodes.push(pb::NodeInfo {
                    peer_id: id.to_bytes(),
                    node_type: role as i32,
                    supported_protocols: Vec::new(),
                    hardware_info: None,
                    model_cids: peer.models.iter().take(16).cloned().collect(),
                });
            }
        }
        let message = pb::TopologyMessage {
            nodes,
            timestamp: (now_ms() / 1000) as u32,
            listen_addrs: self
                .listen_addrs
                .iter()
                .map(|a| pb::AddressInfo {
                    peer_id: self.peer_id.to_bytes(),
                    multiaddr: a.to_string(),
                })
                .collect(),
        };
        self.publish(TOPOLOGY_TOPIC, &message);
    }

    fn publish<T: shared_proto::WireMessage>(&mut self, topic: &str, message: &T) {
        match frame::encode(message) {
            Ok(bytes) => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic), bytes)
                {
                    // No subscriber yet is the common case; not an error.
                    tracing::trace!(topic, error = %e, "not published");
                }
            }
            Err(e) => tracing::warn!(topic, error = %e, "cannot encode a gossip message"),
        }
    }

    fn update_view(&self) {
        let scouts = self
            .peers
            .values()
            .filter(|p| p.role == Some(pb::NodeType::Scout))
            .count();
        self.metrics.scouts_connected.set(scouts as i64);
        if let Ok(mut v) = self.view.write() {
            v.listen_addrs = self.listen_addrs.iter().map(|a| a.to_string()).collect();
            v.peers = self
                .peers
                .iter()
                .map(|(id, p)| PeerView {
                    peer_id: id.to_string(),
                    role: p.role.map_or("unknown", |r| role_name(r as i32)),
                    address: p.address.to_string(),
                    agent: p.agent.clone(),
                })
                .collect();
            v.peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
            v.network = self.topology.nodes(now_ms(), &self.peer_id);
        }
    }

    fn engine_request(&mut self, request: ToNetwork) {
        match request {
            ToNetwork::Announce {
                id,
                work_cid,
                max_tokens,
                params,
                k,
            } => {
                let ttl = self.config.work_ttl_s;
                self.work.insert(
                    work_cid.clone(),
                    Work {
                        id,
                        expires: Instant::now() + Duration::from_secs(u64::from(ttl)),
                    },
                );
                let message = pb::GossipWorkMessage {
                    assignment: Some(pb::WorkAssignment {
                        prompt_cid: work_cid,
                        max_tokens: i32::try_from(max_tokens)
                            .unwrap_or(i32::MAX)
                            .clamp(1, shared_proto::limits::MAX_NEW_TOKENS),
                        priority: 5,
                        model_cid: self.config.scout_model_cid.clone(),
                        timeout_ms: i64::from(ttl) * 1000,
                        node_type: pb::NodeType::Scout as i32,
                        draft_k: k.clamp(1, 16) as u32,
                        sampling: Some(params_to_wire(&params)),
                    }),
                    prior_work_ids: Vec::new(),
                    ttl,
                    issued_at_ms: now_ms(),
                };
                self.publish(WORK_TOPIC, &message);
            }
            ToNetwork::Round {
                id,
                scout,
                work_cid,
                round,
                accepted,
                context_len,
                k,
                deadline,
            } => {
                let request = pb::DraftRequest {
                    work_cid: work_cid.clone(),
                    session_id: id,
                    round,
                    accepted_tokens: accepted,
                    context_len: context_len as u32,
                    draft_k: k.clamp(1, 16) as u32,
                    deadline_ms: deadline.as_millis().clamp(1, 60_000) as u32,
                };
                if !self.swarm.is_connected(&scout) || request.validate().is_err() {
                    self.engine.remote_drafts(id, round, None);
                    return;
                }
                let request_id = self
                    .swarm
                    .behaviour_mut()
                    .verify
                    .send_request(&scout, request);
                self.rounds.insert(
                    request_id,
                    Round {
                        id,
                        scout,
                        work_cid,
                        round,
                        k,
                    },
                );
            }
            ToNetwork::Ended {
                id,
                finished,
                golden,
            } => {
                self.work.retain(|_, w| w.id != id);
                if let Some((prompt, output)) = finished {
                    self.publish_result(id, &prompt, output.clone());
                    if let Some(top) = golden {
                        self.tickets.add(prompt, output, top);
                    }
                }
            }
            ToNetwork::Spend { payer, tokens } => {
                // Credits earned and not yet written count first.
                self.flush_credits();
                if let Err(e) = self.config.ledger.update(&payer, |r, _| {
                    r.credits = r.credits.saturating_sub(tokens);
                }) {
                    tracing::error!(error = %e, "cannot spend credits");
                }
            }
            ToNetwork::Credit { scout, tokens } => {
                *self.credits.entry(scout).or_insert(0) += tokens;
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<OracleBehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with_p2p(self.peer_id).unwrap_or_else(|a| a);
                tracing::info!(address = %full, "listening (p2p)");
                println!("p2p listening on {full}");
                self.listen_addrs.push(full);
                self.update_view();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let full = address.with_p2p(self.peer_id).unwrap_or_else(|a| a);
                self.listen_addrs.retain(|a| *a != full);
                self.update_view();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if num_established.get() == 1 {
                    self.peers.insert(
                        peer_id,
                        Peer {
                            role: None,
                            key: None,
                            models: Vec::new(),
                            address: endpoint.get_remote_address().clone(),
                            agent: None,
                            connected_at: Instant::now(),
                        },
                    );
                }
                // A banned peer is refused at its handshake, with the end of
                // its ban (so a well-behaved scout waits it out), and closed;
                // one that never handshakes is closed by the handshake timeout.
                if endpoint.is_dialer() {
                    // We dialled (a bootstrap oracle): we send the handshake.
                    let hello = self.our_handshake();
                    self.swarm
                        .behaviour_mut()
                        .handshake
                        .send_request(&peer_id, hello);
                }
                self.update_view();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.ping.closed(connection_id);
                if num_established == 0 {
                    self.refused.remove(&peer_id);
                    if let Some(peer) = self.peers.remove(&peer_id) {
                        if peer.role == Some(pb::NodeType::Scout) {
                            self.engine.scout_gone(peer_id);
                        }
                        self.topology_changed(peer.role);
                    }
                    self.update_view();
                }
            }
            SwarmEvent::Behaviour(event) => self.behaviour(event),
            _ => {}
        }
    }

    fn our_handshake(&self) -> pb::HandshakeMessage {
        net::handshake_message(
            &self.key,
            pb::NodeType::Oracle,
            &[
                HANDSHAKE_PROTOCOL,
                CLAIM_PROTOCOL,
                VERIFY_PROTOCOL,
                COMPLETE_PROTOCOL,
                WEIGHTS_PROTOCOL,
            ],
            Some(net::local_hardware()),
            self.model_cids(),
            self.config.certificate.clone(),
        )
    }

    /// The models we hold, as handshakes and topology reports list them: the
    /// draft model scouts need first.
    fn model_cids(&self) -> Vec<Vec<u8>> {
        let mut cids = vec![self.config.scout_model_cid.clone()];
        for cid in self.config.offered.cids() {
            if !cids.contains(cid) {
                cids.push(cid.clone());
            }
        }
        cids.truncate(shared_proto::limits::MAX_MODELS);
        cids
    }

    /// A peer asks for a manifest or a piece: after its handshake, within
    /// the rate limit; a piece is read off the event loop.
    fn weights(
        &mut self,
        peer: PeerId,
        id: InboundRequestId,
        request: pb::WeightsRequest,
        channel: ResponseChannel<pb::WeightsResponse>,
    ) {
        let known = self.peers.get(&peer).is_some_and(|p| p.role.is_some());
        let refuse = |code: &str, why: &str| pb::WeightsResponse {
            answer: Some(pb::weights_response::Answer::Refused(net::ack_error(
                code, why,
            ))),
        };
        let reply = if !self.weights_limits.allow(&peer, now_ms()) {
            Reply::Now(refuse("UNAVAILABLE", "too many requests: slow down"))
        } else if !known {
            Reply::Now(refuse("PERMISSION_DENIED", "handshake first"))
        } else {
            self.config.offered.reply(&request)
        };
        match reply {
            Reply::Now(response) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .weights
                    .send_response(channel, response);
            }
            Reply::Read(read) if !self.weights_budget.reserve(id, peer, read.bytes()) => {
                let _ = self.swarm.behaviour_mut().weights.send_response(
                    channel,
                    refuse(
                        "UNAVAILABLE",
                        "too many pieces on the way to you: slow down",
                    ),
                );
            }
            Reply::Read(read) => {
                let done = self.weights_done.0.clone();
                tokio::spawn(async move {
                    // A peer that gave up (timeout, gone) gets no disk read.
                    let response = if channel.is_open() {
                        read.run().await
                    } else {
                        refuse("UNAVAILABLE", "gave up")
                    };
                    let _ = done.send((id, channel, response)).await;
                });
            }
        }
    }

    fn behaviour(&mut self, event: OracleBehaviourEvent) {
        use request_response::{Event as Rr, Message};
        match event {
            OracleBehaviourEvent::Handshake(Rr::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            }) => self.handshake(peer, request, channel),
            OracleBehaviourEvent::Handshake(Rr::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            }) => {
                let theirs = response
                    .handshake
                    .filter(|_| response.ack.as_ref().is_some_and(|a| a.ok));
                match theirs {
                    Some(h) if net::check_handshake(&peer, &h).is_ok() => {
                        self.handshake_done(peer, &h)
                    }
                    _ => {
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
            }
            OracleBehaviourEvent::Handshake(Rr::InboundFailure { peer, error, .. }) => {
                // A malformed or oversized handshake lands here: the codec refused it.
                tracing::info!(%peer, %error, "bad handshake: closing");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            OracleBehaviourEvent::Claim(Rr::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            }) => self.claim(peer, request, channel),
            OracleBehaviourEvent::Claim(Rr::InboundFailure { peer, error, .. }) => {
                tracing::debug!(%peer, %error, "bad claim");
            }
            OracleBehaviourEvent::Complete(Rr::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            }) => self.completion(peer, request, channel),
            OracleBehaviourEvent::Complete(Rr::InboundFailure { peer, error, .. }) => {
                tracing::debug!(%peer, %error, "bad completion request");
            }
            OracleBehaviourEvent::Weights(Rr::Message {
                peer,
                message:
                    Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            }) => self.weights(peer, request_id, request, channel),
            OracleBehaviourEvent::Weights(Rr::ResponseSent { request_id, .. }) => {
                self.weights_budget.release(&request_id);
            }
            OracleBehaviourEvent::Weights(Rr::InboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                self.weights_budget.release(&request_id);
                tracing::debug!(%peer, %error, "weights request failed");
            }
            OracleBehaviourEvent::Verify(Rr::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => self.round_answer(peer, request_id, response),
            OracleBehaviourEvent::Verify(Rr::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                if let Some(session) = self.golden_rounds.remove(&request_id) {
                    // No answer in time, or a refusal to answer, fails the
                    // ticket; a connection that went away scores nothing.
                    if matches!(
                        error,
                        request_response::OutboundFailure::Timeout
                            | request_response::OutboundFailure::Io(_)
                    ) {
                        self.golden_answer(peer, session, None);
                    } else {
                        self.golden.remove(&session);
                    }
                }
                if let Some(round) = self.rounds.remove(&request_id) {
                    tracing::debug!(session = round.id, %error, "round failed: decoding alone");
                    self.engine.remote_drafts(round.id, round.round, None);
                }
            }
            OracleBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = self.validate_gossip(&message);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            OracleBehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => self.ping_result(peer, connection, result.is_ok()),
            OracleBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.agent = Some(info.agent_version.chars().take(128).collect());
                }
                // Only routable addresses go into the DHT (a peer cannot make
                // us advertise loopback or unspecified addresses of its own),
                // but a node that only listens on loopback is a network on
                // one machine (tests, demos): there its peers' loopback
                // addresses are the ones that work.
                let local = !self.listen_addrs.is_empty()
                    && self.listen_addrs.iter().all(is_loopback)
                    && self
                        .peers
                        .get(&peer_id)
                        .is_some_and(|p| is_loopback(&p.address));
                for addr in info.listen_addrs.iter().take(16) {
                    if is_dialable(addr) || (local && is_loopback(addr)) {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, addr.clone());
                    }
                }
            }
            OracleBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::Bootstrap(result),
                step,
                ..
            }) => match result {
                Ok(_) => {
                    self.bootstrap_backoff.reset();
                    // Our records go to the peers closest to each model now
                    // that we know them (once per bootstrap, not per step).
                    if step.last {
                        for cid in self.config.offered.cids().to_vec() {
                            provide(&mut self.swarm, &cid);
                        }
                    }
                }
                Err(e) => {
                    let delay = self.bootstrap_backoff.next_delay();
                    tracing::warn!(error = ?e, retry_in_s = delay.as_secs(), "bootstrap failed");
                    self.next_bootstrap = Some(Instant::now() + delay);
                }
            },
            OracleBehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            _ => {}
        }
    }

    fn ping_result(&mut self, peer: PeerId, connection: ConnectionId, ok: bool) {
        if self
            .ping
            .record(connection, ok, self.config.timeouts.ping_max_failures)
        {
            tracing::info!(%peer, "ping failed repeatedly: closing the connection");
            self.swarm.close_connection(connection);
        }
    }

    fn handshake(
        &mut self,
        peer: PeerId,
        request: pb::HandshakeMessage,
        channel: ResponseChannel<pb::HandshakeReply>,
    ) {
        let banned_until = self
            .config
            .ledger
            .get(&peer)
            .map(|r| r.banned_until_ms)
            .unwrap_or(0);
        let verdict = if banned_until > now_ms() {
            Err(net::HandshakeError::Banned {
                until_ms: banned_until,
            })
        } else if !self.rate_ok(&peer) {
            Err(net::HandshakeError::RateLimited)
        } else {
            net::check_handshake(&peer, &request)
        };
        let reply = match verdict {
            Ok(()) => {
                // An earlier refusal (rate limit) no longer closes it.
                self.refused.remove(&peer);
                self.handshake_done(peer, &request);
                pb::HandshakeReply {
                    ack: Some(net::ack_ok()),
                    handshake: Some(self.our_handshake()),
                }
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "handshake refused");
                // The first refusal starts the grace; more do not extend it.
                self.refused.entry(peer).or_insert_with(Instant::now);
                net::refusal(&e)
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .handshake
            .send_response(channel, reply);
    }

    fn handshake_done(&mut self, peer: PeerId, hello: &pb::HandshakeMessage) {
        let role = pb::NodeType::try_from(hello.node_type).unwrap_or(pb::NodeType::Unspecified);
        if let Some(p) = self.peers.get_mut(&peer) {
            let first = p.role.is_none();
            p.role = Some(role);
            p.key = PublicKey::try_decode_protobuf(&hello.public_key).ok();
            p.models = hello.model_cids.clone();
            if first && role == pb::NodeType::Scout {
                tracing::info!(%peer, "scout joined");
                self.engine.scout_joined(peer);
            }
            if first {
                self.topology_changed(Some(role));
            }
        }
        self.update_view();
    }

    fn claim(
        &mut self,
        peer: PeerId,
        request: pb::ClaimRequest,
        channel: ResponseChannel<pb::ClaimResponse>,
    ) {
        let refuse = |code: &str, why: &str| pb::ClaimResponse {
            ack: Some(net::ack_error(code, why)),
            ..Default::default()
        };
        let is_scout = self
            .peers
            .get(&peer)
            .is_some_and(|p| p.role == Some(pb::NodeType::Scout));
        if !self.rate_ok(&peer) {
            let response = refuse("UNAVAILABLE", "too many requests: slow down");
            let _ = self
                .swarm
                .behaviour_mut()
                .claim
                .send_response(channel, response);
            return;
        }
        if is_scout && self.golden_work.contains_key(&request.work_cid) {
            self.claim_golden(peer, request, channel);
            return;
        }
        let work = self.work.get(&request.work_cid).map(|w| w.id);
        let response = if !is_scout {
            Some(refuse("PERMISSION_DENIED", "handshake as a scout first"))
        } else if request.model_cid != self.config.scout_model_cid {
            Some(refuse(
                "INVALID_ARGUMENT",
                "that is not the announced draft model",
            ))
        } else if work.is_none() {
            Some(refuse("NOT_FOUND", "no such work, or it has ended"))
        } else {
            None
        };
        if let Some(response) = response {
            let _ = self
                .swarm
                .behaviour_mut()
                .claim
                .send_response(channel, response);
            return;
        }
        let Some(id) = work else { return };
        // One scout per announcement: the work id is spent either way.
        self.work.remove(&request.work_cid);
        let engine = self.engine.clone();
        let done = self.claims_done.0.clone();
        let work_cid = request.work_cid;
        tokio::spawn(async move {
            let response = match engine.claim(id, peer, work_cid).await {
                Ok(grant) => granted(id, grant),
                Err(why) => refuse("ALREADY_EXISTS", &why),
            };
            let _ = done.send((channel, response)).await;
        });
    }

    /// A leech (or a scout) asks for an answer: after its handshake, within
    /// the rate limits, answered off the event loop.
    fn completion(
        &mut self,
        peer: PeerId,
        request: pb::CompletionRequest,
        channel: ResponseChannel<pb::CompletionResponse>,
    ) {
        let known = self.peers.get(&peer).is_some_and(|p| p.role.is_some());
        let refusal = if !self.rate_ok(&peer) {
            Some(leech::refusal(
                "UNAVAILABLE",
                "too many requests: slow down",
            ))
        } else if !known {
            Some(leech::refusal("PERMISSION_DENIED", "handshake first"))
        } else {
            None
        };
        if let Some(response) = refusal {
            let _ = self
                .swarm
                .behaviour_mut()
                .complete
                .send_response(channel, response);
            return;
        }
        tracing::debug!(%peer, "p2p completion");
        let completions = self.completions.clone();
        let done = self.completions_done.0.clone();
        tokio::spawn(async move {
            let response = completions.answer(peer, request).await;
            let _ = done.send((channel, response)).await;
        });
    }

    /// Every scout that claims a golden ticket gets a run of its own.
    fn claim_golden(
        &mut self,
        peer: PeerId,
        request: pb::ClaimRequest,
        channel: ResponseChannel<pb::ClaimResponse>,
    ) {
        let Some((ticket, _, claimed)) = self.golden_work.get_mut(&request.work_cid) else {
            return;
        };
        if !claimed.insert(peer) {
            let response = pb::ClaimResponse {
                ack: Some(net::ack_error("ALREADY_EXISTS", "claimed already")),
                ..Default::default()
            };
            let _ = self
                .swarm
                .behaviour_mut()
                .claim
                .send_response(channel, response);
            return;
        }
        let ticket = ticket.clone();
        self.golden_ids += 1;
        let session = GOLDEN_SESSION_BASE + self.golden_ids;
        let mut run = GoldenRun::new(ticket, request.work_cid, session);
        let response = pb::ClaimResponse {
            ack: Some(net::ack_ok()),
            session_id: session,
            context_tokens: run.prompt().to_vec(),
            draft_k: run.k() as u32,
            sampling: Some(params_to_wire(
                &shared_model::sampling::SamplingParams::GREEDY,
            )),
            output_start: run.prompt().len() as u32,
        };
        let first = run.request(self.config.timeouts.request.as_millis() as u32);
        self.golden.insert(session, (peer, run));
        let _ = self
            .swarm
            .behaviour_mut()
            .claim
            .send_response(channel, response);
        self.golden_step(session, Step::Next(first));
    }

    fn golden_answer(&mut self, peer: PeerId, session: u64, result: Option<pb::WorkResult>) {
        let key = self.peers.get(&peer).and_then(|p| p.key.clone());
        let deadline = self.config.timeouts.request.as_millis() as u32;
        let Some((owner, run)) = self.golden.get_mut(&session) else {
            return;
        };
        let step = match result {
            // A replayed answer (another round's, another ticket's) fails.
            Some(r)
                if *owner == peer
                    && r.session_id == session
                    && r.round == run.round()
                    && r.work_cid == run.work_cid()
                    && key.is_some_and(|k| r.verify_signature(&k).is_ok()) =>
            {
                run.answer(&r.token_ids, deadline)
            }
            _ => run.failed(),
        };
        self.golden_step(session, step);
    }

    fn round_answer(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        result: pb::WorkResult,
    ) {
        if let Some(session) = self.golden_rounds.remove(&request_id) {
            self.golden_answer(peer, session, Some(result));
            return;
        }
        let Some(round) = self.rounds.remove(&request_id) else {
            return;
        };
        let key = self.peers.get(&peer).and_then(|p| p.key.clone());
        let ok = peer == round.scout
            && result.work_cid == round.work_cid
            && result.session_id == round.id
            && result.round == round.round
            && result.token_ids.len() <= round.k
            && key.is_some_and(|k| result.verify_signature(&k).is_ok());
        if ok {
            self.engine
                .remote_drafts(round.id, round.round, Some(result.token_ids));
        } else {
            tracing::info!(%peer, session = round.id, "drafts refused (signature or fields do not match)");
            self.engine.remote_drafts(round.id, round.round, None);
            if let Err(e) = self.config.ledger.update(&peer, |r, _| r.bad_results += 1) {
                tracing::error!(error = %e, "cannot record a bad result");
            }
            self.check(peer, false);
        }
    }

    fn validate_gossip(&mut self, message: &gossipsub::Message) -> MessageAcceptance {
        let Some(source) = message.source else {
            return MessageAcceptance::Reject;
        };
        if !self.gossip_limits.allow(&source, now_ms()) {
            return MessageAcceptance::Ignore;
        }
        let skew = self.config.timeouts.max_clock_skew.as_millis() as u64;
        let now = now_ms();
        let topic = message.topic.as_str();
        if topic == WORK_TOPIC {
            let Ok(work) = frame::decode::<pb::GossipWorkMessage>(&message.data) else {
                return MessageAcceptance::Reject;
            };
            let Ok(expires) = check_fresh(work.issued_at_ms, work.ttl, now, skew) else {
                return MessageAcceptance::Ignore;
            };
            let id = work.assignment.map(|a| a.prompt_cid).unwrap_or_default();
            if self.replay.check_and_insert(id, expires, now).is_err() {
                return MessageAcceptance::Ignore;
            }
            MessageAcceptance::Accept
        } else if topic == TOPOLOGY_TOPIC {
            let Ok(topology) = frame::decode::<pb::TopologyMessage>(&message.data) else {
                return MessageAcceptance::Reject;
            };
            let issued = u64::from(topology.timestamp) * 1000;
            match check_fresh(issued, 120, now, skew) {
                Ok(_) => {
                    if self.topology.record(source, &topology, now) {
                        self.topology_dirty = true;
                    }
                    MessageAcceptance::Accept
                }
                Err(_) => MessageAcceptance::Ignore,
            }
        } else if topic == WORK_RESULT_TOPIC {
            // Only results certified by the network key pass.
            let network_key = self.config.network_key.clone();
            let verdict = results::check_result(
                &message.data,
                &source,
                network_key.as_ref(),
                now,
                skew,
                &mut self.replay,
            );
            let valid = verdict.is_ok();
            self.metrics
                .results_received
                .get_or_create(&crate::metrics::ValidLabels { valid })
                .inc();
            match verdict {
                Ok(_) => MessageAcceptance::Accept,
                Err(results::ResultError::Replayed | results::ResultError::Stale(_)) => {
                    MessageAcceptance::Ignore
                }
                Err(e) => {
                    tracing::info!(%source, error = %e, "result refused");
                    MessageAcceptance::Reject
                }
            }
        } else {
            MessageAcceptance::Reject
        }
    }
}

fn granted(id: SessionId, grant: ClaimGrant) -> pb::ClaimResponse {
    pb::ClaimResponse {
        ack: Some(net::ack_ok()),
        session_id: id,
        context_tokens: grant.context,
        draft_k: grant.k.clamp(1, 16) as u32,
        sampling: Some(params_to_wire(&grant.params)),
        output_start: grant.output_start as u32,
    }
}

fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    }
}

/// Whether `addr` is a loopback address.
fn is_loopback(addr: &Multiaddr) -> bool {
    ip_of(addr).is_some_and(|ip| ip.is_loopback())
}

/// Whether `addr` is worth putting in the DHT: not loopback, unspecified or
/// link-local (a peer's claims about itself are not trusted blindly).
fn is_dialable(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => !(ip.is_loopback() || ip.is_unspecified() || ip.is_link_local()),
        Some(Protocol::Ip6(ip)) => !(ip.is_loopback() || ip.is_unspecified()),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}
