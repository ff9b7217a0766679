//! The scheduler: which sessions run in the next forward pass, with what.
//!
//! A deterministic core without I/O, in the manner of quinn-proto: calls in
//! ([`Scheduler::submit`], [`Scheduler::cancel`], [`Scheduler::drafts`],
//! [`Scheduler::next_pass`], [`Scheduler::pass_done`]), [`Output`]s out
//! ([`Scheduler::poll_output`]), and the time passed in. It never touches a
//! model or a socket, so it is tested with a fake forward function and a
//! simulated clock. The engine ([`crate::engine`]) owns the model and the
//! caches and carries out what the scheduler decides.
//!
//! - **Admission**: sessions wait in a bounded queue and start in order while
//!   there are free slots (`max_sessions`) and key/value-cache budget for the
//!   positions they may need (prompt + `max_tokens`). A full queue is refused
//!   with a retry-after, never an out-of-memory. Requests of contributors
//!   (scouts with draft credit, [`Priority::Contributor`]) wait ahead of
//!   everyone else's, in order among themselves.
//! - **Continuous batching**: every pass takes every ready session — decode
//!   rounds first, then prompt chunks of at most `prefill_chunk` tokens in
//!   what is left of `max_batch_tokens` — so a long prompt never stalls the
//!   others, and a finished session's slot is reused at the next pass.
//! - **Drafts**: with a draft source, each round first asks for `k` drafts
//!   ([`Output::DraftRequest`]) and runs when they arrive or when the deadline
//!   passes, without them: a session never waits on a draft. `k` adapts to
//!   each session's acceptance. Where drafts come from (a local model today,
//!   remote scouts next) is the engine's business.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared_model::draft::Draft;
use shared_model::sampling::SamplingParams;
use shared_model::session::{Feed, OutputToken, Session, SessionStats, StopReason};
use shared_model::text::TextStream;

/// Identifies a session for its whole life.
pub type SessionId = u64;

/// The text of tokens, for stop strings and streamed output.
pub trait TokenText: Send + Sync {
    /// The bytes `token` stands for in generated text (empty for control tokens).
    fn token_bytes(&self, token: u32) -> Vec<u8>;
}

/// Limits and policies of a scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Sessions running at once.
    pub max_sessions: usize,
    /// Sessions waiting to start; more are refused.
    pub max_queue: usize,
    /// Key/value-cache positions all running sessions may reserve together.
    pub kv_budget_positions: usize,
    /// Tokens in one forward pass, all sessions together.
    pub max_batch_tokens: usize,
    /// Prompt tokens of one session in one pass.
    pub prefill_chunk: usize,
    /// Drafting, when a draft source exists.
    pub drafts: Option<DraftPolicy>,
}

/// How drafts are asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftPolicy {
    /// Drafts asked for in a session's first round.
    pub k: usize,
    /// Most drafts asked for in a round once acceptance is high.
    pub k_max: usize,
    /// How long a round waits for its drafts before the target decodes alone.
    pub deadline: Duration,
}

/// A generation request.
#[derive(Debug)]
pub struct Request {
    /// The session (prompt, sampling, stop tokens, limits).
    pub session: Session,
    /// Strings that end the output (never emitted).
    pub stop_strings: Vec<String>,
    /// Where it waits in the queue.
    pub priority: Priority,
}

/// Where a request waits for a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Anyone's request (a leech's).
    #[default]
    Normal,
    /// A contributor's: a scout with draft credit. Waits ahead of every
    /// `Normal` request, behind contributors who came first.
    Contributor,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Too many requests wait already.
    #[error("the server is busy: {queued} requests are waiting; retry in {}s", retry_after.as_secs())]
    QueueFull {
        /// Requests waiting.
        queued: usize,
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// The request alone needs more cache than the server has.
    #[error("the request may need {needed} positions of cache; this server has {budget}")]
    TooLarge {
        /// Positions the request reserves.
        needed: usize,
        /// The whole budget.
        budget: usize,
    },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The id is in use (a bug in the caller).
    #[error("session {0} exists already")]
    DuplicateId(SessionId),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The session stopped by itself.
    Stopped(StopReason),
    /// A stop string appeared in the text.
    StopString,
    /// Cancelled (client gone, or shutdown).
    Cancelled,
    /// The forward pass failed.
    Failed(String),
}

impl Finish {
    /// OpenAI's `finish_reason`-style name of an ending.
    pub fn reason(&self) -> &'static str {
        match self {
            Finish::Stopped(StopReason::EndOfGeneration) | Finish::StopString => "stop",
            Finish::Stopped(StopReason::MaxTokens | StopReason::ContextFull) => "length",
            Finish::Cancelled => "cancelled",
            Finish::Failed(_) => "failed",
        }
    }
}

/// What the scheduler asks of the engine, or reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The session left the queue: make its cache.
    Started {
        /// The session.
        id: SessionId,
        /// Positions its cache may grow to.
        max_context: usize,
        /// Its sampling settings (a draft source seeds its own stream from them).
        params: SamplingParams,
    },
    /// Draft `k` tokens continuing `context` for round `round`, before `deadline`.
    DraftRequest {
        /// The session.
        id: SessionId,
        /// The round the drafts are for; late drafts for an old round are dropped.
        round: u64,
        /// Prompt and output so far.
        context: Vec<u32>,
        /// Tokens wanted.
        k: usize,
        /// How the session samples.
        params: SamplingParams,
        /// Seed of the noise to draft with ([`shared_model::draft::DraftJob::noise_seed`]).
        noise_seed: u64,
        /// Where the output starts in `context`.
        output_start: usize,
        /// After this the round runs without drafts.
        deadline: Instant,
    },
    /// New output of a session.
    Delta {
        /// The session.
        id: SessionId,
        /// Tokens whose text is in `text` (held-back tokens come later).
        tokens: Vec<OutputToken>,
        /// Text that may be shown.
        text: String,
    },
    /// The session is over: free its cache. Always the last output of a session.
    Finished {
        /// The session.
        id: SessionId,
        /// How it ended.
        finish: Finish,
        /// Its counters.
        stats: SessionStats,
        /// Prompt and output.
        context: Vec<u32>,
        /// How it sampled.
        params: SamplingParams,
    },
}

/// One session's part of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassItem {
    /// The session.
    pub id: SessionId,
    /// What to run for it.
    pub feed: Feed,
}

/// A forward pass to run: every item in one batched pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// The sessions and their feeds.
    pub items: Vec<PassItem>,
}

impl Pass {
    /// Tokens in the pass.
    pub fn tokens(&self) -> usize {
        self.items.iter().map(|i| i.feed.tokens.len()).sum()
    }
}

/// Counters of the scheduler's own decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Sessions running.
    pub active: usize,
    /// Sessions waiting.
    pub queued: usize,
    /// Cache positions reserved by running sessions.
    pub reserved_positions: usize,
}

#[derive(Debug)]
enum DraftState {
    /// No draft asked for this round yet.
    Idle,
    /// Asked; the round runs at `deadline` at the latest.
    Waiting { deadline: Instant },
    /// Arrived (possibly empty).
    Ready(Draft),
}

#[derive(Debug)]
struct Entry {
    session: Session,
    text: TextStream,
    /// Tokens whose text is held back by `text`.
    held: Vec<OutputToken>,
    reserved: usize,
    round: u64,
    k: usize,
    draft: DraftState,
    priority: Priority,
}

/// The scheduler; see the module docs.
pub struct Scheduler {
    config: SchedulerConfig,
    vocab: Arc<dyn TokenText>,
    queue: VecDeque<(SessionId, Entry)>,
    /// Running sessions, in the order they started.
    order: Vec<SessionId>,
    active: HashMap<SessionId, Entry>,
    reserved: usize,
    outputs: VecDeque<Output>,
    shutting_down: bool,
}

impl Scheduler {
    /// An idle scheduler.
    pub fn new(config: SchedulerConfig, vocab: Arc<dyn TokenText>) -> Self {
        Scheduler {
            config,
            vocab,
            queue: VecDeque::new(),
            order: Vec::new(),
            active: HashMap::new(),
            reserved: 0,
            outputs: VecDeque::new(),
            shutting_down: false,
        }
    }

    /// Its limits.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Sessions running and waiting.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            active: self.active.len(),
            queued: self.queue.len(),
            reserved_positions: self.reserved,
        }
    }

    /// Whether nothing runs or waits.
    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.queue.is_empty()
    }

    /// Queues a request, or refuses it.
    pub fn submit(&mut self, id: SessionId, request: Request) -> Result<(), Rejected> {
        if self.shutting_down {
            return Err(Rejected::ShuttingDown);
        }
        if self.active.contains_key(&id) || self.queue.iter().any(|(q, _)| *q == id) {
            return Err(Rejected::DuplicateId(id));
        }
        let c = request.session.config();
        let reserved = (request.session.context().len() + c.max_new_tokens).min(c.max_context);
        if reserved > self.config.kv_budget_positions {
            return Err(Rejected::TooLarge {
                needed: reserved,
                budget: self.config.kv_budget_positions,
            });
        }
        if self.queue.len() >= self.config.max_queue {
            let per_slot = self.queue.len().div_ceil(self.config.max_sessions.max(1));
            return Err(Rejected::QueueFull {
                queued: self.queue.len(),
                retry_after: Duration::from_secs(1 + per_slot as u64),
            });
        }
        let k = self.config.drafts.map_or(0, |d| d.k);
        // Behind every request of the same or a higher priority.
        let at = self
            .queue
            .iter()
            .position(|(_, e)| e.priority < request.priority)
            .unwrap_or(self.queue.len());
        self.queue.insert(
            at,
            (
                id,
                Entry {
                    text: TextStream::new(request.stop_strings),
                    session: request.session,
                    held: Vec::new(),
                    reserved,
                    round: 0,
                    k,
                    draft: DraftState::Idle,
                    priority: request.priority,
                },
            ),
        );
        self.admit();
        Ok(())
    }

    /// Ends a session now, queued or running. Unknown ids are ignored.
    pub fn cancel(&mut self, id: SessionId) {
        self.end(id, Finish::Cancelled);
    }

    /// Refuses new requests and drops the queued ones; running sessions go on
    /// until they finish or [`Scheduler::cancel_all`].
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        while let Some((id, entry)) = self.queue.pop_front() {
            self.outputs.push_back(Output::Finished {
                id,
                finish: Finish::Cancelled,
                stats: entry.session.stats(),
                context: Vec::new(),
                params: entry.session.config().params,
            });
        }
    }

    /// Cancels every session.
    pub fn cancel_all(&mut self) {
        self.shutdown();
        for id in self.order.clone() {
            self.cancel(id);
        }
    }

    /// Drafts for `round` of session `id`. Drafts for another round, or for a
    /// session that is gone, are dropped; returns whether they were taken.
    pub fn drafts(&mut self, id: SessionId, round: u64, draft: Draft) -> bool {
        if let Some(entry) = self.active.get_mut(&id)
            && entry.round == round
            && matches!(entry.draft, DraftState::Waiting { .. })
        {
            entry.draft = DraftState::Ready(draft);
            return true;
        }
        false
    }

    /// A running session.
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.active.get(&id).map(|e| &e.session)
    }

    /// The `k` a running session asks for now.
    pub fn draft_k(&self, id: SessionId) -> Option<usize> {
        self.active.get(&id).map(|e| e.k)
    }

    /// The next output, if any. Call until `None` after every other call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Scheduler::next_pass`] may have something new to do without
    /// any other call: the earliest draft deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active
            .values()
            .filter_map(|e| match e.draft {
                DraftState::Waiting { deadline } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// Asks for drafts where a round needs them, then plans a pass over every
    /// ready session. `None` when no session is ready (see
    /// [`Scheduler::poll_timeout`]).
    pub fn next_pass(&mut self, now: Instant) -> Option<Pass> {
        self.request_drafts(now);
        let mut budget = self.config.max_batch_tokens.max(1);
        let mut items = Vec::new();
        // Decode rounds first (they hold users waiting for the next token), then
        // prompt chunks, each group in the order the sessions started.
        for prefill in [false, true] {
            for &id in &self.order {
                let Some(entry) = self.active.get_mut(&id) else {
                    continue;
                };
                let chunk = self.config.prefill_chunk.max(1);
                if entry.session.is_prefilling(chunk) != prefill || budget == 0 {
                    continue;
                }
                let drafts = match &entry.draft {
                    DraftState::Waiting { deadline } if now < *deadline => continue,
                    DraftState::Ready(d) => d.tokens.as_slice(),
                    _ => &[],
                };
                let feed = entry.session.feed(budget.min(chunk), drafts);
                budget -= feed.tokens.len().min(budget);
                items.push(PassItem { id, feed });
            }
        }
        (!items.is_empty()).then_some(Pass { items })
    }

    /// The results of `pass`: per item, its logits rows (`feed.rows()` of
    /// them), or the error that failed the whole pass. Returns, for every
    /// session of the pass still running, how many positions its cache keeps
    /// (rejected drafts are rolled back).
    pub fn pass_done(
        &mut self,
        pass: &Pass,
        rows: Result<Vec<Vec<Vec<f32>>>, String>,
    ) -> Vec<(SessionId, usize)> {
        let rows = match rows {
            Ok(rows) if rows.len() == pass.items.len() => rows,
            Ok(rows) => {
                let e = format!("{} results for {} sessions", rows.len(), pass.items.len());
                self.fail(pass, &e);
                return Vec::new();
            }
            Err(e) => {
                self.fail(pass, &e);
                return Vec::new();
            }
        };
        for (item, rows) in pass.items.iter().zip(rows) {
            let Some(entry) = self.active.get_mut(&item.id) else {
                continue;
            };
            let draft = match std::mem::replace(&mut entry.draft, DraftState::Idle) {
                DraftState::Ready(d) => d,
                _ => Draft::default(),
            };
            let accepted_before = entry.session.stats().draft_tokens_accepted;
            let tokens = match entry.session.advance(&item.feed, &rows, &draft.dists) {
                Ok(tokens) => tokens,
                Err(e) => {
                    self.end(item.id, Finish::Failed(e.to_string()));
                    continue;
                }
            };
            if item.feed.logits_from < item.feed.tokens.len() {
                entry.round += 1;
                let accepted = entry.session.stats().draft_tokens_accepted - accepted_before;
                adapt_k(entry, item.feed.drafts, accepted, self.config.drafts);
            }
            let finish = self.emit(item.id, tokens);
            if let Some(finish) = finish {
                self.end(item.id, finish);
            }
        }
        self.admit();
        pass.items
            .iter()
            .filter_map(|i| Some((i.id, self.active.get(&i.id)?.session.cached_len())))
            .collect()
    }

    /// Streams `tokens` of `id` through its text stream; returns how the
    /// session ends if it does.
    fn emit(&mut self, id: SessionId, tokens: Vec<OutputToken>) -> Option<Finish> {
        let entry = self.active.get_mut(&id)?;
        let mut text = String::new();
        let mut released = Vec::new();
        for token in tokens {
            let chunk = entry.text.push(&self.vocab.token_bytes(token.token));
            text.push_str(&chunk.text);
            if chunk.stopped {
                entry.held.clear();
                break;
            }
            entry.held.push(token);
            if !entry.text.is_holding() {
                released.append(&mut entry.held);
            }
        }
        let finish = if entry.text.stopped() {
            Some(Finish::StopString)
        } else {
            entry.session.stopped().map(Finish::Stopped)
        };
        if finish.is_some() {
            text.push_str(&entry.text.finish());
            released.append(&mut entry.held);
        }
        if !text.is_empty() || !released.is_empty() {
            self.outputs.push_back(Output::Delta {
                id,
                tokens: released,
                text,
            });
        }
        finish
    }

    /// Asks for drafts ([`Output::DraftRequest`]) for every round that needs
    /// them and has not asked yet. [`Scheduler::next_pass`] does this too; an
    /// engine with a local draft source calls it first, so the drafts it makes
    /// at once ride in the same pass.
    pub fn request_drafts(&mut self, now: Instant) {
        let Some(policy) = self.config.drafts else {
            return;
        };
        for &id in &self.order {
            let Some(entry) = self.active.get_mut(&id) else {
                continue;
            };
            let k = entry.k.min(entry.session.draft_room());
            if !matches!(entry.draft, DraftState::Idle)
                || k == 0
                || entry
                    .session
                    .is_prefilling(self.config.prefill_chunk.max(1))
            {
                continue;
            }
            let deadline = now + policy.deadline;
            entry.draft = DraftState::Waiting { deadline };
            self.outputs.push_back(Output::DraftRequest {
                id,
                round: entry.round,
                context: entry.session.context().to_vec(),
                k,
                params: entry.session.config().params,
                noise_seed: entry
                    .session
                    .config()
                    .verifier
                    .draft_noise_seed(entry.session.config().params.seed),
                output_start: entry.session.output_start(),
                deadline,
            });
        }
    }

    fn fail(&mut self, pass: &Pass, error: &str) {
        for item in &pass.items {
            self.end(item.id, Finish::Failed(error.to_owned()));
        }
        self.admit();
    }

    /// Removes a session wherever it is and reports its end.
    fn end(&mut self, id: SessionId, finish: Finish) {
        let entry = if let Some(entry) = self.active.remove(&id) {
            self.order.retain(|&o| o != id);
            self.reserved -= entry.reserved;
            entry
        } else if let Some(at) = self.queue.iter().position(|(q, _)| *q == id) {
            match self.queue.remove(at) {
                Some((_, entry)) => entry,
                None => return,
            }
        } else {
            return;
        };
        self.outputs.push_back(Output::Finished {
            id,
            finish,
            stats: entry.session.stats(),
            context: entry.session.context().to_vec(),
            params: entry.session.config().params,
        });
        self.admit();
    }

    /// Starts queued sessions, in order, while slots and budget allow.
    fn admit(&mut self) {
        while let Some((_, next)) = self.queue.front() {
            if self.active.len() >= self.config.max_sessions
                || self.reserved + next.reserved > self.config.kv_budget_positions
            {
                return;
            }
            let Some((id, entry)) = self.queue.pop_front() else {
                return;
            };
            self.reserved += entry.reserved;
            self.outputs.push_back(Output::Started {
                id,
                max_context: entry.reserved,
                params: entry.session.config().params,
            });
            self.order.push(id);
            self.active.insert(id, entry);
        }
    }
}

/// More drafts after a round that accepted all of them, fewer after one that
/// rejected most.
fn adapt_k(entry: &mut Entry, proposed: usize, accepted: usize, policy: Option<DraftPolicy>) {
    let Some(policy) = policy else {
        return;
    };
    if proposed == 0 {
        return;
    }
    if accepted == proposed && proposed >= entry.k {
        entry.k = (entry.k + 1).min(policy.k_max.max(1));
    } else if accepted * 2 < proposed {
        entry.k = entry.k.saturating_sub(1).max(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use shared_model::session::{SamplingVerifier, SessionConfig};

    const VOCAB: usize = 8;
    const STOP: u32 = 7;

    /// Token `i` reads as the letter `a + i`.
    struct Letters;
    impl TokenText for Letters {
        fn token_bytes(&self, token: u32) -> Vec<u8> {
            vec![b'a' + token as u8]
        }
    }

    /// The fake model's next token after `context`: a deterministic function
    /// of the whole context, so any mix-up between sessions shows.
    fn next_token(context: &[u32]) -> u32 {
        let h = context
            .iter()
            .fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(u64::from(t)));
        (h % 6) as u32
    }

    fn row(token: u32) -> Vec<f32> {
        let mut r = vec![0.0; VOCAB];
        r[token as usize] = 1.0;
        r
    }

    /// What a session outputs with no drafts and no batching.
    fn alone(prompt: &[u32], n: usize) -> Vec<u32> {
        let mut context = prompt.to_vec();
        for _ in 0..n {
            context.push(next_token(&context));
        }
        context[prompt.len()..].to_vec()
    }

    fn session(prompt: Vec<u32>, max_new_tokens: usize) -> Request {
        Request {
            priority: Priority::Normal,
            session: Session::new(
                prompt,
                SessionConfig {
                    params: SamplingParams::GREEDY,
                    verifier: SamplingVerifier::MatchTarget,
                    max_new_tokens,
                    stop_tokens: vec![STOP],
                    max_context: 256,
                    top_logprobs: None,
                },
            )
            .unwrap(),
            stop_strings: Vec::new(),
        }
    }

    /// What `alone` outputs up to (not including) the first `stop` token.
    fn alone_until(prompt: &[u32], n: usize, stop: u32) -> Vec<u32> {
        alone(prompt, n)
            .into_iter()
            .take_while(|&t| t != stop)
            .collect()
    }

    fn alone_until_stop(prompt: &[u32], n: usize) -> Vec<u32> {
        alone_until(prompt, n, STOP)
    }

    fn drafting(k: usize, k_max: usize, deadline: Duration) -> SchedulerConfig {
        SchedulerConfig {
            drafts: Some(DraftPolicy { k, k_max, deadline }),
            ..config()
        }
    }

    /// Answers every draft request with `make(context, k)`; returns the ks asked.
    fn answer_drafts(
        s: &mut Scheduler,
        h: &mut Harness,
        now: Instant,
        mut make: impl FnMut(&[u32], usize) -> Vec<u32>,
    ) -> Vec<usize> {
        h.drain(s);
        s.request_drafts(now);
        h.drain(s);
        let mut ks = Vec::new();
        for (id, round, context, k) in std::mem::take(&mut h.draft_requests) {
            ks.push(k);
            let tokens = make(&context, k);
            s.drafts(
                id,
                round,
                Draft {
                    tokens,
                    dists: Vec::new(),
                },
            );
        }
        ks
    }

    fn config() -> SchedulerConfig {
        SchedulerConfig {
            max_sessions: 4,
            max_queue: 4,
            kv_budget_positions: 1000,
            max_batch_tokens: 64,
            prefill_chunk: 16,
            drafts: None,
        }
    }

    /// The engine's side with a fake model: caches are token lists.
    #[derive(Default)]
    struct Harness {
        caches: HashMap<SessionId, Vec<u32>>,
        text: HashMap<SessionId, String>,
        tokens: HashMap<SessionId, Vec<u32>>,
        finished: HashMap<SessionId, Finish>,
        started: Vec<SessionId>,
        draft_requests: Vec<(SessionId, u64, Vec<u32>, usize)>,
        passes: Vec<Pass>,
    }

    impl Harness {
        fn drain(&mut self, s: &mut Scheduler) {
            while let Some(out) = s.poll_output() {
                match out {
                    Output::Started { id, .. } => {
                        self.started.push(id);
                        self.caches.insert(id, Vec::new());
                    }
                    Output::DraftRequest {
                        id,
                        round,
                        context,
                        k,
                        ..
                    } => self.draft_requests.push((id, round, context, k)),
                    Output::Delta { id, tokens, text } => {
                        self.text.entry(id).or_default().push_str(&text);
                        self.tokens
                            .entry(id)
                            .or_default()
                            .extend(tokens.iter().map(|t| t.token));
                    }
                    Output::Finished { id, finish, .. } => {
                        self.caches.remove(&id);
                        assert!(self.finished.insert(id, finish).is_none());
                    }
                }
            }
        }

        /// Runs one pass if one is ready; returns whether it did.
        fn step(&mut self, s: &mut Scheduler, now: Instant) -> bool {
            self.drain(s);
            let pass = s.next_pass(now);
            self.drain(s);
            let Some(pass) = pass else {
                return false;
            };
            assert!(pass.tokens() <= s.config().max_batch_tokens);
            let rows = pass
                .items
                .iter()
                .map(|item| {
                    let cache = self.caches.get_mut(&item.id).unwrap();
                    let start = cache.len();
                    cache.extend(&item.feed.tokens);
                    (start + item.feed.logits_from..cache.len())
                        .map(|p| row(next_token(&cache[..=p])))
                        .collect()
                })
                .collect();
            for (id, keep) in s.pass_done(&pass, Ok(rows)) {
                self.caches.get_mut(&id).unwrap().truncate(keep);
            }
            self.passes.push(pass);
            self.drain(s);
            true
        }
    }

    #[test]
    fn batched_sessions_output_what_each_would_alone() {
        let mut s = Scheduler::new(config(), Arc::new(Letters));
        let mut h = Harness::default();
        let prompts: Vec<Vec<u32>> = (0..6)
            .map(|i| (0..(3 + 7 * i)).map(|t| (t * i % 6) as u32).collect())
            .collect();
        // Odd sessions stop at a token they do produce halfway (or before).
        let stop = |i: usize| {
            if i % 2 == 1 {
                alone(&prompts[i], 10 + i)[(10 + i) / 2]
            } else {
                STOP
            }
        };
        for (i, p) in prompts.iter().enumerate() {
            let mut request = session(p.clone(), 10 + i);
            let mut c = request.session.config().clone();
            c.stop_tokens = vec![stop(i)];
            request.session = Session::new(p.clone(), c).unwrap();
            s.submit(i as u64, request).unwrap();
        }
        // Four run, two wait for a slot.
        assert_eq!(s.stats().active, 4);
        assert_eq!(s.stats().queued, 2);
        let now = Instant::now();
        while h.step(&mut s, now) {}
        assert!(s.is_idle());
        let mut stopped_early = 0;
        for (i, p) in prompts.iter().enumerate() {
            let expected = alone_until(p, 10 + i, stop(i));
            stopped_early += usize::from(expected.len() < 10 + i);
            let got = h.tokens.get(&(i as u64)).cloned().unwrap_or_default();
            assert_eq!(got, expected, "session {i}");
            let text: String = expected.iter().map(|&t| (b'a' + t as u8) as char).collect();
            assert_eq!(h.text.get(&(i as u64)).cloned().unwrap_or_default(), text);
            let reason = if expected.len() < 10 + i {
                StopReason::EndOfGeneration
            } else {
                StopReason::MaxTokens
            };
            assert_eq!(
                h.finished[&(i as u64)],
                Finish::Stopped(reason),
                "session {i}"
            );
        }
        assert_eq!(stopped_early, 3, "the odd sessions met their stop tokens");
        // Passes were shared: fewer passes than tokens generated in all.
        let generated: usize = h.tokens.values().map(Vec::len).sum();
        assert!(
            h.passes.len() * 2 < generated,
            "{} passes for {generated}",
            h.passes.len()
        );
        assert!(h.passes.iter().any(|p| p.items.len() == 4));
    }

    #[test]
    fn a_long_prompt_is_chunked_and_does_not_stall_decoding() {
        let mut s = Scheduler::new(config(), Arc::new(Letters));
        let mut h = Harness::default();
        let now = Instant::now();
        s.submit(1, session(vec![1, 2, 3], 40)).unwrap();
        h.step(&mut s, now);
        h.step(&mut s, now);
        let long: Vec<u32> = (0..100).map(|t| t % 5).collect();
        s.submit(2, session(long.clone(), 5)).unwrap();
        let before = h.tokens[&1].len();
        // The long prompt takes ceil(100 / 16) passes; session 1 decodes in each.
        for _ in 0..6 {
            h.step(&mut s, now);
        }
        assert_eq!(h.tokens[&1].len(), before + 6);
        assert!(h.passes[2..8].iter().all(|p| p.items.len() == 2));
        assert!(
            h.passes[2..8]
                .iter()
                .all(|p| p.items[1].feed.tokens.len() <= 16)
        );
        while h.step(&mut s, now) {}
        assert_eq!(h.tokens[&2], alone_until_stop(&long, 5));
    }

    #[test]
    fn contributors_wait_ahead_of_everyone_else_in_order() {
        let mut c = config();
        c.max_sessions = 1;
        c.max_queue = 8;
        let mut s = Scheduler::new(c, Arc::new(Letters));
        let mut h = Harness::default();
        let contributor = |prompt: Vec<u32>| Request {
            priority: Priority::Contributor,
            ..session(prompt, 2)
        };
        s.submit(1, session(vec![1], 2)).unwrap(); // runs at once
        s.submit(2, session(vec![1], 2)).unwrap();
        s.submit(3, session(vec![1], 2)).unwrap();
        s.submit(4, contributor(vec![1])).unwrap();
        s.submit(5, session(vec![1], 2)).unwrap();
        s.submit(6, contributor(vec![1])).unwrap();
        let now = Instant::now();
        while h.step(&mut s, now) {}
        // 1 was running; then the contributors in their order; then the rest in theirs.
        assert_eq!(h.started, vec![1, 4, 6, 2, 3, 5]);
    }

    #[test]
    fn admission_is_bounded_by_queue_and_cache_budget() {
        let mut c = config();
        c.kv_budget_positions = 40;
        c.max_queue = 1;
        let mut s = Scheduler::new(c, Arc::new(Letters));
        assert!(matches!(
            s.submit(9, session(vec![1; 30], 11)),
            Err(Rejected::TooLarge {
                needed: 41,
                budget: 40
            })
        ));
        s.submit(1, session(vec![1; 10], 20)).unwrap(); // 30 positions
        s.submit(2, session(vec![1; 10], 20)).unwrap(); // waits: 60 > 40
        assert_eq!(
            s.stats(),
            SchedulerStats {
                active: 1,
                queued: 1,
                reserved_positions: 30
            }
        );
        let err = s.submit(3, session(vec![1], 1)).unwrap_err();
        assert!(
            matches!(err, Rejected::QueueFull { queued: 1, .. }),
            "{err:?}"
        );
        assert_eq!(
            s.submit(2, session(vec![1], 1)),
            Err(Rejected::DuplicateId(2))
        );
        // Cancelling the running session frees its budget: the queued one starts.
        let mut h = Harness::default();
        h.drain(&mut s);
        s.cancel(1);
        h.drain(&mut s);
        assert_eq!(h.finished[&1], Finish::Cancelled);
        assert!(!h.caches.contains_key(&1), "the cache is freed at once");
        assert!(h.caches.contains_key(&2));
        assert_eq!(s.stats().reserved_positions, 30);
        s.shutdown();
        assert_eq!(
            s.submit(4, session(vec![1], 1)),
            Err(Rejected::ShuttingDown)
        );
        s.cancel_all();
        h.drain(&mut s);
        assert!(s.is_idle());
        assert_eq!(s.stats().reserved_positions, 0);
    }

    #[test]
    fn a_round_waits_for_drafts_until_the_deadline_then_decodes_alone() {
        let c = drafting(3, 6, Duration::from_millis(50));
        let mut s = Scheduler::new(c, Arc::new(Letters));
        let mut h = Harness::default();
        let t0 = Instant::now();
        let prompt = vec![1, 2, 3];
        s.submit(1, session(prompt.clone(), 30)).unwrap();
        // Drafts asked for; nothing runs before they come or the deadline passes.
        assert!(!h.step(&mut s, t0));
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(50)));
        let (_, round, context, k) = h.draft_requests.pop().unwrap();
        assert_eq!((round, context.as_slice(), k), (0, prompt.as_slice(), 3));
        assert!(!h.step(&mut s, t0 + Duration::from_millis(49)));
        // Deadline passed: the target decodes alone.
        assert!(h.step(&mut s, t0 + Duration::from_millis(50)));
        assert_eq!(h.passes[0].items[0].feed.drafts, 0);
        assert_eq!(h.tokens[&1].len(), 1);
        // Late drafts for round 0 are dropped.
        s.drafts(
            1,
            0,
            Draft {
                tokens: vec![5, 5, 5],
                dists: Vec::new(),
            },
        );
        // Perfect drafts from now on: all accepted, and k grows.
        let mut now = t0 + Duration::from_millis(60);
        let mut ks = Vec::new();
        while !s.is_idle() {
            ks.extend(answer_drafts(&mut s, &mut h, now, |context, k| {
                let mut c = context.to_vec();
                (0..k)
                    .map(|_| {
                        let t = next_token(&c);
                        c.push(t);
                        t
                    })
                    .collect()
            }));
            h.step(&mut s, now);
            now += Duration::from_millis(1);
        }
        assert_eq!(h.tokens[&1], alone_until_stop(&prompt, 30));
        assert!(ks.iter().any(|&k| k > 3), "k grew with acceptance: {ks:?}");
    }

    #[test]
    fn wrong_drafts_never_change_the_output() {
        let mut s = Scheduler::new(drafting(4, 4, Duration::from_secs(1)), Arc::new(Letters));
        let mut h = Harness::default();
        let now = Instant::now();
        let prompt = vec![4, 4, 2];
        s.submit(1, session(prompt.clone(), 25)).unwrap();
        let mut lie = 0u32;
        while !s.is_idle() {
            answer_drafts(&mut s, &mut h, now, |_, k| {
                lie += 1;
                (0..k as u32).map(|i| (lie + i) % VOCAB as u32).collect()
            });
            h.step(&mut s, now);
        }
        assert_eq!(h.tokens[&1], alone_until_stop(&prompt, 25));
    }

    #[test]
    fn stop_strings_end_a_session_and_are_never_emitted() {
        let mut s = Scheduler::new(config(), Arc::new(Letters));
        let mut h = Harness::default();
        let prompt = vec![1, 2];
        let expected = alone(&prompt, 40);
        let text: String = expected.iter().map(|&t| (b'a' + t as u8) as char).collect();
        // A stop string spanning two tokens, somewhere in the middle.
        let stop = text[5..7].to_owned();
        let at = text.find(&stop).unwrap();
        let mut req = session(prompt, 40);
        req.stop_strings = vec![stop];
        s.submit(1, req).unwrap();
        while h.step(&mut s, Instant::now()) {}
        assert_eq!(h.finished[&1], Finish::StopString);
        assert_eq!(h.text[&1], text[..at]);
    }

    #[test]
    fn a_failed_pass_fails_its_sessions_and_the_scheduler_goes_on() {
        let mut s = Scheduler::new(config(), Arc::new(Letters));
        let mut h = Harness::default();
        s.submit(1, session(vec![1, 2], 5)).unwrap();
        h.drain(&mut s);
        let pass = s.next_pass(Instant::now()).unwrap();
        assert!(s.pass_done(&pass, Err("device lost".into())).is_empty());
        h.drain(&mut s);
        assert_eq!(h.finished[&1], Finish::Failed("device lost".into()));
        s.submit(2, session(vec![1, 2], 5)).unwrap();
        while h.step(&mut s, Instant::now()) {}
        assert!(matches!(h.finished[&2], Finish::Stopped(_)));
    }
}
