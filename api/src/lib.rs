//! containerd's gRPC wire API, for Plinth's daemon and clients.
//!
//! The `.proto` files under `proto/` are written in this project and match containerd's
//! published API on the wire: the same package, service, method and message names, the same
//! field numbers and types, the same streaming. `build.rs` compiles them with `protox` (pure
//! Rust, so no system `protoc` is needed) and generates [prost] messages and [tonic] clients
//! and servers.
//!
//! Modules mirror the proto packages:
//!
//! | proto package | module |
//! |---|---|
//! | `containerd.services.introspection.v1` | [`containerd::services::introspection::v1`] |
//! | `containerd.services.version.v1` | [`containerd::services::version::v1`] |
//! | `containerd.services.namespaces.v1` | [`containerd::services::namespaces::v1`] |
//! | `containerd.services.content.v1` | [`containerd::services::content::v1`] |
//! | `containerd.services.snapshots.v1` | [`containerd::services::snapshots::v1`] |
//! | `containerd.types` | [`containerd::types`] |
//! | `plinth.services.config.v1` (plinthd's own: live reloads) | [`plinth::services::config::v1`] |
//! | `google.rpc` | [`google::rpc`] |
//! | `google.protobuf` | [`prost_types`] (also as [`google::protobuf`]; `Empty` is `()`) |
//!
//! Each service module holds the messages, a `<service>_client` module with a tonic client
//! and a `<service>_server` module with the server trait and its tower service.
//!
//! The generated code compiles under the workspace lints with no `allow`: tonic marks its
//! own modules, and every message, field, enum value, service and method in the protos has a
//! plain comment that becomes its doc comment. Keep it so when editing a `.proto` file (plain
//! text: no brackets or HTML, which rustdoc would read as links or tags), and keep field
//! numbers and types identical to containerd's; `tests/api.rs` checks the key ones.
//!
//! ```
//! use plinth_api::containerd::services::version::v1::VersionResponse;
//! use prost::Message as _;
//!
//! let response = VersionResponse { version: "v2.0.0".into(), revision: "abc".into() };
//! let bytes = response.encode_to_vec();
//! assert_eq!(VersionResponse::decode(bytes.as_slice()).unwrap(), response);
//! ```

/// The encoded `google.protobuf.FileDescriptorSet` of every proto file in this crate,
/// including the well-known types they import, with source info; for gRPC reflection and
/// for tests.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// Includes the file prost and tonic generated for one proto package.
macro_rules! include_generated {
    ($package:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
    };
}

/// Packages under `containerd`.
pub mod containerd {
    /// Messages shared by containerd services (`containerd.types`).
    pub mod types {
        include_generated!("containerd.types");
    }

    /// containerd's gRPC services (`containerd.services.*`).
    pub mod services {
        /// The introspection service (`containerd.services.introspection`).
        pub mod introspection {
            /// Version 1 (`containerd.services.introspection.v1`).
            pub mod v1 {
                include_generated!("containerd.services.introspection.v1");
            }
        }

        /// The version service (`containerd.services.version`).
        pub mod version {
            /// Version 1 (`containerd.services.version.v1`).
            pub mod v1 {
                include_generated!("containerd.services.version.v1");
            }
        }

        /// The namespaces service (`containerd.services.namespaces`).
        pub mod namespaces {
            /// Version 1 (`containerd.services.namespaces.v1`).
            pub mod v1 {
                include_generated!("containerd.services.namespaces.v1");
            }
        }

        /// The content service (`containerd.services.content`).
        pub mod content {
            /// Version 1 (`containerd.services.content.v1`).
            pub mod v1 {
                include_generated!("containerd.services.content.v1");
            }
        }

        /// The snapshots service (`containerd.services.snapshots`).
        pub mod snapshots {
            /// Version 1 (`containerd.services.snapshots.v1`).
            pub mod v1 {
                include_generated!("containerd.services.snapshots.v1");
            }
        }
    }
}

/// Plinth's own services, beyond containerd's API (`plinth.*`).
pub mod plinth {
    /// Plinth's services (`plinth.services.*`).
    pub mod services {
        /// The config service (`plinth.services.config`): live reloads.
        pub mod config {
            /// Version 1 (`plinth.services.config.v1`).
            pub mod v1 {
                include_generated!("plinth.services.config.v1");
            }
        }
    }
}

/// Google's shared protobuf packages.
pub mod google {
    /// The gRPC error model (`google.rpc`).
    pub mod rpc {
        include_generated!("google.rpc");
    }

    /// The well-known types (`google.protobuf`), provided by `prost-types`.
    ///
    /// `google.protobuf.Empty` maps to `()` in generated code.
    pub use prost_types as protobuf;
}

pub use prost;
pub use prost_types;
pub use tonic;
