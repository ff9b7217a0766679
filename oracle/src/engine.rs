//! The engine: one thread that owns the models and the key/value caches and
//! carries out the [`Scheduler`]'s decisions — one batched forward pass after
//! another — while HTTP handlers talk to it through an [`EngineHandle`].
//!
//! Threading: the model runs on this dedicated thread (burn's CPU backend
//! spreads one pass over its own thread pool), so the async runtime never
//! blocks on compute. Handlers send commands over a bounded channel; each
//! session's output comes back over its own channel, bounded by the session's
//! token limit. A session whose receiver is gone (the client disconnected) is
//! cancelled at once and its cache freed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use serde::Serialize;
use shared_model::backend::Backend;
use shared_model::draft::{DraftJob, DraftModel, DraftState};
use shared_model::model::{BatchItem, KvCache, Llama, Logits};
use shared_model::sampling::SamplingParams;
use shared_model::session::{OutputToken, SessionStats};
use shared_model::tokenizer::Tokenizer;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{broadcast, oneshot};

use crate::metrics::{FinishLabels, Metrics};
use crate::scheduler::{
    Finish, Output, Pass, Rejected, Request, Scheduler, SchedulerConfig, SessionId, TokenText,
};

/// Commands waiting for the engine; more are refused (503).
const COMMAND_QUEUE: usize = 1024;

/// What a session's receiver gets.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// New output.
    Delta {
        /// Tokens whose text is in `text`.
        tokens: Vec<OutputToken>,
        /// Text to show.
        text: String,
    },
    /// The end; nothing follows.
    Finished {
        /// How it ended.
        finish: Finish,
        /// Its counters.
        stats: SessionStats,
    },
}

/// What the engine reports to every `/ws` listener, as JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EngineEvent {
    /// A session left the queue.
    SessionStarted {
        /// The session.
        id: SessionId,
    },
    /// A session output tokens.
    SessionProgress {
        /// The session.
        id: SessionId,
        /// Tokens output by this step.
        tokens: usize,
        /// How many of them a draft proposed.
        drafted: usize,
    },
    /// A session ended.
    SessionFinished {
        /// The session.
        id: SessionId,
        /// `stop`, `length`, `cancelled` or `failed`.
        reason: &'static str,
        /// Tokens output.
        generated_tokens: usize,
        /// Drafts proposed for it.
        draft_tokens_proposed: usize,
        /// Drafts accepted.
        draft_tokens_accepted: usize,
    },
    /// One batched forward pass.
    Pass {
        /// Sessions in it.
        sessions: usize,
        /// Tokens in it.
        tokens: usize,
        /// How long it took.
        ms: f64,
        /// Sessions running after it.
        active: usize,
        /// Requests waiting after it.
        queued: usize,
    },
}

/// Why a request did not start.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The scheduler refused it.
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// The engine is gone or its command queue is full.
    #[error("the engine is not accepting work")]
    Unavailable,
}

enum Command {
    Submit {
        id: SessionId,
        request: Box<Request>,
        events: tokio::sync::mpsc::Sender<SessionEvent>,
        reply: oneshot::Sender<Result<(), Rejected>>,
    },
    Cancel(SessionId),
    Shutdown {
        grace: Duration,
    },
}

/// Sizes and policies of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The scheduler's limits.
    pub scheduler: SchedulerConfig,
}

/// The handle HTTP handlers use; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    commands: SyncSender<Command>,
    next_id: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
    events: broadcast::Sender<EngineEvent>,
}

/// A running session's output. Dropping it cancels the session.
pub struct SessionStream {
    id: SessionId,
    events: tokio::sync::mpsc::Receiver<SessionEvent>,
    commands: SyncSender<Command>,
    done: bool,
}

impl SessionStream {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The next event; `None` after [`SessionEvent::Finished`] (or if the engine died).
    pub async fn next(&mut self) -> Option<SessionEvent> {
        if self.done {
            return None;
        }
        let event = self.events.recv().await;
        if matches!(event, Some(SessionEvent::Finished { .. }) | None) {
            self.done = true;
        }
        event
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: if the queue is full the engine still notices the
            // closed channel at the session's next output.
            let _ = self.commands.try_send(Command::Cancel(self.id));
        }
    }
}

impl EngineHandle {
    /// Starts a session. Waits only for the scheduler's yes or no.
    pub async fn submit(&self, request: Request) -> Result<SessionStream, SubmitError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let capacity = request.session.config().max_new_tokens + 2;
        let (events_tx, events) = tokio::sync::mpsc::channel(capacity);
        let (reply, answer) = oneshot::channel();
        self.commands
            .try_send(Command::Submit {
                id,
                request: Box::new(request),
                events: events_tx,
                reply,
            })
            .map_err(|_| SubmitError::Unavailable)?;
        answer.await.map_err(|_| SubmitError::Unavailable)??;
        Ok(SessionStream {
            id,
            events,
            commands: self.commands.clone(),
            done: false,
        })
    }

    /// Stops taking requests; running sessions get `grace` to finish, then
    /// are cancelled.
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.commands.try_send(Command::Shutdown { grace });
    }

    /// Whether the engine thread has ended.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// A live feed of engine events.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }
}

impl TokenText for Tokenizer {
    fn token_bytes(&self, token: u32) -> Vec<u8> {
        Tokenizer::token_bytes(self, token, false)
    }
}

/// Starts the engine thread for `target` (and a local `draft` model).
pub fn start<B: Backend>(
    target: Llama<B>,
    draft: Option<DraftModel<B>>,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<EngineHandle> {
    let (commands, inbox) = mpsc::sync_channel(COMMAND_QUEUE);
    let (events, _) = broadcast::channel(1024);
    let stopped = Arc::new(AtomicBool::new(false));
    let mut scheduler_config = config.scheduler;
    if draft.is_none() {
        scheduler_config.drafts = None;
    }
    let mut engine = Engine {
        target,
        draft,
        scheduler: Scheduler::new(scheduler_config, tokenizer),
        caches: HashMap::new(),
        sessions: HashMap::new(),
        metrics,
        events: events.clone(),
        shutdown_deadline: None,
        draft_requests: Vec::new(),
    };
    let flag = stopped.clone();
    std::thread::Builder::new()
        .name("shard-engine".into())
        .spawn(move || {
            engine.run(&inbox);
            flag.store(true, Ordering::Relaxed);
        })?;
    Ok(EngineHandle {
        commands,
        next_id: Arc::new(AtomicU64::new(1)),
        stopped,
        events,
    })
}

/// What the engine keeps per running session besides its caches.
struct Live {
    events: tokio::sync::mpsc::Sender<SessionEvent>,
    submitted: Instant,
    last_token: Option<Instant>,
}

struct Caches<B: Backend> {
    target: KvCache<B>,
    draft: Option<DraftState<B>>,
}

struct Engine<B: Backend> {
    target: Llama<B>,
    draft: Option<DraftModel<B>>,
    scheduler: Scheduler,
    caches: HashMap<SessionId, Caches<B>>,
    sessions: HashMap<SessionId, Live>,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<EngineEvent>,
    shutdown_deadline: Option<Instant>,
    /// Draft requests not answered yet: (session, round, context, k, params).
    draft_requests: Vec<(SessionId, u64, Vec<u32>, usize, SamplingParams)>,
}

impl<B: Backend> Engine<B> {
    fn run(&mut self, inbox: &mpsc::Receiver<Command>) {
        tracing::info!("engine started");
        loop {
            // Wait for something to do: a command, a draft deadline, or the
            // shutdown grace running out. With sessions ready, do not wait.
            let now = Instant::now();
            let wake = [self.scheduler.poll_timeout(), self.shutdown_deadline]
                .into_iter()
                .flatten()
                .min();
            let busy = !self.scheduler.is_idle() && self.ready_soon();
            let first = if busy {
                inbox.try_recv().ok()
            } else {
                let wait =
                    wake.map_or(Duration::from_secs(1), |w| w.saturating_duration_since(now));
                match inbox.recv_timeout(wait) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        self.scheduler.cancel_all();
                        self.handle_outputs();
                        break;
                    }
                }
            };
            if let Some(command) = first {
                self.command(command);
                while let Ok(command) = inbox.try_recv() {
                    self.command(command);
                }
            }
            if self.shutdown_deadline.is_some_and(|d| Instant::now() >= d) {
                self.scheduler.cancel_all();
            }
            self.handle_outputs();
            if self.shutdown_deadline.is_some() && self.scheduler.is_idle() {
                break;
            }
            self.local_drafts();
            if let Some(pass) = self.scheduler.next_pass(Instant::now()) {
                self.handle_outputs();
                self.run_pass(&pass);
            }
            self.handle_outputs();
            self.metrics
                .sessions_active
                .set(self.scheduler.stats().active as i64);
            self.metrics
                .queue_depth
                .set(self.scheduler.stats().queued as i64);
        }
        tracing::info!("engine stopped");
    }

    /// Whether a pass can run without waiting (no session waits on drafts
    /// from elsewhere, or the local drafter answers at once).
    fn ready_soon(&self) -> bool {
        self.scheduler.poll_timeout().is_none() || self.draft.is_some()
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Submit {
                id,
                request,
                events,
                reply,
            } => {
                let prompt_tokens = request.session.context().len();
                let answer = self.scheduler.submit(id, *request);
                if answer.is_ok() {
                    self.metrics.prompt_tokens.inc_by(prompt_tokens as u64);
                    self.sessions.insert(
                        id,
                        Live {
                            events,
                            submitted: Instant::now(),
                            last_token: None,
                        },
                    );
                }
                if reply.send(answer).is_err() {
                    // The handler is gone already.
                    self.scheduler.cancel(id);
                }
            }
            Command::Cancel(id) => self.scheduler.cancel(id),
            Command::Shutdown { grace } => {
                tracing::info!(
                    grace_s = grace.as_secs_f64(),
                    "shutting down: no new sessions"
                );
                self.scheduler.shutdown();
                self.shutdown_deadline = Some(Instant::now() + grace);
            }
        }
    }

    fn handle_outputs(&mut self) {
        while let Some(output) = self.scheduler.poll_output() {
            self.handle_output(output);
        }
    }

    fn handle_output(&mut self, output: Output) {
        match output {
            Output::Started {
                id,
                max_context,
                params,
            } => {
                let draft = self
                    .draft
                    .as_ref()
                    .map(|d| d.new_state(params.seed, max_context));
                self.caches.insert(
                    id,
                    Caches {
                        target: self.target.new_cache_with_limit(max_context),
                        draft,
                    },
                );
                let _ = self.events.send(EngineEvent::SessionStarted { id });
            }
            // Remote scouts will take these too; today the local draft model
            // answers them before the next pass.
            Output::DraftRequest {
                id,
                round,
                context,
                k,
                params,
                ..
            } => self.draft_requests.push((id, round, context, k, params)),
            Output::Delta { id, tokens, text } => self.deliver(id, tokens, text),
            Output::Finished { id, finish, stats } => {
                self.caches.remove(&id);
                let reason = finish.reason();
                self.metrics
                    .sessions_finished
                    .get_or_create(&FinishLabels {
                        reason: reason.to_owned(),
                    })
                    .inc();
                if let Finish::Failed(e) = &finish {
                    tracing::warn!(session = id, error = %e, "session failed");
                }
                tracing::debug!(
                    session = id,
                    reason,
                    tokens = stats.generated_tokens,
                    "session finished"
                );
                let _ = self.events.send(EngineEvent::SessionFinished {
                    id,
                    reason,
                    generated_tokens: stats.generated_tokens,
                    draft_tokens_proposed: stats.draft_tokens_proposed,
                    draft_tokens_accepted: stats.draft_tokens_accepted,
                });
                if let Some(live) = self.sessions.remove(&id) {
                    let _ = live
                        .events
                        .try_send(SessionEvent::Finished { finish, stats });
                }
            }
        }
    }

    fn deliver(&mut self, id: SessionId, tokens: Vec<OutputToken>, text: String) {
        let Some(live) = self.sessions.get_mut(&id) else {
            return;
        };
        if !tokens.is_empty() {
            let now = Instant::now();
            match live.last_token {
                None => self
                    .metrics
                    .time_to_first_token
                    .observe((now - live.submitted).as_secs_f64()),
                Some(last) => {
                    let per = (now - last).as_secs_f64() / tokens.len() as f64;
                    for _ in &tokens {
                        self.metrics.token_latency.observe(per);
                    }
                }
            }
            live.last_token = Some(now);
            let drafted = tokens.iter().filter(|t| t.drafted).count();
            self.metrics.tokens_generated.inc_by(tokens.len() as u64);
            self.metrics.draft_tokens_accepted.inc_by(drafted as u64);
            let _ = self.events.send(EngineEvent::SessionProgress {
                id,
                tokens: tokens.len(),
                drafted,
            });
        }
        match live.events.try_send(SessionEvent::Delta { tokens, text }) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => {
                tracing::debug!(session = id, "client gone: cancelling");
                self.scheduler.cancel(id);
            }
            Err(TrySendError::Full(_)) => {
                tracing::warn!(session = id, "client not reading: cancelling");
                self.scheduler.cancel(id);
            }
        }
    }

    /// Answers every waiting draft request with the local draft model, all
    /// sessions in batched passes.
    fn local_drafts(&mut self) {
        if self.draft.is_none() {
            return;
        }
        self.scheduler.request_drafts(Instant::now());
        self.handle_outputs();
        let requests = std::mem::take(&mut self.draft_requests);
        // Take each session's draft state out of its cache entry for the batch.
        let mut taken = Vec::with_capacity(requests.len());
        for (id, round, context, k, params) in requests {
            if let Some(state) = self.caches.get_mut(&id).and_then(|c| c.draft.take()) {
                taken.push((id, round, context, k, params, state));
            }
        }
        if taken.is_empty() {
            return;
        }
        let Some(draft) = self.draft.as_ref() else {
            return;
        };
        let result = {
            let mut jobs: Vec<DraftJob<'_, B>> = taken
                .iter_mut()
                .map(|(_, _, context, k, params, state)| DraftJob {
                    state,
                    context,
                    k: *k,
                    params: *params,
                })
                .collect();
            draft.draft(&mut jobs)
        };
        let drafts = result.unwrap_or_else(|e| {
            // A failed draft costs the round its drafts, nothing more.
            tracing::warn!(error = %e, "local draft failed; decoding without drafts");
            vec![Default::default(); taken.len()]
        });
        for ((id, round, _, _, _, state), draft) in taken.into_iter().zip(drafts) {
            if let Some(c) = self.caches.get_mut(&id) {
                c.draft = Some(state);
            }
            self.scheduler.drafts(id, round, draft);
        }
    }

    fn run_pass(&mut self, pass: &Pass) {
        let started = Instant::now();
        let result = self.forward(pass);
        let seconds = started.elapsed().as_secs_f64();
        if let Err(e) = &result {
            tracing::error!(error = %e, sessions = pass.items.len(), "forward pass failed");
        }
        let keep = self.scheduler.pass_done(pass, result);
        for (id, len) in keep {
            if let Some(c) = self.caches.get_mut(&id) {
                c.target.truncate(len);
            }
        }
        let proposed: usize = pass.items.iter().map(|i| i.feed.drafts).sum();
        let m = &self.metrics;
        m.target_forward_passes.inc();
        m.pass_seconds.observe(seconds);
        m.batch_sessions.observe(pass.items.len() as f64);
        m.batch_tokens.observe(pass.tokens() as f64);
        m.draft_tokens_proposed.inc_by(proposed as u64);
        let (accepted, proposed) = (m.draft_tokens_accepted.get(), m.draft_tokens_proposed.get());
        if proposed > 0 {
            m.draft_acceptance_rate
                .set(accepted as f64 / proposed as f64);
        }
        let stats = self.scheduler.stats();
        tracing::trace!(
            sessions = pass.items.len(),
            tokens = pass.tokens(),
            ms = seconds * 1e3,
            "pass"
        );
        let _ = self.events.send(EngineEvent::Pass {
            sessions: pass.items.len(),
            tokens: pass.tokens(),
            ms: seconds * 1000.0,
            active: stats.active,
            queued: stats.queued,
        });
    }

    /// One batched pass over `pass`; logits rows per item.
    fn forward(&mut self, pass: &Pass) -> Result<Vec<Vec<Vec<f32>>>, String> {
        // Take the items' caches out of the map for the pass, and put them back after.
        let mut taken = Vec::with_capacity(pass.items.len());
        for item in &pass.items {
            match self.caches.remove(&item.id) {
                Some(c) => taken.push((item.id, c)),
                None => {
                    for (id, c) in taken {
                        self.caches.insert(id, c);
                    }
                    return Err(format!("session {} has no cache", item.id));
                }
            }
        }
        let result = {
            let mut items: Vec<BatchItem<'_, B>> = taken
                .iter_mut()
                .zip(&pass.items)
                .map(|((_, c), item)| BatchItem {
                    tokens: &item.feed.tokens,
                    cache: &mut c.target,
                    logits: Logits::From(item.feed.logits_from),
                })
                .collect();
            self.target.forward_batch(&mut items)
        };
        for (id, c) in taken {
            self.caches.insert(id, c);
        }
        let flat = match result.map_err(|e| e.to_string())? {
            Some(logits) => self
                .target
                .logits_to_rows(logits)
                .map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let mut flat = flat.into_iter();
        Ok(pass
            .items
            .iter()
            .map(|item| flat.by_ref().take(item.feed.rows()).collect())
            .collect())
    }
}
