//! Generates the API's wire types, server and client from `proto/canopy_api.proto` with
//! protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in at compile time: a build script compiled in another
    // checkout that shares the target directory must still find this checkout's file.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let proto_dir = std::path::Path::new(&manifest_dir).join("../../proto");
    let proto_file = proto_dir.join("canopy_api.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());
    let descriptors = protox::compile([&proto_file], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // No generated `connect(uri)`: clients use `canopy_api::connect` (a Unix socket).
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
