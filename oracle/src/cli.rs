//! Command-line interface. Other tools call these commands, so their flags and
//! JSON output are a contract: change them only with care.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared_model::gguf::Gguf;
use shared_model::tokenizer::{EncodeOptions, Tokenizer};

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
    /// Serve the model to the network (not built yet).
    Serve {
        /// GGUF model file.
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

/// Parses arguments, runs the command, and maps errors to exit codes: 2 for
/// usage errors (from clap), 1 for everything else.
pub(crate) fn main() -> ExitCode {
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
        Command::Tokenize { model, text, json } => {
            let tokenizer = load_tokenizer(&model)?;
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
        Command::Serve { .. } => {
            anyhow::bail!(
                "serving is not built yet (wire protocol {} only); the swarm, verifier and web app arrive in the next issues",
                shared_proto::PROTOCOL_VERSION
            )
        }
    }
}

fn load_tokenizer(model: &std::path::Path) -> anyhow::Result<Tokenizer> {
    let gguf = Gguf::open(model).with_context(|| format!("cannot read {}", model.display()))?;
    Tokenizer::from_metadata(&gguf.metadata)
        .with_context(|| format!("no usable tokenizer in {}", model.display()))
}
