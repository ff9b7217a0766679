//! Wire-level tests of shared-proto through its public API: round trips for every
//! message, golden bytes written by hand from the protobuf encoding rules, and
//! rejection of oversized, truncated, garbage and badly signed input.
#![allow(clippy::unwrap_used)] // test helpers fail loudly on purpose

use proptest::prelude::*;
use shared_proto::frame::{self, FrameError};
use shared_proto::pb::{self, NodeType};
use shared_proto::{
    ContentId, Keypair, Signed, Validate, Violation, WORK_RESPONSE_MAX_LEN, WireMessage, limits,
};

/// SHA-256("abc"), FIPS 180-2, as a multihash.
const CID_ABC: &str = "1220ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
/// SHA-256(""), as a multihash.
const CID_EMPTY: &str = "1220e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// RFC 8032 section 7.1, test 1.
const RFC8032_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const RFC8032_SIG_EMPTY: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065\
224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

fn bytes(hex_str: &str) -> Vec<u8> {
    hex::decode(hex_str.replace([' ', '\n'], "")).unwrap()
}

fn cid(data: &[u8]) -> Vec<u8> {
    ContentId::digest(data).to_bytes()
}

fn rfc8032_key() -> Keypair {
    Keypair::ed25519_from_bytes(bytes(RFC8032_SECRET)).unwrap()
}

// ------------------------------------------------------------------ samples

fn hardware() -> pb::HardwareInfo {
    pb::HardwareInfo {
        gpu_model: "NVIDIA H100".into(),
        vram_gb: 80,
        webgpu_enabled: false,
        npu_model: String::new(),
        cpu_cores: 16,
    }
}

fn certificate(oracle: &Keypair) -> pb::OracleCertificate {
    let network = rfc8032_key();
    pb::OracleCertificate::issue(&network, &oracle.public(), 1_000, 2_000_000_000_000).unwrap()
}

fn handshake() -> pb::HandshakeMessage {
    let oracle = Keypair::generate_ed25519();
    pb::HandshakeMessage {
        protocol_version: "1.0.0".into(),
        node_type: NodeType::Oracle as i32,
        supported_protocols: vec!["/shard/1.0.0/verify".into(), "/ipfs/ping/1.0.0".into()],
        hardware_info: Some(hardware()),
        public_key: oracle.public().encode_protobuf(),
        model_cids: vec![cid(b"model")],
        oracle_certificate: Some(certificate(&oracle)),
    }
}

fn sampling() -> pb::SamplingParams {
    pb::SamplingParams {
        temperature: 0.7,
        top_p: 0.9,
        top_k: 40,
        seed: 42,
    }
}

fn assignment() -> pb::WorkAssignment {
    pb::WorkAssignment {
        prompt_cid: cid(b"prompt"),
        max_tokens: 256,
        priority: 5,
        model_cid: cid(b"draft model"),
        timeout_ms: 30_000,
        node_type: NodeType::Scout as i32,
        draft_k: 4,
        sampling: Some(sampling()),
    }
}

fn work_result(signer: &Keypair, tokens: &[u32]) -> pb::WorkResult {
    let mut r = pb::WorkResult {
        work_cid: cid(b"prompt"),
        result_cid: ContentId::of_tokens(tokens).to_bytes(),
        token_ids: tokens.to_vec(),
        verified: false,
        proof: Vec::new(),
        inference_time_ms: 450,
        confidence_score: 0.95,
        session_id: 9,
        round: 3,
        draft_distributions: tokens
            .iter()
            .map(|&t| pb::SparseDistribution {
                token_ids: vec![t, t + 1],
                probs: vec![0.75, 0.25],
            })
            .collect(),
    };
    r.sign(signer).unwrap();
    r
}

fn broadcast() -> pb::ResultBroadcast {
    let oracle = Keypair::generate_ed25519();
    let mut result = work_result(&oracle, &[10, 20, 30]);
    result.verified = true;
    result.draft_distributions.clear();
    result.sign(&oracle).unwrap();
    let mut b = pb::ResultBroadcast {
        work_cid: cid(b"prompt"),
        result: Some(result),
        verification_signature: Vec::new(),
        confidence_score: 1.0,
        proof_strength: 0.99,
        certificate: Some(certificate(&oracle)),
        issued_at_ms: 1_700_000_000_000,
        ttl: 300,
    };
    b.sign(&oracle).unwrap();
    b
}

fn peer_bytes() -> Vec<u8> {
    Keypair::generate_ed25519().public().to_peer_id().to_bytes()
}

fn topology() -> pb::TopologyMessage {
    pb::TopologyMessage {
        nodes: vec![pb::NodeInfo {
            peer_id: peer_bytes(),
            node_type: NodeType::Scout as i32,
            supported_protocols: vec!["/shard/1.0.0/verify".into()],
            hardware_info: Some(pb::HardwareInfo {
                webgpu_enabled: true,
                ..Default::default()
            }),
            model_cids: vec![cid(b"draft model")],
        }],
        timestamp: 1_700_000_000,
        listen_addrs: vec![pb::AddressInfo {
            peer_id: peer_bytes(),
            multiaddr: "/ip4/127.0.0.1/udp/9090/webrtc-direct".into(),
        }],
    }
}

fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(msg: T) {
    let framed = frame::encode(&msg).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert!(framed.len() <= T::MAX_LEN + frame::MAX_VARINT_LEN);
    let back: T = frame::decode(&framed).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert_eq!(back, msg, "{}", T::NAME);
    let streamed: T =
        futures::executor::block_on(frame::read(&mut futures::io::Cursor::new(framed))).unwrap();
    assert_eq!(streamed, msg, "{} via a stream", T::NAME);
}

#[test]
fn every_message_round_trips() {
    let scout = Keypair::generate_ed25519();
    round_trip(handshake());
    round_trip(pb::ProtocolListRequest {});
    round_trip(pb::ProtocolList {
        protocols: vec!["/shard/1.0.0/claim".into()],
    });
    round_trip(pb::MetricsRequest {});
    round_trip(pb::MetricsReport {
        uptime_s: 60,
        active_sessions: 2,
        tokens_generated: 1000,
        draft_tokens_proposed: 400,
        draft_tokens_accepted: 300,
        load: 0.25,
    });
    round_trip(pb::Ack {
        ok: false,
        detail: "rejected".into(),
        errors: vec![pb::ErrorDetail {
            code: "INVALID_ARGUMENT".into(),
            message: "priority must be between 1 and 10, got 0".into(),
            field: "assignment.priority".into(),
        }],
    });
    round_trip(pb::ClaimRequest {
        work_cid: cid(b"prompt"),
        model_cid: cid(b"draft model"),
    });
    round_trip(assignment());
    round_trip(pb::DraftRequest {
        work_cid: cid(b"prompt"),
        session_id: 9,
        round: 3,
        accepted_tokens: vec![5, 6, 7],
        context_len: 40,
        draft_k: 4,
        deadline_ms: 200,
    });
    round_trip(pb::ClaimResponse {
        ack: Some(pb::Ack {
            ok: true,
            ..Default::default()
        }),
        session_id: 9,
        context_tokens: (0..5000).collect(),
        draft_k: 4,
        sampling: Some(sampling()),
        output_start: 1,
    });
    round_trip(work_result(&scout, &[1, 2, 3, 4]));
    round_trip(pb::GoldenTicket {
        work_cid: cid(b"golden"),
        prompt: "The capital of France is".into(),
        correct_answer: " Paris".into(),
        expected_token_ids: vec![7042],
    });
    round_trip(pb::GossipWorkMessage {
        assignment: Some(assignment()),
        prior_work_ids: vec![cid(b"older work")],
        ttl: 300,
        issued_at_ms: 1_700_000_000_000,
    });
    round_trip(broadcast());
    round_trip(topology());
    round_trip(completion_request());
    round_trip(pb::CompletionResponse {
        ack: Some(pb::Ack {
            ok: true,
            ..Default::default()
        }),
        text: " Paris.".into(),
        token_ids: vec![7042, 30],
        finish_reason: "length".into(),
        prompt_tokens: 5,
        contributor: true,
    });
}

fn completion_request() -> pb::CompletionRequest {
    pb::CompletionRequest {
        prompt: "The capital of France is".into(),
        max_tokens: 16,
        sampling: Some(sampling()),
        stop: vec!["\n".into()],
    }
}

#[test]
fn p2p_completions_are_bounded_so_the_answer_fits_one_frame() {
    let big = pb::CompletionRequest {
        prompt: "x".repeat(limits::MAX_PROMPT_BYTES + 1),
        ..completion_request()
    };
    assert_eq!(violation_of(&big).0, "prompt");
    let long = pb::CompletionRequest {
        max_tokens: limits::MAX_COMPLETION_TOKENS + 1,
        ..completion_request()
    };
    assert_eq!(violation_of(&long).0, "max_tokens");
    let unsampled = pb::CompletionRequest {
        sampling: None,
        ..completion_request()
    };
    assert_eq!(
        violation_of(&unsampled),
        ("sampling".into(), Violation::Missing)
    );
    let stops = pb::CompletionRequest {
        stop: vec![String::new()],
        ..completion_request()
    };
    assert_eq!(violation_of(&stops).0, "stop[0]");
    // The largest answer allowed fits one work-response frame.
    let answer = pb::CompletionResponse {
        ack: Some(pb::Ack {
            ok: true,
            ..Default::default()
        }),
        text: "x".repeat(limits::MAX_TEXT_BYTES),
        token_ids: vec![limits::MAX_TOKEN_ID; limits::MAX_COMPLETION_TOKENS as usize],
        finish_reason: "stop".into(),
        prompt_tokens: 1,
        contributor: false,
    };
    answer.validate().unwrap();
    assert!(prost::Message::encoded_len(&answer) <= WORK_RESPONSE_MAX_LEN);
    let odd = pb::CompletionResponse {
        finish_reason: "cancelled".into(),
        ..answer
    };
    assert_eq!(violation_of(&odd).0, "finish_reason");
}

// ------------------------------------------------------------------ golden bytes
//
// Written by hand from the protobuf encoding rules (tag = field << 3 | wire type;
// varints little-endian base 128; length-delimited fields prefixed by a varint
// length; packed repeated scalars as one length-delimited field), with a varint
// frame length in front. The hashes are published test vectors.

#[test]
fn golden_ack() {
    let msg = pb::Ack {
        ok: true,
        detail: "hi".into(),
        errors: vec![],
    };
    // 06 = body length; 08 01 = field 1 varint 1; 12 02 'h' 'i' = field 2, 2 bytes.
    let golden = bytes("06 0801 1202 6869");
    assert_eq!(frame::encode(&msg).unwrap(), golden);
    assert_eq!(frame::decode::<pb::Ack>(&golden).unwrap(), msg);
}

#[test]
fn golden_work_assignment() {
    let msg = pb::WorkAssignment {
        prompt_cid: bytes(CID_ABC),
        max_tokens: 256,
        priority: 5,
        model_cid: bytes(CID_EMPTY),
        timeout_ms: 30_000,
        node_type: NodeType::Scout as i32,
        draft_k: 4,
        sampling: None,
    };
    let golden = [
        "55", // body: 85 bytes
        "0a22", CID_ABC,  // 1: prompt_cid, 34 bytes
        "108002", // 2: max_tokens 256 = 0x80 0x02
        "1805",   // 3: priority 5
        "2222", CID_EMPTY,  // 4: model_cid, 34 bytes
        "28b0ea01", // 5: timeout_ms 30000 = 0xb0 0xea 0x01
        "3002",     // 6: node_type SCOUT
        "3804",     // 7: draft_k 4
    ]
    .concat();
    let golden = bytes(&golden);
    assert_eq!(frame::encode(&msg).unwrap(), golden);
    assert_eq!(frame::decode::<pb::WorkAssignment>(&golden).unwrap(), msg);
}

#[test]
fn golden_draft_request_with_packed_tokens() {
    let msg = pb::DraftRequest {
        work_cid: bytes(CID_ABC),
        session_id: 1,
        round: 2,
        accepted_tokens: vec![1, 300],
        context_len: 10,
        draft_k: 4,
        deadline_ms: 250,
    };
    let golden = [
        "34", // body: 52 bytes
        "0a22",
        CID_ABC,       // 1: work_cid
        "1001",        // 2: session_id 1
        "1802",        // 3: round 2
        "2203 01ac02", // 4: packed [1, 300], 3 bytes; 300 = 0xac 0x02
        "280a",        // 5: context_len 10
        "3004",        // 6: draft_k 4
        "38fa01",      // 7: deadline_ms 250 = 0xfa 0x01
    ]
    .concat();
    let golden = bytes(&golden);
    assert_eq!(frame::encode(&msg).unwrap(), golden);
    assert_eq!(frame::decode::<pb::DraftRequest>(&golden).unwrap(), msg);
}

#[test]
fn golden_handshake_with_rfc8032_key() {
    let msg = pb::HandshakeMessage {
        protocol_version: "1.0.0".into(),
        node_type: NodeType::Scout as i32,
        supported_protocols: vec!["/shard/1.0.0/verify".into()],
        hardware_info: Some(pb::HardwareInfo {
            webgpu_enabled: true,
            cpu_cores: 8,
            ..Default::default()
        }),
        public_key: rfc8032_key().public().encode_protobuf(),
        model_cids: vec![],
        oracle_certificate: None,
    };
    let golden = [
        "4a",                                          // body: 74 bytes
        "0a05 312e302e30",                             // 1: "1.0.0"
        "1002",                                        // 2: SCOUT
        "1a13 2f73686172642f312e302e302f766572696679", // 3: "/shard/1.0.0/verify"
        "2204 1801 2808",                              // 4: {webgpu_enabled: 1, cpu_cores: 8}
        "2a24 0801 1220",
        RFC8032_PUBLIC, // 5: libp2p PublicKey{Ed25519, 32 bytes}
    ]
    .concat();
    let golden = bytes(&golden);
    assert_eq!(frame::encode(&msg).unwrap(), golden);
    assert_eq!(frame::decode::<pb::HandshakeMessage>(&golden).unwrap(), msg);
}

#[test]
fn identity_keys_are_standard_ed25519() {
    // RFC 8032 test 1: the signature of the empty message.
    let key = rfc8032_key();
    assert_eq!(key.sign(b"").unwrap(), bytes(RFC8032_SIG_EMPTY));
}

// ------------------------------------------------------------------ rejection

#[test]
fn garbage_is_a_decode_error() {
    // Length 3, then a field with wire type 7 (does not exist).
    let err = frame::decode::<pb::WorkAssignment>(&[3, 0x0f, 0xff, 0xff]).unwrap_err();
    assert!(
        matches!(
            err,
            FrameError::Decode {
                message: "WorkAssignment",
                ..
            }
        ),
        "{err}"
    );
    // A length-delimited field that claims more bytes than the body has.
    let err = frame::decode::<pb::Ack>(&[2, 0x12, 0x7f]).unwrap_err();
    assert!(matches!(err, FrameError::Decode { .. }), "{err}");
}

#[test]
fn truncating_any_valid_frame_is_detected() {
    let framed = frame::encode(&broadcast()).unwrap();
    for cut in 0..framed.len() {
        let err = frame::decode::<pb::ResultBroadcast>(&framed[..cut]).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn oversized_messages_are_rejected_per_type() {
    // A work response may be 64 KiB, but the same bytes as a work request are too big.
    let claim = pb::ClaimResponse {
        ack: Some(pb::Ack {
            ok: true,
            ..Default::default()
        }),
        session_id: 1,
        context_tokens: vec![70_000; 3_000],
        draft_k: 2,
        sampling: None,
        output_start: 3_000,
    };
    let framed = frame::encode(&claim).unwrap();
    assert!(framed.len() > 8 * 1024);
    let err = frame::decode::<pb::DraftRequest>(&framed).unwrap_err();
    assert!(matches!(
        err,
        FrameError::Oversized {
            message: "DraftRequest",
            max: 8192,
            ..
        }
    ));
}

fn violation_of<T: Validate>(msg: &T) -> (String, Violation) {
    let e = msg.validate().expect_err("should be invalid");
    (e.field, e.violation)
}

#[test]
fn validation_names_the_offending_field() {
    let mut a = assignment();
    a.priority = 0;
    assert_eq!(
        violation_of(&a),
        (
            "priority".into(),
            Violation::OutOfRange {
                got: 0.0,
                min: 1.0,
                max: 10.0
            }
        )
    );

    let mut g = pb::GossipWorkMessage {
        assignment: Some(assignment()),
        prior_work_ids: vec![],
        ttl: 60,
        issued_at_ms: 1,
    };
    g.assignment.as_mut().unwrap().max_tokens = -1;
    assert_eq!(violation_of(&g).0, "assignment.max_tokens");
    g.assignment.as_mut().unwrap().max_tokens = 10;
    g.assignment
        .as_mut()
        .unwrap()
        .sampling
        .as_mut()
        .unwrap()
        .temperature = f32::NAN;
    assert_eq!(
        violation_of(&g),
        (
            "assignment.sampling.temperature".into(),
            Violation::NotFinite
        )
    );

    let mut t = topology();
    t.listen_addrs[0].multiaddr = "not a multiaddr".into();
    assert_eq!(violation_of(&t).0, "listen_addrs[0].multiaddr");
    t = topology();
    t.nodes[0].peer_id = vec![1, 2, 3];
    assert_eq!(violation_of(&t).0, "nodes[0].peer_id");

    let scout = Keypair::generate_ed25519();
    let mut r = work_result(&scout, &[1, 2]);
    r.confidence_score = 1.5;
    assert_eq!(violation_of(&r).0, "confidence_score");
    let mut r = work_result(&scout, &[1, 2]);
    r.token_ids.push(3);
    assert!(matches!(violation_of(&r), (f, Violation::Inconsistent(_)) if f == "result_cid"));
    let mut r = work_result(&scout, &[1, 2]);
    r.draft_distributions.pop();
    assert_eq!(violation_of(&r).0, "draft_distributions");
    let mut r = work_result(&scout, &[1, 2]);
    r.draft_distributions[1].probs = vec![0.75, 0.5];
    assert_eq!(violation_of(&r).0, "draft_distributions[1].probs");
    let mut r = work_result(&scout, &[1, 2]);
    r.draft_distributions[0].token_ids = vec![5, 6];
    assert!(
        matches!(violation_of(&r), (f, Violation::Inconsistent(_)) if f == "draft_distributions[0]")
    );
    let mut r = work_result(&scout, &[1, 2]);
    r.draft_distributions[0].token_ids = vec![1, 1];
    assert_eq!(violation_of(&r).0, "draft_distributions[0].token_ids[1]");
    let mut r = work_result(&scout, &[1, 2]);
    r.proof.truncate(10);
    assert!(matches!(violation_of(&r), (f, Violation::Malformed(_)) if f == "proof"));

    let mut h = handshake();
    h.protocol_version = "one".into();
    assert_eq!(violation_of(&h).0, "protocol_version");
    // An oracle without a certificate may handshake (it serves scouts that
    // dial it); only its results on gossip are refused.
    let mut h = handshake();
    h.oracle_certificate = None;
    assert!(h.validate().is_ok());
    let refusal = pb::HandshakeReply {
        ack: Some(pb::Ack {
            ok: false,
            detail: "version".into(),
            errors: vec![],
        }),
        handshake: Some(handshake()),
    };
    assert_eq!(violation_of(&refusal).0, "handshake");
    let empty_yes = pb::HandshakeReply {
        ack: Some(pb::Ack {
            ok: true,
            ..Default::default()
        }),
        handshake: None,
    };
    assert_eq!(
        violation_of(&empty_yes),
        ("handshake".into(), Violation::Missing)
    );
    let mut h = handshake();
    h.node_type = 99;
    assert_eq!(violation_of(&h).0, "node_type");
    let mut h = handshake();
    h.public_key = vec![8, 1, 18, 3, 1, 2, 3];
    assert_eq!(violation_of(&h).0, "public_key");

    let mut d = pb::DraftRequest {
        work_cid: cid(b"w"),
        session_id: 1,
        round: 1,
        accepted_tokens: vec![1, 2, 3],
        context_len: 2,
        draft_k: 4,
        deadline_ms: 100,
    };
    assert_eq!(violation_of(&d).0, "context_len");
    d.context_len = 3;
    d.draft_k = 17;
    assert_eq!(violation_of(&d).0, "draft_k");
}

#[test]
fn validation_errors_become_wire_error_details() {
    let mut a = assignment();
    a.timeout_ms = 0;
    let detail: pb::ErrorDetail = a.validate().unwrap_err().into();
    assert_eq!(detail.code, "INVALID_ARGUMENT");
    assert_eq!(detail.field, "timeout_ms");
    assert!(detail.message.contains("timeout_ms"), "{}", detail.message);
    // An Ack carrying it is itself valid on the wire.
    let ack = pb::Ack {
        ok: false,
        detail: String::new(),
        errors: vec![detail],
    };
    frame::encode(&ack).unwrap();
    // Unknown codes are not.
    let bogus = pb::Ack {
        errors: vec![pb::ErrorDetail {
            code: "OOPS".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(bogus.validate().unwrap_err().field, "errors[0].code");
}

#[test]
fn a_decoded_invalid_message_is_rejected_at_the_frame() {
    let mut a = assignment();
    a.priority = 11;
    // Encode by hand (frame::encode refuses invalid messages).
    let body = prost::Message::encode_to_vec(&a);
    let mut framed = Vec::new();
    frame::encode_varint(body.len() as u64, &mut framed);
    framed.extend(body);
    let err = frame::decode::<pb::WorkAssignment>(&framed).unwrap_err();
    assert_eq!(err.validation().unwrap().field, "priority");
}

#[test]
fn wrong_signatures_are_rejected_after_decoding() {
    let scout = Keypair::generate_ed25519();
    let framed = frame::encode(&work_result(&scout, &[4, 5])).unwrap();
    let r: pb::WorkResult = frame::decode(&framed).unwrap();
    r.verify_signature(&scout.public()).unwrap();
    let someone_else = Keypair::generate_ed25519();
    assert!(r.verify_signature(&someone_else.public()).is_err());

    // Flip one byte of the proof inside the frame: still decodes, no longer verifies.
    let mut framed = framed;
    let proof_at = framed
        .windows(64)
        .position(|w| w == r.proof.as_slice())
        .unwrap();
    framed[proof_at] ^= 1;
    let r: pb::WorkResult = frame::decode(&framed).unwrap();
    assert!(r.verify_signature(&scout.public()).is_err());
}

// ------------------------------------------------------------------ properties

macro_rules! decode_all_types {
    ($data:expr) => {{
        let data: &[u8] = $data;
        let _ = frame::decode::<pb::HandshakeMessage>(data);
        let _ = frame::decode::<pb::ProtocolList>(data);
        let _ = frame::decode::<pb::MetricsReport>(data);
        let _ = frame::decode::<pb::Ack>(data);
        let _ = frame::decode::<pb::ClaimRequest>(data);
        let _ = frame::decode::<pb::ClaimResponse>(data);
        let _ = frame::decode::<pb::WorkAssignment>(data);
        let _ = frame::decode::<pb::DraftRequest>(data);
        let _ = frame::decode::<pb::WorkResult>(data);
        let _ = frame::decode::<pb::GoldenTicket>(data);
        let _ = frame::decode::<pb::GossipWorkMessage>(data);
        let _ = frame::decode::<pb::ResultBroadcast>(data);
        let _ = frame::decode::<pb::TopologyMessage>(data);
    }};
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all_types!(&data);
    }

    #[test]
    fn decoding_a_valid_prefix_then_noise_never_panics(
        noise in proptest::collection::vec(any::<u8>(), 0..512),
        cut in 0usize..64,
    ) {
        // Start from a real frame so the decoder gets past the length prefix.
        let mut data = frame::encode(&assignment()).unwrap();
        data.truncate(cut.min(data.len()));
        data.extend(noise);
        decode_all_types!(&data);
        let mut cursor = futures::io::Cursor::new(data);
        let _ = futures::executor::block_on(frame::read::<pb::WorkAssignment, _>(&mut cursor));
    }

    #[test]
    fn draft_requests_round_trip_when_valid(
        session_id in 1u64..,
        round in 1u32..,
        accepted in proptest::collection::vec(0u32..=16_777_215, 0..18),
        extra in 0u32..1000,
        k in 1u32..=16,
        deadline in 1u32..=60_000,
    ) {
        let msg = pb::DraftRequest {
            work_cid: cid(b"w"),
            session_id,
            round,
            context_len: accepted.len().max(1) as u32 + extra,
            accepted_tokens: accepted,
            draft_k: k,
            deadline_ms: deadline,
        };
        let framed = frame::encode(&msg).unwrap();
        prop_assert_eq!(frame::decode::<pb::DraftRequest>(&framed).unwrap(), msg);
    }
}

// ------------------------------------------------------------------ weights

/// A manifest of a 300,000-byte file in 64 KiB pieces, with two tensors.
fn manifest() -> pb::ModelManifest {
    pb::ModelManifest {
        version: limits::MANIFEST_VERSION,
        file_size: 300_000,
        file_sha256: vec![1; 32],
        piece_size: 64 * 1024,
        piece_sha256: (0..5u8).map(|i| vec![i; 32]).collect(),
        architecture: "llama".into(),
        tensors: vec![
            pb::TensorSpan {
                name: "token_embd.weight".into(),
                offset: 1000,
                size: 100_000,
            },
            pb::TensorSpan {
                name: "blk.0.attn_q.weight".into(),
                offset: 101_000,
                size: 199_000,
            },
        ],
        layers: vec![pb::LayerPieces {
            layer: 0,
            first_piece: 1,
            piece_count: 4,
        }],
    }
}

#[test]
fn weights_messages_round_trip() {
    round_trip(manifest());
    round_trip(pb::WeightsRequest {
        model_cid: cid(b"manifest"),
        want: Some(pb::weights_request::Want::Manifest(true)),
    });
    round_trip(pb::WeightsRequest {
        model_cid: cid(b"manifest"),
        want: Some(pb::weights_request::Want::Piece(4)),
    });
    round_trip(pb::WeightsResponse {
        answer: Some(pb::weights_response::Answer::Piece(pb::Piece {
            index: 3,
            data: vec![7; limits::MAX_PIECE_SIZE as usize],
        })),
    });
    round_trip(pb::WeightsResponse {
        answer: Some(pb::weights_response::Answer::Manifest(vec![1, 2, 3])),
    });
    round_trip(pb::WeightsResponse {
        answer: Some(pb::weights_response::Answer::Refused(pb::Ack {
            ok: false,
            detail: "no such model here".into(),
            errors: vec![],
        })),
    });
}

#[test]
fn bad_manifests_and_weights_messages_name_the_field() {
    let broken = |f: fn(&mut pb::ModelManifest)| {
        let mut m = manifest();
        f(&mut m);
        violation_of(&m).0
    };
    assert_eq!(broken(|m| m.version = 2), "version");
    assert_eq!(broken(|m| m.file_size = 0), "file_size");
    assert_eq!(broken(|m| m.file_sha256.truncate(31)), "file_sha256");
    assert_eq!(broken(|m| m.piece_size = 100_000), "piece_size"); // not a power of two
    assert_eq!(broken(|m| m.piece_size = 32 * 1024), "piece_size"); // too small
    assert_eq!(broken(|m| m.piece_size = 32 << 20), "piece_size"); // too large
    assert_eq!(broken(|m| m.piece_sha256.truncate(4)), "piece_sha256");
    // 6.4 GB in 64 KiB pieces: more pieces than any index can name.
    assert_eq!(broken(|m| m.file_size = 100_000 * 65_536), "piece_size");
    assert_eq!(
        broken(|m| m.piece_sha256[2] = vec![0; 31]),
        "piece_sha256[2]"
    );
    assert_eq!(broken(|m| m.tensors[1].size = 200_000), "tensors[1]"); // past the end
    assert_eq!(broken(|m| m.tensors[0].offset = u64::MAX), "tensors[0]");
    assert_eq!(broken(|m| m.layers[0].piece_count = 5), "layers[0]");
    assert_eq!(broken(|m| m.layers[0].piece_count = 0), "layers[0]");

    let request = |want| pb::WeightsRequest {
        model_cid: cid(b"m"),
        want,
    };
    assert_eq!(
        violation_of(&request(None)),
        ("want".into(), Violation::Missing)
    );
    let far = Some(pb::weights_request::Want::Piece(limits::MAX_PIECES as u32));
    assert_eq!(violation_of(&request(far)).0, "piece");
    let mut no_model = request(Some(pb::weights_request::Want::Manifest(true)));
    no_model.model_cid = vec![1, 2, 3];
    assert_eq!(violation_of(&no_model).0, "model_cid");

    let empty_piece = pb::WeightsResponse {
        answer: Some(pb::weights_response::Answer::Piece(pb::Piece {
            index: 0,
            data: vec![],
        })),
    };
    assert_eq!(
        violation_of(&empty_piece),
        ("piece.data".into(), Violation::Missing)
    );
    let no_answer = pb::WeightsResponse { answer: None };
    assert_eq!(violation_of(&no_answer).0, "answer");
}

#[test]
fn an_oversized_piece_is_refused_before_it_is_read() {
    let piece = pb::WeightsResponse {
        answer: Some(pb::weights_response::Answer::Piece(pb::Piece {
            index: 0,
            data: vec![0; limits::MAX_PIECE_SIZE as usize + 2048],
        })),
    };
    // Encoded by hand (frame::encode refuses to write it), then announced.
    let body = prost::Message::encode_to_vec(&piece);
    let mut framed = Vec::new();
    prost::encoding::encode_varint(body.len() as u64, &mut framed);
    framed.extend_from_slice(&body);
    assert!(matches!(
        frame::decode::<pb::WeightsResponse>(&framed),
        Err(FrameError::Oversized {
            message: "WeightsResponse",
            ..
        })
    ));
}
