//! The oracle's libp2p node: transports (TCP, QUIC, WebSocket, WebRTC-direct
//! with a persisted certificate), identify, ping with a failure policy,
//! Kademlia with bootstrap retries, optional mDNS, gossipsub with validation,
//! the handshake, scouts claiming work and answering rounds, leeches
//! asking for completions, and model files served as pieces
//! (`/shard/1.0.0/weights`, announced as provider records in the DHT).
//!
//! Shaped like rust-libp2p's file-sharing example: [`start`] builds the swarm
//! and spawns its event loop, which owns it; the engine talks to the loop over
//! a bounded channel ([`crate::engine::ToNetwork`]) and the loop talks to the
//! engine through its [`crate::engine::EngineHandle`]. The HTTP layer reads a
//! snapshot ([`NetView`]) for `/api/status` and `/api/peers`.

mod behaviour;
mod golden;
pub mod identity;
mod leech;
mod node;
pub mod results;
mod topology;
mod webrtc;
mod weights;

pub use behaviour::{KAD_PROTOCOL, OracleBehaviour};
pub use node::{NetConfig, NetError, NetStatus, NetView, PeerView, start};
pub use topology::NetworkNode;
pub use weights::{Offered, OfferedModel};
