//! Generates the protobuf and gRPC code from proto/mesh.proto.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/mesh.proto");
    tonic_prost_build::configure().compile_protos(&["proto/mesh.proto"], &["proto"])?;
    Ok(())
}
