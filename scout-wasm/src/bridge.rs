//! Messages between a browser scout's page (the libp2p node) and its model
//! worker, as JSON text. Plain data, so both ends and the tests share them.
//! Protocol messages ride inside as hex of their protobuf encoding.
//!
//! The page forwards what the oracle sends (granted claims, rounds) and the
//! worker answers rounds in batches: one [`ToWorker::Rounds`] is one batched
//! draft. The worker handles messages in the order they come.

use serde::{Deserialize, Serialize};

use crate::round::Fault;

/// Which backend the worker should run the draft model on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// WebGPU when the browser offers a usable adapter, else the CPU.
    #[default]
    Auto,
    /// WebGPU or an error.
    Webgpu,
    /// The CPU (WebAssembly), even where WebGPU exists.
    Cpu,
}

/// Where the worker got the draft model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// The browser's cache: nothing downloaded.
    Cache,
    /// Downloaded from the oracle.
    Network,
    /// Partly from this browser's cache (pieces an earlier visit had
    /// verified: a download resumed), the rest downloaded.
    Resumed,
}

/// The backend the model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// burn's WebGPU backend.
    Webgpu,
    /// burn's CPU backend, compiled to WebAssembly.
    Cpu,
}

impl BackendKind {
    /// The name the web app shows.
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::Webgpu => "WebGPU",
            BackendKind::Cpu => "CPU",
        }
    }
}

/// The draft model a scout must hold, as the oracle describes it
/// (`/api/status` → `scout_model`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOffer {
    /// Where to download it.
    pub url: String,
    /// Its size, bytes.
    pub size: u64,
    /// SHA-256 of the file, hex: checked before the model is used.
    pub sha256: String,
    /// Its content id, hex (the handshake names it).
    pub cid: String,
    /// Where its manifest is: the model then comes as verified pieces, kept
    /// as they arrive (a reload resumes). Without it, the whole file at `url`.
    #[serde(default)]
    pub manifest_url: Option<String>,
    /// Blocks to load (all when absent).
    #[serde(default)]
    pub layers: Option<usize>,
}

/// One round forwarded to the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRequest {
    /// The page's handle for the answer.
    pub id: u64,
    /// The `DraftRequest`, protobuf, hex.
    pub request: String,
}

/// The worker's answer to one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundAnswer {
    /// The [`RoundRequest::id`].
    pub id: u64,
    /// The signed `WorkResult`, protobuf, hex; absent when there are no drafts.
    pub result: Option<String>,
    /// Why there are none.
    pub error: Option<String>,
}

/// The worker scout's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Sessions claimed.
    pub claims: u64,
    /// Rounds answered.
    pub rounds: u64,
    /// Tokens drafted.
    pub drafted: u64,
    /// Drafted tokens the oracle accepted (as later rounds show).
    pub accepted: u64,
    /// Sessions held now.
    pub sessions: u64,
}

/// A message to the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToWorker {
    /// Download, check and load the draft model, then draft as the scout
    /// whose key this is.
    Start {
        /// The scout's key, protobuf encoding, hex (it signs the drafts).
        key: String,
        /// The model.
        model: ModelOffer,
        /// The backend wanted.
        #[serde(default)]
        backend: BackendChoice,
        /// Sessions held at once.
        max_sessions: usize,
        /// Longest context drafted for.
        max_context: usize,
        /// Misbehave on purpose (tests and demonstrations of the oracle's
        /// defences); honest when absent.
        #[serde(default)]
        fault: Fault,
    },
    /// The oracle granted a claim.
    Claimed {
        /// The work's content id, hex.
        work_cid: String,
        /// The `ClaimResponse`, protobuf, hex.
        response: String,
    },
    /// Rounds to draft, as one batch.
    Rounds {
        /// The rounds.
        rounds: Vec<RoundRequest>,
    },
    /// The oracle is gone: forget every session.
    ReleaseAll,
    /// Load the model at `model_url` (its first `layers` blocks), run
    /// `tokens` through it once, then draft `draft_tokens` greedily after
    /// them: the backend check the browser tests and benchmarks use.
    Probe {
        /// Where the GGUF file is.
        model_url: String,
        /// Blocks to keep (all when absent).
        layers: Option<usize>,
        /// The prompt.
        tokens: Vec<u32>,
        /// The backend wanted.
        #[serde(default)]
        backend: BackendChoice,
        /// Logits reported per position (the first ones of each row).
        #[serde(default = "default_values")]
        values: usize,
        /// Tokens to draft after the prompt, timed.
        #[serde(default)]
        draft_tokens: usize,
    },
}

fn default_values() -> usize {
    16
}

/// A message from the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FromWorker {
    /// The worker runs and takes messages (earlier ones are lost).
    Ready,
    /// The backend the worker chose, and why when it is not WebGPU.
    Backend {
        /// The backend.
        kind: BackendKind,
        /// The WebGPU adapter's name.
        adapter: Option<String>,
        /// Why WebGPU is not used, when it is not.
        fallback_reason: Option<String>,
    },
    /// What [`ToWorker::Probe`] measured.
    Probe {
        /// The backend it ran on.
        backend: BackendKind,
        /// Model bytes fetched.
        model_bytes: u64,
        /// Milliseconds to fetch the file.
        fetch_ms: f64,
        /// Milliseconds to parse, dequantise and upload it.
        load_ms: f64,
        /// Milliseconds of the first pass (includes compiling shaders).
        first_forward_ms: f64,
        /// The first values of each position's logits.
        rows: Vec<Vec<f32>>,
        /// Each position's most likely next token.
        argmax: Vec<u32>,
        /// The drafted tokens.
        drafted: Vec<u32>,
        /// Drafted tokens per second (the drafting only).
        draft_tokens_per_s: f64,
    },
    /// Bytes of the model downloaded so far.
    Progress {
        /// Received.
        received: u64,
        /// Expected in all.
        total: u64,
        /// Pieces verified so far (cached ones included).
        #[serde(default)]
        pieces: u32,
        /// Pieces in all (0 when the model comes whole).
        #[serde(default)]
        pieces_total: u32,
        /// Pieces this browser had from an earlier visit.
        #[serde(default)]
        pieces_cached: u32,
        /// Pieces refused for a bad SHA-256 (and fetched again).
        #[serde(default)]
        pieces_refused: u32,
    },
    /// The model is checked and loaded: the scout can claim work.
    Loaded {
        /// Milliseconds from the start message.
        ms: f64,
        /// Where the model came from.
        source: ModelSource,
        /// Why the browser's cache could not serve or keep the model (quota,
        /// no Cache Storage on a plain-http page); it is used anyway.
        cache_error: Option<String>,
    },
    /// What became of a granted claim.
    Claimed {
        /// The work's content id, hex.
        work_cid: String,
        /// The session, when the worker took it.
        session: Option<u64>,
        /// Why not.
        error: Option<String>,
    },
    /// Answers to one [`ToWorker::Rounds`], in its order; or, with no answers,
    /// sessions let go between rounds (their answer ended).
    Answers {
        /// One per round.
        answers: Vec<RoundAnswer>,
        /// Sessions the worker let go since its last answers (idle, or out of step).
        released: Vec<u64>,
        /// Counters after this batch.
        stats: WorkerStats,
    },
    /// Something failed; `kind` is stable for the page to act on.
    Error {
        /// `fetch`, `checksum`, `model`, `webgpu`, `backend`, `message`, `state`.
        kind: String,
        /// What happened.
        message: String,
    },
}

impl FromWorker {
    /// An error message.
    pub fn error(kind: &str, message: impl std::fmt::Display) -> Self {
        FromWorker::Error {
            kind: kind.to_owned(),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_requests_parse_with_defaults() {
        let text = r#"{"op":"probe","model_url":"/models/m.gguf","layers":2,"tokens":[1,2]}"#;
        let message: ToWorker = serde_json::from_str(text).expect("parses");
        assert_eq!(
            message,
            ToWorker::Probe {
                model_url: "/models/m.gguf".into(),
                layers: Some(2),
                tokens: vec![1, 2],
                backend: BackendChoice::Auto,
                values: 16,
                draft_tokens: 0,
            }
        );
        assert!(serde_json::from_str::<ToWorker>(r#"{"op":"launch"}"#).is_err());
    }

    #[test]
    fn worker_messages_are_tagged_json() {
        let text = serde_json::to_string(&FromWorker::error("fetch", "404")).expect("encodes");
        assert_eq!(text, r#"{"op":"error","kind":"fetch","message":"404"}"#);
        assert_eq!(
            serde_json::to_string(&FromWorker::Ready).expect("encodes"),
            r#"{"op":"ready"}"#
        );
    }
}
