//! `io.containerd.snapshotter.v1.native`: snapshots as full directory copies, returned as
//! bind mounts (containerd's `plugins/snapshots/native`). Works on any filesystem.
//!
//! Each active snapshot (and each view without a parent) owns `<root>/snapshots/<id>`, which
//! starts as a copy of its parent's directory. A view of a committed snapshot copies nothing:
//! its mount is a read-only bind of the parent's directory, as in containerd.
//!
//! The copy keeps regular files, directories, symlinks and hard links, with modes (including
//! set-id bits), ownership and times. Special files (devices, FIFOs, sockets) are copied by
//! `cp -a`, because creating them needs `mknod(2)` and this crate has no `unsafe`. Extended
//! attributes are copied (after the owner: a `chown` clears `security.capability`), and a
//! symlink keeps its own times, as containerd's copy does: otherwise the comparer would see
//! every symlink and every file with attributes of a copied snapshot as changed.

use std::collections::HashMap;
use std::fs::{self, FileTimes};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

use super::storage::{MetaStore, Snapshot, blocking, disk_usage, remove_dir_logged, remove_path};
use super::{Info, Kind, Mount, Snapshotter, Usage};
use crate::error::Error;
use crate::namespaces::Labels;
use crate::redb_store::with_db_views;

/// The native snapshotter.
#[derive(Debug, Clone)]
pub struct NativeSnapshotter {
    store: Arc<MetaStore>,
    root: PathBuf,
}

impl NativeSnapshotter {
    /// A snapshotter whose state lives under `root` (its database opens off the caller's
    /// thread, see `redb_store`).
    ///
    /// # Errors
    /// The root cannot be created, or another process holds its database.
    pub fn open(root: &Path) -> Result<NativeSnapshotter, Error> {
        Ok(NativeSnapshotter {
            store: Arc::new(MetaStore::open(root)?),
            root: root.to_path_buf(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn mounts_of(store: &MetaStore, snapshot: &Snapshot) -> Vec<Mount> {
        let access = if snapshot.kind == Kind::View {
            "ro"
        } else {
            "rw"
        };
        let id = match (snapshot.kind, snapshot.parent_ids.first()) {
            (Kind::View, Some(parent)) => *parent,
            _ => snapshot.id,
        };
        vec![Mount {
            mount_type: "bind".to_string(),
            source: store.dir_of(id).display().to_string(),
            target: String::new(),
            options: vec!["rbind".to_string(), access.to_string()],
        }]
    }

    async fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: Labels,
    ) -> Result<Vec<Mount>, Error> {
        let store = Arc::clone(&self.store);
        let (key, parent) = (key.to_string(), parent.to_string());
        blocking(move || {
            let snapshot = store.create(kind, &key, &parent, &labels, |snapshot| {
                if kind == Kind::View && !snapshot.parent_ids.is_empty() {
                    return Ok(());
                }
                let parent_dir = snapshot.parent_ids.first().map(|id| store.dir_of(*id));
                build_dir(&store, snapshot.id, parent_dir.as_deref())
            })?;
            Ok(NativeSnapshotter::mounts_of(&store, &snapshot))
        })
        .await
    }
}

/// Builds `<root>/snapshots/<id>` as a copy of `parent` (or empty, mode 0755) under a
/// temporary name, then renames it into place.
fn build_dir(store: &MetaStore, id: u64, parent: Option<&Path>) -> Result<(), Error> {
    let temporary = store.snapshots_dir().join(format!("new-{id}"));
    let fail = |what: &str, path: &Path, error: io::Error| {
        remove_dir_logged(&temporary);
        Error::io(format_args!("{what} {}", path.display()), &error)
    };
    remove_path(&temporary).map_err(|e| fail("removing stale", &temporary, e))?;
    fs::create_dir(&temporary).map_err(|e| fail("creating", &temporary, e))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(0o755))
        .map_err(|e| fail("setting the mode of", &temporary, e))?;
    if let Some(parent) = parent {
        copy_tree(parent, &temporary).map_err(|e| {
            remove_dir_logged(&temporary);
            Error::io(
                format_args!(
                    "copying the parent's files from {} into {}",
                    parent.display(),
                    temporary.display()
                ),
                &e,
            )
        })?;
    }
    let path = store.dir_of(id);
    fs::rename(&temporary, &path).map_err(|e| fail("renaming into", &path, e))
}

/// Copies the tree under `source` into the existing directory `target`, and `source`'s own
/// mode, owner and times onto `target`.
fn copy_tree(source: &Path, target: &Path) -> io::Result<()> {
    let mut hard_links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Directories get their mode, owner and times after their contents are written.
    let mut directories = vec![(source.to_path_buf(), target.to_path_buf())];
    let mut pending = vec![(source.to_path_buf(), target.to_path_buf())];
    while let Some((from_dir, to_dir)) = pending.pop() {
        for entry in fs::read_dir(&from_dir)? {
            let entry = entry?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            let meta = fs::symlink_metadata(&from)?;
            let file_type = meta.file_type();
            if file_type.is_dir() {
                fs::create_dir(&to)?;
                directories.push((from.clone(), to.clone()));
                pending.push((from, to));
            } else if file_type.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
                std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()))?;
                copy_xattrs(&from, &to)?;
                let times = rustix::fs::Timestamps {
                    last_access: rustix::fs::Timespec {
                        tv_sec: meta.atime(),
                        tv_nsec: meta.atime_nsec(),
                    },
                    last_modification: rustix::fs::Timespec {
                        tv_sec: meta.mtime(),
                        tv_nsec: meta.mtime_nsec(),
                    },
                };
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    &to,
                    &times,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )?;
            } else if let Some(first) = hard_links.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, &to)?;
            } else {
                if file_type.is_file() {
                    fs::copy(&from, &to)?;
                    copy_attributes(&meta, &to)?;
                    copy_xattrs(&from, &to)?;
                } else {
                    copy_special(&from, &to)?;
                }
                if meta.nlink() > 1 {
                    hard_links.insert((meta.dev(), meta.ino()), to);
                }
            }
        }
    }
    for (from, to) in directories.iter().rev() {
        copy_attributes(&fs::symlink_metadata(from)?, to)?;
        copy_xattrs(from, to)?;
    }
    Ok(())
}

/// Copies every extended attribute of `from` onto `to` (neither followed). A name the target
/// filesystem refuses (`ENOTSUP`), or a `user.` one on a symlink (`EPERM`), is left out.
fn copy_xattrs(from: &Path, to: &Path) -> io::Result<()> {
    let size = match rustix::fs::llistxattr_query(from) {
        Ok(size) => size,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if size == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; size];
    let size = rustix::fs::llistxattr(from, &mut names[..])?;
    for name in names[..size].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
        let length = rustix::fs::lgetxattr_query(from, name)?;
        let mut value = vec![0u8; length];
        let length = rustix::fs::lgetxattr(from, name, &mut value[..])?;
        match rustix::fs::lsetxattr(to, name, &value[..length], rustix::fs::XattrFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Owner first (a chown clears set-id bits), then the mode, then the times.
fn copy_attributes(meta: &fs::Metadata, path: &Path) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let times = FileTimes::new()
        .set_accessed(meta.accessed()?)
        .set_modified(meta.modified()?);
    fs::File::open(path)?.set_times(times)
}

/// Devices, FIFOs and sockets: `cp -a` makes them (std cannot without `mknod(2)`).
fn copy_special(from: &Path, to: &Path) -> io::Result<()> {
    let output = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cp -a {}: {}",
            from.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[tonic::async_trait]
impl Snapshotter for NativeSnapshotter {
    async fn stat(&self, key: &str) -> Result<Info, Error> {
        let store = Arc::clone(&self.store);
        let key = key.to_string();
        blocking(move || store.stat(&key).map(|(_, info, _)| info)).await
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
        let store = Arc::clone(&self.store);
        let fieldpaths = fieldpaths.to_vec();
        blocking(move || store.update(&info, &fieldpaths)).await
    }

    async fn usage(&self, key: &str) -> Result<Usage, Error> {
        let store = Arc::clone(&self.store);
        let key = key.to_string();
        blocking(move || {
            let (id, info, usage) = store.stat(&key)?;
            if info.kind == Kind::Active {
                disk_usage(&store.dir_of(id))
            } else {
                Ok(usage)
            }
        })
        .await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        // A point read of cached pages (ARCHITECTURE.md, "Point reads").
        let snapshot = self.store.snapshot(key)?;
        Ok(NativeSnapshotter::mounts_of(&self.store, &snapshot))
    }

    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error> {
        self.create(Kind::Active, key, parent, labels).await
    }

    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error> {
        self.create(Kind::View, key, parent, labels).await
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), Error> {
        let store = Arc::clone(&self.store);
        let (name, key) = (name.to_string(), key.to_string());
        blocking(move || store.commit(&name, &key, &labels, |id| disk_usage(&store.dir_of(id))))
            .await
    }

    async fn remove(&self, key: &str) -> Result<(), Error> {
        let store = Arc::clone(&self.store);
        let key = key.to_string();
        blocking(move || store.remove(&key)).await
    }

    async fn remove_many(&self, keys: &[String]) -> Vec<Result<(), Error>> {
        let store = Arc::clone(&self.store);
        let owned = keys.to_vec();
        match blocking(move || store.remove_many(&owned)).await {
            Ok(results) => results,
            Err(e) => keys.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn detach_many(
        &self,
        keys: &[String],
    ) -> (Vec<Result<(), Error>>, crate::removal::Freeing) {
        let store = Arc::clone(&self.store);
        let owned = keys.to_vec();
        match blocking(move || store.detach_many(&owned)).await {
            Ok(answer) => answer,
            Err(e) => (
                keys.iter().map(|_| Err(e.clone())).collect(),
                crate::removal::Freeing::done(),
            ),
        }
    }

    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        let store = Arc::clone(&self.store);
        let filters = filters.to_vec();
        blocking(move || store.walk(&filters)).await
    }

    async fn cleanup(&self) -> Result<(), Error> {
        let store = Arc::clone(&self.store);
        blocking(move || store.cleanup().map(|_| ())).await
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let root = ctx.root().to_path_buf();
    let snapshotter = Arc::new(NativeSnapshotter::open(&root)?);
    let meta = ctx.meta_mut();
    meta.platforms.push(super::storage::default_platform());
    meta.exports
        .insert("root".to_string(), root.display().to_string());
    let instance = Instance::new(snapshotter.clone() as Arc<dyn Snapshotter>);
    Ok(with_db_views(instance, snapshotter.store.db()).with(snapshotter))
}

register!(Registration::new(types::SNAPSHOTTER, "native", init));

#[cfg(test)]
mod tests {
    use plinth_core::Category;

    use super::*;
    use crate::snapshots::testsuite;

    async fn make(root: PathBuf) -> Result<Arc<dyn Snapshotter>, Error> {
        Ok(Arc::new(NativeSnapshotter::open(&root)?) as Arc<dyn Snapshotter>)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_suite() {
        testsuite::run(make).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn mounts_are_containerd_binds() {
        let dir = tempfile::tempdir().unwrap();
        let snapshotter = NativeSnapshotter::open(dir.path()).unwrap();
        let dir_of = |id: u64| dir.path().join("snapshots").join(id.to_string());
        let bind = |id: u64, access: &str| Mount {
            mount_type: "bind".into(),
            source: dir_of(id).display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), access.into()],
        };
        let none = Labels::new;
        assert_eq!(
            snapshotter.prepare("../../etc", "", none()).await.unwrap(),
            vec![bind(1, "rw")]
        );
        assert!(!dir.path().join("etc").exists(), "keys never become paths");
        snapshotter
            .commit("base", "../../etc", none())
            .await
            .unwrap();
        assert_eq!(
            snapshotter.view("empty-view", "", none()).await.unwrap(),
            vec![bind(2, "ro")]
        );
        // A view of a committed snapshot binds the parent's directory, read-only.
        assert_eq!(
            snapshotter.view("view", "base", none()).await.unwrap(),
            vec![bind(1, "ro")]
        );
        assert!(!dir_of(3).exists());
        assert_eq!(
            snapshotter.prepare("child", "base", none()).await.unwrap(),
            vec![bind(4, "rw")]
        );
        assert_eq!(
            snapshotter.mounts("view").await.unwrap(),
            vec![bind(1, "ro")]
        );
        assert_eq!(
            snapshotter.mounts("base").await.unwrap_err().category,
            Category::FailedPrecondition
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn prepare_copies_files_modes_owners_symlinks_and_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let snapshotter = NativeSnapshotter::open(dir.path()).unwrap();
        snapshotter.prepare("a", "", Labels::new()).await.unwrap();
        let layer = dir.path().join("snapshots/1");
        fs::create_dir(layer.join("d")).unwrap();
        fs::set_permissions(layer.join("d"), fs::Permissions::from_mode(0o710)).unwrap();
        fs::write(layer.join("d/f"), b"data").unwrap();
        fs::set_permissions(layer.join("d/f"), fs::Permissions::from_mode(0o4750)).unwrap();
        std::os::unix::fs::chown(layer.join("d/f"), Some(1), Some(2)).unwrap();
        fs::set_permissions(layer.join("d/f"), fs::Permissions::from_mode(0o4750)).unwrap();
        fs::hard_link(layer.join("d/f"), layer.join("link")).unwrap();
        std::os::unix::fs::symlink("d/f", layer.join("sym")).unwrap();
        snapshotter.commit("c", "a", Labels::new()).await.unwrap();
        snapshotter.prepare("b", "c", Labels::new()).await.unwrap();
        let copy = dir.path().join("snapshots/2");
        let f = fs::symlink_metadata(copy.join("d/f")).unwrap();
        assert_eq!((f.mode() & 0o7777, f.uid(), f.gid()), (0o4750, 1, 2));
        assert_eq!(fs::read(copy.join("d/f")).unwrap(), b"data");
        assert_eq!(
            fs::symlink_metadata(copy.join("d")).unwrap().mode() & 0o7777,
            0o710
        );
        assert_eq!(fs::read_link(copy.join("sym")).unwrap(), Path::new("d/f"));
        assert_eq!(
            fs::symlink_metadata(copy.join("link")).unwrap().ino(),
            f.ino()
        );
        assert_ne!(
            f.ino(),
            fs::symlink_metadata(layer.join("d/f")).unwrap().ino()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn state_survives_reopen_and_cleanup_removes_only_orphans() {
        super::super::storage::check_cleanup_removes_only_orphans(|root| {
            NativeSnapshotter::open(root).unwrap()
        })
        .await;
    }
}
