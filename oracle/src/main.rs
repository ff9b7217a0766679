//! The Shard oracle binary.
//!
//! Today it offers the model tools (`tokenize`, and as issue 3 lands, `generate`
//! and `bench`). Serving — the swarm, the verifier, the web app and the HTTP
//! APIs — arrives in the next issues; `serve` says so.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
