//! Plinth's built-in plugins: the interfaces plugins share and one module (and one Cargo
//! feature) per plugin. A binary carries a plugin by enabling its feature and calling
//! [`link`], which makes sure this crate is linked so that its registrations are found.
//!
//! # Feature flags
//!
//! | feature | default | plugin |
//! |---|---|---|
//! | `introspection` | yes | `io.containerd.grpc.v1.introspection`: plugin list, server identity |
//! | `version` | yes | `io.containerd.grpc.v1.version` |
//! | `namespaces` | yes | `io.containerd.grpc.v1.namespaces` (needs a metadata plugin) |
//! | `metadata-redb` | yes | `io.containerd.metadata.v1.redb`: namespaces in a redb database |

pub mod error;
pub mod filters;
pub mod grpc;
pub mod namespaces;

#[cfg(feature = "introspection")]
pub mod introspection;
#[cfg(feature = "metadata-redb")]
pub mod metadata;
#[cfg(feature = "namespaces")]
mod namespaces_service;
#[cfg(feature = "version")]
pub mod version;

pub use crate::error::Error;

/// The plugin features this build of the crate was compiled with, by name.
pub const FEATURES: &[(&str, bool)] = &[
    ("introspection", cfg!(feature = "introspection")),
    ("version", cfg!(feature = "version")),
    ("namespaces", cfg!(feature = "namespaces")),
    ("metadata-redb", cfg!(feature = "metadata-redb")),
];

/// The URIs of the plugins each feature contributes, to tell a user which feature to enable
/// and to check that nothing was lost at link time.
pub const FEATURE_PLUGINS: &[(&str, &str)] = &[
    ("introspection", "io.containerd.grpc.v1.introspection"),
    ("version", "io.containerd.grpc.v1.version"),
    ("namespaces", "io.containerd.grpc.v1.namespaces"),
    ("metadata-redb", "io.containerd.metadata.v1.redb"),
];

/// Call this from the binary so the linker keeps this crate and its registrations.
#[inline(never)]
pub fn link() {
    std::hint::black_box(FEATURES);
}
