//! Generates the wire types from `proto/canopy.proto` with protox (pure Rust), so no system
//! `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto_file = proto_dir.join("canopy.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());
    let descriptors = protox::compile([&proto_file], [&proto_dir])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
