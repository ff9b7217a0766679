//! Drafting with a local model: `k` tokens for each of several sequences,
//! batched, each sequence with its own draft cache.
//!
//! A drafted token is only a proposal: the target accepts it or not, so the
//! draft model may be any model with the target's vocabulary (a smaller model,
//! or the target cut to its first layers). A sequence whose draft cannot run
//! (its draft context is full) gets no drafts this round; it never fails the
//! others.

use crate::backend::Backend;
use crate::model::{BatchItem, KvCache, Llama, Logits, ModelError};
use crate::sampling::{Rng, SamplingParams, argmax, probabilities, sample};
use crate::verify::SparseDistribution;

/// Drafted tokens for one sequence, with the distributions they were drawn
/// from when sampling (empty when greedy).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    /// The proposed tokens, in order.
    pub tokens: Vec<u32>,
    /// `dists[i]` is the distribution `tokens[i]` was drawn from (sampling only).
    pub dists: Vec<SparseDistribution>,
}

/// One sequence's drafting state: the draft model's cache.
#[derive(Debug, Clone)]
pub struct DraftState<D: Backend> {
    cache: KvCache<D>,
    /// The tokens `cache` holds.
    fed: Vec<u32>,
}

/// One sequence's request for drafts.
#[derive(Debug)]
pub struct DraftJob<'a, D: Backend> {
    /// Its drafting state.
    pub state: &'a mut DraftState<D>,
    /// The sequence so far (prompt and output).
    pub context: &'a [u32],
    /// Tokens to draft.
    pub k: usize,
    /// How the sequence samples (greedy drafts the argmax).
    pub params: SamplingParams,
    /// Seed of the sampling noise: the token drafted for output position `n`
    /// is drawn with the `n`-th number of this seed's stream
    /// ([`Rng::at`]). See [`crate::session::SamplingVerifier::draft_noise_seed`].
    pub noise_seed: u64,
    /// Where the output starts in `context` (the prompt's length).
    pub output_start: usize,
}

/// A draft model shared by any number of sequences.
#[derive(Debug, Clone)]
pub struct DraftModel<D: Backend> {
    model: Llama<D>,
}

impl<D: Backend> DraftModel<D> {
    /// Wraps a loaded model.
    pub fn new(model: Llama<D>) -> Self {
        DraftModel { model }
    }

    /// The model.
    pub fn model(&self) -> &Llama<D> {
        &self.model
    }

    /// A fresh state for a sequence of at most `limit` positions.
    pub fn new_state(&self, limit: usize) -> DraftState<D> {
        DraftState {
            cache: self.model.new_cache_with_limit(limit),
            fed: Vec::new(),
        }
    }

    /// Drafts for every job, in `k` batched passes at most. Returns one
    /// [`Draft`] per job, in order; a job that cannot draft gets an empty one.
    /// Blocks on each readback: for native backends ([`Self::draft_async`] is
    /// the same loop).
    pub fn draft(&self, jobs: &mut [DraftJob<'_, D>]) -> Result<Vec<Draft>, ModelError> {
        futures::executor::block_on(self.draft_async(jobs))
    }

    /// [`Self::draft`], awaiting each readback instead of blocking: the only
    /// way on WebGPU in a browser, where a thread may not wait for the GPU.
    pub async fn draft_async(
        &self,
        jobs: &mut [DraftJob<'_, D>],
    ) -> Result<Vec<Draft>, ModelError> {
        let mut drafts = vec![Draft::default(); jobs.len()];
        // Each job's next input: first the context the draft has not seen.
        let mut feeds: Vec<Vec<u32>> = Vec::with_capacity(jobs.len());
        for job in jobs.iter_mut() {
            let s = &mut *job.state;
            // Keep the longest prefix the draft has right, but always re-feed at
            // least the last context token: its logits are where drafting starts.
            let common = s
                .fed
                .iter()
                .zip(job.context)
                .take_while(|(a, b)| a == b)
                .count()
                .min(job.context.len().saturating_sub(1));
            s.cache.truncate(common);
            s.fed.truncate(common);
            // Room in the draft's cache for the unseen context and k − 1 drafts.
            let room = s.cache.limit().saturating_sub(job.context.len() - 1);
            job.k = job.k.min(room);
            feeds.push(if job.k == 0 || job.context.is_empty() {
                Vec::new()
            } else {
                job.context[common..].to_vec()
            });
        }
        loop {
            let active: Vec<usize> = (0..jobs.len()).filter(|&i| !feeds[i].is_empty()).collect();
            if active.is_empty() {
                return Ok(drafts);
            }
            let logits = {
                let mut items: Vec<BatchItem<'_, D>> = Vec::with_capacity(active.len());
                let mut by_index: Vec<Option<&mut DraftJob<'_, D>>> =
                    jobs.iter_mut().map(Some).collect();
                for &i in &active {
                    if let Some(job) = by_index[i].take() {
                        items.push(BatchItem {
                            tokens: &feeds[i],
                            cache: &mut job.state.cache,
                            logits: Logits::Last,
                        });
                    }
                }
                self.model.forward_batch(&mut items)?
            };
            let rows = match logits {
                Some(l) => self.model.logits_to_rows_async(l).await?,
                None => Vec::new(),
            };
            for (&i, row) in active.iter().zip(rows) {
                let job = &mut jobs[i];
                job.state.fed.append(&mut feeds[i]);
                let token = if job.params.is_greedy() {
                    argmax(&row)
                } else {
                    let q = probabilities(&row, &job.params);
                    let position = job.context.len() + drafts[i].tokens.len();
                    let index = position.saturating_sub(job.output_start) as u64;
                    let token = sample(&q, &mut Rng::at(job.noise_seed, index));
                    drafts[i].dists.push(SparseDistribution::from_dense(&q));
                    token
                };
                drafts[i].tokens.push(token);
                if drafts[i].tokens.len() < job.k {
                    feeds[i] = vec![token];
                }
            }
        }
    }
}
