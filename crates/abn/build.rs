//! Generates the gRPC service from proto/abn.proto with a pure-Rust protobuf compiler, so
//! building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/abn.proto");
    let files = protox::compile(["proto/abn.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    Ok(())
}
