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

/// Tables whose keys start with a namespace; a namespace with a key in any of them is not
/// empty and cannot be deleted. Content and snapshot records join this list.
pub(crate) const NAMESPACED: &[(&str, TableDefinition<'_, (&str, &str), &[u8]>)] = &[
    ("content", TableDefinition::new("content")),
    ("snapshots", TableDefinition::new("snapshots")),
];
