//! Generates the tonic server and client stubs of `proto/ensync.proto` with `protox`
//! (no system `protoc`). The message types are the ones of `ensync_proto::wire`, so
//! there is one set of wire types in the workspace.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = proto_dir.join("ensync.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&proto_dir])?;
    tonic_prost_build::configure()
        // The RPC `Connect` collides with tonic's `connect(dst)` constructor.
        .build_transport(false)
        .build_server(true)
        .build_client(true)
        .extern_path(".ensync", "::ensync_proto::wire")
        .compile_fds(fds)?;
    Ok(())
}
