//! The differ interface (containerd's `diff.Applier` and `diff.Comparer`), what
//! `io.containerd.grpc.v1.diff` serves and `io.containerd.differ.v1.walking`
//! (module `differ`, feature `differ-walking`) provides; here, outside any feature, so
//! that a build may carry the service with another differ.

use std::time::SystemTime;

use crate::content::Digest;
use crate::error::Error;
use crate::namespaces::Labels;
use crate::snapshots::Mount;

/// A differ: containerd's `diff.Applier` and `diff.Comparer`, per namespace.
#[tonic::async_trait]
pub trait Differ: Send + Sync {
    /// Applies the layer `layer` (a blob of `namespace`'s content store) onto `mounts` (an
    /// active snapshot's); the answer describes the uncompressed layer (its digest is the
    /// diff id). `sync_fs`: the filesystem is synced before the answer.
    ///
    /// # Errors
    /// Not found for a missing blob; unimplemented for a media type or mounts this differ
    /// cannot apply; failed precondition for read-only mounts; data loss when the blob's
    /// bytes do not match its digest; invalid argument for a layer that is not a valid
    /// (compressed) tar stream or holds an entry that cannot be written; resource exhausted
    /// past a limit or on a full disk. After an error the mounts may hold part of the
    /// layer: the caller discards the snapshot.
    async fn apply(
        &self,
        namespace: &str,
        layer: &Descriptor,
        mounts: Vec<Mount>,
        sync_fs: bool,
    ) -> Result<Descriptor, Error>;

    /// Writes what changed from `left` to `right` as a layer into `namespace`'s content
    /// store (bound to `lease` when given), as `request` says.
    ///
    /// # Errors
    /// Unimplemented for an unknown media type; the mounts cannot be mounted or read; the
    /// content store refuses the write.
    async fn compare(
        &self,
        namespace: &str,
        lease: Option<&str>,
        left: Vec<Mount>,
        right: Vec<Mount>,
        request: CompareRequest,
    ) -> Result<Descriptor, Error>;
}

/// How a comparer writes entries; the default is containerd's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteDiffOptions {
    /// Modification times later than this are written as this (containerd's
    /// `SourceDateEpoch`, for reproducible layers). Whiteouts always have time 0.
    pub source_date_epoch: Option<SystemTime>,
    /// Keep the nanoseconds of modification times (in a PAX `mtime` record). Off by default:
    /// containerd truncates times to whole seconds.
    pub sub_second_times: bool,
}

/// A comparison's request, as containerd's Diff service takes it (`DiffRequest` without the
/// mounts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompareRequest {
    /// The layer's media type; empty: tar+gzip, as containerd.
    pub media_type: String,
    /// The ingest ref to write under; empty: a unique one, aborted if the comparison fails.
    /// A given ref is truncated first (containerd's behaviour) and left for a retry on
    /// failure.
    pub reference: String,
    /// Labels for the committed blob; a compressed layer's get `containerd.io/uncompressed` too.
    pub labels: Labels,
    /// How entries are written.
    pub options: WriteDiffOptions,
}

/// An OCI descriptor of a committed layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The layer's media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: i64,
}
