//! The command line. Other tools call these commands, so their flags and
//! JSON output are a contract: change them only with care.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::{Parser, Subcommand};
use serde::Serialize;
use shared_model::backend::{Backend, Cpu, Kernels, cpu_device};
use shared_model::draft::DraftModel;
use shared_model::generate::Generator;
use shared_model::gguf::Gguf;
use shared_model::model::{BatchItem, Llama, Logits};
use shared_model::sampling::SamplingParams;
use shared_model::session::{SamplingVerifier, Session, SessionConfig};
use shared_model::tokenizer::{EncodeOptions, StreamDecoder, Tokenizer};

use crate::serve::{self, BackendChoice, ServeArgs, init_logging};

#[derive(Parser)]
#[command(
    name = "oracle",
    version,
    about = "Shard oracle: hosts the target model and verifies drafts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the token ids of a text, as llama.cpp would tokenize it by default.
    Tokenize {
        /// GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// Text to tokenize. Special-token text (e.g. `<|im_start|>`) stays text.
        #[arg(long)]
        text: String,
        /// Print a JSON array of ids (otherwise one id and its piece per line).
        #[arg(long)]
        json: bool,
    },
    /// Generate a continuation of a prompt, optionally with speculative decoding.
    Generate(GenerateArgs),
    /// Print, as JSON, the CPU's logits at each position of a token sequence
    /// (the first `--values` of each row, and its argmax): the reference
    /// other backends (WebGPU in the browser tests) are compared with.
    #[command(hide = true)]
    Logits {
        /// GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// Blocks of the model to keep (all when absent).
        #[arg(long)]
        layers: Option<usize>,
        /// Token ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        /// Values printed per row.
        #[arg(long, default_value_t = 16)]
        values: usize,
        /// Which CPU engine computes them: `tensors` (burn, f32: the numerics
        /// browsers and GPUs run) or `host` (our kernels, 8-bit activations).
        #[arg(long, default_value = "tensors", value_parser = ["tensors", "host"])]
        engine: String,
    },
    /// Measure load, prefill, decode and k-token forward-pass speed.
    Bench {
        /// GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// Where the model runs.
        #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
        backend: BackendChoice,
        /// Timed repetitions of each k-token forward pass (the median is shown).
        #[arg(long, default_value_t = 10)]
        repeat: usize,
        /// Use only the first N blocks (what a scout's `--scout-layers N` cut
        /// runs), e.g. to compare with the browser scout's draft speed.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        layers: Option<u64>,
        /// CPU threads of the kernels [default: one per core].
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Serve the model: the OpenAI-compatible API, status, metrics and the web app.
    Serve(Box<ServeArgs>),
    /// Draft for an oracle over the network until SIGINT/SIGTERM.
    Scout(crate::scout::ScoutArgs),
    /// Ask an oracle for one completion over p2p (as a leech) and print it.
    Ask(crate::ask::AskArgs),
    /// Download a model by its content id from the peers that offer it
    /// (verified piece by piece, resumable); prints the file's path.
    Fetch(crate::fetch::FetchArgs),
    /// Print a model file's manifest (pieces and their SHA-256) and, as the
    /// last line, the content id that names the model on the network.
    Manifest {
        /// The model file (GGUF; any file works, without a tensor layout).
        path: PathBuf,
        /// Print the whole manifest as one JSON object instead.
        #[arg(long)]
        json: bool,
    },
    /// Make a network key (for tests and single-operator networks): it
    /// certifies oracles, whose results others then accept.
    NetworkKey {
        /// Where to write the key (mode 0600); refuses to overwrite one.
        #[arg(long)]
        out: PathBuf,
    },
    /// Certify this data dir's oracle key with a network key.
    Certify {
        /// The network key file (`oracle network-key`).
        #[arg(long)]
        network_key: PathBuf,
        /// The oracle's data dir [default: as `oracle serve`].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Print a credit token for a scout's key: send it as the `X-Shard-Credit`
    /// header and your requests wait ahead of others' while your drafts have
    /// earned credit at that oracle.
    CreditToken {
        /// The scout's data dir [default: as `oracle scout`].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Days the token is valid (it is a bearer credential: keep it short).
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// GGUF model file (the target).
    #[arg(long)]
    model: PathBuf,
    /// The prompt. Special-token text such as `<|im_start|>` becomes special tokens.
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate; generation also stops at end-of-generation tokens.
    #[arg(long)]
    max_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold (1 keeps everything).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 keeps everything).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Seed of the sampling stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A draft model with the same tokenizer: enables speculative decoding.
    #[arg(long)]
    draft_model: Option<PathBuf>,
    /// Tokens drafted per round.
    #[arg(long, default_value_t = 4, requires = "draft_model")]
    draft_k: usize,
    /// Use only the first N layers of the draft model.
    #[arg(long, requires = "draft_model")]
    draft_layers: Option<usize>,
    /// How sampled drafts are verified: `match` (output identical to running
    /// without a draft) or `speculative` (standard speculative sampling).
    #[arg(long, default_value = "match", value_parser = ["match", "speculative"])]
    sampling_verifier: String,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Where the models run.
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    backend: BackendChoice,
    /// CPU threads of the kernels [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Runs `$body` with `$b` bound to the chosen backend type and `$device` to its device.
macro_rules! with_backend {
    ($choice:expr, |$device:ident: $b:ident| $body:expr) => {
        match $choice {
            BackendChoice::Cpu => {
                type $b = Cpu;
                let $device = cpu_device();
                $body
            }
            #[cfg(feature = "cuda")]
            BackendChoice::Cuda => {
                type $b = shared_model::backend::Cuda;
                let $device = shared_model::backend::cuda_device(0);
                $body
            }
            #[cfg(not(feature = "cuda"))]
            BackendChoice::Cuda => {
                anyhow::bail!("this oracle was built without CUDA: rebuild with `--features cuda`")
            }
            #[cfg(feature = "wgpu")]
            BackendChoice::Wgpu => {
                type $b = shared_model::backend::WebGpu;
                let ($device, info) = shared_model::backend::wgpu_device();
                tracing::info!(adapter = %info.adapter, api = %info.api, "wgpu device ready");
                $body
            }
            #[cfg(not(feature = "wgpu"))]
            BackendChoice::Wgpu => {
                anyhow::bail!("this oracle was built without wgpu: rebuild with `--features wgpu`")
            }
        }
    };
}

/// Parses arguments, runs the command, and maps errors to exit codes: 2 for
/// usage errors (from clap), 1 for everything else.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Logits {
            model,
            layers,
            tokens,
            values,
            engine,
        } => {
            let mut gguf = open(&model)?;
            let kernels = match engine.as_str() {
                "host" => Kernels::Host { threads: 0 },
                _ => Kernels::Tensors,
            };
            let llama = Llama::<Cpu>::load_with(&mut gguf, &cpu_device(), layers, kernels)
                .with_context(|| format!("cannot load the model in {}", model.display()))?;
            let mut cache = llama.new_cache_with_limit(tokens.len());
            let logits = llama
                .forward(&tokens, &mut cache, Logits::All)
                .context("the forward pass failed")?;
            let rows = llama.logits_to_rows(logits)?;
            let argmax: Vec<u32> = rows
                .iter()
                .map(|r| shared_model::sampling::argmax(r))
                .collect();
            let rows: Vec<&[f32]> = rows.iter().map(|r| &r[..values.min(r.len())]).collect();
            println!("{}", serde_json::json!({ "rows": rows, "argmax": argmax }));
            Ok(())
        }
        Command::Tokenize { model, text, json } => {
            let tokenizer = load_tokenizer(&open(&model)?, &model)?;
            let ids = tokenizer.encode(&text, EncodeOptions::TEXT);
            if json {
                println!("{}", serde_json::to_string(&ids)?);
            } else {
                for id in ids {
                    let piece =
                        String::from_utf8_lossy(&tokenizer.token_bytes(id, true)).into_owned();
                    println!("{id}\t{piece:?}");
                }
            }
            Ok(())
        }
        Command::Generate(args) => {
            with_backend!(args.backend, |device: B| generate::<B>(args, &device))
        }
        Command::Bench {
            model,
            backend,
            repeat,
            layers,
            threads,
        } => {
            let layers = layers.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            with_backend!(backend, |device: B| bench::<B>(
                &model,
                &device,
                repeat.max(1),
                layers,
                threads
            ))
        }
        Command::Serve(args) => {
            let config = args.resolve()?;
            init_logging(config.log_format);
            with_backend!(config.backend, |device: B| serve::run::<B>(config, &device))
        }
        Command::NetworkKey { out } => {
            ensure!(
                !out.exists(),
                "{} exists: not overwriting a network key",
                out.display()
            );
            let key = shared_proto::Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding()?;
            crate::p2p::identity::write_private(&out, &bytes)?;
            println!("network key written to {}", out.display());
            println!("network public key: {}", key.public().to_peer_id());
            Ok(())
        }
        Command::Certify {
            network_key,
            data_dir,
            days,
        } => certify(&network_key, data_dir, days),
        Command::CreditToken { data_dir, days } => credit_token(data_dir, days),
        Command::Ask(args) => crate::ask::run(args),
        Command::Manifest { path, json } => crate::weights::print_manifest(&path, json),
        Command::Fetch(args) => {
            init_logging(serve::LogFormat::Text);
            crate::fetch::run(args)
        }
        Command::Scout(args) => {
            init_logging(serve::LogFormat::Text);
            crate::scout::run(args)
        }
    }
}

fn certify(network_key: &Path, data_dir: Option<PathBuf>, days: u64) -> anyhow::Result<()> {
    use prost::Message as _;
    ensure!(
        (1..=3650).contains(&days),
        "--days must be between 1 and 3650"
    );
    let bytes = std::fs::read(network_key)
        .with_context(|| format!("cannot read {}", network_key.display()))?;
    let network = shared_proto::Keypair::from_protobuf_encoding(&bytes)
        .with_context(|| format!("{} is not a key", network_key.display()))?;
    let dir = data_dir.unwrap_or_else(serve::default_data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let oracle = crate::p2p::identity::load_or_create_key(&dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let cert = shared_proto::pb::OracleCertificate::issue(
        &network,
        &oracle.public(),
        now.saturating_sub(60_000),
        now + days * 86_400_000,
    )?;
    let path = dir.join(serve::CERTIFICATE_FILE);
    crate::p2p::identity::write_private(&path, &cert.encode_to_vec())?;
    println!(
        "certified oracle {} with network key {} for {days} days: {}",
        oracle.public().to_peer_id(),
        network.public().to_peer_id(),
        path.display()
    );
    Ok(())
}

fn credit_token(data_dir: Option<PathBuf>, days: u64) -> anyhow::Result<()> {
    ensure!(
        (1..=366).contains(&days),
        "--days must be between 1 and 366"
    );
    let dir = data_dir.unwrap_or_else(|| serve::default_data_dir().join("scout"));
    let path = dir.join(crate::p2p::identity::KEY_FILE);
    // A new key would have no credit: only an existing scout key makes sense.
    ensure!(
        path.exists(),
        "no scout key at {}: run `oracle scout --data-dir {}` first, or name the scout's --data-dir",
        path.display(),
        dir.display()
    );
    let key = crate::p2p::identity::load_or_create_key(&dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = shared_proto::credit::CreditToken::issue(&key, now + days * 86_400)?;
    eprintln!(
        "credit token for scout {} (valid {days} days); send it as `X-Shard-Credit: TOKEN`",
        key.public().to_peer_id()
    );
    println!("{token}");
    Ok(())
}

fn open(model: &Path) -> anyhow::Result<Gguf<std::fs::File>> {
    Gguf::open(model).with_context(|| format!("cannot read {}", model.display()))
}

fn load_tokenizer(gguf: &Gguf<std::fs::File>, model: &Path) -> anyhow::Result<Tokenizer> {
    Tokenizer::from_metadata(&gguf.metadata)
        .with_context(|| format!("no usable tokenizer in {}", model.display()))
}

fn load_model<B: Backend>(
    gguf: &mut Gguf<std::fs::File>,
    model: &Path,
    device: &B::Device,
    layers: Option<usize>,
    threads: usize,
) -> anyhow::Result<Llama<B>> {
    Llama::load_with(gguf, device, layers, B::KERNELS.with_threads(threads))
        .with_context(|| format!("cannot load the model in {}", model.display()))
}

#[derive(Serialize)]
struct GenerateOutput {
    tokens: Vec<u32>,
    text: String,
    stats: GenerateStats,
}

#[derive(Serialize)]
struct GenerateStats {
    prompt_tokens: usize,
    generated_tokens: usize,
    stop_reason: &'static str,
    target_forward_passes: usize,
    target_passes_per_token: f64,
    draft_forward_passes: usize,
    draft_tokens_proposed: usize,
    draft_tokens_accepted: usize,
    load_ms: f64,
    prefill_ms: f64,
    decode_ms: f64,
    decode_tokens_per_second: f64,
}

fn generate<B: Backend>(args: GenerateArgs, device: &B::Device) -> anyhow::Result<()> {
    ensure!(args.max_tokens >= 1, "--max-tokens must be at least 1");
    ensure!(
        args.temperature.is_finite() && (0.0..=100.0).contains(&args.temperature),
        "--temperature must be between 0 and 100"
    );
    ensure!(
        args.top_p > 0.0 && args.top_p <= 1.0,
        "--top-p must be in (0, 1]"
    );
    ensure!(
        (1..=16).contains(&args.draft_k),
        "--draft-k must be between 1 and 16"
    );
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let verifier = match args.sampling_verifier.as_str() {
        "speculative" => SamplingVerifier::Speculative,
        _ => SamplingVerifier::MatchTarget,
    };

    let load_started = Instant::now();
    let mut gguf = open(&args.model)?;
    let tokenizer = load_tokenizer(&gguf, &args.model)?;
    let target = load_model::<B>(&mut gguf, &args.model, device, None, args.threads)?;
    let draft = match &args.draft_model {
        None => None,
        Some(path) => {
            let mut draft_gguf = open(path)?;
            let draft_tokenizer = load_tokenizer(&draft_gguf, path)?;
            ensure!(
                tokenizer.same_vocabulary(&draft_tokenizer),
                "the draft model {} does not share the target's vocabulary",
                path.display()
            );
            Some(DraftModel::new(load_model::<B>(
                &mut draft_gguf,
                path,
                device,
                args.draft_layers,
                args.threads,
            )?))
        }
    };
    let load_ms = ms(load_started);

    let prompt = tokenizer.encode(&args.prompt, EncodeOptions::PROMPT);
    ensure!(!prompt.is_empty(), "the prompt is empty");
    let max_context = target.config().context_length;
    ensure!(
        prompt.len() < max_context,
        "the prompt has {} tokens; the model's context is {max_context}",
        prompt.len()
    );
    let session = Session::new(
        prompt.clone(),
        SessionConfig {
            params,
            verifier,
            max_new_tokens: args.max_tokens,
            stop_tokens: tokenizer.end_of_generation_tokens(),
            max_context,
            top_logprobs: None,
        },
    )?;
    let mut generator = Generator::new(&target, session);
    if let Some(draft) = &draft {
        generator = generator.with_draft(draft, args.draft_k);
    }

    // The first pass (prefill, and its first token) is timed apart from decoding.
    let started = Instant::now();
    let mut prefill_ms = None;
    let mut tokens = Vec::new();
    let mut stream = StreamDecoder::default();
    while generator.session().stopped().is_none() {
        let round = generator.step().context("decoding failed")?;
        if prefill_ms.is_none() && !round.is_empty() {
            prefill_ms = Some(ms(started));
        }
        for t in round {
            tokens.push(t.token);
            if !args.json {
                use std::io::Write;
                print!("{}", stream.push(&tokenizer.token_bytes(t.token, false)));
                std::io::stdout().flush().ok();
            }
        }
    }
    let prefill_ms = prefill_ms.unwrap_or_else(|| ms(started));
    let decode_ms = (ms(started) - prefill_ms).max(0.0);
    let stop_reason = generator
        .session()
        .stopped()
        .map_or("max_tokens", |r| r.as_str());
    let s = generator.stats();
    let decoded = tokens.len().saturating_sub(1);
    let stats = GenerateStats {
        prompt_tokens: prompt.len(),
        generated_tokens: tokens.len(),
        stop_reason,
        target_forward_passes: s.session.target_forward_passes,
        target_passes_per_token: s.session.target_forward_passes as f64
            / tokens.len().max(1) as f64,
        draft_forward_passes: s.draft_forward_passes,
        draft_tokens_proposed: s.session.draft_tokens_proposed,
        draft_tokens_accepted: s.session.draft_tokens_accepted,
        load_ms,
        prefill_ms,
        decode_ms,
        decode_tokens_per_second: decoded as f64 / (decode_ms / 1000.0).max(1e-9),
    };
    if args.json {
        let text = tokenizer.decode(&tokens);
        println!(
            "{}",
            serde_json::to_string(&GenerateOutput {
                tokens,
                text,
                stats
            })?
        );
    } else {
        println!("{}", stream.finish());
        eprintln!("{}", serde_json::to_string_pretty(&stats)?);
    }
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Peak resident memory of this process, from /proc (Linux).
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn bench<B: Backend>(
    model_path: &Path,
    device: &B::Device,
    repeat: usize,
    layers: Option<usize>,
    threads: usize,
) -> anyhow::Result<()> {
    const PROMPT_TOKENS: usize = 128;
    const DECODE_TOKENS: usize = 128;
    const BATCH_STEPS: usize = 32;

    let started = Instant::now();
    let mut gguf = open(model_path)?;
    let tokenizer = load_tokenizer(&gguf, model_path)?;
    let model = load_model::<B>(&mut gguf, model_path, device, layers, threads)?;
    let load_ms = ms(started);

    // A fixed 128-token prompt: ordinary English, repeated as needed.
    let text = "The history of the printing press begins in the fifteenth century, when \
                movable type changed how knowledge spread across Europe and the world. ";
    let mut prompt = Vec::new();
    while prompt.len() < PROMPT_TOKENS {
        prompt.extend(tokenizer.encode(text, EncodeOptions::TEXT));
    }
    prompt.truncate(PROMPT_TOKENS);

    // Warm up allocations and thread pools once.
    model.forward(&prompt[..8], &mut model.new_cache(), Logits::Last)?;

    let mut cache = model.new_cache();
    let t = Instant::now();
    let logits = model.forward(&prompt, &mut cache, Logits::Last)?;
    let mut next = model.logits_to_rows(logits)?;
    let prefill_ms = ms(t);
    let prefilled = cache.clone();

    let t = Instant::now();
    for _ in 0..DECODE_TOKENS {
        let token = shared_model::sampling::argmax(&next[0]);
        next = model.logits_to_rows(model.forward(&[token], &mut cache, Logits::Last)?)?;
    }
    let decode_ms = ms(t);

    // One pass over k new tokens after a 128-token context, logits for all k.
    let mut pass_ms = Vec::new();
    for k in [1usize, 2, 4, 8, 16] {
        let mut times = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            cache.truncate(PROMPT_TOKENS);
            let t = Instant::now();
            let rows =
                model.logits_to_rows(model.forward(&prompt[..k], &mut cache, Logits::All)?)?;
            times.push(ms(t));
            ensure!(rows.len() == k, "expected {k} rows of logits");
        }
        pass_ms.push((k, median(times)));
    }

    let single_session_peak = peak_memory_mib();

    // Batched decoding: n sessions, each after the same 128-token prompt,
    // one new token each per pass (what `oracle serve` does for n clients).
    let mut batched = Vec::new();
    for sessions in [1usize, 4, 16] {
        let mut caches = vec![prefilled.clone(); sessions];
        let mut tokens: Vec<u32> = (0..sessions).map(|i| prompt[i % PROMPT_TOKENS]).collect();
        let t = Instant::now();
        for _ in 0..BATCH_STEPS {
            let mut items: Vec<BatchItem<'_, B>> = caches
                .iter_mut()
                .zip(&tokens)
                .map(|(cache, token)| BatchItem {
                    tokens: std::slice::from_ref(token),
                    cache,
                    logits: Logits::Last,
                })
                .collect();
            let logits = model.forward_batch(&mut items)?.context("no logits")?;
            let rows = model.logits_to_rows(logits)?;
            for (token, row) in tokens.iter_mut().zip(&rows) {
                *token = shared_model::sampling::argmax(row);
            }
        }
        let secs = ms(t) / 1000.0;
        batched.push((sessions, (sessions * BATCH_STEPS) as f64 / secs));
    }

    let batched_peak = peak_memory_mib();
    let weight_bytes = model.weight_bytes();
    // The memory the weights are read from: the host's or the device's.
    let (memory, bandwidth) = if B::HOST_MEMORY {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        ("host", memory_bandwidth(threads))
    } else {
        (
            "device",
            Some(shared_model::backend::device_read_bandwidth::<B>(device)),
        )
    };
    let decode_tps = DECODE_TOKENS as f64 / (decode_ms / 1000.0);

    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| model | {} |",
        model_path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    if let Some(n) = layers {
        println!("| blocks | the first {n} |");
    }
    println!(
        "| backend | {} on {} |",
        model.engine_description(),
        std::any::type_name::<B>()
    );
    println!("| load | {load_ms:.0} ms |");
    println!(
        "| prefill, {PROMPT_TOKENS}-token prompt | {:.1} tokens/s ({prefill_ms:.0} ms) |",
        PROMPT_TOKENS as f64 / (prefill_ms / 1000.0)
    );
    println!(
        "| decode, {DECODE_TOKENS} tokens | {decode_tps:.1} tokens/s ({:.1} ms/token) |",
        decode_ms / DECODE_TOKENS as f64
    );
    for (k, t) in &pass_ms {
        println!(
            "| forward pass, k = {k} after {PROMPT_TOKENS} tokens (median of {repeat}) | {t:.1} ms ({:.2}× k = 1) |",
            t / pass_ms[0].1
        );
    }
    for (sessions, tps) in &batched {
        println!(
            "| batched decode, {sessions} sessions × {BATCH_STEPS} steps after {PROMPT_TOKENS} tokens | {tps:.1} tokens/s ({:.2}× 1 session) |",
            tps / batched[0].1
        );
    }
    match (single_session_peak, batched_peak) {
        (Some(one), Some(all)) => {
            println!("| peak memory (RSS), one session | {one:.0} MiB |");
            println!("| peak memory (RSS), with the batched sessions' caches | {all:.0} MiB |");
        }
        _ => println!("| peak memory (RSS) | not available on this platform |"),
    }
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!("| weights read per token | {:.1} MiB |", mib(weight_bytes));
    match bandwidth {
        Some(gbs) => {
            let limit = gbs * 1e9 / weight_bytes as f64;
            println!("| {memory} memory bandwidth (read, measured) | {gbs:.1} GB/s |");
            println!(
                "| decode limit at that bandwidth | {limit:.1} tokens/s; this run: {:.0}% of it |",
                decode_tps / limit * 100.0
            );
        }
        None => println!("| {memory} memory bandwidth | not measured |"),
    }
    Ok(())
}

/// Read bandwidth of host memory in GB/s on `threads` threads: the best of 5
/// passes summing a 256 MiB buffer (well past any cache).
fn memory_bandwidth(threads: usize) -> Option<f64> {
    const BYTES: usize = 256 << 20;
    let buffer: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let chunk = buffer.len().div_ceil(threads.max(1));
    let mut best: Option<f64> = None;
    for _ in 0..5 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        // Eight independent sums keep the loads, not the adds, the limit.
                        let mut sums = [0u64; 8];
                        for run in part.chunks_exact(8) {
                            for (s, &v) in sums.iter_mut().zip(run) {
                                *s = s.wrapping_add(v);
                            }
                        }
                        sums.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        let gbs = BYTES as f64 / t.elapsed().as_secs_f64() / 1e9;
        best = Some(best.map_or(gbs, |b| b.max(gbs)));
    }
    best
}
