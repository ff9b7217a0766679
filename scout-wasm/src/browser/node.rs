//! The page's libp2p node: WebRTC-direct to the oracle (WebSocket when that
//! fails), the Shard handshake as a scout, and gossip. `RTCPeerConnection`
//! exists only on a page's main thread, so this runs there; the model runs
//! in the worker.
//!
//! JavaScript (and the browser tests) drive it through [`ScoutNode`].

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::{FutureExt, StreamExt};
use libp2p::core::upgrade::Version;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, Transport as _, noise};
use serde::Serialize;
use shared_proto::protocol::{CLAIM_PROTOCOL, TOPOLOGY_TOPIC, VERIFY_PROTOCOL, WORK_TOPIC};
use shared_proto::{Keypair, pb};
use wasm_bindgen::prelude::*;
use web_time::{Instant, SystemTime, UNIX_EPOCH};

use crate::behaviour::{ScoutBehaviour, ScoutBehaviourEvent};
use crate::dial::{BrowserTransport, browser_dial_order};
use crate::net::{self, Backoff, HandshakeVerdict, NetTimeouts};

/// Where the node is, for the page to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
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
    /// The node could not start (see `detail`).
    Failed,
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
}

/// What the node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The oracle's addresses, best first ([`browser_dial_order`]).
    pub connect: Vec<Multiaddr>,
    /// The draft model's content id.
    pub model_cid: Vec<u8>,
    /// What we tell the oracle about this machine.
    pub hardware: pb::HardwareInfo,
    /// Timeouts.
    pub timeouts: NetTimeouts,
}

/// A browser scout's network node, for JavaScript: made from the oracle's
/// listen addresses, it dials, handshakes, and redials until stopped.
#[wasm_bindgen]
pub struct ScoutNode {
    state: Rc<RefCell<NodeState>>,
    stop: Option<oneshot::Sender<()>>,
}

#[wasm_bindgen]
impl ScoutNode {
    /// Starts a node. `addresses`: the oracle's listen addresses as
    /// `/api/status` lists them; `model_cid`: hex of the draft model's content
    /// id; `gpu`: the WebGPU adapter's description (empty without one).
    #[wasm_bindgen(constructor)]
    pub fn new(
        addresses: Vec<String>,
        model_cid: String,
        gpu: String,
    ) -> Result<ScoutNode, JsError> {
        super::console::init();
        let connect = browser_dial_order(addresses.iter().map(String::as_str));
        if connect.is_empty() {
            return Err(JsError::new(
                "the oracle has no address a browser can dial (WebRTC-direct or WebSocket)",
            ));
        }
        let model_cid =
            hex::decode(model_cid.trim()).map_err(|e| JsError::new(&format!("model cid: {e}")))?;
        let hardware = pb::HardwareInfo {
            webgpu_enabled: !gpu.is_empty(),
            gpu_model: gpu.chars().take(64).collect(),
            cpu_cores: hardware_concurrency(),
            ..Default::default()
        };
        let config = NodeConfig {
            connect,
            model_cid,
            hardware,
            timeouts: NetTimeouts::default(),
        };
        let key = super::identity::load_or_create();
        let (node, future) = start(key, config).map_err(|e| JsError::new(&e))?;
        wasm_bindgen_futures::spawn_local(future);
        Ok(node)
    }

    /// The node's state, as JSON ([`NodeState`]).
    #[wasm_bindgen(js_name = stateJson)]
    pub fn state_json(&self) -> String {
        serde_json::to_string(&*self.state.borrow()).unwrap_or_default()
    }

    /// Closes the connection and stops.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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

/// Builds the node; the returned future runs it (spawn it on the page).
pub fn start(
    key: Keypair,
    config: NodeConfig,
) -> Result<(ScoutNode, impl std::future::Future<Output = ()>), String> {
    let oracle = match config.connect.first().and_then(|a| a.iter().last()) {
        Some(Protocol::P2p(peer)) => peer,
        _ => return Err("the oracle's address has no /p2p/ peer id".into()),
    };
    let swarm = build_swarm(&key, &config.timeouts)?;
    let state = Rc::new(RefCell::new(NodeState {
        peer_id: key.public().to_peer_id().to_string(),
        oracle: oracle.to_string(),
        phase: Phase::Dialling,
        transport: None,
        address: None,
        detail: None,
        banned_until_ms: None,
        retry_at_ms: None,
        connections: 0,
    }));
    let (stop_tx, stop_rx) = oneshot::channel();
    let node = Node {
        key,
        swarm,
        oracle,
        config,
        state: state.clone(),
        ready: false,
    };
    Ok((
        ScoutNode {
            state,
            stop: Some(stop_tx),
        },
        node.run(stop_rx),
    ))
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
    config: NodeConfig,
    state: Rc<RefCell<NodeState>>,
    /// The oracle accepted our handshake.
    ready: bool,
}

impl Node {
    async fn run(mut self, stop: oneshot::Receiver<()>) {
        for topic in [WORK_TOPIC, TOPOLOGY_TOPIC] {
            let _ = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&IdentTopic::new(topic));
        }
        let timeouts = &self.config.timeouts;
        let mut backoff = Backoff::new(timeouts.retry_min, timeouts.retry_max);
        // Each failed dial moves to the next address; a full round of
        // failures waits (doubling) before starting over.
        let mut next_address = 0usize;
        let mut redial_at = Some(Instant::now());
        let mut banned_until_ms = 0u64;
        let mut stop = stop.fuse();
        loop {
            if redial_at.is_some_and(|at| at <= Instant::now()) {
                redial_at = None;
                let addr = self.config.connect[next_address % self.config.connect.len()].clone();
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
            futures::select! {
                _ = stop => break,
                () = timer => continue,
                event = self.swarm.select_next_some() => {
                    if let Some(until) = self.event(event) {
                        banned_until_ms = banned_until_ms.max(until);
                    }
                    let lost = !self.swarm.is_connected(&self.oracle)
                        && self.swarm.network_info().connection_counters().num_pending_outgoing() == 0;
                    if lost && redial_at.is_none() {
                        self.ready = false;
                        // Try the next address at once, unless every one failed
                        // this round: then back off (and never before a ban ends).
                        let delay = if !next_address.is_multiple_of(self.config.connect.len())
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
            }
        }
        let oracle = self.oracle;
        let _ = self.swarm.disconnect_peer_id(oracle);
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
        self.update(|s| {
            s.phase = Phase::Stopped;
            s.retry_at_ms = None;
        });
    }

    fn update(&self, change: impl FnOnce(&mut NodeState)) {
        change(&mut self.state.borrow_mut());
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
                let hello = net::handshake_message(
                    &self.key,
                    pb::NodeType::Scout,
                    &[VERIFY_PROTOCOL, CLAIM_PROTOCOL],
                    Some(self.config.hardware.clone()),
                    vec![self.config.model_cid.clone()],
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
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } if peer_id == self.oracle => {
                if let Some(cause) = cause {
                    self.update(|s| s.detail = Some(format!("connection closed: {cause}")));
                }
                None
            }
            SwarmEvent::Behaviour(ScoutBehaviourEvent::Handshake(
                request_response::Event::Message {
                    peer,
                    message: request_response::Message::Response { response, .. },
                    ..
                },
            )) => self.handshake_reply(peer, response),
            SwarmEvent::Behaviour(ScoutBehaviourEvent::Handshake(
                request_response::Event::OutboundFailure { peer, error, .. },
            )) => {
                log::warn!("handshake with {peer} failed: {error}");
                self.update(|s| s.detail = Some(format!("handshake failed: {error}")));
                let _ = self.swarm.disconnect_peer_id(peer);
                None
            }
            SwarmEvent::Behaviour(ScoutBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                // Relayed on when well-formed; claims come with the model worker.
                let verdict = if message.data.len() <= shared_proto::GOSSIP_MAX_LEN {
                    MessageAcceptance::Accept
                } else {
                    MessageAcceptance::Reject
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
                None
            }
            _ => None,
        }
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
