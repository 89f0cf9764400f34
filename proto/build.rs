//! Generates the tonic/prost code from `tandem/v1/*.proto` with the protoc
//! binary shipped inside `protoc-bin-vendored`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Chunk data decodes as `Bytes`: a slice of the received buffer, where a
    // `Vec<u8>` field is a copy of it (memmove was 3% of a full backup's
    // samples in the server's transport threads).
    config.bytes([".tandem.v1.Chunk.data"]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "tandem/v1/backup.proto",
            "tandem/v1/admin.proto",
            "tandem/v1/replication.proto",
        ],
        &["."],
    )?;
    println!("cargo:rerun-if-changed=tandem");
    Ok(())
}
