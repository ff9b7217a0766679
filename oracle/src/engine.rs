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

use libp2p::PeerId;
use serde::Serialize;
use shared_model::backend::Backend;
use shared_model::draft::{Draft, DraftJob, DraftModel, DraftState};
use shared_model::model::{BatchItem, KvCache, Llama, Logits};
use shared_model::sampling::SamplingParams;
use shared_model::session::{OutputToken, Session, SessionStats};
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
    /// A scout took a session.
    ScoutClaimed {
        /// The session.
        id: SessionId,
        /// The scout's peer id.
        scout: String,
    },
    /// A scout connected (handshake done).
    ScoutJoined {
        /// The scout's peer id.
        scout: String,
    },
    /// A scout left; its sessions go on without it.
    ScoutLeft {
        /// The scout's peer id.
        scout: String,
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
        payer: Option<PeerId>,
        events: tokio::sync::mpsc::Sender<SessionEvent>,
        reply: oneshot::Sender<Result<(), Rejected>>,
    },
    Cancel(SessionId),
    Shutdown {
        grace: Duration,
    },
    Claim {
        id: SessionId,
        scout: PeerId,
        work_cid: Vec<u8>,
        reply: oneshot::Sender<Result<ClaimGrant, String>>,
    },
    RemoteDrafts {
        id: SessionId,
        round: u32,
        tokens: Option<Vec<u32>>,
    },
    ScoutGone(PeerId),
}

/// Alternatives a greedy session records per output token, so its answer can
/// later judge scouts as a golden ticket (is a scout's draft among the
/// target's likely tokens?). Costs a top-k over the logits per token.
pub const GOLDEN_ALTERNATIVES: usize = shared_model::session::MAX_TOP_LOGPROBS;

/// `SessionConfig::top_logprobs` for a request that asked for `asked`
/// alternatives: greedy sessions record [`GOLDEN_ALTERNATIVES`] whatever the
/// client asked (it sees only what it asked for).
pub fn alternatives_to_record(params: &SamplingParams, asked: Option<usize>) -> Option<usize> {
    match asked {
        Some(n) if params.is_greedy() => Some(n.max(GOLDEN_ALTERNATIVES)),
        Some(n) => Some(n),
        None => params.is_greedy().then_some(GOLDEN_ALTERNATIVES),
    }
}

/// What the engine asks of the network layer.
#[derive(Debug, Clone)]
pub enum ToNetwork {
    /// Offer a session to scouts.
    Announce {
        /// The session.
        id: SessionId,
        /// Its work id for this announcement.
        work_cid: Vec<u8>,
        /// Tokens it may still generate.
        max_tokens: usize,
        /// How it samples.
        params: SamplingParams,
        /// Drafts per round to start with.
        k: usize,
    },
    /// Ask the session's scout for a round of drafts.
    Round {
        /// The session.
        id: SessionId,
        /// Its scout.
        scout: PeerId,
        /// The work id the scout claimed.
        work_cid: Vec<u8>,
        /// The scout's round number (from 1).
        round: u32,
        /// Tokens added to the context since the scout's last round.
        accepted: Vec<u32>,
        /// Context length after them.
        context_len: usize,
        /// Drafts wanted.
        k: usize,
        /// How long the round waits.
        deadline: Duration,
    },
    /// A scout's drafts were accepted: credit it.
    Credit {
        /// The scout.
        scout: PeerId,
        /// Accepted drafted tokens.
        tokens: u64,
    },
    /// A contributor's request generated `tokens`: take them off its credit.
    Spend {
        /// The contributor.
        payer: PeerId,
        /// Tokens generated for it.
        tokens: u64,
    },
    /// The session ended; forget its work ids.
    Ended {
        /// The session.
        id: SessionId,
        /// For a session that finished: its prompt and verified output.
        finished: Option<(Vec<u32>, Vec<u32>)>,
        /// When the output may serve as a golden ticket (greedy, ran its
        /// course): the target's most likely tokens at each output position.
        golden: Option<Vec<Vec<u32>>>,
    },
}

/// What a scout gets when its claim is granted.
#[derive(Debug, Clone)]
pub struct ClaimGrant {
    /// Prompt and output so far.
    pub context: Vec<u32>,
    /// Where the output starts.
    pub output_start: usize,
    /// How the session samples.
    pub params: SamplingParams,
    /// Drafts per round to start with.
    pub k: usize,
}

/// Sizes and policies of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The scheduler's limits.
    pub scheduler: SchedulerConfig,
    /// The network layer, when the oracle runs one: sessions are offered to
    /// scouts through it.
    pub network: Option<tokio::sync::mpsc::Sender<ToNetwork>>,
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
    ///
    /// `payer` is the contributor whose draft credit pays for the answer
    /// (the caller checked it has some and set [`Priority::Contributor`]):
    /// the tokens generated are taken off its credit when the session ends.
    pub async fn submit(
        &self,
        request: Request,
        payer: Option<PeerId>,
    ) -> Result<SessionStream, SubmitError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let capacity = request.session.config().max_new_tokens + 2;
        let (events_tx, events) = tokio::sync::mpsc::channel(capacity);
        let (reply, answer) = oneshot::channel();
        self.commands
            .try_send(Command::Submit {
                id,
                request: Box::new(request),
                payer,
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

    /// Gives session `id` to `scout`; the answer says what the scout needs.
    pub async fn claim(
        &self,
        id: SessionId,
        scout: PeerId,
        work_cid: Vec<u8>,
    ) -> Result<ClaimGrant, String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .try_send(Command::Claim {
                id,
                scout,
                work_cid,
                reply,
            })
            .map_err(|_| "the oracle is busy".to_owned())?;
        answer
            .await
            .map_err(|_| "the oracle is shutting down".to_owned())?
    }

    /// A scout's drafts for its `round` of session `id` (`None`: the round
    /// failed, decode without drafts).
    pub fn remote_drafts(&self, id: SessionId, round: u32, tokens: Option<Vec<u32>>) {
        let _ = self
            .commands
            .try_send(Command::RemoteDrafts { id, round, tokens });
    }

    /// A scout is gone: its sessions go on without it.
    pub fn scout_gone(&self, scout: PeerId) {
        let _ = self.commands.try_send(Command::ScoutGone(scout));
    }

    /// Reports a scout that joined, for `/ws` listeners.
    pub fn scout_joined(&self, scout: PeerId) {
        let _ = self.events.send(EngineEvent::ScoutJoined {
            scout: scout.to_string(),
        });
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
    let tokenizer_vocab = tokenizer.vocab_size();
    let (events, _) = broadcast::channel(1024);
    let stopped = Arc::new(AtomicBool::new(false));
    let mut scheduler_config = config.scheduler;
    if draft.is_none() && config.network.is_none() {
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
        network: config.network,
        remote: HashMap::new(),
        vocab_size: tokenizer_vocab,
        announcements: 0,
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
    /// Whose credit pays for it.
    payer: Option<PeerId>,
    /// The target's most likely tokens at each output position so far (when
    /// the session reports alternatives): what golden tickets judge by.
    top: Vec<Vec<u32>>,
    submitted: Instant,
    last_token: Option<Instant>,
}

/// A session a scout drafts for.
struct Remote {
    scout: PeerId,
    work_cid: Vec<u8>,
    /// Context the scout has seen.
    known_len: usize,
    /// The scout's last round number.
    round: u32,
    /// The round in flight: the scout's number and the scheduler's.
    pending: Option<(u32, u64)>,
    sent_at: Instant,
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
    /// Draft requests for the local draft model, not answered yet.
    draft_requests: Vec<LocalRequest>,
    network: Option<tokio::sync::mpsc::Sender<ToNetwork>>,
    remote: HashMap<SessionId, Remote>,
    vocab_size: usize,
    announcements: u64,
}

/// Whether a scout can take `session` within the protocol's limits: the
/// context it may reach fits `DraftRequest.context_len`, and the context it
/// gets now fits one claim response frame.
fn fits_a_claim(session: &Session) -> bool {
    let c = session.config();
    let remaining = c
        .max_new_tokens
        .saturating_sub(session.stats().generated_tokens);
    let context_bytes: usize = session
        .context()
        .iter()
        .map(|&t| prost::encoding::encoded_len_varint(u64::from(t)))
        .sum();
    session.context().len() + remaining <= shared_proto::limits::MAX_CONTEXT_TOKENS
        // The rest of a claim response is well under a KiB.
        && context_bytes + 1024 <= shared_proto::WORK_RESPONSE_MAX_LEN
}

struct LocalRequest {
    id: SessionId,
    round: u64,
    context: Vec<u32>,
    k: usize,
    params: SamplingParams,
    noise_seed: u64,
    output_start: usize,
}

impl<B: Backend> Engine<B> {
    fn run(&mut self, inbox: &mpsc::Receiver<Command>) {
        tracing::info!("engine started");
        loop {
            while let Ok(command) = inbox.try_recv() {
                self.command(command);
            }
            if self.shutdown_deadline.is_some_and(|d| Instant::now() >= d) {
                self.scheduler.cancel_all();
            }
            self.handle_outputs();
            if self.shutdown_deadline.is_some() && self.scheduler.is_idle() {
                break;
            }
            // Ask for drafts (scouts, the local model, or none), then run
            // whatever is ready.
            self.scheduler.request_drafts(Instant::now());
            self.handle_outputs();
            self.local_drafts();
            let pass = self.scheduler.next_pass(Instant::now());
            self.handle_outputs();
            if let Some(pass) = pass {
                self.run_pass(&pass);
                self.handle_outputs();
                self.update_gauges();
                continue;
            }
            self.update_gauges();
            // Nothing ready: wait for a command, a draft deadline, or the end
            // of the shutdown grace.
            let now = Instant::now();
            let wake = [self.scheduler.poll_timeout(), self.shutdown_deadline]
                .into_iter()
                .flatten()
                .min();
            let wait = wake.map_or(Duration::from_secs(1), |w| w.saturating_duration_since(now));
            match inbox.recv_timeout(wait) {
                Ok(command) => self.command(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.scheduler.cancel_all();
                    self.handle_outputs();
                    break;
                }
            }
        }
        tracing::info!("engine stopped");
    }

    fn update_gauges(&self) {
        let stats = self.scheduler.stats();
        self.metrics.sessions_active.set(stats.active as i64);
        self.metrics.queue_depth.set(stats.queued as i64);
    }

    /// Offers session `id` to scouts under a fresh work id.
    fn announce(&mut self, id: SessionId) {
        let Some(network) = &self.network else {
            return;
        };
        let Some(session) = self.scheduler.session(id) else {
            return;
        };
        if !fits_a_claim(session) {
            tracing::debug!(session = id, "too long for a scout's claim: not announced");
            return;
        }
        self.announcements += 1;
        // Unique per announcement: a re-announced session is new work to the
        // scouts' replay windows.
        let mut seed = Vec::with_capacity(32);
        seed.extend_from_slice(&id.to_le_bytes());
        seed.extend_from_slice(&self.announcements.to_le_bytes());
        seed.extend_from_slice(
            &std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                .to_le_bytes(),
        );
        let work_cid = shared_proto::ContentId::digest(&seed).to_bytes();
        let c = session.config();
        let max_tokens = c
            .max_new_tokens
            .saturating_sub(session.stats().generated_tokens);
        let _ = network.try_send(ToNetwork::Announce {
            id,
            work_cid,
            max_tokens,
            params: c.params,
            k: self.scheduler.draft_k(id).unwrap_or(1),
        });
    }

    /// A scout asks for session `id`.
    fn claim(
        &mut self,
        id: SessionId,
        scout: PeerId,
        work_cid: Vec<u8>,
    ) -> Result<ClaimGrant, String> {
        if self.remote.contains_key(&id) {
            return Err("the session has a scout already".into());
        }
        let session = self
            .scheduler
            .session(id)
            .ok_or_else(|| "the session is over".to_owned())?;
        if !fits_a_claim(session) {
            return Err("the session is too long for a claim".into());
        }
        let grant = ClaimGrant {
            context: session.context().to_vec(),
            output_start: session.output_start(),
            params: session.config().params,
            k: self.scheduler.draft_k(id).unwrap_or(1),
        };
        self.remote.insert(
            id,
            Remote {
                scout,
                work_cid,
                known_len: grant.context.len(),
                round: 0,
                pending: None,
                sent_at: Instant::now(),
            },
        );
        self.metrics.scout_claims.inc();
        let _ = self.events.send(EngineEvent::ScoutClaimed {
            id,
            scout: scout.to_string(),
        });
        Ok(grant)
    }

    fn remote_drafts(&mut self, id: SessionId, round: u32, tokens: Option<Vec<u32>>) {
        let Some(remote) = self.remote.get_mut(&id) else {
            return;
        };
        let Some((pending, scheduler_round)) = remote.pending else {
            return;
        };
        if pending != round {
            return;
        }
        remote.pending = None;
        let latency = remote.sent_at.elapsed().as_secs_f64();
        let scout = remote.scout.to_string();
        let vocab = self.vocab_size;
        let tokens = tokens
            .filter(|t| t.iter().all(|&x| (x as usize) < vocab))
            .unwrap_or_default();
        let n = tokens.len();
        let taken = self.scheduler.drafts(
            id,
            scheduler_round,
            Draft {
                tokens,
                dists: Vec::new(),
            },
        );
        if taken {
            self.metrics.round_latency.observe(latency);
            self.metrics.scout_drafts(&scout, n as u64, 0);
        }
    }

    fn scout_gone(&mut self, scout: PeerId) {
        let ids: Vec<SessionId> = self
            .remote
            .iter()
            .filter(|(_, r)| r.scout == scout)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(remote) = self.remote.remove(id)
                && let Some((_, round)) = remote.pending
            {
                // Decode this round without drafts, now.
                self.scheduler.drafts(*id, round, Draft::default());
            }
            self.announce(*id);
        }
        let _ = self.events.send(EngineEvent::ScoutLeft {
            scout: scout.to_string(),
        });
        tracing::info!(%scout, sessions = ids.len(), "scout gone; its sessions go on");
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Submit {
                id,
                request,
                payer,
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
                            payer,
                            top: Vec::new(),
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
            Command::Claim {
                id,
                scout,
                work_cid,
                reply,
            } => {
                let answer = self.claim(id, scout, work_cid);
                if reply.send(answer).is_err() {
                    self.remote.remove(&id);
                }
            }
            Command::RemoteDrafts { id, round, tokens } => self.remote_drafts(id, round, tokens),
            Command::ScoutGone(scout) => self.scout_gone(scout),
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
                let _ = params;
                let draft = self.draft.as_ref().map(|d| d.new_state(max_context));
                self.caches.insert(
                    id,
                    Caches {
                        target: self.target.new_cache_with_limit(max_context),
                        draft,
                    },
                );
                let _ = self.events.send(EngineEvent::SessionStarted { id });
                self.announce(id);
            }
            Output::DraftRequest {
                id,
                round,
                context,
                k,
                params,
                noise_seed,
                output_start,
                deadline,
            } => self.route_draft_request(
                LocalRequest {
                    id,
                    round,
                    context,
                    k,
                    params,
                    noise_seed,
                    output_start,
                },
                deadline,
            ),
            Output::Delta { id, tokens, text } => self.deliver(id, tokens, text),
            Output::Finished {
                id,
                finish,
                stats,
                context,
                params,
            } => {
                self.caches.remove(&id);
                self.remote.remove(&id);
                if let Some(network) = &self.network {
                    // A finished answer is published as a result; a greedy
                    // one that ran its course is also a known continuation:
                    // a golden ticket for checking scouts.
                    let done = matches!(finish, Finish::Stopped(_) | Finish::StopString)
                        && stats.prompt_tokens <= context.len();
                    let finished = done.then(|| {
                        (
                            context[..stats.prompt_tokens].to_vec(),
                            context[stats.prompt_tokens..].to_vec(),
                        )
                    });
                    let top = self
                        .sessions
                        .get_mut(&id)
                        .map(|l| std::mem::take(&mut l.top))
                        .unwrap_or_default();
                    let golden = (done
                        && params.is_greedy()
                        && matches!(finish, Finish::Stopped(_))
                        && stats.generated_tokens >= 8
                        && top.iter().all(|t| !t.is_empty()))
                    .then_some(top);
                    let _ = network.try_send(ToNetwork::Ended {
                        id,
                        finished,
                        golden,
                    });
                }
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
                    if let (Some(payer), Some(network)) = (live.payer, &self.network) {
                        let _ = network.try_send(ToNetwork::Spend {
                            payer,
                            tokens: stats.generated_tokens as u64,
                        });
                    }
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
            live.top.extend(
                tokens
                    .iter()
                    .map(|t| t.top.iter().map(|a| a.token).collect::<Vec<u32>>()),
            );
            let drafted = tokens.iter().filter(|t| t.drafted).count();
            if let Some(remote) = self.remote.get(&id)
                && drafted > 0
            {
                self.metrics
                    .scout_drafts(&remote.scout.to_string(), 0, drafted as u64);
                if let Some(network) = &self.network {
                    let _ = network.try_send(ToNetwork::Credit {
                        scout: remote.scout,
                        tokens: drafted as u64,
                    });
                }
            }
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

    /// Sends a round to the session's scout, queues it for the local draft
    /// model, or, with neither, lets the round run at once without drafts.
    fn route_draft_request(&mut self, request: LocalRequest, deadline: Instant) {
        // A scout that let its last round pass unanswered loses the session:
        // one missed deadline per failure, not one per round.
        if self
            .remote
            .get(&request.id)
            .is_some_and(|r| r.pending.is_some())
        {
            if let Some(r) = self.remote.remove(&request.id) {
                tracing::info!(session = request.id, scout = %r.scout, "scout missed its round: released");
            }
            self.announce(request.id);
        }
        if let Some(remote) = self.remote.get_mut(&request.id)
            && let Some(network) = &self.network
        {
            remote.round += 1;
            let accepted = request.context[remote.known_len.min(request.context.len())..].to_vec();
            let sent = network.try_send(ToNetwork::Round {
                id: request.id,
                scout: remote.scout,
                work_cid: remote.work_cid.clone(),
                round: remote.round,
                accepted,
                context_len: request.context.len(),
                k: request.k,
                deadline: deadline.saturating_duration_since(Instant::now()),
            });
            if sent.is_ok() {
                remote.known_len = request.context.len();
                remote.pending = Some((remote.round, request.round));
                remote.sent_at = Instant::now();
                return;
            }
        }
        if self.draft.is_some() {
            self.draft_requests.push(request);
        } else {
            self.scheduler
                .drafts(request.id, request.round, Draft::default());
        }
    }

    /// Answers every waiting local draft request with the local draft model,
    /// all sessions in batched passes.
    fn local_drafts(&mut self) {
        let requests = std::mem::take(&mut self.draft_requests);
        // Take each session's draft state out of its cache entry for the batch.
        let mut taken = Vec::with_capacity(requests.len());
        for request in requests {
            if let Some(state) = self
                .caches
                .get_mut(&request.id)
                .and_then(|c| c.draft.take())
            {
                taken.push((request, state));
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
                .map(|(r, state)| DraftJob {
                    state,
                    context: &r.context,
                    k: r.k,
                    params: r.params,
                    noise_seed: r.noise_seed,
                    output_start: r.output_start,
                })
                .collect();
            draft.draft(&mut jobs)
        };
        let drafts = result.unwrap_or_else(|e| {
            // A failed draft costs the round its drafts, nothing more.
            tracing::warn!(error = %e, "local draft failed; decoding without drafts");
            vec![Default::default(); taken.len()]
        });
        for ((r, state), draft) in taken.into_iter().zip(drafts) {
            if let Some(c) = self.caches.get_mut(&r.id) {
                c.draft = Some(state);
            }
            self.scheduler.drafts(r.id, r.round, draft);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use shared_model::session::{SamplingVerifier, SessionConfig};

    fn session(prompt: Vec<u32>, max_new_tokens: usize) -> Session {
        Session::new(
            prompt,
            SessionConfig {
                params: SamplingParams::GREEDY,
                verifier: SamplingVerifier::MatchTarget,
                max_new_tokens,
                stop_tokens: vec![],
                max_context: 40_000,
                top_logprobs: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn sessions_too_long_for_the_protocol_are_not_offered_to_scouts() {
        assert!(fits_a_claim(&session(vec![5; 100], 100)));
        assert!(fits_a_claim(&session(vec![49_151; 16_000], 384)));
        // It would outgrow what a DraftRequest may carry.
        assert!(!fits_a_claim(&session(vec![5; 16_000], 385)));
        // Its context fits in tokens but not in one claim frame.
        assert!(!fits_a_claim(&session(vec![1 << 22; 16_300], 1)));
    }
}
