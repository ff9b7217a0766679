//! Prometheus metrics, served at `GET /metrics` in the text format.
//!
//! Other tools read these names, so they are a contract: `shard_tokens_generated_total`,
//! `shard_target_forward_passes_total`, `shard_draft_tokens_proposed_total`,
//! `shard_draft_tokens_accepted_total`, `shard_sessions_active`, `shard_queue_depth`
//! (counters get their `_total` suffix from the exposition format).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The HTTP status code.
    pub status: u16,
}

/// Labels of a finished session.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabels {
    /// `stop`, `length`, `cancelled` or `failed`.
    pub reason: String,
}

/// Labels of a scout's counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScoutLabels {
    /// The scout's peer id.
    pub scout: String,
}

/// Whether a received message passed validation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValidLabels {
    /// Passed.
    pub valid: bool,
}

/// Every metric the oracle exports.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by endpoint and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Tokens output to clients.
    pub tokens_generated: Counter,
    /// Prompt tokens taken in.
    pub prompt_tokens: Counter,
    /// Batched target forward passes.
    pub target_forward_passes: Counter,
    /// Sessions in each pass.
    pub batch_sessions: Histogram,
    /// Tokens in each pass.
    pub batch_tokens: Histogram,
    /// Drafted tokens offered to the verifier.
    pub draft_tokens_proposed: Counter,
    /// Drafted tokens accepted.
    pub draft_tokens_accepted: Counter,
    /// Accepted ÷ proposed drafts since the start.
    pub draft_acceptance_rate: Gauge<f64, AtomicU64>,
    /// Sessions running now.
    pub sessions_active: Gauge,
    /// Requests waiting to start.
    pub queue_depth: Gauge,
    /// Sessions ended, by reason.
    pub sessions_finished: Family<FinishLabels, Counter>,
    /// Seconds from request to first output token.
    pub time_to_first_token: Histogram,
    /// Seconds between output tokens of a session.
    pub token_latency: Histogram,
    /// Seconds per forward pass.
    pub pass_seconds: Histogram,
    /// Scouts connected (handshake done).
    pub scouts_connected: Gauge,
    /// Sessions claimed by scouts.
    pub scout_claims: Counter,
    /// Drafted tokens each scout proposed (in time for its round).
    pub scout_drafts_proposed: Family<ScoutLabels, Counter>,
    /// Drafted tokens of each scout the target accepted.
    pub scout_drafts_accepted: Family<ScoutLabels, Counter>,
    /// Seconds from sending a round to a scout to its drafts arriving.
    pub round_latency: Histogram,
    /// Peers banned.
    pub bans: Counter,
    /// Results this oracle published on `shard-work-result`.
    pub results_published: Counter,
    /// Results received on `shard-work-result`, by validity.
    pub results_received: Family<ValidLabels, Counter>,
    /// Bytes of model files sent to browsers (`/models/{name}`).
    pub model_bytes_served: Counter,
    /// Model pieces sent to peers on `/shard/1.0.0/weights`.
    pub pieces_served_p2p: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let latency = || Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let m = Metrics {
            requests: Family::default(),
            tokens_generated: Counter::default(),
            prompt_tokens: Counter::default(),
            target_forward_passes: Counter::default(),
            batch_sessions: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            batch_tokens: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            draft_tokens_proposed: Counter::default(),
            draft_tokens_accepted: Counter::default(),
            draft_acceptance_rate: Gauge::default(),
            sessions_active: Gauge::default(),
            queue_depth: Gauge::default(),
            sessions_finished: Family::default(),
            time_to_first_token: latency(),
            token_latency: latency(),
            pass_seconds: latency(),
            scouts_connected: Gauge::default(),
            scout_claims: Counter::default(),
            scout_drafts_proposed: Family::default(),
            scout_drafts_accepted: Family::default(),
            round_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            bans: Counter::default(),
            results_published: Counter::default(),
            results_received: Family::default(),
            model_bytes_served: Counter::default(),
            pieces_served_p2p: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "shard_requests",
            "HTTP requests answered",
            m.requests.clone(),
        );
        registry.register(
            "shard_tokens_generated",
            "Tokens output to clients",
            m.tokens_generated.clone(),
        );
        registry.register(
            "shard_prompt_tokens",
            "Prompt tokens taken in",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "shard_target_forward_passes",
            "Batched forward passes of the target model",
            m.target_forward_passes.clone(),
        );
        registry.register(
            "shard_batch_sessions",
            "Sessions in one forward pass",
            m.batch_sessions.clone(),
        );
        registry.register(
            "shard_batch_tokens",
            "Tokens in one forward pass",
            m.batch_tokens.clone(),
        );
        registry.register(
            "shard_draft_tokens_proposed",
            "Drafted tokens offered to the verifier",
            m.draft_tokens_proposed.clone(),
        );
        registry.register(
            "shard_draft_tokens_accepted",
            "Drafted tokens the target accepted",
            m.draft_tokens_accepted.clone(),
        );
        registry.register(
            "shard_draft_acceptance_rate",
            "Accepted over proposed drafted tokens since the start",
            m.draft_acceptance_rate.clone(),
        );
        registry.register(
            "shard_sessions_active",
            "Sessions running",
            m.sessions_active.clone(),
        );
        registry.register(
            "shard_queue_depth",
            "Requests waiting to start",
            m.queue_depth.clone(),
        );
        registry.register(
            "shard_sessions_finished",
            "Sessions ended, by reason",
            m.sessions_finished.clone(),
        );
        registry.register(
            "shard_time_to_first_token_seconds",
            "Seconds from request to first output token",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "shard_token_latency_seconds",
            "Seconds between output tokens of a session",
            m.token_latency.clone(),
        );
        registry.register(
            "shard_forward_pass_seconds",
            "Seconds per batched forward pass",
            m.pass_seconds.clone(),
        );
        registry.register(
            "shard_scouts_connected",
            "Scouts connected with a completed handshake",
            m.scouts_connected.clone(),
        );
        registry.register(
            "shard_scout_claims",
            "Sessions claimed by scouts",
            m.scout_claims.clone(),
        );
        registry.register(
            "shard_scout_draft_tokens_proposed",
            "Drafted tokens a scout proposed in time for its round",
            m.scout_drafts_proposed.clone(),
        );
        registry.register(
            "shard_scout_draft_tokens_accepted",
            "Drafted tokens of a scout the target accepted",
            m.scout_drafts_accepted.clone(),
        );
        registry.register(
            "shard_scout_round_latency_seconds",
            "Seconds from a round sent to a scout to its drafts",
            m.round_latency.clone(),
        );
        registry.register("shard_bans", "Peers banned", m.bans.clone());
        registry.register(
            "shard_results_published",
            "Signed results published on shard-work-result",
            m.results_published.clone(),
        );
        registry.register(
            "shard_results_received",
            "Results received on shard-work-result, by validity",
            m.results_received.clone(),
        );
        registry.register(
            "shard_model_bytes_served",
            "Bytes of model files sent over HTTP",
            m.model_bytes_served.clone(),
        );
        registry.register(
            "shard_pieces_served_p2p",
            "Model pieces sent to peers on /shard/1.0.0/weights",
            m.pieces_served_p2p.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts drafts a scout proposed and had accepted.
    pub fn scout_drafts(&self, scout: &str, proposed: u64, accepted: u64) {
        let labels = ScoutLabels {
            scout: scout.to_owned(),
        };
        if proposed > 0 {
            self.scout_drafts_proposed
                .get_or_create(&labels)
                .inc_by(proposed);
        }
        if accepted > 0 {
            self.scout_drafts_accepted
                .get_or_create(&labels)
                .inc_by(accepted);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
