//! The downloader: a model fetched piece by piece from every peer that offers
//! it. `oracle fetch` runs it, and so does `oracle scout` when it has no model.
//!
//! The decisions are [`shared_weights::Picker`]'s (rarest first, a deadline
//! per request, retries elsewhere, strikes); the bytes go through
//! [`PartFile`] (each piece verified before it is written, a record of
//! verified pieces for resuming, the whole file checked once more before it
//! gets its name). This module is the hands between them and the network:
//!
//! 1. dial the bootstrap peers and handshake as a leech; an oracle's handshake
//!    lists the models it holds (the draft model scouts need first), which
//!    names the model when none was asked for;
//! 2. ask the DHT for more providers of the model (Kademlia provider records)
//!    and dial them too;
//! 3. fetch the manifest from a provider and check it against the content id;
//! 4. keep every provider busy with piece requests, within the bandwidth cap;
//! 5. a piece that fails its hash costs its sender reputation in the local
//!    ledger (`peers.redb` in the data dir); banned peers are not asked again;
//!    a peer that refuses a request rests a while (doubling) before it is
//!    asked again, one that says it has no such model is not asked again.
//!
//! Timers (deadlines, the cap, the rate) run on a monotonic clock; bans in the
//! ledger on the wall clock.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, kad};
use scout_wasm::native::{build_swarm, install_crypto_provider, listen_for_webrtc};
use scout_wasm::net::{self, Backoff, HandshakeVerdict, NetTimeouts};
use serde::Serialize;
use shared_proto::pb::weights_request::Want;
use shared_proto::pb::weights_response::Answer;
use shared_proto::protocol::{HANDSHAKE_PROTOCOL, WEIGHTS_PROTOCOL};
use shared_proto::{ContentId, Keypair, pb};
use shared_weights::{
    Availability, Manifest, Meter, Picker, PickerConfig, PieceOutcome, Progress, RateCap,
};
use thiserror::Error;
use tokio::time::Instant;

use super::store::{Opened, PartFile, StoreError};
use crate::trust::{Ledger, TrustPolicy};
use behaviour::{FetchBehaviour, FetchBehaviourEvent};

mod behaviour {
    // The derive generates an event enum without docs.
    #![allow(missing_docs)]
    use libp2p::kad::{self, store::MemoryStore};
    use libp2p::request_response::ProtocolSupport;
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::{identify, ping, request_response};
    use scout_wasm::net::{self, HandshakeCodec, NetTimeouts, WeightsCodec};
    use shared_proto::protocol::{HANDSHAKE_PROTOCOL, WEIGHTS_PROTOCOL};

    /// What a downloader speaks: it dials, handshakes, asks the DHT for
    /// providers and asks providers for manifests and pieces.
    #[derive(NetworkBehaviour)]
    pub(crate) struct FetchBehaviour {
        pub(crate) identify: identify::Behaviour,
        pub(crate) ping: ping::Behaviour,
        pub(crate) kad: kad::Behaviour<MemoryStore>,
        pub(crate) handshake: request_response::Behaviour<HandshakeCodec>,
        pub(crate) weights: request_response::Behaviour<WeightsCodec>,
    }

    impl FetchBehaviour {
        pub(crate) fn new(
            key: &libp2p::identity::Keypair,
            timeouts: &NetTimeouts,
        ) -> Result<Self, String> {
            let peer = key.public().to_peer_id();
            let mut config = kad::Config::new(crate::p2p::KAD_PROTOCOL);
            config.set_query_timeout(timeouts.request * 3);
            let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), config);
            // It asks, it does not store records for others.
            kad.set_mode(Some(kad::Mode::Client));
            Ok(FetchBehaviour {
                identify: net::identify(key, concat!("shard-fetch/", env!("CARGO_PKG_VERSION"))),
                ping: net::ping(timeouts),
                kad,
                handshake: net::request_response(
                    HANDSHAKE_PROTOCOL,
                    ProtocolSupport::Outbound,
                    timeouts,
                ),
                weights: net::request_response(
                    WEIGHTS_PROTOCOL,
                    ProtocolSupport::Outbound,
                    timeouts,
                ),
            })
        }
    }
}

/// Where the model goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// This file.
    File(PathBuf),
    /// `<content id>.gguf` in this directory (for a model not named in
    /// advance: a scout's draft model).
    Dir(PathBuf),
}

impl Destination {
    fn path(&self, cid: &ContentId) -> PathBuf {
        match self {
            Destination::File(p) => p.clone(),
            Destination::Dir(d) => d.join(format!("{cid}.gguf")),
        }
    }
}

/// What to fetch, from where, how.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// The model's content id; `None`: the draft model the first oracle
    /// reached names (first in its handshake).
    pub model: Option<ContentId>,
    /// Peers to start from, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Where the file goes.
    pub out: Destination,
    /// Bytes a second at most (all peers together); `None`: no cap.
    pub max_rate: Option<u64>,
    /// Where the key and the ledger of peers live.
    pub data_dir: PathBuf,
    /// Network timeouts.
    pub timeouts: NetTimeouts,
    /// The picker's limits (requests per peer, strikes); its deadline is
    /// `timeouts.piece`.
    pub picker: PickerConfig,
    /// Give up after this long without a verified piece.
    pub stall_timeout: Duration,
}

impl FetchConfig {
    /// Defaults for fetching `model` through `bootstrap` to `out`.
    pub fn new(
        model: Option<ContentId>,
        bootstrap: Vec<Multiaddr>,
        out: Destination,
        data_dir: PathBuf,
    ) -> Self {
        let timeouts = NetTimeouts::default();
        FetchConfig {
            model,
            bootstrap,
            out,
            max_rate: None,
            data_dir,
            picker: PickerConfig::default(),
            timeouts,
            stall_timeout: Duration::from_secs(180),
        }
    }
}

/// Why a download stopped.
#[derive(Debug, Error)]
pub enum FetchError {
    /// A bootstrap address has no peer id.
    #[error("the address {0} does not end in /p2p/<peer id>")]
    NoPeerId(Multiaddr),
    /// No bootstrap address given.
    #[error("no peer to start from: pass --bootstrap MULTIADDR")]
    NoBootstrap,
    /// The libp2p node could not start.
    #[error("cannot start the libp2p node: {0}")]
    Start(String),
    /// The key or the ledger in the data dir cannot be used.
    #[error("{0}")]
    DataDir(String),
    /// No peer reached names a draft model.
    #[error("no oracle reached names a model to fetch")]
    NoModel,
    /// No peer offers the model, or every one that did went away or lied.
    #[error(
        "no peer offers model {model} any more ({missing} of its pieces are missing); {detail}"
    )]
    NoProviders {
        /// The model.
        model: ContentId,
        /// Pieces still missing.
        missing: usize,
        /// What happened to the peers.
        detail: String,
    },
    /// Nothing arrived for too long.
    #[error("no piece arrived for {0:?}; the partial download is kept, run again to resume")]
    Stalled(Duration),
    /// The file on disk: disk full, permissions, a different file at the destination.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one peer did for a download.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerReport {
    /// Its peer id.
    pub peer_id: String,
    /// Verified pieces it sent.
    pub pieces: u32,
    /// Pieces that failed their hash.
    pub bad_pieces: u32,
    /// Requests it did not answer (timeouts, refusals, a closed connection).
    pub failures: u32,
    /// Its reputation in our ledger before and after (0 to 1).
    pub reputation_before: f64,
    /// After.
    pub reputation_after: f64,
    /// Dropped for bad pieces.
    pub struck_off: bool,
}

/// What a finished download did.
#[derive(Debug, Clone, Serialize)]
pub struct FetchReport {
    /// The model's content id.
    pub model: String,
    /// The finished file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its pieces.
    pub pieces: u32,
    /// Pieces already verified on disk from an earlier run.
    pub resumed: u32,
    /// Pieces fetched and verified this run.
    pub fetched: u32,
    /// Pieces refused for a bad hash.
    pub rejected: u32,
    /// Seconds from start to the finished file.
    pub seconds: f64,
    /// Each peer's part.
    pub peers: Vec<PeerReport>,
    /// Which peer each piece came from (`resumed` for pieces on disk already).
    pub sources: Vec<String>,
}

/// Receives progress while the download runs.
pub trait ProgressSink {
    /// The manifest is in: `resumed` pieces were on disk already.
    fn started(&mut self, _model: &ContentId, _manifest: &Manifest, _resumed: u32) {}
    /// A reading, at most a few times a second.
    fn progress(&mut self, _progress: &Progress, _peers: usize) {}
}

/// Prints progress: a bar redrawn in place on a terminal, a line a second
/// otherwise (logs, tests).
#[derive(Debug, Default)]
pub struct PrintProgress {
    last_line: Option<Instant>,
}

impl ProgressSink for PrintProgress {
    fn started(&mut self, model: &ContentId, manifest: &Manifest, resumed: u32) {
        eprintln!(
            "model {model}: {} in {} pieces of {}; {resumed} verified on disk already",
            mib(manifest.file_size()),
            manifest.piece_count(),
            mib(u64::from(manifest.piece_size())),
        );
    }

    fn progress(&mut self, p: &Progress, peers: usize) {
        let eta = p
            .eta_s
            .map_or_else(|| "?".to_owned(), |s| format!("{:.0} s", s.ceil()));
        let text = format!(
            "{}/{} pieces, {}/{}, {}/s from {peers} peer{}, ETA {eta}",
            p.pieces_done,
            p.pieces_total,
            mib(p.bytes_done),
            mib(p.bytes_total),
            mib(p.rate as u64),
            if peers == 1 { "" } else { "s" },
        );
        let mut err = std::io::stderr();
        if err.is_terminal() {
            let filled = (p.fraction() * 30.0).round() as usize;
            let _ = write!(
                err,
                "\r[{}{}] {:>3.0}% {text}\x1b[K",
                "#".repeat(filled),
                ".".repeat(30 - filled.min(30)),
                p.fraction() * 100.0
            );
            if p.pieces_done == p.pieces_total {
                let _ = writeln!(err);
            }
        } else if self
            .last_line
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            || p.pieces_done == p.pieces_total
        {
            self.last_line = Some(Instant::now());
            let _ = writeln!(err, "progress: {text}");
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How often the loop wakes up with nothing else to do.
const TICK: Duration = Duration::from_millis(200);
/// How often the DHT is asked again for providers while pieces are missing.
const PROVIDER_QUERY_EVERY: Duration = Duration::from_secs(30);

/// The most providers asked at once: each holds up to
/// [`PickerConfig::max_in_flight`] pieces in memory, and anyone can publish
/// provider records.
const MAX_PROVIDERS: usize = 16;
/// First rest of a peer that refused a request; doubles to [`REST_MAX`].
const REST_MIN: Duration = Duration::from_millis(500);
const REST_MAX: Duration = Duration::from_secs(30);

/// Milliseconds on a monotonic clock (the picker's deadlines, the cap, the
/// rate): a wall clock stepping back or forth must not stall or expire them.
fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Fetches on a runtime of its own until done or until SIGINT/SIGTERM (the
/// verified pieces are kept either way), printing progress: what `oracle
/// fetch` and a scout without a model run.
pub fn fetch_until_signal(config: FetchConfig, key: Keypair) -> anyhow::Result<FetchReport> {
    use anyhow::Context as _;
    // Two threads: hashing a piece or the whole file never holds up the
    // connections (pings, other peers' pieces).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut progress = PrintProgress::default();
    let report = runtime.block_on(async {
        tokio::select! {
            report = fetch(config, key, &mut progress) => Some(report),
            () = crate::serve::shutdown_signal() => None,
        }
    });
    match report {
        Some(report) => Ok(report?),
        None => anyhow::bail!("interrupted: the verified pieces are kept; run again to resume"),
    }
}

/// Fetches the model (or finds it complete at the destination already).
pub async fn fetch(
    mut config: FetchConfig,
    key: Keypair,
    sink: &mut dyn ProgressSink,
) -> Result<FetchReport, FetchError> {
    config.picker.timeout_ms = config.timeouts.piece.as_millis() as u64;
    if config.bootstrap.is_empty() {
        return Err(FetchError::NoBootstrap);
    }
    let mut bootstrap = Vec::new();
    for addr in &config.bootstrap {
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => bootstrap.push((peer, addr.clone())),
            _ => return Err(FetchError::NoPeerId(addr.clone())),
        }
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        FetchError::DataDir(format!("cannot create {}: {e}", config.data_dir.display()))
    })?;
    let ledger_path = config.data_dir.join("peers.redb");
    let ledger = Ledger::open(&ledger_path, TrustPolicy::default())
        .map_err(|e| FetchError::DataDir(format!("cannot open {}: {e}", ledger_path.display())))?;
    install_crypto_provider();
    let mut swarm = build_swarm(&key, &config.timeouts, FetchBehaviour::new)
        .map_err(|e| FetchError::Start(e.to_string()))?;
    for (peer, addr) in &bootstrap {
        // A WebRTC-direct dial goes out from a listening socket.
        listen_for_webrtc(&mut swarm, addr).map_err(|e| FetchError::Start(e.to_string()))?;
        swarm.behaviour_mut().kad.add_address(peer, addr.clone());
    }
    let mut download = Download {
        swarm,
        key,
        ledger,
        model: config.model,
        redial_backoff: Backoff::new(config.timeouts.retry_min, config.timeouts.retry_max),
        next_redial: Instant::now(),
        bootstrap,
        resting: HashMap::new(),
        holders: HashMap::new(),
        refused_by: BTreeMap::new(),
        manifest_from: None,
        state: None,
        requests: HashMap::new(),
        peers: BTreeMap::new(),
        started: Instant::now(),
        last_piece: Instant::now(),
        next_provider_query: Instant::now(),
        cap: config.max_rate.map(|r| RateCap::new(r, mono_ms())),
        config,
    };
    download.run(sink).await
}

/// A download under way, once the manifest is in.
struct Transfer {
    manifest: Manifest,
    /// `None` when the file was complete at the destination already.
    store: Option<Box<PartFile>>,
    picker: Picker<PeerId>,
    meter: Meter,
    resumed: u32,
    rejected: u32,
}

struct Download {
    swarm: Swarm<FetchBehaviour>,
    key: Keypair,
    ledger: Ledger,
    config: FetchConfig,
    model: Option<ContentId>,
    /// The peers we start from, dialled again (with backoff) until one of
    /// them takes our handshake: an oracle still starting, a refusal.
    bootstrap: Vec<(PeerId, Multiaddr)>,
    redial_backoff: Backoff,
    next_redial: Instant,
    /// Peers that refused a request: out of the picker until the instant,
    /// with the refusals in a row so far.
    resting: HashMap<PeerId, (Instant, u32)>,
    /// Peers whose handshake we have, and the models they hold.
    holders: HashMap<PeerId, Vec<Vec<u8>>>,
    /// Peers that refused us or failed, and why (for the error message).
    refused_by: BTreeMap<PeerId, String>,
    /// The manifest was asked of this peer.
    manifest_from: Option<(PeerId, OutboundRequestId)>,
    state: Option<Transfer>,
    /// Piece requests in flight: (peer, piece).
    requests: HashMap<OutboundRequestId, (PeerId, u32)>,
    peers: BTreeMap<PeerId, PeerReport>,
    started: Instant,
    last_piece: Instant,
    next_provider_query: Instant,
    cap: Option<RateCap>,
}

/// How the loop goes on.
enum Step {
    Continue,
    Done(PathBuf),
}

impl Download {
    async fn run(&mut self, sink: &mut dyn ProgressSink) -> Result<FetchReport, FetchError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_progress = Instant::now();
        loop {
            let step = tokio::select! {
                event = self.swarm.select_next_some() => self.event(event, sink)?,
                _ = tick.tick() => self.tick()?,
            };
            if let Step::Done(path) = step {
                if let Some(t) = self.state.as_mut() {
                    sink.progress(&t.meter.read(mono_ms()), self.active_peers());
                }
                return Ok(self.report(path));
            }
            self.send_requests();
            if last_progress.elapsed() >= Duration::from_millis(250)
                && let Some(t) = self.state.as_mut()
            {
                last_progress = Instant::now();
                let peers = t.picker.providers().count();
                sink.progress(&t.meter.read(mono_ms()), peers);
            }
        }
    }

    fn active_peers(&self) -> usize {
        self.state
            .as_ref()
            .map_or(0, |t| t.picker.providers().count())
    }

    fn model_bytes(&self) -> Option<Vec<u8>> {
        self.model.map(|m| m.to_bytes())
    }

    fn event(
        &mut self,
        event: SwarmEvent<FetchBehaviourEvent>,
        sink: &mut dyn ProgressSink,
    ) -> Result<Step, FetchError> {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 => {
                let hello = net::handshake_message(
                    &self.key,
                    pb::NodeType::Leech,
                    &[HANDSHAKE_PROTOCOL, WEIGHTS_PROTOCOL],
                    None,
                    Vec::new(),
                    None,
                );
                self.swarm
                    .behaviour_mut()
                    .handshake
                    .send_request(&peer_id, hello);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.holders.remove(&peer_id);
                if let Some(t) = self.state.as_mut() {
                    let freed = t.picker.remove_provider(&peer_id);
                    if !freed.is_empty() {
                        tracing::info!(peer = %peer_id, pieces = freed.len(), "a peer went away mid-transfer");
                    }
                }
                self.requests.retain(|_, (p, _)| *p != peer_id);
                if self.manifest_from.is_some_and(|(p, _)| p == peer_id) {
                    self.manifest_from = None;
                }
                self.ask_manifest();
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                self.refused_by
                    .insert(peer, format!("cannot connect: {error}"));
            }
            SwarmEvent::Behaviour(event) => return self.behaviour(event, sink),
            _ => {}
        }
        Ok(Step::Continue)
    }

    fn behaviour(
        &mut self,
        event: FetchBehaviourEvent,
        sink: &mut dyn ProgressSink,
    ) -> Result<Step, FetchError> {
        use request_response::{Event as Rr, Message};
        match event {
            FetchBehaviourEvent::Handshake(Rr::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            }) => {
                let models = response
                    .handshake
                    .as_ref()
                    .map(|h| h.model_cids.clone())
                    .unwrap_or_default();
                match net::handshake_verdict(&peer, response) {
                    HandshakeVerdict::Accepted => self.joined(peer, models),
                    other => {
                        tracing::info!(%peer, verdict = ?other, "not a provider");
                        self.refused_by.insert(peer, format!("{other:?}"));
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
            }
            FetchBehaviourEvent::Handshake(Rr::OutboundFailure { peer, error, .. }) => {
                self.refused_by
                    .insert(peer, format!("no handshake: {error}"));
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            FetchBehaviourEvent::Weights(Rr::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => return self.answer(peer, request_id, response, sink),
            FetchBehaviourEvent::Weights(Rr::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                tracing::debug!(%peer, %error, "a weights request failed");
                if self.manifest_from.is_some_and(|(_, id)| id == request_id) {
                    self.manifest_from = None;
                    self.refused_by
                        .insert(peer, format!("no manifest: {error}"));
                    self.ask_manifest();
                }
                if let Some((peer, piece)) = self.requests.remove(&request_id) {
                    self.peers.entry(peer).or_default().failures += 1;
                    if let Some(t) = self.state.as_mut() {
                        t.picker.on_failure(peer, piece);
                    }
                }
            }
            FetchBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                        providers,
                        ..
                    })),
                ..
            }) => {
                let me = *self.swarm.local_peer_id();
                for peer in providers {
                    if self.holders.len() >= 2 * MAX_PROVIDERS {
                        break;
                    }
                    if peer != me && !self.swarm.is_connected(&peer) {
                        tracing::info!(%peer, "provider found in the DHT: dialling");
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            _ => {}
        }
        Ok(Step::Continue)
    }

    /// An oracle took our handshake and holds `models`.
    fn joined(&mut self, peer: PeerId, models: Vec<Vec<u8>>) {
        // Whatever went wrong with it before (a failed dial, a refused
        // handshake) is over: it took this one.
        self.refused_by.remove(&peer);
        self.redial_backoff.reset();
        if self.model.is_none() {
            // No model named: the draft model of the first oracle (first in
            // its handshake).
            if let Some(Ok(cid)) = models.first().map(|b| ContentId::from_bytes(b)) {
                tracing::info!(%peer, model = %cid, "fetching the draft model this oracle names");
                self.model = Some(cid);
            }
        }
        self.holders.insert(peer, models);
        self.query_providers();
        self.add_provider(peer);
        self.ask_manifest();
    }

    /// Asks the DHT who else offers the model (now and then).
    fn query_providers(&mut self) {
        let Some(model) = self.model_bytes() else {
            return;
        };
        if Instant::now() < self.next_provider_query {
            return;
        }
        self.next_provider_query = Instant::now() + PROVIDER_QUERY_EVERY;
        self.swarm
            .behaviour_mut()
            .kad
            .get_providers(kad::RecordKey::new(&model));
    }

    fn holds_model(&self, peer: &PeerId) -> bool {
        let Some(model) = self.model_bytes() else {
            return false;
        };
        self.holders.get(peer).is_some_and(|m| m.contains(&model))
    }

    fn reputation(&self, peer: &PeerId) -> (f64, bool) {
        match self.ledger.get(peer) {
            Ok(r) => (r.reputation, r.is_banned(now_ms())),
            Err(e) => {
                tracing::warn!(error = %e, "peer ledger");
                (self.ledger.policy().initial, false)
            }
        }
    }

    /// Puts `peer` to work, if it holds the model and is not banned here.
    fn add_provider(&mut self, peer: PeerId) {
        if !self.holds_model(&peer) {
            return;
        }
        let (reputation, banned) = self.reputation(&peer);
        if banned {
            tracing::info!(%peer, "banned here for bad pieces: not asked");
            self.refused_by
                .insert(peer, "banned here for bad pieces".into());
            return;
        }
        let entry = self.peers.entry(peer).or_default();
        if entry.peer_id.is_empty() {
            entry.peer_id = peer.to_string();
            entry.reputation_before = reputation;
            entry.reputation_after = reputation;
        }
        if self
            .resting
            .get(&peer)
            .is_some_and(|(until, _)| *until > Instant::now())
        {
            return;
        }
        if let Some(t) = self.state.as_mut()
            && t.picker.providers().count() < MAX_PROVIDERS
        {
            t.picker.add_provider(peer, Availability::All);
        }
    }

    /// `peer` refused a request (busy, a file it cannot read, no such piece
    /// or model): out of the picker for a while, longer each time in a row;
    /// for good when it says it has no such model.
    fn rest(&mut self, peer: PeerId, refusal: Option<&pb::Ack>) {
        let Some(t) = self.state.as_mut() else { return };
        // Its other requests stay in `requests`; the picker ignores their answers.
        t.picker.remove_provider(&peer);
        let code = refusal
            .and_then(|a| a.errors.first())
            .map_or("", |e| e.code.as_str());
        if code == "NOT_FOUND" && refusal.is_some_and(|a| a.detail.contains("no such model")) {
            self.holders.remove(&peer);
            self.refused_by.insert(peer, "has no such model".into());
            return;
        }
        let streak = self.resting.get(&peer).map_or(0, |(_, n)| *n);
        let wait = (REST_MIN * 2u32.saturating_pow(streak.min(16))).min(REST_MAX);
        tracing::debug!(%peer, code, wait_ms = wait.as_millis() as u64, "peer refused: resting it");
        self.resting
            .insert(peer, (Instant::now() + wait, streak + 1));
    }

    /// Asks a provider for the manifest, unless it is in or on the way.
    fn ask_manifest(&mut self) {
        if self.state.is_some() || self.manifest_from.is_some() {
            return;
        }
        let Some(model) = self.model_bytes() else {
            return;
        };
        let candidate = self
            .holders
            .keys()
            .copied()
            .filter(|p| self.holds_model(p) && !self.refused_by.contains_key(p))
            .find(|p| !self.reputation(p).1);
        if let Some(peer) = candidate {
            let id = self.swarm.behaviour_mut().weights.send_request(
                &peer,
                pb::WeightsRequest {
                    model_cid: model,
                    want: Some(Want::Manifest(true)),
                },
            );
            self.manifest_from = Some((peer, id));
        }
    }

    fn answer(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        response: pb::WeightsResponse,
        sink: &mut dyn ProgressSink,
    ) -> Result<Step, FetchError> {
        if self.manifest_from.is_some_and(|(_, id)| id == request_id) {
            self.manifest_from = None;
            return self.manifest_arrived(peer, response, sink);
        }
        let Some((peer, piece)) = self.requests.remove(&request_id) else {
            return Ok(Step::Continue);
        };
        let Some(t) = self.state.as_mut() else {
            return Ok(Step::Continue);
        };
        let Some(store) = t.store.as_mut() else {
            return Ok(Step::Continue);
        };
        let data = match response.answer {
            Some(Answer::Piece(p)) if p.index == piece => p.data,
            other => {
                // A refusal (busy, not here) or an answer to another question.
                self.peers.entry(peer).or_default().failures += 1;
                t.picker.on_failure(peer, piece);
                let refusal = match other {
                    Some(Answer::Refused(ack)) => Some(ack),
                    _ => None,
                };
                tracing::debug!(%peer, piece, ?refusal, "piece not sent");
                self.rest(peer, refusal.as_ref());
                return Ok(Step::Continue);
            }
        };
        let written = match store.write_piece(piece, &data) {
            Ok(()) => true,
            Err(StoreError::Piece(e)) => {
                tracing::warn!(%peer, piece, error = %e, "bad piece refused");
                false
            }
            Err(e) => return Err(e.into()),
        };
        match t.picker.on_piece(peer, piece, written) {
            PieceOutcome::Accepted => {
                t.meter.piece(data.len() as u64, mono_ms());
                self.peers.entry(peer).or_default().pieces += 1;
                self.last_piece = Instant::now();
                self.resting.remove(&peer);
            }
            // Late, after it was asked elsewhere: already written if good.
            PieceOutcome::Unexpected => {}
            PieceOutcome::Rejected { dropped } => {
                t.rejected += 1;
                let record = self
                    .ledger
                    .update(&peer, |r, policy| {
                        let _ = r.bad_piece(policy, now_ms());
                    })
                    .ok();
                let report = self.peers.entry(peer).or_default();
                report.bad_pieces += 1;
                if let Some(r) = record {
                    report.reputation_after = r.reputation;
                }
                if dropped.is_some() {
                    tracing::warn!(%peer, "dropped for sending bad pieces");
                    report.struck_off = true;
                    self.requests.retain(|_, (p, _)| *p != peer);
                    self.refused_by.insert(peer, "sent bad pieces".into());
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
        if t.picker.is_complete() {
            return self.finish();
        }
        Ok(Step::Continue)
    }

    fn manifest_arrived(
        &mut self,
        peer: PeerId,
        response: pb::WeightsResponse,
        sink: &mut dyn ProgressSink,
    ) -> Result<Step, FetchError> {
        let Some(model) = self.model else {
            return Ok(Step::Continue);
        };
        let manifest = match response.answer {
            Some(Answer::Manifest(bytes)) => match Manifest::from_bytes(&model, bytes) {
                Ok(m) => m,
                Err(e) => {
                    // A peer that lies about the manifest is one that lies.
                    tracing::warn!(%peer, error = %e, "bad manifest");
                    let _ = self.ledger.update(&peer, |r, policy| {
                        let _ = r.bad_piece(policy, now_ms());
                    });
                    self.refused_by.insert(peer, format!("bad manifest: {e}"));
                    self.ask_manifest();
                    return Ok(Step::Continue);
                }
            },
            _ => {
                self.refused_by.insert(peer, "refused the manifest".into());
                self.ask_manifest();
                return Ok(Step::Continue);
            }
        };
        let out = self.config.out.path(&model);
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                action: "cannot create",
                path: dir.to_owned(),
                source,
            })?;
        }
        let store = match PartFile::open(manifest.clone(), &out)? {
            Opened::Complete => {
                tracing::info!(path = %out.display(), "the model is here already");
                let resumed = manifest.piece_count();
                sink.started(&model, &manifest, resumed);
                self.state = Some(Transfer {
                    meter: Meter::new(
                        manifest.file_size(),
                        resumed,
                        manifest.file_size(),
                        resumed,
                        mono_ms(),
                    ),
                    picker: Picker::new(0, None, &Default::default(), self.config.picker),
                    store: None,
                    manifest,
                    resumed,
                    rejected: 0,
                });
                return Ok(Step::Done(out));
            }
            Opened::Partial(store) => store,
        };
        let resumed = store.have().len() as u32;
        sink.started(&model, &manifest, resumed);
        let have_bytes: u64 = store
            .have()
            .iter()
            .filter_map(|p| manifest.piece_range(*p).ok())
            .map(|r| r.end - r.start)
            .sum();
        let picker = Picker::new(
            manifest.piece_count(),
            None,
            store.have(),
            self.config.picker,
        );
        self.state = Some(Transfer {
            meter: Meter::new(
                manifest.file_size(),
                manifest.piece_count(),
                have_bytes,
                resumed,
                mono_ms(),
            ),
            picker,
            store: Some(store),
            manifest,
            resumed,
            rejected: 0,
        });
        self.last_piece = Instant::now();
        let holders: Vec<PeerId> = self.holders.keys().copied().collect();
        for peer in holders {
            self.add_provider(peer);
        }
        if self.state.as_ref().is_some_and(|t| t.picker.is_complete()) {
            return self.finish();
        }
        Ok(Step::Continue)
    }

    /// Every piece is in: the whole file's check, then its name.
    fn finish(&mut self) -> Result<Step, FetchError> {
        let Some(t) = self.state.as_mut() else {
            return Ok(Step::Continue);
        };
        let Some(store) = t.store.as_mut() else {
            return Ok(Step::Continue);
        };
        match store.finish() {
            Ok(path) => Ok(Step::Done(path)),
            Err(StoreError::Corrupt(n)) => {
                // Pieces went bad on disk after their check: fetch them again
                // (the picker keeps its strikes and who failed what).
                tracing::warn!(
                    pieces = n,
                    "pieces failed the final check: fetching them again"
                );
                let lost: Vec<u32> = (0..t.manifest.piece_count())
                    .filter(|p| !store.have().contains(p))
                    .collect();
                for piece in &lost {
                    if let Ok(range) = t.manifest.piece_range(*piece) {
                        t.meter.lost(range.end - range.start);
                    }
                }
                t.picker.requeue(&lost);
                Ok(Step::Continue)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fills every provider's request slots, within the bandwidth cap.
    fn send_requests(&mut self) {
        let Some(model) = self.model_bytes() else {
            return;
        };
        let Some(t) = self.state.as_mut() else { return };
        let piece_size = u64::from(t.manifest.piece_size());
        loop {
            if let Some(cap) = self.cap.as_mut()
                && cap.wait_ms(piece_size, mono_ms()) > 0
            {
                return;
            }
            let Some((peer, piece)) = t.picker.next_request(mono_ms()) else {
                return;
            };
            if let Some(cap) = self.cap.as_mut() {
                cap.take(piece_size);
            }
            let id = self.swarm.behaviour_mut().weights.send_request(
                &peer,
                pb::WeightsRequest {
                    model_cid: model.clone(),
                    want: Some(Want::Piece(piece)),
                },
            );
            self.requests.insert(id, (peer, piece));
        }
    }

    fn tick(&mut self) -> Result<Step, FetchError> {
        // Until a bootstrap peer takes our handshake, dial them again now and then.
        if self.holders.is_empty() && Instant::now() >= self.next_redial {
            self.next_redial = Instant::now() + self.redial_backoff.next_delay();
            for (peer, addr) in self.bootstrap.clone() {
                if !self.swarm.is_connected(&peer)
                    && let Err(e) = self.swarm.dial(addr.clone())
                {
                    tracing::warn!(%addr, error = %e, "cannot dial");
                }
            }
        }
        // Rested peers go back to work (keeping their streak: one that
        // refuses again rests longer).
        let now = Instant::now();
        let rested: Vec<PeerId> = self
            .resting
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in rested {
            let in_picker = self
                .state
                .as_ref()
                .is_some_and(|t| t.picker.providers().any(|p| *p == peer));
            if !in_picker {
                self.add_provider(peer);
            }
        }
        self.query_providers();
        self.ask_manifest();
        // A capped download may take long for one piece: that is no stall.
        let stall = match (self.config.max_rate, self.state.as_ref()) {
            (Some(rate), Some(t)) => self.config.stall_timeout.max(Duration::from_secs_f64(
                2.0 * f64::from(t.manifest.piece_size()) / rate.max(1) as f64,
            )),
            _ => self.config.stall_timeout,
        };
        let Some(t) = self.state.as_mut() else {
            if self.started.elapsed() > stall {
                return Err(self.no_providers());
            }
            return Ok(Step::Continue);
        };
        for (peer, piece) in t.picker.expire(mono_ms()) {
            tracing::debug!(%peer, piece, "piece timed out: asking elsewhere");
            self.peers.entry(peer).or_default().failures += 1;
            self.requests.retain(|_, r| *r != (peer, piece));
        }
        if self.last_piece.elapsed() > stall {
            let nobody = t.picker.providers().next().is_none();
            return Err(if nobody {
                self.no_providers()
            } else {
                FetchError::Stalled(stall)
            });
        }
        Ok(Step::Continue)
    }

    fn no_providers(&self) -> FetchError {
        let Some(model) = self.model else {
            return FetchError::NoModel;
        };
        let missing = self.state.as_ref().map_or(0, |t| t.picker.missing().len());
        let detail = if self.refused_by.is_empty() {
            "no peer that holds it could be reached".to_owned()
        } else {
            self.refused_by
                .iter()
                .map(|(p, why)| format!("{p}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        FetchError::NoProviders {
            model,
            missing,
            detail,
        }
    }

    fn report(&self, path: PathBuf) -> FetchReport {
        let t = self.state.as_ref();
        let pieces = t.map_or(0, |t| t.manifest.piece_count());
        let sources = (0..pieces)
            .map(|p| {
                t.and_then(|t| t.picker.source_of(p))
                    .map_or_else(|| "resumed".to_owned(), |peer| peer.to_string())
            })
            .collect();
        FetchReport {
            model: self.model.map(|m| m.to_string()).unwrap_or_default(),
            path,
            bytes: t.map_or(0, |t| t.manifest.file_size()),
            pieces,
            resumed: t.map_or(0, |t| t.resumed),
            fetched: self.peers.values().map(|p| p.pieces).sum(),
            rejected: t.map_or(0, |t| t.rejected),
            seconds: self.started.elapsed().as_secs_f64(),
            peers: self.peers.values().cloned().collect(),
            sources,
        }
    }
}
