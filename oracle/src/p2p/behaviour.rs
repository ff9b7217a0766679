//! The oracle's libp2p behaviour.
// The derive generates an event enum without docs.
#![allow(missing_docs)]

use libp2p::kad::{self, store::MemoryStore};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, connection_limits, gossipsub, identify, mdns, ping};
use scout_wasm::net::{
    self, ClaimCodec, CompleteCodec, HandshakeCodec, NetTimeouts, VerifyCodec, WeightsCodec,
};
use shared_proto::protocol::{
    CLAIM_PROTOCOL, COMPLETE_PROTOCOL, HANDSHAKE_PROTOCOL, VERIFY_PROTOCOL, WEIGHTS_PROTOCOL,
};

/// Kademlia's protocol id on the Shard network (its own DHT, not IPFS's).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shard/kad/1.0.0");

/// Everything an oracle speaks.
#[derive(NetworkBehaviour)]
pub struct OracleBehaviour {
    /// Caps on connections (total, per peer, pending).
    pub limits: connection_limits::Behaviour,
    /// Peer info exchange; listen addresses feed Kademlia.
    pub identify: identify::Behaviour,
    /// Keepalive and liveness.
    pub ping: ping::Behaviour,
    /// The three topics.
    pub gossipsub: gossipsub::Behaviour,
    /// Discovery.
    pub kad: kad::Behaviour<MemoryStore>,
    /// LAN discovery, when switched on.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Peers' handshakes (answered) and ours to oracles we dial.
    pub handshake: request_response::Behaviour<HandshakeCodec>,
    /// Scouts claiming work.
    pub claim: request_response::Behaviour<ClaimCodec>,
    /// Rounds sent to scouts.
    pub verify: request_response::Behaviour<VerifyCodec>,
    /// Leeches asking for answers.
    pub complete: request_response::Behaviour<CompleteCodec>,
    /// Manifests and pieces of the models we offer.
    pub weights: request_response::Behaviour<WeightsCodec>,
}

/// How often our provider records are published again; they expire after
/// [`PROVIDER_TTL`], so a peer that stops offering drops out of the DHT.
pub(super) const PROVIDER_REPUBLISH: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long a provider record lives without being published again.
pub(super) const PROVIDER_TTL: std::time::Duration = std::time::Duration::from_secs(4 * 3600);

impl OracleBehaviour {
    /// The behaviour for `key`.
    pub fn new(
        key: &libp2p::identity::Keypair,
        timeouts: &NetTimeouts,
        max_connections: u32,
        mdns_on: bool,
    ) -> Result<Self, String> {
        let peer = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(timeouts.request * 3);
        kad_config.set_provider_publication_interval(Some(PROVIDER_REPUBLISH));
        kad_config.set_provider_record_ttl(Some(PROVIDER_TTL));
        let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), kad_config);
        kad.set_mode(Some(kad::Mode::Server));
        let mdns = if mdns_on {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        Ok(OracleBehaviour {
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(max_connections))
                    .with_max_established_per_peer(Some(4))
                    .with_max_pending_incoming(Some(64)),
            ),
            identify: net::identify(key, concat!("shard-oracle/", env!("CARGO_PKG_VERSION"))),
            ping: net::ping(timeouts),
            gossipsub: net::gossipsub(key, timeouts)?,
            kad,
            mdns: mdns.into(),
            handshake: net::request_response(HANDSHAKE_PROTOCOL, ProtocolSupport::Full, timeouts),
            claim: net::request_response(CLAIM_PROTOCOL, ProtocolSupport::Inbound, timeouts),
            verify: net::request_response(VERIFY_PROTOCOL, ProtocolSupport::Outbound, timeouts),
            complete: net::request_response(COMPLETE_PROTOCOL, ProtocolSupport::Inbound, timeouts),
            weights: net::request_response(WEIGHTS_PROTOCOL, ProtocolSupport::Inbound, timeouts),
        })
    }
}
