//! Generates the Rust types for `proto/shard.proto`.
//!
//! `protox` is a protobuf compiler written in Rust, so the build needs no
//! `protoc` binary and gives the same output on every machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["shard.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
