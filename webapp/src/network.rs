//! *Network*: the oracle this page came from, the peers it is connected to
//! (oracles, scouts and leeches, by the role their handshake gave), the nodes
//! other oracles report on `shard-topology`, and the oracle's counters as
//! small charts over the last minutes.

use std::time::Duration;

use leptos::prelude::*;
use serde::Deserialize;

use crate::api;
use crate::chart::{Series, Sparkline, percent};

/// How often the page asks the oracle.
const POLL: Duration = Duration::from_secs(2);
/// Samples kept per chart (4 minutes at one per 2 s).
const HISTORY: usize = 120;

/// What the page reads of `/api/status`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Status {
    version: String,
    uptime_s: f64,
    model: Model,
    sessions: Sessions,
    tokens_generated: u64,
    draft_tokens_proposed: u64,
    draft_tokens_accepted: u64,
    scouts_connected: u64,
    p2p: Option<P2p>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Model {
    id: String,
    backend: String,
    max_context: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Sessions {
    active: u64,
    queued: u64,
    max_sessions: u64,
    max_queue: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct P2p {
    peer_id: String,
    listen_addrs: Vec<String>,
}

/// `/api/peers`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Peers {
    peers: Vec<Peer>,
    /// Older oracles leave this out.
    #[serde(default)]
    network: Vec<NetworkNode>,
}

/// A node another oracle reported on `shard-topology`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
struct NetworkNode {
    peer_id: String,
    role: String,
    reported_by: Vec<String>,
    seen_s_ago: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Peer {
    peer_id: String,
    role: String,
    address: String,
    agent: Option<String>,
}

/// Rates between two status samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sample {
    tokens_per_s: f64,
    drafted_per_s: f64,
    accepted_per_s: f64,
    active: f64,
    queued: f64,
}

fn rates(before: &Status, after: &Status) -> Option<Sample> {
    let dt = after.uptime_s - before.uptime_s;
    if dt <= 0.0 {
        return None;
    }
    let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
    Some(Sample {
        tokens_per_s: per_s(after.tokens_generated, before.tokens_generated),
        drafted_per_s: per_s(after.draft_tokens_proposed, before.draft_tokens_proposed),
        accepted_per_s: per_s(after.draft_tokens_accepted, before.draft_tokens_accepted),
        active: after.sessions.active as f64,
        queued: after.sessions.queued as f64,
    })
}

/// The *Network* page.
#[component]
pub(crate) fn Network() -> impl IntoView {
    let status = RwSignal::new(None::<Status>);
    let peers = RwSignal::new(Vec::<Peer>::new());
    let network = RwSignal::new(Vec::<NetworkNode>::new());
    let history = RwSignal::new(Vec::<Sample>::new());
    let error = RwSignal::new(None::<String>);

    let refresh = move || {
        leptos::task::spawn_local(async move {
            match api::get_json::<Status>("/api/status").await {
                Ok(now) => {
                    if let Some(sample) =
                        status.with_untracked(|s| s.as_ref().and_then(|b| rates(b, &now)))
                    {
                        history.update(|h| {
                            h.push(sample);
                            if h.len() > HISTORY {
                                h.remove(0);
                            }
                        });
                    }
                    status.set(Some(now));
                    error.set(None);
                }
                Err(e) => error.set(Some(e)),
            }
            match api::get_json::<Peers>("/api/peers").await {
                Ok(p) => {
                    peers.set(p.peers);
                    network.set(p.network);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    refresh();
    match set_interval_with_handle(refresh, POLL) {
        Ok(handle) => on_cleanup(move || handle.clear()),
        Err(e) => error.set(Some(format!(
            "the page cannot poll the oracle ({})",
            api::describe(&e)
        ))),
    }

    let count = move |role: &str| peers.with(|p| p.iter().filter(|p| p.role == role).count());
    let series = move |pick: fn(&Sample) -> f64| -> Vec<f64> {
        history.with(|h| h.iter().map(pick).collect())
    };

    view! {
        <section class="card" aria-labelledby="network-title">
            <h1 id="network-title">"Network"</h1>
            {move || error.get().map(|e| view! { <p class="error" role="alert" data-testid="network-error">{e}</p> })}
            {move || status.get().map(|s| view! { <OracleFacts status=s /> })}
            <h2>"Peers of this oracle"</h2>
            <p class="counts" data-testid="peer-counts">
                {move || format!(
                    "{}, {}, {}, {} still introducing {}",
                    counted(count("oracle"), "oracle", "oracles"),
                    counted(count("scout"), "scout", "scouts"),
                    counted(count("leech"), "leech", "leeches"),
                    count("unknown"),
                    if count("unknown") == 1 { "itself" } else { "themselves" },
                )}
            </p>
            {move || {
                let rows = peers
                    .get()
                    .into_iter()
                    .map(|p| [p.role, p.peer_id, p.address, p.agent.unwrap_or_default()])
                    .collect();
                view! {
                    <PeerTable testid="peers" headers=["Role", "Peer", "Address", "Software"] rows />
                }
            }}
            <h2>"Elsewhere in the network"</h2>
            <p class="hint">
                "What other oracles report on the shard-topology topic: their own peers, "
                "which need not be connected to this oracle."
            </p>
            {move || {
                let nodes = network.get();
                if nodes.is_empty() {
                    view! {
                        <p class="counts" data-testid="network-empty">
                            "No other oracle has reported yet."
                        </p>
                    }
                    .into_any()
                } else {
                    let rows = nodes
                        .into_iter()
                        .map(|n| {
                            [n.role, n.peer_id, n.reported_by.join("\n"), format!("{} s ago", n.seen_s_ago)]
                        })
                        .collect();
                    view! {
                        <PeerTable
                            testid="topology"
                            headers=["Role", "Peer", "Reported by", "Last report"]
                            rows
                        />
                    }
                    .into_any()
                }
            }}
            <h2>"Activity"</h2>
            <div class="charts">
                <Sparkline
                    title="Verified tokens per second"
                    testid="chart-tokens"
                    series=Signal::derive(move || vec![Series::new("tokens/s", "series-a", series(|s| s.tokens_per_s))])
                />
                <Sparkline
                    title="Drafted and accepted tokens per second"
                    testid="chart-drafts"
                    series=Signal::derive(move || {
                        vec![
                            Series::new("drafted/s", "series-b", series(|s| s.drafted_per_s)),
                            Series::new("accepted/s", "series-a", series(|s| s.accepted_per_s)),
                        ]
                    })
                />
                <Sparkline
                    title="Sessions running and waiting"
                    testid="chart-sessions"
                    series=Signal::derive(move || {
                        vec![
                            Series::new("running", "series-a", series(|s| s.active)),
                            Series::new("waiting", "series-c", series(|s| s.queued)),
                        ]
                    })
                />
            </div>
        </section>
    }
}

#[component]
fn OracleFacts(status: Status) -> impl IntoView {
    let acceptance = percent(status.draft_tokens_accepted, status.draft_tokens_proposed);
    let s = &status.sessions;
    view! {
        <dl class="facts" data-testid="oracle-facts">
            <dt>"Oracle"</dt>
            <dd class="mono" data-testid="oracle-peer-id">
                {status.p2p.as_ref().map_or_else(|| "no p2p node".to_owned(), |p| p.peer_id.clone())}
            </dd>
            <dt>"Model"</dt>
            <dd>{format!("{} on {} ({} tokens of context)", status.model.id, status.model.backend, status.model.max_context)}</dd>
            <dt>"Sessions"</dt>
            <dd data-testid="oracle-sessions">
                {format!("{} of {} running, {} of {} waiting", s.active, s.max_sessions, s.queued, s.max_queue)}
            </dd>
            <dt>"Tokens generated"</dt>
            <dd data-testid="oracle-tokens">{status.tokens_generated}</dd>
            <dt>"Drafts accepted"</dt>
            <dd>{format!("{} of {} ({acceptance})", status.draft_tokens_accepted, status.draft_tokens_proposed)}</dd>
            <dt>"Scouts connected"</dt>
            <dd data-testid="oracle-scouts">{status.scouts_connected}</dd>
            <dt>"Listening on"</dt>
            <dd class="mono">
                {status.p2p.map(|p| p.listen_addrs.join("\n")).unwrap_or_default()}
            </dd>
            <dt>"Version"</dt>
            <dd>{format!("{} — up {:.0} s", status.version, status.uptime_s)}</dd>
        </dl>
    }
}

/// Peers, one row each: a role (also the row's `data-role`, for tests), a
/// peer id and an address-like column in monospace, and a note. Each cell
/// carries its column's name for the stacked layout at phone width.
#[component]
fn PeerTable(
    testid: &'static str,
    headers: [&'static str; 4],
    rows: Vec<[String; 4]>,
) -> impl IntoView {
    view! {
        <div class="table-wrap">
            <table class="peers" data-testid=testid>
                <thead>
                    <tr>
                        {headers
                            .into_iter()
                            .map(|h| view! { <th scope="col">{h}</th> })
                            .collect_view()}
                    </tr>
                </thead>
                <tbody>
                    {rows
                        .into_iter()
                        .map(|[role, peer, address, note]| {
                            let data_role = role.clone();
                            view! {
                                <tr data-role=data_role>
                                    <td data-label={headers[0]}>{role}</td>
                                    <td class="mono" data-label={headers[1]}>{peer}</td>
                                    <td class="mono" data-label={headers[2]}>{address}</td>
                                    <td data-label={headers[3]}>{note}</td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
}

/// `n` and the noun in the number `n` calls for ("1 scout", "2 scouts").
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
