//! Compiles the `.proto` files under `proto/` with protox (pure Rust, no system `protoc`)
//! and generates prost messages plus tonic clients and servers into `OUT_DIR`.

use std::path::{Path, PathBuf};

/// Proto files to compile, relative to `proto/`; imports resolve against the same root,
/// as in containerd's `api/` tree.
const PROTO_FILES: &[&str] = &[
    "google/rpc/status.proto",
    "types/descriptor.proto",
    "types/introspection.proto",
    "types/mount.proto",
    "types/platform.proto",
    "services/content/v1/content.proto",
    "services/introspection/v1/introspection.proto",
    "services/namespaces/v1/namespace.proto",
    "services/snapshots/v1/snapshots.proto",
    "services/version/v1/version.proto",
    "services/events/v1/events.proto",
    "services/leases/v1/leases.proto",
    "services/images/v1/images.proto",
    "services/containers/v1/containers.proto",
    "services/diff/v1/diff.proto",
    "events/namespace.proto",
    "events/image.proto",
    "events/container.proto",
    "events/content.proto",
    "events/snapshot.proto",
    "plinth/services/config/v1/config.proto",
    "plinth/services/gc/v1/gc.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    // protox resolves `google/protobuf/*.proto` from its built-in well-known types.
    let file_descriptor_set = protox::compile(PROTO_FILES, [&proto_root])?;

    write_descriptor_set(&out_dir, &file_descriptor_set)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(file_descriptor_set)?;
    Ok(())
}

/// Writes the encoded descriptor set for `FILE_DESCRIPTOR_SET` in the library.
fn write_descriptor_set(
    out_dir: &Path,
    file_descriptor_set: &prost_types::FileDescriptorSet,
) -> std::io::Result<()> {
    use prost::Message as _;
    std::fs::write(
        out_dir.join("file_descriptor_set.bin"),
        file_descriptor_set.encode_to_vec(),
    )
}
