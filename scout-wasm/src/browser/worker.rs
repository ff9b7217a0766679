//! The model worker: a dedicated Web Worker that runs the draft model.
//!
//! burn's WebGPU types are not `Send` and a tab's main thread must stay
//! responsive, so the model lives here alone; the page posts [`ToWorker`]
//! messages and gets [`FromWorker`] answers. Everything awaits: a worker may
//! not block on the GPU.

use js_sys::{Promise, Reflect};
use shared_model::backend::Backend;
use shared_model::draft::{DraftJob, DraftModel};
use shared_model::gguf::Gguf;
use shared_model::model::{Llama, Logits};
use shared_model::sampling::{SamplingParams, argmax};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};
use web_time::Instant;

use futures::{FutureExt as _, StreamExt as _};
use shared_proto::{Keypair, WireMessage, frame, pb};

use crate::bridge::{
    BackendChoice, BackendKind, FromWorker, ModelOffer, RoundAnswer, RoundRequest, ToWorker,
    WorkerStats,
};
use crate::round::{Fault, RoundError, Scout};

/// Messages waiting for the worker's loop; more than this means the page
/// does not wait for answers.
const INBOX: usize = 256;

/// Starts the worker: installs the message handler, says
/// [`FromWorker::Ready`], and handles messages one at a time, in order.
pub fn start() {
    super::console::init();
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let (mut inbox, messages) = futures::channel::mpsc::channel::<ToWorker>(INBOX);
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        let Some(text) = event.data().as_string() else {
            post(&FromWorker::error("message", "expected a JSON string"));
            return;
        };
        match serde_json::from_str::<ToWorker>(&text) {
            Ok(message) => {
                if inbox.try_send(message).is_err() {
                    post(&FromWorker::error("message", "the worker's inbox is full"));
                }
            }
            Err(e) => post(&FromWorker::error("message", format!("bad message: {e}"))),
        }
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    // The handler lives as long as the worker.
    on_message.forget();
    wasm_bindgen_futures::spawn_local(run(messages));
    post(&FromWorker::Ready);
}

/// Sends `message` to the page.
fn post(message: &FromWorker) {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    match serde_json::to_string(message) {
        Ok(text) => {
            if let Err(e) = scope.post_message(&JsValue::from_str(&text)) {
                log::error!("posting to the page failed: {e:?}");
            }
        }
        Err(e) => log::error!("encoding a worker message failed: {e}"),
    }
}

/// A session without a round for this long is over for the scout.
const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
/// How often idle sessions are looked for when no rounds come.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The scout, on the backend it loaded on.
enum Drafter {
    #[cfg(feature = "webgpu")]
    Webgpu(Box<Scout<shared_model::backend::WebGpu>>),
    #[cfg(feature = "cpu")]
    Cpu(Box<Scout<shared_model::backend::Cpu>>),
}

/// Runs `$body` with `$scout` bound to the scout, whatever its backend.
macro_rules! with_scout {
    ($drafter:expr, $scout:ident => $body:expr) => {
        match $drafter {
            #[cfg(feature = "webgpu")]
            Drafter::Webgpu($scout) => $body,
            #[cfg(feature = "cpu")]
            Drafter::Cpu($scout) => $body,
        }
    };
}

async fn run(messages: futures::channel::mpsc::Receiver<ToWorker>) {
    let mut messages = messages.fuse();
    let mut drafter: Option<Drafter> = None;
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    loop {
        // Between rounds, sessions whose answer ended are let go here: a tab
        // that held them would stay full and claim no more work.
        let wait = next_sweep.saturating_duration_since(Instant::now());
        let message = futures::select! {
            message = messages.next() => match message {
                Some(message) => message,
                None => break,
            },
            () = futures_timer::Delay::new(wait).fuse() => {
                next_sweep = Instant::now() + SWEEP_EVERY;
                if let Some(d) = drafter.as_mut() {
                    let (released, stats) =
                        with_scout!(d, s => release_idle(s, s.session_ids()));
                    if !released.is_empty() {
                        post(&FromWorker::Answers { answers: Vec::new(), released, stats });
                    }
                }
                continue;
            }
        };
        match message {
            ToWorker::Probe {
                model_url,
                layers,
                tokens,
                backend,
                values,
                draft_tokens,
            } => {
                let probe = Probe {
                    layers,
                    tokens,
                    values,
                    draft_tokens,
                };
                if let Err(message) = run_probe(&model_url, backend, &probe).await {
                    post(&message);
                }
            }
            ToWorker::Start {
                key,
                model,
                backend,
                max_sessions,
                max_context,
                fault,
            } => {
                if drafter.is_some() {
                    post(&FromWorker::error("state", "the scout is running already"));
                    continue;
                }
                match start_scout(&key, &model, backend, max_sessions, max_context, fault).await {
                    Ok(d) => drafter = Some(d),
                    Err(message) => post(&message),
                }
            }
            ToWorker::Claimed { work_cid, response } => {
                let Some(d) = drafter.as_mut() else {
                    post(&FromWorker::error("state", "no model loaded"));
                    continue;
                };
                let outcome = decode_hex::<pb::ClaimResponse>(&response).and_then(|r| {
                    let work = hex::decode(&work_cid).map_err(|e| e.to_string())?;
                    with_scout!(d, s => s.claimed(&work, &r)).map_err(|e| e.to_string())
                });
                post(&FromWorker::Claimed {
                    work_cid,
                    session: outcome.as_ref().ok().copied(),
                    error: outcome.err(),
                });
            }
            ToWorker::Rounds { rounds } => {
                let Some(d) = drafter.as_mut() else {
                    post(&FromWorker::error("state", "no model loaded"));
                    continue;
                };
                post(&with_scout!(d, s => answer_rounds(s, &rounds).await));
            }
            ToWorker::ReleaseAll => {
                if let Some(d) = drafter.as_mut() {
                    with_scout!(d, s => s.release_all());
                }
            }
        }
    }
}

/// Drafts `rounds` as one batch.
async fn answer_rounds<B: Backend>(scout: &mut Scout<B>, rounds: &[RoundRequest]) -> FromWorker {
    let before = scout.session_ids();
    let mut answers: Vec<RoundAnswer> = Vec::with_capacity(rounds.len());
    let mut requests = Vec::new();
    let mut slots = Vec::new();
    for round in rounds {
        match decode_hex::<pb::DraftRequest>(&round.request) {
            Ok(request) => {
                slots.push(answers.len());
                requests.push(request);
                answers.push(RoundAnswer {
                    id: round.id,
                    result: None,
                    error: None,
                });
            }
            Err(e) => answers.push(RoundAnswer {
                id: round.id,
                result: None,
                error: Some(e),
            }),
        }
    }
    let results = scout.answer_async(&requests).await;
    for ((slot, request), result) in slots.into_iter().zip(&requests).zip(results) {
        match result {
            Ok(work) => match frame::encode(&work) {
                Ok(bytes) => answers[slot].result = Some(hex::encode(bytes)),
                Err(e) => answers[slot].error = Some(e.to_string()),
            },
            Err(e) => {
                // A session out of step or too long is over for us.
                if matches!(e, RoundError::OutOfStep { .. } | RoundError::TooLong(_)) {
                    scout.release(request.session_id);
                }
                answers[slot].error = Some(e.to_string());
            }
        }
    }
    let (released, stats) = release_idle(scout, before);
    FromWorker::Answers {
        answers,
        released,
        stats,
    }
}

/// Lets go of sessions without a round for [`SESSION_IDLE`] (the oracle sends
/// no word when an answer ends): the sessions gone since `before`, and the
/// counters after.
fn release_idle<B: Backend>(scout: &mut Scout<B>, before: Vec<u64>) -> (Vec<u64>, WorkerStats) {
    scout.release_idle(SESSION_IDLE);
    let after = scout.session_ids();
    let stats = scout.stats();
    let released = before.into_iter().filter(|s| !after.contains(s)).collect();
    let stats = WorkerStats {
        claims: stats.claims,
        rounds: stats.rounds,
        drafted: stats.drafted,
        accepted: stats.accepted,
        sessions: after.len() as u64,
    };
    (released, stats)
}

/// A protocol message from the hex of its frame (validated).
fn decode_hex<T: WireMessage>(text: &str) -> Result<T, String> {
    let bytes = hex::decode(text).map_err(|e| format!("not hex: {e}"))?;
    frame::decode(&bytes).map_err(|e| e.to_string())
}

/// Downloads and checks the model, loads it on the chosen backend, and makes
/// the scout.
async fn start_scout(
    key: &str,
    offer: &ModelOffer,
    choice: BackendChoice,
    max_sessions: usize,
    max_context: usize,
    fault: Fault,
) -> Result<Drafter, FromWorker> {
    let started = Instant::now();
    let key = hex::decode(key)
        .ok()
        .and_then(|bytes| Keypair::from_protobuf_encoding(&bytes).ok())
        .ok_or_else(|| FromWorker::error("message", "the scout key does not decode"))?;
    let obtained = super::model_store::obtain(offer, |f| {
        post(&FromWorker::Progress {
            received: f.received,
            total: offer.size,
            pieces: f.pieces,
            pieces_total: f.pieces_total,
            pieces_cached: f.pieces_cached,
            pieces_refused: f.pieces_refused,
        });
    })
    .await?;
    let bytes = obtained.bytes;
    let (kind, fallback_reason, adapter) = pick_backend(choice).await?;
    let model_error = |e: &dyn std::fmt::Display| FromWorker::error("model", e);
    let mut gguf = Gguf::from_bytes(bytes.as_slice()).map_err(|e| model_error(&e))?;
    let drafter = match kind {
        #[cfg(feature = "webgpu")]
        BackendKind::Webgpu => {
            let (device, info) = shared_model::backend::init_webgpu().await;
            post(&FromWorker::Backend {
                kind,
                adapter: Some(adapter.unwrap_or(info.adapter)),
                fallback_reason: None,
            });
            let model =
                Llama::load(&mut gguf, &device, offer.layers).map_err(|e| model_error(&e))?;
            Drafter::Webgpu(Box::new(
                Scout::new(key, DraftModel::new(model), max_sessions, max_context)
                    .with_fault(fault),
            ))
        }
        #[cfg(feature = "cpu")]
        BackendKind::Cpu => {
            post(&FromWorker::Backend {
                kind,
                adapter: None,
                fallback_reason,
            });
            let device = shared_model::backend::cpu_device();
            let model =
                Llama::load(&mut gguf, &device, offer.layers).map_err(|e| model_error(&e))?;
            Drafter::Cpu(Box::new(
                Scout::new(key, DraftModel::new(model), max_sessions, max_context)
                    .with_fault(fault),
            ))
        }
        #[allow(unreachable_patterns)]
        other => {
            return Err(FromWorker::error(
                "backend",
                format!("{} is not built into this worker", other.label()),
            ));
        }
    };
    // The first pass compiles the backend's kernels (seconds on a software
    // GPU): do it now, not inside the oracle's first round deadline.
    let warm = with_scout!(&drafter, s => s.warm_up().await);
    if let Err(e) = warm {
        return Err(model_error(&e));
    }
    post(&FromWorker::Loaded {
        ms: ms_since(started),
        source: obtained.source,
        cache_error: obtained.cache_error,
    });
    Ok(drafter)
}

/// What a probe runs.
struct Probe {
    layers: Option<usize>,
    tokens: Vec<u32>,
    values: usize,
    draft_tokens: usize,
}

async fn run_probe(
    model_url: &str,
    choice: BackendChoice,
    probe: &Probe,
) -> Result<(), FromWorker> {
    let started = Instant::now();
    let bytes = fetch_bytes(model_url).await?;
    let fetch_ms = ms_since(started);
    #[cfg_attr(not(feature = "webgpu"), allow(unused_variables))]
    let (kind, fallback_reason, adapter_description) = pick_backend(choice).await?;
    let report = match kind {
        #[cfg(feature = "webgpu")]
        BackendKind::Webgpu => {
            let (device, info) = shared_model::backend::init_webgpu().await;
            // Browsers hide the adapter's name from wgpu; `GPUAdapter.info` has it.
            let adapter = adapter_description.unwrap_or(info.adapter);
            post(&FromWorker::Backend {
                kind,
                adapter: Some(adapter),
                fallback_reason: None,
            });
            probe_on::<shared_model::backend::WebGpu>(&bytes, &device, probe, kind, fetch_ms)
                .await?
        }
        #[cfg(feature = "cpu")]
        BackendKind::Cpu => {
            post(&FromWorker::Backend {
                kind,
                adapter: None,
                fallback_reason,
            });
            let device = shared_model::backend::cpu_device();
            probe_on::<shared_model::backend::Cpu>(&bytes, &device, probe, kind, fetch_ms).await?
        }
        #[allow(unreachable_patterns)]
        other => {
            return Err(FromWorker::error(
                "backend",
                format!("{} is not built into this worker", other.label()),
            ));
        }
    };
    post(&report);
    Ok(())
}

/// Loads the model from `bytes` on `device` and runs `probe`; `kind` and
/// `fetch_ms` go into the report as they are.
async fn probe_on<B: Backend>(
    bytes: &[u8],
    device: &B::Device,
    probe: &Probe,
    kind: BackendKind,
    fetch_ms: f64,
) -> Result<FromWorker, FromWorker> {
    let model_error = |e: &dyn std::fmt::Display| FromWorker::error("model", e);
    let started = Instant::now();
    let mut gguf = Gguf::from_bytes(bytes).map_err(|e| model_error(&e))?;
    let model = Llama::<B>::load(&mut gguf, device, probe.layers).map_err(|e| model_error(&e))?;
    drop(gguf);
    let load_ms = ms_since(started);

    let started = Instant::now();
    let mut cache = model.new_cache_with_limit(probe.tokens.len() + probe.draft_tokens + 1);
    let logits = model
        .forward(&probe.tokens, &mut cache, Logits::All)
        .map_err(|e| model_error(&e))?;
    let full_rows = model
        .logits_to_rows_async(logits)
        .await
        .map_err(|e| model_error(&e))?;
    let first_forward_ms = ms_since(started);
    let argmax = full_rows.iter().map(|row| argmax(row)).collect();
    let rows = full_rows
        .into_iter()
        .map(|row| row.into_iter().take(probe.values).collect())
        .collect();

    let draft = DraftModel::new(model);
    let mut drafted = Vec::new();
    let mut draft_tokens_per_s = 0.0;
    if probe.draft_tokens > 0 {
        let mut state = draft.new_state(probe.tokens.len() + probe.draft_tokens);
        // Prime the cache with the prompt so the timing below is drafting only.
        let mut prime = [DraftJob {
            state: &mut state,
            context: &probe.tokens,
            k: 1,
            params: SamplingParams::GREEDY,
            noise_seed: 0,
            output_start: probe.tokens.len(),
        }];
        let first = draft
            .draft_async(&mut prime)
            .await
            .map_err(|e| model_error(&e))?;
        let mut context = probe.tokens.clone();
        context.extend(first.into_iter().flat_map(|d| d.tokens));
        let started = Instant::now();
        let mut job = [DraftJob {
            state: &mut state,
            context: &context,
            k: probe.draft_tokens,
            params: SamplingParams::GREEDY,
            noise_seed: 0,
            output_start: probe.tokens.len(),
        }];
        let out = draft
            .draft_async(&mut job)
            .await
            .map_err(|e| model_error(&e))?;
        let seconds = started.elapsed().as_secs_f64();
        drafted = out.into_iter().flat_map(|d| d.tokens).collect();
        draft_tokens_per_s = drafted.len() as f64 / seconds.max(1e-9);
    }
    Ok(FromWorker::Probe {
        backend: kind,
        model_bytes: bytes.len() as u64,
        fetch_ms,
        load_ms,
        first_forward_ms,
        rows,
        argmax,
        drafted,
        draft_tokens_per_s,
    })
}

/// The backend to use: WebGPU when asked for (or on `Auto`) and the browser
/// offers an adapter (then its description), else the CPU with the reason.
async fn pick_backend(
    choice: BackendChoice,
) -> Result<(BackendKind, Option<String>, Option<String>), FromWorker> {
    if choice == BackendChoice::Cpu {
        return Ok((BackendKind::Cpu, Some("the CPU was asked for".into()), None));
    }
    let webgpu = if cfg!(feature = "webgpu") {
        webgpu_adapter_present().await
    } else {
        Err("this build has no WebGPU backend".into())
    };
    match (webgpu, choice) {
        (Ok(adapter), _) => Ok((BackendKind::Webgpu, None, Some(adapter))),
        (Err(reason), BackendChoice::Webgpu) => Err(FromWorker::error("webgpu", reason)),
        (Err(reason), _) => Ok((BackendKind::Cpu, Some(reason), None)),
    }
}

/// Whether `navigator.gpu` gives an adapter with what burn's runtime needs
/// (it panics without `timestamp-query`): its description, or why not.
async fn webgpu_adapter_present() -> Result<String, String> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into())
        .map_err(|_| "no navigator".to_owned())?;
    let gpu = Reflect::get(&navigator, &"gpu".into()).unwrap_or(JsValue::UNDEFINED);
    if gpu.is_undefined() || gpu.is_null() {
        return Err("this browser has no WebGPU (navigator.gpu is missing)".into());
    }
    let request = Reflect::get(&gpu, &"requestAdapter".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .ok_or("navigator.gpu.requestAdapter is missing")?;
    let promise: Promise = request
        .call0(&gpu)
        .map_err(|e| format!("requestAdapter failed: {e:?}"))?
        .unchecked_into();
    let adapter = JsFuture::from(promise)
        .await
        .map_err(|e| format!("requestAdapter failed: {e:?}"))?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("the browser offers no WebGPU adapter".into());
    }
    let features = Reflect::get(&adapter, &"features".into()).unwrap_or(JsValue::UNDEFINED);
    let has = Reflect::get(&features, &"has".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
    let timestamps = has
        .and_then(|has| has.call1(&features, &"timestamp-query".into()).ok())
        .is_some_and(|v| v.is_truthy());
    if !timestamps {
        return Err("the WebGPU adapter lacks timestamp-query, which burn needs".into());
    }
    let info = Reflect::get(&adapter, &"info".into()).unwrap_or(JsValue::UNDEFINED);
    let field = |name: &str| {
        Reflect::get(&info, &name.into())
            .ok()
            .and_then(|v| v.as_string())
            .filter(|s| !s.is_empty())
    };
    let description = [field("vendor"), field("architecture"), field("description")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    Ok(if description.is_empty() {
        "WebGPU adapter".to_owned()
    } else {
        description
    })
}

/// GETs `url` whole.
async fn fetch_bytes(url: &str) -> Result<Vec<u8>, FromWorker> {
    let mut bytes = Vec::new();
    super::model_store::fetch_streaming(url, |chunk| bytes.extend_from_slice(chunk)).await?;
    Ok(bytes)
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}
