//! Which messages may travel on their own, and how large each may be.

use crate::pb;
use crate::validate::Validate;

/// A message that travels as a frame of its own.
///
/// `MAX_LEN` is the largest protobuf body (without the length prefix) a reader
/// accepts; the classes come from seed 004's size table.
pub trait WireMessage: prost::Message + Default + Validate {
    /// Name used in errors and logs.
    const NAME: &'static str;
    /// Largest accepted encoded length in bytes.
    const MAX_LEN: usize;
}

/// Handshake and other control messages: 1 KiB.
pub const CONTROL_MAX_LEN: usize = 1024;
/// Work requests (prompt context is carried by claim responses): 8 KiB.
pub const WORK_REQUEST_MAX_LEN: usize = 8 * 1024;
/// Work responses (draft tokens + metadata, claim context): 64 KiB.
pub const WORK_RESPONSE_MAX_LEN: usize = 64 * 1024;
/// Gossipsub messages: 2 MiB.
pub const GOSSIP_MAX_LEN: usize = 2 * 1024 * 1024;
/// A model manifest: 4 MiB (65 536 piece digests and 16 384 tensors fit).
pub const MANIFEST_MAX_LEN: usize = 4 * 1024 * 1024;
/// A weights answer: the largest piece with room for its framing.
pub const WEIGHTS_RESPONSE_MAX_LEN: usize = crate::limits::MAX_PIECE_SIZE as usize + 1024;

macro_rules! wire_messages {
    ($($ty:ident => $max:expr),* $(,)?) => {
        $(
            impl WireMessage for pb::$ty {
                const NAME: &'static str = stringify!($ty);
                const MAX_LEN: usize = $max;
            }
        )*
    };
}

wire_messages! {
    HandshakeMessage => CONTROL_MAX_LEN,
    HandshakeReply => CONTROL_MAX_LEN,
    ProtocolListRequest => CONTROL_MAX_LEN,
    ProtocolList => CONTROL_MAX_LEN,
    MetricsRequest => CONTROL_MAX_LEN,
    MetricsReport => CONTROL_MAX_LEN,
    Ack => CONTROL_MAX_LEN,
    ClaimRequest => WORK_REQUEST_MAX_LEN,
    CompletionRequest => WORK_REQUEST_MAX_LEN,
    WorkAssignment => WORK_REQUEST_MAX_LEN,
    DraftRequest => WORK_REQUEST_MAX_LEN,
    ClaimResponse => WORK_RESPONSE_MAX_LEN,
    CompletionResponse => WORK_RESPONSE_MAX_LEN,
    WorkResult => WORK_RESPONSE_MAX_LEN,
    GoldenTicket => WORK_RESPONSE_MAX_LEN,
    GossipWorkMessage => GOSSIP_MAX_LEN,
    ResultBroadcast => GOSSIP_MAX_LEN,
    TopologyMessage => GOSSIP_MAX_LEN,
    ModelManifest => MANIFEST_MAX_LEN,
    WeightsRequest => CONTROL_MAX_LEN,
    WeightsResponse => WEIGHTS_RESPONSE_MAX_LEN,
}
