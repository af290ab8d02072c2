//! Opening a redb database the way every storage plugin here does: create or open it, refuse
//! one written by a newer schema, record the schema version of a new one.
//!
//! A database is opened, or created, by its first use, not by the plugin's init: creating one
//! costs 5–10 ms of CPU (redb lays out its allocator state and fsyncs it) and opening one 1–2
//! ms (it reads that state back and fsyncs a header), and three of them were most of a
//! daemon's start-up — while a plugin that is never used (a second snapshotter, say) never
//! needs its file. What init still checks is the one thing a start-up must refuse: a file
//! that another process holds (a second daemon on the same root). Anything else the open
//! finds (a schema newer than this build's, a file redb cannot read) is that use's error,
//! every later use's, and the plugin's live status, so `plugins ls` shows it.

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
    /// The database at `path`, to be opened (or created) by its first use, when
    /// `create_tables` opens every table once, in the transaction that checks the schema
    /// version (see [`open_versioned`]).
    ///
    /// # Errors
    /// The file exists but cannot be opened, or another process holds it.
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
        check_not_held(path)?;
        Ok(db)
    }

    /// The database; the first call opens it (concurrent first calls wait for that one).
    fn get(&self) -> Result<&Database, Error> {
        self.ready
            .get_or_init(|| {
                tracing::debug!(path = %self.path.display(), "opening database on first use");
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

    /// Why the database cannot be used, without opening it: `None` while it is open or not
    /// opened yet, the open's error once one failed.
    pub(crate) fn failure(&self) -> Option<String> {
        match self.ready.get() {
            Some(Err(error)) => Some(error.message.clone()),
            _ => None,
        }
    }
}

/// Refuses a database file that another process holds: redb takes an exclusive `flock` on
/// the file while it is open, so a lock that cannot be taken now means another daemon uses
/// the same root. The probe lets go of the lock at once (closing the file drops it).
fn check_not_held(path: &Path) -> Result<(), Error> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::unavailable(format!(
                "opening {}: {e}",
                path.display()
            )));
        }
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::unavailable(format!(
            "{} is in use by another process (another plinthd on the same root?): stop it, or give this one its own --root",
            path.display()
        ))),
        Err(e) => Err(Error::unavailable(format!(
            "locking {}: {}",
            path.display(),
            std::io::Error::from(e)
        ))),
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
    fn a_database_is_opened_or_created_by_its_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let db = Db::open(&path, 1, tables).unwrap();
        assert!(!path.exists(), "nothing created before the first use");
        assert_eq!(db.failure(), None, "not created is not a failure");
        write(&db, "k", 7);
        assert!(path.exists());
        drop(db);
        let db = Db::open(&path, 1, tables).unwrap();
        assert!(
            db.ready.get().is_none(),
            "an existing file waits for its first use too"
        );
        assert_eq!(read(&db, "k"), Some(7));
    }

    #[test]
    fn a_held_file_fails_open_and_a_newer_schema_fails_the_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let first = Db::open(&path, 2, tables).unwrap();
        write(&first, "k", 1);
        let held = Db::open(&path, 2, tables).unwrap_err();
        assert_eq!(held.category, plinth_core::Category::Unavailable, "{held}");
        assert!(
            held.message.contains(&path.display().to_string())
                && held.message.contains("in use by another process"),
            "{held}"
        );
        drop(first);
        let older = Db::open(&path, 1, tables).expect("not held any more");
        let newer = older.begin_read().unwrap_err();
        assert!(
            newer
                .message
                .contains("newer than this build's 1: use a newer plinthd"),
            "{newer}"
        );
        assert_eq!(
            db_failure(&older),
            Some(format!("database unusable: {}", newer.message)),
            "the plugin's live status says so"
        );
    }

    #[test]
    fn a_failed_open_is_every_use_s_error_and_the_live_status() {
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
