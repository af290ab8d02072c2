//! The snapshotter interface (containerd's `snapshots.Snapshotter`): active, view and
//! committed snapshots in parent chains, returned as mounts. Implemented by the native and
//! overlayfs snapshotters, the metadata layer (per namespace) and, later, proxies; every
//! implementation runs the conformance suite in `testsuite` (feature `testsuite`).

use std::time::SystemTime;

use crate::error::Error;
use crate::namespaces::Labels;
use crate::removal::Freeing;

#[cfg(feature = "snapshotter-native")]
pub mod native;
#[cfg(feature = "snapshotter-overlayfs")]
pub mod overlayfs;
#[cfg(any(feature = "snapshotter-native", feature = "snapshotter-overlayfs"))]
mod storage;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

/// The longest snapshot key accepted.
pub const MAX_KEY_LENGTH: usize = 4096;

/// Checks a snapshot key or name: not empty, at most [`MAX_KEY_LENGTH`] bytes, no control
/// characters. Snapshotters never build paths from keys (they use numeric ids).
///
/// # Errors
/// Invalid argument naming the rule.
pub fn validate_key(what: &str, key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if key.len() > MAX_KEY_LENGTH {
        return Err(Error::invalid(format!(
            "{what} is {} bytes long: at most {MAX_KEY_LENGTH}",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{what} {key:?} contains a control character"
        )));
    }
    Ok(())
}

/// The kind of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Read-only view of a parent; cannot be committed.
    View,
    /// Writable; can be committed.
    Active,
    /// Immutable; can be a parent.
    Committed,
}

impl Kind {
    /// containerd's name: `view`, `active`, `committed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// What a snapshotter knows of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Its kind.
    pub kind: Kind,
    /// Its key (active, view) or name (committed).
    pub name: String,
    /// Its parent's name, or empty.
    pub parent: String,
    /// Its labels.
    pub labels: Labels,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it was last changed (equal to `created_at` for a new snapshot).
    pub updated_at: SystemTime,
}

/// Disk usage of a snapshot's own layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes.
    pub size: i64,
    /// Inodes.
    pub inodes: i64,
}

/// One mount, as `mount(8)` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `bind`, `overlay`, …
    pub mount_type: String,
    /// The source.
    pub source: String,
    /// The target, usually empty (the caller chooses).
    pub target: String,
    /// Options, e.g. `rbind`, `ro`, `lowerdir=…`.
    pub options: Vec<String>,
}

/// A snapshotter (containerd's snapshots.Snapshotter).
#[tonic::async_trait]
pub trait Snapshotter: Send + Sync {
    /// The info of a snapshot.
    ///
    /// # Errors
    /// Not found.
    async fn stat(&self, key: &str) -> Result<Info, Error>;

    /// Changes labels: `fieldpaths` as for content (`labels`, `labels.<key>`; empty: all).
    ///
    /// # Errors
    /// Not found; invalid argument for another field path.
    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error>;

    /// Disk usage of the snapshot's own layer.
    ///
    /// # Errors
    /// Not found.
    async fn usage(&self, key: &str) -> Result<Usage, Error>;

    /// The mounts of an active snapshot or a view.
    ///
    /// # Errors
    /// Not found; failed precondition for a committed snapshot.
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error>;

    /// Creates an active snapshot on `parent` (a committed snapshot, or empty).
    ///
    /// # Errors
    /// Already exists; not found for a missing parent; failed precondition for a parent that
    /// is not committed.
    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error>;

    /// Creates a read-only view of `parent`.
    ///
    /// # Errors
    /// As [`Snapshotter::prepare`].
    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error>;

    /// Commits the active snapshot `key` as `name`; `key` is gone afterwards.
    ///
    /// # Errors
    /// Not found; failed precondition when `key` is not active; already exists for `name`.
    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), Error>;

    /// Removes a snapshot.
    ///
    /// # Errors
    /// Not found; failed precondition when it has children.
    async fn remove(&self, key: &str) -> Result<(), Error>;

    /// Removes several snapshots in the order given (a child may come before its parent),
    /// one result per key: each fails alone as [`Snapshotter::remove`] would. The default
    /// removes them one at a time; a backend that keeps its own records durably removes
    /// them in one transaction, so that a collection pays one sync per batch, not one per
    /// snapshot.
    async fn remove_many(&self, keys: &[String]) -> Vec<Result<(), Error>> {
        let mut results = Vec::with_capacity(keys.len());
        for key in keys {
            results.push(self.remove(key).await);
        }
        results
    }

    /// [`Snapshotter::remove_many`], answering once the snapshots are gone from the
    /// backend's records, with the [`Freeing`] of their directories, which goes on behind the
    /// answer (a backend never reuses a removed snapshot's directory). A garbage collection
    /// removes its next batch while the last one's directories are being freed. The default
    /// removes everything before answering.
    async fn detach_many(&self, keys: &[String]) -> (Vec<Result<(), Error>>, Freeing) {
        (self.remove_many(keys).await, Freeing::done())
    }

    /// Every snapshot matching any filter (containerd's syntax over `kind`, `name`,
    /// `parent`, `labels.<key>`), sorted by name.
    ///
    /// # Errors
    /// Invalid argument for a filter that does not parse.
    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error>;

    /// Removes directories no snapshot owns any more (left by crashes or removals).
    ///
    /// # Errors
    /// Storage failure.
    async fn cleanup(&self) -> Result<(), Error>;
}
