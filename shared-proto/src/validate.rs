//! Validation of every message that crosses the network.
//!
//! Protobuf accepts any value in any field; the protocol does not. Each message's
//! [`Validate::validate`] checks its constraints and reports the first breach as a
//! [`ValidationError`] that names the field by its dotted path (`assignment.priority`,
//! `nodes[3].peer_id`) and converts to the wire's [`pb::ErrorDetail`].
//!
//! Validation checks what a message says about itself. Checks that need outside
//! knowledge — signatures against a trusted key, freshness against a clock,
//! token ids against a model's vocabulary — live with that knowledge.

use thiserror::Error;

use crate::cid::ContentId;
use crate::pb;
use crate::protocol::ProtocolVersion;
use crate::signing::SIGNATURE_LEN;
use crate::wire::MANIFEST_MAX_LEN;

/// Bounds the protocol puts on field values.
pub mod limits {
    /// Highest priority value (1 is the most urgent).
    pub const MAX_PRIORITY: i32 = 10;
    /// Most tokens a single piece of work may ask for.
    pub const MAX_NEW_TOKENS: i32 = 4096;
    /// Longest context (prompt plus generated tokens) a session may carry.
    pub const MAX_CONTEXT_TOKENS: usize = 16_384;
    /// Most tokens drafted per round.
    pub const MAX_DRAFT_K: u32 = 16;
    /// Most tokens in the support of one draft distribution.
    pub const MAX_DRAFT_SUPPORT: usize = 256;
    /// Largest token id any vocabulary may use (24 bits).
    pub const MAX_TOKEN_ID: u32 = (1 << 24) - 1;
    /// Longest timeout for a piece of work.
    pub const MAX_TIMEOUT_MS: i64 = 600_000;
    /// Longest an oracle waits for one round of drafts.
    pub const MAX_DEADLINE_MS: u32 = 60_000;
    /// Longest life of a work announcement.
    pub const MAX_WORK_TTL_S: u32 = 3_600;
    /// Longest life of a result broadcast.
    pub const MAX_RESULT_TTL_S: u32 = 86_400;
    /// Highest sampling temperature.
    pub const MAX_TEMPERATURE: f32 = 2.0;
    /// Most protocol ids a node may list.
    pub const MAX_PROTOCOLS: usize = 64;
    /// Longest protocol id.
    pub const MAX_PROTOCOL_ID_LEN: usize = 128;
    /// Longest free-text hardware field.
    pub const MAX_HARDWARE_TEXT_LEN: usize = 128;
    /// Largest plausible VRAM in GB and core count.
    pub const MAX_HARDWARE_COUNT: i32 = 4096;
    /// Most model ids a node may advertise.
    pub const MAX_MODELS: usize = 16;
    /// Most prior work ids in one announcement.
    pub const MAX_PRIOR_WORK_IDS: usize = 256;
    /// Most nodes in one topology message.
    pub const MAX_TOPOLOGY_NODES: usize = 1024;
    /// Most addresses in one topology message.
    pub const MAX_LISTEN_ADDRS: usize = 4096;
    /// Longest multiaddr string.
    pub const MAX_MULTIADDR_LEN: usize = 256;
    /// Longest human-readable detail or error message.
    pub const MAX_DETAIL_LEN: usize = 1024;
    /// Longest field path in an error.
    pub const MAX_FIELD_PATH_LEN: usize = 256;
    /// Most errors in one acknowledgement.
    pub const MAX_ERRORS: usize = 32;
    /// Longest prompt or answer text in a golden ticket, or answer text of a
    /// p2p completion.
    pub const MAX_TEXT_BYTES: usize = 32 * 1024;
    /// Longest prompt of a p2p completion (its frame is 8 KiB).
    pub const MAX_PROMPT_BYTES: usize = 6 * 1024;
    /// Most tokens a p2p completion may ask for (its answer is one 64 KiB frame).
    pub const MAX_COMPLETION_TOKENS: u32 = 1024;
    /// Most stop strings of a p2p completion.
    pub const MAX_STOP_STRINGS: usize = 4;
    /// Longest stop string.
    pub const MAX_STOP_BYTES: usize = 256;
    /// The model manifest format this version writes and reads.
    pub const MANIFEST_VERSION: u32 = 1;
    /// Smallest piece of a model file (the last piece may be shorter).
    pub const MIN_PIECE_SIZE: u32 = 64 * 1024;
    /// Largest piece of a model file.
    pub const MAX_PIECE_SIZE: u32 = 16 * 1024 * 1024;
    /// Most pieces in one model file (1 TiB at the largest piece size).
    pub const MAX_PIECES: usize = 65_536;
    /// Largest model file.
    pub const MAX_MODEL_BYTES: u64 = MAX_PIECES as u64 * MAX_PIECE_SIZE as u64;
    /// Longest architecture name in a manifest.
    pub const MAX_ARCHITECTURE_LEN: usize = 64;
    /// Most tensors in a manifest.
    pub const MAX_TENSORS: usize = 16_384;
    /// Longest tensor name (GGUF allows 64 bytes; room to spare).
    pub const MAX_TENSOR_NAME_LEN: usize = 256;
    /// Most transformer blocks in a manifest.
    pub const MAX_LAYERS: usize = 4_096;
}

/// Error codes of seed 004 (numbered as in gRPC / libp2p).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum ErrorCode {
    Cancelled = 1,
    InvalidArgument = 3,
    NotFound = 5,
    PermissionDenied = 7,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
    AlreadyExists = 17,
}

impl ErrorCode {
    const ALL: [ErrorCode; 8] = [
        ErrorCode::Cancelled,
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::PermissionDenied,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Unauthenticated,
        ErrorCode::AlreadyExists,
    ];

    /// The name used in [`pb::ErrorDetail::code`].
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
        }
    }

    /// The code with this name, if any.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Violation {
    /// A required field is absent or empty.
    #[error("is required")]
    Missing,
    /// A number outside its range.
    #[error("must be between {min} and {max}, got {got}")]
    OutOfRange {
        /// The value found.
        got: f64,
        /// Smallest allowed.
        min: f64,
        /// Largest allowed.
        max: f64,
    },
    /// NaN or an infinity.
    #[error("must be a finite number")]
    NotFinite,
    /// A list or string longer than allowed.
    #[error("has length {len}, at most {max} allowed")]
    TooLong {
        /// Length found.
        len: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Bytes or text that do not parse as what the field holds.
    #[error("is malformed: {0}")]
    Malformed(String),
    /// A field that contradicts another.
    #[error("is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// A field in breach of the protocol.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{field} {violation}")]
pub struct ValidationError {
    /// Dotted path of the field, e.g. `assignment.priority`.
    pub field: String,
    /// What is wrong with it.
    pub violation: Violation,
}

impl ValidationError {
    fn new(field: impl Into<String>, violation: Violation) -> Self {
        ValidationError {
            field: field.into(),
            violation,
        }
    }

    /// Prefixes the field path with the enclosing field's name.
    fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }

    /// The code that goes with a validation failure.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }

    /// The error as it goes on the wire.
    pub fn to_error_detail(&self) -> pb::ErrorDetail {
        pb::ErrorDetail {
            code: self.code().name().to_owned(),
            message: self.to_string(),
            field: self.field.clone(),
        }
    }
}

impl From<ValidationError> for pb::ErrorDetail {
    fn from(e: ValidationError) -> Self {
        e.to_error_detail()
    }
}

/// A message that can check its own constraints.
pub trait Validate {
    /// `Ok` when every field holds a value the protocol allows.
    fn validate(&self) -> Result<(), ValidationError>;
}

type Checked = Result<(), ValidationError>;

fn int_range(field: &str, got: i64, min: i64, max: i64) -> Checked {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            Violation::OutOfRange {
                got: got as f64,
                min: min as f64,
                max: max as f64,
            },
        ))
    }
}

fn float_range(field: &str, got: f32, min: f32, max: f32) -> Checked {
    if !got.is_finite() {
        return Err(ValidationError::new(field, Violation::NotFinite));
    }
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            Violation::OutOfRange {
                got: got.into(),
                min: min.into(),
                max: max.into(),
            },
        ))
    }
}

fn max_len(field: &str, len: usize, max: usize) -> Checked {
    if len <= max {
        Ok(())
    } else {
        Err(ValidationError::new(field, Violation::TooLong { len, max }))
    }
}

fn required_len(field: &str, len: usize, max: usize) -> Checked {
    if len == 0 {
        return Err(ValidationError::new(field, Violation::Missing));
    }
    max_len(field, len, max)
}

fn indexed(field: &str, i: usize) -> String {
    format!("{field}[{i}]")
}

fn cid(field: &str, bytes: &[u8]) -> Checked {
    if bytes.is_empty() {
        return Err(ValidationError::new(field, Violation::Missing));
    }
    ContentId::from_bytes(bytes)
        .map(|_| ())
        .map_err(|e| ValidationError::new(field, Violation::Malformed(e.to_string())))
}

fn cids(field: &str, list: &[Vec<u8>], max: usize) -> Checked {
    max_len(field, list.len(), max)?;
    list.iter()
        .enumerate()
        .try_for_each(|(i, c)| cid(&indexed(field, i), c))
}

fn public_key(field: &str, bytes: &[u8]) -> Checked {
    if bytes.is_empty() {
        return Err(ValidationError::new(field, Violation::Missing));
    }
    libp2p::identity::PublicKey::try_decode_protobuf(bytes)
        .map(|_| ())
        .map_err(|e| ValidationError::new(field, Violation::Malformed(e.to_string())))
}

fn peer_id(field: &str, bytes: &[u8]) -> Checked {
    if bytes.is_empty() {
        return Err(ValidationError::new(field, Violation::Missing));
    }
    libp2p::PeerId::from_bytes(bytes)
        .map(|_| ())
        .map_err(|e| ValidationError::new(field, Violation::Malformed(e.to_string())))
}

fn signature(field: &str, bytes: &[u8]) -> Checked {
    match bytes.len() {
        0 => Err(ValidationError::new(field, Violation::Missing)),
        SIGNATURE_LEN => Ok(()),
        n => Err(ValidationError::new(
            field,
            Violation::Malformed(format!(
                "{n} bytes, an ed25519 signature has {SIGNATURE_LEN}"
            )),
        )),
    }
}

fn node_type(field: &str, value: i32) -> Checked {
    match pb::NodeType::try_from(value) {
        Ok(pb::NodeType::Unspecified) => Err(ValidationError::new(field, Violation::Missing)),
        Ok(_) => Ok(()),
        Err(_) => Err(ValidationError::new(
            field,
            Violation::Malformed(format!("unknown node type {value}")),
        )),
    }
}

fn protocol_ids(field: &str, list: &[String]) -> Checked {
    max_len(field, list.len(), limits::MAX_PROTOCOLS)?;
    for (i, id) in list.iter().enumerate() {
        let f = indexed(field, i);
        max_len(&f, id.len(), limits::MAX_PROTOCOL_ID_LEN)?;
        if !id.starts_with('/') || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValidationError::new(
                f,
                Violation::Malformed("a protocol id is printable ASCII starting with '/'".into()),
            ));
        }
    }
    Ok(())
}

fn tokens(field: &str, list: &[u32], max: usize) -> Checked {
    max_len(field, list.len(), max)?;
    match list.iter().position(|&t| t > limits::MAX_TOKEN_ID) {
        None => Ok(()),
        Some(i) => int_range(
            &indexed(field, i),
            list[i].into(),
            0,
            limits::MAX_TOKEN_ID.into(),
        ),
    }
}

fn draft_k(field: &str, k: u32) -> Checked {
    int_range(field, k.into(), 1, limits::MAX_DRAFT_K.into())
}

fn nested<T: Validate>(field: &str, value: Option<&T>, required: bool) -> Checked {
    match value {
        Some(v) => v.validate().map_err(|e| e.within(field)),
        None if required => Err(ValidationError::new(field, Violation::Missing)),
        None => Ok(()),
    }
}

fn nonzero(field: &str, value: u64) -> Checked {
    if value == 0 {
        Err(ValidationError::new(field, Violation::Missing))
    } else {
        Ok(())
    }
}

impl Validate for pb::HardwareInfo {
    fn validate(&self) -> Checked {
        max_len(
            "gpu_model",
            self.gpu_model.len(),
            limits::MAX_HARDWARE_TEXT_LEN,
        )?;
        int_range(
            "vram_gb",
            self.vram_gb.into(),
            0,
            limits::MAX_HARDWARE_COUNT.into(),
        )?;
        max_len(
            "npu_model",
            self.npu_model.len(),
            limits::MAX_HARDWARE_TEXT_LEN,
        )?;
        int_range(
            "cpu_cores",
            self.cpu_cores.into(),
            0,
            limits::MAX_HARDWARE_COUNT.into(),
        )
    }
}

impl Validate for pb::HandshakeMessage {
    fn validate(&self) -> Checked {
        if self.protocol_version.is_empty() {
            return Err(ValidationError::new("protocol_version", Violation::Missing));
        }
        self.protocol_version
            .parse::<ProtocolVersion>()
            .map_err(|e| {
                ValidationError::new("protocol_version", Violation::Malformed(e.to_string()))
            })?;
        node_type("node_type", self.node_type)?;
        protocol_ids("supported_protocols", &self.supported_protocols)?;
        nested("hardware_info", self.hardware_info.as_ref(), false)?;
        public_key("public_key", &self.public_key)?;
        cids("model_cids", &self.model_cids, limits::MAX_MODELS)?;
        let is_oracle = self.node_type == pb::NodeType::Oracle as i32;
        nested(
            "oracle_certificate",
            self.oracle_certificate.as_ref(),
            false,
        )?;
        if !is_oracle && self.oracle_certificate.is_some() {
            return Err(ValidationError::new(
                "oracle_certificate",
                Violation::Inconsistent("only oracles carry a certificate"),
            ));
        }
        Ok(())
    }
}

impl Validate for pb::HandshakeReply {
    fn validate(&self) -> Checked {
        nested("ack", self.ack.as_ref(), true)?;
        let ok = self.ack.as_ref().is_some_and(|a| a.ok);
        nested("handshake", self.handshake.as_ref(), ok)?;
        if !ok && self.handshake.is_some() {
            return Err(ValidationError::new(
                "handshake",
                Violation::Inconsistent("a refusal carries no handshake"),
            ));
        }
        Ok(())
    }
}

impl Validate for pb::OracleCertificate {
    fn validate(&self) -> Checked {
        public_key("oracle_public_key", &self.oracle_public_key)?;
        public_key("network_public_key", &self.network_public_key)?;
        nonzero("not_after_ms", self.not_after_ms)?;
        if self.not_before_ms >= self.not_after_ms {
            return Err(ValidationError::new(
                "not_after_ms",
                Violation::Inconsistent("must be later than not_before_ms"),
            ));
        }
        signature("signature", &self.signature)
    }
}

impl Validate for pb::ProtocolListRequest {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for pb::ProtocolList {
    fn validate(&self) -> Checked {
        protocol_ids("protocols", &self.protocols)
    }
}

impl Validate for pb::MetricsRequest {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for pb::MetricsReport {
    fn validate(&self) -> Checked {
        float_range("load", self.load, 0.0, 1.0)?;
        if self.draft_tokens_accepted > self.draft_tokens_proposed {
            return Err(ValidationError::new(
                "draft_tokens_accepted",
                Violation::Inconsistent("cannot exceed draft_tokens_proposed"),
            ));
        }
        Ok(())
    }
}

impl Validate for pb::SamplingParams {
    fn validate(&self) -> Checked {
        float_range(
            "temperature",
            self.temperature,
            0.0,
            limits::MAX_TEMPERATURE,
        )?;
        float_range("top_p", self.top_p, 0.0, 1.0)
    }
}

impl Validate for pb::WorkAssignment {
    fn validate(&self) -> Checked {
        cid("prompt_cid", &self.prompt_cid)?;
        int_range(
            "max_tokens",
            self.max_tokens.into(),
            1,
            limits::MAX_NEW_TOKENS.into(),
        )?;
        int_range(
            "priority",
            self.priority.into(),
            1,
            limits::MAX_PRIORITY.into(),
        )?;
        cid("model_cid", &self.model_cid)?;
        int_range("timeout_ms", self.timeout_ms, 1, limits::MAX_TIMEOUT_MS)?;
        node_type("node_type", self.node_type)?;
        draft_k("draft_k", self.draft_k)?;
        nested("sampling", self.sampling.as_ref(), false)
    }
}

impl Validate for pb::GossipWorkMessage {
    fn validate(&self) -> Checked {
        nested("assignment", self.assignment.as_ref(), true)?;
        cids(
            "prior_work_ids",
            &self.prior_work_ids,
            limits::MAX_PRIOR_WORK_IDS,
        )?;
        int_range("ttl", self.ttl.into(), 1, limits::MAX_WORK_TTL_S.into())?;
        nonzero("issued_at_ms", self.issued_at_ms)
    }
}

impl Validate for pb::ClaimRequest {
    fn validate(&self) -> Checked {
        cid("work_cid", &self.work_cid)?;
        cid("model_cid", &self.model_cid)
    }
}

impl Validate for pb::ClaimResponse {
    fn validate(&self) -> Checked {
        nested("ack", self.ack.as_ref(), true)?;
        if self.ack.as_ref().is_some_and(|a| a.ok) {
            nonzero("session_id", self.session_id)?;
            required_len(
                "context_tokens",
                self.context_tokens.len(),
                limits::MAX_CONTEXT_TOKENS,
            )?;
            tokens(
                "context_tokens",
                &self.context_tokens,
                limits::MAX_CONTEXT_TOKENS,
            )?;
            draft_k("draft_k", self.draft_k)?;
            nested("sampling", self.sampling.as_ref(), false)?;
            int_range(
                "output_start",
                i64::from(self.output_start),
                1,
                self.context_tokens.len() as i64,
            )?;
        }
        Ok(())
    }
}

impl Validate for pb::DraftRequest {
    fn validate(&self) -> Checked {
        cid("work_cid", &self.work_cid)?;
        nonzero("session_id", self.session_id)?;
        int_range("round", self.round.into(), 1, u32::MAX.into())?;
        tokens(
            "accepted_tokens",
            &self.accepted_tokens,
            limits::MAX_CONTEXT_TOKENS,
        )?;
        int_range(
            "context_len",
            self.context_len.into(),
            self.accepted_tokens.len().max(1) as i64,
            limits::MAX_CONTEXT_TOKENS as i64,
        )?;
        draft_k("draft_k", self.draft_k)?;
        int_range(
            "deadline_ms",
            self.deadline_ms.into(),
            1,
            limits::MAX_DEADLINE_MS.into(),
        )
    }
}

impl Validate for pb::WorkResult {
    fn validate(&self) -> Checked {
        cid("work_cid", &self.work_cid)?;
        cid("result_cid", &self.result_cid)?;
        tokens(
            "token_ids",
            &self.token_ids,
            limits::MAX_NEW_TOKENS as usize,
        )?;
        if ContentId::of_tokens(&self.token_ids).to_bytes() != self.result_cid {
            return Err(ValidationError::new(
                "result_cid",
                Violation::Inconsistent("is not the content id of token_ids"),
            ));
        }
        signature("proof", &self.proof)?;
        int_range(
            "inference_time_ms",
            self.inference_time_ms.into(),
            0,
            limits::MAX_TIMEOUT_MS,
        )?;
        float_range("confidence_score", self.confidence_score, 0.0, 1.0)?;
        let dists = &self.draft_distributions;
        if !dists.is_empty() && dists.len() != self.token_ids.len() {
            return Err(ValidationError::new(
                "draft_distributions",
                Violation::Inconsistent("needs one distribution per token, or none"),
            ));
        }
        for (i, (dist, &token)) in dists.iter().zip(&self.token_ids).enumerate() {
            let f = indexed("draft_distributions", i);
            dist.validate().map_err(|e| e.within(&f))?;
            // The drafted token was drawn from this distribution, so it must be
            // in its support (the verifier divides by its probability).
            let drawn = dist.token_ids.iter().position(|&t| t == token);
            if drawn.is_none_or(|j| dist.probs[j] <= 0.0) {
                return Err(ValidationError::new(
                    f,
                    Violation::Inconsistent("gives the drafted token probability 0"),
                ));
            }
        }
        Ok(())
    }
}

impl Validate for pb::SparseDistribution {
    fn validate(&self) -> Checked {
        required_len("token_ids", self.token_ids.len(), limits::MAX_DRAFT_SUPPORT)?;
        tokens("token_ids", &self.token_ids, limits::MAX_DRAFT_SUPPORT)?;
        if self.probs.len() != self.token_ids.len() {
            return Err(ValidationError::new(
                "probs",
                Violation::Inconsistent("needs one probability per token id"),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.token_ids.len());
        if let Some(i) = self.token_ids.iter().position(|t| !seen.insert(*t)) {
            return Err(ValidationError::new(
                indexed("token_ids", i),
                Violation::Inconsistent("repeats a token id"),
            ));
        }
        for (i, &p) in self.probs.iter().enumerate() {
            float_range(&indexed("probs", i), p, 0.0, 1.0)?;
        }
        let total: f64 = self.probs.iter().map(|&p| f64::from(p)).sum();
        // f32 rounding of a normalised distribution stays far inside this.
        if !(0.999..=1.001).contains(&total) {
            return Err(ValidationError::new(
                "probs",
                Violation::OutOfRange {
                    got: total,
                    min: 0.999,
                    max: 1.001,
                },
            ));
        }
        Ok(())
    }
}

impl Validate for pb::ResultBroadcast {
    fn validate(&self) -> Checked {
        cid("work_cid", &self.work_cid)?;
        nested("result", self.result.as_ref(), true)?;
        if let Some(result) = &self.result {
            if result.work_cid != self.work_cid {
                return Err(ValidationError::new(
                    "result.work_cid",
                    Violation::Inconsistent("differs from work_cid"),
                ));
            }
            if !result.verified {
                return Err(ValidationError::new(
                    "result.verified",
                    Violation::Inconsistent("a broadcast result must be verified"),
                ));
            }
        }
        signature("verification_signature", &self.verification_signature)?;
        float_range("confidence_score", self.confidence_score, 0.0, 1.0)?;
        float_range("proof_strength", self.proof_strength, 0.0, 1.0)?;
        nested("certificate", self.certificate.as_ref(), true)?;
        nonzero("issued_at_ms", self.issued_at_ms)?;
        int_range("ttl", self.ttl.into(), 1, limits::MAX_RESULT_TTL_S.into())
    }
}

impl Validate for pb::NodeInfo {
    fn validate(&self) -> Checked {
        peer_id("peer_id", &self.peer_id)?;
        node_type("node_type", self.node_type)?;
        protocol_ids("supported_protocols", &self.supported_protocols)?;
        nested("hardware_info", self.hardware_info.as_ref(), false)?;
        cids("model_cids", &self.model_cids, limits::MAX_MODELS)
    }
}

impl Validate for pb::AddressInfo {
    fn validate(&self) -> Checked {
        peer_id("peer_id", &self.peer_id)?;
        required_len("multiaddr", self.multiaddr.len(), limits::MAX_MULTIADDR_LEN)?;
        self.multiaddr
            .parse::<libp2p::Multiaddr>()
            .map(|_| ())
            .map_err(|e| ValidationError::new("multiaddr", Violation::Malformed(e.to_string())))
    }
}

impl Validate for pb::TopologyMessage {
    fn validate(&self) -> Checked {
        max_len("nodes", self.nodes.len(), limits::MAX_TOPOLOGY_NODES)?;
        for (i, node) in self.nodes.iter().enumerate() {
            node.validate()
                .map_err(|e| e.within(&indexed("nodes", i)))?;
        }
        nonzero("timestamp", self.timestamp.into())?;
        max_len(
            "listen_addrs",
            self.listen_addrs.len(),
            limits::MAX_LISTEN_ADDRS,
        )?;
        for (i, addr) in self.listen_addrs.iter().enumerate() {
            addr.validate()
                .map_err(|e| e.within(&indexed("listen_addrs", i)))?;
        }
        Ok(())
    }
}

impl Validate for pb::GoldenTicket {
    fn validate(&self) -> Checked {
        cid("work_cid", &self.work_cid)?;
        required_len("prompt", self.prompt.len(), limits::MAX_TEXT_BYTES)?;
        max_len(
            "correct_answer",
            self.correct_answer.len(),
            limits::MAX_TEXT_BYTES,
        )?;
        required_len(
            "expected_token_ids",
            self.expected_token_ids.len(),
            limits::MAX_NEW_TOKENS as usize,
        )?;
        tokens(
            "expected_token_ids",
            &self.expected_token_ids,
            limits::MAX_NEW_TOKENS as usize,
        )
    }
}

impl Validate for pb::ErrorDetail {
    fn validate(&self) -> Checked {
        if ErrorCode::from_name(&self.code).is_none() {
            return Err(ValidationError::new(
                "code",
                Violation::Malformed("not an error code of seed 004".into()),
            ));
        }
        max_len("message", self.message.len(), limits::MAX_DETAIL_LEN)?;
        max_len("field", self.field.len(), limits::MAX_FIELD_PATH_LEN)
    }
}

impl Validate for pb::CompletionRequest {
    fn validate(&self) -> Checked {
        required_len("prompt", self.prompt.len(), limits::MAX_PROMPT_BYTES)?;
        int_range(
            "max_tokens",
            self.max_tokens.into(),
            1,
            limits::MAX_COMPLETION_TOKENS.into(),
        )?;
        nested("sampling", self.sampling.as_ref(), true)?;
        max_len("stop", self.stop.len(), limits::MAX_STOP_STRINGS)?;
        for (i, stop) in self.stop.iter().enumerate() {
            required_len(&indexed("stop", i), stop.len(), limits::MAX_STOP_BYTES)?;
        }
        Ok(())
    }
}

impl Validate for pb::CompletionResponse {
    fn validate(&self) -> Checked {
        nested("ack", self.ack.as_ref(), true)?;
        if self.ack.as_ref().is_some_and(|a| a.ok) {
            max_len("text", self.text.len(), limits::MAX_TEXT_BYTES)?;
            tokens(
                "token_ids",
                &self.token_ids,
                limits::MAX_COMPLETION_TOKENS as usize,
            )?;
            if !matches!(self.finish_reason.as_str(), "stop" | "length") {
                return Err(ValidationError::new(
                    "finish_reason",
                    Violation::Malformed("must be \"stop\" or \"length\"".into()),
                ));
            }
        }
        Ok(())
    }
}

impl Validate for pb::Ack {
    fn validate(&self) -> Checked {
        max_len("detail", self.detail.len(), limits::MAX_DETAIL_LEN)?;
        max_len("errors", self.errors.len(), limits::MAX_ERRORS)?;
        for (i, e) in self.errors.iter().enumerate() {
            e.validate()
                .map_err(|err| err.within(&indexed("errors", i)))?;
        }
        Ok(())
    }
}

fn sha256(field: &str, bytes: &[u8]) -> Checked {
    match bytes.len() {
        0 => Err(ValidationError::new(field, Violation::Missing)),
        32 => Ok(()),
        n => Err(ValidationError::new(
            field,
            Violation::Malformed(format!("{n} bytes, a SHA-256 digest has 32")),
        )),
    }
}

fn piece_index(field: &str, index: u32) -> Checked {
    int_range(field, index.into(), 0, limits::MAX_PIECES as i64 - 1)
}

impl Validate for pb::ModelManifest {
    fn validate(&self) -> Checked {
        int_range(
            "version",
            self.version.into(),
            limits::MANIFEST_VERSION.into(),
            limits::MANIFEST_VERSION.into(),
        )?;
        int_range(
            "file_size",
            i64::try_from(self.file_size).unwrap_or(i64::MAX),
            1,
            limits::MAX_MODEL_BYTES as i64,
        )?;
        sha256("file_sha256", &self.file_sha256)?;
        int_range(
            "piece_size",
            self.piece_size.into(),
            limits::MIN_PIECE_SIZE.into(),
            limits::MAX_PIECE_SIZE.into(),
        )?;
        if !self.piece_size.is_power_of_two() {
            return Err(ValidationError::new(
                "piece_size",
                Violation::Malformed("must be a power of two".into()),
            ));
        }
        let pieces = self.file_size.div_ceil(self.piece_size.into());
        if pieces > limits::MAX_PIECES as u64 {
            return Err(ValidationError::new(
                "piece_size",
                Violation::Inconsistent("cuts the file into more than 65 536 pieces"),
            ));
        }
        if self.piece_sha256.len() as u64 != pieces {
            return Err(ValidationError::new(
                "piece_sha256",
                Violation::Inconsistent("needs one digest per piece of file_size"),
            ));
        }
        for (i, digest) in self.piece_sha256.iter().enumerate() {
            sha256(&indexed("piece_sha256", i), digest)?;
        }
        max_len(
            "architecture",
            self.architecture.len(),
            limits::MAX_ARCHITECTURE_LEN,
        )?;
        max_len("tensors", self.tensors.len(), limits::MAX_TENSORS)?;
        for (i, t) in self.tensors.iter().enumerate() {
            let field = indexed("tensors", i);
            required_len(
                &format!("{field}.name"),
                t.name.len(),
                limits::MAX_TENSOR_NAME_LEN,
            )?;
            if t.offset
                .checked_add(t.size)
                .is_none_or(|end| end > self.file_size)
            {
                return Err(ValidationError::new(
                    field,
                    Violation::Inconsistent("ends past the end of the file"),
                ));
            }
        }
        max_len("layers", self.layers.len(), limits::MAX_LAYERS)?;
        for (i, l) in self.layers.iter().enumerate() {
            let field = indexed("layers", i);
            let end = u64::from(l.first_piece) + u64::from(l.piece_count);
            if l.piece_count == 0 || end > pieces {
                return Err(ValidationError::new(
                    field,
                    Violation::Inconsistent("names pieces the file does not have"),
                ));
            }
        }
        Ok(())
    }
}

impl Validate for pb::WeightsRequest {
    fn validate(&self) -> Checked {
        cid("model_cid", &self.model_cid)?;
        match self.want {
            None => Err(ValidationError::new("want", Violation::Missing)),
            Some(pb::weights_request::Want::Piece(i)) => piece_index("piece", i),
            Some(pb::weights_request::Want::Manifest(_)) => Ok(()),
        }
    }
}

impl Validate for pb::WeightsResponse {
    fn validate(&self) -> Checked {
        use pb::weights_response::Answer;
        match &self.answer {
            None => Err(ValidationError::new("answer", Violation::Missing)),
            // The manifest's bytes are checked against the content id asked
            // for, then decoded and validated, by whoever asked.
            Some(Answer::Manifest(bytes)) => {
                required_len("manifest", bytes.len(), MANIFEST_MAX_LEN)
            }
            Some(Answer::Piece(piece)) => piece.validate().map_err(|e| e.within("piece")),
            Some(Answer::Refused(ack)) => ack.validate().map_err(|e| e.within("refused")),
        }
    }
}

impl Validate for pb::Piece {
    fn validate(&self) -> Checked {
        piece_index("index", self.index)?;
        required_len("data", self.data.len(), limits::MAX_PIECE_SIZE as usize)
    }
}
