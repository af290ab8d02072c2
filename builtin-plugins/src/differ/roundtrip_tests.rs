//! The walking differ's property test: random trees and random change sets; comparing the
//! lower tree with the changed upper ([`compare::write_layer`]) and applying that layer
//! ([`apply::apply`]) reproduces the upper tree exactly, in both forms.
//!
//! # What is generated
//!
//! - A lower tree, built by a list of random additions into a temporary directory:
//!   directories, regular files (0 to 700 bytes, so some span several tar blocks), symbolic
//!   links (relative, absolute, dangling, to `.` and `..`, one with a 150-byte target), hard
//!   links to files already there, fifos. Names come from a small pool, so that additions
//!   collide and paths nest: `a`, `a.b`, `a-b` (containerd's order puts `a/…` between `a`
//!   and `a.b`), a space, non-ASCII UTF-8, a byte that is not UTF-8 (`0xff`), a 120-byte
//!   name (paths over 100 bytes take PAX records). Every entry gets a random mode (all twelve
//!   bits: setuid, setgid, sticky), an owner from a small set (one over the 7-digit ustar
//!   field: a PAX record), `user.*` extended attributes (files and directories; any bytes,
//!   newlines included, empty values too) and a modification time in whole seconds from one
//!   of three eras: 2001, before 1970 (negative: a PAX record) and 2255 (past the 11-digit
//!   ustar field: a PAX record).
//! - An upper tree: a copy of the lower (`cp -a`, which keeps modes, owners, times,
//!   attributes and hard links; each case checks that it did), changed by a list of random
//!   changes: add (over an existing name: replace, so a file becomes a directory and back),
//!   replace, rewrite a file's content (in place, which all its hard links see, or as a new
//!   inode renamed over it, which splits it from them), chmod, chown, set and remove `user.*`
//!   attributes, retarget a symbolic link, delete (a directory with all it holds), add a
//!   hard link, set a modification time.
//! - The layer's media type (plain, gzip, zstd) and the resolver the applier walks paths
//!   with (`openat2` first, or its own walk only).
//!
//! Every entry a case writes gets a time of its own (the era, plus a thousand seconds per
//! step, plus a random jitter), and changes use an era of their own: so a file replaced by
//! a new inode always differs from the one it replaced. Without that, a hard link split by a
//! byte-identical copy (same content, mode, owner, attributes and time) would be a change no
//! layer can carry: containerd's comparison, and ours, ignore link counts and inode numbers.
//!
//! # What is asserted
//!
//! The layer is written with [`compare::write_layer`], then applied with
//! [`apply::apply_with`]:
//! - **native**: onto a fresh copy of the lower tree ([`Whiteouts::Native`]);
//! - **overlay**: into an empty directory ([`Whiteouts::Overlay`]), which is then mounted as
//!   an overlay's upper directory over the lower tree (read-only, `mount(2)`; the test fails
//!   if the mount fails, and a guard unmounts it whatever happens); the merged tree is read.
//!
//! The applied digest, size and diff id equal those [`compare::write_layer`] reported. The
//! resulting tree equals the expected one path by path: file type, mode (twelve bits), uid,
//! gid, a regular file's size and sha256, a symbolic link's target, extended attributes,
//! modification times (seconds and nanoseconds) of everything but the directories that the
//! layer does not carry, and the hard-link groups (the sets of names that share an inode).
//!
//! The expected tree is the upper tree, except in what a layer does not carry (each
//! exclusion is the layer format's, not a test's convenience):
//! - **The root directory**: a layer has no entry for it (its metadata is the snapshot's).
//! - **Directory times**: a layer carries a directory when it changed (type, mode, owner,
//!   attributes) or holds a change below it (as the parent the changed entry's name needs;
//!   containerd writes every parent), with its time in whole seconds. A directory the layer
//!   does not carry keeps the lower's time (containerd, like us, never counts a directory's
//!   time alone as a change: it moves whenever its children do). So a directory's expected
//!   time is the upper's in whole seconds where something at or below it changed, including
//!   the other names of a changed hard-linked inode (all of which the layer writes), and the
//!   lower's elsewhere.
//! - **Access and change times, inode numbers, link counts**: never in a layer (link groups
//!   are compared as groups).
//! - **overlayfs's own attributes** (`trusted.overlay.*`) and the others of
//!   [`compare::SKIPPED_XATTR_PREFIXES`]: never in a layer, and hidden by the overlay mount.
//!
//! Cases: 64 native and 32 overlay (`PROPTEST_CASES` sets both). A failure prints the
//! shrunk case, the differences and the layer's entries; proptest saves its seed under
//! `proptest-regressions/`, where the next run tries it first.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use proptest::sample::Index;
use sha2::Digest as _;

use super::apply::{self, ApplyOptions, Resolver, Whiteouts};
use super::compare::{self, WriteDiffOptions};

/// Owners (uids and gids) entries get; the last needs a PAX record.
const OWNERS: &[u32] = &[0, 1, 1000, 65534, 3_000_000];
/// The eras of the lower tree's modification times.
const LOWER_ERAS: &[i64] = &[1_000_000_000, -100_000_000, 9_000_000_000];
/// The era of the changes' modification times.
const CHANGE_ERA: i64 = 1_500_000_000;
/// The extended attributes entries get.
const XATTR_NAMES: &[&str] = &["user.a", "user.b", "user.plinth.long.attribute.name"];
/// The media types layers are written in.
const MEDIA_TYPES: &[&str] = &[
    compare::MEDIA_TYPE_LAYER,
    compare::MEDIA_TYPE_LAYER_GZIP,
    compare::MEDIA_TYPE_LAYER_ZSTD,
];

/// The names entries take (see the module docs).
fn names() -> Vec<OsString> {
    let mut names: Vec<OsString> = ["a", "a.b", "a-b", "b", "c d", "é"]
        .iter()
        .map(OsString::from)
        .collect();
    names.push(OsString::from_vec(vec![0xff]));
    names.push(OsString::from("n".repeat(120)));
    names
}

/// The targets symbolic links take.
fn symlink_targets() -> Vec<OsString> {
    let mut targets: Vec<OsString> = [
        "a",
        "../b",
        "a.b/c d",
        "/a",
        "/etc/passwd",
        "nowhere/at/all",
        ".",
        "..",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    targets.push(OsString::from(format!("/{}", "l".repeat(149))));
    targets
}

// ---------------------------------------------------------------------------------------
// Cases

/// What a new entry is.
#[derive(Debug, Clone)]
enum NewKind {
    Dir,
    File(Vec<u8>),
    /// An index into [`symlink_targets`].
    Symlink(usize),
    Fifo,
    /// A hard link to one of the regular files there are.
    HardLink(Index),
}

/// A new entry's metadata (a hard link takes none).
#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    uid: usize,
    gid: usize,
    /// Indexes into [`XATTR_NAMES`], values.
    xattrs: Vec<(usize, Vec<u8>)>,
    /// The era (lower tree only: an index into [`LOWER_ERAS`]).
    era: usize,
    /// Seconds added to the entry's time.
    jitter: u16,
}

/// One addition to the lower tree: a new entry named `name` in the directory `parent`
/// (skipped when the name is taken).
#[derive(Debug, Clone)]
struct Addition {
    parent: Index,
    name: usize,
    kind: NewKind,
    meta: Meta,
}

/// One change to the upper tree; `target` picks among the entries it applies to (skipped
/// when there are none).
#[derive(Debug, Clone)]
enum Change {
    /// A new entry; over an existing name, it replaces what was there.
    Add(Addition),
    /// The entry `target` replaced by a new one of the same name.
    Replace {
        target: Index,
        kind: NewKind,
        meta: Meta,
    },
    /// A regular file's new content, written into it or as a new inode renamed over it.
    Content {
        target: Index,
        content: Vec<u8>,
        in_place: bool,
        jitter: u16,
    },
    Chmod {
        target: Index,
        mode: u32,
    },
    Chown {
        target: Index,
        uid: usize,
        gid: usize,
    },
    SetXattr {
        target: Index,
        name: usize,
        value: Vec<u8>,
    },
    RemoveXattr {
        target: Index,
        name: usize,
    },
    Retarget {
        target: Index,
        link: usize,
        jitter: u16,
    },
    Delete {
        target: Index,
    },
    Touch {
        target: Index,
        jitter: u16,
    },
}

#[derive(Debug, Clone)]
struct Case {
    lower: Vec<Addition>,
    changes: Vec<Change>,
    media_type: &'static str,
    /// The applier's own walk only (else `openat2` first).
    walk: bool,
}

fn file_content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        6 => prop::collection::vec(any::<u8>(), 1..64),
        1 => prop::collection::vec(any::<u8>(), 64..700),
    ]
}

/// An extended attribute's value: any bytes, a newline (0x0a) among them (the tar crate's
/// own PAX reader splits records at newlines; the applier reads them by length).
fn xattr_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..12)
}

fn new_kind() -> impl Strategy<Value = NewKind> {
    prop_oneof![
        3 => Just(NewKind::Dir),
        4 => file_content().prop_map(NewKind::File),
        2 => (0..symlink_targets().len()).prop_map(NewKind::Symlink),
        1 => Just(NewKind::Fifo),
        2 => any::<Index>().prop_map(NewKind::HardLink),
    ]
}

fn meta() -> impl Strategy<Value = Meta> {
    (
        0u32..0o10000,
        0..OWNERS.len(),
        0..OWNERS.len(),
        prop::collection::vec((0..XATTR_NAMES.len(), xattr_value()), 0..3),
        0..LOWER_ERAS.len(),
        0u16..1000,
    )
        .prop_map(|(mode, uid, gid, xattrs, era, jitter)| Meta {
            mode,
            uid,
            gid,
            xattrs,
            era,
            jitter,
        })
}

fn addition() -> impl Strategy<Value = Addition> {
    (any::<Index>(), 0..names().len(), new_kind(), meta()).prop_map(|(parent, name, kind, meta)| {
        Addition {
            parent,
            name,
            kind,
            meta,
        }
    })
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => addition().prop_map(Change::Add),
        1 => (any::<Index>(), new_kind(), meta())
            .prop_map(|(target, kind, meta)| Change::Replace { target, kind, meta }),
        2 => (any::<Index>(), file_content(), any::<bool>(), 0u16..1000).prop_map(
            |(target, content, in_place, jitter)| Change::Content {
                target,
                content,
                in_place,
                jitter,
            }
        ),
        1 => (any::<Index>(), 0u32..0o10000)
            .prop_map(|(target, mode)| Change::Chmod { target, mode }),
        1 => (any::<Index>(), 0..OWNERS.len(), 0..OWNERS.len())
            .prop_map(|(target, uid, gid)| Change::Chown { target, uid, gid }),
        1 => (
            any::<Index>(),
            0..XATTR_NAMES.len(),
            xattr_value(),
        )
            .prop_map(|(target, name, value)| Change::SetXattr { target, name, value }),
        1 => (any::<Index>(), 0..XATTR_NAMES.len())
            .prop_map(|(target, name)| Change::RemoveXattr { target, name }),
        1 => (any::<Index>(), 0..symlink_targets().len(), 0u16..1000)
            .prop_map(|(target, link, jitter)| Change::Retarget { target, link, jitter }),
        2 => any::<Index>().prop_map(|target| Change::Delete { target }),
        1 => (any::<Index>(), 0u16..1000).prop_map(|(target, jitter)| Change::Touch { target, jitter }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(addition(), 1..40),
        prop::collection::vec(change(), 1..20),
        prop::sample::select(MEDIA_TYPES),
        any::<bool>(),
    )
        .prop_map(|(lower, changes, media_type, walk)| Case {
            lower,
            changes,
            media_type,
            walk,
        })
}

// ---------------------------------------------------------------------------------------
// Building the trees

/// The paths under `root` (not the root itself), sorted, with their metadata.
fn list(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(root.join(&dir)).unwrap() {
            let path = dir.join(entry.unwrap().file_name());
            let metadata = fs::symlink_metadata(root.join(&path)).unwrap();
            if metadata.is_dir() {
                stack.push(path.clone());
            }
            found.push((path, metadata));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The directories under `root`, the root (the empty path) first.
fn dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::new()];
    dirs.extend(
        list(root)
            .into_iter()
            .filter(|(_, metadata)| metadata.is_dir())
            .map(|(path, _)| path),
    );
    dirs
}

/// The entries under `root` that `applies` takes, `index` picking one.
fn pick(root: &Path, index: &Index, applies: impl Fn(&fs::Metadata) -> bool) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = list(root)
        .into_iter()
        .filter(|(_, metadata)| applies(metadata))
        .map(|(path, _)| path)
        .collect();
    (!candidates.is_empty()).then(|| candidates[index.index(candidates.len())].clone())
}

fn set_mtime(full: &Path, seconds: i64) {
    let time = rustix::fs::Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        full,
        &rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chown(full: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(full, Some(uid), Some(gid)).unwrap();
}

fn remove(full: &Path) {
    if fs::symlink_metadata(full).unwrap().is_dir() {
        fs::remove_dir_all(full).unwrap();
    } else {
        fs::remove_file(full).unwrap();
    }
}

/// Creates `root/path` as `kind` with `meta` and the modification time `mtime`. A hard link
/// with no file to link to is not created.
fn create(root: &Path, path: &Path, kind: &NewKind, meta: &Meta, mtime: i64) {
    let full = root.join(path);
    match kind {
        NewKind::Dir => fs::create_dir(&full).unwrap(),
        NewKind::File(content) => fs::write(&full, content).unwrap(),
        NewKind::Symlink(target) => {
            std::os::unix::fs::symlink(&symlink_targets()[*target], &full).unwrap();
        }
        NewKind::Fifo => rustix::fs::mknodat(
            rustix::fs::CWD,
            &full,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap(),
        NewKind::HardLink(index) => {
            if let Some(source) = pick(root, index, fs::Metadata::is_file) {
                fs::hard_link(root.join(source), &full).unwrap();
            }
            return;
        }
    }
    // The owner before the mode: a chown clears setuid.
    chown(&full, OWNERS[meta.uid], OWNERS[meta.gid]);
    if !matches!(kind, NewKind::Symlink(_)) {
        fs::set_permissions(&full, fs::Permissions::from_mode(meta.mode)).unwrap();
    }
    if matches!(kind, NewKind::Dir | NewKind::File(_)) {
        for (name, value) in &meta.xattrs {
            rustix::fs::lsetxattr(
                &full,
                XATTR_NAMES[*name],
                value,
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
        }
    }
    set_mtime(&full, mtime);
}

/// Builds the lower tree into the empty directory `root`.
fn build_lower(root: &Path, additions: &[Addition]) {
    let names = names();
    let mut dir_times = Vec::new();
    for (step, addition) in additions.iter().enumerate() {
        let dirs = dirs(root);
        let parent = &dirs[addition.parent.index(dirs.len())];
        let path = parent.join(&names[addition.name]);
        if fs::symlink_metadata(root.join(&path)).is_ok() {
            continue;
        }
        let mtime =
            LOWER_ERAS[addition.meta.era] + step as i64 * 1000 + i64::from(addition.meta.jitter);
        create(root, &path, &addition.kind, &addition.meta, mtime);
        if matches!(addition.kind, NewKind::Dir) {
            dir_times.push((path, mtime));
        }
    }
    // Directory times last (their children's creation moved them), the deepest first.
    dir_times.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (path, mtime) in dir_times {
        set_mtime(&root.join(path), mtime);
    }
}

/// Changes the upper tree `root`.
fn change_upper(root: &Path, changes: &[Change]) {
    let names = names();
    for (step, change) in changes.iter().enumerate() {
        let time = |jitter: u16| CHANGE_ERA + step as i64 * 1000 + i64::from(jitter);
        match change {
            Change::Add(addition) => {
                let dirs = dirs(root);
                let parent = &dirs[addition.parent.index(dirs.len())];
                let path = parent.join(&names[addition.name]);
                if fs::symlink_metadata(root.join(&path)).is_ok() {
                    remove(&root.join(&path));
                }
                create(
                    root,
                    &path,
                    &addition.kind,
                    &addition.meta,
                    time(addition.meta.jitter),
                );
            }
            Change::Replace { target, kind, meta } => {
                if let Some(path) = pick(root, target, |_| true) {
                    remove(&root.join(&path));
                    create(root, &path, kind, meta, time(meta.jitter));
                }
            }
            Change::Content {
                target,
                content,
                in_place,
                jitter,
            } => {
                let Some(path) = pick(root, target, fs::Metadata::is_file) else {
                    continue;
                };
                let full = root.join(&path);
                if *in_place {
                    fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&full)
                        .unwrap()
                        .write_all(content)
                        .unwrap();
                } else {
                    let old = fs::symlink_metadata(&full).unwrap();
                    let new = full.with_file_name(".plinth-new");
                    fs::write(&new, content).unwrap();
                    chown(&new, old.uid(), old.gid());
                    fs::set_permissions(&new, fs::Permissions::from_mode(old.mode() & 0o7777))
                        .unwrap();
                    fs::rename(&new, &full).unwrap();
                }
                set_mtime(&full, time(*jitter));
            }
            Change::Chmod { target, mode } => {
                if let Some(path) = pick(root, target, |m| !m.file_type().is_symlink()) {
                    fs::set_permissions(root.join(path), fs::Permissions::from_mode(*mode))
                        .unwrap();
                }
            }
            Change::Chown { target, uid, gid } => {
                if let Some(path) = pick(root, target, |_| true) {
                    chown(&root.join(path), OWNERS[*uid], OWNERS[*gid]);
                }
            }
            Change::SetXattr {
                target,
                name,
                value,
            } => {
                if let Some(path) = pick(root, target, |m| m.is_file() || m.is_dir()) {
                    rustix::fs::lsetxattr(
                        root.join(path),
                        XATTR_NAMES[*name],
                        value,
                        rustix::fs::XattrFlags::empty(),
                    )
                    .unwrap();
                }
            }
            Change::RemoveXattr { target, name } => {
                if let Some(path) = pick(root, target, |m| m.is_file() || m.is_dir()) {
                    match rustix::fs::lremovexattr(root.join(path), XATTR_NAMES[*name]) {
                        Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                        Err(e) => panic!("removing an attribute: {e}"),
                    }
                }
            }
            Change::Retarget {
                target,
                link,
                jitter,
            } => {
                if let Some(path) = pick(root, target, |m| m.file_type().is_symlink()) {
                    let full = root.join(path);
                    let old = fs::symlink_metadata(&full).unwrap();
                    fs::remove_file(&full).unwrap();
                    std::os::unix::fs::symlink(&symlink_targets()[*link], &full).unwrap();
                    chown(&full, old.uid(), old.gid());
                    set_mtime(&full, time(*jitter));
                }
            }
            Change::Delete { target } => {
                if let Some(path) = pick(root, target, |_| true) {
                    remove(&root.join(path));
                }
            }
            Change::Touch { target, jitter } => {
                if let Some(path) = pick(root, target, |_| true) {
                    set_mtime(&root.join(path), time(*jitter));
                }
            }
        }
    }
}

/// `cp -a from to`: modes, owners, times, attributes and hard links kept.
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

// ---------------------------------------------------------------------------------------
// Reading trees back

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Dir,
    File {
        size: u64,
        sha256: String,
    },
    Symlink(OsString),
    Fifo,
    /// Anything else: its `st_mode` and `st_rdev` (an overlay whiteout that shows, say).
    Other {
        mode: u32,
        rdev: u64,
    },
}

/// One entry as the test compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    content: Content,
    /// The permission, set-id and sticky bits.
    mode: u32,
    uid: u32,
    gid: u32,
    xattrs: BTreeMap<OsString, Vec<u8>>,
    /// Seconds and nanoseconds.
    mtime: (i64, i64),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
    /// The sets of names that share an inode (only those with more than one name).
    link_groups: BTreeSet<BTreeSet<PathBuf>>,
}

/// The extended attributes of `full` (not followed) a layer can carry.
fn xattrs(full: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let mut list = vec![0u8; 64 << 10];
    let n = rustix::fs::llistxattr(full, &mut list[..]).unwrap();
    let mut attributes = BTreeMap::new();
    for name in list[..n].split(|b| *b == 0).filter(|name| !name.is_empty()) {
        if compare::SKIPPED_XATTR_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix.as_bytes()))
        {
            continue;
        }
        let mut value = vec![0u8; 64 << 10];
        let m = rustix::fs::lgetxattr(full, OsStr::from_bytes(name), &mut value[..]).unwrap();
        value.truncate(m);
        attributes.insert(OsStr::from_bytes(name).to_os_string(), value);
    }
    attributes
}

/// Everything under `root` the test compares.
fn read_tree(root: &Path) -> Tree {
    let mut tree = Tree::default();
    let mut inodes: BTreeMap<(u64, u64), BTreeSet<PathBuf>> = BTreeMap::new();
    for (path, metadata) in list(root) {
        let full = root.join(&path);
        let file_type = metadata.file_type();
        let content = if file_type.is_dir() {
            Content::Dir
        } else if file_type.is_file() {
            let mut data = Vec::new();
            fs::File::open(&full)
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            Content::File {
                size: metadata.size(),
                sha256: format!("{:x}", sha2::Sha256::digest(&data)),
            }
        } else if file_type.is_symlink() {
            Content::Symlink(fs::read_link(&full).unwrap().into_os_string())
        } else if file_type.is_fifo() {
            Content::Fifo
        } else {
            Content::Other {
                mode: metadata.mode(),
                rdev: metadata.rdev(),
            }
        };
        if !file_type.is_dir() {
            inodes
                .entry((metadata.dev(), metadata.ino()))
                .or_default()
                .insert(path.clone());
        }
        tree.entries.insert(
            path,
            Entry {
                content,
                mode: metadata.mode() & 0o7777,
                uid: metadata.uid(),
                gid: metadata.gid(),
                xattrs: xattrs(&full),
                mtime: (metadata.mtime(), metadata.mtime_nsec()),
            },
        );
    }
    tree.link_groups = inodes
        .into_values()
        .filter(|names| names.len() > 1)
        .collect();
    tree
}

/// Whether a layer must carry `path`: it differs between the trees (a directory's time
/// aside: no comparison counts it).
fn differs(lower: Option<&Entry>, upper: Option<&Entry>) -> bool {
    let without_dir_time = |entry: Option<&Entry>| {
        entry.cloned().map(|mut entry| {
            if entry.content == Content::Dir {
                entry.mtime = (0, 0);
            }
            entry
        })
    };
    without_dir_time(lower) != without_dir_time(upper)
}

/// The tree applying the layer of `lower` → `upper` must give (see the module docs).
fn expected(lower: &Tree, upper: &Tree) -> Tree {
    let all: BTreeSet<&PathBuf> = lower.entries.keys().chain(upper.entries.keys()).collect();
    let mut carried: BTreeSet<PathBuf> = all
        .into_iter()
        .filter(|path| differs(lower.entries.get(*path), upper.entries.get(*path)))
        .cloned()
        .collect();
    // Every name of a changed inode with several names is written, to keep them linked.
    for group in &upper.link_groups {
        if group.iter().any(|name| carried.contains(name)) {
            carried.extend(group.iter().cloned());
        }
    }
    let touched: BTreeSet<&Path> = carried.iter().flat_map(|path| path.ancestors()).collect();
    let mut expected = upper.clone();
    for (path, entry) in &mut expected.entries {
        if entry.content != Content::Dir {
            continue;
        }
        entry.mtime = if touched.contains(path.as_path()) {
            (entry.mtime.0, 0)
        } else {
            lower.entries[path].mtime
        };
    }
    expected
}

/// What differs between the expected tree and the one found, one line each.
fn differences(expected: &Tree, found: &Tree) -> Vec<String> {
    let mut lines = Vec::new();
    let all: BTreeSet<&PathBuf> = expected
        .entries
        .keys()
        .chain(found.entries.keys())
        .collect();
    for path in all {
        let (want, got) = (expected.entries.get(path), found.entries.get(path));
        if want != got {
            lines.push(format!(
                "{path:?}:\n  expected {want:?}\n  found    {got:?}"
            ));
        }
    }
    if expected.link_groups != found.link_groups {
        lines.push(format!(
            "hard-link groups:\n  expected {:?}\n  found    {:?}",
            expected.link_groups, found.link_groups
        ));
    }
    lines
}

/// The entries of a plain tar layer, one line each, for failure messages.
fn layer_listing(layer: &[u8]) -> String {
    let mut archive = tar::Archive::new(layer);
    let mut lines = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let header = entry.header();
        lines.push(format!(
            "  {:?} {:?} mode {:o} {}:{} mtime {} size {}{}",
            entry.header().entry_type(),
            String::from_utf8_lossy(&entry.path_bytes()),
            header.mode().unwrap_or_default(),
            header.uid().unwrap_or_default(),
            header.gid().unwrap_or_default(),
            header.mtime().unwrap_or_default(),
            header.size().unwrap_or_default(),
            entry
                .link_name_bytes()
                .map(|link| format!(" -> {:?}", String::from_utf8_lossy(&link)))
                .unwrap_or_default(),
        ));
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------
// The overlay mount

/// A read-only overlay mount, unmounted on drop (detached if busy).
struct OverlayMount {
    target: PathBuf,
}

impl OverlayMount {
    fn mount(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<Self, String> {
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let data = std::ffi::CString::new(options.clone()).unwrap();
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            rustix::mount::MountFlags::RDONLY,
            data.as_c_str(),
        )
        .map_err(|e| format!("mounting overlay ({options}) on {}: {e}", target.display()))?;
        Ok(OverlayMount {
            target: target.to_path_buf(),
        })
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::empty()).is_err() {
            // Not a panic: this may run while a failed case unwinds.
            if let Err(e) =
                rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH)
            {
                eprintln!("detaching the overlay on {}: {e}", self.target.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The property

/// How the layer is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Native,
    Overlay,
}

/// Runs one case: the differences found, if any, as one message.
fn check(case: &Case, form: Form) -> Result<(), String> {
    let temp = tempfile::tempdir().unwrap();
    let lower = temp.path().join("lower");
    let upper = temp.path().join("upper");
    fs::create_dir(&lower).unwrap();
    build_lower(&lower, &case.lower);
    copy_tree(&lower, &upper);
    let lower_tree = read_tree(&lower);
    let copied = differences(&lower_tree, &read_tree(&upper));
    if !copied.is_empty() {
        return Err(format!(
            "the test's own copy (cp -a) lost something:\n{}",
            copied.join("\n")
        ));
    }
    change_upper(&upper, &case.changes);
    let upper_tree = read_tree(&upper);
    let expected = expected(&lower_tree, &upper_tree);

    let mut layer = Vec::new();
    let written = compare::write_layer(
        &lower,
        &upper,
        case.media_type,
        &WriteDiffOptions::default(),
        &mut layer,
    )
    .map_err(|e| format!("write_layer: {e}"))?;

    let options = ApplyOptions {
        whiteouts: match form {
            Form::Native => Whiteouts::Native,
            Form::Overlay => Whiteouts::Overlay,
        },
        ..ApplyOptions::default()
    };
    let resolver = if case.walk {
        Resolver::Walk
    } else {
        Resolver::Auto
    };
    let target = temp.path().join("applied");
    match form {
        Form::Native => copy_tree(&lower, &target),
        Form::Overlay => fs::create_dir(&target).unwrap(),
    }
    let applied = apply::apply_with(&layer[..], case.media_type, &target, &options, resolver)
        .map_err(|e| format!("apply: {e}"))?;
    let mut problems = Vec::new();
    if (
        &applied.digest,
        applied.size,
        &applied.diff_id,
        applied.uncompressed_size,
    ) != (
        &written.digest,
        written.size,
        &written.diff.diff_id,
        written.diff.size,
    ) {
        problems.push(format!(
            "digests: written {} ({} bytes), diff id {} ({} bytes); applied {} ({} bytes), \
             diff id {} ({} bytes)",
            written.digest,
            written.size,
            written.diff.diff_id,
            written.diff.size,
            applied.digest,
            applied.size,
            applied.diff_id,
            applied.uncompressed_size
        ));
    }
    let found = match form {
        Form::Native => read_tree(&target),
        Form::Overlay => {
            let work = temp.path().join("work");
            let merged = temp.path().join("merged");
            fs::create_dir(&work).unwrap();
            fs::create_dir(&merged).unwrap();
            let mount = OverlayMount::mount(&lower, &target, &work, &merged)?;
            let found = read_tree(&merged);
            drop(mount);
            found
        }
    };
    problems.extend(differences(&expected, &found));
    if problems.is_empty() {
        return Ok(());
    }
    let mut plain = Vec::new();
    compare::write_diff(&lower, &upper, &mut plain).map_err(|e| format!("write_diff: {e}"))?;
    Err(format!(
        "{form:?} apply of a {} layer does not reproduce the upper tree:\n{}\nthe layer:\n{}",
        case.media_type,
        problems.join("\n"),
        layer_listing(&plain)
    ))
}

/// Cases per run: `PROPTEST_CASES`, or `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    /// Native form: the layer applied onto a copy of the lower tree gives the upper tree.
    #[test]
    fn compare_then_apply_onto_a_copy_reproduces_the_upper(case in case()) {
        let result = check(&case, Form::Native);
        prop_assert!(result.is_ok(), "{}", result.err().unwrap_or_default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(32), ..ProptestConfig::default() })]

    /// Overlay form: the layer applied into an empty upper directory, mounted over the lower
    /// tree, shows the upper tree.
    #[test]
    fn compare_then_apply_as_overlay_upper_reproduces_the_upper(case in case()) {
        let result = check(&case, Form::Overlay);
        prop_assert!(result.is_ok(), "{}", result.err().unwrap_or_default());
    }
}

/// Found by the property test: a `user.*` value holding a newline byte (as a binary
/// `security.capability` can: capabilities 1 and 3 make the byte 0x0a) made the applier fail
/// with "PAX records: malformed pax extension", although compare wrote a valid record (the
/// tar crate's reader splits PAX records at newlines: tar-rs issue #428).
#[test]
fn xattr_value_with_a_newline_survives_compare_then_apply() {
    let temp = tempfile::tempdir().unwrap();
    let (lower, upper, applied) = (
        temp.path().join("lower"),
        temp.path().join("upper"),
        temp.path().join("applied"),
    );
    for dir in [&lower, &upper, &applied] {
        fs::create_dir(dir).unwrap();
    }
    fs::write(upper.join("f"), b"data").unwrap();
    let value = b"one\ntwo";
    rustix::fs::lsetxattr(
        upper.join("f"),
        "user.a",
        value,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let mut layer = Vec::new();
    compare::write_layer(
        &lower,
        &upper,
        compare::MEDIA_TYPE_LAYER,
        &WriteDiffOptions::default(),
        &mut layer,
    )
    .unwrap();
    apply::apply(
        &layer[..],
        compare::MEDIA_TYPE_LAYER,
        &applied,
        &ApplyOptions::default(),
    )
    .unwrap();
    assert_eq!(
        xattrs(&applied.join("f")).get(OsStr::new("user.a")),
        Some(&value.to_vec())
    );
}
