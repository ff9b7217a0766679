//! Feeds arbitrary bytes to the frame decoder of every message type. None may
//! panic or allocate beyond its type's limit; anything that decodes has passed
//! validation and must survive a re-encode.
//!
//! Run with `cargo +nightly fuzz run frame_decoder` from `shared-proto/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared_proto::{frame, pb};

macro_rules! decode_as_each {
    ($data:expr, $($ty:ident),* $(,)?) => {
        $(
            if let Ok((msg, _)) = frame::decode_prefix::<pb::$ty>($data) {
                frame::encode(&msg).expect("a valid message re-encodes");
            }
        )*
    };
}

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode_length_prefix(data);
    decode_as_each!(
        data,
        HandshakeMessage,
        ProtocolListRequest,
        ProtocolList,
        MetricsRequest,
        MetricsReport,
        Ack,
        ClaimRequest,
        WorkAssignment,
        DraftRequest,
        ClaimResponse,
        WorkResult,
        GoldenTicket,
        GossipWorkMessage,
        ResultBroadcast,
        TopologyMessage,
    );
});
