//! Opening a redb database the way every storage plugin here does: create or open it, refuse
//! one written by a newer schema, record the schema version of a new one.
//!
//! A database file that does not exist yet is created by its first use, not by the plugin's
//! init: creating one costs 5–10 ms of CPU (redb lays out its allocator state and fsyncs it),
//! and three of them were most of a daemon's first start — while a plugin that is never used
//! (a second snapshotter, say) never needs its file. A file that exists is opened on a thread
//! of its own once the daemon serves ([`Db::open_in_background`], from the plugin's
//! [`AfterStart`](crate::live::AfterStart) view; 1–2 ms each, off the start-up path), so what
//! it holds (a schema newer than this build's, data redb cannot read) shows in `plugins ls`
//! as the plugin's live status within milliseconds, not at the first call. Init itself
//! refuses a file another process holds.
//!
//! One file is one database in a process: a plugin restarted by a live reload opens the file
//! its running instance has open (the replacement is built before the old one is closed), so
//! [`Db::open`] hands out the same database while any holder of it is alive, with the locks
//! ([`Db::serial`]) for the changes that must not interleave, between the two instances too.
//!
//! A failed open is not remembered as final: the next use tries again (a full disk or a
//! holder that went away can recover), and the live status shows the last failure until an
//! open succeeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use plinth_core::Instance;
use redb::{
    Database, Durability, ReadTransaction, ReadableTable as _, TableDefinition, WriteTransaction,
};

use crate::error::Error;
use crate::live::{AfterStart, LiveStatus};

/// The table every database keeps its `"schema_version"` in.
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// A redb error as ours.
pub(crate) fn storage(error: impl std::fmt::Display) -> Error {
    storage_error("database".to_string(), &error)
}

/// A redb error of the database at `path`, naming it.
fn storage_at(path: &Path, error: impl std::fmt::Display) -> Error {
    storage_error(format!("database {}", path.display()), &error)
}

fn storage_error(place: String, error: &dyn std::fmt::Display) -> Error {
    let text = error.to_string();
    // redb keeps the I/O error only as text: ENOSPC is os error 28, EDQUOT 122.
    if text.contains("(os error 28)") || text.contains("(os error 122)") {
        return Error::resource_exhausted(format!(
            "{place}: {text}: free space on that filesystem and try again"
        ));
    }
    Error::internal(format!("{place}: {text}"))
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
    let db = Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => held_by_another(path),
        e if damaged(&e.to_string()) => Error::unavailable(format!(
            "opening {}: {e}: the file is damaged; restore it from a backup, or move it aside \
             to start this plugin empty (what it recorded is then lost)",
            path.display()
        )),
        e => Error::unavailable(format!("opening {}: {e}", path.display())),
    })?;
    let at = |e: Error| Error {
        message: format!("{}: {}", path.display(), e.message),
        ..e
    };
    let mut txn = db.begin_write().map_err(storage).map_err(at)?;
    // Creating tables and recording the version need no fsync of their own: if the process
    // dies before the next durable commit, the next start does this again. This keeps an
    // fsync off every plugin's start-up.
    txn.set_durability(redb::Durability::None);
    {
        let mut meta = txn.open_table(META).map_err(storage).map_err(at)?;
        let found = meta
            .get("schema_version")
            .map_err(storage)
            .map_err(at)?
            .map(|v| v.value());
        match found {
            None => {
                meta.insert("schema_version", schema_version)
                    .map_err(storage)
                    .map_err(at)?;
            }
            Some(version) if version > schema_version => {
                return Err(Error::failed_precondition(format!(
                    "{} has schema version {version}, newer than this build's {schema_version}: use a newer plinthd",
                    path.display()
                )));
            }
            Some(version) if version < schema_version => {
                // Upgrades so far only add tables, which `create_tables` does below.
                meta.insert("schema_version", schema_version)
                    .map_err(storage)
                    .map_err(at)?;
                tracing::info!(
                    path = %path.display(),
                    from = version,
                    to = schema_version,
                    "upgraded the database's schema"
                );
            }
            Some(_) => {}
        }
    }
    create_tables(&txn).map_err(at)?;
    txn.commit().map_err(storage).map_err(at)?;
    Ok(db)
}

/// Whether redb's error says the file's contents are not a database it can read.
fn damaged(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    ["invalid data", "corrupt", "invalid database"]
        .iter()
        .any(|sign| error.contains(sign))
}

/// The locks for changes that touch more than a database (its records and a backend's files
/// together): one per scope (the metadata plugin's scope is a namespace), so that changes in
/// different scopes run side by side, and one over every scope for a change that spans them
/// all (a snapshotter's cleanup). A scope's lock lives while someone holds or waits for it.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "metadata-redb"), allow(dead_code))]
pub(crate) struct Serial {
    /// Shared by every scoped change, exclusive for a change over all scopes. Always taken
    /// before a scope's lock, so the two never deadlock.
    all: tokio::sync::RwLock<()>,
    scopes: Mutex<BTreeMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

/// A held scope lock (see [`Serial::scope`]).
#[cfg_attr(not(feature = "metadata-redb"), allow(dead_code))]
pub(crate) struct ScopeGuard<'a> {
    _scope: tokio::sync::OwnedMutexGuard<()>,
    _all: tokio::sync::RwLockReadGuard<'a, ()>,
}

#[cfg_attr(not(feature = "metadata-redb"), allow(dead_code))]
impl Serial {
    /// Waits for the lock of `scope`: no other change in that scope, and no change over all
    /// scopes, runs until the guard is dropped.
    pub(crate) async fn scope(&self, scope: &str) -> ScopeGuard<'_> {
        let all = self.all.read().await;
        let lock = {
            let mut scopes = self.scopes.lock().unwrap_or_else(PoisonError::into_inner);
            match scopes.get(scope).and_then(std::sync::Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    // Forget the locks nobody holds any more before adding one.
                    scopes.retain(|_, lock| lock.strong_count() > 0);
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    scopes.insert(scope.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        ScopeGuard {
            _scope: lock.lock_owned().await,
            _all: all,
        }
    }

    /// Waits until no scoped change runs and holds every scope until the guard is dropped.
    pub(crate) async fn all(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.all.write().await
    }
}

/// The databases this process has open (or will open at first use), by path.
static OPEN: Mutex<BTreeMap<PathBuf, std::sync::Weak<Inner>>> = Mutex::new(BTreeMap::new());

/// A redb database: open, being opened, or to be created by its first use (see the module
/// docs).
pub(crate) struct Db {
    inner: Arc<Inner>,
    /// Whether the file existed (with content) at init.
    existed: bool,
    /// The thread opening an existing file in the background; joined on drop, so a daemon
    /// that stops at once never leaves a half-opened file behind.
    opening: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    path: PathBuf,
    /// Held across changes that touch more than the database (see [`Db::serial`]).
    #[cfg_attr(not(feature = "metadata-redb"), allow(dead_code))]
    serial: Serial,
    schema_version: u64,
    create_tables: fn(&WriteTransaction) -> Result<(), Error>,
    /// The open database, shared with the transactions that use it.
    ready: RwLock<Option<Arc<Open>>>,
    /// An I/O error made redb refuse further use of `ready` ("close and re-open"): the next
    /// use opens the file again (the disk may have room by then).
    broken: AtomicBool,
    /// Held while opening, so that one caller opens and the others wait for it.
    opening: Mutex<()>,
    /// The last open's error, until an open succeeds.
    last_error: Mutex<Option<Error>>,
}

/// An open database and the commits waiting for its syncs. A reopened file is a new `Open`
/// with a group of its own: a sync of the new database says nothing of the old one's commits.
struct Open {
    db: Database,
    group: Group,
}

impl std::ops::Deref for Open {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.inner.path)
            .field("open", &self.inner.is_open())
            .finish()
    }
}

impl Db {
    /// The database at `path`, opened by [`Db::open_in_background`] or by the first use,
    /// whichever comes first (a missing file is created by the first use). Either way
    /// `create_tables` opens every table once, in the transaction that checks the schema
    /// version (see [`open_versioned`]).
    ///
    /// # Errors
    /// The file exists but cannot be read, or another process holds it.
    /// A file this process has open already (by a plugin instance a reload is replacing) is
    /// shared, not opened again.
    pub(crate) fn open(
        path: &Path,
        schema_version: u64,
        create_tables: fn(&WriteTransaction) -> Result<(), Error>,
    ) -> Result<Db, Error> {
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, inner| inner.strong_count() > 0);
        if let Some(inner) = open.get(path).and_then(std::sync::Weak::upgrade) {
            return Ok(Db {
                inner,
                existed: true,
                opening: Mutex::new(None),
            });
        }
        let existed = check_not_held(path)?;
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            serial: Serial::default(),
            schema_version,
            create_tables,
            ready: RwLock::new(None),
            broken: AtomicBool::new(false),
            opening: Mutex::new(()),
            last_error: Mutex::new(None),
        });
        open.insert(path.to_path_buf(), Arc::downgrade(&inner));
        Ok(Db {
            inner,
            existed,
            opening: Mutex::new(None),
        })
    }

    /// The lock a plugin holds across a change that touches its backend and its records, so
    /// that two instances over the same file (the running one and its replacement, while a
    /// reload drains calls) never interleave such changes.
    // Only the metadata plugin has such changes; a build without it has no caller.
    #[cfg_attr(not(feature = "metadata-redb"), allow(dead_code))]
    pub(crate) fn serial(&self) -> &Serial {
        &self.inner.serial
    }

    /// Starts opening a file that existed at init on a thread of its own, once; does nothing
    /// for a missing file (creating it is left to the first use) or an open database.
    pub(crate) fn open_in_background(&self) {
        if !self.existed || self.inner.is_open() {
            return;
        }
        let mut opening = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        if opening.is_some() {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("plinth-db-open".to_string())
            .spawn(move || {
                if let Err(error) = inner.get() {
                    tracing::error!(%error, "database unusable");
                }
            });
        match spawned {
            Ok(handle) => *opening = Some(handle),
            // Not fatal: the first use opens it instead.
            Err(e) => {
                tracing::warn!(path = %self.inner.path.display(), error = %e, "no thread to open the database in the background")
            }
        }
    }

    /// A read transaction.
    ///
    /// # Errors
    /// The database could not be opened, or redb refused.
    pub(crate) fn begin_read(&self) -> Result<ReadTransaction, Error> {
        self.inner
            .get()?
            .begin_read()
            .map_err(|e| self.inner.error(e))
    }

    /// How many write transactions have committed (or tried to) since the database was
    /// opened in this process. A transaction is counted while it holds redb's writer lock,
    /// before its commit: so a writer that reads the count under that lock knows whether any
    /// transaction committed since an earlier reading (the collector's check that nothing
    /// changed between its mark and its sweep). 0 while the file is not open.
    #[cfg(feature = "metadata-redb")]
    pub(crate) fn commits(&self) -> u64 {
        self.inner.get().map_or(0, |db| db.group.lock().committed)
    }

    /// A write transaction, durable when its [`Write::commit`] returns.
    ///
    /// # Errors
    /// The database could not be opened, or redb refused.
    pub(crate) fn begin_write(&self) -> Result<Write<'_>, Error> {
        let db = self.inner.get()?;
        // Counted before waiting for redb's writer lock, so that the writer holding it knows
        // whether anyone waits behind it (see `Write::commit`).
        let writer = Writer::new(&db);
        let mut txn = db.begin_write().map_err(|e| self.inner.error(e))?;
        // Durable by the group's sync (see `Write::commit`), not by a sync of its own.
        txn.set_durability(Durability::None);
        Ok(Write {
            txn,
            db,
            inner: &self.inner,
            writer,
        })
    }
}

/// Group commit: transactions commit without a sync of their own, and one sync (an empty
/// transaction committed with `Durability::Immediate`, which makes every commit before it
/// durable) answers every transaction committed before it began. Under concurrent writers
/// one fsync serves many commits. A writer alone (no other transaction open or waiting, no
/// sync under way) commits with `Durability::Immediate` itself instead: the same one fsync,
/// without a second transaction for it (a third of a lone commit's CPU time).
#[derive(Debug, Default)]
struct Group {
    state: Mutex<GroupState>,
    synced: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Sequence numbers handed to commits, in commit order.
    committed: u64,
    /// Every commit up to this number is durable.
    durable: u64,
    /// A sync is under way.
    syncing: bool,
    /// Syncs run so far (a lone writer's durable commit counts as one).
    syncs: u64,
    /// Write transactions open or waiting to open.
    writers: u64,
}

/// A write transaction counted in [`GroupState::writers`] from before it waits for redb's
/// writer lock until it is committed or dropped.
struct Writer {
    db: Arc<Open>,
}

impl Writer {
    fn new(db: &Arc<Open>) -> Writer {
        db.group.lock().writers += 1;
        Writer { db: Arc::clone(db) }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.db.group.lock().writers -= 1;
    }
}

/// A write transaction of a [`Db`]: a redb transaction (through `Deref`) whose
/// [`commit`](Write::commit) returns once the commit is durable.
pub(crate) struct Write<'a> {
    txn: WriteTransaction,
    db: Arc<Open>,
    inner: &'a Inner,
    writer: Writer,
}

impl std::ops::Deref for Write<'_> {
    type Target = WriteTransaction;

    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

/// A commit visible to every transaction after it, not yet known durable.
#[must_use = "a commit is durable only once `durable` returns"]
pub(crate) struct Committed<'a> {
    sequence: u64,
    db: Arc<Open>,
    inner: &'a Inner,
}

impl<'a> Write<'a> {
    /// Commits; returns once the commit is durable (a crash after that keeps it).
    ///
    /// # Errors
    /// redb refused the commit (nothing changed) or the sync (the change is visible to this
    /// process but may be lost in a crash: treat it as not done).
    pub(crate) fn commit(self) -> Result<(), Error> {
        let Write {
            mut txn,
            db,
            inner,
            writer,
        } = self;
        // Alone: nobody else holds or waits for the writer lock (they are counted before
        // they wait) and no sync is under way, so nothing would share a sync with this
        // commit: it syncs itself. The number is taken under the same lock as the check, so
        // a sync that starts meanwhile counts it as covered, which it will be (the sync's
        // transaction waits for this one).
        let alone = {
            let mut state = db.group.lock();
            let alone = state.writers == 1 && !state.syncing;
            if alone {
                state.committed += 1;
            }
            alone.then_some(state.committed)
        };
        let Some(sequence) = alone else {
            return Write {
                txn,
                db,
                inner,
                writer,
            }
            .commit_visible()?
            .durable();
        };
        txn.set_durability(Durability::Immediate);
        let result = txn.commit().map_err(|e| inner.error(e));
        drop(writer);
        if result.is_ok() {
            let mut state = db.group.lock();
            state.syncs += 1;
            // Every commit before this one is durable too.
            state.durable = state.durable.max(sequence);
            db.group.synced.notify_all();
        }
        result
    }

    /// Drops the transaction's changes.
    ///
    /// # Errors
    /// redb refused.
    #[cfg(any(feature = "snapshotter-native", feature = "snapshotter-overlayfs"))]
    pub(crate) fn abort(self) -> Result<(), Error> {
        self.txn.abort().map_err(|e| self.inner.error(e))
    }

    /// Commits for every later transaction to see; [`Committed::durable`] waits for the
    /// sync. For a caller that undoes work of its own when the commit itself fails.
    ///
    /// # Errors
    /// redb refused the commit: nothing changed.
    pub(crate) fn commit_visible(self) -> Result<Committed<'a>, Error> {
        // Numbered while this transaction is the database's only writer, so the numbers
        // follow the commit order.
        let sequence = {
            let mut state = self.db.group.lock();
            state.committed += 1;
            state.committed
        };
        self.txn.commit().map_err(|e| self.inner.error(e))?;
        drop(self.writer);
        Ok(Committed {
            sequence,
            db: self.db,
            inner: self.inner,
        })
    }
}

impl Committed<'_> {
    /// Waits until the commit is durable: joins the sync under way if it covers this commit,
    /// or runs the next one.
    ///
    /// # Errors
    /// The sync failed (its error); the commit may be lost in a crash.
    pub(crate) fn durable(self) -> Result<(), Error> {
        let group = &self.db.group;
        let mut state = group.lock();
        loop {
            if state.durable >= self.sequence {
                return Ok(());
            }
            if state.syncing {
                state = group
                    .synced
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.syncing = true;
            drop(state);
            let result = self
                .db
                .begin_write()
                .map_err(|e| self.inner.error(e))
                .and_then(|mut txn| {
                    // Counted once the sync holds the writer lock, not when it asked for it:
                    // every number handed out by then belongs to a finished commit (numbers
                    // are taken under the lock), so the sync also covers the writers that
                    // committed while it waited, which would otherwise wait for it and then
                    // sync again.
                    let covers = group.lock().committed;
                    txn.set_durability(Durability::Immediate);
                    txn.commit()
                        .map(|()| covers)
                        .map_err(|e| self.inner.error(e))
                });
            state = group.lock();
            state.syncing = false;
            state.syncs += 1;
            if let Ok(covers) = result {
                state.durable = state.durable.max(covers);
            }
            group.synced.notify_all();
            result?;
        }
    }
}

impl Group {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn current(&self) -> Option<Arc<Open>> {
        self.ready
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_open(&self) -> bool {
        self.current().is_some()
    }

    /// `error` as ours, naming the file. An I/O error marks the database for reopening: redb
    /// refuses every later use of it. That includes its "Previous I/O error" when the first
    /// one was met outside these calls (a table read): that call fails, the next reopens.
    fn error(&self, error: impl std::fmt::Display) -> Error {
        let text = error.to_string();
        if text.contains("I/O error") {
            self.broken.store(true, Ordering::SeqCst);
        }
        storage_at(&self.path, text)
    }

    /// The database; opens (or creates) it if no open has succeeded yet. One caller opens,
    /// concurrent ones wait for it; a failure is returned and recorded, and the next call
    /// tries again.
    fn get(&self) -> Result<Arc<Open>, Error> {
        if !self.broken.load(Ordering::SeqCst)
            && let Some(db) = self.current()
        {
            return Ok(db);
        }
        let _opening = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        if self.broken.swap(false, Ordering::SeqCst) {
            // Dropped here; the file is closed once the transactions still using it end.
            let old = self
                .ready
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            drop(old);
            tracing::warn!(path = %self.path.display(), "reopening the database after an I/O error");
        }
        if let Some(db) = self.current() {
            return Ok(db);
        }
        tracing::debug!(path = %self.path.display(), "opening database");
        let opened = open_versioned(&self.path, self.schema_version, self.create_tables);
        let mut last_error = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match opened {
            Ok(db) => {
                *last_error = None;
                let db = Arc::new(Open {
                    db,
                    group: Group::default(),
                });
                *self.ready.write().unwrap_or_else(PoisonError::into_inner) = Some(db.clone());
                Ok(db)
            }
            Err(error) => {
                *last_error = Some(error.clone());
                Err(error)
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let opening = self
            .opening
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = opening {
            let _ = handle.join();
        }
    }
}

/// Refuses a database file that another process holds: redb takes an exclusive `flock` on
/// the file while it is open, so a lock that cannot be taken now means another daemon uses
/// the same root. The probe lets go of the lock at once (closing the file drops it). Returns
/// whether the file exists with content.
fn check_not_held(path: &Path) -> Result<bool, Error> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(Error::unavailable(format!(
                "opening {}: {e}",
                path.display()
            )));
        }
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file.metadata().is_ok_and(|m| m.len() > 0)),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(held_by_another(path)),
        Err(e) => Err(Error::unavailable(format!(
            "locking {}: {}",
            path.display(),
            std::io::Error::from(e)
        ))),
    }
}

/// The error for a database file another process holds.
fn held_by_another(path: &Path) -> Error {
    Error::unavailable(format!(
        "{} is in use by another process (another plinthd on the same root?): stop it, or give this one its own --root",
        path.display()
    ))
}

impl LiveStatus for Db {
    fn exports(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Why the database cannot be used, without opening it: the last open's error until an
    /// open succeeds; `None` while it is open, being opened or not needed yet.
    fn unavailable(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|e| format!("database unusable: {}", e.message))
    }
}

impl AfterStart for Db {
    fn after_start(&self) {
        self.open_in_background();
    }
}

/// `instance` with the views a plugin whose one database is `db` shows the daemon: its live
/// status ([`LiveStatus`]) and its opening once the daemon serves ([`AfterStart`]).
pub(crate) fn with_db_views(instance: Instance, db: &Arc<Db>) -> Instance {
    instance
        .with(Arc::clone(db) as Arc<dyn LiveStatus>)
        .with(Arc::clone(db) as Arc<dyn AfterStart>)
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

    /// Polls `future` once: its output if it is ready at once (no waiting involved).
    fn now<F: std::future::Future>(future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }

    /// A scope's lock excludes changes in that scope only, however many other scopes come
    /// and go meanwhile; the lock over all scopes waits for every scoped change and holds
    /// them all off.
    #[test]
    fn scopes_exclude_their_own_name_and_all_excludes_every_scope() {
        let serial = Serial::default();
        let a = now(serial.scope("a")).expect("a free scope is taken at once");
        // Other scopes run beside it (and adding them forgets only the locks nobody holds).
        let b = now(serial.scope("b")).expect("another scope runs beside");
        drop(b);
        let c = now(serial.scope("c")).expect("another scope runs beside");
        assert!(
            now(serial.scope("a")).is_none(),
            "a second change in a waits"
        );
        assert!(
            now(serial.all()).is_none(),
            "a change over all scopes waits"
        );
        drop((a, c));
        let all = now(serial.all()).expect("nothing scoped runs any more");
        assert!(now(serial.scope("d")).is_none(), "every scope waits for it");
        drop(all);
        assert!(now(serial.scope("a")).is_some());
    }

    /// One sync makes every commit before it durable: ten commits waiting together cost one
    /// sync; concurrent writers all get their commits, durable across a reopen.
    #[test]
    fn commits_share_a_sync_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let syncs = |db: &Db| db.inner.current().unwrap().group.lock().syncs;
        {
            let db = Db::open(&path, 1, tables).unwrap();
            write(&db, "first", 1);
            assert_eq!(syncs(&db), 1, "a commit alone is one sync");
            let state = |db: &Db| {
                let open = db.inner.current().unwrap();
                let state = open.group.lock();
                (state.committed, state.durable, state.writers)
            };
            assert_eq!(
                state(&db),
                (1, 1, 0),
                "a lone commit is durable when it returns, and no writer is left counted"
            );
            let pending: Vec<Committed<'_>> = (0..10u64)
                .map(|i| {
                    let txn = db.begin_write().unwrap();
                    txn.open_table(TABLE)
                        .unwrap()
                        .insert(format!("p{i}").as_str(), i)
                        .unwrap();
                    txn.commit_visible().unwrap()
                })
                .collect();
            assert_eq!(read(&db, "p9"), Some(9), "visible before it is durable");
            for committed in pending {
                committed.durable().unwrap();
            }
            assert_eq!(syncs(&db), 2, "the first wait's sync covers all ten");
            std::thread::scope(|scope| {
                for t in 0..8u64 {
                    let db = &db;
                    scope.spawn(move || {
                        for i in 0..25u64 {
                            write(db, &format!("t{t}-{i}"), t * 100 + i);
                        }
                    });
                }
            });
            assert!(syncs(&db) <= 2 + 200, "{}", syncs(&db));
        }
        let db = Db::open(&path, 1, tables).unwrap();
        assert_eq!(read(&db, "first"), Some(1));
        assert_eq!(read(&db, "p3"), Some(3));
        for t in 0..8u64 {
            for i in 0..25u64 {
                assert_eq!(read(&db, &format!("t{t}-{i}")), Some(t * 100 + i));
            }
        }
    }

    /// A full disk: the commit that meets it is ResourceExhausted naming the file; redb then
    /// refuses the database ("close and re-open"), so the next use opens it again; what was
    /// committed before stays, and once there is room writes succeed again.
    #[test]
    fn a_full_disk_is_named_and_the_database_reopened_once_there_is_room() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(dir.path());
        let path = dir.path().join("full.db");
        let db = Db::open(&path, 1, tables).unwrap();
        write(&db, "kept", 7);
        // Fill what is left.
        let filler = dir.path().join("filler");
        {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&filler).unwrap();
            while file
                .write_all(&[0u8; 4096])
                .and_then(|()| file.sync_data())
                .is_ok()
            {}
        }
        let value = vec![1u8; 64 << 10];
        const BLOBS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("b");
        let mut failure = None;
        for i in 0..64u64 {
            let attempt = db.begin_write().and_then(|txn| {
                txn.open_table(BLOBS)
                    .map_err(storage)?
                    .insert(i, value.as_slice())
                    .map_err(storage)?;
                txn.commit()
            });
            if let Err(e) = attempt {
                failure = Some(e);
                break;
            }
        }
        let failure = failure.expect("a 2 MiB disk refuses 4 MiB of writes");
        assert_eq!(
            failure.category,
            plinth_core::Category::ResourceExhausted,
            "{failure}"
        );
        assert!(
            failure.message.contains(&path.display().to_string())
                && failure.message.contains("free space on that filesystem"),
            "{failure}"
        );
        // Reads work again at once (the file is opened anew), and see what was committed.
        assert_eq!(read(&db, "kept"), Some(7));
        std::fs::remove_file(&filler).unwrap();
        write(&db, "after", 8);
        assert_eq!(read(&db, "after"), Some(8));
        drop(db);
        let db = Db::open(&path, 1, tables).unwrap();
        assert_eq!((read(&db, "kept"), read(&db, "after")), (Some(7), Some(8)));
    }

    /// Opens in the background and waits for it; whether a thread was started.
    fn opened_early(db: &Db) -> bool {
        db.open_in_background();
        let handle = db.opening.lock().unwrap().take();
        handle.map(|h| h.join().unwrap()).is_some()
    }

    #[test]
    fn a_new_file_is_created_by_its_first_use_an_existing_one_opened_early() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let db = Db::open(&path, 1, tables).unwrap();
        assert!(!opened_early(&db), "no file, nothing to open early");
        assert!(!path.exists(), "nothing created before the first use");
        assert_eq!(db.unavailable(), None, "not created is not a failure");
        write(&db, "k", 7);
        assert!(path.exists());
        drop(db);
        let db = Db::open(&path, 1, tables).unwrap();
        assert!(opened_early(&db));
        assert!(db.inner.is_open(), "open before any use");
        assert_eq!(read(&db, "k"), Some(7));
    }

    #[test]
    fn databases_and_scope_locks_nobody_holds_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.db");
        let db = Db::open(&first, 1, tables).unwrap();
        let shown = format!("{db:?}");
        assert!(
            shown.contains(&format!("{first:?}")) && shown.contains("open: false"),
            "{shown}"
        );
        drop(db);
        let second = Db::open(&dir.path().join("second.db"), 1, tables).unwrap();
        let registered = |path: &Path| {
            OPEN.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(path)
        };
        assert!(
            !registered(&first),
            "a dropped database is forgotten by the next open"
        );
        let scopes = |serial: &Serial| {
            serial
                .scopes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        let serial = second.serial();
        drop(now(serial.scope("a")).expect("free"));
        let held = now(serial.scope("b")).expect("free");
        assert_eq!(scopes(serial), ["b"], "a scope nobody holds is forgotten");
        drop(held);
    }

    #[test]
    fn a_garbled_file_is_called_damaged_and_other_open_failures_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let garbled = dir.path().join("garbled.db");
        std::fs::write(&garbled, vec![0xab; 8192]).unwrap();
        let error = Db::open(&garbled, 1, tables)
            .and_then(|db| db.begin_read().map(drop))
            .unwrap_err();
        assert_eq!(
            error.category,
            plinth_core::Category::Unavailable,
            "{error}"
        );
        assert!(
            error
                .message
                .starts_with(&format!("opening {}: ", garbled.display()))
                && error
                    .message
                    .contains("the file is damaged; restore it from a backup, or move it aside"),
            "{error}"
        );
        // Not a database file at all: a directory where the file should be.
        let directory = dir.path().join("directory.db");
        std::fs::create_dir(&directory).unwrap();
        let error = Db::open(&directory, 1, tables)
            .and_then(|db| db.begin_read().map(drop))
            .unwrap_err();
        assert!(
            error
                .message
                .starts_with(&format!("opening {}: ", directory.display()))
                && !error.message.contains("damaged"),
            "{error}"
        );
    }

    /// A path that cannot be opened for another reason than its absence is refused, naming
    /// the path; only a missing file, or an empty one (a crash before redb wrote its header),
    /// is one to create.
    #[test]
    fn a_path_that_cannot_be_opened_is_not_taken_for_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!check_not_held(&dir.path().join("missing.db")).unwrap());
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        assert!(
            !check_not_held(&empty).unwrap(),
            "an empty file did not exist"
        );
        std::fs::write(&empty, b"x").unwrap();
        assert!(
            check_not_held(&empty).unwrap(),
            "a file with content existed"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, b"not a directory").unwrap();
        let under_a_file = file.join("meta.db");
        let error = check_not_held(&under_a_file).unwrap_err();
        assert!(
            error
                .message
                .starts_with(&format!("opening {}: ", under_a_file.display())),
            "{error}"
        );
        let error = Db::open(&under_a_file, 1, tables).unwrap_err();
        assert_eq!(
            error.category,
            plinth_core::Category::Unavailable,
            "{error}"
        );
    }

    /// A database file with one record ("k" = 1) at `dir`/meta.db, and a new `Db` over it
    /// that has not opened it yet.
    fn existing(dir: &Path) -> (PathBuf, Db) {
        let path = dir.join("meta.db");
        write(&Db::open(&path, 1, tables).unwrap(), "k", 1);
        let db = Db::open(&path, 1, tables).unwrap();
        (path, db)
    }

    /// Once the daemon serves, a database whose file existed opens on a thread of its own,
    /// before any call needs it; a file still to be created waits for its first use.
    #[test]
    fn after_start_opens_an_existing_file_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let (_, db) = existing(dir.path());
        assert!(!db.inner.is_open());
        db.after_start();
        let opening = db.opening.lock().unwrap().take();
        opening.expect("an open in the background").join().unwrap();
        assert!(db.inner.is_open());
        assert_eq!(read(&db, "k"), Some(1));

        let new = Db::open(&dir.path().join("new.db"), 1, tables).unwrap();
        new.after_start();
        assert!(new.opening.lock().unwrap().is_none() && !new.inner.is_open());
    }

    /// Introspection merges a plugin's live exports over its own: a database adds none,
    /// open or not.
    #[test]
    fn a_database_exports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta.db"), 1, tables).unwrap();
        assert_eq!(db.exports(), BTreeMap::new());
        write(&db, "k", 1);
        assert_eq!(db.exports(), BTreeMap::new());
    }

    /// Dropping a database waits for its open in the background to end, so that nothing
    /// holds the file once the plugin that had it is gone (a restart in the same process,
    /// as a reload, takes it again at once).
    #[test]
    fn dropping_a_database_waits_for_its_open_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let (path, db) = existing(dir.path());
        let held = Arc::clone(&db.inner);
        // The background open waits for this lock, which the test holds.
        let opening = held.opening.lock().unwrap();
        db.open_in_background();
        let (dropped, was_dropped) = std::sync::mpsc::channel();
        let dropper = std::thread::spawn(move || {
            drop(db);
            dropped.send(()).unwrap();
        });
        assert_eq!(
            was_dropped.recv_timeout(std::time::Duration::from_millis(200)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "the drop returned while the open was still to run"
        );
        drop(opening);
        was_dropped.recv().unwrap();
        dropper.join().unwrap();
        assert!(
            held.is_open(),
            "the open ran to its end before the drop returned"
        );
        drop(held);
        // Nothing holds the file once the database is dropped (held: an error).
        assert!(check_not_held(&path).unwrap(), "the file has its content");
    }

    #[test]
    fn a_held_file_fails_open_and_a_newer_schema_is_the_live_status_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let first = Db::open(&path, 2, tables).unwrap();
        write(&first, "k", 1);
        // Another process's hold, as redb takes it: an exclusive flock on the file.
        let other = std::fs::File::open(&path).unwrap();
        let held_first = {
            let shared = Db::open(&path, 2, tables).expect("this process's own: shared");
            assert_eq!(read(&shared, "k"), Some(1));
            drop(first);
            shared
        };
        drop(held_first);
        rustix::fs::flock(&other, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        let held = Db::open(&path, 2, tables).unwrap_err();
        assert_eq!(held.category, plinth_core::Category::Unavailable, "{held}");
        assert_eq!(
            held.message,
            format!(
                "{} is in use by another process (another plinthd on the same root?): stop it, or give this one its own --root",
                path.display()
            )
        );
        drop(other);
        // Not held any more. A child another test forks in this process between our open and
        // its exec holds a copy of the descriptor, and so the lock, for a moment: wait it out.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let older = loop {
            match Db::open(&path, 1, tables) {
                Err(e)
                    if e.category == plinth_core::Category::Unavailable
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.expect("not held any more"),
            }
        };
        assert!(opened_early(&older));
        let expected = format!(
            "{} has schema version 2, newer than this build's 1: use a newer plinthd",
            path.display()
        );
        assert_eq!(
            older.unavailable(),
            Some(format!("database unusable: {expected}")),
            "the plugin's live status says so before any use"
        );
        let error = older.begin_read().unwrap_err();
        assert_eq!(error.message, expected, "and so does every use");
    }

    #[test]
    fn a_failed_open_is_every_use_s_error_and_the_live_status_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("missing-dir");
        let path = parent.join("x.db");
        let db = Db::open(&path, 1, tables).unwrap();
        assert_eq!(db.unavailable(), None, "nothing tried yet");
        let error = db.begin_read().unwrap_err();
        assert!(
            error
                .message
                .starts_with(&format!("opening {}: ", path.display())),
            "{error}"
        );
        assert_eq!(
            db.begin_write().err(),
            Some(error.clone()),
            "tried again, same error"
        );
        assert_eq!(
            db.unavailable(),
            Some(format!("database unusable: {}", error.message))
        );
        std::fs::create_dir(&parent).unwrap();
        write(&db, "k", 1);
        assert_eq!(db.unavailable(), None, "recovered once an open succeeded");
        assert_eq!(read(&db, "k"), Some(1));
    }
}
