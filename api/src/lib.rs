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
//! | `containerd.services.events.v1` | [`containerd::services::events::v1`] |
//! | `containerd.services.leases.v1` | [`containerd::services::leases::v1`] |
//! | `containerd.services.images.v1` (also the image events) | [`containerd::services::images::v1`] |
//! | `containerd.services.containers.v1` | [`containerd::services::containers::v1`] |
//! | `containerd.events` (event payloads) | [`containerd::events`] |
//! | `containerd.types` | [`containerd::types`] |
//! | `plinth.services.config.v1` (plinthd's own: live reloads) | [`plinth::services::config::v1`] |
//! | `plinth.services.gc.v1` (plinthd's own: a garbage collection on demand) | [`plinth::services::gc::v1`] |
//! | `google.rpc` | [`google::rpc`] |
//! | `google.protobuf` | [`prost_types`] (also as [`google::protobuf`]; `Empty` is `()`) |
//!
//! Each service module holds the messages, a `<service>_client` module with a tonic client
//! and a `<service>_server` module with the server trait and its tower service.
//!
//! The events, leases, images and containers services and the event payloads follow
//! containerd 1.6 (v1.6.39); the others follow containerd's current API. Event
//! payloads travel in `Envelope.event` as a `google.protobuf.Any`; [`event_type_url`] gives
//! the type URL containerd uses for them.
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

        /// The events service (`containerd.services.events`).
        pub mod events {
            /// Version 1 (`containerd.services.events.v1`).
            pub mod v1 {
                include_generated!("containerd.services.events.v1");
            }
        }

        /// The leases service (`containerd.services.leases`).
        pub mod leases {
            /// Version 1 (`containerd.services.leases.v1`).
            pub mod v1 {
                include_generated!("containerd.services.leases.v1");
            }
        }

        /// The diff service (`containerd.services.diff`).
        pub mod diff {
            /// Version 1 (`containerd.services.diff.v1`).
            pub mod v1 {
                include_generated!("containerd.services.diff.v1");
            }
        }

        /// The images service (`containerd.services.images`).
        pub mod images {
            /// Version 1 (`containerd.services.images.v1`), with the image event payloads
            /// (`ImageCreate`, `ImageUpdate`, `ImageDelete`), which containerd declares in
            /// this package rather than in `containerd.events`.
            pub mod v1 {
                include_generated!("containerd.services.images.v1");
            }
        }

        /// The containers service (`containerd.services.containers`).
        pub mod containers {
            /// Version 1 (`containerd.services.containers.v1`).
            pub mod v1 {
                include_generated!("containerd.services.containers.v1");
            }
        }
    }

    /// Event payloads (`containerd.events`): what the daemon publishes when namespaces,
    /// containers, content and snapshots change.
    ///
    /// The image events are declared in `containerd.services.images.v1` and re-exported
    /// here; their type URLs name that package (see [`event_type_url`](crate::event_type_url)).
    pub mod events {
        include_generated!("containerd.events");

        pub use super::services::images::v1::{ImageCreate, ImageDelete, ImageUpdate};
    }
}

/// The type URL containerd puts in `Envelope.event` (and expects there) for an event
/// message, given the message's full proto name: the name itself, with no
/// `type.googleapis.com/` prefix. A leading dot, as in descriptor type names, is dropped.
///
/// containerd 1.6 (v1.6.39) publishes with `typeurl.MarshalAny` from
/// `github.com/containerd/typeurl` v1.0.2 (`events/exchange/exchange.go` line 97). For a
/// protobuf message that no one registered with `typeurl.Register` (no event is), `TypeURL`
/// falls back to gogo's `proto.MessageName` (`vendor/github.com/containerd/typeurl/types.go`
/// line 77), which returns the name the message registered with `proto.RegisterType`
/// (`vendor/github.com/gogo/protobuf/proto/properties.go` line 585), and `MarshalAny` puts it
/// in `TypeUrl` unchanged (`types.go` line 121). The registered names are the full proto
/// names: `containerd.events.ContainerCreate` (`api/events/container.pb.go` line 193) but
/// `containerd.services.images.v1.ImageCreate` (`api/events/image.pb.go` line 148), as
/// `api/events/image.proto` declares that package. `ctr events` decodes by the same name
/// (`cmd/ctr/commands/events/events.go` line 56, `typeurl.UnmarshalAny`) and skips an event
/// whose name it does not know. An event a client sends through `Publish` arrives as an
/// `Any` already, and `MarshalAny` passes it on as is (`types.go` lines 100 and 101).
///
/// ```
/// use plinth_api::event_type_url;
///
/// assert_eq!(event_type_url("containerd.events.ContainerCreate"), "containerd.events.ContainerCreate");
/// assert_eq!(
///     event_type_url(".containerd.services.images.v1.ImageCreate"),
///     "containerd.services.images.v1.ImageCreate",
/// );
/// ```
pub fn event_type_url(message_full_name: &str) -> String {
    message_full_name
        .strip_prefix('.')
        .unwrap_or(message_full_name)
        .to_owned()
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

        /// The GC service (`plinth.services.gc`): a garbage collection on demand.
        pub mod gc {
            /// Version 1 (`plinth.services.gc.v1`).
            pub mod v1 {
                include_generated!("plinth.services.gc.v1");
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
