//! Generates the AgentLink types and service from `proto/agentlink.proto` with Debian's
//! `protoc` (installed by scripts/setup; nothing is downloaded at build time).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/agentlink.proto");
    tonic_build::configure().compile_protos(&["proto/agentlink.proto"], &["proto"])?;
    Ok(())
}
