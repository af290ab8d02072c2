//! The walking differ (`io.containerd.differ.v1.walking`, feature `differ-walking`): layers
//! as containerd's walking differ applies and makes them.
//!
//! - [`apply`]: a layer (tar, `+gzip`, `+zstd`, OCI or Docker media types) unpacked onto a
//!   directory, in a stream, with OCI whiteouts in the native form (deleted from a full copy
//!   of the parent) or the overlay form (a 0/0 character device, `trusted.overlay.opaque`),
//!   verified against the compressed digest and the diff id, and never writing outside the
//!   directory.
//!
//! Layers here follow the OCI image spec's layer format.

pub mod apply;
