//! The generation loop, with or without a draft model.
//!
//! Plain decoding is speculative decoding with zero drafts: every round runs the
//! target over whatever it has not seen yet plus the round's drafts, and keeps
//! the verdict of a verifier from [`crate::verify`]. Because the forward pass
//! is batch-invariant and every verifier draws exactly one random number per
//! output token, a run with a draft model produces the same tokens as a run
//! without one (greedy always; sampled with [`SamplingVerifier::MatchTarget`]).

use crate::backend::Backend;
use crate::model::{KvCache, Llama, Logits, ModelError};
use crate::sampling::{Rng, SamplingParams, probabilities, sample};
use crate::verify::{
    SparseDistribution, Verdict, verify_greedy, verify_sampled_match, verify_sampling,
};

/// How drafts are checked when sampling (greedy always uses
/// [`verify_greedy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SamplingVerifier {
    /// Accept a draft only if it equals the target's own seeded sample: output
    /// identical to target-only sampling, unbiased whatever drafts arrive.
    #[default]
    MatchTarget,
    /// Standard speculative sampling: more drafts accepted, the target's
    /// distribution preserved only when drafts really are drawn from `q`.
    Speculative,
}

/// Counters of a generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Target forward passes, prefill included.
    pub target_forward_passes: usize,
    /// Draft forward passes.
    pub draft_forward_passes: usize,
    /// Drafted tokens offered to the verifier.
    pub draft_tokens_proposed: usize,
    /// Drafted tokens accepted.
    pub draft_tokens_accepted: usize,
}

struct Drafter<'a, D: Backend> {
    model: &'a Llama<D>,
    cache: KvCache<D>,
    /// The tokens `cache` holds.
    fed: Vec<u32>,
    k: usize,
    rng: Rng,
}

/// A sequence being generated: the target (and optionally a draft model), its
/// caches, the context so far and the sampling state.
pub struct Generator<'a, B: Backend, D: Backend = B> {
    target: &'a Llama<B>,
    cache: KvCache<B>,
    /// Prompt plus generated tokens.
    context: Vec<u32>,
    /// Logits for the position after `context`, when the cache holds all of it.
    pending: Option<Vec<f32>>,
    params: SamplingParams,
    verifier: SamplingVerifier,
    rng: Rng,
    drafter: Option<Drafter<'a, D>>,
    stats: GenerationStats,
}

impl<'a, B: Backend, D: Backend> Generator<'a, B, D> {
    /// Prefills `target` with `prompt` (which must not be empty).
    pub fn new(
        target: &'a Llama<B>,
        prompt: &[u32],
        params: SamplingParams,
    ) -> Result<Self, ModelError> {
        let mut cache = target.new_cache();
        let logits = target.forward(prompt, &mut cache, Logits::Last)?;
        let pending = target.logits_to_rows(logits)?.pop();
        Ok(Generator {
            target,
            cache,
            context: prompt.to_vec(),
            pending,
            params,
            verifier: SamplingVerifier::default(),
            rng: Rng::new(params.seed),
            drafter: None,
            stats: GenerationStats {
                prompt_tokens: prompt.len(),
                target_forward_passes: 1,
                ..Default::default()
            },
        })
    }

    /// Drafts `k` tokens per round with `draft` (which must share the target's vocabulary).
    pub fn with_draft(mut self, draft: &'a Llama<D>, k: usize) -> Self {
        // The draft's own stream, distinct from (and not disturbing) the target's.
        let rng = Rng::new(self.params.seed ^ 0xd1b5_4a32_d192_ed03);
        self.drafter = Some(Drafter {
            model: draft,
            cache: draft.new_cache(),
            fed: Vec::new(),
            k,
            rng,
        });
        self
    }

    /// Chooses how sampled drafts are verified.
    pub fn with_verifier(mut self, verifier: SamplingVerifier) -> Self {
        self.verifier = verifier;
        self
    }

    /// Counters so far.
    pub fn stats(&self) -> GenerationStats {
        self.stats
    }

    /// Runs one round and returns its new tokens (at least one, at most
    /// `remaining`, fewer when the context is full: then none).
    pub fn step(&mut self, remaining: usize) -> Result<Vec<u32>, ModelError> {
        let max_context = self.target.config().context_length;
        let len = self.context.len();
        if remaining == 0 || len >= max_context {
            return Ok(Vec::new());
        }
        // Drafts beyond what may be emitted, or beyond the context, are waste.
        let room = (remaining - 1).min(max_context - len - 1);
        let (drafts, dists) = match self.drafter.as_mut() {
            Some(d) if room > 0 => draft_round(
                d,
                &self.context,
                d.k.min(room),
                &self.params,
                &mut self.stats,
            )?,
            _ => (Vec::new(), Vec::new()),
        };

        // Target rows for positions len .. len + drafts.
        let mut rows = Vec::with_capacity(drafts.len() + 1);
        let cached = self.cache.len();
        let mut feed: Vec<u32> = self.context[cached..].to_vec();
        if let Some(row) = self.pending.take() {
            rows.push(row);
        }
        feed.extend(&drafts);
        if !feed.is_empty() {
            let logits = self.target.forward(&feed, &mut self.cache, Logits::All)?;
            self.stats.target_forward_passes += 1;
            // Rows for already-known context tokens other than the last are not needed.
            let all = self.target.logits_to_rows(logits)?;
            let skip = all.len() - (drafts.len() + 1 - rows.len());
            rows.extend(all.into_iter().skip(skip));
        }

        let verdict = self.verify(&drafts, &dists, &rows);
        self.stats.draft_tokens_proposed += drafts.len();
        self.stats.draft_tokens_accepted += verdict.accepted;
        // Keep the accepted drafts in the cache; the target's own token is fed next round.
        self.cache.truncate(len + verdict.accepted);
        self.context.extend(&verdict.tokens);
        Ok(verdict.tokens)
    }

    fn verify(
        &mut self,
        drafts: &[u32],
        dists: &[SparseDistribution],
        rows: &[Vec<f32>],
    ) -> Verdict {
        if self.params.is_greedy() {
            return verify_greedy(drafts, rows);
        }
        let probs: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| probabilities(r, &self.params))
            .collect();
        match self.verifier {
            SamplingVerifier::MatchTarget => verify_sampled_match(drafts, &probs, &mut self.rng),
            SamplingVerifier::Speculative => verify_sampling(drafts, dists, &probs, &mut self.rng),
        }
    }
}

/// Brings the draft cache in line with `context` and drafts `k` tokens.
fn draft_round<D: Backend>(
    d: &mut Drafter<'_, D>,
    context: &[u32],
    k: usize,
    params: &SamplingParams,
    stats: &mut GenerationStats,
) -> Result<(Vec<u32>, Vec<SparseDistribution>), ModelError> {
    // Keep the longest prefix the draft has right, but always re-feed at least
    // the last context token: its logits are where drafting starts.
    let common = d
        .fed
        .iter()
        .zip(context)
        .take_while(|(a, b)| a == b)
        .count()
        .min(context.len() - 1);
    d.cache.truncate(common);
    d.fed.truncate(common);
    let mut feed = context[common..].to_vec();
    let mut drafts = Vec::with_capacity(k);
    let mut dists = Vec::with_capacity(k);
    for _ in 0..k {
        let logits = d.model.forward(&feed, &mut d.cache, Logits::Last)?;
        stats.draft_forward_passes += 1;
        d.fed.extend(&feed);
        let row = d.model.logits_to_rows(logits)?.pop().unwrap_or_default();
        let token = if params.is_greedy() {
            crate::sampling::argmax(&row)
        } else {
            let q = probabilities(&row, params);
            let token = sample(&q, &mut d.rng);
            dists.push(SparseDistribution::from_dense(&q));
            token
        };
        drafts.push(token);
        feed = vec![token];
    }
    Ok((drafts, dists))
}
