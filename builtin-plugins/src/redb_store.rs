//! Opening a redb database the way every storage plugin here does: create or open it, refuse
//! one written by a newer schema, record the schema version of a new one.
//!
//! [`Db::open`] opens an existing database at once, so a locked file or a newer schema fails
//! the plugin's init. A database that does not exist yet is created by its first use instead:
//! creating one costs 5–10 ms of CPU (redb lays out its allocator state and fsyncs it), and
//! three of them were most of a daemon's first start on an empty root — while a plugin that
//! is never used (a second snapshotter, say) never needs its file. A creation that failed is
//! that use's error, every later use's, and the plugin's live status.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use redb::{Database, ReadTransaction, ReadableTable as _, TableDefinition, WriteTransaction};

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
fn open_versioned(
    path: &Path,
    schema_version: u64,
    create_tables: fn(&WriteTransaction) -> Result<(), Error>,
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

/// A redb database, open, or created by its first use (see the module docs).
pub(crate) struct Db {
    path: PathBuf,
    schema_version: u64,
    create_tables: fn(&WriteTransaction) -> Result<(), Error>,
    ready: OnceLock<Result<Database, Error>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .field("open", &self.ready.get().is_some())
            .finish()
    }
}

impl Db {
    /// Opens the database at `path` now if the file has content; otherwise leaves its
    /// creation to the first use. Either way `create_tables` opens every table once, in the
    /// transaction that checks the schema version (see [`open_versioned`]).
    ///
    /// # Errors
    /// Opening an existing file failed: another process holds it, or a newer schema wrote it.
    pub(crate) fn open(
        path: &Path,
        schema_version: u64,
        create_tables: fn(&WriteTransaction) -> Result<(), Error>,
    ) -> Result<Db, Error> {
        let db = Db {
            path: path.to_path_buf(),
            schema_version,
            create_tables,
            ready: OnceLock::new(),
        };
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            let _ = db
                .ready
                .set(Ok(open_versioned(path, schema_version, create_tables)?));
        }
        Ok(db)
    }

    /// The database; the first call creates it (concurrent first calls wait for that one).
    fn get(&self) -> Result<&Database, Error> {
        self.ready
            .get_or_init(|| {
                tracing::debug!(path = %self.path.display(), "creating database on first use");
                open_versioned(&self.path, self.schema_version, self.create_tables)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A read transaction.
    ///
    /// # Errors
    /// The database could not be created, or redb refused.
    pub(crate) fn begin_read(&self) -> Result<ReadTransaction, Error> {
        self.get()?.begin_read().map_err(storage)
    }

    /// A write transaction (durable on commit).
    ///
    /// # Errors
    /// The database could not be created, or redb refused.
    pub(crate) fn begin_write(&self) -> Result<WriteTransaction, Error> {
        self.get()?.begin_write().map_err(storage)
    }

    /// Why the database cannot be used, without creating it: `None` while it is open or not
    /// created yet, the creation's error once one failed.
    pub(crate) fn failure(&self) -> Option<String> {
        match self.ready.get() {
            Some(Err(error)) => Some(error.message.clone()),
            _ => None,
        }
    }
}

/// The live status of a plugin whose one database is `db`.
pub(crate) fn db_failure(db: &Db) -> Option<String> {
    db.failure()
        .map(|reason| format!("database unusable: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: TableDefinition<'_, &str, u64> = TableDefinition::new("t");

    fn tables(txn: &WriteTransaction) -> Result<(), Error> {
        txn.open_table(TABLE).map_err(storage)?;
        Ok(())
    }

    fn write(db: &Db, key: &str, value: u64) {
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert(key, value).unwrap();
        txn.commit().unwrap();
    }

    fn read(db: &Db, key: &str) -> Option<u64> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        table.get(key).unwrap().map(|v| v.value())
    }

    #[test]
    fn a_new_database_is_created_aside_and_an_existing_one_opened_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let db = Db::open(&path, 1, tables).unwrap();
        assert!(
            db.ready.get().is_none(),
            "a new file is created on the side"
        );
        write(&db, "k", 7);
        assert_eq!(db.failure(), None);
        drop(db);
        let db = Db::open(&path, 1, tables).unwrap();
        assert!(
            db.ready.get().is_some(),
            "an existing file is opened in open"
        );
        assert_eq!(read(&db, "k"), Some(7));
    }

    #[test]
    fn an_existing_database_fails_open_when_held_or_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let first = Db::open(&path, 2, tables).unwrap();
        write(&first, "k", 1);
        let held = Db::open(&path, 2, tables).unwrap_err();
        assert_eq!(held.category, plinth_core::Category::Unavailable, "{held}");
        assert!(held.message.contains(&path.display().to_string()), "{held}");
        drop(first);
        let newer = Db::open(&path, 1, tables).unwrap_err();
        assert!(
            newer.message.contains("newer than this build's 1"),
            "{newer}"
        );
    }

    #[test]
    fn a_failed_creation_is_every_use_s_error_and_the_live_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/x.db");
        let db = Db::open(&path, 1, tables).unwrap();
        assert_eq!(db_failure(&db), None, "nothing tried yet");
        let error = db.begin_read().unwrap_err();
        assert!(
            error
                .message
                .contains(&format!("opening {}", path.display())),
            "{error}"
        );
        assert_eq!(
            db.begin_write().err(),
            Some(error),
            "the same error every time"
        );
        let live = db_failure(&db).expect("a failure to report");
        assert!(live.starts_with("database unusable: opening "), "{live}");
    }
}
