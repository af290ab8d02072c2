//! The redb tables of the metadata plugin, in one place, and the schema version.

use redb::TableDefinition;

/// The schema this code writes. Bump it, and add a migration in `metadata::migrate`, when a
/// table changes shape.
pub(crate) const SCHEMA_VERSION: u64 = 1;

/// `"schema_version"` → version.
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// namespace → creation time (nanoseconds since the Unix epoch).
pub(crate) const NAMESPACES: TableDefinition<'_, &str, u64> = TableDefinition::new("namespaces");

/// (namespace, key) → value.
pub(crate) const NAMESPACE_LABELS: TableDefinition<'_, (&str, &str), &str> =
    TableDefinition::new("namespace_labels");

/// A table keyed by (namespace, name) holding encoded records.
pub(crate) type NamespacedTable =
    TableDefinition<'static, (&'static str, &'static str), &'static [u8]>;

/// Tables whose keys start with a namespace, with what they hold; a namespace with a key in
/// any of them is not empty and cannot be deleted.
pub(crate) const NAMESPACED: &[(&str, NamespacedTable)] = &[
    ("content", TableDefinition::new("content")),
    ("snapshots", TableDefinition::new("snapshots")),
];
