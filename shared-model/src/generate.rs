//! One sequence generated on this machine, with or without a local draft model:
//! a [`Session`] driven by single-sequence passes. `oracle generate` and the
//! tests use it; the oracle's server drives the same [`Session`] type through
//! its batching scheduler instead.
//!
//! Plain decoding is speculative decoding with zero drafts: every round runs the
//! target over whatever it has not seen yet plus the round's drafts, and keeps
//! the verdict of a verifier from [`crate::verify`]. Because the forward pass
//! is batch-invariant and every verifier draws exactly one random number per
//! output token, a run with a draft model produces the same tokens as a run
//! without one (greedy always; sampled with [`SamplingVerifier::MatchTarget`]).

use crate::backend::Backend;
use crate::draft::{Draft, DraftJob, DraftModel, DraftState};
use crate::model::{BatchItem, KvCache, Llama, Logits, ModelError};
pub use crate::session::SamplingVerifier;
use crate::session::{OutputToken, Session, SessionError, SessionStats};

/// A generation step that failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The target's pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The session refused the pass's results.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Prompt tokens fed per pass while prefilling.
pub const PREFILL_CHUNK: usize = 512;

/// Counters of a generation: the session's and the draft model's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// The session's counters.
    pub session: SessionStats,
    /// Draft forward passes.
    pub draft_forward_passes: usize,
}

struct LocalDraft<'a, D: Backend> {
    model: &'a DraftModel<D>,
    state: DraftState<D>,
    k: usize,
}

/// A session, the target and optionally a draft model (see the module docs).
pub struct Generator<'a, B: Backend, D: Backend = B> {
    target: &'a Llama<B>,
    cache: KvCache<B>,
    session: Session,
    draft: Option<LocalDraft<'a, D>>,
    draft_forward_passes: usize,
}

impl<'a, B: Backend, D: Backend> Generator<'a, B, D> {
    /// Runs `session` on `target`; the cache holds at most the session's context.
    pub fn new(target: &'a Llama<B>, session: Session) -> Self {
        Generator {
            cache: target.new_cache_with_limit(session.config().max_context),
            target,
            session,
            draft: None,
            draft_forward_passes: 0,
        }
    }

    /// Drafts `k` tokens per round with `draft` (which must share the target's vocabulary).
    pub fn with_draft(mut self, draft: &'a DraftModel<D>, k: usize) -> Self {
        let c = self.session.config();
        self.draft = Some(LocalDraft {
            state: draft.new_state(c.max_context),
            model: draft,
            k,
        });
        self
    }

    /// The session (its context, counters and stop reason).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Counters so far.
    pub fn stats(&self) -> GenerationStats {
        GenerationStats {
            session: self.session.stats(),
            draft_forward_passes: self.draft_forward_passes,
        }
    }

    /// Runs one pass and returns the tokens it output: none for a prefill
    /// chunk, none once the session has stopped ([`Session::stopped`] says why).
    pub fn step(&mut self) -> Result<Vec<OutputToken>, GenerateError> {
        if self.session.stopped().is_some() {
            return Ok(Vec::new());
        }
        let mut drafted = Draft::default();
        if let Some(d) = self.draft.as_mut()
            && !self.session.is_prefilling(PREFILL_CHUNK)
        {
            let k = d.k.min(self.session.draft_room());
            if k > 0 {
                let mut jobs = [DraftJob {
                    state: &mut d.state,
                    context: self.session.context(),
                    k,
                    params: self.session.config().params,
                    noise_seed: self
                        .session
                        .config()
                        .verifier
                        .draft_noise_seed(self.session.config().params.seed),
                    output_start: self.session.output_start(),
                }];
                // A draft that fails costs this round its drafts, nothing more.
                if let Ok(mut out) = d.model.draft(&mut jobs) {
                    drafted = out.pop().unwrap_or_default();
                }
                self.draft_forward_passes += drafted.tokens.len();
            }
        }
        let feed = self.session.feed(PREFILL_CHUNK, &drafted.tokens);
        let logits = self.target.forward_batch(&mut [BatchItem {
            tokens: &feed.tokens,
            cache: &mut self.cache,
            logits: Logits::From(feed.logits_from),
        }])?;
        let rows = match logits {
            Some(l) => self.target.logits_to_rows(l)?,
            None => Vec::new(),
        };
        let out = self.session.advance(&feed, &rows, &drafted.dists)?;
        self.cache.truncate(self.session.cached_len());
        Ok(out)
    }

    /// Runs to the end and returns every output token.
    pub fn run(&mut self) -> Result<Vec<u32>, GenerateError> {
        while self.session.stopped().is_none() {
            self.step()?;
        }
        Ok(self.session.generated().to_vec())
    }
}
