//! Plugin type constants, in one place, as containerd names them.

/// Content stores.
pub const CONTENT: &str = "io.containerd.content.v1";
/// Metadata stores.
pub const METADATA: &str = "io.containerd.metadata.v1";
/// Snapshotters.
pub const SNAPSHOTTER: &str = "io.containerd.snapshotter.v1";
/// gRPC services served by the daemon.
pub const GRPC: &str = "io.containerd.grpc.v1";
/// Services used by the gRPC services.
pub const SERVICE: &str = "io.containerd.service.v1";
/// Internal plugins.
pub const INTERNAL: &str = "io.containerd.internal.v1";
/// Event plugins.
pub const EVENT: &str = "io.containerd.event.v1";
/// Lease managers.
pub const LEASE: &str = "io.containerd.lease.v1";
/// Garbage collectors.
pub const GC: &str = "io.containerd.gc.v1";
/// Differs.
pub const DIFF: &str = "io.containerd.differ.v1";
/// Transfer services.
pub const TRANSFER: &str = "io.containerd.transfer.v1";
