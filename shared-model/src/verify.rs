//! Speculative verification: which drafted tokens the target model accepts.
//!
//! The oracle runs the target over `[last token, d_1 .. d_k]` in one pass and
//! gets `k + 1` rows of logits: row `i` is the target's view of the position
//! where `d_{i+1}` was drafted, row `k` the position after the last draft. Each
//! verifier returns the accepted drafts followed by one token of the target's
//! own, so every round makes progress even when nothing is accepted.
//!
//! - [`verify_greedy`]: accept the longest prefix equal to the target's argmax.
//!   The output is token for token the target's greedy decoding.
//! - [`verify_sampling`]: standard speculative sampling (accept `x` with
//!   probability `min(1, p(x)/q(x))`, else resample from `norm(max(0, p − q))`,
//!   bonus token from `p` when all are accepted). The output follows the
//!   target's distribution **provided the drafts really were drawn from `q`**.
//! - [`verify_sampled_match`]: accept a draft only if it equals the token the
//!   target itself samples with the oracle's own random stream. Fewer drafts
//!   are accepted, but the output is exactly the target-only sampled output
//!   for the same seed whatever the drafts are — so an untrusted scout can
//!   never bias it. This is what an oracle should use with network scouts.

use crate::sampling::{Rng, argmax, sample};

/// The outcome of verifying one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// How many drafted tokens were accepted.
    pub accepted: usize,
    /// The tokens to append: the accepted drafts, then one token of the target's.
    pub tokens: Vec<u32>,
}

impl Verdict {
    fn new(draft: &[u32], accepted: usize, own: u32) -> Verdict {
        let mut tokens = draft[..accepted].to_vec();
        tokens.push(own);
        Verdict { accepted, tokens }
    }
}

/// A draft model's distribution for one position, listed sparsely.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseDistribution {
    /// Token ids with non-zero probability.
    pub token_ids: Vec<u32>,
    /// Their probabilities.
    pub probs: Vec<f32>,
}

impl SparseDistribution {
    /// The non-zero entries of a dense distribution.
    pub fn from_dense(probs: &[f32]) -> Self {
        let (token_ids, probs) = probs
            .iter()
            .enumerate()
            .filter(|(_, p)| **p > 0.0)
            .map(|(i, &p)| (i as u32, p))
            .unzip();
        SparseDistribution { token_ids, probs }
    }

    /// The probability of `token`.
    pub fn prob(&self, token: u32) -> f32 {
        self.token_ids
            .iter()
            .position(|&t| t == token)
            .map_or(0.0, |i| self.probs[i])
    }
}

/// Greedy verification. `target_logits` has one more row than `draft`; extra
/// drafts beyond `target_logits.len() - 1` are ignored.
pub fn verify_greedy<L: AsRef<[f32]>>(draft: &[u32], target_logits: &[L]) -> Verdict {
    let draft = &draft[..draft.len().min(target_logits.len().saturating_sub(1))];
    for (i, &d) in draft.iter().enumerate() {
        let own = argmax(target_logits[i].as_ref());
        if own != d {
            return Verdict::new(draft, i, own);
        }
    }
    Verdict::new(
        draft,
        draft.len(),
        argmax(target_logits[draft.len()].as_ref()),
    )
}

/// Standard speculative sampling. `target_probs` are the target's sampling
/// distributions (see [`crate::sampling::probabilities`]), one more row than
/// `draft`; `draft_dists[i]` is the distribution `draft[i]` was drawn from.
pub fn verify_sampling<P: AsRef<[f32]>>(
    draft: &[u32],
    draft_dists: &[SparseDistribution],
    target_probs: &[P],
    rng: &mut Rng,
) -> Verdict {
    let n = draft
        .len()
        .min(draft_dists.len())
        .min(target_probs.len().saturating_sub(1));
    let draft = &draft[..n];
    for (i, &x) in draft.iter().enumerate() {
        let p = target_probs[i].as_ref();
        let q = &draft_dists[i];
        let px = p.get(x as usize).copied().unwrap_or(0.0);
        let qx = q.prob(x);
        // q(x) = 0 means x was not drawn from q: never accept it.
        let accept = qx > 0.0 && rng.uniform() < f64::from(px) / f64::from(qx);
        if !accept {
            let mut residual = p.to_vec();
            for (&t, &qt) in q.token_ids.iter().zip(&q.probs) {
                if let Some(r) = residual.get_mut(t as usize) {
                    *r = (*r - qt).max(0.0);
                }
            }
            // p ≤ q everywhere only when p == q, where rejection cannot happen;
            // with rounding, fall back to p.
            let own = if residual.iter().any(|&r| r > 0.0) {
                sample(&residual, rng)
            } else {
                sample(p, rng)
            };
            return Verdict::new(draft, i, own);
        }
    }
    Verdict::new(draft, n, sample(target_probs[n].as_ref(), rng))
}

/// Verification that cannot be biased by drafts: the target samples each
/// position with the oracle's own stream (one uniform per output token, as
/// target-only sampling does) and a draft is accepted only if it equals that
/// sample.
pub fn verify_sampled_match<P: AsRef<[f32]>>(
    draft: &[u32],
    target_probs: &[P],
    rng: &mut Rng,
) -> Verdict {
    let draft = &draft[..draft.len().min(target_probs.len().saturating_sub(1))];
    for (i, &d) in draft.iter().enumerate() {
        let own = sample(target_probs[i].as_ref(), rng);
        if own != d {
            return Verdict::new(draft, i, own);
        }
    }
    Verdict::new(
        draft,
        draft.len(),
        sample(target_probs[draft.len()].as_ref(), rng),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_hot(n: usize, i: usize) -> Vec<f32> {
        let mut v = vec![0.0; n];
        v[i] = 1.0;
        v
    }

    #[test]
    fn greedy_accepts_the_matching_prefix_then_adds_the_targets_token() {
        let logits = [one_hot(5, 1), one_hot(5, 2), one_hot(5, 3), one_hot(5, 4)];
        assert_eq!(
            verify_greedy(&[1, 2, 3], &logits),
            Verdict {
                accepted: 3,
                tokens: vec![1, 2, 3, 4]
            }
        );
        assert_eq!(
            verify_greedy(&[1, 0, 3], &logits),
            Verdict {
                accepted: 1,
                tokens: vec![1, 2]
            }
        );
        assert_eq!(
            verify_greedy(&[0, 2, 3], &logits),
            Verdict {
                accepted: 0,
                tokens: vec![1]
            }
        );
        assert_eq!(
            verify_greedy(&[], &logits[..1]),
            Verdict {
                accepted: 0,
                tokens: vec![1]
            }
        );
    }

    /// Chi-square statistic of observed counts against expected probabilities.
    fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .filter(|(_, p)| **p > 0.0)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// Speculative sampling with honest drafts reproduces the target's joint
    /// distribution over two positions. The synthetic target and draft do not
    /// depend on the prefix, so the target's law of two tokens is p0 × p1.
    #[test]
    fn speculative_sampling_preserves_the_target_distribution() {
        let p0 = [0.5f32, 0.3, 0.15, 0.05];
        let p1 = [0.1f32, 0.2, 0.3, 0.4];
        let p2 = [0.25f32; 4];
        let q0 = SparseDistribution {
            token_ids: vec![0, 1, 2, 3],
            probs: vec![0.1, 0.6, 0.2, 0.1],
        };
        let q1 = SparseDistribution {
            token_ids: vec![1, 3],
            probs: vec![0.5, 0.5],
        };
        let mut rng = Rng::new(2026);
        let trials = 200_000;
        let mut joint = [0u64; 16];
        let mut accepted = 0;
        for _ in 0..trials {
            let d0 = q0.token_ids[sample(&q0.probs, &mut rng) as usize];
            let d1 = q1.token_ids[sample(&q1.probs, &mut rng) as usize];
            let v = verify_sampling(
                &[d0, d1],
                &[q0.clone(), q1.clone()],
                &[&p0[..], &p1, &p2],
                &mut rng,
            );
            accepted += v.accepted;
            let second = match v.tokens.get(1) {
                Some(&t) => t,
                // One token out: the second comes from a fresh round at p1.
                None => sample(&p1, &mut rng),
            };
            joint[(v.tokens[0] * 4 + second) as usize] += 1;
        }
        let expected: Vec<f64> = (0..16)
            .map(|i| f64::from(p0[i / 4]) * f64::from(p1[i % 4]))
            .collect();
        // 15 degrees of freedom: the 99.9% quantile is 37.7.
        let chi2 = chi_square(&joint, &expected);
        assert!(chi2 < 37.7, "chi2 = {chi2}, counts {joint:?}");
        assert!(
            accepted > trials / 2,
            "drafts should often be accepted ({accepted})"
        );
    }

    /// A dishonest scout that always drafts token 0 and claims q = p makes
    /// standard speculative sampling biased, but not the matching verifier.
    #[test]
    fn only_the_matching_verifier_is_safe_against_dishonest_drafts() {
        let p0 = [0.25f32, 0.25, 0.25, 0.25];
        let p1 = [0.25f32; 4];
        let claimed = SparseDistribution {
            token_ids: vec![0, 1, 2, 3],
            probs: p0.to_vec(),
        };
        let trials = 100_000;
        let mut rng = Rng::new(9);
        let mut standard = [0u64; 4];
        let mut matching = [0u64; 4];
        for _ in 0..trials {
            let v = verify_sampling(
                &[0],
                std::slice::from_ref(&claimed),
                &[&p0[..], &p1],
                &mut rng,
            );
            standard[v.tokens[0] as usize] += 1;
            let v = verify_sampled_match(&[0], &[&p0[..], &p1], &mut rng);
            matching[v.tokens[0] as usize] += 1;
        }
        let uniform = [0.25; 4];
        assert!(chi_square(&standard, &uniform) > 1000.0, "{standard:?}");
        assert!(chi_square(&matching, &uniform) < 16.3, "{matching:?}"); // 3 dof, 99.9%
    }

    #[test]
    fn the_matching_verifier_reproduces_target_only_sampling() {
        let rows: Vec<Vec<f32>> = (0..6)
            .map(|i| vec![0.1 * i as f32 + 0.1, 0.5, 0.2, 0.3])
            .collect();
        // Target alone: one sample per position from the seeded stream.
        let mut rng = Rng::new(42);
        let alone: Vec<u32> = rows.iter().map(|p| sample(p, &mut rng)).collect();
        // With drafts, good or bad, the same tokens come out.
        for draft in [alone[..3].to_vec(), vec![3, 3, 3], vec![]] {
            let mut rng = Rng::new(42);
            let mut out = Vec::new();
            while out.len() < rows.len() {
                let at = out.len();
                let k = draft.len().min(rows.len() - at - 1);
                let v = verify_sampled_match(&draft[..k], &rows[at..at + k + 1], &mut rng);
                out.extend(v.tokens);
            }
            assert_eq!(out, alone, "draft {draft:?}");
        }
    }
}
