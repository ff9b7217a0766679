//! The oracle's HTTP server, one port: the OpenAI-compatible API (`/v1`),
//! health, status, Prometheus metrics, a WebSocket of engine events, and the
//! web app's files at `/`.

mod error;
mod models;
mod openai;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::json;
use shared_model::tokenizer::Tokenizer;
use tokio::sync::broadcast::error::RecvError;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

pub use error::ApiError;
pub use models::ServedModel;

use crate::chat::ChatTemplate;
use crate::engine::EngineHandle;
use crate::metrics::{Metrics, RequestLabels};

/// What the API says about the served model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The id clients name it by (the GGUF's `general.name`, else the file name).
    pub id: String,
    /// The file it was loaded from.
    pub path: String,
    /// Longest prompt + output one request may have.
    pub max_context: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Blocks the target runs (fewer than the file has with `--layers`).
    pub layers: usize,
    /// Where the model runs (`cpu` or `cuda`).
    pub backend: String,
    /// The local draft model, if any.
    pub draft: Option<String>,
    /// Unix time the server started (the model's `created`).
    pub created: u64,
}

/// Limits and switches of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Bearer token required on `/v1`, `/api` and `/ws` (none: open).
    pub api_key: Option<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS (`*`: any).
    pub cors_origins: Vec<String>,
    /// The web app's built files; a short page explains when they are missing.
    pub web_dir: PathBuf,
    /// Sessions running at once (reported by `/api/status`).
    pub max_sessions: usize,
    /// Requests waiting at most (reported by `/api/status`).
    pub max_queue: usize,
}

/// Shared by every handler.
pub struct AppState {
    /// The engine.
    pub engine: EngineHandle,
    /// The model's tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The model's chat template.
    pub chat: ChatTemplate,
    /// The served model.
    pub info: ModelInfo,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// HTTP settings.
    pub config: HttpConfig,
    /// When the server started.
    pub started: Instant,
    /// The p2p node as it is now (empty without one).
    pub network: crate::p2p::NetView,
    /// Scouts' reputation, credits and bans, once the p2p node runs.
    pub trust: std::sync::OnceLock<Arc<crate::trust::Ledger>>,
    /// The draft model scouts must hold, served at `/models/{name}` (whole)
    /// and `/models/{cid}/…` (in pieces) once the p2p node runs.
    pub scout_model: std::sync::OnceLock<ServedModel>,
}

/// The whole HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{model}", get(openai::get_model))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/api/status", get(status))
        .route("/api/peers", get(peers))
        .route("/api/scouts/{peer}", get(scout_record))
        .route("/ws", get(events))
        .route("/v1/{*rest}", any(openai::not_found))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let missing = get(web_app_missing).with_state(state.clone());
    let web = ServeDir::new(&state.config.web_dir).fallback(missing);
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/models/{name}", get(models::model_file))
        .route("/models/{cid}/manifest", get(models::manifest))
        .route("/models/{cid}/pieces/{index}", get(models::piece))
        .fallback_service(web)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(cors(&state.config.cors_origins))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open
/// requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static(CREDIT_HEADER),
        ])
        .expose_headers([HeaderName::from_static(PRIORITY_HEADER)])
        .max_age(Duration::from_secs(3600))
}

/// A contributor's credit token ([`shared_proto::credit`]): its request waits
/// ahead of anyone else's while the scout has credit, and the tokens generated
/// are taken off that credit.
pub const CREDIT_HEADER: &str = "x-shard-credit";
/// On a generation's answer: `contributor` or `normal`, how it was queued.
pub const PRIORITY_HEADER: &str = "x-shard-priority";

/// Whose credit pays for a request: the scout named by a valid credit token
/// in [`CREDIT_HEADER`], when it has credit left. No header: anyone's request.
/// A token that does not verify is refused (401), never silently ignored.
async fn credit_payer(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<libp2p::PeerId>, ApiError> {
    let Some(value) = headers.get(CREDIT_HEADER) else {
        return Ok(None);
    };
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = value
        .to_str()
        .map_err(|_| shared_proto::credit::CreditTokenError::Malformed("not text"))
        .and_then(|t| shared_proto::credit::CreditToken::verify(t.trim(), now_s))
        .map_err(|e| ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: Some("invalid_credit_token"),
            kind: "authentication_error",
            ..ApiError::invalid(format!("{CREDIT_HEADER}: {e}"), None)
        })?;
    let Some(ledger) = state.trust.get().cloned() else {
        return Ok(None);
    };
    let record = tokio::task::spawn_blocking(move || ledger.get(&token.peer))
        .await
        .map_err(|e| ApiError::internal(format!("reading credits failed: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((record.credits > 0).then_some(token.peer))
}

async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Browsers cannot set headers on a WebSocket: `/ws` also takes `?api_key=`.
        let in_query = request.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|pair| pair.strip_prefix("api_key=") == Some(key.as_str()))
        });
        if given != Some(key.as_str()) && !in_query {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let endpoint = if path.starts_with("/models/") {
        "/models".to_owned()
    } else if path.starts_with("/v1/")
        || path.starts_with("/api/")
        || matches!(path, "/health" | "/metrics" | "/ws")
    {
        path.to_owned()
    } else {
        "static".to_owned()
    };
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.is_stopped() {
        let body = json!({"status": "unavailable", "reason": "the engine has stopped"});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    let i = &state.info;
    let m = &state.metrics;
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "protocol_version": shared_proto::PROTOCOL_VERSION,
        "uptime_s": state.started.elapsed().as_secs_f64(),
        "model": {
            "id": i.id,
            "path": i.path,
            "max_context": i.max_context,
            "vocab_size": i.vocab_size,
            "layers": i.layers,
            "backend": i.backend,
            "draft": i.draft,
        },
        "sessions": {
            "active": m.sessions_active.get(),
            "queued": m.queue_depth.get(),
            "max_sessions": state.config.max_sessions,
            "max_queue": state.config.max_queue,
        },
        "tokens_generated": m.tokens_generated.get(),
        "target_forward_passes": m.target_forward_passes.get(),
        "draft_tokens_proposed": m.draft_tokens_proposed.get(),
        "draft_tokens_accepted": m.draft_tokens_accepted.get(),
        "scouts_connected": m.scouts_connected.get(),
        "scout_model": state.scout_model.get(),
        "p2p": state.network.read().ok().map(|n| json!({
            "peer_id": n.peer_id,
            "listen_addrs": n.listen_addrs,
            "peers": n.peers.len(),
        })),
    }))
    .into_response()
}

async fn scout_record(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(peer): axum::extract::Path<String>,
) -> Response {
    let Ok(peer) = peer.parse::<libp2p::PeerId>() else {
        return error::ApiError::invalid("not a peer id", Some("peer")).into_response();
    };
    let Some(ledger) = state.trust.get() else {
        return error::ApiError::unavailable("this oracle runs no p2p node").into_response();
    };
    match ledger.get(&peer) {
        Ok(record) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            axum::Json(json!({
                "peer_id": peer.to_string(),
                "banned": record.is_banned(now),
                "record": record,
            }))
            .into_response()
        }
        Err(e) => error::ApiError::internal(e.to_string()).into_response(),
    }
}

async fn peers(State(state): State<Arc<AppState>>) -> Response {
    let (peers, network) = state
        .network
        .read()
        .map(|n| (n.peers.clone(), n.network.clone()))
        .unwrap_or_default();
    axum::Json(json!({ "peers": peers, "network": network })).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn events(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| forward_events(socket, state))
}

/// Sends every engine event to the socket as JSON until either side ends.
async fn forward_events(mut socket: WebSocket, state: Arc<AppState>) {
    let mut events = state.engine.subscribe();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    let Ok(text) = serde_json::to_string(&event) else { continue };
                    if socket.send(WsMessage::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                // A slow listener misses events rather than slowing the engine.
                Err(RecvError::Lagged(n)) => {
                    let note = json!({"type": "lagged", "missed": n}).to_string();
                    if socket.send(WsMessage::Text(note.into())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn web_app_missing(State(state): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        Html(format!(
            "<!doctype html><meta charset=utf-8><title>Shard oracle</title>\
             <h1>Shard oracle</h1><p>Serving <code>{}</code>. The web app is not built \
             (<code>{}</code> is missing): build it with <code>trunk build --config trunk.toml</code>.</p>\
             <p>API: <a href=/v1/models>/v1/models</a>, <a href=/api/status>/api/status</a>, \
             <a href=/metrics>/metrics</a>, <a href=/health>/health</a>.</p>",
            html_escape(&state.info.id),
            html_escape(&state.config.web_dir.display().to_string()),
        )),
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
