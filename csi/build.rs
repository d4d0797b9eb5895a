//! Compiles the CSI v1 protobuf with protox (a pure-Rust protobuf compiler:
//! the build needs no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/csi/v1/csi.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
