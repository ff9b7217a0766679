//! `oracle ask`: one completion asked of an oracle over p2p, as a leech. With
//! a scout's data dir the request is that scout's, queued ahead of others
//! while its drafts have earned credit at that oracle.

use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use libp2p::Multiaddr;
use scout_wasm::leech;
use scout_wasm::wire::params_to_wire;
use serde_json::json;
use shared_model::sampling::SamplingParams;
use shared_proto::{Keypair, limits, pb};

use crate::p2p::identity;

/// `oracle ask`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AskArgs {
    /// The oracle's p2p address, ending in `/p2p/<peer id>`.
    #[arg(long)]
    pub connect: String,
    /// The prompt (plain text; the oracle tokenizes it).
    pub prompt: String,
    /// Most tokens in the answer (1 to 1024).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A string that ends the answer (repeatable, at most 4).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Ask with the key in this data dir (a scout's spends its credit)
    /// [default: a new key each time, an anonymous leech].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the whole answer as JSON (text, token ids, finish reason, ...).
    #[arg(long)]
    pub json: bool,
}

/// Asks and prints the answer.
pub fn run(args: AskArgs) -> anyhow::Result<()> {
    let connect: Multiaddr = args
        .connect
        .parse()
        .with_context(|| format!("--connect `{}` is not a multiaddr", args.connect))?;
    ensure!(
        (1..=limits::MAX_COMPLETION_TOKENS).contains(&args.max_tokens),
        "--max-tokens must be between 1 and {}",
        limits::MAX_COMPLETION_TOKENS
    );
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k as usize,
        top_p: args.top_p,
        seed: args.seed,
    };
    let request = pb::CompletionRequest {
        prompt: args.prompt,
        max_tokens: args.max_tokens,
        sampling: Some(params_to_wire(&params)),
        stop: args.stop,
    };
    // The oracle would refuse it too; saying so here names the flag.
    shared_proto::Validate::validate(&request).map_err(|e| anyhow::anyhow!("bad request: {e}"))?;
    let key = match &args.data_dir {
        Some(dir) => identity::load_or_create_key(dir)?,
        None => Keypair::generate_ed25519(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let response = runtime.block_on(leech::complete(key, connect, request, Default::default()))?;
    let ack = response.ack.clone().unwrap_or_default();
    if !ack.ok {
        let code = ack.errors.first().map_or("", |e| e.code.as_str());
        bail!("the oracle refused: {code} {}", ack.detail);
    }
    if args.json {
        println!(
            "{}",
            json!({
                "text": response.text,
                "token_ids": response.token_ids,
                "finish_reason": response.finish_reason,
                "prompt_tokens": response.prompt_tokens,
                "contributor": response.contributor,
            })
        );
    } else {
        println!("{}", response.text);
    }
    Ok(())
}
