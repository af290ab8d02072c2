//! The layer comparer: two directory trees (or two sets of snapshot mounts) into an OCI layer,
//! as containerd's walking differ makes one.
//!
//! # What changed
//!
//! [`changes`] walks the lower and the upper tree side by side (containerd's double walk) and
//! reports what the upper adds, modifies and deletes, in the layer's order: depth first, the
//! entries of each directory sorted by the bytes of their names, a directory before its
//! children. That is containerd's order (it compares paths with `/` sorting before every
//! other byte), so `a`, `a/b`, `a.b`. Nothing is ever followed: every entry is `lstat`ed, a
//! symbolic link is a leaf, and a regular file is opened with `O_NOFOLLOW` (and checked to be
//! the file that was `lstat`ed).
//!
//! - **Added**: in the upper only. A directory's whole subtree is added with it.
//! - **Deleted**: in the lower only. A deleted directory is one change; its children are not
//!   visited (one whiteout in the layer).
//! - **Modified**: in both, and not the same. A directory replaced by a file (or the reverse)
//!   is modified too: applying the entry replaces what was there (the lower directory's
//!   children go with it; a new directory's children are added).
//! - The root directory itself is never a change (a layer has no entry for it).
//!
//! **Which differences count as modified.** containerd's rules, plus every extended
//! attribute:
//! - any entry: the whole `st_mode` (file type, permissions, set-id and sticky bits), owner
//!   uid and gid, `st_rdev` (device numbers), and the extended attributes a layer carries
//!   (all of them but those in [`SKIPPED_XATTR_PREFIXES`]; containerd compares only
//!   `security.capability`, which would lose a changed `user.*` attribute);
//! - a non-directory also: its size and its modification time (seconds and nanoseconds), a
//!   symbolic link its target; a regular file whose equal modification time has no
//!   nanoseconds (a filesystem or a tar extraction that kept whole seconds) is compared byte
//!   by byte, one with nanoseconds is trusted to be unchanged (containerd's rule: copying a
//!   tree keeps nanoseconds, writing a file changes them);
//! - never: a directory's times (they change whenever a child does, and the children say
//!   what changed), access and change times, the link count, the inode number. An entry that
//!   is the same inode in both trees is the same.
//!
//! # The tar stream
//!
//! [`write_diff`] writes the changes as a tar stream (an uncompressed OCI layer):
//! - Every entry's parent directories are written before it (once each, with their upper
//!   metadata), as containerd does, so that a layer applied onto another parent still
//!   carries the directories' modes and owners.
//! - A deleted entry is an OCI whiteout: an empty regular file `<dir>/.wh.<name>`, mode 0,
//!   owner 0:0, modification time 0 (containerd 2's form).
//! - Names are relative (`a/b`), directories end with `/`. Modes are the permission,
//!   set-id and sticky bits; uid and gid numeric, no user or group names; modification times
//!   in whole seconds (containerd truncates them; [`WriteDiffOptions::sub_second_times`]
//!   keeps the nanoseconds in a PAX `mtime` record, [`WriteDiffOptions::source_date_epoch`]
//!   clamps them as containerd's `SourceDateEpoch` does); no access or change times.
//! - PAX extended headers where the ustar header cannot say it: names and link targets over
//!   100 bytes (`path`, `linkpath`), uids and gids over 2097151 (`uid`, `gid`), sizes of 8 GiB
//!   and more (`size`), times before 1970 or with nanoseconds (`mtime`), and extended
//!   attributes (`SCHILY.xattr.<name>`).
//! - Hard links: the inodes the upper holds under several names are tracked; the first name
//!   (in layer order) that needs writing carries the file, the others are hard link entries
//!   to it. When any name of such an inode changed, every name of it in the upper is written
//!   (the unchanged ones as links), so that applying the layer keeps them linked.
//! - Symbolic links, character and block devices (with their numbers) and FIFOs are written
//!   as themselves; sockets are left out, as containerd leaves them out.
//! - A name in the upper that starts with `.wh.` cannot be held by an OCI layer (it would
//!   read as a whiteout): writing it is refused with an error naming it.
//! - The stream ends with two zero blocks. No change at all gives just those 1024 zero bytes,
//!   whose sha256 is containerd's well-known empty layer diff id ([`EMPTY_LAYER_DIFF_ID`]).
//! - The same trees give the same bytes: the order is fixed and nothing depends on the
//!   clock, the host's users, or the order a directory lists its entries in.
//!
//! [`write_layer`] compresses as a media type asks ([`Compression::of_media_type`]),
//! computing the layer's digest and its uncompressed diff id as it streams.
//! [`compare_into_content`] and [`compare_mounts_into_content`] write the layer into a
//! content store as containerd's walking differ does (see [`CompareRequest`]);
//! [`diff_mounts`] and [`TempMount`] mount snapshot mounts read-only to compare them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use plinth_core::Category;

use crate::content::{ContentStore, Digest};
use crate::error::Error;
use crate::snapshots::Mount;

/// An uncompressed OCI layer.
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// A gzip-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// A zstd-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker's uncompressed layer.
pub const MEDIA_TYPE_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker's gzip-compressed layer.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The media type a comparison without one produces (containerd's default).
pub const DEFAULT_MEDIA_TYPE: &str = MEDIA_TYPE_LAYER_GZIP;
/// The label that holds a compressed layer's uncompressed digest (its diff id).
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// The diff id of a layer with no change: sha256 of two zero blocks.
pub const EMPTY_LAYER_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
/// Extended attributes that are never compared nor written into a layer: overlayfs's own
/// bookkeeping (`trusted.overlay.*`, `user.overlay.*`, seen when a tree is an overlay's upper
/// directory) and the host's SELinux label, which the runtime sets, not the image.
pub const SKIPPED_XATTR_PREFIXES: &[&str] =
    &["trusted.overlay.", "user.overlay.", "security.selinux"];

/// The OCI whiteout prefix.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The zstd level layers are written with (zstd's default, as containerd's encoder).
const ZSTD_LEVEL: i32 = 3;
/// Bytes handed to a content writer at once.
const CHUNK_SIZE: usize = 1 << 20;
/// Largest value a 7-digit octal ustar field (uid, gid) holds.
const USTAR_MAX_ID: u64 = 0o7_777_777;
/// Largest value an 11-digit octal ustar field (size, mtime) holds.
const USTAR_MAX_SIZE: u64 = 0o77_777_777_777;

// ---------------------------------------------------------------------------------------
// Changes

/// What a change does to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// In the upper tree only.
    Added,
    /// In both trees, and not the same (see the module docs for what counts).
    Modified,
    /// In the lower tree only.
    Deleted,
}

/// One change between two trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What it does.
    pub kind: ChangeKind,
    /// The path relative to the trees' roots, e.g. `etc/passwd`.
    pub path: PathBuf,
}

/// The changes from `lower` to `upper`, in layer order (see the module docs).
///
/// # Errors
/// Not found or invalid argument when a root is missing or not a directory; an internal
/// error naming the path that could not be read.
pub fn changes(lower: &Path, upper: &Path) -> Result<Vec<Change>, Error> {
    let nodes = walk(lower, upper)?;
    Ok(nodes
        .into_iter()
        .filter_map(|node| {
            let kind = match node.kind {
                NodeKind::Added => ChangeKind::Added,
                NodeKind::Modified => ChangeKind::Modified,
                NodeKind::Deleted => ChangeKind::Deleted,
                NodeKind::LinkedUnmodified => return None,
            };
            Some(Change {
                kind,
                path: node.path,
            })
        })
        .collect())
}

/// What the walk found at one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Added,
    Modified,
    Deleted,
    /// The same in both trees, but one of several names of its inode in the upper: written
    /// as a hard link if another name of the inode is written.
    LinkedUnmodified,
}

#[derive(Debug)]
struct Node {
    kind: NodeKind,
    path: PathBuf,
    /// The upper's metadata (none for a deletion).
    upper: Option<Metadata>,
}

/// The entries of one directory being walked, merged from both sides.
struct Frame {
    path: PathBuf,
    entries: std::vec::IntoIter<(OsString, bool, bool)>,
}

fn walk(lower: &Path, upper: &Path) -> Result<Vec<Node>, Error> {
    for (side, root) in [("lower", lower), ("upper", upper)] {
        let metadata = fs::symlink_metadata(root).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::not_found(format!(
                    "the {side} tree {} does not exist: pass an existing directory",
                    root.display()
                ))
            } else {
                Error::io(format!("reading the {side} tree {}", root.display()), &e)
            }
        })?;
        if !metadata.is_dir() {
            return Err(Error::invalid(format!(
                "the {side} tree {} is not a directory: pass the root directory of a tree",
                root.display()
            )));
        }
    }
    let mut nodes = Vec::new();
    let mut stack = vec![Frame {
        path: PathBuf::new(),
        entries: merged_entries(Some(lower), upper, Path::new(""))?.into_iter(),
    }];
    while let Some(frame) = stack.last_mut() {
        let Some((name, in_lower, in_upper)) = frame.entries.next() else {
            stack.pop();
            continue;
        };
        let path = frame.path.join(&name);
        let lower_metadata = if in_lower {
            lstat_in(lower, &path)?
        } else {
            None
        };
        let upper_metadata = if in_upper {
            lstat_in(upper, &path)?
        } else {
            None
        };
        match (lower_metadata, upper_metadata) {
            (None, None) => {}
            (Some(_), None) => nodes.push(Node {
                kind: NodeKind::Deleted,
                path,
                upper: None,
            }),
            (None, Some(u)) => {
                let is_dir = u.is_dir();
                nodes.push(Node {
                    kind: NodeKind::Added,
                    path: path.clone(),
                    upper: Some(u),
                });
                if is_dir {
                    let entries = merged_entries(None, upper, &path)?;
                    stack.push(Frame {
                        path,
                        entries: entries.into_iter(),
                    });
                }
            }
            (Some(l), Some(u)) => {
                let descend = match (l.is_dir(), u.is_dir()) {
                    (true, true) => Some(Some(lower)),
                    (false, true) => Some(None),
                    _ => None,
                };
                let same = l.file_type() == u.file_type()
                    && same_entry(&lower.join(&path), &l, &upper.join(&path), &u)?;
                let kind = if !same {
                    Some(NodeKind::Modified)
                } else if !u.is_dir() && u.nlink() > 1 {
                    Some(NodeKind::LinkedUnmodified)
                } else {
                    None
                };
                if let Some(kind) = kind {
                    nodes.push(Node {
                        kind,
                        path: path.clone(),
                        upper: Some(u),
                    });
                }
                if let Some(lower_side) = descend {
                    let entries = merged_entries(lower_side, upper, &path)?;
                    stack.push(Frame {
                        path,
                        entries: entries.into_iter(),
                    });
                }
            }
        }
    }
    Ok(nodes)
}

/// The names in `path` under `lower` (when given) and `upper`, sorted by their bytes, each
/// with whether it is in the lower and in the upper.
fn merged_entries(
    lower: Option<&Path>,
    upper: &Path,
    path: &Path,
) -> Result<Vec<(OsString, bool, bool)>, Error> {
    let lower_names = match lower {
        Some(lower) => sorted_names(&lower.join(path))?,
        None => Vec::new(),
    };
    let upper_names = sorted_names(&upper.join(path))?;
    let mut merged = Vec::with_capacity(lower_names.len().max(upper_names.len()));
    let mut lower_names = lower_names.into_iter().peekable();
    let mut upper_names = upper_names.into_iter().peekable();
    loop {
        let order = match (lower_names.peek(), upper_names.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(l), Some(u)) => l.as_bytes().cmp(u.as_bytes()),
        };
        match order {
            std::cmp::Ordering::Less => {
                merged.extend(lower_names.next().map(|name| (name, true, false)));
            }
            std::cmp::Ordering::Greater => {
                merged.extend(upper_names.next().map(|name| (name, false, true)));
            }
            std::cmp::Ordering::Equal => {
                upper_names.next();
                merged.extend(lower_names.next().map(|name| (name, true, true)));
            }
        }
    }
    Ok(merged)
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>, Error> {
    let reading = |e: &io::Error| Error::io(format!("reading directory {}", dir.display()), e);
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| reading(&e))? {
        names.push(entry.map_err(|e| reading(&e))?.file_name());
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// `lstat` of `root/path`; none if it vanished since its directory was listed.
fn lstat_in(root: &Path, path: &Path) -> Result<Option<Metadata>, Error> {
    let full = root.join(path);
    match fs::symlink_metadata(&full) {
        Ok(metadata) => Ok(Some(metadata)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", full.display()), &e)),
    }
}

/// Whether two entries of the same file type are the same (the rules in the module docs).
fn same_entry(
    lower_path: &Path,
    lower: &Metadata,
    upper_path: &Path,
    upper: &Metadata,
) -> Result<bool, Error> {
    if lower.dev() == upper.dev() && lower.ino() == upper.ino() {
        return Ok(true);
    }
    if lower.mode() != upper.mode()
        || lower.uid() != upper.uid()
        || lower.gid() != upper.gid()
        || lower.rdev() != upper.rdev()
    {
        return Ok(false);
    }
    if xattrs(lower_path)? != xattrs(upper_path)? {
        return Ok(false);
    }
    if lower.is_dir() {
        return Ok(true);
    }
    if lower.size() != upper.size()
        || lower.mtime() != upper.mtime()
        || lower.mtime_nsec() != upper.mtime_nsec()
    {
        return Ok(false);
    }
    if lower.file_type().is_symlink() {
        return Ok(read_link(lower_path)? == read_link(upper_path)?);
    }
    if lower.is_file() && lower.mtime_nsec() == 0 && lower.size() > 0 {
        return same_content(lower_path, lower, upper_path, upper);
    }
    Ok(true)
}

fn read_link(path: &Path) -> Result<PathBuf, Error> {
    fs::read_link(path).map_err(|e| Error::io(format!("reading link {}", path.display()), &e))
}

fn same_content(
    lower_path: &Path,
    lower: &Metadata,
    upper_path: &Path,
    upper: &Metadata,
) -> Result<bool, Error> {
    let mut lower_file = open_regular(lower_path, lower)?;
    let mut upper_file = open_regular(upper_path, upper)?;
    let mut lower_buffer = vec![0; 32 * 1024];
    let mut upper_buffer = vec![0; 32 * 1024];
    loop {
        let n = read_full(&mut lower_file, &mut lower_buffer)
            .map_err(|e| Error::io(format!("reading {}", lower_path.display()), &e))?;
        let m = read_full(&mut upper_file, &mut upper_buffer)
            .map_err(|e| Error::io(format!("reading {}", upper_path.display()), &e))?;
        if lower_buffer[..n] != upper_buffer[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buffer` is full or the end: the number of bytes read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Opens a regular file without following a symbolic link, and checks that it is the inode
/// `metadata` describes (the tree did not change under the walk).
fn open_regular(path: &Path, metadata: &Metadata) -> Result<fs::File, Error> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("opening {}", path.display()), &e.into()))?;
    let file = fs::File::from(fd);
    let opened = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), &e))?;
    if opened.dev() != metadata.dev() || opened.ino() != metadata.ino() {
        return Err(Error::failed_precondition(format!(
            "{} changed while it was being compared: compare trees nothing writes to (mount snapshots read-only)",
            path.display()
        )));
    }
    Ok(file)
}

/// The extended attributes of `path` (not followed) that a layer carries, by name.
fn xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Error> {
    let failed = |e: rustix::io::Errno| {
        Error::io(
            format!("reading the extended attributes of {}", path.display()),
            &e.into(),
        )
    };
    let mut attributes = BTreeMap::new();
    let mut names = Vec::new();
    loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(size) => size,
            Err(rustix::io::Errno::NOTSUP) => return Ok(attributes),
            Err(e) => return Err(failed(e)),
        };
        if size == 0 {
            return Ok(attributes);
        }
        names.resize(size, 0);
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => {
                names.truncate(n);
                break;
            }
            // Grew since the query: ask again.
            Err(rustix::io::Errno::RANGE) => {}
            Err(e) => return Err(failed(e)),
        }
    }
    for name in names.split(|&b| b == 0).filter(|name| !name.is_empty()) {
        if SKIPPED_XATTR_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix.as_bytes()))
        {
            continue;
        }
        let name_os = OsStr::from_bytes(name);
        let mut value = Vec::new();
        let value = loop {
            let size = match rustix::fs::lgetxattr_query(path, name_os) {
                Ok(size) => size,
                // Removed since the list: not there.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(failed(e)),
            };
            if size == 0 {
                break Some(Vec::new());
            }
            value.resize(size, 0);
            match rustix::fs::lgetxattr(path, name_os, &mut value[..]) {
                Ok(n) => {
                    value.truncate(n);
                    break Some(value);
                }
                Err(rustix::io::Errno::RANGE) => {}
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(failed(e)),
            }
        };
        if let Some(value) = value {
            attributes.insert(name.to_vec(), value);
        }
    }
    Ok(attributes)
}

// ---------------------------------------------------------------------------------------
// The tar stream

pub use crate::diff::{CompareRequest, Descriptor, WriteDiffOptions};

/// What [`write_diff`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffStats {
    /// Paths added.
    pub added: u64,
    /// Paths modified.
    pub modified: u64,
    /// Paths deleted (whiteouts).
    pub deleted: u64,
    /// Tar entries written (PAX extended headers not counted), parents and hard links
    /// included.
    pub entries: u64,
    /// Bytes of the tar stream.
    pub size: u64,
    /// The sha256 of the tar stream: the layer's diff id.
    pub diff_id: Digest,
}

/// Writes the changes from `lower` to `upper` to `out` as a tar stream (an uncompressed OCI
/// layer), with containerd's defaults; see the module docs for the format.
///
/// # Errors
/// As [`changes`]; failed precondition for a name starting with `.wh.` in the upper, or a
/// file that changed during the walk; the error of `out` (resource exhausted when its disk is
/// full).
pub fn write_diff(lower: &Path, upper: &Path, out: impl Write) -> Result<DiffStats, Error> {
    write_diff_with(lower, upper, &WriteDiffOptions::default(), out)
}

/// As [`write_diff`], with `options`.
///
/// # Errors
/// As [`write_diff`].
pub fn write_diff_with(
    lower: &Path,
    upper: &Path,
    options: &WriteDiffOptions,
    out: impl Write,
) -> Result<DiffStats, Error> {
    let nodes = walk(lower, upper)?;
    // The inodes with several names of which at least one changed: all their names go in.
    let linked_changed: HashSet<(u64, u64)> = nodes
        .iter()
        .filter(|node| matches!(node.kind, NodeKind::Added | NodeKind::Modified))
        .filter_map(|node| node.upper.as_ref())
        .filter(|metadata| !metadata.is_dir() && metadata.nlink() > 1)
        .map(|metadata| (metadata.dev(), metadata.ino()))
        .collect();
    let mut hashing = HashingWriter::new(out);
    let (added, modified, deleted, entries) = {
        let mut writer = TarWriter {
            builder: tar::Builder::new(&mut hashing),
            upper,
            options,
            written_dirs: HashSet::new(),
            link_sources: HashMap::new(),
            entries: 0,
        };
        let (mut added, mut modified, mut deleted) = (0, 0, 0);
        for node in &nodes {
            match node.kind {
                NodeKind::Deleted => {
                    deleted += 1;
                    writer.whiteout(&node.path)?;
                }
                NodeKind::LinkedUnmodified => {
                    if let Some(metadata) = &node.upper {
                        if linked_changed.contains(&(metadata.dev(), metadata.ino())) {
                            writer.entry(&node.path, metadata)?;
                        }
                    }
                }
                NodeKind::Added | NodeKind::Modified => {
                    if node.kind == NodeKind::Added {
                        added += 1;
                    } else {
                        modified += 1;
                    }
                    if let Some(metadata) = &node.upper {
                        writer.entry(&node.path, metadata)?;
                    }
                }
            }
        }
        let entries = writer.entries;
        writer
            .builder
            .into_inner()
            .map_err(|e| Error::io(format!("writing the layer of {}", upper.display()), &e))?;
        (added, modified, deleted, entries)
    };
    let (diff_id, size) = hashing.finish();
    Ok(DiffStats {
        added,
        modified,
        deleted,
        entries,
        size,
        diff_id,
    })
}

struct TarWriter<'a, W: Write> {
    builder: tar::Builder<W>,
    upper: &'a Path,
    options: &'a WriteDiffOptions,
    /// Directories written so far (as entries or as parents).
    written_dirs: HashSet<PathBuf>,
    /// For each inode with several names, the name that carries it in the stream.
    link_sources: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
}

impl<W: Write> TarWriter<'_, W> {
    /// A whiteout for `path`.
    fn whiteout(&mut self, path: &Path) -> Result<(), Error> {
        self.parents(path)?;
        let base = path.file_name().unwrap_or_default();
        let mut name = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => {
                let mut name = parent.as_os_str().as_bytes().to_vec();
                name.push(b'/');
                name
            }
            _ => Vec::new(),
        };
        name.extend_from_slice(WHITEOUT_PREFIX);
        name.extend_from_slice(base.as_bytes());
        let mut header = tar::Header::new_ustar();
        let mut pax = Vec::new();
        set_name(&mut header, &name, &mut pax);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        self.append(&name, header, pax, io::empty(), path)
    }

    /// The parent directories of `path` not written yet, outermost first.
    fn parents(&mut self, path: &Path) -> Result<(), Error> {
        let mut missing: Vec<&Path> = path
            .ancestors()
            .skip(1)
            .filter(|ancestor| !ancestor.as_os_str().is_empty())
            .take_while(|ancestor| !self.written_dirs.contains(*ancestor))
            .collect();
        missing.reverse();
        for parent in missing {
            let full = self.upper.join(parent);
            let metadata = fs::symlink_metadata(&full)
                .map_err(|e| Error::io(format!("reading {}", full.display()), &e))?;
            if !metadata.is_dir() {
                return Err(Error::failed_precondition(format!(
                    "{} is no longer a directory: compare trees nothing writes to (mount snapshots read-only)",
                    full.display()
                )));
            }
            self.write_entry(parent, &metadata)?;
        }
        Ok(())
    }

    /// An added, modified or linked entry, after its parents.
    fn entry(&mut self, path: &Path, metadata: &Metadata) -> Result<(), Error> {
        if metadata.file_type().is_socket() {
            return Ok(());
        }
        self.parents(path)?;
        self.write_entry(path, metadata)
    }

    fn write_entry(&mut self, path: &Path, metadata: &Metadata) -> Result<(), Error> {
        let full = self.upper.join(path);
        if path
            .file_name()
            .is_some_and(|name| name.as_bytes().starts_with(WHITEOUT_PREFIX))
        {
            return Err(Error::failed_precondition(format!(
                "{}: an OCI layer cannot hold a name that starts with .wh. (it reads as a whiteout): rename or remove it",
                full.display()
            )));
        }
        let file_type = metadata.file_type();
        let mut name = path.as_os_str().as_bytes().to_vec();
        if file_type.is_dir() {
            name.push(b'/');
            self.written_dirs.insert(path.to_path_buf());
        }
        let mut header = tar::Header::new_ustar();
        let mut pax = Vec::new();
        set_name(&mut header, &name, &mut pax);
        header.set_mode(metadata.mode() & 0o7777);
        set_id(&mut header, metadata.uid().into(), "uid", &mut pax);
        set_id(&mut header, metadata.gid().into(), "gid", &mut pax);
        self.set_mtime(&mut header, metadata, &mut pax);
        header.set_size(0);

        if !file_type.is_dir() && metadata.nlink() > 1 {
            let inode = (metadata.dev(), metadata.ino());
            if let Some(source) = self.link_sources.get(&inode) {
                header.set_entry_type(tar::EntryType::Link);
                let source = source.clone();
                set_link_name(&mut header, &source, &mut pax);
                return self.append(&name, header, pax, io::empty(), &full);
            }
            self.link_sources.insert(inode, name.clone());
        }

        for (attribute, value) in xattrs(&full)? {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(&attribute);
            pax.push((key, value));
        }

        if file_type.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            let size = metadata.size();
            header.set_size(size);
            if size > USTAR_MAX_SIZE {
                pax.push((b"size".to_vec(), size.to_string().into_bytes()));
            }
            let file = open_regular(&full, metadata)?;
            let mut data = ExactReader {
                inner: file.take(size),
                remaining: size,
                path: &full,
            };
            self.append(&name, header, pax, &mut data, &full)?;
            if data.remaining != 0 {
                return Err(Error::failed_precondition(format!(
                    "{} shrank while it was being written into the layer: compare trees nothing writes to (mount snapshots read-only)",
                    full.display()
                )));
            }
            return Ok(());
        }
        if file_type.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
        } else if file_type.is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            let target = read_link(&full)?;
            set_link_name(&mut header, target.as_os_str().as_bytes(), &mut pax);
        } else if file_type.is_fifo() {
            header.set_entry_type(tar::EntryType::Fifo);
        } else if file_type.is_char_device() || file_type.is_block_device() {
            header.set_entry_type(if file_type.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let device = metadata.rdev();
            let numbers = header
                .set_device_major(rustix::fs::major(device))
                .and_then(|()| header.set_device_minor(rustix::fs::minor(device)));
            numbers.map_err(|e| Error::io(format!("writing device {}", full.display()), &e))?;
        } else {
            return Err(Error::failed_precondition(format!(
                "{}: a file of a type a layer cannot hold",
                full.display()
            )));
        }
        self.append(&name, header, pax, io::empty(), &full)
    }

    fn set_mtime(&self, header: &mut tar::Header, metadata: &Metadata, pax: &mut PaxRecords) {
        let mut seconds = metadata.mtime();
        let mut nanoseconds = metadata.mtime_nsec();
        if let Some(epoch) = self.options.source_date_epoch {
            let (epoch_seconds, epoch_nanoseconds) = unix_time(epoch);
            if (seconds, nanoseconds) > (epoch_seconds, epoch_nanoseconds) {
                (seconds, nanoseconds) = (epoch_seconds, epoch_nanoseconds);
            }
        }
        if !self.options.sub_second_times {
            nanoseconds = 0;
        }
        let fits = u64::try_from(seconds).is_ok_and(|s| s <= USTAR_MAX_SIZE);
        header.set_mtime(if fits { seconds as u64 } else { 0 });
        if !fits || nanoseconds != 0 {
            let mut value = if seconds < 0 && nanoseconds != 0 {
                // PAX times are decimal: -1.5 is 1.5 s before the epoch.
                let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanoseconds);
                format!(
                    "-{}.{:09}",
                    (-total) / 1_000_000_000,
                    (-total) % 1_000_000_000
                )
            } else if nanoseconds != 0 {
                format!("{seconds}.{nanoseconds:09}")
            } else {
                seconds.to_string()
            };
            if value.contains('.') {
                while value.ends_with('0') {
                    value.pop();
                }
            }
            pax.push((b"mtime".to_vec(), value.into_bytes()));
        }
    }

    /// Writes a PAX extended header (when there are records) and the entry.
    fn append(
        &mut self,
        name: &[u8],
        mut header: tar::Header,
        pax: PaxRecords,
        data: impl Read,
        path: &Path,
    ) -> Result<(), Error> {
        let failed = |e: &io::Error| {
            Error::io(
                format!(
                    "writing {} into the layer of {}",
                    path.display(),
                    self.upper.display()
                ),
                e,
            )
        };
        if !pax.is_empty() {
            let records = pax_records(&pax);
            let mut extension = tar::Header::new_ustar();
            let mut ignored = Vec::new();
            set_name(&mut extension, &pax_header_name(name), &mut ignored);
            extension.set_entry_type(tar::EntryType::XHeader);
            extension.set_mode(0o644);
            extension.set_size(records.len() as u64);
            extension.set_cksum();
            self.builder
                .append(&extension, records.as_slice())
                .map_err(|e| failed(&e))?;
        }
        header.set_cksum();
        self.builder.append(&header, data).map_err(|e| failed(&e))?;
        self.entries += 1;
        Ok(())
    }
}

/// PAX records: key, value.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// The body of a PAX extended header: `<length> <key>=<value>\n` per record, the length
/// counting the whole record, its own digits included.
fn pax_records(records: &PaxRecords) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut length = rest + 1;
        while rest + length.to_string().len() != length {
            length = rest + length.to_string().len();
        }
        body.extend_from_slice(length.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(key);
        body.push(b'=');
        body.extend_from_slice(value);
        body.push(b'\n');
    }
    body
}

/// The name of the PAX header of the entry `name`: `<dir>/PaxHeaders.0/<base>`, as Go's
/// archive/tar names them (a reader that does not know PAX extracts it as a file).
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let (dir, base) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&trimmed[..=slash], &trimmed[slash + 1..]),
        None => (&b""[..], trimmed),
    };
    let mut header_name = dir.to_vec();
    header_name.extend_from_slice(b"PaxHeaders.0/");
    header_name.extend_from_slice(base);
    header_name.truncate(100);
    header_name
}

/// Sets the ustar name field: the name itself up to 100 bytes, else its first 100 bytes and
/// a PAX `path` record with the whole name.
fn set_name(header: &mut tar::Header, name: &[u8], pax: &mut PaxRecords) {
    let field = &mut header.as_old_mut().name;
    field.fill(0);
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
    if name.len() > field.len() {
        pax.push((b"path".to_vec(), name.to_vec()));
    }
}

/// Sets the ustar link name field, as [`set_name`] (PAX `linkpath`).
fn set_link_name(header: &mut tar::Header, target: &[u8], pax: &mut PaxRecords) {
    let field = &mut header.as_old_mut().linkname;
    field.fill(0);
    let n = target.len().min(field.len());
    field[..n].copy_from_slice(&target[..n]);
    if target.len() > field.len() {
        pax.push((b"linkpath".to_vec(), target.to_vec()));
    }
}

/// Sets a uid or gid: in the header when it fits 7 octal digits, else 0 there and a PAX
/// record.
fn set_id(header: &mut tar::Header, id: u64, key: &str, pax: &mut PaxRecords) {
    let fits = id <= USTAR_MAX_ID;
    let value = if fits { id } else { 0 };
    if key == "uid" {
        header.set_uid(value);
    } else {
        header.set_gid(value);
    }
    if !fits {
        pax.push((key.as_bytes().to_vec(), id.to_string().into_bytes()));
    }
}

/// Seconds and nanoseconds since the epoch (negative seconds before it).
fn unix_time(time: SystemTime) -> (i64, i64) {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (
            i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            i64::from(after.subsec_nanos()),
        ),
        Err(before) => {
            let before = before.duration();
            let seconds = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            match before.subsec_nanos() {
                0 => (-seconds, 0),
                nanoseconds => (-seconds - 1, 1_000_000_000 - i64::from(nanoseconds)),
            }
        }
    }
}

/// A file's data, which must be exactly as long as its header said.
struct ExactReader<'a, R> {
    inner: R,
    remaining: u64,
    path: &'a Path,
}

impl<R: Read> Read for ExactReader<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buffer)?;
        if n == 0 && self.remaining > 0 && !buffer.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} shrank while it was being written into the layer",
                    self.path.display()
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Passes bytes on, hashing and counting them.
struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        use sha2::Digest as _;
        HashingWriter {
            inner,
            hasher: sha2::Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.size)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------
// Compression

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar.
    Uncompressed,
    /// gzip, default level (6), as containerd writes it.
    Gzip,
    /// zstd, default level (3).
    Zstd,
}

impl Compression {
    /// The compression a layer media type asks for: the OCI layer types (`tar`, `+gzip`,
    /// `+zstd`) and Docker's (`rootfs.diff.tar`, `.tar.gzip`).
    ///
    /// # Errors
    /// Unimplemented for any other media type (containerd's answer), naming those it takes.
    pub fn of_media_type(media_type: &str) -> Result<Compression, Error> {
        match media_type {
            MEDIA_TYPE_LAYER | MEDIA_TYPE_DOCKER_LAYER => Ok(Compression::Uncompressed),
            MEDIA_TYPE_LAYER_GZIP | MEDIA_TYPE_DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
            MEDIA_TYPE_LAYER_ZSTD => Ok(Compression::Zstd),
            other => Err(Error::new(
                Category::Unimplemented,
                format!(
                    "unsupported diff media type {other:?}: use one of {MEDIA_TYPE_LAYER}, {MEDIA_TYPE_LAYER_GZIP}, {MEDIA_TYPE_LAYER_ZSTD}, {MEDIA_TYPE_DOCKER_LAYER}, {MEDIA_TYPE_DOCKER_LAYER_GZIP}"
                ),
            )),
        }
    }
}

/// What [`write_layer`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// The tar stream (its diff id and size are the uncompressed layer's).
    pub diff: DiffStats,
    /// The digest of the bytes written (the compressed layer).
    pub digest: Digest,
    /// Bytes written (the compressed layer).
    pub size: u64,
}

/// Writes the changes from `lower` to `upper` to `out` as a layer of `media_type`
/// (compressed as [`Compression::of_media_type`] says), streaming: the tar stream goes
/// through the compressor as it is made, its diff id and the layer's digest are computed on
/// the way.
///
/// # Errors
/// Unimplemented for a media type no layer has; as [`write_diff`].
pub fn write_layer(
    lower: &Path,
    upper: &Path,
    media_type: &str,
    options: &WriteDiffOptions,
    out: impl Write,
) -> Result<LayerStats, Error> {
    let compression = Compression::of_media_type(media_type)?;
    let mut counted = HashingWriter::new(out);
    let compressing = |e: &io::Error| {
        Error::io(
            format!(
                "compressing the layer of {} ({media_type})",
                upper.display()
            ),
            e,
        )
    };
    let diff = match compression {
        Compression::Uncompressed => write_diff_with(lower, upper, options, &mut counted)?,
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(&mut counted, flate2::Compression::default());
            let diff = write_diff_with(lower, upper, options, &mut encoder)?;
            encoder.finish().map_err(|e| compressing(&e))?;
            diff
        }
        Compression::Zstd => {
            let mut encoder =
                zstd::Encoder::new(&mut counted, ZSTD_LEVEL).map_err(|e| compressing(&e))?;
            let diff = write_diff_with(lower, upper, options, &mut encoder)?;
            encoder.finish().map_err(|e| compressing(&e))?;
            diff
        }
    };
    let (digest, size) = counted.finish();
    Ok(LayerStats { diff, digest, size })
}

// ---------------------------------------------------------------------------------------
// Into the content store

/// Compares `lower` with `upper` into a layer written into `store`, as containerd's walking
/// differ does: the layer streams into a writer of the request's ref (the walk runs on
/// tokio's blocking pool, the store is written from the caller's task), is committed under
/// its computed digest and size with the request's labels, plus [`LABEL_UNCOMPRESSED`] (the
/// diff id) when compressed (an uncompressed layer's diff id is its digest; containerd sets
/// no label there either). A blob that exists already is fine: it gets the
/// uncompressed label if it lacks it. `store` is the namespace's view (the metadata plugin's
/// `NamespacedStores::content` or `leased_content`), so that the blob is recorded in the
/// caller's namespace and lease.
///
/// # Errors
/// Unimplemented for an unsupported media type; invalid argument for a bad ref; as
/// [`write_layer`]; the store's errors (unavailable while another writer holds the ref).
pub async fn compare_into_content(
    store: &dyn ContentStore,
    lower: PathBuf,
    upper: PathBuf,
    request: &CompareRequest,
) -> Result<Descriptor, Error> {
    write_into_content(store, request, move |media_type, options, out| {
        write_layer(&lower, &upper, media_type, options, out)
    })
    .await
}

/// As [`compare_into_content`], with the trees given as snapshot mounts, mounted read-only
/// under `temp_dir` for the comparison by [`diff_mounts`] (and always unmounted). `lower`
/// may be empty (a parentless snapshot): everything in the upper is added.
///
/// # Errors
/// As [`compare_into_content`] and [`diff_mounts`].
pub async fn compare_mounts_into_content(
    store: &dyn ContentStore,
    lower: Vec<Mount>,
    upper: Vec<Mount>,
    temp_dir: PathBuf,
    request: &CompareRequest,
) -> Result<Descriptor, Error> {
    write_into_content(store, request, move |media_type, options, out| {
        diff_mounts(&lower, &upper, &temp_dir, media_type, options, out)
    })
    .await
}

async fn write_into_content(
    store: &dyn ContentStore,
    request: &CompareRequest,
    job: impl FnOnce(&str, &WriteDiffOptions, &mut ChannelWriter) -> Result<LayerStats, Error>
    + Send
    + 'static,
) -> Result<Descriptor, Error> {
    let media_type = if request.media_type.is_empty() {
        DEFAULT_MEDIA_TYPE.to_string()
    } else {
        request.media_type.clone()
    };
    let compression = Compression::of_media_type(&media_type)?;
    let generated = request.reference.is_empty();
    let reference = if generated {
        unique_reference()
    } else {
        crate::content::validate_ref(&request.reference)?;
        request.reference.clone()
    };
    let mut writer = store.writer(&reference, 0, None).await?;
    let outcome = async {
        if !generated {
            writer.truncate(0).await?;
        }
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let options = request.options.clone();
        let job_media_type = media_type.clone();
        // On a thread of its own, not the blocking pool: it waits for the writes below,
        // which take the pool's threads (ARCHITECTURE.md, "Blocking work").
        let producer = crate::on_own_thread("layer-diff", move || {
            let mut out = ChannelWriter {
                sender,
                buffer: Vec::with_capacity(CHUNK_SIZE),
            };
            let stats = job(&job_media_type, &options, &mut out)?;
            out.send_buffer()
                .map_err(|e| Error::io("handing the layer to the content writer", &e))?;
            Ok::<_, Error>(stats)
        });
        let consumer = async {
            let mut write_error = None;
            while let Some(chunk) = receiver.recv().await {
                if let Err(e) = writer.write_owned(chunk).await {
                    write_error = Some(e);
                    break;
                }
            }
            // The producer stops at its next chunk once nobody receives.
            drop(receiver);
            write_error
        };
        let (produced, write_error) = tokio::join!(producer, consumer);
        if let Some(e) = write_error {
            return Err(e);
        }
        let stats = produced?;
        let mut labels = request.labels.clone();
        if compression != Compression::Uncompressed {
            labels.insert(
                LABEL_UNCOMPRESSED.to_string(),
                stats.diff.diff_id.to_string(),
            );
        }
        let size = i64::try_from(stats.size)
            .map_err(|_| Error::invalid(format!("a layer of {} bytes is too large", stats.size)))?;
        match writer
            .commit(size, Some(stats.digest.clone()), labels)
            .await
        {
            Ok(_) => {}
            Err(e) if e.category == Category::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(stats)
    }
    .await;
    if let Err(e) = writer.close().await {
        tracing::debug!(error = %e, reference, "closing the diff's content writer");
    }
    let stats = match outcome {
        Ok(stats) => stats,
        Err(e) => {
            if generated {
                if let Err(abort) = store.abort(&reference).await {
                    if abort.category != Category::NotFound {
                        tracing::warn!(error = %abort, reference, "removing a failed diff's ingest");
                    }
                }
            }
            return Err(e);
        }
    };
    let mut info = store.info(&stats.digest).await?;
    if compression != Compression::Uncompressed && !info.labels.contains_key(LABEL_UNCOMPRESSED) {
        info.labels.insert(
            LABEL_UNCOMPRESSED.to_string(),
            stats.diff.diff_id.to_string(),
        );
        info = store
            .update(info, &[format!("labels.{LABEL_UNCOMPRESSED}")])
            .await?;
    }
    Ok(Descriptor {
        media_type,
        digest: info.digest,
        size: info.size,
    })
}

/// A ref no other comparison uses: the time, the process and a counter.
fn unique_reference() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanoseconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "walking-diff-{nanoseconds}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Hands a layer's bytes, in chunks, from the blocking thread that makes it to the task that
/// writes it into the store.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_SIZE));
        self.sender.blocking_send(chunk).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the content writer stopped taking the layer",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(CHUNK_SIZE - self.buffer.len());
        self.buffer.extend_from_slice(&bytes[..n]);
        if self.buffer.len() == CHUNK_SIZE {
            self.send_buffer()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Mounts

/// Mounts `lower` and `upper` read-only on temporary directories under `temp_dir` and
/// writes their difference as a layer of `media_type` ([`write_layer`]). Both are unmounted
/// whatever happens. An empty `lower` is an empty tree.
///
/// # Errors
/// As [`TempMount::read_only`] (errors name the mount) and [`write_layer`].
pub fn diff_mounts(
    lower: &[Mount],
    upper: &[Mount],
    temp_dir: &Path,
    media_type: &str,
    options: &WriteDiffOptions,
    out: impl Write,
) -> Result<LayerStats, Error> {
    Compression::of_media_type(media_type)?;
    if upper.is_empty() {
        return Err(Error::invalid(
            "the upper side of a diff has no mounts: pass the mounts of the snapshot to compare",
        ));
    }
    let lower_mount = TempMount::read_only(lower, temp_dir)?;
    let upper_mount = TempMount::read_only(upper, temp_dir)?;
    let stats = write_layer(
        lower_mount.path(),
        upper_mount.path(),
        media_type,
        options,
        out,
    )?;
    upper_mount.unmount()?;
    lower_mount.unmount()?;
    Ok(stats)
}

/// Mounts on a temporary directory, read-only; unmounted by [`TempMount::unmount`] or, failing
/// that, on drop. The directory is removed after the unmount, and only if empty: a mount
/// that cannot be undone never has its contents deleted.
#[derive(Debug)]
pub struct TempMount {
    path: PathBuf,
    /// Mounts stacked on `path`.
    layers: usize,
}

impl TempMount {
    /// Creates a directory under `parent` (created if missing, mode 0700) and mounts `mounts`
    /// on it in order, each read-only: a bind (`bind` type, or a `bind`/`rbind` option) is
    /// bound and remounted read-only; an overlay is mounted with its upper directory as its
    /// top lower directory and no work directory (containerd's read-only form), so nothing
    /// can write to the layers. No mounts: an empty directory. Needs root.
    ///
    /// # Errors
    /// Invalid argument for an option containerd reserves (`X-containerd.*`), unimplemented
    /// for a mount type other than bind and overlay, or overlay options over a page;
    /// the mount(2) error naming the mount and the directory.
    pub fn read_only(mounts: &[Mount], parent: &Path) -> Result<TempMount, Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), &e))?;
        let path = loop {
            let path = parent.join(format!(
                "mount-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("creating {}", path.display()), &e)),
            }
        };
        let mut mounted = TempMount { path, layers: 0 };
        for mount in mounts {
            mount_read_only(mount, &mounted.path)?;
            mounted.layers += 1;
        }
        Ok(mounted)
    }

    /// Where the mounts are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts everything and removes the directory.
    ///
    /// # Errors
    /// The umount(2) error (after retries while busy), naming the directory; the mount is
    /// then detached on drop.
    pub fn unmount(mut self) -> Result<(), Error> {
        while self.layers > 0 {
            unmount_retrying(&self.path)
                .map_err(|e| Error::io(format!("unmounting {}", self.path.display()), &e))?;
            self.layers -= 1;
        }
        Ok(())
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        while self.layers > 0 {
            self.layers -= 1;
            if let Err(error) = unmount_retrying(&self.path) {
                tracing::warn!(path = %self.path.display(), %error, "unmounting a diff mount failed; detaching it");
                if let Err(error) =
                    rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH)
                {
                    tracing::warn!(path = %self.path.display(), %error, "detaching a diff mount failed");
                    // Never remove what may still be mounted.
                    return;
                }
            }
        }
        if let Err(error) = fs::remove_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "removing a diff mount directory failed");
        }
    }
}

/// umount(2), retried while busy (50 times, 50 ms apart, as containerd does).
fn unmount_retrying(path: &Path) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        match rustix::mount::unmount(path, rustix::mount::UnmountFlags::empty()) {
            Err(rustix::io::Errno::BUSY) if attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other.map_err(io::Error::from),
        }
    }
}

/// The longest mount data the kernel takes (one page, less the terminating NUL).
const MAX_MOUNT_DATA: usize = 4095;

fn mount_read_only(mount: &Mount, target: &Path) -> Result<(), Error> {
    use rustix::mount::MountFlags;
    let described = || {
        format!(
            "{} mount of {} ({}) on {}",
            mount.mount_type,
            mount.source,
            mount.options.join(","),
            target.display()
        )
    };
    let mut flags = MountFlags::RDONLY;
    let mut bind = mount.mount_type == "bind";
    let mut recursive = false;
    let mut data = Vec::new();
    let mut upper_dir = None;
    for option in &mount.options {
        let flag = match option.as_str() {
            "ro" | "rw" => continue,
            "bind" => {
                bind = true;
                continue;
            }
            "rbind" => {
                bind = true;
                recursive = true;
                continue;
            }
            "nosuid" => MountFlags::NOSUID,
            "nodev" => MountFlags::NODEV,
            "noexec" => MountFlags::NOEXEC,
            "noatime" => MountFlags::NOATIME,
            "nodiratime" => MountFlags::NODIRATIME,
            "relatime" => MountFlags::RELATIME,
            "strictatime" => MountFlags::STRICTATIME,
            "sync" => MountFlags::SYNCHRONOUS,
            "dirsync" => MountFlags::DIRSYNC,
            // Flags that clear what is not set anyway, and options a read-only temporary
            // mount does without (as containerd's read-only mounts).
            "defaults" | "async" | "atime" | "diratime" | "dev" | "exec" | "suid" | "volatile"
            | "fsync=volatile" => continue,
            other if other.starts_with("X-containerd.") => {
                return Err(Error::invalid(format!(
                    "{}: the internal option {other:?} is not for mount(2)",
                    described()
                )));
            }
            other
                if other.starts_with("workdir=")
                    || other.starts_with("uidmap=")
                    || other.starts_with("gidmap=") =>
            {
                continue;
            }
            other if other.starts_with("upperdir=") => {
                upper_dir = Some(other["upperdir=".len()..].to_string());
                continue;
            }
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags |= flag;
    }
    let failed = |e: rustix::io::Errno| Error::io(described(), &e.into());
    if bind {
        if recursive {
            rustix::mount::mount_bind_recursive(mount.source.as_str(), target)
        } else {
            rustix::mount::mount_bind(mount.source.as_str(), target)
        }
        .map_err(failed)?;
        // A bind takes its flags only from a remount.
        if let Err(e) = rustix::mount::mount_remount(target, flags | MountFlags::BIND, "") {
            let _ = unmount_retrying(target);
            return Err(failed(e));
        }
        return Ok(());
    }
    if mount.mount_type != "overlay" {
        return Err(Error::new(
            Category::Unimplemented,
            format!(
                "{}: the walking differ mounts only bind and overlay mounts",
                described()
            ),
        ));
    }
    if let Some(upper_dir) = upper_dir {
        match data.iter_mut().find(|o| o.starts_with("lowerdir=")) {
            Some(lower) => *lower = format!("lowerdir={upper_dir}:{}", &lower["lowerdir=".len()..]),
            None => data.push(format!("lowerdir={upper_dir}")),
        }
    }
    let data = data.join(",");
    if data.len() > MAX_MOUNT_DATA {
        return Err(Error::new(
            Category::Unimplemented,
            format!(
                "{}: the overlay options are {} bytes, more than mount(2) takes ({MAX_MOUNT_DATA}): too many layers for a read-only overlay mount",
                described(),
                data.len()
            ),
        ));
    }
    let data = std::ffi::CString::new(data)
        .map_err(|_| Error::invalid(format!("{}: an option holds a NUL byte", described())))?;
    rustix::mount::mount(
        mount.source.as_str(),
        target,
        mount.mount_type.as_str(),
        flags,
        data.as_c_str(),
    )
    .map_err(failed)
}

#[cfg(test)]
mod tests;
