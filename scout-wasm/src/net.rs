//! The libp2p pieces every Shard node shares, oracle and scout alike: the
//! timeouts (one config for all of them), the request-response protocols with
//! their codecs, gossipsub with strict signing and application validation,
//! identify, ping and its failure policy, and the handshake's rules.
//!
//! Nothing here picks a transport: the native runtimes (the oracle, the
//! desktop scout) add TCP, QUIC, WebSocket and WebRTC; the browser adds its own.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::swarm::ConnectionId;
use libp2p::{PeerId, StreamProtocol, gossipsub, identify, ping, request_response};
use shared_proto::pb;
use shared_proto::protocol::{self, ProtocolVersion};
use shared_proto::{PublicKey, ShardCodec, Validate};
use thiserror::Error;

/// Every timeout and limit of the network layer, in one place.
#[derive(Debug, Clone, PartialEq)]
pub struct NetTimeouts {
    /// A connection with no open stream is closed after this.
    pub idle_connection: Duration,
    /// A request (handshake, claim, round) without an answer fails after this.
    pub request: Duration,
    /// A p2p completion (a whole answer, queue wait included) fails after this.
    pub completion: Duration,
    /// A model piece (up to 16 MiB) or manifest fails after this: long
    /// enough for a 16 MiB piece over a slow link.
    pub piece: Duration,
    /// A connection whose handshake has not completed is closed after this.
    pub handshake: Duration,
    /// Ping every connection this often.
    pub ping_interval: Duration,
    /// A ping without a pong fails after this.
    pub ping_timeout: Duration,
    /// Consecutive ping failures that close a connection.
    pub ping_max_failures: u32,
    /// Gossipsub's heartbeat.
    pub gossip_heartbeat: Duration,
    /// How often a node publishes its topology.
    pub topology_interval: Duration,
    /// First wait before retrying a failed dial or bootstrap; doubles each time.
    pub retry_min: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
    /// Clock difference tolerated between peers when checking TTLs.
    pub max_clock_skew: Duration,
    /// Streams a peer may open on one connection (yamux).
    pub max_streams_per_connection: usize,
    /// Concurrent requests per request-response protocol and connection.
    pub max_concurrent_requests: usize,
}

impl Default for NetTimeouts {
    fn default() -> Self {
        NetTimeouts {
            idle_connection: Duration::from_secs(300),
            request: Duration::from_secs(10),
            completion: Duration::from_secs(300),
            piece: Duration::from_secs(120),
            handshake: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(10),
            ping_max_failures: 2,
            gossip_heartbeat: Duration::from_secs(1),
            topology_interval: Duration::from_secs(30),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            max_clock_skew: Duration::from_secs(30),
            max_streams_per_connection: 256,
            max_concurrent_requests: 64,
        }
    }
}

/// `/shard/1.0.0/handshake`: [`pb::HandshakeMessage`] → [`pb::HandshakeReply`].
pub type HandshakeCodec = ShardCodec<pb::HandshakeMessage, pb::HandshakeReply>;
/// `/shard/1.0.0/claim`: [`pb::ClaimRequest`] → [`pb::ClaimResponse`].
pub type ClaimCodec = ShardCodec<pb::ClaimRequest, pb::ClaimResponse>;
/// `/shard/1.0.0/verify`: [`pb::DraftRequest`] → [`pb::WorkResult`].
pub type VerifyCodec = ShardCodec<pb::DraftRequest, pb::WorkResult>;
/// `/shard/1.0.0/complete`: [`pb::CompletionRequest`] → [`pb::CompletionResponse`].
pub type CompleteCodec = ShardCodec<pb::CompletionRequest, pb::CompletionResponse>;

/// `/shard/1.0.0/weights`: [`pb::WeightsRequest`] → [`pb::WeightsResponse`].
pub type WeightsCodec = ShardCodec<pb::WeightsRequest, pb::WeightsResponse>;

/// A request-response behaviour for `protocol`, in the direction(s) `support`.
pub fn request_response<Req, Resp>(
    protocol: StreamProtocol,
    support: request_response::ProtocolSupport,
    timeouts: &NetTimeouts,
) -> request_response::Behaviour<ShardCodec<Req, Resp>>
where
    Req: shared_proto::WireMessage + Send + 'static,
    Resp: shared_proto::WireMessage + Send + 'static,
{
    let timeout = if protocol == shared_proto::protocol::COMPLETE_PROTOCOL {
        timeouts.completion
    } else if protocol == shared_proto::protocol::WEIGHTS_PROTOCOL {
        timeouts.piece
    } else if protocol == shared_proto::protocol::VERIFY_PROTOCOL {
        // A draft round may take as long as its deadline (up to a minute for
        // a slow scout, e.g. WebGPU on a software adapter); the oracle's
        // scheduler enforces the deadline itself, so the stream must not
        // give up first.
        timeouts.request + Duration::from_millis(shared_proto::limits::MAX_DEADLINE_MS.into())
    } else {
        timeouts.request
    };
    request_response::Behaviour::with_codec(
        ShardCodec::new(),
        [(protocol, support)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(timeouts.max_concurrent_requests),
    )
}

/// Gossipsub with strict signing (every message signed by its author, checked
/// on arrival), the size limit of gossip frames, and validation by the
/// application: nothing is forwarded before the node has checked it and called
/// `report_message_validation_result`.
pub fn gossipsub(
    key: &libp2p::identity::Keypair,
    timeouts: &NetTimeouts,
) -> Result<gossipsub::Behaviour, String> {
    let config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(timeouts.gossip_heartbeat)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(shared_proto::GOSSIP_MAX_LEN + 1024)
        .build()
        .map_err(|e| e.to_string())?;
    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
        .map_err(|e| e.to_string())
}

/// Identify, announcing the protocol version and what the node is.
pub fn identify(key: &libp2p::identity::Keypair, agent: &str) -> identify::Behaviour {
    identify::Behaviour::new(
        identify::Config::new(
            format!("/shard/{}", protocol::PROTOCOL_VERSION),
            key.public(),
        )
        .with_agent_version(agent.to_owned()),
    )
}

/// Ping on every connection.
pub fn ping(timeouts: &NetTimeouts) -> ping::Behaviour {
    ping::Behaviour::new(
        ping::Config::new()
            .with_interval(timeouts.ping_interval)
            .with_timeout(timeouts.ping_timeout),
    )
}

/// Yamux with the stream limit.
pub fn yamux(timeouts: &NetTimeouts) -> libp2p::yamux::Config {
    let mut config = libp2p::yamux::Config::default();
    #[allow(deprecated)]
    config.set_max_num_streams(timeouts.max_streams_per_connection);
    config
}

/// Counts consecutive ping failures per connection; says when to close one.
#[derive(Debug, Default)]
pub struct PingPolicy {
    failures: HashMap<ConnectionId, u32>,
}

impl PingPolicy {
    /// Records a ping result; `true` means the connection should be closed.
    pub fn record(&mut self, connection: ConnectionId, ok: bool, max_failures: u32) -> bool {
        if ok {
            self.failures.remove(&connection);
            return false;
        }
        let n = self.failures.entry(connection).or_insert(0);
        *n += 1;
        *n >= max_failures.max(1)
    }

    /// Forgets a closed connection.
    pub fn closed(&mut self, connection: ConnectionId) {
        self.failures.remove(&connection);
    }
}

/// Why a peer's handshake is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The peer speaks another major version.
    #[error("protocol version {theirs} is not compatible with ours ({ours})")]
    Version {
        /// Theirs.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// The key in the handshake is not the key of the connection's peer id.
    #[error("the handshake's key is not the key of peer {0}")]
    KeyMismatch(String),
    /// The message itself is malformed.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// The peer's role is not one this node talks to.
    #[error("node type {0} is not accepted here")]
    Role(i32),
    /// The peer is banned for now.
    #[error("banned until {until_ms} (unix ms)")]
    Banned {
        /// End of the ban.
        until_ms: u64,
    },
    /// The peer sends too many requests.
    #[error("too many requests: slow down")]
    RateLimited,
}

impl HandshakeError {
    /// The error code of seed 004 for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            HandshakeError::KeyMismatch(_) => "UNAUTHENTICATED",
            HandshakeError::Role(_) | HandshakeError::Banned { .. } => "PERMISSION_DENIED",
            HandshakeError::RateLimited => "UNAVAILABLE",
            _ => "INVALID_ARGUMENT",
        }
    }

    /// The end of a ban (unix ms) from a refusal's detail text, as
    /// [`HandshakeError::Banned`] writes it: a banned peer waits that long
    /// before it dials again.
    pub fn ban_end(detail: &str) -> Option<u64> {
        detail
            .strip_prefix("banned until ")?
            .split(' ')
            .next()?
            .parse()
            .ok()
    }
}

/// Checks a handshake received from `peer` (already size-checked by the codec).
pub fn check_handshake(peer: &PeerId, msg: &pb::HandshakeMessage) -> Result<(), HandshakeError> {
    msg.validate()
        .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    let theirs: ProtocolVersion = msg
        .protocol_version
        .parse()
        .map_err(|e: protocol::ProtocolIdError| HandshakeError::Malformed(e.to_string()))?;
    if !ProtocolVersion::CURRENT.is_compatible_with(&theirs) {
        return Err(HandshakeError::Version {
            theirs: theirs.to_string(),
            ours: ProtocolVersion::CURRENT.to_string(),
        });
    }
    let key = PublicKey::try_decode_protobuf(&msg.public_key)
        .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    if key.to_peer_id() != *peer {
        return Err(HandshakeError::KeyMismatch(peer.to_string()));
    }
    Ok(())
}

/// The refusal sent for `error`.
pub fn refusal(error: &HandshakeError) -> pb::HandshakeReply {
    pb::HandshakeReply {
        ack: Some(ack_error(error.code(), &error.to_string())),
        handshake: None,
    }
}

/// An `Ack` that says no, with one error of `code`.
pub fn ack_error(code: &str, message: &str) -> pb::Ack {
    let message: String = message.chars().take(512).collect();
    pb::Ack {
        ok: false,
        detail: message.clone(),
        errors: vec![pb::ErrorDetail {
            code: code.to_owned(),
            message,
            field: String::new(),
        }],
    }
}

/// An `Ack` that says yes.
pub fn ack_ok() -> pb::Ack {
    pb::Ack {
        ok: true,
        ..Default::default()
    }
}

/// This node's handshake.
pub fn handshake_message(
    key: &libp2p::identity::Keypair,
    node_type: pb::NodeType,
    supported_protocols: &[StreamProtocol],
    hardware: Option<pb::HardwareInfo>,
    model_cids: Vec<Vec<u8>>,
    certificate: Option<pb::OracleCertificate>,
) -> pb::HandshakeMessage {
    pb::HandshakeMessage {
        protocol_version: protocol::PROTOCOL_VERSION.to_owned(),
        node_type: node_type as i32,
        supported_protocols: supported_protocols.iter().map(|p| p.to_string()).collect(),
        hardware_info: hardware,
        public_key: key.public().encode_protobuf(),
        model_cids,
        oracle_certificate: certificate,
    }
}

/// Checks a `shard-work` announcement a scout received: a well-formed,
/// fresh, first-seen announcement gives its assignment; otherwise how
/// gossipsub should treat the message (malformed: reject; stale or seen:
/// ignore). Pure apart from `replay`, so every scout shares it.
pub fn check_work_gossip(
    data: &[u8],
    now_ms: u64,
    max_skew: Duration,
    replay: &mut shared_proto::ReplayWindow<Vec<u8>>,
) -> Result<pb::WorkAssignment, gossipsub::MessageAcceptance> {
    use gossipsub::MessageAcceptance;
    let work: pb::GossipWorkMessage =
        shared_proto::frame::decode(data).map_err(|_| MessageAcceptance::Reject)?;
    let skew = max_skew.as_millis() as u64;
    let expires = shared_proto::check_fresh(work.issued_at_ms, work.ttl, now_ms, skew)
        .map_err(|_| MessageAcceptance::Ignore)?;
    let assignment = work.assignment.ok_or(MessageAcceptance::Reject)?;
    replay
        .check_and_insert(assignment.prompt_cid.clone(), expires, now_ms)
        .map_err(|_| MessageAcceptance::Ignore)?;
    Ok(assignment)
}

/// The claim a scout sends for an announced assignment.
pub fn claim_request(assignment: &pb::WorkAssignment) -> pb::ClaimRequest {
    pb::ClaimRequest {
        work_cid: assignment.prompt_cid.clone(),
        model_cid: assignment.model_cid.clone(),
    }
}

/// How gossipsub should treat a message on a topic a scout only relays
/// (topology, results): passed on when it fits a gossip frame.
pub fn relay_verdict(data: &[u8]) -> gossipsub::MessageAcceptance {
    if data.len() <= shared_proto::GOSSIP_MAX_LEN {
        gossipsub::MessageAcceptance::Accept
    } else {
        gossipsub::MessageAcceptance::Reject
    }
}

/// What a scout or leech makes of an oracle's handshake reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeVerdict {
    /// An oracle, with a valid handshake, took ours.
    Accepted,
    /// A valid handshake, but not from an oracle.
    NotAnOracle(i32),
    /// The peer's own handshake does not check out.
    Invalid(String),
    /// The oracle refused ours; banned until `banned_until_ms` when it says so.
    Refused {
        /// The oracle's reason.
        detail: String,
        /// The ban's end (unix ms), when the refusal is a ban.
        banned_until_ms: Option<u64>,
    },
}

/// Judges `reply`, from `peer`, to our handshake. Pure: every client shares it.
pub fn handshake_verdict(peer: &PeerId, reply: pb::HandshakeReply) -> HandshakeVerdict {
    let ack = reply.ack.unwrap_or_default();
    match reply.handshake.filter(|_| ack.ok) {
        Some(h) => match check_handshake(peer, &h) {
            Ok(()) if h.node_type == pb::NodeType::Oracle as i32 => HandshakeVerdict::Accepted,
            Ok(()) => HandshakeVerdict::NotAnOracle(h.node_type),
            Err(e) => HandshakeVerdict::Invalid(e.to_string()),
        },
        None => HandshakeVerdict::Refused {
            banned_until_ms: HandshakeError::ban_end(&ack.detail),
            detail: ack.detail,
        },
    }
}

/// The hardware of this machine, as far as a process can tell.
pub fn local_hardware() -> pb::HardwareInfo {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    pb::HardwareInfo {
        cpu_cores: i32::try_from(cores).unwrap_or(i32::MAX).min(4096),
        ..Default::default()
    }
}

/// Doubling waits between `min` and `max`, for redials and bootstrap retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max: max.max(min),
        }
    }

    /// The wait before the next try; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    #[test]
    fn handshakes_are_checked_against_the_connection_peer() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let msg = handshake_message(&key, pb::NodeType::Scout, &[], None, vec![], None);
        assert_eq!(check_handshake(&peer, &msg), Ok(()));
        let other = Keypair::generate_ed25519().public().to_peer_id();
        assert!(matches!(
            check_handshake(&other, &msg),
            Err(HandshakeError::KeyMismatch(_))
        ));
        let mut future = msg.clone();
        future.protocol_version = "2.0.0".into();
        assert!(matches!(
            check_handshake(&peer, &future),
            Err(HandshakeError::Version { .. })
        ));
        let mut minor = msg;
        minor.protocol_version = "1.4.0".into();
        assert_eq!(check_handshake(&peer, &minor), Ok(()));
        let reply = refusal(&HandshakeError::KeyMismatch(peer.to_string()));
        reply.validate().unwrap();
        assert_eq!(reply.ack.unwrap().errors[0].code, "UNAUTHENTICATED");
    }

    #[test]
    fn a_ban_refusal_tells_when_it_ends() {
        let reply = refusal(&HandshakeError::Banned {
            until_ms: 1_800_000_123_456,
        });
        let ack = reply.ack.unwrap();
        assert_eq!(ack.errors[0].code, "PERMISSION_DENIED");
        assert_eq!(
            HandshakeError::ban_end(&ack.detail),
            Some(1_800_000_123_456)
        );
        assert_eq!(
            HandshakeError::ban_end("too many requests: slow down"),
            None
        );
        assert_eq!(HandshakeError::ban_end("banned until soon"), None);
    }

    #[test]
    fn ping_failures_close_a_connection_after_the_limit() {
        let mut p = PingPolicy::default();
        let c = ConnectionId::new_unchecked(1);
        assert!(!p.record(c, false, 3));
        assert!(!p.record(c, false, 3));
        assert!(!p.record(c, true, 3));
        assert!(!p.record(c, false, 3));
        assert!(!p.record(c, false, 3));
        assert!(p.record(c, false, 3));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }
}
