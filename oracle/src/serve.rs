//! `oracle serve`: configuration (flags over a TOML file over defaults),
//! loading the models, and running the engine and the HTTP server until
//! SIGINT/SIGTERM, then shutting down gracefully.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use shared_model::backend::Backend;
use shared_model::draft::DraftModel;
use shared_model::gguf::Gguf;
use shared_model::model::Llama;
use shared_model::tokenizer::Tokenizer;

use crate::chat::ChatTemplate;
use crate::engine::{self, EngineConfig, ToNetwork};
use crate::http::{self, AppState, HttpConfig, ModelInfo};
use crate::metrics::Metrics;
use crate::p2p::{self, NetConfig};
use crate::scheduler::{DraftPolicy, SchedulerConfig};
use crate::trust::{Ledger, TrustPolicy};

/// The model `scripts/setup.sh` fetches, looked for in `$SHARD_MODELS_DIR` (default `models/`).
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// burn's flex backend on the CPU.
    Cpu,
    /// CUDA GPU 0 (needs a build with `--features cuda`).
    Cuda,
    /// The first GPU wgpu finds through Vulkan or Metal (needs a build
    /// with `--features wgpu`).
    Wgpu,
}

/// `oracle serve`'s settings. Every flag can also be set in the `--config`
/// TOML file under the same name with underscores (`max_sessions = 8`); flags win.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// GGUF model file (default: the model the setup fetched, in $SHARD_MODELS_DIR or models/).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address of the HTTP server [default: 127.0.0.1:8080].
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Where the node keeps its state [default: $XDG_DATA_HOME/shard or ~/.local/share/shard].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use only the first N blocks of the target [default: all]. For tests and
    /// demos on slow devices: answers are then this cut's, not the model's.
    #[arg(long)]
    pub layers: Option<usize>,
    /// A draft model with the target's vocabulary: speculative decoding on this machine.
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// Tokens drafted in a session's first round; then adapted to acceptance [default: 4].
    #[arg(long)]
    pub draft_k: Option<usize>,
    /// Use only the first N layers of the draft model.
    #[arg(long)]
    pub draft_layers: Option<usize>,
    /// Where the models run [default: cpu].
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// CPU threads the models' kernels run on [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Require `Authorization: Bearer KEY` on the API (also $SHARD_API_KEY).
    #[arg(long, env = "SHARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A TOML file with any of these settings.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Log format [default: text]. The level comes from $RUST_LOG (default `info`).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Sessions generating at once [default: 16].
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// Requests waiting for a slot; more get 429 [default: 64].
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Longest prompt + output of one request, tokens [default: 2048, at most the model's].
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Memory for key/value caches of all sessions together, MiB [default: 1536].
    #[arg(long)]
    pub kv_cache_mib: Option<usize>,
    /// Tokens in one batched forward pass [default: 256].
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Prompt tokens of one session per pass [default: 128].
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Milliseconds a round waits for drafts before decoding alone [default: 200].
    #[arg(long)]
    pub draft_deadline_ms: Option<u64>,
    /// Seconds running sessions get to finish at shutdown [default: 30].
    #[arg(long)]
    pub shutdown_grace_s: Option<u64>,
    /// Directory of the built web app, served at / [default: webapp/dist].
    #[arg(long)]
    pub web_dir: Option<PathBuf>,
    /// An origin allowed by CORS; repeatable [default: *].
    #[arg(long = "cors-origin")]
    pub cors_origins: Vec<String>,
    /// Largest request body, bytes [default: 1048576].
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// A libp2p address to listen on; repeatable [default: TCP 9000, QUIC 9000,
    /// WebRTC-direct 9001, WebSocket 9001 on all interfaces].
    #[arg(long = "p2p-listen")]
    pub p2p_listen: Vec<String>,
    /// A peer to join the network through (`.../p2p/<peer id>`); repeatable.
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS.
    #[arg(long)]
    #[serde(default)]
    pub mdns: bool,
    /// Run without the p2p node (no scouts, HTTP only).
    #[arg(long)]
    #[serde(default)]
    pub no_p2p: bool,
    /// The draft model scouts must hold [default: --draft-model, else the target].
    #[arg(long)]
    pub scout_model: Option<PathBuf>,
    /// Seconds between golden tickets slipped to scouts [default: 30].
    #[arg(long)]
    pub golden_interval_s: Option<f64>,
    /// Blocks of the scout model browser scouts load [default: all]; fewer
    /// draft worse but keep up on slow devices.
    #[arg(long)]
    pub scout_layers: Option<usize>,
    /// Misbehave on purpose (`corrupt-pieces`: every model piece sent to a
    /// peer has a byte flipped), to see downloaders' defences at work. For
    /// tests and demonstrations.
    #[arg(long, hide = true, value_parser = ["corrupt-pieces"])]
    #[serde(skip)]
    pub misbehave: Option<String>,
}

/// Settings with every default filled in.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The target model.
    pub model: PathBuf,
    /// HTTP address.
    pub http: SocketAddr,
    /// State directory.
    pub data_dir: PathBuf,
    /// Blocks of the target to use (all when unset).
    pub layers: Option<usize>,
    /// CPU threads of the kernels (0: one per core).
    pub threads: usize,
    /// The draft model and the layers of it to use.
    pub draft: Option<(PathBuf, Option<usize>)>,
    /// Initial drafts per round.
    pub draft_k: usize,
    /// Backend.
    pub backend: BackendChoice,
    /// API key.
    pub api_key: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Sessions at once.
    pub max_sessions: usize,
    /// Queue length.
    pub max_queue: usize,
    /// Per-request context.
    pub max_context: usize,
    /// Cache memory, MiB.
    pub kv_cache_mib: usize,
    /// Tokens per pass.
    pub max_batch_tokens: usize,
    /// Prompt tokens per session per pass.
    pub prefill_chunk: usize,
    /// Draft wait.
    pub draft_deadline: Duration,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Web app directory.
    pub web_dir: PathBuf,
    /// CORS origins.
    pub cors_origins: Vec<String>,
    /// Body limit.
    pub max_body_bytes: usize,
    /// The p2p node, unless switched off.
    pub p2p: Option<P2pConfig>,
}

/// The p2p node's settings.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// Listen addresses.
    pub listen: Vec<libp2p::Multiaddr>,
    /// Bootstrap peers.
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// mDNS on.
    pub mdns: bool,
    /// The draft model file scouts must hold.
    pub scout_model: PathBuf,
    /// Time between golden tickets.
    pub golden_interval: Duration,
    /// Blocks of the scout model browsers load (all when absent).
    pub scout_layers: Option<usize>,
    /// Serve corrupted model pieces on purpose (`--misbehave corrupt-pieces`).
    pub corrupt_pieces: bool,
}

/// Where the p2p node listens unless told otherwise.
pub const DEFAULT_P2P_LISTEN: [&str; 4] = [
    "/ip4/0.0.0.0/tcp/9000",
    "/ip4/0.0.0.0/udp/9000/quic-v1",
    "/ip4/0.0.0.0/udp/9001/webrtc-direct",
    "/ip4/0.0.0.0/tcp/9001/ws",
];

fn multiaddrs(list: &[String], what: &str) -> anyhow::Result<Vec<libp2p::Multiaddr>> {
    list.iter()
        .map(|s| {
            s.parse()
                .with_context(|| format!("{what} `{s}` is not a multiaddr"))
        })
        .collect()
}

impl ServeArgs {
    /// Fills unset flags from the `--config` file, then from defaults, and
    /// checks the result.
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the config file {}", path.display()))?;
                toml::from_str::<ServeArgs>(&text)
                    .with_context(|| format!("bad config file {}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        let a = self;
        let model = match a.model.or(file.model) {
            Some(m) => m,
            None => default_model_path(),
        };
        let draft_path = a.draft_model.or(file.draft_model);
        let p2p = if a.no_p2p || file.no_p2p {
            None
        } else {
            let listen = if !a.p2p_listen.is_empty() {
                a.p2p_listen.clone()
            } else if !file.p2p_listen.is_empty() {
                file.p2p_listen.clone()
            } else {
                DEFAULT_P2P_LISTEN.iter().map(|s| s.to_string()).collect()
            };
            let bootstrap = if a.bootstrap.is_empty() {
                file.bootstrap.clone()
            } else {
                a.bootstrap.clone()
            };
            Some(P2pConfig {
                listen: multiaddrs(&listen, "--p2p-listen")?,
                bootstrap: multiaddrs(&bootstrap, "--bootstrap")?,
                mdns: a.mdns || file.mdns,
                scout_model: a
                    .scout_model
                    .clone()
                    .or(file.scout_model.clone())
                    .or(draft_path.clone())
                    .unwrap_or_else(|| model.clone()),
                golden_interval: {
                    let s = a
                        .golden_interval_s
                        .or(file.golden_interval_s)
                        .unwrap_or(30.0);
                    ensure!(
                        s.is_finite() && (0.1..=86_400.0).contains(&s),
                        "--golden-interval-s must be between 0.1 and 86400"
                    );
                    Duration::from_secs_f64(s)
                },
                scout_layers: match a.scout_layers.or(file.scout_layers) {
                    Some(0) => anyhow::bail!("--scout-layers must be at least 1"),
                    layers => layers,
                },
                corrupt_pieces: a.misbehave.as_deref() == Some("corrupt-pieces"),
            })
        };
        let draft_layers = a.draft_layers.or(file.draft_layers);
        let cors = if a.cors_origins.is_empty() {
            file.cors_origins
        } else {
            a.cors_origins
        };
        let config = ServeConfig {
            model,
            http: a
                .http
                .or(file.http)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir: a
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(default_data_dir),
            layers: match a.layers.or(file.layers) {
                Some(0) => anyhow::bail!("--layers must be at least 1"),
                layers => layers,
            },
            threads: a.threads.or(file.threads).unwrap_or(0),
            draft: draft_path.map(|p| (p, draft_layers)),
            draft_k: a.draft_k.or(file.draft_k).unwrap_or(4),
            backend: a.backend.or(file.backend).unwrap_or(BackendChoice::Cpu),
            api_key: a.api_key.or(file.api_key).filter(|k| !k.is_empty()),
            log_format: a.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            max_sessions: a.max_sessions.or(file.max_sessions).unwrap_or(16),
            max_queue: a.max_queue.or(file.max_queue).unwrap_or(64),
            max_context: a.max_context.or(file.max_context).unwrap_or(2048),
            kv_cache_mib: a.kv_cache_mib.or(file.kv_cache_mib).unwrap_or(1536),
            max_batch_tokens: a.max_batch_tokens.or(file.max_batch_tokens).unwrap_or(256),
            prefill_chunk: a.prefill_chunk.or(file.prefill_chunk).unwrap_or(128),
            draft_deadline: Duration::from_millis(
                a.draft_deadline_ms
                    .or(file.draft_deadline_ms)
                    .unwrap_or(200),
            ),
            shutdown_grace: Duration::from_secs(
                a.shutdown_grace_s.or(file.shutdown_grace_s).unwrap_or(30),
            ),
            web_dir: a
                .web_dir
                .or(file.web_dir)
                .unwrap_or_else(|| PathBuf::from("webapp/dist")),
            cors_origins: if cors.is_empty() {
                vec!["*".into()]
            } else {
                cors
            },
            max_body_bytes: a.max_body_bytes.or(file.max_body_bytes).unwrap_or(1 << 20),
            p2p,
        };
        config.check()?;
        Ok(config)
    }
}

impl ServeConfig {
    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.max_sessions >= 1, "--max-sessions must be at least 1");
        ensure!(self.max_context >= 2, "--max-context must be at least 2");
        ensure!(self.kv_cache_mib >= 1, "--kv-cache-mib must be at least 1");
        ensure!(
            self.max_batch_tokens >= self.max_sessions,
            "--max-batch-tokens ({}) must be at least --max-sessions ({}): every session needs a token per pass",
            self.max_batch_tokens,
            self.max_sessions
        );
        ensure!(
            self.prefill_chunk >= 1,
            "--prefill-chunk must be at least 1"
        );
        ensure!(
            (1..=16).contains(&self.draft_k),
            "--draft-k must be between 1 and 16"
        );
        ensure!(
            self.max_body_bytes >= 1024,
            "--max-body-bytes must be at least 1024"
        );
        if self.draft.is_none() && self.draft_k != 4 {
            tracing::warn!("--draft-k has no effect without --draft-model");
        }
        Ok(())
    }
}

/// `$SHARD_MODELS_DIR/SmolLM2-135M-Instruct.Q4_1.gguf`, `models/` by default.
pub fn default_model_path() -> PathBuf {
    std::env::var_os("SHARD_MODELS_DIR")
        .map_or_else(|| PathBuf::from("models"), PathBuf::from)
        .join(DEFAULT_MODEL)
}

/// `$XDG_DATA_HOME/shard`, else `~/.local/share/shard`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("shard");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/shard"),
        None => PathBuf::from(".shard"),
    }
}

/// Sets up logging once.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Everything `serve` builds before listening: the app and its engine.
pub struct Server {
    /// The HTTP application.
    pub app: axum::Router,
    /// Shared state (engine handle, metrics).
    pub state: Arc<AppState>,
    /// The engine's requests to the p2p node, for [`start_network`].
    pub to_network: Option<tokio::sync::mpsc::Receiver<ToNetwork>>,
}

/// Loads the models and starts the engine: everything but the socket.
/// Tests call this to drive the app in-process.
pub fn build<B: Backend>(config: &ServeConfig, device: &B::Device) -> anyhow::Result<Server> {
    let started = Instant::now();
    let mut gguf = open(&config.model)?;
    let tokenizer = Tokenizer::from_metadata(&gguf.metadata)
        .with_context(|| format!("no usable tokenizer in {}", config.model.display()))?;
    let token_text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or_default()
            .to_owned()
    };
    let chat = ChatTemplate::from_metadata(
        &gguf.metadata,
        &token_text(tokenizer.bos()),
        &token_text(tokenizer.eos()),
    )?;
    if !chat.from_model {
        tracing::warn!("the model has no chat template; using ChatML");
    }
    let id = gguf
        .metadata
        .get("general.name")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| file_stem(&config.model));
    let kernels = B::KERNELS.with_threads(config.threads);
    let target = Llama::<B>::load_with(&mut gguf, device, config.layers, kernels)
        .with_context(|| format!("cannot load the model in {}", config.model.display()))?;
    let draft = match &config.draft {
        None => None,
        Some((path, layers)) => {
            let mut draft_gguf = open(path)?;
            let draft_tokenizer = Tokenizer::from_metadata(&draft_gguf.metadata)
                .with_context(|| format!("no usable tokenizer in {}", path.display()))?;
            ensure!(
                tokenizer.same_vocabulary(&draft_tokenizer),
                "the draft model {} does not share the target's vocabulary",
                path.display()
            );
            let model = Llama::<B>::load_with(&mut draft_gguf, device, *layers, kernels)
                .with_context(|| format!("cannot load the draft model in {}", path.display()))?;
            Some(DraftModel::new(model))
        }
    };
    let max_context = config.max_context.min(target.config().context_length);
    // The budget is shared by the target's caches and, with a draft model, the drafts'.
    let per_position = target.kv_bytes_per_position()
        + draft
            .as_ref()
            .map_or(0, |d| d.model().kv_bytes_per_position());
    let kv_budget_positions = config.kv_cache_mib * (1 << 20) / per_position.max(1);
    ensure!(
        kv_budget_positions >= max_context,
        "--kv-cache-mib {} holds {kv_budget_positions} positions, less than one request's \
         context of {max_context}: raise it or lower --max-context",
        config.kv_cache_mib
    );
    tracing::info!(
        model = %config.model.display(),
        id,
        layers = target.config().n_layer,
        engine = %target.engine_description(),
        max_context,
        kv_budget_positions,
        draft = config.draft.is_some(),
        load_ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
    let info = ModelInfo {
        id,
        path: config.model.display().to_string(),
        max_context,
        vocab_size: tokenizer.vocab_size(),
        layers: target.config().n_layer,
        backend: match config.backend {
            BackendChoice::Cpu => "cpu".into(),
            BackendChoice::Cuda => "cuda".into(),
            BackendChoice::Wgpu => "wgpu".into(),
        },
        draft: config.draft.as_ref().map(|(p, _)| p.display().to_string()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let tokenizer = Arc::new(tokenizer);
    let metrics = Arc::new(Metrics::new());
    let scheduler = SchedulerConfig {
        max_sessions: config.max_sessions,
        max_queue: config.max_queue,
        kv_budget_positions,
        max_batch_tokens: config.max_batch_tokens,
        prefill_chunk: config.prefill_chunk,
        drafts: Some(DraftPolicy {
            k: config.draft_k,
            k_max: (config.draft_k * 2).min(16),
            deadline: config.draft_deadline,
        }),
    };
    let (network, to_network) = match &config.p2p {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let engine = engine::start(
        target,
        draft,
        tokenizer.clone(),
        EngineConfig { scheduler, network },
        metrics.clone(),
    )
    .context("cannot start the engine thread")?;
    let state = Arc::new(AppState {
        engine,
        tokenizer,
        chat,
        info,
        metrics,
        config: HttpConfig {
            api_key: config.api_key.clone(),
            max_body_bytes: config.max_body_bytes,
            cors_origins: config.cors_origins.clone(),
            web_dir: config.web_dir.clone(),
            max_sessions: config.max_sessions,
            max_queue: config.max_queue,
        },
        started: Instant::now(),
        network: p2p::NetView::default(),
        trust: std::sync::OnceLock::new(),
        scout_model: std::sync::OnceLock::new(),
    });
    Ok(Server {
        app: http::router(state.clone()),
        state,
        to_network,
    })
}

/// Starts the p2p node of `server` (on the current tokio runtime).
pub fn start_network(config: &ServeConfig, server: &mut Server) -> anyhow::Result<()> {
    let (Some(p2p), Some(to_network)) = (&config.p2p, server.to_network.take()) else {
        return Ok(());
    };
    let manifests = config.data_dir.join("manifests");
    let manifest = crate::weights::manifest_cached(&p2p.scout_model, &manifests)
        .with_context(|| format!("cannot read the scout model {}", p2p.scout_model.display()))?;
    let scout_model_cid = manifest.cid().to_bytes();
    let served = http::ServedModel::new(p2p.scout_model.clone(), manifest, p2p.scout_layers);
    // Peers may fetch both models: scouts the draft, new oracles the target.
    let target = crate::weights::manifest_cached(&config.model, &manifests)
        .with_context(|| format!("cannot read the model {}", config.model.display()))?;
    let offered = p2p::Offered::new(
        vec![
            p2p::OfferedModel {
                path: served.path.clone(),
                manifest: served.manifest.clone(),
            },
            p2p::OfferedModel {
                path: config.model.clone(),
                manifest: Arc::new(target),
            },
        ],
        p2p.corrupt_pieces,
    );
    if p2p.corrupt_pieces {
        tracing::warn!("this oracle sends corrupted model pieces on purpose");
    }
    let _ = server.state.scout_model.set(served);
    let certificate = load_certificate(&config.data_dir)?;
    let ledger_path = config.data_dir.join("trust.redb");
    let ledger = Arc::new(
        Ledger::open(&ledger_path, TrustPolicy::default())
            .with_context(|| format!("cannot open {}", ledger_path.display()))?,
    );
    let _ = server.state.trust.set(ledger.clone());
    let net = NetConfig {
        listen: p2p.listen.clone(),
        bootstrap: p2p.bootstrap.clone(),
        mdns: p2p.mdns,
        timeouts: Default::default(),
        data_dir: config.data_dir.clone(),
        max_connections: 1024,
        scout_model_cid,
        offered,
        work_ttl_s: 60,
        golden_interval: p2p.golden_interval,
        ledger,
        certificate: certificate.clone(),
        network_key: certificate
            .as_ref()
            .and_then(|c| shared_proto::PublicKey::try_decode_protobuf(&c.network_public_key).ok()),
        tokenizer: server.state.tokenizer.clone(),
        max_context: server.state.info.max_context,
    };
    p2p::start(
        net,
        server.state.engine.clone(),
        to_network,
        server.state.metrics.clone(),
        server.state.network.clone(),
    )?;
    Ok(())
}

/// File name of the oracle's certificate in the data dir (`oracle certify`).
pub const CERTIFICATE_FILE: &str = "oracle.cert";

/// The oracle's certificate, if `oracle certify` made one for this data dir's
/// key; an invalid or foreign one is an error, not silently ignored.
fn load_certificate(dir: &Path) -> anyhow::Result<Option<shared_proto::pb::OracleCertificate>> {
    use prost::Message as _;
    let path = dir.join(CERTIFICATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let cert = shared_proto::pb::OracleCertificate::decode(bytes.as_slice())
        .with_context(|| format!("{} is not a certificate", path.display()))?;
    let network = shared_proto::PublicKey::try_decode_protobuf(&cert.network_public_key)
        .with_context(|| format!("{} has a malformed network key", path.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let oracle = cert
        .verify(&network, now)
        .with_context(|| format!("{} does not verify", path.display()))?;
    let key = crate::p2p::identity::load_or_create_key(dir)?;
    ensure!(
        oracle == key.public(),
        "{} certifies another key than this data dir's node key; run `oracle certify` again",
        path.display()
    );
    tracing::info!(network_key = %network.to_peer_id(), "certified oracle: results will be published");
    Ok(Some(cert))
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run<B: Backend>(config: ServeConfig, device: &B::Device) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    if !config.http.ip().is_loopback() && config.api_key.is_none() {
        tracing::warn!(
            addr = %config.http,
            "LISTENING ON A NON-LOOPBACK ADDRESS WITHOUT AN API KEY: anyone who can reach \
             this port can use the model. Set --api-key or SHARD_API_KEY."
        );
    }
    let mut server = build::<B>(&config, device)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shard-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .with_context(|| format!("cannot listen on {}", config.http))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "serving: http://{addr}/ (OpenAI API at http://{addr}/v1)");
        // Print the address on stdout too, first: tools that start us read it.
        println!("listening on http://{addr}");
        // Then the p2p node, which prints its own addresses.
        start_network(&config, &mut server)?;
        let engine = server.state.engine.clone();
        let grace = config.shutdown_grace;
        let shutdown = async move {
            shutdown_signal().await;
            tracing::info!(
                grace_s = grace.as_secs(),
                "shutdown requested: finishing running sessions"
            );
            engine.shutdown(grace);
        };
        http::serve(listener, server.app, shutdown)
            .await
            .context("the HTTP server failed")?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Resolves at SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

fn open(path: &Path) -> anyhow::Result<Gguf<std::fs::File>> {
    if !path.exists() {
        bail!(
            "no model at {}: pass --model FILE, or run `scripts/setup.sh model` to fetch the default",
            path.display()
        );
    }
    Gguf::open(path).with_context(|| format!("cannot read {}", path.display()))
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
