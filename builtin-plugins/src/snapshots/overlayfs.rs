//! `io.containerd.snapshotter.v1.overlayfs`: snapshots as overlay layers (containerd's
//! `plugins/snapshots/overlay`). Skips itself where overlay does not work.
//!
//! Each snapshot owns `<root>/snapshots/<id>/fs` (its layer: the upper directory while it
//! is active, a lower directory once committed) and, when active, `<root>/snapshots/<id>/work`
//! (overlay's work directory). Mounts, as containerd returns them:
//!
//! | snapshot | mount |
//! |---|---|
//! | no parent | `bind` of its `fs`, `rw` (`ro` for a view), `rbind` |
//! | active with parents | `overlay`: `workdir=`, `upperdir=`, `lowerdir=` (nearest parent first, `:`-separated), then the default options |
//! | view of one parent | `bind` of the parent's `fs`, `ro`, `rbind` |
//! | view of several | `overlay` with `lowerdir=` only |
//!
//! The default options are `index=off` where the kernel has the `index` feature (as
//! containerd does, so a layer can be mounted under several upper directories), and
//! `userxattr` inside a user namespace on kernels from 5.11.
//!
//! # Support check
//!
//! At init the plugin mounts a real overlay (two lower directories, an upper and a work
//! directory) under its root and writes through it, as containerd's `overlayutils` check
//! does; a root on an overlay filesystem is refused first, since it cannot hold an upper
//! directory. Mounting needs `mount(2)`, and this crate forbids `unsafe` (and has no libc
//! binding), so the check uses rustix's safe `mount(2)` wrappers; the unmount (which waits
//! for the kernel) runs on a thread of its own so that it does not delay start-up, and the
//! host joins it before exiting ([`finish_check_cleanups`]), so that no mount outlives it. Nothing else
//! in the snapshotter mounts: callers mount what [`Snapshotter::mounts`] returns.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

use super::storage::{MetaStore, Snapshot, blocking, disk_usage, remove_dir_logged, remove_path};
use super::{Info, Kind, Mount, Snapshotter, Usage};
use crate::error::Error;
use crate::namespaces::Labels;
use crate::redb_store::with_db_views;

/// The plugin's config section, `[plugins."io.containerd.snapshotter.v1.overlayfs"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OverlayConfig {
    /// Options added to every overlay mount after the detected ones (containerd's key of
    /// the same name), e.g. `["volatile"]`. A live reload changes them in place: mounts
    /// returned from then on carry the new ones.
    pub mount_options: Vec<String>,
}

impl OverlayConfig {
    /// Refuses the options the snapshotter sets itself for each mount.
    fn check(&self) -> Result<(), String> {
        for option in &self.mount_options {
            let key = option.split('=').next().unwrap_or_default();
            if option.is_empty() || matches!(key, "lowerdir" | "upperdir" | "workdir") {
                return Err(format!(
                    "mount_options: {option:?} is not an option this snapshotter can add to its mounts \
                     (lowerdir, upperdir and workdir are set for each mount): remove it"
                ));
            }
        }
        Ok(())
    }
}

/// The overlayfs snapshotter.
#[derive(Debug, Clone)]
pub struct OverlaySnapshotter {
    store: Arc<MetaStore>,
    root: PathBuf,
    /// The detected options, then the configured ones; replaced whole by a reconfigure.
    options: Arc<std::sync::RwLock<Arc<Vec<String>>>>,
    detected: Arc<Vec<String>>,
}

impl OverlaySnapshotter {
    /// A snapshotter whose state lives under `root` (its database opens off the caller's
    /// thread, see `redb_store`). It does not check that overlay works: see [`check_support`] (the
    /// plugin's init runs both).
    ///
    /// # Errors
    /// The root cannot be created, or another process holds its database.
    pub fn open(root: &Path) -> Result<OverlaySnapshotter, Error> {
        let store = MetaStore::open(root)?;
        let mut options = Vec::new();
        if needs_userxattr(root) {
            options.push("userxattr".to_string());
        }
        if Path::new("/sys/module/overlay/parameters/index").exists() {
            options.push("index=off".to_string());
        }
        let options = Arc::new(options);
        Ok(OverlaySnapshotter {
            store: Arc::new(store),
            root: root.to_path_buf(),
            options: Arc::new(std::sync::RwLock::new(options.clone())),
            detected: options,
        })
    }

    /// Adds `configured` after the detected options of every mount from now on.
    ///
    /// # Errors
    /// An option the snapshotter sets itself (lowerdir, upperdir, workdir) or an empty one.
    pub fn configure(&self, config: &OverlayConfig) -> Result<(), String> {
        config.check()?;
        let mut all = self.detected.as_ref().clone();
        all.extend(config.mount_options.iter().cloned());
        *self
            .options
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(all);
        Ok(())
    }

    /// The options added to every overlay mount now.
    fn current_options(&self) -> Arc<Vec<String>> {
        self.options
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The options added to every overlay mount as detected (`index=off`, `userxattr`).
    pub fn default_options(&self) -> &[String] {
        &self.detected
    }

    fn upper(store: &MetaStore, id: u64) -> String {
        store.dir_of(id).join("fs").display().to_string()
    }

    fn mounts_of(store: &MetaStore, options: &[String], snapshot: &Snapshot) -> Vec<Mount> {
        let bind = |id: u64, access: &str| Mount {
            mount_type: "bind".to_string(),
            source: OverlaySnapshotter::upper(store, id),
            target: String::new(),
            options: vec![access.to_string(), "rbind".to_string()],
        };
        let active = snapshot.kind == Kind::Active;
        match snapshot.parent_ids.as_slice() {
            [] => return vec![bind(snapshot.id, if active { "rw" } else { "ro" })],
            [parent] if !active => return vec![bind(*parent, "ro")],
            _ => {}
        }
        let mut all = Vec::new();
        if active {
            let work = store.dir_of(snapshot.id).join("work");
            all.push(format!("workdir={}", work.display()));
            all.push(format!(
                "upperdir={}",
                OverlaySnapshotter::upper(store, snapshot.id)
            ));
        }
        let lowers: Vec<String> = snapshot
            .parent_ids
            .iter()
            .map(|id| OverlaySnapshotter::upper(store, *id))
            .collect();
        all.push(format!("lowerdir={}", lowers.join(":")));
        all.extend(options.iter().cloned());
        vec![Mount {
            mount_type: "overlay".to_string(),
            source: "overlay".to_string(),
            target: String::new(),
            options: all,
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
        let options = self.current_options();
        let (key, parent) = (key.to_string(), parent.to_string());
        blocking(move || {
            let snapshot = store.create(kind, &key, &parent, &labels, |snapshot| {
                build_dir(&store, kind, snapshot)
            })?;
            Ok(OverlaySnapshotter::mounts_of(&store, &options, &snapshot))
        })
        .await
    }
}

/// Builds `<id>/fs` (mode 0755, owned like the parent's `fs`) and, for an active snapshot,
/// `<id>/work` (0711) under a temporary name, then renames it into place.
fn build_dir(store: &MetaStore, kind: Kind, snapshot: &Snapshot) -> Result<(), Error> {
    let temporary = store.snapshots_dir().join(format!("new-{}", snapshot.id));
    let result = (|| -> io::Result<()> {
        remove_path(&temporary)?;
        fs::create_dir(&temporary)?;
        let upper = temporary.join("fs");
        fs::create_dir(&upper)?;
        fs::set_permissions(&upper, fs::Permissions::from_mode(0o755))?;
        if kind == Kind::Active {
            let work = temporary.join("work");
            fs::create_dir(&work)?;
            fs::set_permissions(&work, fs::Permissions::from_mode(0o711))?;
        }
        if let Some(parent) = snapshot.parent_ids.first() {
            let meta = fs::metadata(store.dir_of(*parent).join("fs"))?;
            std::os::unix::fs::lchown(&upper, Some(meta.uid()), Some(meta.gid()))?;
        }
        fs::rename(&temporary, store.dir_of(snapshot.id))
    })();
    result.map_err(|e| {
        remove_dir_logged(&temporary);
        Error::io(
            format_args!(
                "creating the directories of snapshot {} in {}",
                snapshot.id,
                store.snapshots_dir().display()
            ),
            &e,
        )
    })
}

/// Checks that an overlay with an upper directory under `root` can be mounted and written
/// here, creating `root` if needed. Returns the reason when it cannot.
///
/// # Errors
/// Why overlay cannot be used under `root`: the root is itself on overlay, `mount(8)` is
/// missing, the kernel refuses the mount (no overlay module, not privileged, …).
pub fn check_support(root: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| format!("creating {}: {e}", root.display()))?;
    if let Some(fs_type) = filesystem_type(root) {
        if fs_type == "overlay" {
            return Err(format!(
                "{} is on an overlay filesystem, which cannot hold an upper directory: put the root on another filesystem",
                root.display()
            ));
        }
    }
    static CHECKS: AtomicU64 = AtomicU64::new(0);
    let check_dir = root.join(format!(
        "overlay-check-{}-{}",
        std::process::id(),
        CHECKS.fetch_add(1, Ordering::Relaxed)
    ));
    // Checks left by a process that died before cleaning up.
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("overlay-check-")
            {
                clean_up_check(&entry.path());
            }
        }
    }
    let result = try_overlay_mount(&check_dir);
    // Unmounting waits for the kernel (tens of milliseconds): do it off the start-up path,
    // on a thread that `finish_check_cleanups` joins before the process exits.
    let spawned = std::thread::Builder::new()
        .name("overlay-check-cleanup".to_string())
        .spawn({
            let check_dir = check_dir.clone();
            move || {
                #[cfg(test)]
                let _held = tests::CLEANUP_GATE
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                clean_up_check(&check_dir);
            }
        });
    match spawned {
        Ok(handle) => pending_cleanups().push(handle),
        Err(_) => clean_up_check(&check_dir),
    }
    result
}

/// The cleanup threads of support checks not yet joined.
fn pending_cleanups() -> std::sync::MutexGuard<'static, Vec<std::thread::JoinHandle<()>>> {
    static PENDING: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
        std::sync::Mutex::new(Vec::new());
    // A panicked cleanup thread cannot poison this lock (it never holds it).
    PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits until every support check's test mount is unmounted and its directory removed.
/// A process that ran [`check_support`] calls this before it exits (by any path), so that
/// it leaves no mount behind: the cleanup runs on a thread of its own, which the exit would
/// otherwise cut short.
pub fn finish_check_cleanups() {
    let handles = std::mem::take(&mut *pending_cleanups());
    for handle in handles {
        if handle.join().is_err() {
            tracing::warn!("an overlay check cleanup thread panicked");
        }
    }
}

/// Unmounts (if mounted) and removes one check directory.
fn clean_up_check(check_dir: &Path) {
    // Not mounted is the usual answer for a leftover; other failures show in the removal.
    let _ = rustix::mount::unmount(
        check_dir.join("merged"),
        rustix::mount::UnmountFlags::DETACH,
    );
    if let Err(error) = remove_path(check_dir) {
        tracing::warn!(path = %check_dir.display(), %error, "failed to remove the overlay check directory");
    }
}

fn try_overlay_mount(check_dir: &Path) -> Result<(), String> {
    let dir = |name: &str| check_dir.join(name);
    for name in ["", "lower1", "lower2", "upper", "work", "merged"] {
        fs::create_dir(dir(name)).map_err(|e| format!("creating {}: {e}", dir(name).display()))?;
    }
    fs::write(dir("lower1").join("probe"), b"lower")
        .map_err(|e| format!("writing in {}: {e}", check_dir.display()))?;
    let options = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        dir("lower2").display(),
        dir("lower1").display(),
        dir("upper").display(),
        dir("work").display()
    );
    // mount(2) directly (rustix's safe wrapper): spawning mount(8) costs more than the
    // whole rest of the daemon's start-up.
    let data = std::ffi::CString::new(options).map_err(|e| format!("overlay options: {e}"))?;
    rustix::mount::mount(
        "overlay",
        dir("merged"),
        "overlay",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(|e| format!("mounting a test overlay ({}): {e}", data.to_string_lossy()))?;
    let probe = (|| -> io::Result<bool> {
        let seen = fs::read(dir("merged").join("probe"))?;
        fs::write(dir("merged").join("probe"), b"upper")?;
        Ok(seen == b"lower" && fs::read(dir("upper").join("probe"))? == b"upper")
    })();
    // The caller unmounts, off the start-up path.
    match probe {
        Err(e) => return Err(format!("writing through a test overlay mount: {e}")),
        Ok(false) => {
            return Err("a test overlay mount did not show its layers as expected".to_string());
        }
        Ok(true) => {}
    }
    Ok(())
}

#[cfg(test)]
/// `umount(8)`, retried while the target is busy (50 times, 50 ms apart, as containerd
/// does): a child forked by another thread may hold a descriptor under the mount until it
/// execs.
fn unmount(target: &Path) -> Result<(), String> {
    let mut attempts = 0;
    loop {
        match run(Command::new(tool("umount")).arg(target)) {
            Err(message) if message.contains("busy") && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
/// `/bin/<name>` where it exists, else `name` from `PATH`.
fn tool(name: &str) -> PathBuf {
    let absolute = Path::new("/bin").join(name);
    if absolute.exists() {
        absolute
    } else {
        PathBuf::from(name)
    }
}

#[cfg(test)]
fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The type of the filesystem holding `path`, from `/proc/self/mountinfo`.
fn filesystem_type(path: &Path) -> Option<String> {
    let path = fs::canonicalize(path).ok()?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount_point), Some(separator)) =
            (fields.get(4), fields.iter().position(|f| *f == "-"))
        else {
            continue;
        };
        let Some(fs_type) = fields.get(separator + 1) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
        if path.starts_with(&mount_point) {
            let depth = mount_point.components().count();
            // Later lines are mounted over earlier ones at the same place.
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, fs_type.to_string()));
            }
        }
    }
    best.map(|(_, fs_type)| fs_type)
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// containerd's rule: `userxattr` inside a user namespace, except on tmpfs, on kernels from
/// 5.11 (older ones are not probed: the option is left out).
fn needs_userxattr(root: &Path) -> bool {
    let in_user_namespace = fs::read_to_string("/proc/self/uid_map")
        .map(|map| map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false);
    if !in_user_namespace || filesystem_type(root).as_deref() == Some("tmpfs") {
        return false;
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .trim()
        .split(['.', '-'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (5, 11)
}

#[tonic::async_trait]
impl Snapshotter for OverlaySnapshotter {
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
                disk_usage(&store.dir_of(id).join("fs"))
            } else {
                Ok(usage)
            }
        })
        .await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        // A point read of cached pages (ARCHITECTURE.md, "Point reads").
        let snapshot = self.store.snapshot(key)?;
        Ok(OverlaySnapshotter::mounts_of(
            &self.store,
            &self.current_options(),
            &snapshot,
        ))
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
        blocking(move || {
            store.commit(&name, &key, &labels, |id| {
                disk_usage(&store.dir_of(id).join("fs"))
            })
        })
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

/// What init does: the support check (a skip with the reason when it fails), then open.
fn open_checked(root: &Path) -> Result<OverlaySnapshotter, InitError> {
    check_support(root)
        .map_err(|reason| InitError::skip(format!("overlay is not supported here: {reason}")))?;
    Ok(OverlaySnapshotter::open(root)?)
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let config = ctx.config::<OverlayConfig>()?;
    config.check().map_err(InitError::msg)?;
    let root = ctx.root().to_path_buf();
    let snapshotter = Arc::new(open_checked(&root)?);
    snapshotter.configure(&config).map_err(InitError::msg)?;
    let meta = ctx.meta_mut();
    meta.platforms.push(super::storage::default_platform());
    meta.exports
        .insert("root".to_string(), root.display().to_string());
    let instance = Instance::new(snapshotter.clone() as Arc<dyn Snapshotter>);
    Ok(with_db_views(instance, snapshotter.store.db()).with(snapshotter))
}

/// Takes new `mount_options` in place (a live reload): mounts returned from then on carry
/// them; the snapshots and their data are untouched.
fn reconfigure(
    instance: &Instance,
    config: &plinth_core::registration::AnyConfig,
) -> Result<(), plinth_core::init::BoxError> {
    let config = config
        .downcast_ref::<OverlayConfig>()
        .ok_or("the overlayfs snapshotter was given another plugin's config")?;
    let snapshotter = instance
        .get::<OverlaySnapshotter>()
        .ok_or("the instance is not the overlayfs snapshotter")?;
    snapshotter.configure(config).map_err(Into::into)
}

register!(
    Registration::new(types::SNAPSHOTTER, "overlayfs", init)
        .config::<OverlayConfig>()
        .reconfigure(reconfigure)
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshots::testsuite;

    /// Held by a test to keep support-check cleanups from running until it lets go.
    pub(super) static CLEANUP_GATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A temporary directory on a filesystem that can hold overlay's upper directories: the
    /// system's temporary directory, or, where that is itself on overlay (usual in a
    /// container), a tmpfs mounted on the directory for the test's lifetime. Never a silent
    /// way out: where neither works, making one panics with the reason.
    struct OverlayCapableDir {
        path: PathBuf,
        tmpfs: bool,
        // Last: removed once the tmpfs is unmounted.
        _dir: tempfile::TempDir,
    }

    impl OverlayCapableDir {
        fn new() -> OverlayCapableDir {
            let dir = tempfile::Builder::new()
                .prefix("overlay-test-")
                .tempdir()
                .unwrap();
            let path = fs::canonicalize(dir.path()).unwrap();
            let on_overlay = filesystem_type(&path).as_deref() == Some("overlay");
            if on_overlay {
                rustix::mount::mount(
                    "tmpfs",
                    &path,
                    "tmpfs",
                    rustix::mount::MountFlags::empty(),
                    c"mode=0700",
                )
                .unwrap_or_else(|e| {
                    panic!(
                        "{} is on overlay, which cannot hold an upper directory, and mounting a tmpfs there failed ({e}): run this test as root",
                        path.display()
                    )
                });
            }
            OverlayCapableDir {
                path,
                tmpfs: on_overlay,
                _dir: dir,
            }
        }

        fn path(&self) -> &Path {
            &self.path
        }

        /// Panics with the reason unless overlay can be mounted under this directory.
        fn require_overlay(&self) {
            if let Err(reason) = check_support(&self.path.join("probe")) {
                panic!(
                    "this test needs overlay to work under {} (as root): {reason}",
                    self.path.display()
                );
            }
        }
    }

    impl Drop for OverlayCapableDir {
        fn drop(&mut self) {
            if self.tmpfs {
                // Detached: a support check's cleanup may still be unmounting under it.
                let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }

    #[test]
    fn an_overlay_capable_dir_is_not_on_overlay() {
        let dir = OverlayCapableDir::new();
        let fs_type = filesystem_type(dir.path());
        assert!(
            fs_type.is_some(),
            "no filesystem found for {}",
            dir.path().display()
        );
        assert_ne!(fs_type.as_deref(), Some("overlay"));
    }

    /// Whether something is mounted on `path` (from /proc/self/mountinfo).
    fn is_mount_point(path: &Path) -> bool {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .any(|point| Path::new(point) == path)
    }

    /// The regression: the check's unmount ran on a detached thread that an exiting process
    /// did not wait for, and the mount outlived the daemon. `finish_check_cleanups` must
    /// return only once the mount is gone, however slow the cleanup is (held here by a gate).
    #[test]
    fn finishing_the_cleanups_waits_until_the_check_mount_is_gone() {
        let dir = OverlayCapableDir::new();
        let root = dir.path().join("root");
        let gate = CLEANUP_GATE.lock().unwrap();
        if let Err(reason) = check_support(&root) {
            panic!(
                "this test needs overlay to work in {} (as root, not on an overlay filesystem): {reason}",
                root.display()
            );
        }
        let check_dirs: Vec<PathBuf> = fs::read_dir(&root)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert_eq!(check_dirs.len(), 1, "{check_dirs:?}");
        let merged = check_dirs[0].join("merged");
        assert!(
            is_mount_point(&merged),
            "the check is mounted until cleaned up"
        );

        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let finisher = std::thread::spawn(move || {
            finish_check_cleanups();
            done_tx.send(()).unwrap();
        });
        // The cleanup cannot run while the gate is held, so finishing must not return.
        assert_eq!(
            done_rx.recv_timeout(std::time::Duration::from_millis(300)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "finish_check_cleanups returned before the cleanup ran"
        );
        drop(gate);
        done_rx.recv().unwrap();
        finisher.join().unwrap();
        assert!(!is_mount_point(&merged), "mount left after finishing");
        assert!(
            !check_dirs[0].exists(),
            "check directory left after finishing"
        );
    }

    async fn make(root: PathBuf) -> Result<Arc<dyn Snapshotter>, Error> {
        Ok(Arc::new(OverlaySnapshotter::open(&root)?) as Arc<dyn Snapshotter>)
    }

    /// The suite, in a directory where overlay works (the test fails where there is none:
    /// overlay missing from the kernel, or not root). Where overlay cannot work, init
    /// reports a skip: [`a_root_on_overlay_is_refused_and_init_skips`] checks that.
    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_suite() {
        let dir = OverlayCapableDir::new();
        dir.require_overlay();
        testsuite::run_in(dir.path(), make).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn state_survives_reopen_and_cleanup_removes_only_orphans() {
        super::super::storage::check_cleanup_removes_only_orphans(|root| {
            OverlaySnapshotter::open(root).unwrap()
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn configured_mount_options_follow_the_detected_ones_and_change_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let snapshotter = Arc::new(OverlaySnapshotter::open(dir.path()).unwrap());
        let none = Labels::new;
        snapshotter.prepare("a", "", none()).await.unwrap();
        snapshotter.commit("b", "a", none()).await.unwrap();
        snapshotter.prepare("c", "b", none()).await.unwrap();
        let tail = |mounts: Vec<Mount>, n: usize| {
            let options = &mounts[0].options;
            options[options.len() - n..].to_vec()
        };
        let detected = snapshotter.default_options().to_vec();
        let with = |extra: &[&str]| {
            let mut all = detected.clone();
            all.extend(extra.iter().map(|s| s.to_string()));
            all
        };
        let n = detected.len();
        assert_eq!(tail(snapshotter.mounts("c").await.unwrap(), n), with(&[]));

        // The reconfigure hook, as a reload calls it: mounts from then on carry them.
        let instance =
            Instance::new(snapshotter.clone() as Arc<dyn Snapshotter>).with(snapshotter.clone());
        let config = |options: &[&str]| -> plinth_core::registration::AnyConfig {
            Arc::new(OverlayConfig {
                mount_options: options.iter().map(|s| s.to_string()).collect(),
            })
        };
        reconfigure(&instance, &config(&["volatile", "redirect_dir=on"])).unwrap();
        assert_eq!(
            tail(snapshotter.mounts("c").await.unwrap(), n + 2),
            with(&["volatile", "redirect_dir=on"])
        );
        // Options the snapshotter sets for each mount are refused, and nothing changes.
        for bad in ["lowerdir=/x", "upperdir=/y", "workdir=/z", "workdir", ""] {
            let error = reconfigure(&instance, &config(&["index=on", bad])).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains(&format!("mount_options: {bad:?} is not an option")),
                "{bad}: {error}"
            );
            assert_eq!(
                tail(snapshotter.mounts("c").await.unwrap(), n + 2),
                with(&["volatile", "redirect_dir=on"])
            );
        }
        reconfigure(&instance, &config(&[])).unwrap();
        assert_eq!(tail(snapshotter.mounts("c").await.unwrap(), n), with(&[]));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn mounts_are_containerd_overlays() {
        let dir = tempfile::tempdir().unwrap();
        let snapshotter = OverlaySnapshotter::open(dir.path()).unwrap();
        let extra = snapshotter.default_options().to_vec();
        let layer = |id: u64| {
            dir.path()
                .join(format!("snapshots/{id}/fs"))
                .display()
                .to_string()
        };
        let work = |id: u64| {
            dir.path()
                .join(format!("snapshots/{id}/work"))
                .display()
                .to_string()
        };
        let bind = |id: u64, access: &str| Mount {
            mount_type: "bind".into(),
            source: layer(id),
            target: String::new(),
            options: vec![access.into(), "rbind".into()],
        };
        let overlay = |mut options: Vec<String>| {
            options.extend(extra.iter().cloned());
            Mount {
                mount_type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options,
            }
        };
        let none = Labels::new;
        assert_eq!(
            snapshotter.prepare("a", "", none()).await.unwrap(),
            vec![bind(1, "rw")]
        );
        snapshotter.commit("c1", "a", none()).await.unwrap();
        assert_eq!(
            snapshotter.view("v0", "", none()).await.unwrap(),
            vec![bind(2, "ro")]
        );
        assert_eq!(
            snapshotter.view("v1", "c1", none()).await.unwrap(),
            vec![bind(1, "ro")]
        );
        assert_eq!(
            snapshotter.prepare("b", "c1", none()).await.unwrap(),
            vec![overlay(vec![
                format!("workdir={}", work(4)),
                format!("upperdir={}", layer(4)),
                format!("lowerdir={}", layer(1)),
            ])]
        );
        snapshotter.commit("c2", "b", none()).await.unwrap();
        assert_eq!(
            snapshotter.view("v2", "c2", none()).await.unwrap(),
            vec![overlay(vec![format!("lowerdir={}:{}", layer(4), layer(1))])]
        );
        assert_eq!(
            snapshotter.prepare("top", "c2", none()).await.unwrap(),
            vec![overlay(vec![
                format!("workdir={}", work(6)),
                format!("upperdir={}", layer(6)),
                format!("lowerdir={}:{}", layer(4), layer(1)),
            ])]
        );
        assert!(
            !dir.path().join("snapshots/5/work").exists(),
            "views have no work dir"
        );
        assert_eq!(
            fs::metadata(dir.path().join("snapshots/6/fs"))
                .unwrap()
                .mode()
                & 0o777,
            0o755
        );
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        let cases = [
            ("/plain", "/plain"),
            (r"/with\040space", "/with space"),
            (r"/back\134slash", r"/back\slash"),
            (r"/short\04", r"/short\04"),
        ];
        for (input, expected) in cases {
            assert_eq!(unescape_mountinfo(input), expected, "{input}");
        }
    }

    /// containerd refuses a root whose filesystem cannot hold an upper directory; an overlay
    /// mount is such a filesystem, and init reports the plugin as skipped, with the reason.
    #[test]
    fn a_root_on_overlay_is_refused_and_init_skips() {
        let dir = OverlayCapableDir::new();
        dir.require_overlay();
        let dir = dir.path();
        for name in ["lower", "upper", "work", "merged"] {
            fs::create_dir(dir.join(name)).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            dir.join("lower").display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        run(Command::new(tool("mount"))
            .args(["-t", "overlay", "-o", &options, "overlay"])
            .arg(dir.join("merged")))
        .unwrap();
        let reason = check_support(&dir.join("merged/root"));
        let skip = open_checked(&dir.join("merged/root2")).map(|_| ());
        unmount(&dir.join("merged")).unwrap();
        let reason = reason.unwrap_err();
        assert!(reason.contains("is on an overlay filesystem"), "{reason}");
        match skip {
            Err(InitError::Skip(skip)) => assert_eq!(
                skip,
                format!(
                    "overlay is not supported here: {}",
                    reason.replace("merged/root ", "merged/root2 ")
                )
            ),
            other => panic!("expected a skip, got {other:?}"),
        }
    }
}
