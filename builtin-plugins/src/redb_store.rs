//! Opening a redb database the way every storage plugin here does: create or open it, refuse
//! one written by a newer schema, record the schema version of a new one.

use std::path::Path;

use redb::{Database, ReadableTable as _, TableDefinition, WriteTransaction};

use crate::error::Error;

/// The table every database keeps its `"schema_version"` in.
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// A redb error as ours.
pub(crate) fn storage(error: impl std::fmt::Display) -> Error {
    Error::internal(format!("database: {error}"))
}

/// Opens (or creates) the database at `path`, checks its schema version against
/// `schema_version`, and lets `create_tables` open every table so they exist, all in one
/// transaction.
///
/// # Errors
/// Unavailable when the file cannot be opened (e.g. another process holds it); failed
/// precondition when a newer schema wrote it.
pub(crate) fn open_versioned(
    path: &Path,
    schema_version: u64,
    create_tables: impl FnOnce(&WriteTransaction) -> Result<(), Error>,
) -> Result<Database, Error> {
    let db = Database::create(path)
        .map_err(|e| Error::unavailable(format!("opening {}: {e}", path.display())))?;
    let mut txn = db.begin_write().map_err(storage)?;
    // Creating tables and recording the version need no fsync of their own: if the process
    // dies before the next durable commit, the next start does this again. This keeps an
    // fsync off every plugin's start-up.
    txn.set_durability(redb::Durability::None);
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        let found = meta
            .get("schema_version")
            .map_err(storage)?
            .map(|v| v.value());
        match found {
            None => {
                meta.insert("schema_version", schema_version)
                    .map_err(storage)?;
            }
            Some(version) if version > schema_version => {
                return Err(Error::failed_precondition(format!(
                    "{} has schema version {version}, newer than this build's {schema_version}: use a newer plinthd",
                    path.display()
                )));
            }
            Some(_) => {}
        }
    }
    create_tables(&txn)?;
    txn.commit().map_err(storage)?;
    Ok(db)
}
