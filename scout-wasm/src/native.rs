//! The desktop scout: [`crate::round::Scout`] behind a libp2p swarm with the
//! native transports (TCP, QUIC, WebSocket, WebRTC-direct), connected to one
//! oracle, redialling with backoff when the connection drops, until told to
//! stop. `oracle scout` runs this; so do the tests, many at a time.

use std::collections::HashMap;
use std::future::Future;

use futures::{FutureExt, StreamExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, Transport, noise, ping, tcp};
use shared_model::backend::Backend;
use shared_proto::protocol::{CLAIM_PROTOCOL, TOPOLOGY_TOPIC, VERIFY_PROTOCOL, WORK_TOPIC};
use shared_proto::{Keypair, ReplayWindow, Validate, pb};
use thiserror::Error;
use web_time::{Instant, SystemTime, UNIX_EPOCH};

use crate::behaviour::{ScoutBehaviour, ScoutBehaviourEvent};
use crate::net::{self, Backoff, HandshakeVerdict, NetTimeouts, PingPolicy};
use crate::round::{Scout, ScoutStats};

/// A session without a round for this long is over for the scout.
const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Where and how a desktop scout connects.
#[derive(Debug, Clone)]
pub struct ScoutConfig {
    /// The oracle's address, ending in `/p2p/<peer id>`.
    pub connect: Multiaddr,
    /// Every timeout.
    pub timeouts: NetTimeouts,
    /// Content id of the draft model this scout holds (work for another
    /// model is not claimed).
    pub model_cid: Vec<u8>,
}

/// Why a scout stopped before it was told to.
#[derive(Debug, Error)]
pub enum ScoutRunError {
    /// The address has no `/p2p/<peer id>`.
    #[error("the address {0} does not end in /p2p/<peer id>")]
    NoPeerId(Multiaddr),
    /// The libp2p node could not be built.
    #[error("cannot start the libp2p node: {0}")]
    Build(String),
}

/// Picks rustls's crypto provider for the process (QUIC, WebRTC's DTLS).
/// libp2p enables two, so rustls cannot choose alone and would panic at the
/// first handshake. Call before building a swarm; calling again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the scout until `shutdown` resolves; returns its counters.
pub async fn run<B: Backend>(
    key: Keypair,
    scout: Scout<B>,
    config: ScoutConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ScoutStats, ScoutRunError> {
    let oracle = match config.connect.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => return Err(ScoutRunError::NoPeerId(config.connect.clone())),
    };
    install_crypto_provider();
    let mut swarm = build_swarm(&key, &config.timeouts, ScoutBehaviour::new)?;
    listen_for_webrtc(&mut swarm, &config.connect)?;
    let mut node = Node {
        key,
        swarm,
        scout,
        oracle,
        config,
        ready: false,
        claims: HashMap::new(),
        pending: Vec::new(),
        replay: ReplayWindow::new(4096),
        ping: PingPolicy::default(),
        banned_until_ms: 0,
    };
    for topic in [WORK_TOPIC, TOPOLOGY_TOPIC] {
        let _ = node
            .swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(topic));
    }
    let mut backoff = Backoff::new(
        node.config.timeouts.retry_min,
        node.config.timeouts.retry_max,
    );
    let mut redial_at = Some(Instant::now());
    let mut shutdown = std::pin::pin!(shutdown.fuse());
    loop {
        if let Some(at) = redial_at.filter(|at| *at <= Instant::now()) {
            let _ = at;
            redial_at = None;
            tracing::info!(addr = %node.config.connect, "dialling the oracle");
            if let Err(e) = node.swarm.dial(node.config.connect.clone()) {
                tracing::warn!(error = %e, "dial failed");
                redial_at = Some(Instant::now() + backoff.next_delay());
            }
        }
        let wait = redial_at.map_or(std::time::Duration::from_secs(3600), |at| {
            at.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => continue,
            event = node.swarm.select_next_some() => {
                let lost = node.event(event);
                // Drain what else is ready, so rounds that arrived together
                // are drafted in one batch.
                let mut lost = lost;
                for _ in 0..64 {
                    match node.swarm.select_next_some().now_or_never() {
                        Some(event) => lost |= node.event(event),
                        None => break,
                    }
                }
                node.answer_rounds();
                node.scout.release_idle(SESSION_IDLE);
                if node.ready && lost {
                    node.ready = false;
                }
                if lost && redial_at.is_none() && !node.swarm.is_connected(&node.oracle) {
                    node.scout.release_all();
                    // Dialling a banned-from oracle again only earns refusals.
                    let ban = std::time::Duration::from_millis(
                        node.banned_until_ms.saturating_sub(now_ms()),
                    );
                    let delay = backoff.next_delay().max(ban);
                    tracing::info!(retry_in_s = delay.as_secs_f64(), "lost the oracle");
                    redial_at = Some(Instant::now() + delay);
                }
                if node.ready {
                    backoff.reset();
                }
            }
        }
    }
    tracing::info!(stats = ?node.scout.stats(), "scout stopped");
    Ok(node.scout.stats())
}

/// libp2p-webrtc dials from the UDP socket of a listener: a node that
/// connects over WebRTC-direct listens on an ephemeral port first.
pub fn listen_for_webrtc<Bh: NetworkBehaviour>(
    swarm: &mut Swarm<Bh>,
    connect: &Multiaddr,
) -> Result<(), ScoutRunError> {
    if !connect.iter().any(|p| matches!(p, Protocol::WebRTCDirect)) {
        return Ok(());
    }
    // ICE pairs candidates of the same kind: a loopback oracle needs a
    // loopback socket here.
    let ip = match connect.iter().next() {
        Some(Protocol::Ip6(ip)) if ip.is_loopback() => Protocol::Ip6(ip),
        Some(Protocol::Ip6(_)) => Protocol::Ip6(std::net::Ipv6Addr::UNSPECIFIED),
        Some(Protocol::Ip4(ip)) if ip.is_loopback() => Protocol::Ip4(ip),
        _ => Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let any = Multiaddr::empty()
        .with(ip)
        .with(Protocol::Udp(0))
        .with(Protocol::WebRTCDirect);
    swarm
        .listen_on(any)
        .map(|_| ())
        .map_err(|e| ScoutRunError::Build(e.to_string()))
}

/// A swarm with every native transport (TCP, QUIC, WebRTC-direct, DNS,
/// WebSocket) around the behaviour `behaviour` makes.
pub fn build_swarm<Bh: NetworkBehaviour>(
    key: &Keypair,
    timeouts: &NetTimeouts,
    behaviour: impl FnOnce(&Keypair, &NetTimeouts) -> Result<Bh, String>,
) -> Result<Swarm<Bh>, ScoutRunError> {
    let err = |e: &dyn std::fmt::Display| ScoutRunError::Build(e.to_string());
    let (t1, t2, t3) = (timeouts.clone(), timeouts.clone(), timeouts.clone());
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
            // A scout only dials: its certificate need not be stable.
            let cert = libp2p_webrtc::tokio::Certificate::generate(&mut rand::rng())?;
            Ok(libp2p_webrtc::tokio::Transport::new(key.clone(), cert)
                .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn))))
        })
        .map_err(|e| err(&e))?
        .with_dns()
        .map_err(|e| err(&e))?;
    let swarm = futures::executor::block_on(
        swarm.with_websocket(noise::Config::new, move || net::yamux(&t2)),
    )
    .map_err(|e| err(&e))?
    .with_behaviour(|key| behaviour(key, &t3).map_err(Into::into))
    .map_err(|e| err(&e))?
    .with_swarm_config(|c| c.with_idle_connection_timeout(timeouts.idle_connection))
    .build();
    Ok(swarm)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Node<B: Backend> {
    key: Keypair,
    swarm: Swarm<ScoutBehaviour>,
    scout: Scout<B>,
    oracle: PeerId,
    config: ScoutConfig,
    /// The oracle accepted our handshake.
    ready: bool,
    /// Claims in flight: request → work id.
    claims: HashMap<OutboundRequestId, Vec<u8>>,
    /// Rounds waiting to be drafted.
    pending: Vec<(pb::DraftRequest, ResponseChannel<pb::WorkResult>)>,
    replay: ReplayWindow<Vec<u8>>,
    ping: PingPolicy,
    /// The oracle banned us until then (unix ms; 0: not banned).
    banned_until_ms: u64,
}

impl<B: Backend> Node<B> {
    /// Handles one event; `true` when a connection to the oracle closed.
    fn event(&mut self, event: SwarmEvent<ScoutBehaviourEvent>) -> bool {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == self.oracle => {
                tracing::info!(%peer_id, "connected; sending our handshake");
                let hello = net::handshake_message(
                    &self.key,
                    pb::NodeType::Scout,
                    &[VERIFY_PROTOCOL, CLAIM_PROTOCOL],
                    Some(net::local_hardware()),
                    vec![self.config.model_cid.clone()],
                    None,
                );
                self.swarm
                    .behaviour_mut()
                    .handshake
                    .send_request(&peer_id, hello);
                false
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.ping.closed(connection_id);
                peer_id == self.oracle && num_established == 0
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::warn!(?peer_id, %error, "cannot reach the oracle");
                peer_id.is_none_or(|p| p == self.oracle)
            }
            SwarmEvent::Behaviour(event) => {
                self.behaviour(event);
                false
            }
            _ => false,
        }
    }

    fn behaviour(&mut self, event: ScoutBehaviourEvent) {
        match event {
            ScoutBehaviourEvent::Handshake(request_response::Event::Message {
                peer,
                message: request_response::Message::Response { response, .. },
                ..
            }) => self.handshake_reply(peer, response),
            ScoutBehaviourEvent::Handshake(request_response::Event::OutboundFailure {
                peer,
                error,
                ..
            }) => {
                tracing::warn!(%peer, %error, "handshake failed");
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
                    match self.scout.claimed(&work, &response) {
                        Ok(session) => tracing::info!(session, "claimed work"),
                        Err(e) => tracing::debug!(error = %e, "claim not taken"),
                    }
                }
            }
            ScoutBehaviourEvent::Claim(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                self.claims.remove(&request_id);
                tracing::debug!(%error, "claim failed");
            }
            ScoutBehaviourEvent::Verify(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => self.round_request(peer, request, channel),
            ScoutBehaviourEvent::Verify(request_response::Event::InboundFailure {
                error, ..
            }) => tracing::debug!(%error, "round request failed"),
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
            ScoutBehaviourEvent::Ping(ping::Event {
                connection, result, ..
            }) => self.ping_result(connection, result.is_ok()),
            _ => {}
        }
    }

    fn round_request(
        &mut self,
        peer: PeerId,
        request: pb::DraftRequest,
        channel: ResponseChannel<pb::WorkResult>,
    ) {
        // Anyone else's round is dropped unanswered.
        if peer == self.oracle && self.ready {
            self.pending.push((request, channel));
        }
    }

    fn ping_result(&mut self, connection: libp2p::swarm::ConnectionId, ok: bool) {
        if self
            .ping
            .record(connection, ok, self.config.timeouts.ping_max_failures)
        {
            tracing::warn!("ping failed repeatedly: closing the connection");
            self.swarm.close_connection(connection);
        }
    }

    fn handshake_reply(&mut self, peer: PeerId, reply: pb::HandshakeReply) {
        match net::handshake_verdict(&peer, reply) {
            HandshakeVerdict::Accepted => {
                tracing::info!(%peer, "handshake accepted: drafting for this oracle");
                self.ready = true;
                return;
            }
            HandshakeVerdict::NotAnOracle(node_type) => {
                tracing::warn!(%peer, node_type, "the peer is not an oracle");
            }
            HandshakeVerdict::Invalid(error) => {
                tracing::warn!(%peer, %error, "the oracle's handshake is bad");
            }
            HandshakeVerdict::Refused {
                banned_until_ms: Some(until_ms),
                ..
            } => {
                let wait_s = until_ms.saturating_sub(now_ms()) / 1000;
                tracing::warn!(%peer, wait_s, "banned by the oracle: not dialling it again before the ban ends");
                self.banned_until_ms = until_ms;
            }
            HandshakeVerdict::Refused { detail, .. } => {
                tracing::warn!(%peer, %detail, "the oracle refused our handshake");
            }
        }
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Checks a gossip message and claims work that suits us.
    fn gossip(&mut self, message: &gossipsub::Message) -> MessageAcceptance {
        if message.topic != IdentTopic::new(WORK_TOPIC).hash() {
            return net::relay_verdict(&message.data);
        }
        let assignment = match net::check_work_gossip(
            &message.data,
            now_ms(),
            self.config.timeouts.max_clock_skew,
            &mut self.replay,
        ) {
            Ok(a) => a,
            Err(verdict) => return verdict,
        };
        let from_our_oracle = message.source == Some(self.oracle);
        if from_our_oracle
            && self.ready
            && assignment.model_cid == self.config.model_cid
            && self.claims.len() < self.scout.room()
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

    /// Drafts every waiting round in one batch and answers each.
    fn answer_rounds(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        // A round can overtake the answer to our claim (another stream): hold
        // it until the claim's answer is in.
        let (waiting, ready): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(r, _)| {
            !self.scout.holds(r.session_id) && self.claims.values().any(|w| *w == r.work_cid)
        });
        self.pending = waiting;
        let (requests, channels): (Vec<_>, Vec<_>) = ready
            .into_iter()
            .filter(|(r, _)| r.validate().is_ok())
            .unzip();
        let answers = self.scout.answer(&requests);
        for ((request, channel), answer) in requests.iter().zip(channels).zip(answers) {
            match answer {
                Ok(result) => {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .verify
                        .send_response(channel, result);
                }
                Err(e) => {
                    // Dropping the channel tells the oracle: no drafts this round.
                    tracing::debug!(session = request.session_id, error = %e, "round not drafted");
                    if matches!(
                        e,
                        crate::round::RoundError::OutOfStep { .. }
                            | crate::round::RoundError::TooLong(_)
                    ) {
                        self.scout.release(request.session_id);
                    }
                }
            }
        }
    }
}
