//! Generates Rust from `selfheal/v1/*.proto` with protox: no `protoc` on the machine is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "selfheal/v1/audit.proto",
        "selfheal/v1/events.proto",
        "selfheal/v1/gateway.proto",
        "selfheal/v1/policy.proto",
        "selfheal/v1/remediations.proto",
    ];
    let descriptors = protox::compile(files, ["."])?;
    // For server reflection: every file, its imports (google/protobuf/*) included.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("selfheal_v1.fds"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=selfheal");
    Ok(())
}
