//! `oracle scout`: a desktop scout that drafts for one oracle until SIGINT or
//! SIGTERM. The scout's logic is `scout-wasm`'s (the same code runs in a
//! browser tab); this file only loads the model and the key and starts it.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use libp2p::Multiaddr;
use scout_wasm::native::{self, ScoutConfig};
use scout_wasm::round::{Fault, Scout};
use shared_model::backend::{Cpu, cpu_device};
use shared_model::draft::DraftModel;
use shared_model::gguf::Gguf;
use shared_model::model::Llama;

use crate::p2p::identity;
use crate::serve::default_data_dir;
use crate::weights::fetch::{self, Destination, FetchConfig};

/// Draft layers used when neither a draft model nor a layer count is given:
/// the default model cut short makes a usable draft model.
pub const DEFAULT_DRAFT_LAYERS: usize = 6;

/// `oracle scout`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoutArgs {
    /// The oracle's p2p address, ending in `/p2p/<peer id>` (its /api/status lists them).
    #[arg(long)]
    pub connect: String,
    /// The draft model (must share the oracle's vocabulary) [default: the
    /// one the oracle names, fetched from the network into the data dir].
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// Use only the first N layers of the draft model [default: all of a
    /// `--draft-model`, 6 of a fetched one].
    #[arg(long)]
    pub draft_layers: Option<usize>,
    /// Where the scout keeps its key [default: the oracle's data dir + /scout].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Sessions drafted for at once.
    #[arg(long, default_value_t = 8)]
    pub max_sessions: usize,
    /// Longest context drafted for, tokens.
    #[arg(long, default_value_t = 4096)]
    pub max_context: usize,
    /// Misbehave on purpose (`garbage` drafts, `wrong-key` signatures,
    /// `replay` of old answers) to see the oracle's defences at work. For
    /// tests and demonstrations.
    #[arg(long, hide = true, value_parser = Fault::NAMES)]
    pub misbehave: Option<String>,
}

/// Fetches the draft model the oracle at `connect` names (first in its
/// handshake) into `data_dir/models`, from every peer that offers it; a model
/// fetched before is checked and used as it is.
fn fetch_draft_model(connect: &Multiaddr, data_dir: &Path) -> anyhow::Result<PathBuf> {
    tracing::info!("no --draft-model: fetching the one the oracle names");
    // A key of its own: the scout's connection must be the scout's alone
    // when it joins (the oracle counts a peer's first handshake).
    let key = shared_proto::Keypair::generate_ed25519();
    let config = FetchConfig::new(
        None,
        vec![connect.clone()],
        Destination::Dir(data_dir.join("models")),
        data_dir.to_owned(),
    );
    let report = fetch::fetch_until_signal(config, key).context("cannot fetch the draft model")?;
    tracing::info!(
        path = %report.path.display(),
        fetched = report.fetched,
        resumed = report.resumed,
        "draft model ready"
    );
    Ok(report.path)
}

/// Runs the scout until a signal.
pub fn run(args: ScoutArgs) -> anyhow::Result<()> {
    let connect: Multiaddr = args
        .connect
        .parse()
        .with_context(|| format!("--connect `{}` is not a multiaddr", args.connect))?;
    ensure!(args.max_sessions >= 1, "--max-sessions must be at least 1");
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| default_data_dir().join("scout"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let key = identity::load_or_create_key(&data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (path, layers) = match args.draft_model {
        Some(p) => (p, args.draft_layers),
        None => (
            fetch_draft_model(&connect, &data_dir)?,
            Some(args.draft_layers.unwrap_or(DEFAULT_DRAFT_LAYERS)),
        ),
    };
    ensure!(
        path.exists(),
        "no draft model at {}: pass --draft-model FILE, or run `scripts/setup.sh model`",
        path.display()
    );
    let mut gguf = Gguf::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let device = cpu_device();
    let model = Llama::<Cpu>::load(&mut gguf, &device, layers)
        .with_context(|| format!("cannot load the draft model in {}", path.display()))?;
    // The model's name on the network is its manifest's content id.
    let model_cid = crate::weights::manifest_cached(&path, &data_dir.join("manifests"))?
        .cid()
        .to_bytes();
    tracing::info!(
        peer_id = %key.public().to_peer_id(),
        model = %path.display(),
        layers = model.config().n_layer,
        "scout ready"
    );
    let fault = args
        .misbehave
        .as_deref()
        .and_then(Fault::from_name)
        .unwrap_or_default();
    if fault != Fault::None {
        tracing::warn!(?fault, "this scout misbehaves on purpose");
    }
    let scout = Scout::new(
        key.clone(),
        DraftModel::new(model),
        args.max_sessions,
        args.max_context,
    )
    .with_fault(fault);
    let config = ScoutConfig {
        connect,
        timeouts: Default::default(),
        model_cid,
    };
    let stats = runtime.block_on(native::run(
        key,
        scout,
        config,
        crate::serve::shutdown_signal(),
    ))?;
    println!(
        "scout stopped: {} claims, {} rounds, {} drafted, {} accepted",
        stats.claims, stats.rounds, stats.drafted, stats.accepted
    );
    Ok(())
}
