//! `io.containerd.content.v1.content`: the local content store, containerd's on-disk layout
//! and semantics (content-addressed blobs, resumable ingests keyed by ref, atomic commit).
//!
//! # Layout under the plugin root
//!
//! ```text
//! blobs/sha256/<hex>          committed blobs, read-only (0444), mtime = commit time;
//!                             extended attribute `user.plinth.crc32`: the CRC-32 of the
//!                             bytes at commit (Plinth's; see "Whole reads" below)
//! ingest/<sha256(ref) hex>/   one directory per ingest (a ref never becomes a path)
//!     data                    the bytes written so far
//!     ref                     the ref, written last: an ingest without it is incomplete
//!     startedat, updatedat    RFC 3339 timestamps (containerd's format)
//!     total                   the expected size in decimal, when given
//!     expected                the expected digest, when given (Plinth's addition)
//! labels/sha256/<hex>         a blob's labels and times, when it has labels (Plinth's
//!                             addition; containerd keeps labels in its metadata database)
//! removing/<hex>[.labels]     blobs a collection deleted whose space is still being freed
//!                             (Plinth's; emptied on open if a crash left anything there)
//! ```
//!
//! `blobs/` and `ingest/` are containerd's: a containerd content root can be opened here and
//! the other way round. The labels sidecar holds the created and updated times and the labels
//! of a blob; it is written atomically (temporary file, fsync, rename, fsync of the directory)
//! before the blob itself becomes visible, and removed after the blob on delete. A blob
//! without a sidecar has no labels, and its created and updated times are its mtime, which
//! commit sets to the commit time.
//!
//! # Whole reads
//!
//! A read of a whole blob is checked before its last part goes out (the Content service's
//! `Read`). Hashing the bytes to their SHA-256 digest was a fifth of such a read's p99 under
//! load (BENCHMARKS.md, "Load"), so commit also records the bytes' CRC-32 in an extended
//! attribute of the data file, set before the rename that makes the blob visible, and the
//! check compares that instead: a change confined to 32 consecutive bits (a flipped byte)
//! always changes the CRC, any other change passes with odds of one in 2^32, and `plinthctl
//! content verify`, which hashes every byte, is there for those. The digest still decides:
//! when the CRC disagrees (the bytes changed, or the attribute did), the reader hashes the
//! blob; a blob with no attribute (committed before it existed, by containerd, or on a
//! filesystem without user extended attributes) is hashed as before.
//!
//! # Crash consistency
//!
//! Commit is fsync of the data, rename into `blobs/sha256/`, fsync of that directory: a blob is
//! either complete or absent. Ingests are resumed by re-hashing their data, so whatever part
//! of a write reached the disk is where the next writer continues. [`LocalStore::open`]
//! removes ingest directories that lack `ref` or `data` (leftovers of a crash while creating
//! or committing an ingest), temporary sidecar files, sidecars whose blob is gone, and
//! whatever `removing/` still holds.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plinth_core::{InitContext, InitError, Instance, Registration, register, types};
use sha2::Digest as _;

use super::{ContentStore, ContentWriter, Digest, Info, Status, validate_stored_ref};
use crate::error::Error;
use crate::filters::FilterSet;
use crate::namespaces::{Labels, apply_label_paths, validate_label};
use crate::removal::Freeing;

/// How long a second writer waits for the holder of a ref to close it.
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// The buffer used to re-hash an ingest on resume.
const REHASH_BUFFER: usize = 1 << 20;

/// The largest range [`LocalStore::read_at`] copies on the calling (runtime) thread when the
/// page cache holds it: a memory copy of this size takes tens of microseconds.
const INLINE_READ_MAX: usize = 1 << 20;
/// Whether `file` lives on a filesystem that holds every byte in memory (tmpfs, ramfs): a
/// read of it never waits for a disk.
// `f_type` is an i64 here and a u32 or i32 on other architectures, hence the cast.
#[allow(clippy::unnecessary_cast)]
fn in_memory(file: &impl std::os::fd::AsFd) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    rustix::fs::fstatfs(file).is_ok_and(|fs| matches!(fs.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC))
}

const DATA_FILE: &str = "data";
/// The extended attribute of a committed blob that holds the CRC-32 of its bytes at commit,
/// 4 bytes little-endian (see "Whole reads" in the module docs).
pub(crate) const CRC32_XATTR: &str = "user.plinth.crc32";
/// An ingest's ref, total, expected digest and times in one file (one inode per ingest where
/// containerd's layout, below, takes five: on ext4 without a journal every new inode costs a
/// scan past the recently deleted ones, a sixth of the daemon's CPU under load).
const STATUS_FILE: &str = "status";
/// The first line of a status file.
const STATUS_HEADER: &str = "plinth-ingest 1";
// The files of containerd's layout, which ingests written before the status file use.
const REF_FILE: &str = "ref";
const STARTED_AT_FILE: &str = "startedat";
const UPDATED_AT_FILE: &str = "updatedat";
const TOTAL_FILE: &str = "total";
const EXPECTED_FILE: &str = "expected";
const SIDECAR_HEADER: &str = "plinth-content-labels v1";

/// The local content store (containerd's `plugins/content/local`). It knows nothing of
/// namespaces: the metadata plugin layers those on top.
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Refs held by a writer, and since when.
    locks: Mutex<HashMap<String, Instant>>,
    /// Woken whenever a ref lock is released, so that a waiting writer takes it at once.
    released: tokio::sync::Notify,
    /// Serialises the steps that make blobs and sidecars appear or vanish (commit, delete,
    /// label updates), so that "exists?" and "rename" cannot interleave.
    blobs: Mutex<()>,
}

/// The lock on one ref; dropping it releases the ref.
#[derive(Debug)]
struct RefLock {
    inner: Arc<Inner>,
    reference: String,
}

impl Drop for RefLock {
    fn drop(&mut self) {
        lock_ignoring_poison(&self.inner.locks).remove(&self.reference);
        self.inner.released.notify_waiters();
    }
}

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_error(what: impl std::fmt::Display, error: &io::Error) -> Error {
    if crate::error::out_of_space(error) {
        return Error::resource_exhausted(format!(
            "{what}: {error}: free space on that filesystem and write again (an ingest keeps \
             what it had written)"
        ));
    }
    Error::internal(format!("{what}: {error}"))
}

fn is_not_found(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound
}

/// Runs blocking file work off the async worker threads.
async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    crate::blocking("content store task failed", op).await
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl LocalStore {
    /// Opens (or creates) a store under `root`, removing what a crash left behind (see the
    /// module docs); valid ingests are kept so they can be resumed.
    ///
    /// # Errors
    /// Internal error when the directories cannot be created or read.
    pub fn open(root: &Path) -> Result<LocalStore, Error> {
        let inner = Inner {
            root: root.to_path_buf(),
            locks: Mutex::new(HashMap::new()),
            released: tokio::sync::Notify::new(),
            blobs: Mutex::new(()),
        };
        for dir in [inner.blob_dir(), inner.ingest_root(), inner.sidecar_dir()] {
            fs::create_dir_all(&dir)
                .map_err(|e| io_error(format_args!("creating {}", dir.display()), &e))?;
        }
        inner.remove_crash_leftovers()?;
        Ok(LocalStore {
            inner: Arc::new(inner),
        })
    }

    /// The root directory of the store.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Takes the lock on `reference`, waiting up to [`LOCK_WAIT`] for its holder to let go
    /// (woken by the release, not by polling).
    async fn acquire(&self, reference: &str) -> Result<RefLock, Error> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            // Registered before the attempt, so that a release between the attempt and the
            // wait is not missed.
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.inner.try_lock(reference) {
                Ok(lock) => return Ok(lock),
                Err(_) => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return self.inner.try_lock(reference).map_err(|held_for| {
                            Error::unavailable(format!(
                                "ref {reference} locked for {held_for:.1?}: another writer holds it; retry after it closes"
                            ))
                        });
                    }
                }
            }
        }
    }
}

impl Inner {
    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    fn sidecar_dir(&self) -> PathBuf {
        self.root.join("labels").join("sha256")
    }

    fn sidecar_path(&self, digest: &Digest) -> PathBuf {
        self.sidecar_dir().join(digest.hex())
    }

    fn ingest_root(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// The ingest directory of a ref: named by the ref's sha256, never by the ref itself.
    fn ingest_dir(&self, reference: &str) -> PathBuf {
        self.ingest_root()
            .join(Digest::of(reference.as_bytes()).hex())
    }

    fn try_lock(self: &Arc<Self>, reference: &str) -> Result<RefLock, Duration> {
        let mut locks = lock_ignoring_poison(&self.locks);
        if let Some(since) = locks.get(reference) {
            return Err(since.elapsed());
        }
        locks.insert(reference.to_string(), Instant::now());
        Ok(RefLock {
            inner: Arc::clone(self),
            reference: reference.to_string(),
        })
    }

    fn removing_dir(&self) -> PathBuf {
        self.root.join("removing")
    }

    fn remove_crash_leftovers(&self) -> Result<(), Error> {
        let removing = self.removing_dir();
        match fs::remove_dir_all(&removing) {
            Ok(()) => {
                tracing::info!(path = %removing.display(), "removed deleted blobs a crash left")
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(io_error(
                    format_args!("removing {}", removing.display()),
                    &e,
                ));
            }
        }
        let ingest_root = self.ingest_root();
        let entries = fs::read_dir(&ingest_root)
            .map_err(|e| io_error(format_args!("reading {}", ingest_root.display()), &e))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| io_error(format_args!("reading {}", ingest_root.display()), &e))?;
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match read_ingest_status(&path) {
                Ok(Some(_)) => continue,
                // What cannot be read is not removed: its error names it to whoever asks.
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "unreadable ingest kept");
                    continue;
                }
                Ok(None) => {}
            }
            tracing::info!(path = %path.display(), "removing incomplete ingest left by a crash");
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove incomplete ingest");
            }
        }
        let sidecar_dir = self.sidecar_dir();
        let entries = fs::read_dir(&sidecar_dir)
            .map_err(|e| io_error(format_args!("reading {}", sidecar_dir.display()), &e))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| io_error(format_args!("reading {}", sidecar_dir.display()), &e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let orphan = match Digest::parse(&format!("sha256:{name}")) {
                Ok(digest) => !self.blob_path(&digest).exists(),
                Err(_) => name.ends_with(".tmp"),
            };
            if orphan {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing labels file without a blob");
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove labels file");
                }
            }
        }
        Ok(())
    }

    /// The info of a blob whose file metadata is `meta`.
    fn info_of(&self, digest: Digest, meta: &fs::Metadata) -> Info {
        let modified = meta.modified().unwrap_or(UNIX_EPOCH);
        let sidecar = self.read_sidecar(&digest).unwrap_or(Sidecar {
            created_at: modified,
            updated_at: modified,
            labels: Labels::new(),
        });
        Info {
            size: to_i64(meta.len()),
            digest,
            created_at: sidecar.created_at,
            updated_at: sidecar.updated_at,
            labels: sidecar.labels,
        }
    }

    fn blob_metadata(&self, digest: &Digest) -> Result<fs::Metadata, Error> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(meta),
            Ok(_) => Err(Error::internal(format!("{} is not a file", path.display()))),
            Err(e) if is_not_found(&e) => {
                Err(Error::not_found(format!("content {digest}: not found")))
            }
            Err(e) => Err(io_error(format_args!("reading {}", path.display()), &e)),
        }
    }

    fn info(&self, digest: &Digest) -> Result<Info, Error> {
        let meta = self.blob_metadata(digest)?;
        Ok(self.info_of(digest.clone(), &meta))
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
        let _blobs = lock_ignoring_poison(&self.blobs);
        let mut current = self.info(&info.digest)?;
        apply_label_paths(&mut current.labels, &info.labels, fieldpaths)?;
        current.updated_at = SystemTime::now();
        self.write_sidecar(
            &current.digest,
            current.created_at,
            current.updated_at,
            &current.labels,
        )?;
        Ok(current)
    }

    /// Calls `each` with every entry of the blob directory named by a digest (a missing
    /// directory holds none); other names are logged and left out.
    fn each_blob_entry(
        &self,
        mut each: impl FnMut(Digest, &fs::DirEntry) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let dir = self.blob_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(io_error(format_args!("reading {}", dir.display()), &e)),
        };
        for entry in entries {
            let entry =
                entry.map_err(|e| io_error(format_args!("reading {}", dir.display()), &e))?;
            let name = entry.file_name();
            let Ok(digest) = Digest::parse(&format!("sha256:{}", name.to_string_lossy())) else {
                tracing::warn!(path = %entry.path().display(), "ignoring a file that is not named by its digest");
                continue;
            };
            each(digest, &entry)?;
        }
        Ok(())
    }

    fn walk(&self, filter: &FilterSet) -> Result<Vec<Info>, Error> {
        let mut found = Vec::new();
        self.each_blob_entry(|digest, entry| {
            let meta = match entry.metadata() {
                Ok(meta) if meta.is_file() => meta,
                Ok(_) => return Ok(()),
                // Deleted while we walked.
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => {
                    return Err(io_error(
                        format_args!("reading {}", entry.path().display()),
                        &e,
                    ));
                }
            };
            let info = self.info_of(digest, &meta);
            if filter.matches(|path| info_field(&info, path)) {
                found.push(info);
            }
            Ok(())
        })?;
        found.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(found)
    }

    /// The digests the blob directory names, sorted (what `walk` lists without filters,
    /// names only: no `stat` or labels read per blob).
    fn digests(&self) -> Result<Vec<Digest>, Error> {
        let mut found = Vec::new();
        self.each_blob_entry(|digest, entry| {
            // The directory entry's own type (no `stat`); files only, as `walk`.
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                found.push(digest);
            }
            Ok(())
        })?;
        found.sort();
        Ok(found)
    }

    fn delete(&self, digest: &Digest) -> Result<(), Error> {
        let _blobs = lock_ignoring_poison(&self.blobs);
        self.delete_locked(digest)
    }

    /// [`Inner::delete`] of each, under one hold of the blob lock, each file removed by
    /// its name in its already open directory (a garbage collection deletes tens of
    /// thousands: a full path resolved for each would be most of the work).
    fn delete_many(&self, digests: &[Digest]) -> Vec<Result<(), Error>> {
        use rustix::fs::{Mode, OFlags};
        let _blobs = lock_ignoring_poison(&self.blobs);
        let open_dir = |dir: &Path| {
            rustix::fs::open(
                dir,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let blob_dir = match open_dir(&self.blob_dir()) {
            Ok(fd) => fd,
            // No blob directory yet: nothing to delete, each is missing (as `delete` says).
            Err(rustix::io::Errno::NOENT) => {
                return digests.iter().map(|d| self.delete_locked(d)).collect();
            }
            Err(e) => {
                let error = io_error(
                    format_args!("opening {}", self.blob_dir().display()),
                    &e.into(),
                );
                return digests.iter().map(|_| Err(error.clone())).collect();
            }
        };
        let sidecar_dir = open_dir(&self.sidecar_dir()).ok();
        let unlink = |digest: &Digest| self.unlink_by_name(&blob_dir, sidecar_dir.as_ref(), digest);
        // Side by side on several threads: a removal waits mostly for the disk (see
        // `crate::removal`), and frees the file outside the directory's lock.
        crate::removal::on_threads(digests, unlink, || {
            Err(Error::internal("a blob deletion thread panicked"))
        })
    }

    /// [`Inner::delete_many`] that only renames each blob (and its labels file) into
    /// `removing/` under the blob lock, and unlinks them there after it, in the background:
    /// a rename frees no block, so the lock is held for no disk wait, and the answer does not
    /// wait for the discards either.
    fn detach_many(&self, digests: &[Digest]) -> (Vec<Result<(), Error>>, Freeing) {
        use rustix::fs::{Mode, OFlags};
        let open_dir = |dir: &Path| {
            rustix::fs::open(
                dir,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_error(format_args!("opening {}", dir.display()), &e.into()))
        };
        let removing = self.removing_dir();
        let _blobs = lock_ignoring_poison(&self.blobs);
        let dirs = fs::create_dir_all(&removing)
            .map_err(|e| io_error(format_args!("creating {}", removing.display()), &e))
            .and_then(|()| Ok((open_dir(&self.blob_dir())?, open_dir(&removing)?)));
        let (blob_dir, removing_dir) = match dirs {
            Ok(dirs) => dirs,
            Err(error) => {
                return (
                    digests.iter().map(|_| Err(error.clone())).collect(),
                    Freeing::done(),
                );
            }
        };
        let sidecar_dir = open_dir(&self.sidecar_dir()).ok();
        let mut results = Vec::with_capacity(digests.len());
        let mut detached = Vec::with_capacity(digests.len());
        for digest in digests {
            match rustix::fs::renameat(&blob_dir, digest.hex(), &removing_dir, digest.hex()) {
                Ok(()) => {
                    detached.push(digest.hex().to_string());
                    results.push(Ok(()));
                }
                Err(rustix::io::Errno::NOENT) => {
                    results.push(Err(Error::not_found(format!(
                        "content {digest}: not found"
                    ))));
                    continue;
                }
                Err(e) => {
                    let path = self.blob_path(digest);
                    results.push(Err(io_error(
                        format_args!("moving {} into {}", path.display(), removing.display()),
                        &e.into(),
                    )));
                    continue;
                }
            }
            if let Some(dir) = &sidecar_dir {
                let labels = format!("{}.labels", digest.hex());
                match rustix::fs::renameat(dir, digest.hex(), &removing_dir, &labels) {
                    Ok(()) => detached.push(labels),
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => {
                        let path = self.sidecar_path(digest);
                        tracing::warn!(path = %path.display(), error = %e, "could not remove labels file");
                    }
                }
            }
        }
        drop(_blobs);
        let freeing = crate::removal::in_background(detached, move |name: &String| {
            use rustix::fs::AtFlags;
            match rustix::fs::unlinkat(&removing_dir, name.as_str(), AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => {
                    let path = removing.join(name);
                    tracing::warn!(path = %path.display(), error = %e, "could not free a deleted blob; the next open of the store removes it");
                    Err(io_error(
                        format_args!(
                            "freeing deleted blob {} (the next open of the store removes it)",
                            path.display()
                        ),
                        &e.into(),
                    ))
                }
            }
        });
        (results, freeing)
    }

    /// Removes one blob and its labels file by name in their open directories.
    fn unlink_by_name(
        &self,
        blob_dir: &rustix::fd::OwnedFd,
        sidecar_dir: Option<&rustix::fd::OwnedFd>,
        digest: &Digest,
    ) -> Result<(), Error> {
        use rustix::fs::AtFlags;
        match rustix::fs::unlinkat(blob_dir, digest.hex(), AtFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) => {
                return Err(Error::not_found(format!("content {digest}: not found")));
            }
            Err(e) => {
                let path = self.blob_path(digest);
                return Err(io_error(
                    format_args!("removing {}", path.display()),
                    &e.into(),
                ));
            }
        }
        if let Some(dir) = sidecar_dir {
            match rustix::fs::unlinkat(dir, digest.hex(), AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    let path = self.sidecar_path(digest);
                    tracing::warn!(path = %path.display(), error = %e, "could not remove labels file");
                }
            }
        }
        Ok(())
    }

    /// Deletes a blob and its labels file; the caller holds the blob lock.
    fn delete_locked(&self, digest: &Digest) -> Result<(), Error> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {
                return Err(Error::not_found(format!("content {digest}: not found")));
            }
            Err(e) => return Err(io_error(format_args!("removing {}", path.display()), &e)),
        }
        let sidecar = self.sidecar_path(digest);
        if let Err(e) = fs::remove_file(&sidecar) {
            if !is_not_found(&e) {
                // Harmless: the next commit of this digest replaces it, and open removes it.
                tracing::warn!(path = %sidecar.display(), error = %e, "could not remove labels file");
            }
        }
        Ok(())
    }

    fn read_at(&self, digest: &Digest, offset: u64, length: usize) -> Result<Vec<u8>, Error> {
        let path = self.blob_path(digest);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if is_not_found(&e) => {
                return Err(Error::not_found(format!("content {digest}: not found")));
            }
            Err(e) => return Err(io_error(format_args!("opening {}", path.display()), &e)),
        };
        let size = file
            .metadata()
            .map_err(|e| io_error(format_args!("reading {}", path.display()), &e))?
            .len();
        if offset > size {
            return Err(Error::invalid(format!(
                "offset {offset} is past the end of {digest} ({size} bytes)"
            )));
        }
        // Never allocate more than the blob holds, whatever length was asked for.
        let wanted = (size - offset).min(u64::try_from(length).unwrap_or(u64::MAX));
        let mut buffer = Vec::with_capacity(usize::try_from(wanted).unwrap_or(usize::MAX));
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.take(wanted).read_to_end(&mut buffer))
            .map_err(|e| io_error(format_args!("reading {}", path.display()), &e))?;
        Ok(buffer)
    }

    /// [`read_at`](Inner::read_at) without ever waiting for the disk: the whole range when
    /// the kernel has the blob's path in its lookup cache and the bytes in its page cache
    /// (the usual case for a blob written or read recently), `None` otherwise (and on any
    /// error, which the blocking read then reports with its context). The path is opened
    /// with `RESOLVE_CACHED` and read with `RWF_NOWAIT`, so the calling thread — a runtime
    /// thread serving calls — is never parked in I/O; kernels and filesystems without
    /// either flag answer `EAGAIN`/`EINVAL`/`EOPNOTSUPP`, which is `None` too, except on
    /// tmpfs and ramfs, which refuse `RWF_NOWAIT` but keep every byte in memory: there the
    /// read goes without it.
    fn read_cached(&self, digest: &Digest, offset: u64, length: usize) -> Option<Vec<u8>> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        use rustix::io::ReadWriteFlags;
        debug_assert!(length <= INLINE_READ_MAX);
        let path = self.blob_path(digest);
        let file = rustix::fs::openat2(
            rustix::fs::CWD,
            &path,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::CACHED,
        )
        .ok()?;
        let size = u64::try_from(rustix::fs::fstat(&file).ok()?.st_size).ok()?;
        if offset > size {
            return None;
        }
        let wanted = usize::try_from((size - offset).min(u64::try_from(length).ok()?)).ok()?;
        let mut buffer = vec![0; wanted];
        let mut filled = 0;
        let mut flags = ReadWriteFlags::NOWAIT;
        while filled < wanted {
            let read = match rustix::io::preadv2(
                &file,
                &mut [io::IoSliceMut::new(&mut buffer[filled..])],
                offset + filled as u64,
                flags,
            ) {
                Ok(read) => read,
                // tmpfs and ramfs refuse the flag, and have no disk to wait for.
                Err(rustix::io::Errno::OPNOTSUPP) if !flags.is_empty() && in_memory(&file) => {
                    flags = ReadWriteFlags::empty();
                    continue;
                }
                Err(_) => return None,
            };
            if read == 0 {
                // Shorter than its size said: the blocking read reports it.
                return None;
            }
            filled += read;
        }
        Some(buffer)
    }

    /// The CRC-32 commit recorded for the blob (see "Whole reads" in the module docs), when
    /// it has one and the kernel has its path in its lookup cache: opened with
    /// `RESOLVE_CACHED` as in [`read_cached`](Inner::read_cached), and the attribute is read
    /// from the cached inode (on ext4 inside the inode itself), so the calling thread does
    /// not wait for the disk in the usual case. `None` otherwise: the reader then hashes.
    fn recorded_crc32(&self, digest: &Digest) -> Option<u32> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let file = rustix::fs::openat2(
            rustix::fs::CWD,
            self.blob_path(digest),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::CACHED,
        )
        .ok()?;
        let mut value = [0u8; 4];
        match rustix::fs::fgetxattr(&file, CRC32_XATTR, &mut value) {
            Ok(4) => Some(u32::from_le_bytes(value)),
            _ => None,
        }
    }

    fn status(&self, reference: &str) -> Result<Status, Error> {
        match read_ingest_status(&self.ingest_dir(reference))? {
            Some(status) if status.reference == reference => Ok(status),
            _ => Err(Error::not_found(format!(
                "ingest ref {reference:?}: not found"
            ))),
        }
    }

    fn list_statuses(&self, filter: &FilterSet) -> Result<Vec<Status>, Error> {
        let root = self.ingest_root();
        let entries = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(io_error(format_args!("reading {}", root.display()), &e)),
        };
        let mut statuses = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| io_error(format_args!("reading {}", root.display()), &e))?;
            // Ingests that vanish or are not complete while we list are skipped.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(status) = read_ingest_status(&entry.path())? else {
                continue;
            };
            if filter.matches(|path| match path {
                [field] if field == "ref" => Some(status.reference.clone()),
                _ => None,
            }) {
                statuses.push(status);
            }
        }
        statuses.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(statuses)
    }

    fn abort(&self, reference: &str) -> Result<(), Error> {
        let dir = self.ingest_dir(reference);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::not_found(format!(
                "ingest ref {reference:?}: not found"
            ))),
            Err(e) => Err(io_error(format_args!("removing {}", dir.display()), &e)),
        }
    }

    /// Opens or resumes the ingest of `lock.reference`; the caller holds the lock.
    fn open_ingest(
        self: &Arc<Self>,
        lock: RefLock,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<WriterState, Error> {
        let reference = lock.reference.clone();
        if let Some(expected) = &expected {
            if self.blob_path(expected).exists() {
                return Err(Error::already_exists(format!(
                    "content {expected}: already exists"
                )));
            }
        }
        let dir = self.ingest_dir(&reference);
        if let Some(state) = self.resume_ingest(&dir, &reference, total, expected.as_ref())? {
            return Ok(WriterState {
                lock: Some(lock),
                ..state
            });
        }
        self.create_ingest(lock, dir, total, expected)
    }

    /// The state of a valid existing ingest of `reference`, or `None` when there is none (or
    /// one for another blob, which is then started over as containerd does).
    fn resume_ingest(
        &self,
        dir: &Path,
        reference: &str,
        total: i64,
        expected: Option<&Digest>,
    ) -> Result<Option<WriterState>, Error> {
        let Some(mut status) = read_ingest_status(dir)? else {
            return Ok(None);
        };
        if status.reference != reference {
            tracing::warn!(path = %dir.display(), "ingest holds another ref; starting over");
            return Ok(None);
        }
        if total > 0 && status.total > 0 && total != status.total {
            tracing::info!(
                reference,
                total,
                previous = status.total,
                "ingest total changed; starting over"
            );
            return Ok(None);
        }
        if let (Some(wanted), Some(previous)) = (expected, &status.expected) {
            if wanted != previous {
                tracing::info!(reference, %wanted, %previous, "ingest expected digest changed; starting over");
                return Ok(None);
            }
        }
        // Rewritten only when something changed: every write is an inode (see STATUS_FILE).
        let mut changed = false;
        if status.total == 0 && total > 0 {
            status.total = total;
            changed = true;
        }
        if status.expected.is_none()
            && let Some(wanted) = expected
        {
            status.expected = Some(wanted.clone());
            changed = true;
        }
        if changed {
            write_status(dir, &status)?;
        }
        let data = dir.join(DATA_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data)
            .map_err(|e| io_error(format_args!("opening {}", data.display()), &e))?;
        // Re-hash what reached the disk: the writer continues exactly there.
        let mut hasher = sha2::Sha256::new();
        let mut crc32 = crc32fast::Hasher::new();
        let mut buffer = vec![0; REHASH_BUFFER];
        let mut offset = 0u64;
        loop {
            let n = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(format_args!("reading {}", data.display()), &e)),
            };
            hasher.update(&buffer[..n]);
            crc32.update(&buffer[..n]);
            offset += n as u64;
        }
        Ok(Some(WriterState {
            lock: None,
            dir: dir.to_path_buf(),
            file: Some(file),
            hasher,
            crc32,
            offset,
            reference: status.reference,
            total: status.total,
            expected: status.expected,
            started_at: status.started_at,
            updated_at: status.updated_at,
            broken: None,
        }))
    }

    fn create_ingest(
        &self,
        lock: RefLock,
        dir: PathBuf,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<WriterState, Error> {
        let context =
            |e: io::Error| io_error(format_args!("creating ingest {}", dir.display()), &e);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(context(e)),
        }
        fs::create_dir_all(&dir).map_err(context)?;
        let data = dir.join(DATA_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&data)
            .map_err(context)?;
        let now = SystemTime::now();
        // Last: an ingest directory with a status file is complete.
        write_status(
            &dir,
            &Status {
                reference: lock.reference.clone(),
                offset: 0,
                total,
                expected: expected.clone(),
                started_at: now,
                updated_at: now,
            },
        )?;
        Ok(WriterState {
            reference: lock.reference.clone(),
            lock: Some(lock),
            dir,
            file: Some(file),
            hasher: sha2::Sha256::new(),
            crc32: crc32fast::Hasher::new(),
            offset: 0,
            total,
            expected,
            started_at: now,
            updated_at: now,
            broken: None,
        })
    }

    fn read_sidecar(&self, digest: &Digest) -> Option<Sidecar> {
        let path = self.sidecar_path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if is_not_found(&e) => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not read labels file");
                return None;
            }
        };
        let sidecar = Sidecar::decode(&bytes);
        if sidecar.is_none() {
            tracing::warn!(path = %path.display(), "labels file is corrupt; ignoring it");
        }
        sidecar
    }

    /// Writes a sidecar durably (file and directory synced); the caller holds `blobs`.
    fn write_sidecar(
        &self,
        digest: &Digest,
        created_at: SystemTime,
        updated_at: SystemTime,
        labels: &Labels,
    ) -> Result<(), Error> {
        let sidecar = Sidecar {
            created_at,
            updated_at,
            labels: labels.clone(),
        };
        write_file_atomic(&self.sidecar_path(digest), &sidecar.encode(), true)?;
        sync_dir(&self.sidecar_dir())
    }

    fn remove_sidecar(&self, digest: &Digest) -> Result<(), Error> {
        let path = self.sidecar_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(io_error(format_args!("removing {}", path.display()), &e)),
        }
    }
}

/// The value of a field of a blob's info, for filters (containerd's `AdaptInfo`, plus
/// `size`).
fn info_field(info: &Info, path: &[String]) -> Option<String> {
    match path {
        [field] if field == "digest" => Some(info.digest.to_string()),
        [field] if field == "size" => Some(info.size.to_string()),
        [field, key @ ..] if field == "labels" && !key.is_empty() => {
            info.labels.get(&key.join(".")).cloned()
        }
        _ => None,
    }
}

/// The status of the ingest in `dir`, or `None` when it is missing or incomplete.
fn read_ingest_status(dir: &Path) -> Result<Option<Status>, Error> {
    let read = |name: &str| -> Result<Option<String>, Error> {
        let path = dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(io_error(format_args!("reading {}", path.display()), &e)),
        }
    };
    let status = read(STATUS_FILE)?;
    let (reference, file) = match &status {
        Some(text) => {
            let Some(parsed) = parse_status(text) else {
                // Half written when the machine went down (it is renamed into place unsynced),
                // or not ours: no ingest, as one without a ref file; a writer starts over.
                tracing::warn!(
                    path = %dir.join(STATUS_FILE).display(),
                    "ingest status unreadable; the ingest starts over"
                );
                return Ok(None);
            };
            (parsed.reference.clone(), Some(parsed))
        }
        None => match read(REF_FILE)? {
            Some(reference) => (reference, None),
            None => return Ok(None),
        },
    };
    let data = dir.join(DATA_FILE);
    let meta = match fs::metadata(&data) {
        Ok(meta) => meta,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(io_error(format_args!("reading {}", data.display()), &e)),
    };
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    if let Some(parsed) = file {
        // Writes do not rewrite the status; the data file's mtime may be newer.
        return Ok(Some(Status {
            offset: to_i64(meta.len()),
            updated_at: parsed.updated_at.max(modified),
            ..parsed
        }));
    }
    let started_at = read(STARTED_AT_FILE)?
        .and_then(|text| parse_time(&text))
        .unwrap_or(modified);
    // Writes do not touch updatedat; the data file's mtime may be newer (as in containerd).
    let updated_at = read(UPDATED_AT_FILE)?
        .and_then(|text| parse_time(&text))
        .map_or(modified, |written| written.max(modified));
    let total = read(TOTAL_FILE)?
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    let expected = read(EXPECTED_FILE)?.and_then(|text| Digest::parse(text.trim()).ok());
    Ok(Some(Status {
        reference,
        offset: to_i64(meta.len()),
        total,
        expected,
        started_at,
        updated_at,
    }))
}

/// Writes an ingest's status file (its offset is the data file's size, not recorded).
fn write_status(dir: &Path, status: &Status) -> Result<(), Error> {
    let mut text = format!(
        "{STATUS_HEADER}\ntotal {}\nstarted {}\nupdated {}\n",
        status.total,
        format_time(status.started_at),
        format_time(status.updated_at)
    );
    if let Some(expected) = &status.expected {
        text.push_str(&format!("expected {expected}\n"));
    }
    // Last, to the end of the file: a ref may hold any character.
    text.push_str("ref ");
    text.push_str(&status.reference);
    write_file_atomic(&dir.join(STATUS_FILE), text.as_bytes(), false)
}

/// The status [`write_status`] wrote (offset 0), or `None` for anything else.
fn parse_status(text: &str) -> Option<Status> {
    let (head, reference) = text.split_once("\nref ")?;
    let mut lines = head.lines();
    if lines.next()? != STATUS_HEADER {
        return None;
    }
    let (mut total, mut expected, mut started_at, mut updated_at) = (None, None, None, None);
    for line in lines {
        let (key, value) = line.split_once(' ')?;
        match key {
            "total" => total = Some(value.parse().ok()?),
            "expected" => expected = Some(Digest::parse(value).ok()?),
            "started" => started_at = Some(parse_time(value)?),
            "updated" => updated_at = Some(parse_time(value)?),
            _ => return None,
        }
    }
    Some(Status {
        reference: reference.to_string(),
        offset: 0,
        total: total?,
        expected,
        started_at: started_at?,
        updated_at: updated_at?,
    })
}

/// Writes `path` through a temporary file and a rename, so readers see the old or the new
/// content, never a part; with `sync`, the file is synced before the rename.
fn write_file_atomic(path: &Path, data: &[u8], sync: bool) -> Result<(), Error> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let result = File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(data)?;
            if sync { file.sync_all() } else { Ok(()) }
        })
        .and_then(|()| fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(format_args!("writing {}", path.display()), &e)
    })
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(format_args!("syncing directory {}", dir.display()), &e))
}

/// A blob's labels file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sidecar {
    created_at: SystemTime,
    updated_at: SystemTime,
    labels: Labels,
}

impl Sidecar {
    /// `header`, `created <time>`, `updated <time>`, then per label `label <key length>
    /// <value length>` followed by the key and value bytes and a newline: any bytes survive.
    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "{SIDECAR_HEADER}\ncreated {}\nupdated {}\n",
            format_time(self.created_at),
            format_time(self.updated_at)
        )
        .into_bytes();
        for (key, value) in &self.labels {
            out.extend_from_slice(format!("label {} {}\n", key.len(), value.len()).as_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(value.as_bytes());
            out.push(b'\n');
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Sidecar> {
        let mut rest = bytes;
        let mut line = || -> Option<&str> {
            let end = rest.iter().position(|&b| b == b'\n')?;
            let line = std::str::from_utf8(&rest[..end]).ok();
            rest = &rest[end + 1..];
            line
        };
        if line()? != SIDECAR_HEADER {
            return None;
        }
        let created_at = parse_time(line()?.strip_prefix("created ")?)?;
        let updated_at = parse_time(line()?.strip_prefix("updated ")?)?;
        let mut labels = Labels::new();
        while !rest.is_empty() {
            let end = rest.iter().position(|&b| b == b'\n')?;
            let header = std::str::from_utf8(&rest[..end]).ok()?;
            let (key_length, value_length) = header.strip_prefix("label ")?.split_once(' ')?;
            let key_length: usize = key_length.parse().ok()?;
            let value_length: usize = value_length.parse().ok()?;
            rest = &rest[end + 1..];
            let body_length = key_length.checked_add(value_length)?;
            if rest.len() <= body_length || rest[body_length] != b'\n' {
                return None;
            }
            let key = std::str::from_utf8(&rest[..key_length]).ok()?;
            let value = std::str::from_utf8(&rest[key_length..body_length]).ok()?;
            labels.insert(key.to_string(), value.to_string());
            rest = &rest[body_length + 1..];
        }
        Some(Sidecar {
            created_at,
            updated_at,
            labels,
        })
    }
}

/// Formats a time as RFC 3339 in UTC with nanoseconds, which Go's `time.UnmarshalText`
/// (containerd's timestamp files) reads. A time outside years -9999..=9999 (no file system
/// hands out such a time) is written as the nearest one inside.
fn format_time(time: SystemTime) -> String {
    let timestamp = jiff::Timestamp::try_from(time).unwrap_or_else(|_| {
        if time < UNIX_EPOCH {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        }
    });
    format!("{timestamp:.9}")
}

/// Parses RFC 3339 (`2006-01-02T15:04:05[.frac](Z|±hh:mm)`), as this store and Go's
/// `time.MarshalText` write it; `None` for anything else.
fn parse_time(text: &str) -> Option<SystemTime> {
    let timestamp: jiff::Timestamp = text.trim().parse().ok()?;
    Some(SystemTime::from(timestamp))
}

#[tonic::async_trait]
impl ContentStore for LocalStore {
    async fn info(&self, digest: &Digest) -> Result<Info, Error> {
        let (inner, digest) = (Arc::clone(&self.inner), digest.clone());
        blocking(move || inner.info(&digest)).await
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
        let (inner, fieldpaths) = (Arc::clone(&self.inner), fieldpaths.to_vec());
        blocking(move || inner.update(info, &fieldpaths)).await
    }

    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        let filter = FilterSet::parse_all(filters).map_err(|e| Error::invalid(e.to_string()))?;
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.walk(&filter)).await
    }

    async fn delete(&self, digest: &Digest) -> Result<(), Error> {
        let (inner, digest) = (Arc::clone(&self.inner), digest.clone());
        blocking(move || inner.delete(&digest)).await
    }

    async fn digests(&self) -> Result<Vec<Digest>, Error> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.digests()).await
    }

    async fn delete_many(&self, digests: &[Digest]) -> Vec<Result<(), Error>> {
        let (inner, owned) = (Arc::clone(&self.inner), digests.to_vec());
        match blocking(move || Ok(inner.delete_many(&owned))).await {
            Ok(results) => results,
            Err(e) => digests.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn detach_many(&self, digests: &[Digest]) -> (Vec<Result<(), Error>>, Freeing) {
        let (inner, owned) = (Arc::clone(&self.inner), digests.to_vec());
        match blocking(move || Ok(inner.detach_many(&owned))).await {
            Ok(answer) => answer,
            Err(e) => (
                digests.iter().map(|_| Err(e.clone())).collect(),
                Freeing::done(),
            ),
        }
    }

    async fn read_at(&self, digest: &Digest, offset: u64, length: usize) -> Result<Vec<u8>, Error> {
        // A range the page cache holds is copied on this thread: through the blocking pool
        // a read would queue behind bulk work (ingest writes, commits) for longer than the
        // copy takes. Larger ranges, and whatever the cache does not hold, go to the pool.
        if length <= INLINE_READ_MAX
            && let Some(data) = self.inner.read_cached(digest, offset, length)
        {
            return Ok(data);
        }
        let (inner, digest) = (Arc::clone(&self.inner), digest.clone());
        blocking(move || inner.read_at(&digest, offset, length)).await
    }

    async fn recorded_crc32(&self, digest: &Digest) -> Option<u32> {
        self.inner.recorded_crc32(digest)
    }

    async fn status(&self, reference: &str) -> Result<Status, Error> {
        validate_stored_ref(reference)?;
        let (inner, reference) = (Arc::clone(&self.inner), reference.to_string());
        blocking(move || inner.status(&reference)).await
    }

    async fn list_statuses(&self, filters: &[String]) -> Result<Vec<Status>, Error> {
        let filter = FilterSet::parse_all(filters).map_err(|e| Error::invalid(e.to_string()))?;
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.list_statuses(&filter)).await
    }

    async fn abort(&self, reference: &str) -> Result<(), Error> {
        validate_stored_ref(reference)?;
        // Holding the lock keeps a writer from opening the ingest while it is removed.
        let lock = self.inner.try_lock(reference).map_err(|held_for| {
            Error::unavailable(format!(
                "ref {reference} locked for {held_for:.1?}: close its writer before aborting"
            ))
        })?;
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let result = inner.abort(&lock.reference);
            drop(lock);
            result
        })
        .await
    }

    async fn writer(
        &self,
        reference: &str,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<Box<dyn ContentWriter>, Error> {
        validate_stored_ref(reference)?;
        if total < 0 {
            return Err(Error::invalid(format!(
                "total {total} must not be negative"
            )));
        }
        let lock = self.acquire(reference).await?;
        let inner = Arc::clone(&self.inner);
        let state = blocking(move || inner.open_ingest(lock, total, expected)).await?;
        Ok(Box::new(LocalWriter {
            state: Arc::new(Mutex::new(state)),
            inner: Arc::clone(&self.inner),
        }))
    }
}

/// A writer of the local store. Its state (with the ref lock) is shared with the blocking
/// task doing its I/O, so the lock is released only when neither can touch the ingest any
/// more: on close, on commit, or when both are dropped.
#[derive(Debug)]
struct LocalWriter {
    state: Arc<Mutex<WriterState>>,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct WriterState {
    /// `None` once released (closed or committed).
    lock: Option<RefLock>,
    dir: PathBuf,
    /// `None` once closed or committed.
    file: Option<File>,
    hasher: sha2::Sha256,
    /// The CRC-32 of the same bytes, recorded at commit.
    crc32: crc32fast::Hasher,
    offset: u64,
    reference: String,
    total: i64,
    expected: Option<Digest>,
    started_at: SystemTime,
    updated_at: SystemTime,
    /// Set when a failed write could not be undone: the writer refuses further work, and
    /// the next writer re-hashes what is on disk.
    broken: Option<String>,
}

impl WriterState {
    fn file(&mut self) -> Result<&mut File, Error> {
        if let Some(reason) = &self.broken {
            return Err(Error::failed_precondition(format!(
                "writer for ref {} is unusable after {reason}; close it and open a new one",
                self.reference
            )));
        }
        let reference = &self.reference;
        self.file.as_mut().ok_or_else(|| {
            Error::failed_precondition(format!("writer for ref {reference} is closed or committed"))
        })
    }

    fn status(&self) -> Status {
        Status {
            reference: self.reference.clone(),
            offset: to_i64(self.offset),
            total: self.total,
            expected: self.expected.clone(),
            started_at: self.started_at,
            updated_at: self.updated_at,
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let offset = self.offset;
        let path = self.dir.join(DATA_FILE);
        let file = self.file()?;
        if let Err(e) = file.write_all(data) {
            // Undo a partial write so that file and hash agree.
            if let Err(undo) = file
                .set_len(offset)
                .and_then(|()| file.seek(SeekFrom::Start(offset)).map(drop))
            {
                self.broken = Some(format!(
                    "a failed write ({e}) that could not be undone ({undo})"
                ));
            }
            return Err(io_error(format_args!("writing {}", path.display()), &e));
        }
        self.hasher.update(data);
        self.crc32.update(data);
        self.offset += data.len() as u64;
        self.updated_at = SystemTime::now();
        Ok(())
    }

    fn truncate(&mut self, size: i64) -> Result<(), Error> {
        if size != 0 {
            return Err(Error::invalid(format!(
                "cannot truncate to {size} bytes: only 0 is supported"
            )));
        }
        let path = self.dir.join(DATA_FILE);
        let file = self.file()?;
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(|e| io_error(format_args!("truncating {}", path.display()), &e))?;
        self.hasher = sha2::Sha256::new();
        self.crc32 = crc32fast::Hasher::new();
        self.offset = 0;
        self.updated_at = SystemTime::now();
        Ok(())
    }

    fn commit(
        &mut self,
        inner: &Inner,
        size: i64,
        expected: Option<Digest>,
        labels: &Labels,
    ) -> Result<Digest, Error> {
        for (key, value) in labels {
            validate_label(key, value)?;
        }
        if size < 0 {
            return Err(Error::invalid(format!(
                "commit size {size} must not be negative"
            )));
        }
        let data = self.dir.join(DATA_FILE);
        let file = self.file()?;
        file.sync_all()
            .map_err(|e| io_error(format_args!("syncing {}", data.display()), &e))?;
        let actual_size = file
            .metadata()
            .map_err(|e| io_error(format_args!("reading {}", data.display()), &e))?
            .len();
        if size > 0 && u64::try_from(size).ok() != Some(actual_size) {
            return Err(Error::failed_precondition(format!(
                "unexpected commit size {actual_size}, expected {size}"
            )));
        }
        let digest = Digest::from_hasher(self.hasher.clone());
        if let Some(wanted) = expected.as_ref().or(self.expected.as_ref()) {
            if *wanted != digest {
                return Err(Error::failed_precondition(format!(
                    "unexpected commit digest {digest}, expected {wanted}"
                )));
            }
        }

        let _blobs = lock_ignoring_poison(&inner.blobs);
        let target = inner.blob_path(&digest);
        if target.exists() {
            self.file = None;
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                tracing::warn!(path = %self.dir.display(), error = %e, "could not remove ingest");
            }
            // Only now: a writer that takes the ref next must not see this ingest go away.
            self.finish();
            return Err(Error::already_exists(format!(
                "content {digest}: already exists"
            )));
        }
        let now = SystemTime::now();
        let crc32 = self.crc32.clone().finalize().to_le_bytes();
        let file = self.file()?;
        if let Err(e) = file.set_modified(now) {
            tracing::warn!(%digest, error = %e, "could not set the blob's modification time");
        }
        // Before the rename, so that a visible blob has it or never had it. Without it (a
        // filesystem without user attributes) whole reads hash the blob instead.
        if let Err(e) =
            rustix::fs::fsetxattr(&*file, CRC32_XATTR, &crc32, rustix::fs::XattrFlags::empty())
        {
            tracing::debug!(%digest, error = %e, "could not record the blob's CRC-32");
        }
        // The sidecar goes first: a visible blob never lacks the labels it was committed with.
        if labels.is_empty() {
            inner.remove_sidecar(&digest)?;
        } else {
            inner.write_sidecar(&digest, now, now, labels)?;
        }
        fs::rename(&data, &target).map_err(|e| {
            io_error(
                format_args!("moving {} to {}", data.display(), target.display()),
                &e,
            )
        })?;
        // From here on the blob is committed; the rest is tidying up. The ref is released
        // last, so that a writer taking it next never sees this ingest being removed.
        let synced = sync_dir(&inner.blob_dir());
        if let Some(file) = self.file.take() {
            let readonly = file.metadata().map(|meta| {
                let mut permissions = meta.permissions();
                permissions.set_readonly(true);
                permissions
            });
            if let Err(e) = readonly.and_then(|permissions| file.set_permissions(permissions)) {
                tracing::warn!(%digest, error = %e, "could not make the blob read-only");
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(path = %self.dir.display(), error = %e, "could not remove committed ingest");
        }
        self.finish();
        synced.map(|()| digest)
    }

    /// Ends the writer: no more file, ref released.
    fn finish(&mut self) {
        self.file = None;
        self.lock = None;
    }

    fn close(&mut self) -> Result<(), Error> {
        let result = match self.file.take() {
            Some(file) => file
                .sync_all()
                .map_err(|e| {
                    io_error(
                        format_args!("syncing {}", self.dir.join(DATA_FILE).display()),
                        &e,
                    )
                })
                .and_then(|()| write_status(&self.dir, &self.status())),
            None => Ok(()),
        };
        self.finish();
        result
    }
}

impl LocalWriter {
    /// Runs `op` on the writer's state in a blocking task.
    async fn with_state<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut WriterState, &Inner) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (state, inner) = (Arc::clone(&self.state), Arc::clone(&self.inner));
        blocking(move || op(&mut *lock_writer(&state)?, &inner)).await
    }
}

/// The writer's state, for the task that does its I/O.
fn lock_writer(
    state: &Mutex<WriterState>,
) -> Result<std::sync::MutexGuard<'_, WriterState>, Error> {
    state.lock().map_err(|_| {
        Error::internal("content writer failed earlier (a task panicked); open a new one")
    })
}

#[tonic::async_trait]
impl ContentWriter for LocalWriter {
    async fn status(&self) -> Result<Status, Error> {
        Ok(lock_ignoring_poison(&self.state).status())
    }

    fn digest(&self) -> Digest {
        Digest::from_hasher(lock_ignoring_poison(&self.state).hasher.clone())
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write_owned(data.to_vec()).await
    }

    async fn write_owned(&mut self, data: Vec<u8>) -> Result<(), Error> {
        // No sync here: on the ingest pool, never queued behind the commits' syncs.
        let state = Arc::clone(&self.state);
        crate::blocking_ingest("content store task failed", move || {
            lock_writer(&state)?.write(&data)
        })
        .await
    }

    async fn truncate(&mut self, size: i64) -> Result<(), Error> {
        self.with_state(move |state, _| state.truncate(size)).await
    }

    async fn commit(
        &mut self,
        size: i64,
        expected: Option<Digest>,
        labels: Labels,
    ) -> Result<Digest, Error> {
        self.with_state(move |state, inner| state.commit(inner, size, expected, &labels))
            .await
    }

    async fn close(self: Box<Self>) -> Result<(), Error> {
        self.with_state(|state, _| state.close()).await
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let root = ctx.root().to_path_buf();
    fs::create_dir_all(&root)
        .map_err(|e| InitError::msg(format!("creating {}: {e}", root.display())))?;
    let store = Arc::new(LocalStore::open(&root)?);
    ctx.meta_mut()
        .exports
        .insert("root".to_string(), root.display().to_string());
    Ok(Instance::new(Arc::clone(&store) as Arc<dyn ContentStore>).with(store))
}

register!(Registration::new(types::CONTENT, "content", init));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::testsuite;
    use plinth_core::Category;

    fn open(root: &Path) -> Arc<dyn ContentStore> {
        Arc::new(LocalStore::open(root).expect("open local store"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite() {
        testsuite::run(|root| async move {
            LocalStore::open(&root).map(|store| Arc::new(store) as Arc<dyn ContentStore>)
        })
        .await;
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LocalStore>();
    }

    fn files_under(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn committed(store: &LocalStore, blob: &[u8]) -> Digest {
        let mut writer = store.writer("cached", 0, None).await.unwrap();
        writer.write(blob).await.unwrap();
        let digest = writer.commit(0, None, Labels::new()).await.unwrap();
        writer.close().await.unwrap();
        digest
    }

    /// A blob just written is in the page cache: the cached read serves every range of it
    /// as `read_at` would, and declines what only the blocking read can answer (a missing
    /// blob, an offset past the end) so that it reports the error.
    #[tokio::test]
    async fn a_cached_read_serves_every_range_and_declines_the_errors() {
        cached_reads_in(tempfile::tempdir().unwrap()).await;
    }

    /// The same on tmpfs, which refuses `RWF_NOWAIT` and holds every byte in memory.
    #[tokio::test]
    async fn a_cached_read_serves_every_range_on_tmpfs() {
        let dir = tempfile::tempdir_in("/dev/shm")
            .expect("this test needs /dev/shm, a tmpfs, as every Linux system has");
        let file = std::fs::File::create(dir.path().join("probe")).unwrap();
        assert!(in_memory(&file), "/dev/shm is not a tmpfs here");
        cached_reads_in(dir).await;
    }

    /// tmpfs is told from the disk the source tree is on (a tree on a tmpfs fails this test).
    #[test]
    fn in_memory_tells_tmpfs_from_a_disk() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        assert!(in_memory(
            &std::fs::File::create(dir.path().join("probe")).unwrap()
        ));
        let source = std::fs::File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        assert!(
            !in_memory(&source.unwrap()),
            "the source tree is on a tmpfs"
        );
    }

    async fn cached_reads_in(dir: tempfile::TempDir) {
        let store = LocalStore::open(dir.path()).unwrap();
        let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let digest = committed(&store, &blob).await;
        let size = blob.len() as u64;
        for (offset, length) in [
            (0, blob.len()),
            (1000, 5000),
            (150_000, 100_000),
            (size, 10),
        ] {
            let at = usize::try_from(offset).unwrap();
            let expected = &blob[at..(at + length).min(blob.len())];
            assert_eq!(
                store.inner.read_cached(&digest, offset, length).as_deref(),
                Some(expected),
                "offset {offset}, length {length}"
            );
            assert_eq!(
                store.inner.read_at(&digest, offset, length).unwrap(),
                expected
            );
        }
        assert_eq!(store.inner.read_cached(&digest, size + 1, 10), None);
        let missing = Digest::of(b"never written");
        assert_eq!(store.inner.read_cached(&missing, 0, 10), None);
        assert_eq!(
            store.read_at(&missing, 0, 10).await.unwrap_err().category,
            Category::NotFound
        );
    }

    /// A read of cached bytes does not queue behind blocking work: with the runtime's only
    /// blocking thread held until the read has answered, it still answers.
    #[test]
    fn a_cached_read_does_not_wait_for_the_blocking_pool() {
        use crate::test_support::{one_blocking_thread, with_the_blocking_pool_held};
        one_blocking_thread().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::open(dir.path()).unwrap();
            let blob = vec![7u8; 64 * 1024];
            let digest = committed(&store, &blob).await;
            let read = with_the_blocking_pool_held(store.read_at(&digest, 0, blob.len()))
                .await
                .expect("the read waited for the busy blocking pool");
            assert_eq!(read.unwrap(), blob);
        });
    }

    /// An ingest's data writes do not queue behind blocking work (the commits' syncs): with
    /// the runtime's only blocking thread held until they have answered, they still answer,
    /// on the ingest pool, and the blob they wrote commits whole.
    #[test]
    fn ingest_writes_do_not_wait_for_the_blocking_pool() {
        use crate::test_support::{one_blocking_thread, with_the_blocking_pool_held};
        one_blocking_thread().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::open(dir.path()).unwrap();
            let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
            let digest = Digest::of(&blob);
            let mut writer = store
                .writer("pool", blob.len() as i64, Some(digest.clone()))
                .await
                .unwrap();
            let (first, second) = blob.split_at(70_000);
            with_the_blocking_pool_held(async {
                writer.write(first).await.unwrap();
                writer.write_owned(second.to_vec()).await.unwrap();
            })
            .await
            .expect("an ingest write waited for the busy blocking pool");
            assert_eq!(writer.status().await.unwrap().offset, blob.len() as i64);
            writer
                .commit(blob.len() as i64, Some(digest.clone()), Labels::new())
                .await
                .unwrap();
            assert_eq!(store.read_at(&digest, 0, blob.len()).await.unwrap(), blob);
        });
    }

    /// A crash in the middle of an ingest: the writer is leaked (no close, no sync, no
    /// updatedat), the store dropped; the reopened store resumes at the bytes on disk.
    #[tokio::test]
    async fn crash_during_ingest_resumes_at_the_bytes_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let digest = Digest::of(&blob);
        let half = blob.len() / 2;
        {
            let store = open(dir.path());
            let mut writer = store
                .writer("crash", blob.len() as i64, Some(digest.clone()))
                .await
                .unwrap();
            writer.write(&blob[..half]).await.unwrap();
            std::mem::forget(writer);
        }
        assert!(files_under(&dir.path().join("blobs/sha256")).is_empty());

        let store = open(dir.path());
        let status = store.status("crash").await.unwrap();
        assert_eq!(
            (status.offset, status.total),
            (half as i64, blob.len() as i64)
        );
        assert_eq!(status.expected.as_ref(), Some(&digest));
        let mut writer = store.writer("crash", 0, None).await.unwrap();
        assert_eq!(writer.status().await.unwrap().offset, half as i64);
        assert_eq!(writer.digest(), Digest::of(&blob[..half]));
        writer.write(&blob[half..]).await.unwrap();
        assert!(
            files_under(&dir.path().join("blobs/sha256")).is_empty(),
            "nothing is visible before commit"
        );
        assert_eq!(writer.commit(0, None, Labels::new()).await.unwrap(), digest);
        writer.close().await.unwrap();
        assert_eq!(
            files_under(&dir.path().join("blobs/sha256")),
            vec![digest.hex().to_string()]
        );
        assert!(files_under(&dir.path().join("ingest")).is_empty());
        assert_eq!(store.read_at(&digest, 0, blob.len()).await.unwrap(), blob);
        // The CRC-32 recorded at commit covers the bytes written before the crash too.
        assert_eq!(
            store.recorded_crc32(&digest).await,
            Some(crc32fast::hash(&blob))
        );
    }

    /// Commit records the CRC-32 of exactly the committed bytes in the blob's extended
    /// attribute, also after a truncate that started the ingest over; a blob without the
    /// attribute (containerd's, or one from before it) has none, and a value that is not
    /// four bytes is none.
    #[tokio::test]
    async fn commit_records_the_crc32_of_the_committed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let blob = b"the bytes that are committed".to_vec();
        let mut writer = store.writer("crc", 0, None).await.unwrap();
        writer.write(b"bytes that are not kept").await.unwrap();
        writer.truncate(0).await.unwrap();
        writer.write(&blob[..9]).await.unwrap();
        writer.write(&blob[9..]).await.unwrap();
        let digest = writer.commit(0, None, Labels::new()).await.unwrap();
        writer.close().await.unwrap();
        assert_eq!(digest, Digest::of(&blob));
        assert_eq!(
            store.recorded_crc32(&digest).await,
            Some(crc32fast::hash(&blob))
        );
        let path = dir.path().join("blobs/sha256").join(digest.hex());
        let mut raw = [0u8; 4];
        assert_eq!(
            rustix::fs::getxattr(&path, CRC32_XATTR, &mut raw).unwrap(),
            4
        );
        assert_eq!(u32::from_le_bytes(raw), crc32fast::hash(&blob));

        rustix::fs::setxattr(
            &path,
            CRC32_XATTR,
            b"12345",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert_eq!(store.recorded_crc32(&digest).await, None);
        rustix::fs::removexattr(&path, CRC32_XATTR).unwrap();
        assert_eq!(store.recorded_crc32(&digest).await, None);
        assert_eq!(store.recorded_crc32(&Digest::of(b"absent")).await, None);
    }

    /// What a crash can leave: ingest directories without `ref` (crash while creating) or
    /// without `data` (crash while committing), temporary and orphaned label files.
    #[tokio::test]
    async fn open_removes_crash_leftovers_and_keeps_valid_ingests() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            let mut writer = store.writer("valid", 0, None).await.unwrap();
            writer.write(b"kept").await.unwrap();
            writer.close().await.unwrap();
        }
        let ingest = dir.path().join("ingest");
        fs::create_dir_all(ingest.join("no-ref")).unwrap();
        fs::write(ingest.join("no-ref/data"), b"x").unwrap();
        fs::create_dir_all(ingest.join("no-data")).unwrap();
        fs::write(ingest.join("no-data/ref"), b"gone").unwrap();
        let labels = dir.path().join("labels/sha256");
        let orphan = Digest::of(b"orphan");
        fs::write(labels.join(orphan.hex()), b"x").unwrap();
        fs::write(labels.join("something.tmp"), b"x").unwrap();

        let store = open(dir.path());
        assert_eq!(
            files_under(&ingest),
            vec![Digest::of(b"valid").hex().to_string()]
        );
        assert!(files_under(&labels).is_empty());
        let statuses = store.list_statuses(&[]).await.unwrap();
        assert_eq!(statuses.len(), 1);
        assert_eq!(
            (statuses[0].reference.as_str(), statuses[0].offset),
            ("valid", 4)
        );
    }

    /// `digests` lists what `walk` lists, names only; `delete_many` deletes each blob with
    /// its labels file, and a missing one fails alone.
    #[tokio::test]
    async fn digests_and_delete_many_agree_with_walk_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut committed = Vec::new();
        for (i, data) in ["one", "two", "three"].into_iter().enumerate() {
            let mut writer = store.writer(&format!("w{i}"), 0, None).await.unwrap();
            writer.write(data.as_bytes()).await.unwrap();
            let labels: Labels = [("n".to_string(), i.to_string())].into();
            committed.push(writer.commit(0, None, labels).await.unwrap());
        }
        fs::write(dir.path().join("blobs/sha256/not-a-digest"), b"x").unwrap();
        let walked: Vec<Digest> = store
            .walk(&[])
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.digest)
            .collect();
        let mut sorted = committed.clone();
        sorted.sort();
        assert_eq!(store.digests().await.unwrap(), sorted);
        assert_eq!(walked, sorted);

        let missing = Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
        let asked = [committed[0].clone(), missing, committed[2].clone()];
        let results = store.delete_many(&asked).await;
        let categories: Vec<Option<Category>> = results
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.category))
            .collect();
        assert_eq!(categories, [None, Some(Category::NotFound), None]);
        assert_eq!(store.digests().await.unwrap(), [committed[1].clone()]);
        // The labels files went with their blobs.
        let inner = LocalStore::open(dir.path()).unwrap();
        assert!(!inner.inner.sidecar_path(&committed[0]).exists());
        assert!(inner.inner.sidecar_path(&committed[1]).exists());

        // Enough for several threads: each answer in its digest's place.
        let mut asked = Vec::new();
        let mut expected = Vec::new();
        for i in 0..200 {
            let data = format!("blob {i}");
            if i % 7 == 3 {
                asked.push(Digest::of(data.as_bytes()));
                expected.push(Some(Category::NotFound));
                continue;
            }
            let mut writer = store.writer(&format!("many{i}"), 0, None).await.unwrap();
            writer.write(data.as_bytes()).await.unwrap();
            asked.push(writer.commit(0, None, Labels::new()).await.unwrap());
            expected.push(None);
        }
        let categories: Vec<Option<Category>> = store
            .delete_many(&asked)
            .await
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.category))
            .collect();
        assert_eq!(categories, expected);
        assert_eq!(store.digests().await.unwrap(), [committed[1].clone()]);
    }

    /// `detach_many` answers as `delete_many` does, with the names gone at once; its
    /// freeing empties `removing/`; a blob committed again after the answer is a new one the
    /// freeing leaves alone; what a crash leaves in `removing/` goes at the next open.
    #[tokio::test]
    async fn detach_many_takes_the_names_at_once_and_frees_the_space_behind_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut asked = Vec::new();
        let mut expected = Vec::new();
        for i in 0..200 {
            let data = format!("blob {i}");
            if i % 9 == 4 {
                asked.push(Digest::of(data.as_bytes()));
                expected.push(Some(Category::NotFound));
                continue;
            }
            let mut writer = store.writer(&format!("d{i}"), 0, None).await.unwrap();
            writer.write(data.as_bytes()).await.unwrap();
            let labels: Labels = [("n".to_string(), i.to_string())].into();
            asked.push(writer.commit(0, None, labels).await.unwrap());
            expected.push(None);
        }
        let kept = {
            let mut writer = store.writer("kept", 0, None).await.unwrap();
            writer.write(b"kept").await.unwrap();
            writer.commit(0, None, Labels::new()).await.unwrap()
        };
        let (results, freeing) = store.detach_many(&asked).await;
        let categories: Vec<Option<Category>> = results
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.category))
            .collect();
        assert_eq!(categories, expected);
        assert_eq!(store.digests().await.unwrap(), [kept]);
        // Committed again before the space is freed: a new blob, which stays.
        let again = {
            let mut writer = store.writer("again", 0, None).await.unwrap();
            writer.write(b"blob 0").await.unwrap();
            writer.commit(0, None, Labels::new()).await.unwrap()
        };
        assert_eq!(again, asked[0]);
        freeing.wait().await.unwrap();
        let removing = dir.path().join("removing");
        assert_eq!(fs::read_dir(&removing).unwrap().count(), 0, "all freed");
        assert_eq!(store.read_at(&again, 0, 64).await.unwrap(), b"blob 0");
        let inner = LocalStore::open(dir.path()).unwrap();
        assert!(
            !inner.inner.sidecar_path(&asked[1]).exists(),
            "labels went too"
        );

        // What cannot be freed (here a directory where a blob should be) is the freeing's
        // failure, naming where it was left.
        let blob = dir.path().join("blobs/sha256").join(again.hex());
        fs::remove_file(&blob).unwrap();
        fs::create_dir(&blob).unwrap();
        fs::write(blob.join("inside"), b"x").unwrap();
        let (results, freeing) = store.detach_many(std::slice::from_ref(&again)).await;
        assert!(results[0].is_ok());
        let error = freeing.wait().await.unwrap_err();
        let left = removing.join(again.hex());
        assert!(
            error.message.contains(&left.display().to_string()),
            "{error}"
        );
        assert!(left.is_dir());

        // A crash between the rename and the unlink: the next open frees it.
        fs::create_dir_all(&removing).unwrap();
        fs::write(removing.join("left"), b"x").unwrap();
        drop(LocalStore::open(dir.path()).unwrap());
        assert!(!removing.exists());
    }

    #[tokio::test]
    async fn committed_blob_is_read_only_and_labels_live_in_a_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut writer = store.writer("ro", 0, None).await.unwrap();
        writer.write(b"read only").await.unwrap();
        let labels: Labels = [("a".to_string(), "1".to_string())].into();
        let digest = writer.commit(0, None, labels.clone()).await.unwrap();
        let meta = fs::metadata(dir.path().join("blobs/sha256").join(digest.hex())).unwrap();
        assert!(meta.permissions().readonly());
        assert_eq!(store.info(&digest).await.unwrap().labels, labels);
        // Reopening keeps labels and times.
        let before = store.info(&digest).await.unwrap();
        let reopened = open(dir.path());
        assert_eq!(reopened.info(&digest).await.unwrap(), before);
        assert_eq!(before.created_at, meta.modified().unwrap());
    }

    #[test]
    fn times_round_trip_through_rfc3339() {
        let cases: &[(&str, Option<(u64, u32)>)] = &[
            // As this store has always written them (UTC, nine digits).
            ("1970-01-01T00:00:00.000000000Z", Some((0, 0))),
            (
                "2026-11-30T01:42:27.123456789Z",
                Some((1_796_002_947, 123_456_789)),
            ),
            // As Go's time.MarshalText writes them (containerd's ingest files): local offset,
            // trailing zeros of the fraction dropped.
            (
                "2017-11-14T13:43:22.178013-08:00",
                Some((1_510_695_802, 178_013_000)),
            ),
            ("2000-03-01T00:00:00+01:00", Some((951_865_200, 0))),
            ("1970-01-01T00:00:00Z", Some((0, 0))),
            (
                "2024-02-29T23:59:59.999999999Z\n",
                Some((1_709_251_199, 999_999_999)),
            ),
            ("2000-13-01T00:00:00Z", None),
            ("2000-02-30T00:00:00Z", None),
            ("2000-03-01T00:00:00.Z", None),
            ("2000-03-01T00:00:00", None),
            ("yesterday", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let parsed = parse_time(text);
            let expected = expected.map(|(s, n)| UNIX_EPOCH + Duration::new(s, n));
            assert_eq!(parsed, expected, "{text:?}");
            if let Some(time) = parsed {
                assert_eq!(parse_time(&format_time(time)), Some(time), "{text:?}");
            }
        }
    }

    /// Files written before the store used jiff hold exactly these strings; the format must
    /// not drift (Go's parser and older plinth builds read them).
    #[test]
    fn times_are_written_as_before() {
        let cases: &[(SystemTime, &str)] = &[
            (UNIX_EPOCH, "1970-01-01T00:00:00.000000000Z"),
            (
                UNIX_EPOCH + Duration::new(1_796_002_947, 123_456_789),
                "2026-11-30T01:42:27.123456789Z",
            ),
            (
                UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000),
                "2023-11-14T22:13:20.500000000Z",
            ),
            (
                UNIX_EPOCH - Duration::new(86_401, 5),
                "1969-12-30T23:59:58.999999995Z",
            ),
        ];
        for (time, text) in cases {
            assert_eq!(format_time(*time), *text);
        }
        // Times beyond what RFC 3339 can write (about 31 700 years away) clamp to the nearest
        // year it can, on the right side of the epoch.
        let far = Duration::from_secs(1_000_000_000_000);
        for (time, year) in [(UNIX_EPOCH + far, "9999-"), (UNIX_EPOCH - far, "-009999-")] {
            let text = format_time(time);
            assert!(text.starts_with(year), "{text}");
            assert!(parse_time(&text).is_some(), "{text} does not read back");
        }
        let written_before = format!(
            "{SIDECAR_HEADER}\ncreated 2026-11-30T01:42:27.123456789Z\n\
             updated 2026-11-30T01:42:28.000000001Z\nlabel 3 3\nappweb\n"
        );
        let sidecar = Sidecar::decode(written_before.as_bytes()).expect("decodes");
        assert_eq!(
            sidecar.created_at,
            UNIX_EPOCH + Duration::new(1_796_002_947, 123_456_789)
        );
        assert_eq!(
            sidecar.updated_at,
            UNIX_EPOCH + Duration::new(1_796_002_948, 1)
        );
        assert_eq!(sidecar.encode(), written_before.as_bytes());
    }

    #[test]
    fn sidecar_round_trips_any_bytes() {
        let sidecar = Sidecar {
            created_at: UNIX_EPOCH + Duration::new(10, 1),
            updated_at: UNIX_EPOCH + Duration::new(20, 2),
            labels: [
                ("a\nb".to_string(), "label 3 4\n".to_string()),
                ("empty".to_string(), String::new()),
                ("ü".to_string(), "=".to_string()),
            ]
            .into(),
        };
        assert_eq!(Sidecar::decode(&sidecar.encode()), Some(sidecar.clone()));
        let encoded = sidecar.encode();
        for cut in 0..encoded.len() {
            // A truncated file is rejected or, cut exactly between labels, reads fewer.
            if let Some(decoded) = Sidecar::decode(&encoded[..cut]) {
                assert!(decoded.labels.len() < sidecar.labels.len());
            }
        }
    }

    async fn resumed(store: &Arc<dyn ContentStore>, reference: &str, total: i64) -> (i64, i64) {
        let writer = store.writer(reference, total, None).await.unwrap();
        let status = writer.status().await.unwrap();
        writer.close().await.unwrap();
        (status.offset, status.total)
    }

    /// Resuming an ingest: the same total or none continues it; another total starts it
    /// over; a total given only now is recorded, on disk too.
    #[tokio::test]
    async fn a_resumed_ingest_continues_or_starts_over_by_its_total() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut writer = store.writer("sized", 10, None).await.unwrap();
        writer.write(b"abc").await.unwrap();
        writer.close().await.unwrap();
        assert_eq!(resumed(&store, "sized", 10).await, (3, 10), "same total");
        assert_eq!(resumed(&store, "sized", 0).await, (3, 10), "no total");
        assert_eq!(resumed(&store, "sized", 20).await, (0, 20), "another total");

        let mut writer = store.writer("late", 0, None).await.unwrap();
        writer.write(b"ab").await.unwrap();
        writer.close().await.unwrap();
        assert_eq!(resumed(&store, "late", 7).await, (2, 7), "total given late");
        let reopened = open(dir.path());
        let status = reopened.status("late").await.unwrap();
        assert_eq!((status.offset, status.total), (2, 7), "recorded on disk");
    }

    fn assert_internal_naming(error: &Error, path: &Path) {
        assert_eq!(error.category, Category::Internal, "{error}");
        assert!(
            error.message.contains(&path.display().to_string()),
            "{error} does not name {}",
            path.display()
        );
    }

    /// What a crash left to delete (`removing/`) and cannot be removed stops the store from
    /// opening with an error naming it, instead of being passed over and kept for ever; only
    /// its absence is no error.
    #[test]
    fn leftovers_that_cannot_be_removed_stop_the_open_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        drop(LocalStore::open(dir.path()).unwrap());
        fs::create_dir_all(dir.path().join("removing/sha256")).unwrap();
        fs::write(dir.path().join("removing/sha256/gone"), b"deleted blob").unwrap();
        drop(LocalStore::open(dir.path()).unwrap());
        assert!(
            !dir.path().join("removing").exists(),
            "the leftovers were kept"
        );

        // Not a directory: remove_dir_all refuses it.
        fs::write(dir.path().join("removing"), b"not a directory").unwrap();
        let Err(error) = LocalStore::open(dir.path()) else {
            panic!("opened over leftovers it kept");
        };
        assert_eq!(error.category, plinth_core::Category::Internal, "{error}");
        assert!(
            error
                .message
                .contains(&dir.path().join("removing").display().to_string()),
            "{error}"
        );
    }

    /// A blob or an ingest that cannot be read or removed for a reason other than its
    /// absence is an internal error naming the path, never NotFound: a client told NotFound
    /// takes the blob for gone and writes it again, or forgets it.
    #[tokio::test]
    async fn unreadable_content_is_an_error_naming_the_path_not_a_missing_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut writer = store.writer("blob", 0, None).await.unwrap();
        writer.write(b"blob").await.unwrap();
        let digest = writer.commit(0, None, Labels::new()).await.unwrap();
        let blob = dir.path().join("blobs/sha256").join(digest.hex());

        // A link to itself cannot be opened (ELOOP).
        fs::remove_file(&blob).unwrap();
        std::os::unix::fs::symlink(&blob, &blob).unwrap();
        let error = store.read_at(&digest, 0, 4).await.unwrap_err();
        assert_internal_naming(&error, &blob);
        // A directory cannot be unlinked (EISDIR).
        fs::remove_file(&blob).unwrap();
        fs::create_dir(&blob).unwrap();
        let error = store.delete(&digest).await.unwrap_err();
        assert_internal_naming(&error, &blob);
        assert!(blob.is_dir(), "left as it was");

        let mut writer = store.writer("ingest", 0, None).await.unwrap();
        writer.write(b"x").await.unwrap();
        writer.close().await.unwrap();
        let ingest = dir.path().join("ingest").join(Digest::of(b"ingest").hex());
        let data = ingest.join(DATA_FILE);
        fs::remove_file(&data).unwrap();
        std::os::unix::fs::symlink(&data, &data).unwrap();
        let error = store.status("ingest").await.unwrap_err();
        assert_internal_naming(&error, &data);
        let status = ingest.join(STATUS_FILE);
        fs::remove_file(&status).unwrap();
        fs::create_dir(&status).unwrap();
        let error = store.status("ingest").await.unwrap_err();
        assert_internal_naming(&error, &status);
        // What cannot be read is not taken for a crash's leftover when the store opens.
        drop(LocalStore::open(dir.path()).unwrap());
        assert!(status.is_dir(), "left as it was");
    }

    /// An ingest keeps its ref, total, expected digest and times in one status file: three
    /// inodes in all (directory, data, status), the status rewritten only when it changes.
    #[tokio::test]
    async fn an_ingest_is_three_files_and_a_garbled_status_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"abc");
        let mut writer = store
            .writer("a ref, spaced", 3, Some(digest.clone()))
            .await
            .unwrap();
        writer.write(b"ab").await.unwrap();
        writer.close().await.unwrap();
        let ingest = dir
            .path()
            .join("ingest")
            .join(Digest::of(b"a ref, spaced").hex());
        let mut names: Vec<String> = fs::read_dir(&ingest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [DATA_FILE, STATUS_FILE]);
        let status = store.status("a ref, spaced").await.unwrap();
        assert_eq!(
            (
                status.reference.as_str(),
                status.offset,
                status.total,
                status.expected.clone()
            ),
            ("a ref, spaced", 2, 3, Some(digest.clone()))
        );
        assert!(status.started_at <= status.updated_at);

        // Resumed with what it holds, the status is not written again (each write is an
        // inode); the data's mtime, when newer, is the time it was updated.
        let inode = |path: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap());
        let before = inode(&ingest.join(STATUS_FILE));
        let writer = store
            .writer("a ref, spaced", 3, Some(digest.clone()))
            .await
            .unwrap();
        assert_eq!(
            inode(&ingest.join(STATUS_FILE)),
            before,
            "status rewritten unchanged"
        );
        let later = status.updated_at + std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(ingest.join(DATA_FILE))
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(
            store.status("a ref, spaced").await.unwrap().updated_at,
            later
        );
        drop(writer);
        let unknown = store.writer("unknown size", 0, None).await.unwrap();
        unknown.close().await.unwrap();
        let unknown_status = dir
            .path()
            .join("ingest")
            .join(Digest::of(b"unknown size").hex())
            .join(STATUS_FILE);
        let before = inode(&unknown_status);
        drop(store.writer("unknown size", 0, None).await.unwrap());
        assert_eq!(inode(&unknown_status), before, "status rewritten unchanged");

        // A status naming another ref (a directory someone copied) is no ingest of this one.
        write_status(
            &ingest,
            &Status {
                reference: "another".into(),
                ..status.clone()
            },
        )
        .unwrap();
        let error = store.status("a ref, spaced").await.unwrap_err();
        assert_eq!(error.category, plinth_core::Category::NotFound);

        // A status half written when the machine went down (renamed into place unsynced),
        // or not this store's: no ingest, as one without a ref file. A writer starts over,
        // and a store opened on it removes it as a crash's leftover.
        for garbled in [
            "",
            "plinth-ingest 2\ntotal 3\nref a ref, spaced",
            "plinth-ingest 1\ntotal x\nref a ref, spaced",
            "plinth-ingest 1\ntotal 3\nstarted 2026-11-30T10:00:00Z\nupdated never\nref a ref, spaced",
        ] {
            fs::write(ingest.join(STATUS_FILE), garbled).unwrap();
            let error = store.status("a ref, spaced").await.unwrap_err();
            assert_eq!(
                error.category,
                plinth_core::Category::NotFound,
                "{garbled:?}"
            );
            assert!(
                store
                    .list_statuses(&[])
                    .await
                    .unwrap()
                    .iter()
                    .all(|s| s.reference != "a ref, spaced")
            );
            drop(LocalStore::open(dir.path()).unwrap());
            assert!(!ingest.exists(), "{garbled:?}: left at open");
            let writer = store.writer("a ref, spaced", 3, None).await.unwrap();
            assert_eq!(writer.status().await.unwrap().offset, 0, "{garbled:?}");
            writer.close().await.unwrap();
        }
    }

    /// An ingest written by a store before the status file (containerd's layout: ref,
    /// startedat, updatedat, total, expected) is listed and resumed where its data ends, then
    /// carries a status file; the blob commits whole.
    #[tokio::test]
    async fn an_ingest_in_containerds_layout_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let blob = b"hello, layout".to_vec();
        let digest = Digest::of(&blob);
        let ingest = dir.path().join("ingest").join(Digest::of(b"old").hex());
        fs::create_dir_all(&ingest).unwrap();
        fs::write(ingest.join(DATA_FILE), &blob[..5]).unwrap();
        fs::write(ingest.join(REF_FILE), "old").unwrap();
        fs::write(ingest.join(STARTED_AT_FILE), "2026-11-30T10:00:00.5Z").unwrap();
        fs::write(ingest.join(UPDATED_AT_FILE), "2026-11-30T10:00:01Z").unwrap();
        fs::write(ingest.join(TOTAL_FILE), blob.len().to_string()).unwrap();
        let store = LocalStore::open(dir.path()).unwrap();

        let listed = store.list_statuses(&[]).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (
                listed[0].reference.as_str(),
                listed[0].offset,
                listed[0].total
            ),
            ("old", 5, blob.len() as i64)
        );
        assert_eq!(
            listed[0].started_at,
            parse_time("2026-11-30T10:00:00.5Z").unwrap()
        );

        let mut writer = store
            .writer("old", blob.len() as i64, Some(digest.clone()))
            .await
            .unwrap();
        assert_eq!(writer.status().await.unwrap().offset, 5);
        assert!(
            ingest.join(STATUS_FILE).is_file(),
            "the expected digest is recorded"
        );
        assert!(
            !ingest.join(EXPECTED_FILE).exists(),
            "in the status file only"
        );
        let status = store.status("old").await.unwrap();
        assert_eq!(status.expected, Some(digest.clone()));
        assert_eq!(status.started_at, listed[0].started_at);
        writer.write(&blob[5..]).await.unwrap();
        writer
            .commit(blob.len() as i64, Some(digest.clone()), Labels::new())
            .await
            .unwrap();
        assert_eq!(store.read_at(&digest, 0, blob.len()).await.unwrap(), blob);
        assert!(!ingest.exists());
    }

    /// An ingest directory without its data (a commit between moving the data and removing
    /// the directory) is no ingest: NotFound, and left out of the list.
    #[tokio::test]
    async fn an_ingest_whose_data_is_gone_is_no_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for reference in ["kept", "half-committed"] {
            let mut writer = store.writer(reference, 0, None).await.unwrap();
            writer.write(b"x").await.unwrap();
            writer.close().await.unwrap();
        }
        let ingest = dir.path().join("ingest");
        fs::remove_file(
            ingest
                .join(Digest::of(b"half-committed").hex())
                .join(DATA_FILE),
        )
        .unwrap();
        let error = store.status("half-committed").await.unwrap_err();
        assert_eq!(error.category, Category::NotFound, "{error}");
        let listed: Vec<String> = store
            .list_statuses(&[])
            .await
            .unwrap()
            .into_iter()
            .map(|status| status.reference)
            .collect();
        assert_eq!(listed, vec!["kept"]);
    }

    /// Closing a writer records when the ingest was last written, so that a reopened store
    /// reports the same time even when the data file's mtime says otherwise.
    #[tokio::test]
    async fn close_records_the_ingests_last_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut writer = store.writer("timed", 0, None).await.unwrap();
        writer.write(b"abc").await.unwrap();
        let before = writer.status().await.unwrap().updated_at;
        writer.close().await.unwrap();
        let data = dir
            .path()
            .join("ingest")
            .join(Digest::of(b"timed").hex())
            .join(DATA_FILE);
        File::options()
            .write(true)
            .open(&data)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(1000))
            .unwrap();
        let reopened = open(dir.path());
        assert_eq!(reopened.status("timed").await.unwrap().updated_at, before);
    }

    #[tokio::test]
    async fn refs_never_become_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for reference in ["../../escape", "/etc/passwd", "a/b/../c"] {
            let mut writer = store.writer(reference, 0, None).await.unwrap();
            writer.write(b"x").await.unwrap();
            writer.close().await.unwrap();
        }
        assert_eq!(files_under(&dir.path().join("ingest")).len(), 3);
        assert_eq!(files_under(dir.path()), vec!["blobs", "ingest", "labels"]);
        assert_eq!(
            store.status("../../escape").await.unwrap().reference,
            "../../escape"
        );
        let error = store.status("nope").await.unwrap_err();
        assert_eq!(error.category, Category::NotFound);
    }
}
