//! The scout's and the leech's libp2p behaviours, the same on every target.
// The derive generates an event enum without docs.
#![allow(missing_docs)]

use libp2p::request_response::ProtocolSupport;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, ping, request_response};
use shared_proto::protocol::{
    CLAIM_PROTOCOL, COMPLETE_PROTOCOL, HANDSHAKE_PROTOCOL, VERIFY_PROTOCOL,
};

use crate::net::{self, ClaimCodec, CompleteCodec, HandshakeCodec, NetTimeouts, VerifyCodec};

/// What a scout speaks: it dials (handshake), claims work, answers rounds,
/// and listens to gossip.
#[derive(NetworkBehaviour)]
pub struct ScoutBehaviour {
    /// Peer info exchange.
    pub identify: identify::Behaviour,
    /// Keepalive and liveness.
    pub ping: ping::Behaviour,
    /// `shard-work`, `shard-topology`, `shard-work-result`.
    pub gossipsub: gossipsub::Behaviour,
    /// Sends our handshake to the oracles we connect to.
    pub handshake: request_response::Behaviour<HandshakeCodec>,
    /// Claims announced work.
    pub claim: request_response::Behaviour<ClaimCodec>,
    /// Answers the oracle's rounds with drafts.
    pub verify: request_response::Behaviour<VerifyCodec>,
}

impl ScoutBehaviour {
    /// The behaviour for `key` with `timeouts`.
    pub fn new(key: &libp2p::identity::Keypair, timeouts: &NetTimeouts) -> Result<Self, String> {
        Ok(ScoutBehaviour {
            identify: net::identify(key, concat!("shard-scout/", env!("CARGO_PKG_VERSION"))),
            ping: net::ping(timeouts),
            gossipsub: net::gossipsub(key, timeouts)?,
            handshake: net::request_response(
                HANDSHAKE_PROTOCOL,
                ProtocolSupport::Outbound,
                timeouts,
            ),
            claim: net::request_response(CLAIM_PROTOCOL, ProtocolSupport::Outbound, timeouts),
            verify: net::request_response(VERIFY_PROTOCOL, ProtocolSupport::Inbound, timeouts),
        })
    }
}

/// What a leech speaks: it dials, handshakes and asks.
#[derive(NetworkBehaviour)]
pub struct LeechBehaviour {
    /// Peer info exchange.
    pub identify: identify::Behaviour,
    /// Keepalive.
    pub ping: ping::Behaviour,
    /// Our handshake to the oracle.
    pub handshake: request_response::Behaviour<HandshakeCodec>,
    /// Completions asked.
    pub complete: request_response::Behaviour<CompleteCodec>,
}

impl LeechBehaviour {
    /// The behaviour for `key` with `timeouts`.
    pub fn new(key: &libp2p::identity::Keypair, timeouts: &NetTimeouts) -> Result<Self, String> {
        Ok(LeechBehaviour {
            identify: net::identify(key, concat!("shard-leech/", env!("CARGO_PKG_VERSION"))),
            ping: net::ping(timeouts),
            handshake: net::request_response(
                HANDSHAKE_PROTOCOL,
                ProtocolSupport::Outbound,
                timeouts,
            ),
            complete: net::request_response(COMPLETE_PROTOCOL, ProtocolSupport::Outbound, timeouts),
        })
    }
}
