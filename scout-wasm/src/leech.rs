//! The desktop leech: asks an oracle for one completion over
//! `/shard/1.0.0/complete` and returns the answer. `oracle ask` runs this.
//!
//! A leech handshakes as [`pb::NodeType::Leech`] with the identity it is given.
//! Giving it a scout's key makes the request a contributor's: the oracle
//! queues it ahead of others while that scout has draft credit there.

use futures::StreamExt;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use shared_proto::protocol::COMPLETE_PROTOCOL;
use shared_proto::{Keypair, pb};
use thiserror::Error;

use crate::behaviour::{LeechBehaviour, LeechBehaviourEvent};
use crate::native::{ScoutRunError, build_swarm, install_crypto_provider, listen_for_webrtc};
use crate::net::{self, NetTimeouts};

/// Why no answer came.
#[derive(Debug, Error)]
pub enum LeechError {
    /// The node could not start, or the address is unusable.
    #[error(transparent)]
    Start(#[from] ScoutRunError),
    /// The oracle could not be reached.
    #[error("cannot reach the oracle: {0}")]
    Unreachable(String),
    /// The oracle refused our handshake, or is not an oracle.
    #[error("the oracle refused us: {0}")]
    Refused(String),
    /// The request failed on the way (timeout, closed connection, bad frame).
    #[error("the request failed: {0}")]
    Failed(String),
}

/// Asks the oracle at `connect` (ending in `/p2p/<peer id>`) for `request`'s
/// answer. A refusal by the oracle (bad request, busy) comes back as a
/// response whose `ack` is not ok.
pub async fn complete(
    key: Keypair,
    connect: Multiaddr,
    request: pb::CompletionRequest,
    timeouts: NetTimeouts,
) -> Result<pb::CompletionResponse, LeechError> {
    let oracle = match connect.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => return Err(ScoutRunError::NoPeerId(connect).into()),
    };
    install_crypto_provider();
    let mut swarm = build_swarm(&key, &timeouts, LeechBehaviour::new)?;
    listen_for_webrtc(&mut swarm, &connect)?;
    swarm
        .dial(connect)
        .map_err(|e| LeechError::Unreachable(e.to_string()))?;
    let mut request = Some(request);
    let deadline = tokio::time::sleep(timeouts.handshake + timeouts.completion);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        let event = tokio::select! {
            () = &mut deadline => return Err(LeechError::Failed("no answer in time".into())),
            event = swarm.select_next_some() => event,
        };
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == oracle => {
                let hello = net::handshake_message(
                    &key,
                    pb::NodeType::Leech,
                    &[COMPLETE_PROTOCOL],
                    Some(net::local_hardware()),
                    Vec::new(),
                    None,
                );
                swarm
                    .behaviour_mut()
                    .handshake
                    .send_request(&peer_id, hello);
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(LeechError::Unreachable(error.to_string()));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if peer_id == oracle => {
                return Err(LeechError::Failed(
                    "the oracle closed the connection".into(),
                ));
            }
            SwarmEvent::Behaviour(LeechBehaviourEvent::Handshake(
                request_response::Event::Message {
                    peer,
                    message: request_response::Message::Response { response, .. },
                    ..
                },
            )) => {
                let ack = response.ack.unwrap_or_default();
                let theirs = response.handshake.filter(|_| ack.ok);
                match theirs {
                    None => return Err(LeechError::Refused(ack.detail)),
                    Some(h) if h.node_type != pb::NodeType::Oracle as i32 => {
                        return Err(LeechError::Refused("the peer is not an oracle".into()));
                    }
                    Some(h) => {
                        net::check_handshake(&peer, &h)
                            .map_err(|e| LeechError::Refused(e.to_string()))?;
                        if let Some(request) = request.take() {
                            swarm.behaviour_mut().complete.send_request(&peer, request);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(LeechBehaviourEvent::Complete(
                request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                },
            )) => return Ok(response),
            SwarmEvent::Behaviour(
                LeechBehaviourEvent::Complete(request_response::Event::OutboundFailure {
                    error,
                    ..
                })
                | LeechBehaviourEvent::Handshake(request_response::Event::OutboundFailure {
                    error,
                    ..
                }),
            ) => return Err(LeechError::Failed(error.to_string())),
            _ => {}
        }
    }
}
