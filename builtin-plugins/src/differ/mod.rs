//! The walking differ (`io.containerd.differ.v1.walking`, feature `differ-walking`): layers
//! as containerd's walking differ applies and makes them.
//!
//! - [`apply`]: a layer (tar, `+gzip`, `+zstd`, OCI or Docker media types) unpacked onto a
//!   directory, in a stream, with OCI whiteouts in the native form (deleted from a full copy
//!   of the parent) or the overlay form (a 0/0 character device, `trusted.overlay.opaque`),
//!   verified against the compressed digest and the diff id, and never writing outside the
//!   directory.
//! - [`compare`]: two directory trees (or two sets of snapshot mounts) into an OCI layer: a
//!   tar stream of what was added, modified and deleted (OCI whiteouts), compressed as asked,
//!   written into a content store with its `containerd.io/uncompressed` label.
//! - [`plugin`]: the plugin, both over the metadata plugin's namespaced stores, behind the
//!   [`Differ`](plugin::Differ) interface that `io.containerd.grpc.v1.diff` serves.
//!
//! The property test `roundtrip_tests.rs` ties the two together: for random trees and random
//! changes, comparing and then applying (onto a copy, or as a mounted overlay upper directory)
//! reproduces the changed tree exactly.
//!
//! Layers here follow the OCI image spec's layer format
//! (`application/vnd.oci.image.layer.v1.tar`, `+gzip`, `+zstd`, and Docker's
//! `application/vnd.docker.image.rootfs.diff.tar.gzip`).

pub mod apply;
pub mod compare;
pub mod plugin;
#[cfg(test)]
mod roundtrip_tests;
