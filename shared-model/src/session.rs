//! One generation request as a token-level state machine, independent of the
//! backend and of where drafts come from.
//!
//! A [`Session`] holds the context (prompt and generated tokens), the sampling
//! state, the stop conditions and the counters. It never runs a model: each
//! round the owner asks it what to feed the target ([`Session::feed`]), runs
//! that (alone or batched with other sessions), and hands back the logits
//! ([`Session::advance`]); the session verifies the drafts, appends the
//! verified tokens and says how much of the target's cache to keep.
//! `oracle generate` ([`crate::generate::Generator`]), the oracle's scheduler
//! and the scout all drive this one type, so stop rules and statistics cannot
//! drift apart.
//!
//! The target's cache holds the context except its last token, which is fed
//! with the next round's drafts: the row it yields is where the drafts are
//! checked from. A long prompt is fed in chunks ([`Session::feed`]'s budget)
//! that need no logits.

use thiserror::Error;

use crate::sampling::{Rng, SamplingParams, argmax, most_likely, probabilities};
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

impl SamplingVerifier {
    /// The seed a drafter should draw its noise from for a session sampled
    /// with `seed` (see [`crate::draft::DraftJob::noise_seed`]).
    ///
    /// [`SamplingVerifier::MatchTarget`] accepts a draft only where it equals
    /// the target's own sample, so drafting with the target's noise makes an
    /// honest drafter agree as often as the two distributions allow.
    /// [`SamplingVerifier::Speculative`] needs drafts drawn independently of
    /// its acceptance test: the drafter gets a stream of its own.
    pub fn draft_noise_seed(self, seed: u64) -> u64 {
        match self {
            SamplingVerifier::MatchTarget => seed,
            SamplingVerifier::Speculative => seed ^ 0xd1b5_4a32_d192_ed03,
        }
    }
}

/// Most alternatives a session reports per token ([`SessionConfig::top_logprobs`]).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// What a session generates and when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// How tokens are picked.
    pub params: SamplingParams,
    /// How sampled drafts are verified.
    pub verifier: SamplingVerifier,
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Tokens that end generation (end of text, end of turn); they are not output.
    pub stop_tokens: Vec<u32>,
    /// Most positions (prompt and output) the session may hold: its share of
    /// the cache memory. At most the model's context length.
    pub max_context: usize,
    /// Report log-probabilities of the chosen tokens, with this many of the
    /// most likely alternatives (at most [`MAX_TOP_LOGPROBS`]).
    pub top_logprobs: Option<usize>,
}

/// Why a session stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// The session's context is full.
    ContextFull,
}

impl StopReason {
    /// The name used in JSON output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::MaxTokens => "max_tokens",
            StopReason::EndOfGeneration => "end_of_generation",
            StopReason::ContextFull => "context_full",
        }
    }
}

/// A session that cannot start.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SessionError {
    /// Nothing to continue from.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt leaves no room to generate.
    #[error(
        "the prompt has {prompt} tokens; this session holds at most {max_context}, with room for at least one more"
    )]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// The session's context limit.
        max_context: usize,
    },
    /// `max_new_tokens` is 0.
    #[error("at least one token must be requested")]
    NothingToGenerate,
    /// More alternatives asked for than are reported.
    #[error("at most {MAX_TOP_LOGPROBS} alternatives per token are reported, {0} asked")]
    TooManyLogprobs(usize),
    /// A logits row count that does not match what was fed (a bug in the caller).
    #[error("expected {expected} rows of logits, got {got}")]
    Rows {
        /// Rows the feed asked for.
        expected: usize,
        /// Rows given.
        got: usize,
    },
}

/// What to run through the target this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// Tokens to append to the target's cache: context it has not seen, then drafts.
    pub tokens: Vec<u32>,
    /// How many of `tokens` are drafts (at the end).
    pub drafts: usize,
    /// Index into `tokens` of the first position that needs logits;
    /// `tokens.len()` when none does (a prefill chunk).
    pub logits_from: usize,
}

impl Feed {
    /// Rows of logits this feed needs back.
    pub fn rows(&self) -> usize {
        self.tokens.len() - self.logits_from
    }
}

/// A log-probability of one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// Natural log of its probability under the target's raw distribution.
    pub logprob: f32,
}

/// A token the session output, with its log-probabilities when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputToken {
    /// The token id.
    pub token: u32,
    /// Its log-probability (when [`SessionConfig::top_logprobs`] is set).
    pub logprob: Option<f32>,
    /// The most likely tokens at its position, most likely first.
    pub top: Vec<TokenLogprob>,
    /// Whether a draft proposed it (and the target agreed).
    pub drafted: bool,
}

/// Counters of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens output.
    pub generated_tokens: usize,
    /// Target forward passes this session took part in, prefill chunks included.
    pub target_forward_passes: usize,
    /// Drafted tokens offered to the verifier.
    pub draft_tokens_proposed: usize,
    /// Drafted tokens accepted.
    pub draft_tokens_accepted: usize,
}

/// One generation request; see the module docs.
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    /// Prompt plus generated tokens.
    context: Vec<u32>,
    /// Positions of `context` the target's cache holds.
    cached: usize,
    rng: Rng,
    stats: SessionStats,
    stopped: Option<StopReason>,
}

impl Session {
    /// A session continuing `prompt`.
    pub fn new(prompt: Vec<u32>, config: SessionConfig) -> Result<Self, SessionError> {
        if prompt.is_empty() {
            return Err(SessionError::EmptyPrompt);
        }
        if prompt.len() >= config.max_context {
            return Err(SessionError::PromptTooLong {
                prompt: prompt.len(),
                max_context: config.max_context,
            });
        }
        if config.max_new_tokens == 0 {
            return Err(SessionError::NothingToGenerate);
        }
        if let Some(n) = config.top_logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return Err(SessionError::TooManyLogprobs(n));
        }
        Ok(Session {
            rng: Rng::new(config.params.seed),
            stats: SessionStats {
                prompt_tokens: prompt.len(),
                ..Default::default()
            },
            context: prompt,
            cached: 0,
            stopped: None,
            config,
        })
    }

    /// Where the output starts in [`Session::context`]: the prompt's length.
    /// Output token `n` sits at position `output_start() + n`.
    pub fn output_start(&self) -> usize {
        self.stats.prompt_tokens
    }

    /// The settings it was made with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Prompt and generated tokens.
    pub fn context(&self) -> &[u32] {
        &self.context
    }

    /// The generated tokens so far.
    pub fn generated(&self) -> &[u32] {
        &self.context[self.stats.prompt_tokens..]
    }

    /// Positions the target's cache must hold after the last [`Session::advance`]:
    /// truncate it to this.
    pub fn cached_len(&self) -> usize {
        self.cached
    }

    /// Counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Why it stopped, once it has.
    pub fn stopped(&self) -> Option<StopReason> {
        self.stopped
    }

    /// Whether the prompt still has more than `budget` unseen tokens, so the
    /// next feed is a prefill chunk with no room for drafts.
    pub fn is_prefilling(&self, budget: usize) -> bool {
        self.context.len() - self.cached > budget
    }

    /// Most drafts worth proposing now: beyond the tokens still allowed, or
    /// beyond the context, a draft is waste.
    pub fn draft_room(&self) -> usize {
        if self.stopped.is_some() {
            return 0;
        }
        let remaining = self.config.max_new_tokens - self.stats.generated_tokens;
        let context_room = self.config.max_context - self.context.len();
        (remaining.saturating_sub(1)).min(context_room.saturating_sub(1))
    }

    /// What to run through the target next, at most `budget` tokens (at least
    /// one is always fed). `drafts` beyond [`Session::draft_room`] or the budget
    /// are dropped; no drafts are fed while the prompt does not fit the budget.
    pub fn feed(&self, budget: usize, drafts: &[u32]) -> Feed {
        let unseen = &self.context[self.cached..];
        let budget = budget.max(1);
        if unseen.len() > budget {
            return Feed {
                tokens: unseen[..budget].to_vec(),
                drafts: 0,
                logits_from: budget,
            };
        }
        let n_drafts = drafts
            .len()
            .min(self.draft_room())
            .min(budget - unseen.len());
        let mut tokens = Vec::with_capacity(unseen.len() + n_drafts);
        tokens.extend_from_slice(unseen);
        tokens.extend_from_slice(&drafts[..n_drafts]);
        Feed {
            tokens,
            drafts: n_drafts,
            logits_from: unseen.len() - 1,
        }
    }

    /// Takes the target's logits for `feed` (`feed.rows()` rows), verifies its
    /// drafts and returns the tokens this round output (none for a prefill
    /// chunk; none either when the round ended the session on an
    /// end-of-generation token). `dists` are the drafts' distributions, needed
    /// only by [`SamplingVerifier::Speculative`].
    pub fn advance<L: AsRef<[f32]>>(
        &mut self,
        feed: &Feed,
        rows: &[L],
        dists: &[SparseDistribution],
    ) -> Result<Vec<OutputToken>, SessionError> {
        if rows.len() != feed.rows() {
            return Err(SessionError::Rows {
                expected: feed.rows(),
                got: rows.len(),
            });
        }
        self.stats.target_forward_passes += 1;
        if feed.logits_from == feed.tokens.len() {
            self.cached += feed.tokens.len();
            return Ok(Vec::new());
        }
        let drafts = &feed.tokens[feed.tokens.len() - feed.drafts..];
        let verdict = self.verify(drafts, dists, rows);
        self.stats.draft_tokens_proposed += drafts.len();
        self.stats.draft_tokens_accepted += verdict.accepted;
        // The cache keeps the context and the accepted drafts; the target's own
        // token is fed next round.
        self.cached = self.context.len() + verdict.accepted;
        let mut out = Vec::with_capacity(verdict.tokens.len());
        for (i, &token) in verdict.tokens.iter().enumerate() {
            if self.config.stop_tokens.contains(&token) {
                self.stopped = Some(StopReason::EndOfGeneration);
                break;
            }
            self.context.push(token);
            self.stats.generated_tokens += 1;
            let (logprob, top) = match self.config.top_logprobs {
                Some(n) => {
                    let (lp, top) = logprobs(rows[i].as_ref(), token, n);
                    (Some(lp), top)
                }
                None => (None, Vec::new()),
            };
            out.push(OutputToken {
                token,
                logprob,
                top,
                drafted: i < verdict.accepted,
            });
            if self.stats.generated_tokens >= self.config.max_new_tokens {
                self.stopped = Some(StopReason::MaxTokens);
                break;
            }
            if self.context.len() >= self.config.max_context {
                self.stopped = Some(StopReason::ContextFull);
                break;
            }
        }
        self.cached = self.cached.min(self.context.len());
        Ok(out)
    }

    fn verify<L: AsRef<[f32]>>(
        &mut self,
        drafts: &[u32],
        dists: &[SparseDistribution],
        rows: &[L],
    ) -> Verdict {
        let params = &self.config.params;
        if params.is_greedy() {
            return verify_greedy(drafts, rows);
        }
        let probs: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| probabilities(r.as_ref(), params))
            .collect();
        match self.config.verifier {
            SamplingVerifier::MatchTarget => {
                // Output position n always draws the seed's n-th number, so a
                // drafter told the seed can sample with the very same noise.
                let mut noise = Rng::at(params.seed, self.stats.generated_tokens as u64);
                verify_sampled_match(drafts, &probs, &mut noise)
            }
            SamplingVerifier::Speculative => verify_sampling(drafts, dists, &probs, &mut self.rng),
        }
    }
}

/// The log-probability of `token` in `logits` (log-softmax, computed in f64)
/// and the `n` most likely tokens, most likely first (ties by id).
pub fn logprobs(logits: &[f32], token: u32, n: usize) -> (f32, Vec<TokenLogprob>) {
    let max = logits[argmax(logits) as usize];
    let log_total = logits
        .iter()
        .filter(|x| !x.is_nan())
        .map(|&x| (f64::from(x) - f64::from(max)).exp())
        .sum::<f64>()
        .ln()
        + f64::from(max);
    let lp = |id: u32| {
        logits
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |&x| (f64::from(x) - log_total) as f32)
    };
    let top = most_likely(logits, Some(n))
        .into_iter()
        .map(|t| TokenLogprob {
            token: t,
            logprob: lp(t),
        })
        .collect();
    (lp(token), top)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const VOCAB: usize = 8;

    /// A row whose argmax is `token`.
    fn row(token: u32) -> Vec<f32> {
        let mut r = vec![0.0; VOCAB];
        r[token as usize] = 5.0;
        r
    }

    fn config(max_new_tokens: usize) -> SessionConfig {
        SessionConfig {
            params: SamplingParams::GREEDY,
            verifier: SamplingVerifier::MatchTarget,
            max_new_tokens,
            stop_tokens: vec![7],
            max_context: 32,
            top_logprobs: None,
        }
    }

    #[test]
    fn a_long_prompt_is_fed_in_chunks_then_rounds_carry_drafts() {
        let mut s = Session::new((0..10).map(|i| i % 5).collect(), config(8)).unwrap();
        assert!(s.is_prefilling(4));
        let f = s.feed(4, &[1, 2]);
        assert_eq!((f.tokens.len(), f.drafts, f.rows()), (4, 0, 0));
        assert!(s.advance::<Vec<f32>>(&f, &[], &[]).unwrap().is_empty());
        let f = s.feed(4, &[1, 2]);
        assert_eq!((f.tokens.len(), f.rows()), (4, 0));
        s.advance::<Vec<f32>>(&f, &[], &[]).unwrap();
        // Two unseen tokens left, budget 4: both drafts fit.
        let f = s.feed(4, &[1, 2]);
        assert_eq!(f.tokens, vec![3, 4, 1, 2]);
        assert_eq!((f.drafts, f.logits_from, f.rows()), (2, 1, 3));
        // The target agrees with the first draft only, then says 3.
        let out = s.advance(&f, &[row(1), row(3), row(6)], &[]).unwrap();
        let tokens: Vec<u32> = out.iter().map(|t| t.token).collect();
        assert_eq!(tokens, vec![1, 3]);
        assert!(out[0].drafted && !out[1].drafted);
        // The cache keeps the context and the accepted draft, not the own token.
        assert_eq!(s.cached_len(), 11);
        assert_eq!(s.context().len(), 12);
        let st = s.stats();
        assert_eq!((st.draft_tokens_proposed, st.draft_tokens_accepted), (2, 1));
        assert_eq!(st.target_forward_passes, 3);
    }

    #[test]
    fn stop_tokens_end_the_session_and_are_not_output() {
        let mut s = Session::new(vec![1, 2], config(8)).unwrap();
        let f = s.feed(16, &[4, 7, 5]);
        let out = s
            .advance(&f, &[row(4), row(7), row(5), row(5)], &[])
            .unwrap();
        assert_eq!(out.iter().map(|t| t.token).collect::<Vec<_>>(), vec![4]);
        assert_eq!(s.stopped(), Some(StopReason::EndOfGeneration));
        assert_eq!(s.draft_room(), 0);
    }

    #[test]
    fn max_tokens_bounds_drafts_and_output() {
        let mut s = Session::new(vec![1, 2], config(3)).unwrap();
        let f = s.feed(16, &[4, 4, 4, 4, 4]);
        assert_eq!(
            f.drafts, 2,
            "3 tokens allowed: 2 drafts and the target's own"
        );
        let out = s.advance(&f, &[row(4), row(4), row(4)], &[]).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(s.stopped(), Some(StopReason::MaxTokens));
        assert_eq!(s.generated(), &[4, 4, 4]);
    }

    #[test]
    fn the_context_limit_stops_a_session() {
        let mut c = config(100);
        c.max_context = 4;
        assert_eq!(
            Session::new(vec![1, 2, 3, 4], c.clone()).unwrap_err(),
            SessionError::PromptTooLong {
                prompt: 4,
                max_context: 4
            }
        );
        let mut s = Session::new(vec![1, 2, 3], c).unwrap();
        let f = s.feed(16, &[5, 5]);
        assert_eq!(f.drafts, 0, "one position left: no room for drafts");
        s.advance(&f, &[row(5)], &[]).unwrap();
        assert_eq!(s.stopped(), Some(StopReason::ContextFull));
    }

    #[test]
    fn wrong_row_counts_and_bad_configs_are_errors() {
        let mut s = Session::new(vec![1], config(2)).unwrap();
        let f = s.feed(4, &[]);
        assert_eq!(
            s.advance::<Vec<f32>>(&f, &[], &[]).unwrap_err(),
            SessionError::Rows {
                expected: 1,
                got: 0
            }
        );
        assert_eq!(
            Session::new(vec![], config(2)).unwrap_err(),
            SessionError::EmptyPrompt
        );
        assert_eq!(
            Session::new(vec![1], config(0)).unwrap_err(),
            SessionError::NothingToGenerate
        );
        let mut c = config(2);
        c.top_logprobs = Some(21);
        assert!(Session::new(vec![1], c).is_err());
    }

    #[test]
    fn logprobs_are_a_log_softmax_with_the_top_alternatives() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let (lp, top) = logprobs(&logits, 2, 3);
        let total: f64 = logits.iter().map(|&x| f64::from(x).exp()).sum();
        assert!((f64::from(lp) - (2.0 - total.ln())).abs() < 1e-6);
        assert_eq!(
            top.iter().map(|t| t.token).collect::<Vec<_>>(),
            vec![1, 3, 2]
        );
        let sum: f64 = (0..4)
            .map(|i| f64::from(logprobs(&logits, i, 0).0).exp())
            .sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }
}
