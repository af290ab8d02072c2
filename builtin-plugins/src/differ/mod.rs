//! The walking differ (`io.containerd.differ.v1.walking`, feature `differ-walking`): layers
//! as containerd's walking differ makes and applies them.
//!
//! - [`compare`]: two directory trees (or two sets of snapshot mounts) into an OCI layer: a
//!   tar stream of what was added, modified and deleted (OCI whiteouts), compressed as asked,
//!   written into a content store with its `containerd.io/uncompressed` label.
//!
//! Layers here follow the OCI image spec's layer format
//! (`application/vnd.oci.image.layer.v1.tar`, `+gzip`, `+zstd`, and Docker's
//! `application/vnd.docker.image.rootfs.diff.tar.gzip`).

pub mod compare;
