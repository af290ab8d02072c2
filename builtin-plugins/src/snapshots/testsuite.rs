//! The snapshotter conformance suite (containerd's `core/snapshots/testsuite`), for every
//! [`Snapshotter`] to run: [`run`] builds a fresh snapshotter in a fresh temporary directory
//! for each case. Each case is also a public function, and panics with its name on failure.
//!
//! The cases that look at files do what containerd's suite does: they mount what the
//! snapshotter returns on a temporary target with `mount(8)`, write and read files through
//! the mount, and unmount it. That needs root; without it those cases fail with a message
//! saying so (they never pass without having mounted anything).
//!
//! | containerd case | here |
//! |---|---|
//! | Basic | [`basic`] |
//! | StatActive | [`stat_active`] |
//! | StatComitted | [`stat_committed`] |
//! | TransitivityTest | [`transitivity`] |
//! | PreareViewFailingtest | [`prepare_view_failing`] |
//! | Update | [`update`] |
//! | Remove | [`remove`] |
//! | Walk | [`walk`] |
//! | LayerFileupdate | [`layer_file_update`] |
//! | RemoveDirectoryInLowerLayer | [`remove_directory_in_lower_layer`] |
//! | Chown | [`chown`] |
//! | DirectoryPermissionOnCommit | [`directory_permission_on_commit`] |
//! | RemoveIntermediateSnapshot | [`remove_intermediate_snapshot`] |
//! | DeletedFilesInChildSnapshot | [`deleted_files_in_child_snapshot`] |
//! | MoveFileFromLowerLayer | [`move_file_from_lower_layer`] |
//! | ViewReadonly | [`view_readonly`] |
//! | StatInWalk | [`stat_in_walk`] |
//! | CloseTwice | [`reopen`]: the trait has no `close`; dropping and reopening on the same root keeps every snapshot |
//! | RootPermission | [`root_permission`] |
//! | Rename | [`rename`] (a directory rename may fail with `EXDEV`, as on overlay without `redirect_dir`) |
//! | 128LayersMount | [`layers_128_mount`] |
//! | — | [`errors`], [`timestamps`], [`usage`], [`cleanup`]: the error categories, times, disk usage and cleanup the trait documents |
//!
//! Like containerd's suite, [`run`] clears the process umask while it runs (see
//! [`UmaskCleared`]), so that a snapshotter that leaves a mode to the umask (a root created
//! without its `chmod 0755`) shows as 0777 instead of passing as 0755 under the usual 022.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use plinth_core::Category;

use super::{Info, Kind, Mount, Snapshotter};
use crate::error::Error;
use crate::namespaces::Labels;

/// What a failing step says.
type Outcome = Result<(), String>;

macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(format!($($message)+));
        }
    };
}

trait Context<T> {
    fn context(self, what: impl Display) -> Result<T, String>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: impl Display) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// How long one case may take before it fails as hung, naming itself; far above what the
/// slowest case (128 layers mounted) takes on a loaded two-core machine, and below
/// `scripts/mutants.sh`'s time-out, so that a mutant that makes a call hang is reported by
/// the case it hangs in.
const CASE_TIME_LIMIT: Duration = Duration::from_secs(150);

fn outcome(case: &str, result: Outcome) {
    if let Err(message) = result {
        panic!("snapshotter testsuite case `{case}` failed: {message}");
    }
}

/// The labels containerd's suite puts on every snapshot.
fn gc_labels() -> Labels {
    labels(&[("containerd.io/gc.root", "testsuite")])
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn key_in(work: &Path, name: &str) -> String {
    work.join(name).display().to_string()
}

/// The process umask cleared to 0 while a value of this type lives, as containerd's suite
/// does around each case. The umask belongs to the whole process, and `cargo test` runs tests
/// as threads of one process: the first guard clears it and the last one dropped restores
/// it, so suites that overlap in time all run with 0 (a guard per suite that restored on its
/// own would hand a suite still running the old umask again). Tests of the same process that
/// overlap a suite see 0 too; none of this crate's depends on the umask.
#[derive(Debug)]
pub struct UmaskCleared(());

/// How many [`UmaskCleared`] live, and the umask to restore when the last goes.
static UMASK_GUARDS: std::sync::Mutex<(usize, u32)> = std::sync::Mutex::new((0, 0));

impl UmaskCleared {
    /// Clears the umask (if no other guard already has) until the guard is dropped.
    pub fn acquire() -> UmaskCleared {
        let mut guards = UMASK_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        if guards.0 == 0 {
            guards.1 = rustix::process::umask(rustix::fs::Mode::empty()).bits();
        }
        guards.0 += 1;
        UmaskCleared(())
    }

    /// The process umask now (read by setting it and back, under the guards' lock).
    pub fn current() -> u32 {
        let _guards = UMASK_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        let mask = rustix::process::umask(rustix::fs::Mode::empty());
        rustix::process::umask(mask);
        mask.bits()
    }
}

impl Drop for UmaskCleared {
    fn drop(&mut self) {
        let mut guards = UMASK_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        guards.0 -= 1;
        if guards.0 == 0 {
            rustix::process::umask(rustix::fs::Mode::from_bits_retain(guards.1));
        }
    }
}

/// Runs every case, each on a fresh snapshotter that `make` builds on a fresh root
/// directory. `make` must keep the snapshotter's state under that root (the [`reopen`] case
/// builds a second one on the same root).
///
/// # Panics
/// When a case fails or `make` does, naming the case.
pub async fn run<F, Fut>(make: F)
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Snapshotter>, Error>>,
{
    run_in(&std::env::temp_dir(), make).await;
}

/// [`run`], with each case's temporary directory made under `base` (for a snapshotter that
/// needs a filesystem the system's temporary directory may not be, as overlay does).
///
/// # Panics
/// When a case fails or `make` does, naming the case.
pub async fn run_in<F, Fut>(base: &Path, make: F)
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Snapshotter>, Error>>,
{
    let _umask = UmaskCleared::acquire();
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            $(
                let fixture = Fixture::new(base, &make, stringify!($case)).await;
                let steps = $case(fixture.snapshotter.as_ref(), &fixture.work);
                if tokio::time::timeout(CASE_TIME_LIMIT, steps).await.is_err() {
                    outcome(
                        stringify!($case),
                        Err(format!(
                            "it did not finish in {} s: a call never returned (or looped)",
                            CASE_TIME_LIMIT.as_secs()
                        )),
                    );
                }
                drop(fixture);
            )*
        };
    }
    cases!(
        basic,
        stat_active,
        stat_committed,
        transitivity,
        prepare_view_failing,
        update,
        labels_stay_with_their_snapshot,
        remove,
        walk,
        layer_file_update,
        remove_directory_in_lower_layer,
        chown,
        directory_permission_on_commit,
        remove_intermediate_snapshot,
        deleted_files_in_child_snapshot,
        move_file_from_lower_layer,
        view_readonly,
        stat_in_walk,
        root_permission,
        rename,
        layers_128_mount,
        errors,
        timestamps,
        usage,
        cleanup,
    );
    let Fixture {
        snapshotter,
        root,
        work,
        _dir,
    } = Fixture::new(base, &make, "reopen").await;
    reopen(snapshotter, &make, &root, &work).await;
}

/// A temporary directory with `root/` (the snapshotter's) and `work/` (the case's).
struct Fixture {
    snapshotter: Arc<dyn Snapshotter>,
    root: PathBuf,
    work: PathBuf,
    // Last: removed after the snapshotter is dropped.
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new<F, Fut>(base: &Path, make: &F, case: &str) -> Fixture
    where
        F: Fn(PathBuf) -> Fut,
        Fut: Future<Output = Result<Arc<dyn Snapshotter>, Error>>,
    {
        let fail = |what: String| -> ! {
            panic!("snapshotter testsuite case `{case}` failed: {what}");
        };
        let dir = tempfile::Builder::new()
            .prefix("snapshot-suite-")
            .tempdir_in(base)
            .unwrap_or_else(|e| fail(format!("creating a temporary directory: {e}")));
        let root = dir.path().join("root");
        let work = dir.path().join("work");
        for path in [&root, &work] {
            fs::create_dir(path)
                .unwrap_or_else(|e| fail(format!("creating {}: {e}", path.display())));
        }
        let snapshotter = make(root.clone())
            .await
            .unwrap_or_else(|e| fail(format!("making the snapshotter: {e}")));
        Fixture {
            snapshotter,
            root,
            work,
            _dir: dir,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mounting

/// Mounts made by [`mount_all`]; unmounted by [`Mounted::unmount`] or, failing that, on drop.
#[derive(Debug)]
pub struct Mounted {
    target: PathBuf,
    layers: usize,
}

impl Mounted {
    /// The mount point.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts everything mounted on the target.
    ///
    /// # Errors
    /// What `umount(8)` said.
    pub fn unmount(mut self) -> Result<(), String> {
        while self.layers > 0 {
            unmount(&self.target).context(format!("unmounting {}", self.target.display()))?;
            self.layers -= 1;
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        while self.layers > 0 {
            self.layers -= 1;
            if unmount(&self.target).is_err() {
                // A failing case must not leave a mount behind: detach it.
                let _ = run_tool(Command::new("umount").arg("-l").arg(&self.target));
            }
        }
    }
}

/// `umount(8)`, retried while the target is busy (50 times, 50 ms apart, as containerd
/// does): a child process forked elsewhere in this process may briefly hold a descriptor
/// opened under the mount until it execs.
fn unmount(target: &Path) -> Result<(), String> {
    let mut attempts = 0;
    loop {
        match run_tool(Command::new("umount").arg(target)) {
            Err(message) if message.contains("busy") && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Fails unless the process runs as root, which mounting needs.
///
/// # Errors
/// A message saying that the mounting cases need root.
pub fn require_root() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("unknown");
    ensure!(
        effective == "0",
        "mounting snapshots needs root, but the effective uid is {effective}: run the suite as root (the cases that mount never pass without mounting)"
    );
    Ok(())
}

/// Mounts `mounts` on `target`, in order, with `mount(8)`, as containerd's `mount.All`:
/// `bind` mounts (or any with a `bind`/`rbind` option) as binds, others with `-t <type>`.
/// An overlay `lowerdir=` too long for one page is shortened to paths relative to the
/// lower directories' common parent, which becomes the working directory of `mount(8)`
/// (as containerd does).
///
/// # Errors
/// Not root; what `mount(8)` said.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<Mounted, String> {
    require_root()?;
    ensure!(!mounts.is_empty(), "the snapshotter returned no mounts");
    let mut mounted = Mounted {
        target: target.to_path_buf(),
        layers: 0,
    };
    for mount in mounts {
        let mut command = Command::new("mount");
        let mut options = mount.options.clone();
        let is_bind = options.iter().any(|o| o == "bind" || o == "rbind");
        if mount.mount_type == "bind" {
            if !is_bind {
                options.insert(0, "bind".to_string());
            }
        } else if !is_bind {
            command.arg("-t").arg(&mount.mount_type);
        }
        let (directory, options) = compact_lowerdir(options);
        if let Some(directory) = directory {
            command.current_dir(directory);
        }
        if !options.is_empty() {
            command.arg("-o").arg(options.join(","));
        }
        command.arg(&mount.source).arg(target);
        run_tool(&mut command).context(format!("mounting {mount:?} on {}", target.display()))?;
        mounted.layers += 1;
    }
    Ok(mounted)
}

/// Options longer than this are shortened (a page is 4096 bytes; `mount(8)` adds its own).
const LONGEST_OPTIONS: usize = 3500;

fn compact_lowerdir(options: Vec<String>) -> (Option<PathBuf>, Vec<String>) {
    if options.join(",").len() <= LONGEST_OPTIONS {
        return (None, options);
    }
    let Some(index) = options.iter().position(|o| o.starts_with("lowerdir=")) else {
        return (None, options);
    };
    let lowers: Vec<&Path> = options[index]["lowerdir=".len()..]
        .split(':')
        .map(Path::new)
        .collect();
    if lowers.len() < 2 || !lowers.iter().all(|p| p.is_absolute()) {
        return (None, options);
    }
    let mut common = lowers[0].parent().unwrap_or(Path::new("/")).to_path_buf();
    while !lowers.iter().all(|p| p.starts_with(&common)) {
        if !common.pop() {
            break;
        }
    }
    if common.parent().is_none() {
        return (None, options);
    }
    let relative: Vec<String> = lowers
        .iter()
        .map(|p| p.strip_prefix(&common).unwrap_or(p).display().to_string())
        .collect();
    let mut options = options;
    options[index] = format!("lowerdir={}", relative.join(":"));
    (Some(common), options)
}

fn run_tool(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    ensure!(
        output.status.success(),
        "{shown} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// File trees: containerd's fstest appliers and directory comparison

/// One change to a file tree (containerd's `fstest` appliers). Paths are relative to the
/// tree's root (a leading `/` is ignored).
#[derive(Debug, Clone)]
pub enum Op {
    /// Writes a file and sets its mode.
    CreateFile(String, Vec<u8>, u32),
    /// Creates a directory and sets its mode.
    CreateDir(String, u32),
    /// Removes a file or a tree; a missing one is fine.
    RemoveAll(String),
    /// Changes the owner (of a symlink itself).
    Chown(String, u32, u32),
    /// Makes a hard link: existing path, new path.
    Link(String, String),
    /// Renames: old path, new path.
    Rename(String, String),
    /// Renames a directory, or does nothing if the filesystem answers `EXDEV` (overlay
    /// without `redirect_dir` cannot rename a directory from a lower layer).
    RenameDirectoryUnlessCrossDevice(String, String),
}

fn create_file(path: &str, data: &[u8], mode: u32) -> Op {
    Op::CreateFile(path.to_string(), data.to_vec(), mode)
}

fn create_dir(path: &str, mode: u32) -> Op {
    Op::CreateDir(path.to_string(), mode)
}

fn remove_all(path: &str) -> Op {
    Op::RemoveAll(path.to_string())
}

fn chown_op(path: &str, uid: u32, gid: u32) -> Op {
    Op::Chown(path.to_string(), uid, gid)
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Applies `ops` to the tree at `root`; returns the ops that took effect (all but a
/// [`Op::RenameDirectoryUnlessCrossDevice`] that met `EXDEV`), to replay on a model tree.
///
/// # Errors
/// The first op that fails.
pub fn apply(root: &Path, ops: &[Op]) -> Result<Vec<Op>, String> {
    let mut applied = Vec::new();
    for op in ops {
        let result = match op {
            Op::CreateFile(path, data, mode) => {
                let path = under(root, path);
                fs::write(&path, data)
                    .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(*mode)))
            }
            Op::CreateDir(path, mode) => {
                let path = under(root, path);
                fs::create_dir(&path)
                    .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(*mode)))
            }
            Op::RemoveAll(path) => remove_tree(&under(root, path)),
            Op::Chown(path, uid, gid) => {
                std::os::unix::fs::lchown(under(root, path), Some(*uid), Some(*gid))
            }
            Op::Link(old, new) => fs::hard_link(under(root, old), under(root, new)),
            Op::Rename(old, new) => fs::rename(under(root, old), under(root, new)),
            Op::RenameDirectoryUnlessCrossDevice(old, new) => {
                match fs::rename(under(root, old), under(root, new)) {
                    Err(e) if e.kind() == io::ErrorKind::CrossesDevices => continue,
                    other => other,
                }
            }
        };
        result.context(format!("applying {op:?} in {}", root.display()))?;
        applied.push(op.clone());
    }
    Ok(applied)
}

fn remove_tree(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// What the comparison sees of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Directory {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        data: Vec<u8>,
    },
    Symlink {
        uid: u32,
        gid: u32,
        target: PathBuf,
    },
    Other {
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// Every entry under `root` (not `root` itself), by relative path.
fn tree(root: &Path) -> Result<BTreeMap<PathBuf, Node>, String> {
    let mut nodes = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).context(format!("reading {}", dir.display()))? {
            let path = entry.context(format!("reading {}", dir.display()))?.path();
            let meta =
                fs::symlink_metadata(&path).context(format!("reading {}", path.display()))?;
            let (mode, uid, gid) = (meta.mode() & 0o7777, meta.uid(), meta.gid());
            let node = if meta.is_dir() {
                pending.push(path.clone());
                Node::Directory { mode, uid, gid }
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).context(format!("reading {}", path.display()))?;
                Node::Symlink { uid, gid, target }
            } else if meta.is_file() {
                let data = fs::read(&path).context(format!("reading {}", path.display()))?;
                Node::File {
                    mode,
                    uid,
                    gid,
                    data,
                }
            } else {
                Node::Other { mode, uid, gid }
            };
            let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            nodes.insert(relative, node);
        }
    }
    Ok(nodes)
}

/// Checks that two trees hold the same entries (type, mode, owner, contents, link targets).
///
/// # Errors
/// The first differences, listed.
pub fn check_directory_equal(expected: &Path, actual: &Path) -> Result<(), String> {
    let (want, got) = (tree(expected)?, tree(actual)?);
    if want == got {
        return Ok(());
    }
    let mut differences = Vec::new();
    for (path, node) in &want {
        match got.get(path) {
            None => differences.push(format!("{} is missing", path.display())),
            Some(other) if other != node => {
                differences.push(format!(
                    "{}: expected {node:?}, found {other:?}",
                    path.display()
                ));
            }
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        differences.push(format!("{} is unexpected", path.display()));
    }
    differences.truncate(10);
    Err(format!(
        "{} differs from {}: {}",
        actual.display(),
        expected.display(),
        differences.join("; ")
    ))
}

fn fresh_dir(work: &Path, prefix: &str) -> Result<PathBuf, String> {
    let path = work.join(unique(prefix));
    fs::create_dir(&path).context(format!("creating {}", path.display()))?;
    Ok(path)
}

/// Checks `dir` against a fresh tree built by applying `layers` in order.
fn check_directory_equal_with(work: &Path, dir: &Path, layers: &[&[Op]]) -> Outcome {
    let model = fresh_dir(work, "model")?;
    for ops in layers {
        apply(&model, ops)?;
    }
    let result = check_directory_equal(&model, dir);
    let _ = remove_tree(&model);
    result
}

/// Prepares `key` on `parent` and mounts it on the directory named by `key` under `work`.
async fn prepare_mounted(
    snapshotter: &dyn Snapshotter,
    work: &Path,
    name: &str,
    parent: &str,
) -> Result<(String, Mounted), String> {
    let key = key_in(work, name);
    fs::create_dir_all(&key).context(format!("creating {key}"))?;
    let mounts = snapshotter
        .prepare(&key, parent, gc_labels())
        .await
        .context(format!("prepare {key:?} on {parent:?}"))?;
    let mounted = mount_all(&mounts, Path::new(&key))?;
    Ok((key, mounted))
}

/// containerd's `createSnapshot`: prepare on `parent`, apply `ops` through a mount, commit
/// under a new name. Returns the name and the ops that took effect.
async fn create_snapshot(
    snapshotter: &dyn Snapshotter,
    parent: &str,
    work: &Path,
    ops: &[Op],
) -> Result<(String, Vec<Op>), String> {
    let name = unique("layer");
    let prepare = format!("{name}-prepare");
    let mounts = snapshotter
        .prepare(&prepare, parent, gc_labels())
        .await
        .context(format!("prepare {prepare:?} on {parent:?}"))?;
    let target = fresh_dir(work, "prepare")?;
    let mounted = mount_all(&mounts, &target)?;
    let applied = apply(&target, ops);
    mounted.unmount()?;
    let applied = applied?;
    let _ = fs::remove_dir(&target);
    snapshotter
        .commit(&name, &prepare, gc_labels())
        .await
        .context(format!("commit {prepare:?} as {name:?}"))?;
    Ok((name, applied))
}

/// containerd's `checkSnapshot`: a view of `name`, mounted, must equal `expected`.
async fn check_snapshot(
    snapshotter: &dyn Snapshotter,
    work: &Path,
    name: &str,
    expected: &Path,
) -> Outcome {
    let view = format!("{name}-view");
    let mounts = snapshotter
        .view(&view, name, gc_labels())
        .await
        .context(format!("view {view:?} of {name:?}"))?;
    let target = fresh_dir(work, "check")?;
    let mounted = mount_all(&mounts, &target)?;
    let result = check_directory_equal(expected, &target);
    mounted.unmount()?;
    let _ = fs::remove_dir(&target);
    snapshotter
        .remove(&view)
        .await
        .context(format!("remove {view:?}"))?;
    result
}

/// containerd's `checkSnapshots`: a chain of snapshots, one per layer of ops, each checked
/// through a view against a plain directory the same ops were applied to.
async fn check_snapshots(
    snapshotter: &dyn Snapshotter,
    work: &Path,
    layers: &[Vec<Op>],
) -> Outcome {
    let flat = fresh_dir(work, "flat")?;
    let mut parent = String::new();
    for (i, ops) in layers.iter().enumerate() {
        let (name, applied) = create_snapshot(snapshotter, &parent, work, ops)
            .await
            .context(format!("creating snapshot {}", i + 1))?;
        apply(&flat, &applied).context(format!("applying layer {} to the flat copy", i + 1))?;
        check_snapshot(snapshotter, work, &name, &flat)
            .await
            .context(format!("checking snapshot {}", i + 1))?;
        parent = name;
    }
    Ok(())
}

fn expect_category<T: std::fmt::Debug>(
    result: Result<T, Error>,
    category: Category,
    what: &str,
) -> Outcome {
    match result {
        Err(error) if error.category == category => Ok(()),
        Err(error) => Err(format!(
            "{what}: expected a {category:?} error, got {:?}: {}",
            error.category, error.message
        )),
        Ok(value) => Err(format!(
            "{what}: expected a {category:?} error, got Ok({value:?})"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// The cases

macro_rules! case {
    ($(#[$doc:meta])* $name:ident, $steps:ident) => {
        $(#[$doc])*
        ///
        /// # Panics
        /// When the snapshotter does not behave, with the case's name.
        pub async fn $name(snapshotter: &dyn Snapshotter, work: &Path) {
            outcome(stringify!($name), $steps(snapshotter, work).await);
        }
    };
}

case!(
    /// Prepare, write, commit, prepare on it, change, commit, view: the whole workflow,
    /// checked through mounts, with stat and walk agreeing.
    basic,
    basic_steps
);

async fn basic_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let initial = vec![
        create_file("/foo", b"foo\n", 0o777),
        create_dir("/a", 0o755),
        create_dir("/a/b", 0o755),
        create_dir("/a/b/c", 0o755),
    ];
    let diff = vec![
        create_file("/bar", b"bar\n", 0o777),
        create_file("/foo", b"bar\n", 0o777),
        remove_all("/a/b"),
    ];

    let (preparing, mounted) = prepare_mounted(snapshotter, work, "preparing", "").await?;
    let applied = apply(Path::new(&preparing), &initial);
    mounted.unmount()?;
    applied?;
    let committed = key_in(work, "committed");
    snapshotter
        .commit(&committed, &preparing, gc_labels())
        .await
        .context("commit")?;
    let si = snapshotter
        .stat(&committed)
        .await
        .context("stat committed")?;
    ensure!(si.parent.is_empty(), "committed has parent {:?}", si.parent);
    ensure!(si.kind == Kind::Committed, "committed is {:?}", si.kind);
    ensure!(
        snapshotter.stat(&preparing).await.is_err(),
        "{preparing} should no longer be available after commit"
    );

    let (next, mounted) = prepare_mounted(snapshotter, work, "nextlayer", &committed).await?;
    let checked = check_directory_equal_with(work, Path::new(&next), &[&initial])
        .and_then(|()| apply(Path::new(&next), &diff).map(|_| ()));
    mounted.unmount()?;
    checked?;
    let ni = snapshotter.stat(&next).await.context("stat next")?;
    ensure!(ni.parent == committed, "next has parent {:?}", ni.parent);
    ensure!(ni.kind == Kind::Active, "next is {:?}", ni.kind);

    let next_committed = key_in(work, "committed-next");
    snapshotter
        .commit(&next_committed, &next, gc_labels())
        .await
        .context("commit next")?;
    let si2 = snapshotter.stat(&next_committed).await.context("stat")?;
    ensure!(
        si2.parent == committed,
        "committed-next has parent {:?}",
        si2.parent
    );
    ensure!(
        si2.kind == Kind::Committed,
        "committed-next is {:?}",
        si2.kind
    );
    ensure!(
        snapshotter.stat(&next).await.is_err(),
        "{next} should no longer be available after commit"
    );

    let walked = snapshotter.walk(&[]).await.context("walk")?;
    for expected in [&si, &si2] {
        let found = walked.iter().find(|info| info.name == expected.name);
        ensure!(
            found == Some(expected),
            "walk gave {found:?} for {}, stat gave {expected:?}",
            expected.name
        );
    }

    let view = key_in(work, "nextnextlayer");
    fs::create_dir_all(&view).context("creating the view's mount point")?;
    let mounts = snapshotter
        .view(&view, &next_committed, gc_labels())
        .await
        .context("view")?;
    let mounted = mount_all(&mounts, Path::new(&view))?;
    let checked = check_directory_equal_with(work, Path::new(&view), &[&initial, &diff]);
    mounted.unmount()?;
    checked?;
    snapshotter.remove(&view).await.context("remove view")?;

    match snapshotter.remove(&committed).await {
        Ok(()) => return Err("removing a snapshot with a child succeeded".to_string()),
        Err(error) => ensure!(
            error.message.contains("remove"),
            "the error for removing a parent does not say \"remove\": {}",
            error.message
        ),
    }
    snapshotter
        .remove(&next_committed)
        .await
        .context("remove")?;
    snapshotter.remove(&committed).await.context("remove")?;
    Ok(())
}

case!(
    /// Stat of a prepared snapshot says active, no parent.
    stat_active,
    stat_active_steps
);

async fn stat_active_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    // As containerd's suite: write through the mount and stat while it is mounted.
    let (preparing, mounted) = prepare_mounted(snapshotter, work, "preparing", "").await?;
    let result = write_foo_and_stat_active(snapshotter, &preparing).await;
    mounted.unmount()?;
    result
}

/// Writes `foo` into the mounted snapshot `preparing` and checks its stat.
async fn write_foo_and_stat_active(snapshotter: &dyn Snapshotter, preparing: &str) -> Outcome {
    apply(
        Path::new(preparing),
        &[create_file("/foo", b"foo\n", 0o777)],
    )
    .context("writing foo through the mount")?;
    let si = snapshotter.stat(preparing).await.context("stat")?;
    ensure!(si.name == preparing, "name {:?}", si.name);
    ensure!(si.kind == Kind::Active, "kind {:?}", si.kind);
    ensure!(si.parent.is_empty(), "parent {:?}", si.parent);
    Ok(())
}

case!(
    /// Stat of a committed snapshot says committed, no parent.
    stat_committed,
    stat_committed_steps
);

async fn stat_committed_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    // As containerd's suite: write through the mount and commit while it is mounted.
    let (preparing, mounted) = prepare_mounted(snapshotter, work, "preparing", "").await?;
    let committed = key_in(work, "committed");
    let result = write_foo_and_commit(snapshotter, &preparing, &committed).await;
    mounted.unmount()?;
    result?;
    let si = snapshotter.stat(&committed).await.context("stat")?;
    ensure!(si.name == committed, "name {:?}", si.name);
    ensure!(si.kind == Kind::Committed, "kind {:?}", si.kind);
    ensure!(si.parent.is_empty(), "parent {:?}", si.parent);
    // What was written through the mount is what was committed.
    let expected = fresh_dir(work, "expected")?;
    apply(&expected, &[create_file("/foo", b"foo\n", 0o777)])?;
    check_snapshot(snapshotter, work, &committed, &expected).await
}

/// Writes `foo` into the mounted snapshot `preparing` and commits it as `committed`.
async fn write_foo_and_commit(
    snapshotter: &dyn Snapshotter,
    preparing: &str,
    committed: &str,
) -> Outcome {
    apply(
        Path::new(preparing),
        &[create_file("/foo", b"foo\n", 0o777)],
    )
    .context("writing foo through the mount")?;
    snapshotter
        .commit(committed, preparing, gc_labels())
        .await
        .context("commit")
}

case!(
    /// A <- B <- C: parents are recorded and resolvable.
    transitivity,
    transitivity_steps
);

async fn transitivity_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let (preparing, mounted) = prepare_mounted(snapshotter, work, "preparing", "").await?;
    let written = fs::write(Path::new(&preparing).join("foo"), b"foo\n");
    mounted.unmount()?;
    written.context("writing foo")?;
    let snap_a = key_in(work, "snapA");
    snapshotter
        .commit(&snap_a, &preparing, gc_labels())
        .await
        .context("commit A")?;
    let (next, mounted) = prepare_mounted(snapshotter, work, "next", &snap_a).await?;
    let written = fs::write(Path::new(&next).join("foo"), b"foo bar\n");
    mounted.unmount()?;
    written.context("writing foo")?;
    let snap_b = key_in(work, "snapB");
    snapshotter
        .commit(&snap_b, &next, gc_labels())
        .await
        .context("commit B")?;
    let si_a = snapshotter.stat(&snap_a).await.context("stat A")?;
    let si_b = snapshotter.stat(&snap_b).await.context("stat B")?;
    let si_parent_b = snapshotter
        .stat(&si_b.parent)
        .await
        .context("stat B's parent")?;
    ensure!(si_a.parent.is_empty(), "A has parent {:?}", si_a.parent);
    ensure!(si_b.parent == snap_a, "B has parent {:?}", si_b.parent);
    ensure!(
        si_parent_b.parent.is_empty(),
        "B's parent has parent {:?}",
        si_parent_b.parent
    );
    Ok(())
}

case!(
    /// Prepare or view with a key that exists fails.
    prepare_view_failing,
    prepare_view_failing_steps
);

async fn prepare_view_failing_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let (preparing, mounted) = prepare_mounted(snapshotter, work, "preparing", "").await?;
    mounted.unmount()?;
    let snap_a = key_in(work, "snapA");
    snapshotter
        .commit(&snap_a, &preparing, gc_labels())
        .await
        .context("commit")?;
    let new_layer = key_in(work, "newlayer");
    snapshotter
        .prepare(&new_layer, &snap_a, gc_labels())
        .await
        .context("prepare")?;
    ensure!(
        snapshotter
            .view(&new_layer, &snap_a, gc_labels())
            .await
            .is_err(),
        "a view with the key of an active snapshot succeeded"
    );
    let prep_layer = key_in(work, "prepLayer");
    snapshotter
        .prepare(&prep_layer, &snap_a, gc_labels())
        .await
        .context("prepare")?;
    ensure!(
        snapshotter
            .prepare(&prep_layer, &snap_a, gc_labels())
            .await
            .is_err(),
        "a second prepare with the same key succeeded"
    );
    let view_layer = key_in(work, "viewLayer");
    snapshotter
        .view(&view_layer, &snap_a, gc_labels())
        .await
        .context("view")?;
    ensure!(
        snapshotter
            .view(&view_layer, &snap_a, gc_labels())
            .await
            .is_err(),
        "a second view with the same key succeeded"
    );
    Ok(())
}

/// containerd's `baseTestSnapshots`: c1 <- c2 (committed), a1 on c2, a2, v1 on c2, v2.
async fn base_test_snapshots(snapshotter: &dyn Snapshotter) -> Outcome {
    snapshotter
        .prepare("c1-a", "", gc_labels())
        .await
        .context("prepare c1-a")?;
    snapshotter
        .commit("c1", "c1-a", gc_labels())
        .await
        .context("commit c1")?;
    snapshotter
        .prepare("c2-a", "c1", gc_labels())
        .await
        .context("prepare c2-a")?;
    snapshotter
        .commit("c2", "c2-a", gc_labels())
        .await
        .context("commit c2")?;
    snapshotter
        .prepare("a1", "c2", gc_labels())
        .await
        .context("prepare a1")?;
    snapshotter
        .prepare("a2", "", gc_labels())
        .await
        .context("prepare a2")?;
    snapshotter
        .view("v1", "c2", gc_labels())
        .await
        .context("view v1")?;
    snapshotter
        .view("v2", "", gc_labels())
        .await
        .context("view v2")?;
    Ok(())
}

case!(
    /// Update: created stays, updated moves, labels follow the field paths, kind and parent
    /// never change, other field paths are invalid.
    update,
    update_steps
);

async fn update_steps(snapshotter: &dyn Snapshotter, _work: &Path) -> Outcome {
    let t1 = SystemTime::now();
    base_test_snapshots(snapshotter).await?;
    let t2 = SystemTime::now();
    let cases: &[(&str, Kind, &str)] = &[
        ("c1", Kind::Committed, ""),
        ("c2", Kind::Committed, "c1"),
        ("a1", Kind::Active, "c2"),
        ("a2", Kind::Active, ""),
        ("v1", Kind::View, "c2"),
        ("v2", Kind::View, ""),
    ];
    for &(name, kind, parent) in cases {
        let mut st = snapshotter
            .stat(name)
            .await
            .context(format!("stat {name}"))?;
        ensure!(
            st.created_at >= t1 && st.created_at <= t2,
            "({name}) created {:?} is not between {t1:?} and {t2:?}",
            st.created_at
        );
        ensure!(
            st.created_at == st.updated_at,
            "({name}) updated {:?} != created",
            st.updated_at
        );
        ensure!(
            st.kind == kind,
            "({name}) kind {:?}, expected {kind:?}",
            st.kind
        );
        ensure!(
            st.parent == parent,
            "({name}) parent {:?}, expected {parent:?}",
            st.parent
        );
        ensure!(st.name == name, "({name}) name {:?}", st.name);

        let created = st.created_at;
        let mut expected = labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3")]);
        expected.insert("containerd.io/gc.root".into(), "testsuite".into());
        st.parent = "doesnotexist".into();
        st.labels = expected.clone();
        let u1 = SystemTime::now();
        let st2 = snapshotter
            .update(st, &[])
            .await
            .context(format!("update {name}"))?;
        let u2 = SystemTime::now();
        ensure!(
            st2.created_at == created,
            "({name}) created changed to {:?}",
            st2.created_at
        );
        ensure!(
            st2.updated_at >= u1 && st2.updated_at <= u2,
            "({name}) updated {:?} is not between {u1:?} and {u2:?}",
            st2.updated_at
        );
        ensure!(
            st2.kind == kind,
            "({name}) kind {:?} after update",
            st2.kind
        );
        ensure!(
            st2.parent == parent,
            "({name}) parent {:?} after update",
            st2.parent
        );
        ensure!(
            st2.name == name,
            "({name}) name {:?} after update",
            st2.name
        );
        ensure!(
            st2.labels == expected,
            "({name}) labels {:?}, expected {expected:?}",
            st2.labels
        );

        let mut st = st2;
        let mut expected = labels(&[("l1", "updated"), ("l3", "v3")]);
        expected.insert("containerd.io/gc.root".into(), "testsuite".into());
        st.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let paths = ["labels.l1".to_string(), "labels.l2".to_string()];
        let st = snapshotter
            .update(st, &paths)
            .await
            .context(format!("update {name}"))?;
        ensure!(
            st.labels == expected,
            "({name}) labels {:?}, expected {expected:?}",
            st.labels
        );

        let mut st = st;
        let mut expected = labels(&[("l4", "v4")]);
        expected.insert("containerd.io/gc.root".into(), "testsuite".into());
        st.labels = expected.clone();
        let mut st = snapshotter
            .update(st, &["labels".to_string()])
            .await
            .context(format!("update {name}"))?;
        ensure!(
            st.labels == expected,
            "({name}) labels {:?}, expected {expected:?}",
            st.labels
        );

        st.parent = "doesnotexist".into();
        expect_category(
            snapshotter.update(st, &["parent".to_string()]).await,
            Category::InvalidArgument,
            &format!("({name}) update of the parent field path"),
        )?;
    }
    Ok(())
}

case!(
    /// Each snapshot has exactly its own labels, in stat and in walk, whatever its
    /// neighbours (by key) carry. Ours, not containerd's.
    labels_stay_with_their_snapshot,
    labels_stay_with_their_snapshot_steps
);

async fn labels_stay_with_their_snapshot_steps(
    snapshotter: &dyn Snapshotter,
    _work: &Path,
) -> Outcome {
    let mut expected = BTreeMap::new();
    for (key, own) in [("a", Some("first")), ("b", Some("second")), ("c", None)] {
        let mut labels = gc_labels();
        if let Some(value) = own {
            labels.insert("which".into(), value.into());
        }
        snapshotter
            .prepare(key, "", labels.clone())
            .await
            .context(format!("prepare {key}"))?;
        expected.insert(key.to_string(), labels);
    }
    for (key, labels) in &expected {
        let info = snapshotter.stat(key).await.context(format!("stat {key}"))?;
        ensure!(
            &info.labels == labels,
            "stat {key}: labels {:?}, expected {labels:?}",
            info.labels
        );
    }
    for info in snapshotter.walk(&[]).await.context("walk")? {
        let labels = &expected[&info.name];
        ensure!(
            &info.labels == labels,
            "walk, {}: labels {:?}, expected {labels:?}",
            info.name,
            info.labels
        );
    }
    Ok(())
}

case!(
    /// Keys of removed snapshots can be used again, for any kind.
    remove,
    remove_steps
);

async fn remove_steps(snapshotter: &dyn Snapshotter, _work: &Path) -> Outcome {
    snapshotter
        .prepare("committed-a", "", gc_labels())
        .await
        .context("prepare")?;
    snapshotter
        .commit("committed-1", "committed-a", gc_labels())
        .await
        .context("commit")?;
    snapshotter
        .prepare("reuse-1", "committed-1", gc_labels())
        .await
        .context("prepare")?;
    snapshotter.remove("reuse-1").await.context("remove")?;
    snapshotter
        .view("reuse-1", "committed-1", gc_labels())
        .await
        .context("view")?;
    snapshotter.remove("reuse-1").await.context("remove")?;
    snapshotter
        .prepare("reuse-1", "", gc_labels())
        .await
        .context("prepare")?;
    snapshotter.remove("committed-1").await.context("remove")?;
    snapshotter
        .commit("committed-1", "reuse-1", gc_labels())
        .await
        .context("commit")?;
    Ok(())
}

case!(
    /// Walk with containerd's filters over kind, name, parent and labels; results sorted
    /// by name.
    walk,
    walk_steps
);

async fn walk_steps(snapshotter: &dyn Snapshotter, _work: &Path) -> Outcome {
    let root = labels(&[("containerd.io/gc.root", "check-walk")]);
    let with = |l: &str| {
        let mut labels = root.clone();
        labels.insert("l".into(), l.into());
        labels
    };
    snapshotter
        .prepare("a-np", "", root.clone())
        .await
        .context("prepare a-np")?;
    snapshotter
        .prepare("p-tmp", "", root.clone())
        .await
        .context("prepare p-tmp")?;
    snapshotter
        .commit("p", "p-tmp", root.clone())
        .await
        .context("commit p")?;
    snapshotter
        .prepare("a", "p", root.clone())
        .await
        .context("prepare a")?;
    snapshotter
        .view("v", "p", root.clone())
        .await
        .context("view v")?;
    snapshotter
        .prepare("p-wl-tmp", "", root.clone())
        .await
        .context("prepare p-wl-tmp")?;
    snapshotter
        .commit("p-wl", "p-wl-tmp", with("1"))
        .await
        .context("commit p-wl")?;
    snapshotter
        .prepare("a-wl", "p-wl", with("2"))
        .await
        .context("prepare a-wl")?;
    snapshotter
        .view("v-wl", "p-wl", with("3"))
        .await
        .context("view v-wl")?;
    snapshotter
        .prepare("a-np-wl", "", with("2"))
        .await
        .context("prepare a-np-wl")?;

    let cases: &[(&[&str], &[&str])] = &[
        (
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
            &[r#"labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            &["a-np", "a", "a-wl", "a-np-wl"],
            &[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            &["v", "v-wl"],
            &[r#"kind==view,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            &["p", "p-wl"],
            &[r#"kind==committed,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (&["p", "a-np-wl"], &["name==p", "name==a-np-wl"]),
        (&["a-wl"], &["name==a-wl,labels.l"]),
        (&["a", "v"], &["parent==p"]),
        (
            &["a", "v", "a-wl", "v-wl"],
            &[r#"parent!="",labels."containerd.io/gc.root"==check-walk"#],
        ),
        (&["p-wl", "a-wl", "v-wl", "a-np-wl"], &["labels.l"]),
        (&["a-wl", "a-np-wl"], &["labels.l==2"]),
        // Ours: a field snapshots do not have matches nothing, nested or not.
        (&[], &["unknown==p"]),
        (&[], &["unknown.l==2"]),
    ];
    for (i, (matches, filters)) in cases.iter().enumerate() {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let names: Vec<String> = snapshotter
            .walk(&filters)
            .await
            .context(format!("[{i}] walk {filters:?}"))?
            .into_iter()
            .map(|info| info.name)
            .collect();
        let mut expected: Vec<String> = matches.iter().map(|m| m.to_string()).collect();
        expected.sort();
        ensure!(
            names == expected,
            "[{i}] walk {filters:?} gave {names:?}, expected {expected:?} (sorted by name)"
        );
    }
    Ok(())
}

case!(
    /// A file changed in an upper layer shows its new contents (docker#21555), run five
    /// times across second boundaries.
    layer_file_update,
    layer_file_update_steps
);

async fn layer_file_update_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let l1 = vec![
        create_dir("/etc", 0o700),
        create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o644),
    ];
    let l2 = vec![
        create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
        create_dir("/root", 0o700),
        create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
    ];
    for round in 0..5 {
        check_snapshots(snapshotter, work, &[l1.clone(), l2.clone()])
            .await
            .context(format!("round {}", round + 1))?;
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        tokio::time::sleep(Duration::from_nanos(
            1_000_000_000 - u64::from(since.subsec_nanos()),
        ))
        .await;
    }
    Ok(())
}

case!(
    /// A directory removed and recreated in an upper layer hides the lower one's files
    /// (docker#25244).
    remove_directory_in_lower_layer,
    remove_directory_in_lower_layer_steps
);

async fn remove_directory_in_lower_layer_steps(
    snapshotter: &dyn Snapshotter,
    work: &Path,
) -> Outcome {
    let layers = [
        vec![
            create_dir("/lib", 0o700),
            create_file("/lib/hidden", b"", 0o644),
        ],
        vec![
            remove_all("/lib"),
            create_dir("/lib", 0o700),
            create_file("/lib/not-hidden", b"", 0o644),
        ],
        vec![create_file("/lib/newfile", b"", 0o644)],
    ];
    check_snapshots(snapshotter, work, &layers).await
}

case!(
    /// Ownership changed in an upper layer sticks (docker#20240, #24913, #28391).
    chown,
    chown_steps
);

async fn chown_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let layers = [
        vec![
            create_dir("/opt", 0o700),
            create_dir("/opt/a", 0o700),
            create_dir("/opt/a/b", 0o700),
            create_file("/opt/a/b/file.txt", b"hello", 0o644),
        ],
        vec![
            chown_op("/opt", 1, 1),
            chown_op("/opt/a", 1, 1),
            chown_op("/opt/a/b", 1, 1),
            chown_op("/opt/a/b/file.txt", 1, 1),
        ],
    ];
    check_snapshots(snapshotter, work, &layers).await
}

case!(
    /// Ownership and permissions of directories survive commits (docker#27298).
    directory_permission_on_commit,
    directory_permission_on_commit_steps
);

async fn directory_permission_on_commit_steps(
    snapshotter: &dyn Snapshotter,
    work: &Path,
) -> Outcome {
    let layers = [
        vec![
            create_dir("/dir1", 0o700),
            create_dir("/dir2", 0o700),
            create_dir("/dir3", 0o700),
            create_dir("/dir4", 0o700),
            create_file("/dir4/f1", b"...", 0o644),
            create_dir("/dir5", 0o700),
            create_file("/dir5/f1", b"...", 0o644),
            chown_op("/dir1", 1, 1),
            chown_op("/dir2", 1, 1),
            chown_op("/dir3", 1, 1),
            chown_op("/dir5", 1, 1),
            chown_op("/dir5/f1", 1, 1),
        ],
        vec![
            chown_op("/dir2", 0, 0),
            remove_all("/dir3"),
            chown_op("/dir4", 1, 1),
            chown_op("/dir4/f1", 1, 1),
        ],
        vec![
            create_dir("/dir3", 0o700),
            chown_op("/dir3", 1, 1),
            remove_all("/dir5"),
            create_dir("/dir5", 0o700),
            chown_op("/dir5", 1, 1),
        ],
    ];
    check_snapshots(snapshotter, work, &layers).await
}

case!(
    /// An intermediate layer cannot be removed while a child exists; top-down removal works.
    remove_intermediate_snapshot,
    remove_intermediate_snapshot_steps
);

async fn remove_intermediate_snapshot_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let (base, mounted) = prepare_mounted(snapshotter, work, "base", "").await?;
    mounted.unmount()?;
    let committed_base = key_in(work, "committed-base");
    snapshotter
        .commit(&committed_base, &base, gc_labels())
        .await
        .context("commit base")?;
    let intermediate = key_in(work, "intermediate");
    snapshotter
        .prepare(&intermediate, &committed_base, gc_labels())
        .await
        .context("prepare intermediate")?;
    let committed_inter = key_in(work, "committed-inter");
    snapshotter
        .commit(&committed_inter, &intermediate, gc_labels())
        .await
        .context("commit intermediate")?;
    let top = key_in(work, "toplayer");
    snapshotter
        .prepare(&top, &committed_inter, gc_labels())
        .await
        .context("prepare top")?;
    ensure!(
        snapshotter.remove(&committed_inter).await.is_err(),
        "removing the intermediate layer succeeded"
    );
    snapshotter.remove(&top).await.context("remove top")?;
    snapshotter
        .remove(&committed_inter)
        .await
        .context("remove intermediate")?;
    snapshotter
        .remove(&committed_base)
        .await
        .context("remove base")?;
    Ok(())
}

case!(
    /// Files deleted in a child are gone in it and its children.
    deleted_files_in_child_snapshot,
    deleted_files_in_child_snapshot_steps
);

async fn deleted_files_in_child_snapshot_steps(
    snapshotter: &dyn Snapshotter,
    work: &Path,
) -> Outcome {
    let layers = [
        vec![
            create_file("/foo", b"foo\n", 0o777),
            create_file("/foobar", b"foobar\n", 0o777),
        ],
        vec![remove_all("/foobar")],
        vec![],
    ];
    check_snapshots(snapshotter, work, &layers).await
}

case!(
    /// Files moved (linked and removed) from a lower layer appear only at their new place.
    move_file_from_lower_layer,
    move_file_from_lower_layer_steps
);

async fn move_file_from_lower_layer_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let layers = [
        vec![
            create_dir("/dir1", 0o700),
            create_file("/dir1/f1", b"Hello", 0o644),
            create_dir("dir2", 0o700),
            create_file("dir2/f2", b"...", 0o644),
        ],
        vec![
            create_dir("/dir3", 0o700),
            create_file("/dir3/f1", b"Hello", 0o644),
            remove_all("/dir1"),
            Op::Link("dir2/f2".into(), "dir3/f2".into()),
            remove_all("dir2/f2"),
        ],
    ];
    check_snapshots(snapshotter, work, &layers).await
}

case!(
    /// A view, really mounted, refuses writes (containerd#1368).
    view_readonly,
    view_readonly_steps
);

async fn view_readonly_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let preparing = key_in(work, "preparing");
    snapshotter
        .prepare(&preparing, "", gc_labels())
        .await
        .context("prepare")?;
    let committed = key_in(work, "committed");
    snapshotter
        .commit(&committed, &preparing, gc_labels())
        .await
        .context("commit")?;
    let view = key_in(work, "view");
    let mounts = snapshotter
        .view(&view, &committed, gc_labels())
        .await
        .context("view")?;
    let target = work.join("view-mount");
    fs::create_dir_all(&target).context("creating the mount point")?;
    let mounted = mount_all(&mounts, &target)?;
    let written = fs::write(target.join("testfile"), b"testcontent");
    mounted.unmount()?;
    ensure!(
        written.is_err(),
        "writing into a mounted view succeeded; it must fail (EROFS)"
    );
    snapshotter.remove(&view).await.context("remove view")?;
    snapshotter
        .remove(&committed)
        .await
        .context("remove committed")?;
    Ok(())
}

case!(
    /// Stat during a walk gives what the walk gave.
    stat_in_walk,
    stat_in_walk_steps
);

async fn stat_in_walk_steps(snapshotter: &dyn Snapshotter, _work: &Path) -> Outcome {
    let prefix = "stats-in-walk-";
    let (c1, c2) = (format!("{prefix}c1"), format!("{prefix}c2"));
    snapshotter
        .prepare(&format!("{c1}-a"), "", gc_labels())
        .await
        .context("prepare")?;
    snapshotter
        .commit(&c1, &format!("{c1}-a"), gc_labels())
        .await
        .context("commit")?;
    snapshotter
        .prepare(&format!("{c2}-a"), &c1, gc_labels())
        .await
        .context("prepare")?;
    snapshotter
        .commit(&c2, &format!("{c2}-a"), gc_labels())
        .await
        .context("commit")?;
    snapshotter
        .prepare(&format!("{prefix}a1"), &c2, gc_labels())
        .await
        .context("prepare")?;
    snapshotter
        .view(&format!("{prefix}v1"), &c2, gc_labels())
        .await
        .context("view")?;
    let walked = snapshotter.walk(&[]).await.context("walk")?;
    ensure!(
        walked.len() == 4,
        "walk gave {} snapshots, expected 4",
        walked.len()
    );
    for info in walked.iter().filter(|info| info.name.starts_with(prefix)) {
        let stat = snapshotter
            .stat(&info.name)
            .await
            .context(format!("stat {}", info.name))?;
        ensure!(&stat == info, "stat gave {stat:?}, walk gave {info:?}");
    }
    Ok(())
}

case!(
    /// The root of a new snapshot, mounted, has mode 0755.
    root_permission,
    root_permission_steps
);

async fn root_permission_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    // Under the usual umask 022 a root made without its chmod would pass as 0755 too.
    let _umask = UmaskCleared::acquire();
    let (preparing, mounted) = prepare_mounted(snapshotter, work, "preparing", "").await?;
    let mode = fs::metadata(&preparing).map(|m| m.mode() & 0o777);
    mounted.unmount()?;
    let mode = mode.context("stat of the mount")?;
    ensure!(mode == 0o755, "expected mode 0755, got {mode:o}");
    Ok(())
}

case!(
    /// Renames in an upper layer (docker#25409). Renaming a directory of a lower layer may
    /// fail with `EXDEV` (overlay without `redirect_dir`); the model then skips it too.
    rename,
    rename_steps
);

async fn rename_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let layers = [
        vec![
            create_dir("/dir1", 0o700),
            create_dir("/somefiles", 0o700),
            create_file("/somefiles/f1", b"was here first!", 0o644),
            create_file("/somefiles/f2", b"nothing interesting", 0o644),
        ],
        vec![
            Op::RenameDirectoryUnlessCrossDevice("/dir1".into(), "/dir2".into()),
            create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
            Op::Rename("/somefiles/f1-overwrite".into(), "/somefiles/f1".into()),
            Op::Rename("/somefiles/f2".into(), "/somefiles/f3".into()),
        ],
    ];
    check_snapshots(snapshotter, work, &layers).await
}

case!(
    /// 128 layers, each checked through its mount against a flat copy, then a view of all.
    layers_128_mount,
    layers_128_mount_steps
);

async fn layers_128_mount_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let mut layers = vec![vec![
        create_file("/bottom", b"way at the bottom\n", 0o777),
        create_file("/overwriteme", b"FIRST!\n", 0o777),
        create_dir("/addhere", 0o755),
        create_dir("/onlyme", 0o755),
        create_file("/onlyme/bottom", b"bye!\n", 0o777),
    ]];
    for i in 1..=127 {
        layers.push(vec![
            create_file("/overwriteme", format!("{i} WAS HERE!\n").as_bytes(), 0o777),
            create_file(&format!("/addhere/file-{i}"), b"same\n", 0o755),
            remove_all("/onlyme"),
            create_dir("/onlyme", 0o755),
            create_file(&format!("/onlyme/file-{i}"), b"only me!\n", 0o777),
        ]);
    }
    let flat = work.join("flat");
    fs::create_dir_all(&flat).context("creating the flat dir")?;
    let mut parent = String::new();
    for (i, ops) in layers.iter().enumerate() {
        let (preparing, mounted) =
            prepare_mounted(snapshotter, work, &format!("prepare-layer-{i}"), &parent)
                .await
                .context(format!("[layer {i}]"))?;
        let checked = check_directory_equal(&flat, Path::new(&preparing))
            .context("before applying")
            .and_then(|()| apply(&flat, ops))
            .and_then(|_| apply(Path::new(&preparing), ops))
            .and_then(|_| {
                check_directory_equal(&flat, Path::new(&preparing)).context("after applying")
            });
        mounted.unmount()?;
        checked.context(format!("[layer {i}]"))?;
        parent = key_in(work, &format!("committed-{i}"));
        snapshotter
            .commit(&parent, &preparing, gc_labels())
            .await
            .context(format!("[layer {i}] commit"))?;
    }
    let view = key_in(work, "fullview");
    fs::create_dir_all(&view).context("creating the view's mount point")?;
    let mounts = snapshotter
        .view(&view, &parent, gc_labels())
        .await
        .context("view")?;
    let mounted = mount_all(&mounts, Path::new(&view))?;
    let checked = check_directory_equal(&flat, Path::new(&view)).context("the full view");
    mounted.unmount()?;
    checked
}

case!(
    /// Every documented error category, and that a failed call changes nothing.
    errors,
    errors_steps
);

async fn errors_steps(snapshotter: &dyn Snapshotter, _work: &Path) -> Outcome {
    let none = Labels::new;
    snapshotter
        .prepare("base-a", "", none())
        .await
        .context("prepare")?;
    snapshotter
        .commit("base", "base-a", none())
        .await
        .context("commit")?;
    snapshotter
        .prepare("active", "base", none())
        .await
        .context("prepare")?;
    snapshotter
        .view("view", "base", none())
        .await
        .context("view")?;
    let before = snapshotter.walk(&[]).await.context("walk")?;

    use Category::{AlreadyExists, FailedPrecondition, InvalidArgument, NotFound};
    let long = "k".repeat(super::MAX_KEY_LENGTH + 1);
    let s = snapshotter;
    let labels_of = |info: &Info| Info {
        labels: labels(&[("x", "y")]),
        ..info.clone()
    };
    let base_info = s.stat("base").await.context("stat")?;
    let missing_info = Info {
        name: "missing".into(),
        ..base_info.clone()
    };
    let cases: Vec<(&str, Result<(), Error>, Category)> = vec![
        (
            "prepare an existing key",
            s.prepare("active", "", none()).await.map(drop),
            AlreadyExists,
        ),
        (
            "prepare a committed name",
            s.prepare("base", "", none()).await.map(drop),
            AlreadyExists,
        ),
        (
            "view an existing key",
            s.view("view", "base", none()).await.map(drop),
            AlreadyExists,
        ),
        (
            "prepare on a missing parent",
            s.prepare("x", "missing", none()).await.map(drop),
            NotFound,
        ),
        (
            "view of a missing parent",
            s.view("x", "missing", none()).await.map(drop),
            NotFound,
        ),
        (
            "prepare on an active parent",
            s.prepare("x", "active", none()).await.map(drop),
            FailedPrecondition,
        ),
        (
            "prepare on a view",
            s.prepare("x", "view", none()).await.map(drop),
            FailedPrecondition,
        ),
        (
            "view of an active parent",
            s.view("x", "active", none()).await.map(drop),
            FailedPrecondition,
        ),
        (
            "commit a view",
            s.commit("x", "view", none()).await,
            FailedPrecondition,
        ),
        (
            "commit a committed snapshot",
            s.commit("x", "base", none()).await,
            FailedPrecondition,
        ),
        (
            "commit a missing key",
            s.commit("x", "missing", none()).await,
            NotFound,
        ),
        (
            "commit onto an existing name",
            s.commit("base", "active", none()).await,
            AlreadyExists,
        ),
        (
            "remove a parent with children",
            s.remove("base").await,
            FailedPrecondition,
        ),
        ("remove a missing key", s.remove("missing").await, NotFound),
        (
            "stat a missing key",
            s.stat("missing").await.map(drop),
            NotFound,
        ),
        (
            "mounts of a missing key",
            s.mounts("missing").await.map(drop),
            NotFound,
        ),
        (
            "mounts of a committed snapshot",
            s.mounts("base").await.map(drop),
            FailedPrecondition,
        ),
        (
            "usage of a missing key",
            s.usage("missing").await.map(drop),
            NotFound,
        ),
        (
            "update a missing key",
            s.update(missing_info, &[]).await.map(drop),
            NotFound,
        ),
        (
            "update the kind",
            s.update(labels_of(&base_info), &["kind".into()])
                .await
                .map(drop),
            InvalidArgument,
        ),
        (
            "prepare an empty key",
            s.prepare("", "", none()).await.map(drop),
            InvalidArgument,
        ),
        (
            "prepare a key with a newline",
            s.prepare("a\nb", "", none()).await.map(drop),
            InvalidArgument,
        ),
        (
            "prepare a key with NUL",
            s.prepare("a\0b", "", none()).await.map(drop),
            InvalidArgument,
        ),
        (
            "prepare a too long key",
            s.prepare(&long, "", none()).await.map(drop),
            InvalidArgument,
        ),
        (
            "view with an empty key",
            s.view("", "base", none()).await.map(drop),
            InvalidArgument,
        ),
        (
            "prepare on a parent with a control character",
            s.prepare("x", "base\u{7}", none()).await.map(drop),
            InvalidArgument,
        ),
        (
            "commit as an empty name",
            s.commit("", "active", none()).await,
            InvalidArgument,
        ),
        (
            "commit as a name with a tab",
            s.commit("a\tb", "active", none()).await,
            InvalidArgument,
        ),
        (
            "prepare with an empty label key",
            s.prepare("x", "", labels(&[("", "v")])).await.map(drop),
            InvalidArgument,
        ),
        (
            "prepare with a too large label",
            s.prepare("x", "", labels(&[("k", &"v".repeat(4096))]))
                .await
                .map(drop),
            InvalidArgument,
        ),
        (
            "walk with a bad filter",
            s.walk(&["kind==".into(), "==x".into()]).await.map(drop),
            InvalidArgument,
        ),
    ];
    for (what, result, category) in cases {
        expect_category(result, category, what)?;
    }
    let after = snapshotter.walk(&[]).await.context("walk")?;
    ensure!(
        before == after,
        "failed calls changed the snapshots: {before:?} became {after:?}"
    );
    Ok(())
}

case!(
    /// Times: a new snapshot has created == updated (one timestamp, kept exactly); update
    /// moves updated only; commit gives the committed snapshot a new timestamp.
    timestamps,
    timestamps_steps
);

async fn timestamps_steps(snapshotter: &dyn Snapshotter, _work: &Path) -> Outcome {
    let t1 = SystemTime::now();
    snapshotter
        .prepare("a", "", gc_labels())
        .await
        .context("prepare")?;
    let t2 = SystemTime::now();
    let st = snapshotter.stat("a").await.context("stat")?;
    ensure!(
        st.created_at == st.updated_at,
        "created {:?} != updated {:?}",
        st.created_at,
        st.updated_at
    );
    ensure!(
        st.created_at >= t1 && st.created_at <= t2,
        "created {:?} not between {t1:?} and {t2:?}",
        st.created_at
    );
    let again = snapshotter.stat("a").await.context("stat")?;
    ensure!(again == st, "a second stat differs: {again:?} vs {st:?}");
    let walked = snapshotter
        .walk(&["name==a".into()])
        .await
        .context("walk")?;
    ensure!(
        walked == vec![st.clone()],
        "walk gave {walked:?}, stat {st:?}"
    );

    tokio::time::sleep(Duration::from_millis(5)).await;
    let updated = snapshotter
        .update(
            Info {
                labels: labels(&[("k", "v")]),
                ..st.clone()
            },
            &[],
        )
        .await
        .context("update")?;
    ensure!(
        updated.created_at == st.created_at,
        "update changed created"
    );
    ensure!(
        updated.updated_at > st.updated_at,
        "update did not move updated"
    );
    ensure!(
        snapshotter.stat("a").await.context("stat")? == updated,
        "stat after update differs from what update returned"
    );

    let c1 = SystemTime::now();
    snapshotter
        .commit("c", "a", gc_labels())
        .await
        .context("commit")?;
    let c2 = SystemTime::now();
    let committed = snapshotter.stat("c").await.context("stat")?;
    ensure!(
        committed.created_at == committed.updated_at,
        "committed: created != updated"
    );
    ensure!(
        committed.created_at >= c1 && committed.created_at <= c2,
        "committed at {:?}, not between {c1:?} and {c2:?}",
        committed.created_at
    );
    ensure!(
        committed.labels == gc_labels(),
        "commit labels {:?}",
        committed.labels
    );
    Ok(())
}

case!(
    /// Usage counts what was written through the mount, in whole blocks (containerd's
    /// `fs.DiskUsage`: 512-byte blocks of each inode once, and every inode with the root); a
    /// committed snapshot keeps the usage it had at commit; a child counts what was written in
    /// it, with its parent's files (a copy, as native) or without them (a layer, as overlay).
    usage,
    usage_steps
);

/// Writes `file` (`size` bytes) and, if given, an empty directory `dir` through the mount of
/// `key`; returns the block size of the filesystem under the mount.
async fn write_for_usage(
    snapshotter: &dyn Snapshotter,
    work: &Path,
    key: &str,
    parent: &str,
    file: &str,
    size: usize,
    dir: Option<&str>,
) -> Result<(String, u64), String> {
    let (key, mounted) = prepare_mounted(snapshotter, work, key, parent).await?;
    let target = Path::new(&key);
    let written = fs::write(
        target.join(file),
        crate::content::testsuite::pseudo_random_bytes(size, size as u64),
    )
    .and_then(|()| dir.map_or(Ok(()), |dir| fs::create_dir(target.join(dir))))
    .and_then(|()| fs::metadata(target.join(file)))
    .map(|meta| meta.blksize());
    mounted.unmount()?;
    let block = written.context(format!("writing {file} through the mount of {key}"))?;
    Ok((key, block))
}

/// `usage` has exactly `inodes` inodes and between `bytes` and `bytes` plus one block per
/// inode (each inode's last block is partly used; a directory takes up to a block).
fn check_usage(what: &str, usage: super::Usage, bytes: i64, inodes: i64, block: u64) -> Outcome {
    let most = bytes + inodes * i64::try_from(block).unwrap_or(i64::MAX / 2);
    ensure!(
        usage.inodes == inodes,
        "{what}: usage counts {} inodes, expected {inodes}: {usage:?}",
        usage.inodes
    );
    ensure!(
        usage.size >= bytes && usage.size <= most,
        "{what}: usage size {} is not between the {bytes} bytes written and {most} (one {block}-byte block more per inode): {usage:?}",
        usage.size
    );
    Ok(())
}

async fn usage_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    const PARENT_BYTES: usize = 65536;
    const CHILD_BYTES: usize = 12345;
    let (preparing, block) = write_for_usage(
        snapshotter,
        work,
        "preparing",
        "",
        "data",
        PARENT_BYTES,
        Some("dir"),
    )
    .await?;
    let active = snapshotter.usage(&preparing).await.context("usage")?;
    // The root, the file, the directory.
    check_usage("active", active, PARENT_BYTES as i64, 3, block)?;
    snapshotter
        .commit("c", &preparing, gc_labels())
        .await
        .context("commit")?;
    let committed = snapshotter.usage("c").await.context("usage")?;
    ensure!(
        committed == active,
        "committed usage {committed:?} != active usage {active:?}"
    );
    let (child, block) =
        write_for_usage(snapshotter, work, "child", "c", "more", CHILD_BYTES, None).await?;
    let child_usage = snapshotter.usage(&child).await.context("usage")?;
    let own = check_usage(
        "child without its parent",
        child_usage,
        CHILD_BYTES as i64,
        2,
        block,
    );
    let with_parent = check_usage(
        "child with its parent",
        child_usage,
        (PARENT_BYTES + CHILD_BYTES) as i64,
        4,
        block,
    );
    ensure!(
        own.is_ok() || with_parent.is_ok(),
        "{}; or {}",
        own.unwrap_err(),
        with_parent.unwrap_err()
    );
    Ok(())
}

case!(
    /// Cleanup after removals keeps every live snapshot and its files.
    cleanup,
    cleanup_steps
);

async fn cleanup_steps(snapshotter: &dyn Snapshotter, work: &Path) -> Outcome {
    let files = vec![create_file("/kept", b"kept\n", 0o644)];
    let (base, _) = create_snapshot(snapshotter, "", work, &files).await?;
    snapshotter
        .prepare("gone", &base, gc_labels())
        .await
        .context("prepare")?;
    snapshotter
        .prepare("live", &base, gc_labels())
        .await
        .context("prepare")?;
    snapshotter.remove("gone").await.context("remove")?;
    snapshotter.cleanup().await.context("cleanup")?;
    snapshotter.cleanup().await.context("second cleanup")?;
    let names: Vec<String> = snapshotter
        .walk(&[])
        .await
        .context("walk")?
        .into_iter()
        .map(|info| info.name)
        .collect();
    let mut expected = vec![base.clone(), "live".to_string()];
    expected.sort();
    ensure!(
        names == expected,
        "after cleanup: {names:?}, expected {expected:?}"
    );
    let target = fresh_dir(work, "live")?;
    let mounts = snapshotter.mounts("live").await.context("mounts")?;
    let mounted = mount_all(&mounts, &target)?;
    let checked = check_directory_equal_with(work, &target, &[&files]);
    mounted.unmount()?;
    checked
}

/// A snapshotter dropped and made again on the same root keeps every snapshot (stands in
/// for containerd's CloseTwice: the trait has no close; dropping is closing).
///
/// # Panics
/// When a snapshot is lost or changed, naming the case.
pub async fn reopen<F, Fut>(snapshotter: Arc<dyn Snapshotter>, make: &F, root: &Path, work: &Path)
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Snapshotter>, Error>>,
{
    outcome("reopen", reopen_steps(snapshotter, make, root, work).await);
}

async fn reopen_steps<F, Fut>(
    snapshotter: Arc<dyn Snapshotter>,
    make: &F,
    root: &Path,
    work: &Path,
) -> Outcome
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Snapshotter>, Error>>,
{
    let files = vec![create_file("/file", b"persisted\n", 0o600)];
    let (base, _) = create_snapshot(snapshotter.as_ref(), "", work, &files).await?;
    snapshotter
        .prepare("active", &base, gc_labels())
        .await
        .context("prepare")?;
    snapshotter
        .view("view", &base, gc_labels())
        .await
        .context("view")?;
    let before = snapshotter.walk(&[]).await.context("walk")?;
    drop(snapshotter);
    let reopened = make(root.to_path_buf())
        .await
        .context("making the snapshotter again")?;
    let after = reopened.walk(&[]).await.context("walk")?;
    ensure!(
        before == after,
        "reopening changed the snapshots: {before:?} became {after:?}"
    );
    let target = fresh_dir(work, "reopened")?;
    let mounts = reopened.mounts("view").await.context("mounts")?;
    let mounted = mount_all(&mounts, &target)?;
    let checked = check_directory_equal_with(work, &target, &[&files]);
    mounted.unmount()?;
    checked?;
    reopened.remove("view").await.context("remove")?;
    reopened.remove("active").await.context("remove")?;
    reopened.remove(&base).await.context("remove")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lowerdirs_become_relative_to_their_common_parent() {
        let lowers: Vec<String> = (1..=200)
            .map(|i| format!("/var/lib/x/snapshots/{i}/fs"))
            .collect();
        let options = vec![
            "workdir=/var/lib/x/snapshots/201/work".to_string(),
            format!("lowerdir={}", lowers.join(":")),
        ];
        let (directory, compacted) = compact_lowerdir(options.clone());
        assert_eq!(
            directory.as_deref(),
            Some(Path::new("/var/lib/x/snapshots"))
        );
        assert_eq!(compacted[0], options[0]);
        assert!(
            compacted[1].starts_with("lowerdir=1/fs:2/fs:"),
            "{}",
            compacted[1]
        );
        let short = vec!["lowerdir=/a/1:/a/2".to_string()];
        assert_eq!(compact_lowerdir(short.clone()), (None, short));
    }

    #[test]
    fn appliers_and_comparison_agree() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let ops = vec![
            create_dir("/d", 0o700),
            create_file("/d/f", b"x", 0o640),
            Op::Link("/d/f".into(), "/g".into()),
            Op::Rename("/g".into(), "/h".into()),
            Op::RenameDirectoryUnlessCrossDevice("/d".into(), "/e".into()),
        ];
        assert_eq!(apply(&a, &ops).unwrap().len(), ops.len());
        apply(&b, &ops).unwrap();
        check_directory_equal(&a, &b).unwrap();
        apply(&b, &[create_file("/h", b"y", 0o640)]).unwrap();
        let error = check_directory_equal(&a, &b).unwrap_err();
        assert!(error.contains("h: expected"), "{error}");
    }
}
