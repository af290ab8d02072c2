//! The redb tables of the metadata plugin, in one place, and the schema version.
//!
//! Times are nanoseconds since the Unix epoch. Every record is keyed by namespace first, so
//! a namespace's records are one key range.

use redb::TableDefinition;

/// The schema this code writes. Bump it, and add a migration in `Metadata::open`, when a
/// table changes shape.
///
/// 1: namespaces, content and snapshot records. 2: images, containers, leases and lease
/// resources (new tables only: a version 1 file is upgraded by creating them).
pub(crate) const SCHEMA_VERSION: u64 = 2;

/// Counters, e.g. `"snapshot"` → the last number used in a backend snapshot key.
pub(crate) const SEQUENCES: TableDefinition<'_, &str, u64> = TableDefinition::new("sequences");

/// namespace → creation time.
pub(crate) const NAMESPACES: TableDefinition<'_, &str, u64> = TableDefinition::new("namespaces");

/// (namespace, key) → value.
pub(crate) const NAMESPACE_LABELS: TableDefinition<'_, (&str, &str), &str> =
    TableDefinition::new("namespace_labels");

/// (namespace, digest) → (size, created, updated): the blobs a namespace holds.
pub(crate) const CONTENT: TableDefinition<'_, (&str, &str), (u64, u64, u64)> =
    TableDefinition::new("content");

/// (namespace, digest, label key) → label value.
pub(crate) const CONTENT_LABELS: TableDefinition<'_, (&str, &str, &str), &str> =
    TableDefinition::new("content_labels");

/// A snapshot record's key: (namespace, snapshotter, key).
pub(crate) type SnapshotKey = (&'static str, &'static str, &'static str);

/// A snapshot record: (kind, parent key, backend key, created, updated).
pub(crate) type SnapshotValue = (u8, &'static str, &'static str, u64, u64);

/// The snapshot records.
pub(crate) const SNAPSHOTS: TableDefinition<'static, SnapshotKey, SnapshotValue> =
    TableDefinition::new("snapshots");

/// A snapshot label's key: (namespace, snapshotter, key, label key).
pub(crate) type SnapshotLabelKey = (&'static str, &'static str, &'static str, &'static str);

/// Snapshot labels: key → label value.
pub(crate) const SNAPSHOT_LABELS: TableDefinition<'static, SnapshotLabelKey, &str> =
    TableDefinition::new("snapshot_labels");

/// (namespace, name) → an encoded [`super::records::ImageRecord`].
pub(crate) const IMAGES: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("images");

/// (namespace, id) → an encoded [`super::records::ContainerRecord`].
pub(crate) const CONTAINERS: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("containers");

/// (namespace, id) → an encoded [`super::records::LeaseRecord`].
pub(crate) const LEASES: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("leases");

/// A lease resource's key: (namespace, lease, kind, id).
pub(crate) type LeaseResourceKey = (&'static str, &'static str, &'static str, &'static str);

/// What each lease holds: key → nothing.
pub(crate) const LEASE_RESOURCES: TableDefinition<'static, LeaseResourceKey, ()> =
    TableDefinition::new("lease_resources");
