//! The Shard oracle binary; see the library's docs and `oracle --help`.

fn main() -> std::process::ExitCode {
    oracle::cli::main()
}
