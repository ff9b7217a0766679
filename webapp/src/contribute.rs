//! *Contribute*: one button turns the tab into a scout.
//!
//! The scout (`scout_wasm::browser::node`) lives in [`Scout`], provided by the
//! app, so it keeps drafting while the person looks at other pages; this page
//! starts and stops it and shows its state, polled a few times a second.

use std::time::Duration;

use leptos::prelude::*;
use scout_wasm::bridge::{BackendChoice, BackendKind, ModelSource};
use scout_wasm::browser::node::{self, NodeOptions, NodeState, Phase, ScoutNode};
use scout_wasm::round::Fault;

use crate::api;
use crate::chart::{Series, Sparkline, percent};

/// How often the page copies the scout's state.
const POLL: Duration = Duration::from_millis(250);
/// Every how many polls the chart takes a sample and the oracle is asked for
/// this scout's record (every 2 s).
const SAMPLE_EVERY: u32 = 8;
/// Samples the chart keeps (4 minutes).
const HISTORY: usize = 120;

/// What the oracle holds about this scout (`/api/scouts/{peer}`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub(crate) struct ScoutRecord {
    /// Whether it is banned now.
    pub(crate) banned: bool,
    /// Its reputation and credit.
    pub(crate) record: Record,
}

/// Reputation and credit, as the oracle's ledger keeps them.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub(crate) struct Record {
    /// 0 (never right) to 1 (always right).
    pub(crate) reputation: f64,
    /// Drafted tokens the target accepted.
    pub(crate) credits: u64,
    /// Golden tickets passed and failed.
    pub(crate) golden_passed: u64,
    /// Golden tickets failed.
    pub(crate) golden_failed: u64,
}

/// The tab's scout, shared by every page.
#[derive(Clone, Copy)]
pub(crate) struct Scout {
    node: StoredValue<Option<ScoutNode>, LocalStorage>,
    /// The scout's last state; `None` before the first start.
    pub(crate) state: RwSignal<Option<NodeState>>,
    /// Between the press and the node's start.
    starting: RwSignal<bool>,
    /// Why the scout could not start.
    error: RwSignal<Option<String>>,
    /// Tokens drafted and accepted so far, one sample every 2 s.
    history: RwSignal<Vec<(u64, u64)>>,
    /// The oracle's record of this scout, once it has one.
    record: RwSignal<Option<ScoutRecord>>,
}

impl Scout {
    /// A scout that has not started; polls its state once started.
    pub(crate) fn new() -> Self {
        let scout = Self {
            node: StoredValue::new_local(None),
            state: RwSignal::new(None),
            starting: RwSignal::new(false),
            error: RwSignal::new(None),
            history: RwSignal::new(Vec::new()),
            record: RwSignal::new(None),
        };
        let polls = std::cell::Cell::new(0u32);
        let poll = move || {
            let latest = scout
                .node
                .with_value(|node| node.as_ref().map(|n| n.state().borrow().clone()));
            let Some(latest) = latest else { return };
            polls.set(polls.get().wrapping_add(1));
            if polls.get().is_multiple_of(SAMPLE_EVERY) && scout.running() {
                let sample = (latest.stats.drafted, latest.stats.accepted);
                scout.history.update(|h| {
                    h.push(sample);
                    if h.len() > HISTORY {
                        h.remove(0);
                    }
                });
                let path = format!("/api/scouts/{}", latest.peer_id);
                leptos::task::spawn_local(async move {
                    // No record yet (or no p2p node) is not an error worth showing.
                    if let Ok(record) = api::get_json::<ScoutRecord>(&path).await {
                        scout.record.set(Some(record));
                    }
                });
            }
            scout.state.set(Some(latest));
        };
        if let Err(e) = set_interval_with_handle(poll, POLL) {
            scout.error.set(Some(format!(
                "the page cannot follow the scout ({})",
                api::describe(&e)
            )));
        }
        scout
    }

    /// Whether the scout is started and not yet stopped or failed.
    pub(crate) fn running(&self) -> bool {
        self.state.with(|s| {
            s.as_ref()
                .is_some_and(|s| !matches!(s.phase, Phase::Stopped | Phase::Failed))
        })
    }

    fn start(self, backend: BackendChoice) {
        self.starting.set(true);
        self.error.set(None);
        leptos::task::spawn_local(async move {
            let started = Self::start_node(backend).await;
            match started {
                Ok(node) => {
                    self.state.set(Some(node.state().borrow().clone()));
                    self.node.set_value(Some(node));
                }
                Err(why) => self.error.set(Some(why)),
            }
            self.starting.set(false);
        });
    }

    async fn start_node(backend: BackendChoice) -> Result<ScoutNode, String> {
        let misbehave = misbehave_requested()?;
        let status: api::Status = api::get_json("/api/status").await?;
        let (Some(p2p), Some(model)) = (status.p2p, status.scout_model) else {
            return Err("this oracle runs without its p2p node, so it takes no scouts".to_owned());
        };
        let options: NodeOptions = serde_json::from_value(serde_json::json!({
            "addresses": p2p.listen_addrs,
            "model": model,
            "backend": backend,
            "misbehave": misbehave,
        }))
        .map_err(|e| format!("the oracle's status does not describe a scout: {e}"))?;
        let key = if misbehave == Fault::None {
            scout_wasm::browser::identity::load_or_create()
        } else {
            scout_wasm::browser::identity::load_or_create_misbehaving()
        };
        node::start(key, options)
    }

    fn stop(self) {
        self.node.update_value(|node| {
            if let Some(node) = node {
                node.stop();
            }
        });
    }
}

/// The misbehaviour the page's address asks for (`?misbehave=garbage`, like
/// `oracle scout --misbehave`): a tab that cheats on purpose, to watch the
/// oracle's golden tickets catch and ban it. Honest without the parameter.
fn misbehave_requested() -> Result<Fault, String> {
    let search = window().location().search().unwrap_or_default();
    let Some(name) = search
        .trim_start_matches('?')
        .split('&')
        .find_map(|pair| pair.strip_prefix("misbehave="))
    else {
        return Ok(Fault::None);
    };
    Fault::from_name(name).ok_or_else(|| {
        format!(
            "?misbehave={name} is not a misbehaviour this tab knows ({})",
            Fault::NAMES.join(", ")
        )
    })
}

/// The *Contribute* page.
#[component]
pub(crate) fn Contribute() -> impl IntoView {
    let scout = expect_context::<Scout>();
    let backend = RwSignal::new(BackendChoice::Auto);
    let running = move || scout.running();
    let on_press = move |_| {
        if scout.running() {
            scout.stop();
        } else {
            scout.start(backend.get());
        }
    };
    let on_backend = move |ev| {
        backend.set(match event_target_value(&ev).as_str() {
            "webgpu" => BackendChoice::Webgpu,
            "cpu" => BackendChoice::Cpu,
            _ => BackendChoice::Auto,
        });
    };
    view! {
        <section class="card" aria-labelledby="contribute-title">
            <h1 id="contribute-title">"Contribute"</h1>
            <p class="lead">
                "Lend this tab to the network: it downloads a small draft model, guesses the next "
                "tokens of answers, and the oracle checks every guess. Answers stay exactly what "
                "the model alone would write; good guesses make them faster and earn this tab credit."
            </p>
            {match misbehave_requested() {
                Ok(Fault::None) => None,
                Ok(fault) => Some(view! {
                    <p class="warn" role="note" data-testid="misbehave">
                        {format!(
                            "This tab misbehaves on purpose (asked by the page's address): {}. \
                             The oracle's checks should catch it and ban it. It uses a key of \
                             its own: this browser's scout key is not touched.",
                            match fault {
                                Fault::Garbage => "it drafts tokens unrelated to the answer",
                                Fault::WrongKey => "it signs its drafts with a key not its own",
                                Fault::Replay => "it answers every round with its first answer",
                                Fault::None => "it drafts honestly",
                            }
                        )}
                    </p>
                }),
                Err(e) => Some(view! { <p class="warn" role="note" data-testid="misbehave">{e}</p> }),
            }}
            <div class="controls">
                <label>
                    "Run the draft model on "
                    <select on:change=on_backend prop:disabled=running data-testid="backend-choice">
                        <option value="auto">"WebGPU if this browser has it, else the CPU"</option>
                        <option value="webgpu">"WebGPU only"</option>
                        <option value="cpu">"the CPU"</option>
                    </select>
                </label>
                <button
                    class="primary"
                    data-testid="contribute"
                    on:click=on_press
                    prop:disabled=move || scout.starting.get()
                >
                    {move || if running() { "Stop" } else { "Contribute" }}
                </button>
            </div>
            {move || {
                scout
                    .error
                    .get()
                    .map(|e| view! { <p class="error" role="alert" data-testid="error">{e}</p> })
            }}
            {move || scout.state.get().map(|state| view! { <ScoutStatus state=state /> })}
            {move || scout.record.get().map(|record| view! { <RecordFacts record=record /> })}
            {move || {
                (!scout.history.with(Vec::is_empty)).then(|| {
                    let history = scout.history;
                    view! {
                        <Sparkline
                            title="Tokens this scout drafted, and how many the oracle accepted"
                            testid="chart-scout"
                            series=Signal::derive(move || {
                                history.with(|h| {
                                    vec![
                                        Series::new("drafted", "series-b", h.iter().map(|s| s.0 as f64).collect()),
                                        Series::new("accepted", "series-a", h.iter().map(|s| s.1 as f64).collect()),
                                    ]
                                })
                            })
                        />
                    }
                })
            }}
        </section>
    }
}

/// One snapshot of the scout's state.
#[component]
fn ScoutStatus(state: NodeState) -> impl IntoView {
    let (headline, class) = headline(&state);
    let model = &state.model;
    let backend = match (model.backend, &model.adapter, &model.fallback_reason) {
        (Some(BackendKind::Webgpu), adapter, _) => {
            format!("WebGPU — {}", adapter.as_deref().unwrap_or("adapter"))
        }
        (Some(BackendKind::Cpu), _, Some(reason)) => format!("CPU (WebAssembly) — {reason}"),
        (Some(BackendKind::Cpu), _, None) => "CPU (WebAssembly)".to_owned(),
        (None, _, _) => "choosing…".to_owned(),
    };
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let download = format!(
        "{:.1} of {:.1} MiB{}",
        mib(model.received),
        mib(model.total),
        match model.source {
            Some(ModelSource::Cache) => ", from this browser's cache".to_owned(),
            Some(ModelSource::Resumed) if model.loaded => format!(
                ", {} of {} pieces kept from an earlier visit, every piece checked (SHA-256)",
                model.pieces_cached, model.pieces_total
            ),
            Some(ModelSource::Network) if model.loaded => ", checked (SHA-256)".to_owned(),
            _ if model.pieces_total > 0 => format!(
                ", {} of {} pieces checked{}",
                model.pieces,
                model.pieces_total,
                match model.pieces_refused {
                    0 => String::new(),
                    n => format!(", {n} refused (bad SHA-256) and fetched again"),
                }
            ),
            _ => String::new(),
        }
    );
    let stats = &state.stats;
    let acceptance = percent(stats.accepted, stats.drafted);
    let connection = match (state.phase, &state.transport, &state.address) {
        (Phase::Connected | Phase::Ready, Some(transport), Some(address)) => {
            format!("{transport} — {address}")
        }
        (Phase::Dialling, Some(transport), Some(address)) => {
            format!("dialling: {transport} — {address}")
        }
        _ => "not connected".to_owned(),
    };
    view! {
        <p class=format!("state {class}") data-testid="state" role="status">
            {headline}
        </p>
        {model
            .cache_error
            .clone()
            .map(|e| view! { <p class="warn" data-testid="cache-error">{e}</p> })}
        <dl class="facts">
            <dt>"Backend"</dt>
            <dd data-testid="backend">{backend}</dd>
            <dt>"Draft model"</dt>
            <dd>
                <progress
                    data-testid="download-progress"
                    max=model.total.max(1) as f64
                    value=model.received as f64
                ></progress>
                " "
                <span data-testid="download">{download}</span>
            </dd>
            <dt>"Connection"</dt>
            <dd data-testid="transport">{connection}</dd>
            <dt>"Tokens drafted"</dt>
            <dd data-testid="drafted">{stats.drafted}</dd>
            <dt>"Accepted"</dt>
            <dd data-testid="accepted">{stats.accepted} " (" {acceptance} ")"</dd>
            <dt>"Rounds answered"</dt>
            <dd data-testid="rounds">{stats.rounds}</dd>
            <dt>"This scout"</dt>
            <dd class="mono" data-testid="peer-id">{state.peer_id.clone()}</dd>
        </dl>
    }
}

/// Reputation and credit, as the oracle keeps them.
#[component]
fn RecordFacts(record: ScoutRecord) -> impl IntoView {
    let r = &record.record;
    view! {
        <dl class="facts">
            <dt>"Reputation"</dt>
            <dd data-testid="reputation">
                {format!(
                    "{:.2} of 1 ({} golden tickets passed, {} failed){}",
                    r.reputation,
                    r.golden_passed,
                    r.golden_failed,
                    if record.banned { " — banned" } else { "" },
                )}
            </dd>
            <dt>"Credit"</dt>
            <dd data-testid="credit">
                {format!(
                    "{} token{} (your own requests wait ahead of others' while it lasts)",
                    r.credits,
                    if r.credits == 1 { "" } else { "s" },
                )}
            </dd>
        </dl>
    }
}

/// The one line that says where the scout is, and its style.
fn headline(state: &NodeState) -> (String, &'static str) {
    let detail = state.detail.clone().unwrap_or_default();
    let seconds_until = |ms: Option<u64>| {
        ms.map_or(0.0, |at| {
            ((at as f64 - js_sys::Date::now()) / 1000.0).max(0.0)
        })
    };
    match state.phase {
        Phase::Loading if state.model.received < state.model.total => {
            ("Downloading the draft model…".into(), "busy")
        }
        Phase::Loading => ("Loading the draft model…".into(), "busy"),
        Phase::Dialling => ("Connecting to the oracle…".into(), "busy"),
        Phase::Connected => ("Connected; introducing this scout…".into(), "busy"),
        Phase::Ready if state.stats.rounds == 0 => {
            ("Ready: waiting for work to draft for.".into(), "good")
        }
        Phase::Ready => ("Drafting for the oracle.".into(), "good"),
        Phase::Refused => (format!("The oracle refused this scout: {detail}"), "bad"),
        Phase::Banned => (
            // The oracle's detail is the ban's end in unix ms: said in local time instead.
            format!(
                "The oracle has banned this scout until {} ({:.0} s more): it failed the \
                 oracle's checks. It tries again by itself when the ban ends.",
                state.banned_until_ms.map_or_else(String::new, |ms| {
                    String::from(
                        js_sys::Date::new(&(ms as f64).into()).to_locale_time_string("default"),
                    )
                }),
                seconds_until(state.banned_until_ms)
            ),
            "bad",
        ),
        Phase::Unreachable => (
            format!(
                "The oracle is unreachable; trying again in {:.0} s. {detail}",
                seconds_until(state.retry_at_ms)
            ),
            "bad",
        ),
        Phase::Stopped => ("Stopped.".into(), "idle"),
        Phase::Failed => (format!("This tab cannot contribute: {detail}"), "bad"),
    }
}
