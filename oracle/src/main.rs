//! The Shard oracle binary.
//!
//! It will host the target model, verify scouts' drafts, stream verified tokens,
//! publish signed results on gossipsub, and serve the web app, the REST and
//! OpenAI-compatible APIs. Today it only reports that it is not built yet, so
//! that the README's run command already has something to start.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("oracle {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    eprintln!(
        "oracle {}: the oracle is not built yet (wire protocol {} only).",
        env!("CARGO_PKG_VERSION"),
        shared_proto::PROTOCOL_VERSION
    );
    eprintln!("The model, the swarm and the web app arrive in the next issues; see README.md.");
    Ok(())
}
