//! Compiles `proto/consortia.proto` with protox (a pure-Rust protobuf
//! compiler), so building needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/consortia.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The model chunk's parameters are a shared `bytes::Bytes`, encoded once per
        // round for every session (`consortia_proto::params_bytes`).
        .bytes(".consortia.v1.ModelChunk.values")
        .compile_fds(fds)?;
    Ok(())
}
