//! The scout's round logic, free of I/O: sessions claimed from oracles, one
//! draft cache each, and the answer to every [`pb::DraftRequest`] — `k`
//! drafted tokens, signed by the scout's key.
//!
//! The oracle verifies everything a scout sends, so nothing here can change an
//! answer; what it decides is how much oracle time a scout saves. Two things
//! matter for that: drafting with the target's own sampling noise (the claim
//! says where the output starts, the seed says the numbers), and not drafting
//! more than the oracle accepts (each session's `k` follows its acceptance).

use std::collections::HashMap;
use web_time::Instant;

use shared_model::backend::Backend;
use shared_model::draft::{DraftJob, DraftModel, DraftState};
use shared_model::sampling::SamplingParams;
use shared_proto::limits;
use shared_proto::pb;
use shared_proto::{ContentId, Keypair, Signed};
use thiserror::Error;

use crate::wire::params_from_wire;

/// Why a claim or a draft request was not taken.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RoundError {
    /// The oracle refused the claim.
    #[error("claim refused: {0}")]
    Refused(String),
    /// A request for a session this scout does not hold.
    #[error("no claimed session {0}")]
    UnknownSession(u64),
    /// A round number that does not move forward.
    #[error("round {got} after round {last}")]
    StaleRound {
        /// The request's round.
        got: u32,
        /// The last round answered.
        last: u32,
    },
    /// The request's context length disagrees with what the scout holds
    /// plus the accepted tokens: a round was lost and the scout is out of step.
    #[error("context length {claimed} but the scout holds {held}")]
    OutOfStep {
        /// The length the oracle states.
        claimed: u32,
        /// What the scout would have.
        held: usize,
    },
    /// The session would outgrow the scout's context limit.
    #[error("context of {0} tokens is longer than this scout drafts for")]
    TooLong(usize),
    /// Too many sessions held already.
    #[error("this scout holds {0} sessions already")]
    Busy(usize),
    /// A token id outside the draft model's vocabulary.
    #[error("token {0} is outside the vocabulary")]
    BadToken(u32),
    /// The draft model failed.
    #[error("drafting failed: {0}")]
    Model(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// How a scout's per-session `k` moves: up by one after a round that was
/// accepted whole, down by one after a round where less than half was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KPolicy {
    /// Smallest k.
    pub min: u32,
    /// Largest k (the oracle's request caps it too).
    pub max: u32,
}

impl Default for KPolicy {
    fn default() -> Self {
        KPolicy {
            min: 1,
            max: limits::MAX_DRAFT_K,
        }
    }
}

impl KPolicy {
    /// The next k after `accepted` of `proposed` drafts were accepted.
    pub fn next(&self, k: u32, proposed: usize, accepted: usize) -> u32 {
        if proposed == 0 {
            return k;
        }
        let k = if accepted == proposed {
            k + 1
        } else if accepted * 2 < proposed {
            k.saturating_sub(1)
        } else {
            k
        };
        k.clamp(self.min, self.max)
    }
}

/// Counters of one scout, for logs and the web app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoutStats {
    /// Sessions claimed.
    pub claims: u64,
    /// Rounds answered.
    pub rounds: u64,
    /// Tokens drafted.
    pub drafted: u64,
    /// Drafted tokens the oracle accepted (as seen in later rounds).
    pub accepted: u64,
}

struct Held<B: Backend> {
    work_cid: Vec<u8>,
    context: Vec<u32>,
    output_start: usize,
    params: SamplingParams,
    k: u32,
    last_round: u32,
    /// What this scout sent last round, to see how much was accepted.
    last_draft: Vec<u32>,
    /// When the oracle last sent a round (or the claim).
    last_seen: Instant,
    state: DraftState<B>,
    /// The first answer, kept by a scout with [`Fault::Replay`].
    replay: Option<pb::WorkResult>,
}

/// A scout that misbehaves on purpose, to test the oracle's defences (and to
/// show them). An honest scout uses [`Fault::None`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Draft honestly.
    #[default]
    None,
    /// Send tokens unrelated to the context.
    Garbage,
    /// Sign with a key other than the connection's.
    WrongKey,
    /// Answer every round of a session with its first (signed) answer again.
    Replay,
}

impl Fault {
    /// The names of the faults, as `oracle scout --misbehave` and the web app's
    /// `?misbehave=` take them.
    pub const NAMES: [&'static str; 3] = ["garbage", "wrong-key", "replay"];

    /// The fault named `name` (one of [`Fault::NAMES`]).
    pub fn from_name(name: &str) -> Option<Fault> {
        match name {
            "garbage" => Some(Fault::Garbage),
            "wrong-key" => Some(Fault::WrongKey),
            "replay" => Some(Fault::Replay),
            _ => None,
        }
    }
}

/// The sessions a scout drafts for, and its signing key.
pub struct Scout<B: Backend> {
    fault: Fault,
    key: Keypair,
    model: DraftModel<B>,
    vocab_size: usize,
    max_sessions: usize,
    max_context: usize,
    policy: KPolicy,
    sessions: HashMap<u64, Held<B>>,
    stats: ScoutStats,
}

impl<B: Backend> Scout<B> {
    /// A scout drafting with `model`, signing with `key`, holding at most
    /// `max_sessions` sessions of at most `max_context` positions each.
    pub fn new(
        key: Keypair,
        model: DraftModel<B>,
        max_sessions: usize,
        max_context: usize,
    ) -> Self {
        let vocab_size = model.model().config().vocab_size;
        Scout {
            fault: Fault::None,
            key,
            model,
            vocab_size,
            max_sessions,
            max_context: max_context.min(limits::MAX_CONTEXT_TOKENS),
            policy: KPolicy::default(),
            sessions: HashMap::new(),
            stats: ScoutStats::default(),
        }
    }

    /// Makes this scout misbehave (tests and demonstrations only).
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Its counters.
    pub fn stats(&self) -> ScoutStats {
        self.stats
    }

    /// Sessions held.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether another claim would be taken.
    pub fn has_room(&self) -> bool {
        self.sessions.len() < self.max_sessions
    }

    /// Takes a session the oracle granted (`response` already validated).
    pub fn claimed(
        &mut self,
        work_cid: &[u8],
        response: &pb::ClaimResponse,
    ) -> Result<u64, RoundError> {
        let ack = response.ack.clone().unwrap_or_default();
        if !ack.ok {
            return Err(RoundError::Refused(ack.detail));
        }
        if !self.has_room() {
            return Err(RoundError::Busy(self.sessions.len()));
        }
        if response.context_tokens.len() >= self.max_context {
            return Err(RoundError::TooLong(response.context_tokens.len()));
        }
        self.check_tokens(&response.context_tokens)?;
        let params = response
            .sampling
            .as_ref()
            .map_or(SamplingParams::GREEDY, params_from_wire);
        self.sessions.insert(
            response.session_id,
            Held {
                work_cid: work_cid.to_vec(),
                context: response.context_tokens.clone(),
                output_start: response.output_start as usize,
                params,
                k: response.draft_k.clamp(self.policy.min, self.policy.max),
                last_round: 0,
                last_draft: Vec::new(),
                last_seen: Instant::now(),
                state: self.model.new_state(self.max_context),
                replay: None,
            },
        );
        self.stats.claims += 1;
        Ok(response.session_id)
    }

    /// Runs the draft model once on a short context, so its first real round
    /// does not pay for compiling the backend's kernels (seconds on a
    /// software GPU).
    pub async fn warm_up(&self) -> Result<(), RoundError> {
        let mut state = self.model.new_state(4);
        let mut job = [DraftJob {
            state: &mut state,
            context: &[0, 1],
            k: 2,
            params: SamplingParams::GREEDY,
            noise_seed: 0,
            output_start: 2,
        }];
        self.model
            .draft_async(&mut job)
            .await
            .map(|_| ())
            .map_err(|e| RoundError::Model(e.to_string()))
    }

    /// The sessions held.
    pub fn session_ids(&self) -> Vec<u64> {
        self.sessions.keys().copied().collect()
    }

    /// Whether `session_id` is held.
    pub fn holds(&self, session_id: u64) -> bool {
        self.sessions.contains_key(&session_id)
    }

    /// Forgets a session (finished, or its oracle is gone).
    pub fn release(&mut self, session_id: u64) {
        self.sessions.remove(&session_id);
    }

    /// Forgets sessions without a round for `idle`: the protocol has no
    /// "session over" message, so silence is how a session ends for a scout.
    pub fn release_idle(&mut self, idle: std::time::Duration) {
        self.sessions.retain(|_, h| h.last_seen.elapsed() < idle);
    }

    /// Sessions that can still be claimed.
    pub fn room(&self) -> usize {
        self.max_sessions.saturating_sub(self.sessions.len())
    }

    /// Forgets every session.
    pub fn release_all(&mut self) {
        self.sessions.clear();
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), RoundError> {
        match tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            Some(&t) => Err(RoundError::BadToken(t)),
            None => Ok(()),
        }
    }

    /// Answers draft requests (already validated), all sessions drafted in
    /// one batch: per request, the signed drafts or why there are none.
    /// Blocks on the model's readbacks ([`Self::answer_async`] is the same).
    pub fn answer(
        &mut self,
        requests: &[pb::DraftRequest],
    ) -> Vec<Result<pb::WorkResult, RoundError>> {
        futures::executor::block_on(self.answer_async(requests))
    }

    /// [`Self::answer`], awaiting the model's readbacks: the form a browser
    /// (WebGPU) must use.
    pub async fn answer_async(
        &mut self,
        requests: &[pb::DraftRequest],
    ) -> Vec<Result<pb::WorkResult, RoundError>> {
        let started = Instant::now();
        // Bring every session up to date first; collect who drafts what.
        let mut answers: Vec<Result<(u64, u32, usize), RoundError>> =
            Vec::with_capacity(requests.len());
        for req in requests {
            answers.push(self.advance(req));
        }
        // Take the states out for one batched draft.
        let mut taken: Vec<(usize, u64, Held<B>)> = Vec::new();
        for (i, a) in answers.iter().enumerate() {
            if let Ok((id, _, _)) = a
                && let Some(held) = self.sessions.remove(id)
            {
                taken.push((i, *id, held));
            }
        }
        let drafted = {
            let mut jobs: Vec<DraftJob<'_, B>> = taken
                .iter_mut()
                .map(|(i, _, held)| {
                    let k = match &answers[*i] {
                        Ok((_, _, k)) => *k,
                        Err(_) => 0,
                    };
                    DraftJob {
                        state: &mut held.state,
                        context: &held.context,
                        k,
                        params: held.params,
                        // Scouts' drafts are verified by matching the target's
                        // own samples: draft with the target's noise.
                        noise_seed: held.params.seed,
                        output_start: held.output_start,
                    }
                })
                .collect();
            self.model.draft_async(&mut jobs).await
        };
        let elapsed_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
        let mut out: Vec<Result<pb::WorkResult, RoundError>> = answers
            .into_iter()
            .map(|a| a.map(|_| pb::WorkResult::default()))
            .collect();
        match drafted {
            Err(e) => {
                for (i, id, held) in taken {
                    self.sessions.insert(id, held);
                    out[i] = Err(RoundError::Model(e.to_string()));
                }
            }
            Ok(drafts) => {
                for ((i, id, mut held), draft) in taken.into_iter().zip(drafts) {
                    let round = requests[i].round;
                    held.last_draft = draft.tokens.clone();
                    self.stats.rounds += 1;
                    self.stats.drafted += draft.tokens.len() as u64;
                    let signed = self.sign(&held, id, round, draft.tokens, elapsed_ms);
                    out[i] = match (&held.replay, self.fault) {
                        (Some(first), Fault::Replay) => Ok(first.clone()),
                        (None, Fault::Replay) => {
                            held.replay = signed.as_ref().ok().cloned();
                            signed
                        }
                        _ => signed,
                    };
                    self.sessions.insert(id, held);
                }
            }
        }
        out
    }

    /// Applies a request's accepted tokens to its session; returns the
    /// session, the round and the k to draft.
    fn advance(&mut self, req: &pb::DraftRequest) -> Result<(u64, u32, usize), RoundError> {
        self.check_tokens(&req.accepted_tokens)?;
        let policy = self.policy;
        let max_context = self.max_context;
        let held = self
            .sessions
            .get_mut(&req.session_id)
            .filter(|h| h.work_cid == req.work_cid)
            .ok_or(RoundError::UnknownSession(req.session_id))?;
        if req.round <= held.last_round {
            return Err(RoundError::StaleRound {
                got: req.round,
                last: held.last_round,
            });
        }
        let held_len = held.context.len() + req.accepted_tokens.len();
        if req.context_len as usize != held_len {
            return Err(RoundError::OutOfStep {
                claimed: req.context_len,
                held: held_len,
            });
        }
        if held_len + req.draft_k as usize >= max_context {
            return Err(RoundError::TooLong(held_len));
        }
        // How many of last round's drafts made it: the accepted tokens start
        // with the verified prefix of what we sent.
        let accepted = held
            .last_draft
            .iter()
            .zip(&req.accepted_tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(req.accepted_tokens.len().saturating_sub(1));
        if !held.last_draft.is_empty() {
            self.stats.accepted += accepted as u64;
            held.k = policy.next(held.k, held.last_draft.len(), accepted);
        }
        held.context.extend_from_slice(&req.accepted_tokens);
        held.last_round = req.round;
        held.last_seen = Instant::now();
        held.last_draft.clear();
        let k = held.k.min(req.draft_k) as usize;
        Ok((req.session_id, req.round, k))
    }

    fn sign(
        &self,
        held: &Held<B>,
        session_id: u64,
        round: u32,
        mut tokens: Vec<u32>,
        inference_time_ms: i32,
    ) -> Result<pb::WorkResult, RoundError> {
        if self.fault == Fault::Garbage {
            let vocab = self.vocab_size.max(1) as u64;
            for (i, t) in tokens.iter_mut().enumerate() {
                *t = ((u64::from(*t) * 7919 + 104_729 * (i as u64 + 1)) % vocab) as u32;
            }
        }
        let mut result = pb::WorkResult {
            work_cid: held.work_cid.clone(),
            result_cid: ContentId::of_tokens(&tokens).to_bytes(),
            token_ids: tokens,
            verified: false,
            proof: Vec::new(),
            inference_time_ms,
            confidence_score: 0.0,
            session_id,
            round,
            draft_distributions: Vec::new(),
        };
        let key = match self.fault {
            Fault::WrongKey => Keypair::generate_ed25519(),
            _ => self.key.clone(),
        };
        result
            .sign(&key)
            .map_err(|e| RoundError::Signing(e.to_string()))?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_follows_acceptance() {
        let p = KPolicy { min: 1, max: 8 };
        assert_eq!(p.next(4, 4, 4), 5);
        assert_eq!(p.next(4, 4, 2), 4);
        assert_eq!(p.next(4, 4, 1), 3);
        assert_eq!(p.next(1, 1, 0), 1);
        assert_eq!(p.next(8, 8, 8), 8);
        assert_eq!(p.next(3, 0, 0), 3);
    }
}
