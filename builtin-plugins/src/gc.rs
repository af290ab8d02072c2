//! Garbage collection: the interface between the store that can be collected (the metadata
//! plugin, a [`Collector`]) and what decides when to collect (`io.containerd.gc.v1.scheduler`,
//! a [`Scheduler`]), and the label names that decide what is reachable.
//!
//! The rules are containerd's (1.6): per namespace, every image (its target), every container
//! (its snapshot), every lease that has not expired (with its resources), every blob or
//! snapshot labelled [`LABEL_ROOT`] and every ingest are roots; references are followed from
//! labels ([`LABEL_REF_CONTENT`], [`LABEL_REF_SNAPSHOT`]) and from a snapshot to its parent.
//! A lease labelled [`LABEL_FLAT`] holds its resources but not what their labels refer to.
//! Whatever no root reaches is removed: its record, then (outside any transaction) the blob
//! or backend snapshot once no record refers to it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::Error;

/// A blob or snapshot with this label (any value) is a root.
pub const LABEL_ROOT: &str = "containerd.io/gc.root";
/// `containerd.io/gc.ref.content`, alone or followed by `.` or `/` and any name: the value is
/// a digest in the same namespace that the labelled object keeps.
pub const LABEL_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// `containerd.io/gc.ref.snapshot.<snapshotter>` (anything after a further `/` is a name and
/// ignored): the value is a snapshot key in that snapshotter, in the same namespace.
pub const LABEL_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// On a lease: an RFC 3339 time after which the lease is no root and is itself removed. A
/// value that does not parse is ignored (the lease stays a root), as in containerd.
pub const LABEL_EXPIRE: &str = "containerd.io/gc.expire";
/// On a lease (any value): its resources are kept, but not what their labels refer to.
pub const LABEL_FLAT: &str = "containerd.io/gc.flat";

static SERVED_RAW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says that this process serves its content store and snapshotters raw to other daemons
/// (`io.containerd.internal.v1.proxy-target` with an address): blobs and snapshots there may
/// belong to another daemon's metadata, so from then on a collection removes from the
/// backends only what its own sweep removed records of, never what it finds without a
/// record (leftovers of a crash between a backend's commit and the record then stay).
pub fn set_served_raw() {
    SERVED_RAW.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether [`set_served_raw`] was called.
pub fn served_raw() -> bool {
    SERVED_RAW.load(std::sync::atomic::Ordering::SeqCst)
}

/// What one collection removed, and how long its phases took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blob records removed (one per namespace that held the blob).
    pub content: u64,
    /// Snapshot records removed.
    pub snapshots: u64,
    /// Expired leases removed.
    pub leases: u64,
    /// Blobs deleted from the content store (no namespace held them any more).
    pub blobs: u64,
    /// Snapshots removed from the snapshotters.
    pub backend_snapshots: u64,
    /// Marking (reading the database in one read transaction).
    pub mark: Duration,
    /// The write transaction that removed the records: writers of the database wait for it.
    pub sweep: Duration,
    /// Removing blobs and backend snapshots, outside any transaction.
    pub backend: Duration,
    /// How long removing blobs took (side by side with snapshots, within `backend`).
    pub blob_removal: Duration,
    /// How long removing backend snapshots took, their snapshotters' cleanup included (side
    /// by side with blobs, within `backend`).
    pub snapshot_removal: Duration,
    /// Whether writes landed between the mark and the sweep, so that the sweep checked again,
    /// inside its write transaction, what they could have made reachable.
    pub remarked: bool,
    /// The earliest `containerd.io/gc.expire` of a lease still live after the collection:
    /// a scheduler collects again then.
    pub next_expiry: Option<SystemTime>,
}

impl Stats {
    /// The whole collection: mark, sweep and backend removal.
    pub fn elapsed(&self) -> Duration {
        self.mark + self.sweep + self.backend
    }

    /// Records removed, of every kind.
    pub fn records(&self) -> u64 {
        self.content + self.snapshots + self.leases
    }
}

/// A committed change to the collectable store, as a scheduler hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mutation {
    /// The change removed something (an image, container, lease, lease resource, blob or
    /// snapshot), so a collection may find garbage.
    pub dirty: bool,
    /// The change created or relabelled a lease expiring at this time.
    pub expiry: Option<SystemTime>,
}

/// Called after each committed change, on the thread that committed it: keep it short.
pub type MutationCallback = Arc<dyn Fn(Mutation) + Send + Sync>;

/// A store that can be collected: the metadata plugin.
#[tonic::async_trait]
pub trait Collector: Send + Sync {
    /// Runs one collection now: mark, sweep, backend removal. Collections never overlap
    /// (a second call waits for the first).
    ///
    /// # Errors
    /// The database failed (nothing was removed), or a backend refused a removal (the
    /// records are gone; the next collection tries the backend again).
    async fn collect(&self) -> Result<Stats, Error>;

    /// Registers `callback` for every later committed change.
    fn on_mutation(&self, callback: MutationCallback);
}

/// The last collection a scheduler ran, for `plugins ls -d` and plinthctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// When it finished.
    pub finished: SystemTime,
    /// What it removed and how long it took, or why it failed.
    pub result: Result<Stats, String>,
}

/// What decides when to collect: `io.containerd.gc.v1.scheduler`.
#[tonic::async_trait]
pub trait Scheduler: Send + Sync {
    /// Asks for a collection now and waits for one that starts after this call (the images
    /// and leases services' synchronous deletes, and `plinthctl gc`).
    ///
    /// # Errors
    /// The collection failed; the message says why.
    async fn schedule_and_wait(&self) -> Result<Stats, Error>;

    /// The last collection, if any has run.
    fn last(&self) -> Option<Run>;
}

/// The URI of containerd's (and plinthd's) GC scheduler plugin, named in errors.
pub const SCHEDULER_URI: &str = "io.containerd.gc.v1.scheduler";

/// The scheduler a synchronous delete of `what` (e.g. `image "x"`) waits for: checked before
/// the delete, so that a delete that cannot be synchronous changes nothing.
///
/// # Errors
/// FailedPrecondition when no scheduler is loaded, saying how to load one.
#[cfg(any(feature = "images-service", feature = "leases-service"))]
pub(crate) fn scheduler_for_sync(
    scheduler: Option<&Arc<dyn Scheduler>>,
    what: &str,
) -> Result<Arc<dyn Scheduler>, Error> {
    scheduler.cloned().ok_or_else(|| {
        Error::failed_precondition(format!(
            "deleting {what} with sync waits for a garbage collection, and no GC scheduler is loaded: \
             build plinthd with the gc-scheduler feature (on by default) and do not disable \
             {SCHEDULER_URI} (`plinthctl plugins ls` shows why it is not ok), or delete without sync"
        ))
    })
}

/// Waits, after `what` was deleted, for a collection that includes the delete.
///
/// # Errors
/// The collection failed: the error says that the delete itself is done.
#[cfg(any(feature = "images-service", feature = "leases-service"))]
pub(crate) async fn wait_after_delete(scheduler: &dyn Scheduler, what: &str) -> Result<(), Error> {
    scheduler
        .schedule_and_wait()
        .await
        .map(|_| ())
        .map_err(|error| {
            Error::new(
                error.category,
                format!(
                    "{what} was deleted, but the collection a sync delete waits for failed: {}",
                    error.message
                ),
            )
        })
}
