//! The metadata store the native and overlayfs snapshotters share (containerd's
//! `core/snapshots/storage`): snapshot records in a redb database at `<root>/metadata.db`,
//! one numeric id per snapshot, and the id-named directories under `<root>/snapshots`.
//!
//! # Layout
//!
//! ```text
//! <root>/metadata.db        the tables below
//! <root>/snapshots/<id>/    a snapshot's data (what is inside is the snapshotter's business)
//! <root>/snapshots/new-<id> a directory being built; renamed to <id> inside the transaction
//! ```
//!
//! Keys never become paths: a directory is named by the id the record holds, so a key such as
//! `../../etc` is just a string in a table.
//!
//! # Atomicity
//!
//! Every operation is one redb write transaction. Directories are built under a temporary
//! name and renamed to `<id>` while the transaction is open, and removed only after the
//! transaction that dropped their record has committed. A crash therefore leaves either the
//! old or the new state in the database, plus at most some directories that no record names:
//! [`MetaStore::cleanup`] removes those. Ids come from a counter that skips names already
//! present on disk, so a directory left by a crash is never mistaken for a new snapshot's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{Info, Kind, Usage, validate_key};
use crate::error::Error;
use crate::filters::FilterSet;
use crate::namespaces::{Labels, apply_label_paths, validate_label};

/// The schema this code writes; a database with a newer one is refused.
const SCHEMA_VERSION: u64 = 1;

// `META` (from `redb_store`): `"schema_version"` → version; `"last_id"` → the last id handed out.

/// key (active, view) or name (committed) → encoded [`Record`].
const SNAPSHOTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshots");

/// (parent id, child id) → child key: a snapshot with an entry under its id has children.
const PARENTS: TableDefinition<'_, (u64, u64), &str> = TableDefinition::new("parents");

const LAST_ID: &str = "last_id";

/// The name of the directory of snapshot data inside a snapshotter root.
pub(crate) const SNAPSHOTS_DIR: &str = "snapshots";

/// The name of the database file inside a snapshotter root.
pub(crate) const DATABASE_FILE: &str = "metadata.db";

use crate::redb_store::{Db, META, storage};

fn io_error(what: &str, path: &Path, error: std::io::Error) -> Error {
    Error::io(format_args!("{what} {}", path.display()), &error)
}

/// An active snapshot or view as a snapshotter needs it to build mounts (containerd's
/// `storage.Snapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Its id: its directory is `<root>/snapshots/<id>`.
    pub(crate) id: u64,
    /// Active or view.
    pub(crate) kind: Kind,
    /// The ids of its parents, nearest first.
    pub(crate) parent_ids: Vec<u64>,
}

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    id: u64,
    kind: Kind,
    parent: String,
    labels: Labels,
    created: SystemTime,
    updated: SystemTime,
    usage: Usage,
}

const RECORD_FORMAT: u8 = 1;

impl Record {
    fn info(&self, name: &str) -> Info {
        Info {
            kind: self.kind,
            name: name.to_string(),
            parent: self.parent.clone(),
            labels: self.labels.clone(),
            created_at: self.created,
            updated_at: self.updated,
        }
    }

    fn encode(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, text: &str) {
            out.extend_from_slice(&(text.len() as u64).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        fn time(out: &mut Vec<u8>, at: SystemTime) {
            let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
            out.extend_from_slice(&since.as_secs().to_le_bytes());
            out.extend_from_slice(&since.subsec_nanos().to_le_bytes());
        }
        let mut out = vec![RECORD_FORMAT];
        out.extend_from_slice(&self.id.to_le_bytes());
        out.push(match self.kind {
            Kind::View => 1,
            Kind::Active => 2,
            Kind::Committed => 3,
        });
        time(&mut out, self.created);
        time(&mut out, self.updated);
        out.extend_from_slice(&self.usage.size.to_le_bytes());
        out.extend_from_slice(&self.usage.inodes.to_le_bytes());
        string(&mut out, &self.parent);
        out.extend_from_slice(&(self.labels.len() as u64).to_le_bytes());
        for (key, value) in &self.labels {
            string(&mut out, key);
            string(&mut out, value);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        struct Reader<'a>(&'a [u8]);
        impl Reader<'_> {
            fn take(&mut self, n: usize) -> Option<&[u8]> {
                if self.0.len() < n {
                    return None;
                }
                let (head, tail) = self.0.split_at(n);
                self.0 = tail;
                Some(head)
            }
            fn u8(&mut self) -> Option<u8> {
                self.take(1).map(|b| b[0])
            }
            fn u32(&mut self) -> Option<u32> {
                Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
            }
            fn u64(&mut self) -> Option<u64> {
                Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
            }
            fn i64(&mut self) -> Option<i64> {
                Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
            }
            fn string(&mut self) -> Option<String> {
                let n = usize::try_from(self.u64()?).ok()?;
                String::from_utf8(self.take(n)?.to_vec()).ok()
            }
            fn time(&mut self) -> Option<SystemTime> {
                let secs = self.u64()?;
                let nanos = self.u32()?;
                if nanos >= 1_000_000_000 {
                    return None;
                }
                UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            }
        }
        let mut reader = Reader(bytes);
        if reader.u8()? != RECORD_FORMAT {
            return None;
        }
        let id = reader.u64()?;
        let kind = match reader.u8()? {
            1 => Kind::View,
            2 => Kind::Active,
            3 => Kind::Committed,
            _ => return None,
        };
        let created = reader.time()?;
        let updated = reader.time()?;
        let usage = Usage {
            size: reader.i64()?,
            inodes: reader.i64()?,
        };
        let parent = reader.string()?;
        let n_labels = reader.u64()?;
        let mut labels = Labels::new();
        for _ in 0..n_labels {
            let key = reader.string()?;
            let value = reader.string()?;
            labels.insert(key, value);
        }
        if !reader.0.is_empty() {
            return None;
        }
        Some(Record {
            id,
            kind,
            parent,
            labels,
            created,
            updated,
            usage,
        })
    }
}

fn read_record(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Record>, Error> {
    match table.get(key).map_err(storage)? {
        None => Ok(None),
        Some(bytes) => Record::decode(bytes.value())
            .map(Some)
            .ok_or_else(|| storage(format!("the record of snapshot {key:?} is corrupt"))),
    }
}

fn parent_ids(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    parent: &str,
) -> Result<Vec<u64>, Error> {
    let mut ids = Vec::new();
    let mut next = parent.to_string();
    while !next.is_empty() {
        let record = read_record(table, &next)?
            .ok_or_else(|| storage(format!("parent {next:?} is missing from the chain")))?;
        ids.push(record.id);
        next = record.parent;
    }
    Ok(ids)
}

fn snapshot_filter_field(info: &Info, fieldpath: &[String]) -> Option<String> {
    match fieldpath.first().map(String::as_str) {
        Some("kind") => Some(info.kind.as_str().to_string()),
        Some("name") => Some(info.name.clone()),
        Some("parent") => Some(info.parent.clone()),
        Some("labels") => info.labels.get(&fieldpath[1..].join(".")).cloned(),
        _ => None,
    }
}

/// The snapshot records of one snapshotter and the directories they name.
#[derive(Debug)]
pub(crate) struct MetaStore {
    db: Arc<Db>,
    snapshots_dir: PathBuf,
}

impl MetaStore {
    /// The store under `root`: creates `root` and `root/snapshots` (mode 0700) now;
    /// `root/metadata.db` opens on a thread of its own if it exists, else on first use (see
    /// `redb_store`).
    ///
    /// # Errors
    /// The directories cannot be created, or another process holds the database.
    pub(crate) fn open(root: &Path) -> Result<MetaStore, Error> {
        use std::os::unix::fs::DirBuilderExt;
        let snapshots_dir = root.join(SNAPSHOTS_DIR);
        for dir in [root, &snapshots_dir] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_error("creating", dir, e))?;
        }
        let path = root.join(DATABASE_FILE);
        let db = Db::open(&path, SCHEMA_VERSION, |txn| {
            txn.open_table(SNAPSHOTS).map_err(storage)?;
            txn.open_table(PARENTS).map_err(storage)?;
            Ok(())
        })?;
        Ok(MetaStore {
            db: Arc::new(db),
            snapshots_dir,
        })
    }

    /// The records' database, for the snapshotter's views (see `redb_store::with_db_views`).
    pub(crate) fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// `<root>/snapshots`.
    pub(crate) fn snapshots_dir(&self) -> &Path {
        &self.snapshots_dir
    }

    /// `<root>/snapshots/<id>`.
    pub(crate) fn dir_of(&self, id: u64) -> PathBuf {
        self.snapshots_dir.join(id.to_string())
    }

    /// The id, info and stored usage of a snapshot.
    ///
    /// # Errors
    /// Not found.
    pub(crate) fn stat(&self, key: &str) -> Result<(u64, Info, Usage), Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let record = read_record(&table, key)?
            .ok_or_else(|| Error::not_found(format!("snapshot {key:?}: not found")))?;
        Ok((record.id, record.info(key), record.usage))
    }

    /// Changes the labels of `info.name` as `fieldpaths` say, and its updated time.
    ///
    /// # Errors
    /// Not found; invalid argument for a field path other than labels.
    pub(crate) fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info, Error> {
        let txn = self.db.begin_write()?;
        let updated = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let mut record = read_record(&table, &info.name)?
                .ok_or_else(|| Error::not_found(format!("snapshot {:?}: not found", info.name)))?;
            apply_label_paths(&mut record.labels, &info.labels, fieldpaths)?;
            record.updated = SystemTime::now();
            table
                .insert(info.name.as_str(), record.encode().as_slice())
                .map_err(storage)?;
            record.info(&info.name)
        };
        txn.commit()?;
        Ok(updated)
    }

    /// Every snapshot matching any of `filters`, sorted by name.
    ///
    /// # Errors
    /// Invalid argument for a filter that does not parse.
    pub(crate) fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        let filter = FilterSet::parse_all(filters).map_err(|e| Error::invalid(e.to_string()))?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let mut infos = Vec::new();
        for item in table.iter().map_err(storage)? {
            let (key, bytes) = item.map_err(storage)?;
            let name = key.value();
            let record = Record::decode(bytes.value())
                .ok_or_else(|| storage(format!("the record of snapshot {name:?} is corrupt")))?;
            let info = record.info(name);
            if filter.matches(|path| snapshot_filter_field(&info, path)) {
                infos.push(info);
            }
        }
        Ok(infos)
    }

    /// An active snapshot or view with its parent chain, to build its mounts.
    ///
    /// # Errors
    /// Not found; failed precondition for a committed snapshot.
    pub(crate) fn snapshot(&self, key: &str) -> Result<Snapshot, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let record = read_record(&table, key)?
            .ok_or_else(|| Error::not_found(format!("snapshot {key:?}: not found")))?;
        if record.kind == Kind::Committed {
            return Err(Error::failed_precondition(format!(
                "snapshot {key:?} is committed: only active snapshots and views have mounts"
            )));
        }
        Ok(Snapshot {
            id: record.id,
            kind: record.kind,
            parent_ids: parent_ids(&table, &record.parent)?,
        })
    }

    /// Creates an active snapshot or view. `materialize` runs inside the transaction, after
    /// the record is written and before it commits: it builds the snapshot's directory (under
    /// a temporary name, renamed to [`MetaStore::dir_of`] last). If it fails nothing is
    /// recorded; if the commit fails its directory is removed.
    ///
    /// # Errors
    /// Invalid argument for a bad key or label; already exists; not found for a missing
    /// parent; failed precondition for a parent that is not committed; what `materialize`
    /// returns.
    pub(crate) fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: &Labels,
        materialize: impl FnOnce(&Snapshot) -> Result<(), Error>,
    ) -> Result<Snapshot, Error> {
        validate_key("snapshot key", key)?;
        if !parent.is_empty() {
            validate_key("parent", parent)?;
        }
        for (name, value) in labels {
            validate_label(name, value)?;
        }
        if kind == Kind::Committed {
            return Err(Error::invalid(
                "only active snapshots and views can be created; commit an active one instead",
            ));
        }
        let txn = self.db.begin_write()?;
        let snapshot = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(storage)?;
            if table.get(key).map_err(storage)?.is_some() {
                return Err(Error::already_exists(format!(
                    "snapshot {key:?}: already exists"
                )));
            }
            let parent_ids = if parent.is_empty() {
                Vec::new()
            } else {
                let record = read_record(&table, parent)?.ok_or_else(|| {
                    Error::not_found(format!("parent snapshot {parent:?}: not found"))
                })?;
                if record.kind != Kind::Committed {
                    return Err(Error::failed_precondition(format!(
                        "parent {parent:?} is {}, not committed: commit it first",
                        record.kind.as_str()
                    )));
                }
                parent_ids(&table, parent)?
            };
            let id = self.next_id(&txn)?;
            let now = SystemTime::now();
            let record = Record {
                id,
                kind,
                parent: parent.to_string(),
                labels: labels.clone(),
                created: now,
                updated: now,
                usage: Usage::default(),
            };
            table
                .insert(key, record.encode().as_slice())
                .map_err(storage)?;
            if let Some(parent_id) = parent_ids.first() {
                txn.open_table(PARENTS)
                    .map_err(storage)?
                    .insert((*parent_id, id), key)
                    .map_err(storage)?;
            }
            Snapshot {
                id,
                kind,
                parent_ids,
            }
        };
        materialize(&snapshot)?;
        match txn.commit_visible() {
            Err(error) => {
                remove_dir_logged(&self.dir_of(snapshot.id));
                Err(error)
            }
            // Once visible the record stays: a failed sync leaves it to the next one (or to
            // a crash, whose leftover directory `cleanup` removes).
            Ok(committed) => committed.durable().map(|()| snapshot),
        }
    }

    /// The next id: one past the last handed out, skipping ids whose directory exists (left
    /// by a crash after the rename and before the commit).
    fn next_id(&self, txn: &WriteTransaction) -> Result<u64, Error> {
        let mut meta = txn.open_table(META).map_err(storage)?;
        let mut id = meta.get(LAST_ID).map_err(storage)?.map_or(0, |v| v.value());
        loop {
            id = id
                .checked_add(1)
                .ok_or_else(|| storage("snapshot ids are exhausted"))?;
            match std::fs::symlink_metadata(self.dir_of(id)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(io_error("checking", &self.dir_of(id), e)),
                Ok(_) => {}
            }
        }
        meta.insert(LAST_ID, id).map_err(storage)?;
        Ok(id)
    }

    /// Commits the active snapshot `key` as `name` with `labels`. `usage_of` (given the id)
    /// runs inside the transaction and gives the usage to store.
    ///
    /// # Errors
    /// Invalid argument for a bad name or label; not found; failed precondition when `key`
    /// is not active; already exists for `name`.
    pub(crate) fn commit(
        &self,
        name: &str,
        key: &str,
        labels: &Labels,
        usage_of: impl FnOnce(u64) -> Result<Usage, Error>,
    ) -> Result<(), Error> {
        validate_key("snapshot name", name)?;
        for (label, value) in labels {
            validate_label(label, value)?;
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let active = read_record(&table, key)?
                .ok_or_else(|| Error::not_found(format!("snapshot {key:?}: not found")))?;
            if active.kind != Kind::Active {
                return Err(Error::failed_precondition(format!(
                    "snapshot {key:?} is {}, not active: only active snapshots can be committed",
                    active.kind.as_str()
                )));
            }
            if table.get(name).map_err(storage)?.is_some() {
                return Err(Error::already_exists(format!(
                    "snapshot {name:?}: already exists"
                )));
            }
            let usage = usage_of(active.id)?;
            let now = SystemTime::now();
            let committed = Record {
                kind: Kind::Committed,
                labels: labels.clone(),
                created: now,
                updated: now,
                usage,
                ..active
            };
            table
                .insert(name, committed.encode().as_slice())
                .map_err(storage)?;
            table.remove(key).map_err(storage)?;
            if !committed.parent.is_empty() {
                let parent = read_record(&table, &committed.parent)?.ok_or_else(|| {
                    storage(format!(
                        "parent {:?} of {key:?} is missing",
                        committed.parent
                    ))
                })?;
                txn.open_table(PARENTS)
                    .map_err(storage)?
                    .insert((parent.id, committed.id), name)
                    .map_err(storage)?;
            }
        }
        txn.commit()
    }

    /// Removes a snapshot's record, then (after the commit) its directory.
    ///
    /// # Errors
    /// Not found; failed precondition when it has children.
    pub(crate) fn remove(&self, key: &str) -> Result<(), Error> {
        let mut results = self.remove_many(&[key.to_string()])?;
        results.pop().unwrap_or(Ok(()))
    }

    /// Removes several snapshots' records in one write transaction (one sync for all of
    /// them), in the order given, so a child may come before its parent; then, after the
    /// commit, their directories. One result per key: a key that is missing or still has
    /// children fails alone and the others are removed.
    ///
    /// # Errors
    /// Storage failure, which removes none of them.
    pub(crate) fn remove_many(&self, keys: &[String]) -> Result<Vec<Result<(), Error>>, Error> {
        let (results, dirs) = self.remove_records(keys)?;
        // The directories side by side (a removal waits mostly for the disk: see
        // `crate::removal`); one left behind is logged, and cleanup takes it later.
        crate::removal::on_threads(
            &dirs,
            |dir| remove_dir_logged(dir),
            || {
                tracing::warn!("a snapshot directory removal thread panicked; cleanup will retry");
            },
        );
        Ok(results)
    }

    /// [`MetaStore::remove_many`] that answers once the records are committed, with the
    /// directories being removed behind the answer (see [`crate::removal::Freeing`]). No
    /// record names them any more and ids are never reused, so nothing can reach them.
    ///
    /// # Errors
    /// As [`MetaStore::remove_many`].
    pub(crate) fn detach_many(
        &self,
        keys: &[String],
    ) -> Result<(Vec<Result<(), Error>>, crate::removal::Freeing), Error> {
        let (results, dirs) = self.remove_records(keys)?;
        // A failure is logged and left to cleanup, as `remove_many` leaves it.
        let freeing = crate::removal::in_background(dirs, |dir: &PathBuf| {
            remove_dir_logged(dir);
            Ok(())
        });
        Ok((results, freeing))
    }

    /// The records of [`MetaStore::remove_many`] in one committed transaction, with the
    /// directories of those removed.
    fn remove_records(&self, keys: &[String]) -> Result<Removed, Error> {
        let txn = self.db.begin_write()?;
        let mut results = Vec::with_capacity(keys.len());
        let mut ids = Vec::new();
        {
            let mut table = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let mut parents = txn.open_table(PARENTS).map_err(storage)?;
            for key in keys {
                let Some(record) = read_record(&table, key)? else {
                    results.push(Err(Error::not_found(format!(
                        "snapshot {key:?}: not found"
                    ))));
                    continue;
                };
                let child = parents
                    .range((record.id, 0)..=(record.id, u64::MAX))
                    .map_err(storage)?
                    .next()
                    .transpose()
                    .map_err(storage)?
                    .map(|(_, child)| child.value().to_string());
                if let Some(child) = child {
                    results.push(Err(Error::failed_precondition(format!(
                        "cannot remove snapshot {key:?}: it has children (e.g. {child:?}); remove them first"
                    ))));
                    continue;
                }
                if !record.parent.is_empty() {
                    let parent = read_record(&table, &record.parent)?.ok_or_else(|| {
                        storage(format!("parent {:?} of {key:?} is missing", record.parent))
                    })?;
                    parents.remove((parent.id, record.id)).map_err(storage)?;
                }
                table.remove(key.as_str()).map_err(storage)?;
                ids.push(record.id);
                results.push(Ok(()));
            }
        }
        txn.commit()?;
        Ok((results, ids.into_iter().map(|id| self.dir_of(id)).collect()))
    }

    /// Removes every entry of `<root>/snapshots` that no record names. Holds the write
    /// transaction while it does, so no snapshot is created or removed meanwhile.
    ///
    /// # Errors
    /// Storage failure, or the directory cannot be read.
    pub(crate) fn cleanup(&self) -> Result<Vec<PathBuf>, Error> {
        let txn = self.db.begin_write()?;
        let ids: BTreeSet<String> = {
            let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let mut ids = BTreeSet::new();
            for item in table.iter().map_err(storage)? {
                let (key, bytes) = item.map_err(storage)?;
                let record = Record::decode(bytes.value()).ok_or_else(|| {
                    storage(format!(
                        "the record of snapshot {:?} is corrupt",
                        key.value()
                    ))
                })?;
                ids.insert(record.id.to_string());
            }
            ids
        };
        let entries = std::fs::read_dir(&self.snapshots_dir)
            .map_err(|e| io_error("reading", &self.snapshots_dir, e))?;
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("reading", &self.snapshots_dir, e))?;
            if ids.contains(entry.file_name().to_string_lossy().as_ref()) {
                continue;
            }
            let path = entry.path();
            remove_path(&path).map_err(|e| io_error("removing", &path, e))?;
            removed.push(path);
        }
        txn.abort().map_err(storage)?;
        Ok(removed)
    }
}

/// This machine's platform as containerd writes it (`linux/amd64`, `linux/arm64/v8`), for a
/// snapshotter plugin's metadata.
pub(crate) fn default_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64/v8",
        "powerpc64" => "ppc64",
        "powerpc64le" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// What [`MetaStore::remove_records`] did: one result per key, and the directories of the
/// snapshots it removed.
type Removed = (Vec<Result<(), Error>>, Vec<PathBuf>);

/// Removes a file or a directory tree; a missing one is fine.
pub(crate) fn remove_path(path: &Path) -> std::io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes a directory left behind; a failure is logged (cleanup retries it later).
pub(crate) fn remove_dir_logged(path: &Path) {
    if let Err(error) = remove_path(path) {
        tracing::warn!(path = %path.display(), %error, "failed to remove snapshot directory; cleanup will retry");
    }
}

/// Disk usage of a tree as containerd counts it: each inode once, size in 512-byte blocks.
///
/// # Errors
/// The tree cannot be read.
pub(crate) fn disk_usage(root: &Path) -> Result<Usage, Error> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    let mut usage = Usage::default();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io_error("reading", &path, e))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += i64::try_from(meta.blocks().saturating_mul(512)).unwrap_or(i64::MAX);
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| io_error("reading", &path, e))? {
                pending.push(entry.map_err(|e| io_error("reading", &path, e))?.path());
            }
        }
    }
    Ok(usage)
}

/// Runs blocking filesystem and database work off the async executor and awaits it, on a
/// thread of its own ([`crate::on_own_thread`]): the snapshotter features do not depend on
/// tokio (the trait is runtime-agnostic), and a thread start is cheap next to the work.
///
/// # Errors
/// What `work` returns; internal when the thread cannot start or `work` panics.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    crate::on_own_thread("snapshotter-io", work).await
}

/// For each snapshotter's tests: its state survives reopening, and `cleanup` removes what a
/// crash in the middle of a prepare or a remove leaves (a `new-<n>` directory, a numbered one
/// without a record) and nothing else.
#[cfg(test)]
pub(super) async fn check_cleanup_removes_only_orphans<S: super::Snapshotter>(
    open: impl Fn(&Path) -> S,
) {
    let dir = tempfile::tempdir().unwrap();
    let none = Labels::new;
    {
        let snapshotter = open(dir.path());
        snapshotter.prepare("a", "", none()).await.unwrap();
        snapshotter.commit("c", "a", none()).await.unwrap();
        snapshotter.prepare("b", "c", none()).await.unwrap();
        snapshotter.prepare("d", "c", none()).await.unwrap();
        // A removal takes its directory with it at once, not at the next cleanup.
        snapshotter.remove("d").await.unwrap();
    }
    let left = || {
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        left
    };
    assert_eq!(
        left(),
        ["1", "2"],
        "the removed snapshot's directory is left"
    );
    std::fs::create_dir(dir.path().join("snapshots/new-9")).unwrap();
    std::fs::create_dir(dir.path().join("snapshots/77")).unwrap();
    let snapshotter = open(dir.path());
    snapshotter.cleanup().await.unwrap();
    assert_eq!(left(), ["1", "2"]);
    assert_eq!(snapshotter.stat("b").await.unwrap().parent, "c");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use plinth_core::Category;

    use super::*;

    /// `remove_path` takes away a file, a tree, or a symlink (never what it points to), and a
    /// path that is already gone is fine.
    #[test]
    fn remove_path_removes_files_trees_and_links_but_never_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let target = base.join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("kept"), "").unwrap();
        std::fs::write(base.join("file"), "x").unwrap();
        std::fs::create_dir_all(base.join("tree/a/b")).unwrap();
        std::fs::write(base.join("tree/a/b/f"), "").unwrap();
        std::os::unix::fs::symlink(&target, base.join("link")).unwrap();
        for name in ["file", "tree", "link", "missing"] {
            remove_path(&base.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                std::fs::symlink_metadata(base.join(name)).is_err(),
                "{name} is still there"
            );
        }
        assert!(target.join("kept").exists(), "a link was followed");
        // Only a path that is already gone is fine: any other failure is the caller's.
        std::fs::write(base.join("plain"), "").unwrap();
        assert_eq!(
            remove_path(&base.join("plain/under")).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::NotADirectory)
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn make_dir(store: &MetaStore) -> impl FnOnce(&Snapshot) -> Result<(), Error> + '_ {
        |snapshot| {
            std::fs::create_dir(store.dir_of(snapshot.id))
                .map_err(|e| Error::internal(e.to_string()))
        }
    }

    #[test]
    fn record_round_trips_and_corruption_is_an_error() {
        let record = Record {
            id: 42,
            kind: Kind::Active,
            parent: "p".into(),
            labels: labels(&[("a", "1"), ("b", "")]),
            created: UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            updated: UNIX_EPOCH + Duration::new(1_700_000_001, 1),
            usage: Usage {
                size: 4096,
                inodes: 3,
            },
        };
        let bytes = record.encode();
        assert_eq!(Record::decode(&bytes), Some(record));
        for cut in 0..bytes.len() {
            assert_eq!(Record::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(Record::decode(&extra), None);
    }

    /// The store against a model: which keys exist, their kinds and parents.
    #[test]
    fn operations_against_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let mut model: BTreeMap<&str, (Kind, &str)> = BTreeMap::new();
        let none = Labels::new();

        store
            .create(Kind::Active, "a", "", &none, make_dir(&store))
            .unwrap();
        model.insert("a", (Kind::Active, ""));
        store
            .commit("c", "a", &none, |_| Ok(Usage::default()))
            .unwrap();
        model.remove("a");
        model.insert("c", (Kind::Committed, ""));
        store
            .create(Kind::View, "v", "c", &none, make_dir(&store))
            .unwrap();
        model.insert("v", (Kind::View, "c"));
        store
            .create(Kind::Active, "b", "c", &none, make_dir(&store))
            .unwrap();
        model.insert("b", (Kind::Active, "c"));

        let table: &[(&str, Category)] = &[
            ("create existing", Category::AlreadyExists),
            ("create on missing parent", Category::NotFound),
            ("create on active parent", Category::FailedPrecondition),
            ("remove parent with children", Category::FailedPrecondition),
            ("commit a view", Category::FailedPrecondition),
            ("remove missing", Category::NotFound),
        ];
        let results = [
            store
                .create(Kind::Active, "a2", "", &none, make_dir(&store))
                .and_then(|_| {
                    store
                        .create(Kind::Active, "a2", "", &none, make_dir(&store))
                        .map(|_| ())
                }),
            store
                .create(Kind::Active, "x", "missing", &none, make_dir(&store))
                .map(|_| ()),
            store
                .create(Kind::Active, "x", "b", &none, make_dir(&store))
                .map(|_| ()),
            store.remove("c"),
            store.commit("n", "v", &none, |_| Ok(Usage::default())),
            store.remove("missing"),
        ];
        model.insert("a2", (Kind::Active, ""));
        for ((what, category), result) in table.iter().zip(results) {
            assert_eq!(result.unwrap_err().category, *category, "{what}");
        }

        let walked: BTreeMap<String, (Kind, String)> = store
            .walk(&[])
            .unwrap()
            .into_iter()
            .map(|info| (info.name, (info.kind, info.parent)))
            .collect();
        let expected: BTreeMap<String, (Kind, String)> = model
            .iter()
            .map(|(k, (kind, parent))| (k.to_string(), (*kind, parent.to_string())))
            .collect();
        assert_eq!(walked, expected);

        store.remove("v").unwrap();
        store.remove("b").unwrap();
        store.remove("c").unwrap();
        assert!(store.stat("c").is_err());
    }

    /// One transaction for a batch: a child before its parent goes, a missing key and a
    /// parent whose child is not in the batch fail alone, and only the removed snapshots'
    /// directories are gone.
    #[test]
    fn remove_many_takes_children_before_parents_and_fails_each_key_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let none = Labels::new();
        let mut ids = BTreeMap::new();
        for (key, parent) in [("p", ""), ("q", "")] {
            let active = format!("{key}-active");
            store
                .create(Kind::Active, &active, parent, &none, make_dir(&store))
                .unwrap();
            store
                .commit(key, &active, &none, |_| Ok(Usage::default()))
                .unwrap();
        }
        for (key, parent) in [("c", "p"), ("d", "q")] {
            let snapshot = store
                .create(Kind::Active, key, parent, &none, make_dir(&store))
                .unwrap();
            ids.insert(key, snapshot.id);
        }
        ids.insert("p", store.stat("p").unwrap().0);
        let keys: Vec<String> = ["c", "p", "missing", "q"].map(String::from).to_vec();
        let results = store.remove_many(&keys).unwrap();
        let categories: Vec<Option<Category>> = results
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.category))
            .collect();
        assert_eq!(
            categories,
            [
                None,
                None,
                Some(Category::NotFound),
                Some(Category::FailedPrecondition)
            ]
        );
        let left: Vec<String> = store
            .walk(&[])
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(left, ["d", "q"]);
        assert!(!store.dir_of(ids["c"]).exists());
        assert!(!store.dir_of(ids["p"]).exists());
        assert!(store.dir_of(ids["d"]).exists());
    }

    /// `detach_many` answers as `remove_many` does once the records are gone, and its
    /// freeing removes every removed snapshot's directory and no other.
    #[tokio::test]
    async fn detach_many_answers_with_the_records_gone_and_frees_the_directories_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let none = Labels::new();
        let mut ids = Vec::new();
        for i in 0..100 {
            let key = format!("s{i}");
            ids.push(
                store
                    .create(Kind::Active, &key, "", &none, make_dir(&store))
                    .unwrap()
                    .id,
            );
        }
        let mut keys: Vec<String> = (0..99).map(|i| format!("s{i}")).collect();
        keys.insert(50, "missing".to_string());
        let (results, freeing) = store.detach_many(&keys).unwrap();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 99);
        assert_eq!(
            results[50].as_ref().unwrap_err().category,
            Category::NotFound
        );
        let left: Vec<String> = store
            .walk(&[])
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(left, ["s99"], "the records are gone when it answers");
        freeing.wait().await.unwrap();
        for id in &ids[..99] {
            assert!(!store.dir_of(*id).exists(), "{id} freed");
        }
        assert!(store.dir_of(ids[99]).exists());
        assert!(
            store.cleanup().unwrap().is_empty(),
            "nothing left for cleanup"
        );
    }

    #[test]
    fn failed_materialize_records_nothing_and_crash_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let error = store
            .create(Kind::Active, "k", "", &Labels::new(), |_| {
                Err(Error::internal("disk full"))
            })
            .unwrap_err();
        assert_eq!(error.message, "disk full");
        assert_eq!(store.stat("k").unwrap_err().category, Category::NotFound);

        // A crash after the rename and before the commit leaves a directory named by an id
        // the counter will hand out again; the next snapshot must not take it over.
        std::fs::create_dir(store.dir_of(1)).unwrap();
        std::fs::write(store.dir_of(1).join("stale"), b"x").unwrap();
        std::fs::create_dir(store.snapshots_dir().join("new-7")).unwrap();
        let snapshot = store
            .create(Kind::Active, "k", "", &Labels::new(), make_dir(&store))
            .unwrap();
        assert_ne!(snapshot.id, 1);
        let removed = store.cleanup().unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!store.dir_of(1).exists());
        assert!(store.dir_of(snapshot.id).exists());
    }
}
