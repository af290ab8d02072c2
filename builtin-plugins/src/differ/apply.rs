//! The layer applier: a layer (a tar stream, plain, gzip or zstd) unpacked onto a directory,
//! in one pass over the stream, hashed on the way so that the caller learns (and may check)
//! the compressed digest and the diff id.
//!
//! ```no_run
//! use plinth_builtin_plugins::differ::apply::{apply, ApplyOptions, Whiteouts};
//! # fn main() -> Result<(), plinth_builtin_plugins::Error> {
//! let layer = std::fs::File::open("layer.tar.gz").unwrap();
//! let options = ApplyOptions {
//!     whiteouts: Whiteouts::Overlay,
//!     ..ApplyOptions::default()
//! };
//! let applied = apply(
//!     layer,
//!     "application/vnd.oci.image.layer.v1.tar+gzip",
//!     "/var/lib/plinth/snapshots/7/fs".as_ref(),
//!     &options,
//! )?;
//! println!("diff id {}", applied.diff_id);
//! # Ok(()) }
//! ```
//!
//! # Media types
//!
//! `application/vnd.oci.image.layer.v1.tar`, `…+gzip`, `…+zstd`, the same for
//! `application/vnd.oci.image.layer.nondistributable.v1.tar`, and Docker's
//! `application/vnd.docker.image.rootfs.diff.tar.gzip`, `….diff.tar.zstd`,
//! `….foreign.diff.tar.gzip`, and `….diff.tar` / `….foreign.diff.tar` (which tools have been
//! known to use for compressed layers: as containerd does, gzip and zstd are recognised there
//! by their magic bytes). Anything else (encrypted layers too) is refused as unimplemented,
//! naming the media type. The stream is decompressed as it is read: nothing is copied to a
//! temporary file. Concatenated gzip members and zstd frames are read as one stream; zstd
//! frames that need a window over libzstd's default limit (128 MiB) are refused.
//!
//! # Verification
//!
//! [`Applied`] carries the sha256 of the bytes read (the compressed digest) and of the tar
//! stream they decompress into (the diff id); both streams are read to their end, past the
//! tar's end-of-archive blocks, so that the digests cover the whole blob. When
//! [`ApplyOptions`] names an expected digest or diff id, a mismatch is an error **after** the
//! entries were written: the directory then holds a partial or wrong tree, and the caller
//! (which applies into an active snapshot) must discard it. The same holds for every other
//! error: this module never rolls back.
//!
//! # Whiteouts
//!
//! OCI whiteouts: `.wh.<name>` deletes `<name>` of the lower layers; `.wh..wh..opq` makes its
//! directory opaque (nothing of the lower layers below it shows). The whiteout files
//! themselves are never written. Other `.wh..wh.` names (aufs's metadata) are ignored. A
//! whiteout whose name is empty, `.` or `..` (`.wh.`, `.wh..`, `.wh...`) is refused: it would
//! delete its own directory. As the OCI spec says, a whiteout hides only what the lower layers
//! hold: an entry this layer wrote earlier keeps its place.
//!
//! - [`Whiteouts::Native`]: the directory is a full copy of the parent (native snapshotter,
//!   bind mount). `.wh.<name>` removes `<name>` (a directory with everything below it);
//!   `.wh..wh..opq` removes what the directory holds from the lower layers, wherever the
//!   marker stands in the layer: what this layer wrote in it, and the directories leading
//!   there, stay.
//! - [`Whiteouts::Overlay`]: the directory is an overlay snapshot's upper directory and the
//!   lower layers are not in it. `.wh.<name>` becomes a character device 0/0 named `<name>`
//!   (owned as the whiteout entry says), `.wh..wh..opq` sets `trusted.overlay.opaque=y` on the
//!   directory, and a directory that replaces a whiteout of the same layer is made opaque too
//!   (otherwise overlayfs would merge the deleted lower directory back in). Setting `trusted.*`
//!   attributes and creating the device need `CAP_SYS_ADMIN` and `CAP_MKNOD` (or a kernel that
//!   allows unprivileged whiteouts); without them the apply fails, naming the entry.
//!
//! # Entries
//!
//! Regular files (also GNU sparse and contiguous ones), directories, symbolic links, hard
//! links, character and block devices, fifos; PAX and GNU long names and link names; PAX
//! `SCHILY.xattr.*` extended attributes; PAX `uid`/`gid`/`mtime`/`atime`. PAX records are
//! read by their lengths, so a value may hold any byte (the `tar` crate's own reader splits
//! them at newlines, which a binary `security.capability` can hold: its records are not
//! used). Sockets cannot be in a tar; PAX global headers are skipped; any other entry type
//! is refused, naming it.
//!
//! - An existing entry of the same name is removed first (a directory with all it holds),
//!   except an existing directory when the entry is a directory too: then the two merge and
//!   the entry's metadata is applied to the existing directory. A regular file is always a new
//!   inode: writing never goes through an existing hard link or symbolic link.
//! - A hard link gets no metadata of its own: it shares its target's inode, whose entry
//!   set it (containerd applies the link's header again, which chowns the inode and so
//!   clears a `security.capability` the link's header does not repeat).
//! - Mode: all twelve bits (setuid, setgid, sticky included), set after the owner (a `chown`
//!   clears setuid). Ownership: the entry's uid and gid when the process runs as root (euid
//!   0); otherwise the owner is left as created (the applying user), as `tar
//!   --no-same-owner` does. Times: the entry's mtime, and as atime the later of its atime and
//!   mtime (containerd's rule); a directory's times are set after the whole layer is written,
//!   so that its own contents do not change them. A symbolic link's times are its own.
//! - Extended attributes: set after the owner (a `chown` clears `security.capability`). An
//!   attribute the filesystem does not support, or a `user.*` one on an entry that cannot
//!   have it, is skipped with a warning (as containerd does); `trusted.overlay.*` attributes
//!   from a layer are skipped with a warning in both forms: they are overlayfs's own
//!   bookkeeping, never layer content, and would let a layer redirect or hide lower paths.
//! - Devices: created with `mknod` where the process may (`CAP_MKNOD`); where it may not
//!   (not root, a user namespace) the entry is skipped with a warning and counted in
//!   [`Applied::skipped_devices`]. Fifos need no privilege and are always created.
//! - Extended attributes of an existing directory that a directory entry merges with: those
//!   the entry does not carry are removed (but overlayfs's own and the host's SELinux label,
//!   which no layer carries: `compare::SKIPPED_XATTR_PREFIXES`), so that a layer that removes
//!   an attribute from a directory removes it in the native form too. containerd leaves them.
//! - A directory that a layer names something inside of, without an entry of its own, is
//!   created with mode 0755 (containerd's choice); in the overlay form it then hides the
//!   attributes of the lower layers' directory of that name.
//!
//! # No escape
//!
//! Applying any layer never creates, changes or deletes anything outside the root, and never
//! reads a host file into it. The root is opened once; every directory an entry names is
//! resolved inside it, with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` or, where that
//! fails or the kernel lacks it, a walk of our own (one component at a time, `O_NOFOLLOW`,
//! symbolic links read and walked with the root as `/`); the entry itself is then changed with
//! `*at` calls on that directory and its last name, which is never followed. Per case, what
//! the applier does (each is a test in `tests.rs`):
//!
//! | case | outcome |
//! |---|---|
//! | `..` components (`../x`, `a/../../x`) | contained: names are cleaned against the root first, like `filepath.Clean("/" + name)`, so `../x` is `x` (containerd does the same) |
//! | absolute names (`/etc/x`) | contained: the leading `/` means the root |
//! | a name that is the root itself (`./`, `/`, `..`) | skipped: the root's own metadata is the snapshotter's |
//! | a directory on the path is a symlink (same or earlier layer; absolute, relative with `..`, chained) | contained: followed as if the root were `/`, so `link -> /etc` then `link/x` writes `<root>/etc/x`; a dangling link's missing target is created inside the root (containerd's behaviour) |
//! | the entry's own name is an existing symlink | the symlink is replaced, never written through |
//! | a symlink's target (`-> /etc/shadow`, `-> ../../x`) | stored as it is: a symlink is data, never followed by the applier itself except as a directory on a later path (above) |
//! | a hard link whose target is outside (`../../etc/passwd`, `/etc/passwd`) or goes through a symlink | contained: the target is resolved inside the root like any name (directories followed, its last name not), so it names a file of the snapshot or does not exist |
//! | a hard link whose target does not exist in the root | refused, naming entry and target |
//! | a hard link to itself, or to a directory | refused, naming the entry |
//! | a whiteout that escapes (`../.wh.x`, `/.wh.x`, `link/.wh.x`) | contained: resolved like any name, it deletes inside the root only |
//! | a whiteout of nothing (`.wh.`, `.wh..`, `.wh...`) | refused |
//! | a path that runs through a file (`file/x`) | refused: not a directory |
//! | more than 40 symlinks on one path | refused: too many levels of symbolic links |
//!
//! # Limits
//!
//! A decompression bomb is stopped: the uncompressed stream, and separately the bytes written
//! into files (sparse entries can expand beyond the stream), may not pass
//! [`Limits::max_uncompressed_size`] (config key `max_uncompressed_size`, default
//! [`DEFAULT_MAX_UNCOMPRESSED_SIZE`], 64 GiB: over the largest layers seen in practice, which
//! run to tens of GiB), nor the layer hold more than [`Limits::max_entries`] entries (config
//! key `max_entries`, default [`DEFAULT_MAX_ENTRIES`]). The metadata of one entry (PAX
//! records, GNU long names), which is held in memory, may not pass 16 MiB. Passing a limit is
//! ResourceExhausted, naming the limit and its key.
//!
//! # Errors
//!
//! Typed [`Error`]s naming the entry (as the layer spells it) and saying what to do: bad
//! layer content is InvalidArgument, an unknown media type Unimplemented, a limit passed or a
//! full disk ResourceExhausted, a digest that does not match DataLoss (the blob is not what
//! its digest says), a diff id that does not match InvalidArgument (the image's config and
//! the layer disagree), a failing system call otherwise Internal.

mod in_root;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use plinth_core::Category;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::Digest as _;

pub(crate) use self::in_root::Resolver;
use self::in_root::{InRoot, ResolveFailure};
use super::compare::SKIPPED_XATTR_PREFIXES;
use crate::Error;
use crate::content::Digest;

/// The default of [`Limits::max_uncompressed_size`]: 64 GiB.
pub const DEFAULT_MAX_UNCOMPRESSED_SIZE: u64 = 64 << 30;

/// The default of [`Limits::max_entries`]: ten million (a large layer holds a few hundred
/// thousand).
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000_000;

/// The most bytes of metadata (PAX records, GNU long names) one entry may carry; the tar
/// reader holds them in memory.
const MAX_ENTRY_METADATA: u64 = 16 << 20;

/// The prefix of a whiteout's name.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The prefix of aufs's own metadata files (ignored), and of the opaque marker.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// The name of the opaque-directory marker.
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// The attribute that makes an overlay directory opaque.
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// overlayfs's own attributes, never taken from a layer.
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
/// The PAX record prefix of an extended attribute.
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// How a layer's stream is compressed, as its media type says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// A plain tar stream.
    Uncompressed,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
    /// Docker's `….diff.tar`: plain, or gzip or zstd recognised by their magic bytes.
    Detect,
}

/// The compression of a layer media type.
///
/// # Errors
/// Unimplemented for a media type that is not a layer this applier reads (encrypted layers,
/// unknown suffixes, anything else), naming it.
pub fn compression_of(media_type: &str) -> Result<Compression, Error> {
    let compression = match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Some(Compression::Uncompressed)
        }
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Some(Compression::Detect),
        _ => None,
    };
    compression.ok_or_else(|| {
        Error::new(
            Category::Unimplemented,
            format!(
                "unsupported layer media type {media_type:?}: the walking differ applies \
                 application/vnd.oci.image.layer.v1.tar (plain, +gzip, +zstd, and the \
                 nondistributable variants) and Docker's application/vnd.docker.image.rootfs.\
                 diff.tar(.gzip, .zstd)"
            ),
        )
    })
}

/// How whiteouts are written: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Whiteouts {
    /// The root is a full copy of the parent: whiteouts delete.
    #[default]
    Native,
    /// The root is an overlay upper directory: whiteouts become overlayfs's own.
    Overlay,
}

/// The limits an apply stops at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes the uncompressed stream may hold, and the most bytes written into
    /// files (config key `max_uncompressed_size`).
    pub max_uncompressed_size: u64,
    /// The most entries a layer may hold (config key `max_entries`).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed_size: DEFAULT_MAX_UNCOMPRESSED_SIZE,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// How to apply a layer.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// How whiteouts are written.
    pub whiteouts: Whiteouts,
    /// Where to stop.
    pub limits: Limits,
    /// The digest the layer's bytes must have (its descriptor's), if known.
    pub expected_digest: Option<Digest>,
    /// The digest its uncompressed tar stream must have (the image config's diff id), if
    /// known.
    pub expected_diff_id: Option<Digest>,
    /// In the overlay form, the overlay's lower directories, top first: a directory the
    /// layer names only as the parent of an entry is created in the upper directory with the
    /// mode, owner and extended attributes of the lower directory it stands over (not 0755,
    /// which would change the merged view). Only looked at, never written.
    pub lower_dirs: Vec<std::path::PathBuf>,
}

/// What an apply read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The sha256 of the layer's bytes, as read.
    pub digest: Digest,
    /// How many bytes were read.
    pub size: u64,
    /// The sha256 of the uncompressed tar stream (the diff id).
    pub diff_id: Digest,
    /// How many bytes the uncompressed stream held.
    pub uncompressed_size: u64,
    /// How many entries the layer held (whiteouts and skipped ones included).
    pub entries: u64,
    /// Device entries skipped because the process may not create devices.
    pub skipped_devices: u64,
}

/// Applies the layer read from `layer`, of `media_type`, onto the directory `root`.
///
/// Blocking: an async caller runs it on a blocking thread.
///
/// # Errors
/// See the module docs: an unknown media type, a layer that is not a valid (compressed) tar
/// stream, an entry refused or that cannot be written (named), a limit passed, a digest or
/// diff id other than expected. After an error the directory may hold part of the layer.
pub fn apply(
    layer: impl Read,
    media_type: &str,
    root: &Path,
    options: &ApplyOptions,
) -> Result<Applied, Error> {
    apply_with(layer, media_type, root, options, Resolver::Auto)
}

/// [`apply`], with the resolver chosen (tests run every case with both).
pub(crate) fn apply_with(
    layer: impl Read,
    media_type: &str,
    root: &Path,
    options: &ApplyOptions,
    resolver: Resolver,
) -> Result<Applied, Error> {
    let compression = compression_of(media_type)?;
    let in_root = InRoot::open(root, resolver).map_err(|e| {
        Error::io(
            format_args!(
                "opening the directory {} to apply a layer onto",
                root.display()
            ),
            &io::Error::from(e),
        )
    })?;
    let in_root = match options.whiteouts {
        Whiteouts::Overlay => in_root.with_lowers(&options.lower_dirs).map_err(|e| {
            Error::io(
                format_args!(
                    "opening the lower directories {:?} of the overlay to apply a layer onto",
                    options.lower_dirs
                ),
                &io::Error::from(e),
            )
        })?,
        Whiteouts::Native => in_root,
    };
    let state = StreamState::default();
    let mut compressed = Hashing {
        inner: layer,
        hasher: sha2::Sha256::new(),
        bytes: 0,
        state: &state,
    };
    let (uncompressed_digest, uncompressed_size, entries, skipped_devices) = {
        let mut buffered = BufReader::with_capacity(128 << 10, &mut compressed);
        let compression = match compression {
            Compression::Detect => detect(&mut buffered, &state)?,
            other => other,
        };
        let decoder: Box<dyn Read + '_> = match compression {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| stream_error(&state, options, &e))?,
            ),
            _ => Box::new(buffered),
        };
        let uncompressed = Uncompressed {
            inner: decoder,
            hasher: sha2::Sha256::new(),
            state: &state,
            max: options.limits.max_uncompressed_size,
        };
        let mut archive = tar::Archive::new(uncompressed);
        let mut applier = Applier::new(in_root, options);
        {
            let mut tar_entries = archive
                .entries()
                .map_err(|e| stream_error(&state, options, &e))?;
            loop {
                state.metadata_from.set(Some(state.uncompressed.get()));
                state.metadata_start.set(state.uncompressed.get());
                state.metadata.borrow_mut().clear();
                let next = tar_entries.next();
                state.metadata_from.set(None);
                let Some(entry) = next else { break };
                let mut entry = entry.map_err(|e| stream_error(&state, options, &e))?;
                applier.entries += 1;
                if applier.entries > options.limits.max_entries {
                    return Err(Error::resource_exhausted(format!(
                        "the layer holds more than {} entries (max_entries): raise \
                         max_entries in the differ's configuration if the layer is genuine",
                        options.limits.max_entries
                    )));
                }
                applier.entry(&mut entry, &state)?;
                // Whatever the entry left unread (a skipped entry's data) is still part of
                // the stream the diff id covers.
                io::copy(&mut entry, &mut io::sink())
                    .map_err(|e| stream_error(&state, options, &e))?;
            }
        }
        applier.finish()?;
        let mut uncompressed = archive.into_inner();
        io::copy(&mut uncompressed, &mut io::sink())
            .map_err(|e| stream_error(&state, options, &e))?;
        (
            Digest::from_hasher(uncompressed.hasher),
            state.uncompressed.get(),
            applier.entries,
            applier.skipped_devices,
        )
    };
    // Bytes after the compressed stream's end are still part of the blob.
    io::copy(&mut compressed, &mut io::sink()).map_err(|e| stream_error(&state, options, &e))?;
    let applied = Applied {
        digest: Digest::from_hasher(compressed.hasher),
        size: compressed.bytes,
        diff_id: uncompressed_digest,
        uncompressed_size,
        entries,
        skipped_devices,
    };
    if let Some(expected) = &options.expected_digest {
        if *expected != applied.digest {
            return Err(Error::data_loss(format!(
                "layer digest mismatch: expected {expected}, the {} bytes read hash to {}: the \
                 blob is not what its descriptor says; the snapshot it was applied to holds \
                 its content and must be discarded",
                applied.size, applied.digest
            )));
        }
    }
    if let Some(expected) = &options.expected_diff_id {
        if *expected != applied.diff_id {
            return Err(Error::invalid(format!(
                "layer diff id mismatch: expected {expected}, the layer's uncompressed stream \
                 ({} bytes) hashes to {}: the image's config and this layer disagree; the \
                 snapshot it was applied to holds the layer and must be discarded",
                applied.uncompressed_size, applied.diff_id
            )));
        }
    }
    Ok(applied)
}

/// What the readers tell the applier: how far the uncompressed stream is, where the current
/// entry's metadata began, and which limit or source failed.
#[derive(Default)]
struct StreamState {
    /// Bytes of the uncompressed stream read so far.
    uncompressed: Cell<u64>,
    /// While the tar reader reads an entry's headers: where they began.
    metadata_from: Cell<Option<u64>>,
    /// Where the last entry's headers began, and the bytes read from there through its own
    /// header: the applier reads the PAX records from them (see [`ExtendedHeaders`]).
    metadata_start: Cell<u64>,
    metadata: RefCell<Vec<u8>>,
    /// A limit passed (the reader's error says the same, but the tar reader may rewrap it).
    exceeded: Cell<Option<Exceeded>>,
    /// The layer's own reader failed (not the data in it).
    source_failed: Cell<bool>,
}

/// Which limit a reader stopped at.
#[derive(Debug, Clone, Copy)]
enum Exceeded {
    Size,
    Metadata,
}

/// Hashes and counts the layer's bytes as they are read.
struct Hashing<'s, R> {
    inner: R,
    hasher: sha2::Sha256,
    bytes: u64,
    state: &'s StreamState,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| {
            // An interrupted read is tried again, not a failed source.
            if e.kind() != io::ErrorKind::Interrupted {
                self.state.source_failed.set(true);
            }
        })?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Hashes and counts the uncompressed stream, and stops it at the limits.
struct Uncompressed<'s, R> {
    inner: R,
    hasher: sha2::Sha256,
    state: &'s StreamState,
    max: u64,
}

impl<R: Read> Read for Uncompressed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.state.uncompressed.get() + n as u64;
        if total > self.max {
            self.state.exceeded.set(Some(Exceeded::Size));
            return Err(io::Error::other("max_uncompressed_size passed"));
        }
        if let Some(from) = self.state.metadata_from.get() {
            if total - from > MAX_ENTRY_METADATA {
                self.state.exceeded.set(Some(Exceeded::Metadata));
                return Err(io::Error::other("entry metadata too large"));
            }
        }
        self.state.uncompressed.set(total);
        self.hasher.update(&buf[..n]);
        if self.state.metadata_from.get().is_some() {
            self.state
                .metadata
                .borrow_mut()
                .extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// Which compression Docker's `….diff.tar` layer really has, from its first bytes.
fn detect(buffered: &mut impl BufRead, state: &StreamState) -> Result<Compression, Error> {
    let head = buffered.fill_buf().map_err(|e| {
        state.source_failed.set(true);
        Error::io("reading the layer", &e)
    })?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::Uncompressed
    })
}

/// The error of a failed read of the stream: a limit, the source, or a layer that is not a
/// valid (compressed) tar stream.
fn stream_error(state: &StreamState, options: &ApplyOptions, error: &io::Error) -> Error {
    match state.exceeded.get() {
        Some(Exceeded::Size) => Error::resource_exhausted(format!(
            "the layer is larger than max_uncompressed_size ({} bytes) uncompressed: stopped \
             as a possible decompression bomb; raise max_uncompressed_size in the differ's \
             configuration if the layer is genuine",
            options.limits.max_uncompressed_size
        )),
        Some(Exceeded::Metadata) => Error::invalid(format!(
            "a layer entry carries more than {MAX_ENTRY_METADATA} bytes of metadata (PAX \
             records or long names): the layer is malformed or hostile"
        )),
        None if state.source_failed.get() => Error::io("reading the layer", error),
        None => Error::invalid(format!(
            "the layer is not a valid tar stream of its media type (after {} uncompressed \
             bytes): {error}",
            state.uncompressed.get()
        )),
    }
}

/// The kinds of entry the applier writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
}

/// What an entry's header says, read before its data.
struct Meta {
    /// The name as the layer spells it, for messages.
    display: String,
    kind: Kind,
    link: Option<Vec<u8>>,
    mode: u32,
    uid: u32,
    gid: u32,
    device: (u32, u32),
    times: Timestamps,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// The state of one apply.
struct Applier<'o> {
    root: InRoot,
    options: &'o ApplyOptions,
    /// Whether to set owners (the process runs as root).
    owners: bool,
    /// What this layer wrote: (device, inode) of the directory, name.
    unpacked: HashSet<(u64, u64, OsString)>,
    /// Directories whose times are set at the end: path and times.
    dirs: Vec<(Vec<OsString>, Timestamps)>,
    /// The last parent directory resolved, until something is removed.
    parent_cache: Option<(Vec<OsString>, OwnedFd, (u64, u64))>,
    entries: u64,
    written: u64,
    skipped_devices: u64,
    buffer: Vec<u8>,
}

impl<'o> Applier<'o> {
    fn new(root: InRoot, options: &'o ApplyOptions) -> Self {
        Applier {
            root,
            options,
            owners: rustix::process::geteuid().is_root(),
            unpacked: HashSet::new(),
            dirs: Vec::new(),
            parent_cache: None,
            entries: 0,
            written: 0,
            skipped_devices: 0,
            buffer: vec![0; 128 << 10],
        }
    }

    /// Applies one entry.
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        state: &StreamState,
    ) -> Result<(), Error> {
        let extended = ExtendedHeaders::read(&state.metadata.borrow(), state.metadata_start.get())
            .map_err(|e| {
                Error::invalid(format!(
                    "layer entry {:?}: PAX records: {e}",
                    String::from_utf8_lossy(&entry.path_bytes())
                ))
            })?;
        let name_bytes = match extended.record(b"path") {
            Some(path) if !extended.gnu_long_name => path.to_vec(),
            _ => entry.path_bytes().into_owned(),
        };
        let shown = String::from_utf8_lossy(&name_bytes).into_owned();
        let entry_type = entry.header().entry_type();
        let kind = match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Kind::File
            }
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Link => Kind::HardLink,
            tar::EntryType::Char => Kind::Char,
            tar::EntryType::Block => Kind::Block,
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::XGlobalHeader => {
                tracing::debug!(entry = %shown, "PAX global header in a layer: ignored");
                return Ok(());
            }
            other => {
                return Err(Error::invalid(format!(
                    "layer entry {shown:?}: unsupported tar entry type {:?} (byte {:?}): \
                     a layer holds files, directories, links, devices and fifos only",
                    other,
                    char::from(other.as_byte())
                )));
            }
        };
        let components = clean(&name_bytes);
        let Some((base, parent)) = components.split_last() else {
            tracing::debug!(entry = %shown, "layer entry names the root: ignored");
            return Ok(());
        };
        let meta = read_meta(entry, &extended, shown, kind)?;
        let base_bytes = base.as_bytes();
        if base_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parent, base, &meta);
        }
        let (dir, dir_id) = self.parent(parent, &meta.display)?;
        let dir = dir.as_fd();
        // A hard link's target is resolved before anything is removed, so that a link to
        // itself is refused rather than left dangling.
        let link_target = match kind {
            Kind::HardLink => Some(self.hard_link_target(&meta, dir_id, base)?),
            _ => None,
        };
        let existing = in_root::type_of(dir, base).map_err(|e| self.os(&meta, "stat", e))?;
        let mut replaces_whiteout = false;
        if let Some(existing) = existing {
            if !(existing == FileType::Directory && kind == Kind::Dir) {
                if self.options.whiteouts == Whiteouts::Overlay {
                    replaces_whiteout = in_root::is_overlay_whiteout(dir, base)
                        .map_err(|e| self.os(&meta, "stat", e))?;
                }
                self.parent_cache = None;
                in_root::remove_all(dir, base)
                    .map_err(|e| self.os(&meta, "removing the existing entry", e))?;
            }
        }
        let opened: Option<OwnedFd> = match kind {
            Kind::Dir => {
                if existing != Some(FileType::Directory) {
                    fs::mkdirat(dir, base, Mode::from_raw_mode(0o700))
                        .map_err(|e| self.os(&meta, "mkdirat", e))?;
                }
                let fd = in_root::open_dir_nofollow(dir, base)
                    .map_err(|e| self.os(&meta, "opening the directory", e))?;
                if replaces_whiteout {
                    fs::fsetxattr(&fd, OVERLAY_OPAQUE_XATTR, b"y", fs::XattrFlags::empty())
                        .map_err(|e| self.os(&meta, "setting trusted.overlay.opaque", e))?;
                }
                Some(fd)
            }
            Kind::File => {
                let fd = fs::openat(
                    dir,
                    base,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.os(&meta, "creating the file", e))?;
                let mut file = File::from(fd);
                self.write_data(entry, &mut file, &meta, state)?;
                Some(OwnedFd::from(file))
            }
            Kind::Symlink => {
                let target = meta.link.as_deref().unwrap_or_default();
                if target.is_empty() {
                    return Err(Error::invalid(format!(
                        "layer entry {:?}: symbolic link with an empty target",
                        meta.display
                    )));
                }
                fs::symlinkat(OsStr::from_bytes(target), dir, base)
                    .map_err(|e| self.os(&meta, "symlinkat", e))?;
                None
            }
            Kind::HardLink => {
                let (target_dir, target_name) = link_target.as_ref().ok_or_else(|| {
                    Error::internal(format!("layer entry {:?}: no link target", meta.display))
                })?;
                fs::linkat(target_dir, target_name, dir, base, AtFlags::empty())
                    .map_err(|e| self.os(&meta, "linking to the hard link's target", e))?;
                None
            }
            Kind::Char | Kind::Block => {
                let file_type = if kind == Kind::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                let device = fs::makedev(meta.device.0, meta.device.1);
                match fs::mknodat(dir, base, file_type, Mode::from_raw_mode(0o600), device) {
                    Ok(()) => None,
                    Err(Errno::PERM) => {
                        tracing::warn!(
                            entry = %meta.display,
                            "device node skipped: this process may not create devices"
                        );
                        self.skipped_devices += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(self.os(&meta, "mknodat", e)),
                }
            }
            Kind::Fifo => {
                fs::mknodat(dir, base, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| self.os(&meta, "mknodat (fifo)", e))?;
                None
            }
        };
        // A hard link shares its target's inode, whose metadata its own entry set: applying
        // the link's header too would chown it again (clearing security.capability and
        // setuid when the header does not carry them).
        if kind != Kind::HardLink {
            self.metadata(&meta, dir, base, opened.as_ref())?;
        }
        if let (Some(FileType::Directory), Some(fd)) = (existing, opened.as_ref()) {
            if kind == Kind::Dir {
                self.remove_other_xattrs(&meta, fd)?;
            }
        }
        if kind == Kind::Dir {
            self.dirs.push((components.clone(), meta.times));
        }
        self.unpacked.insert((dir_id.0, dir_id.1, base.clone()));
        Ok(())
    }

    /// An existing directory that a directory entry merges with: removes the extended
    /// attributes the entry does not carry (the entry says the directory's whole state, as it
    /// does for a new one), except those no layer carries ([`SKIPPED_XATTR_PREFIXES`]:
    /// overlayfs's own, such as an opaque marker this layer set, and the host's SELinux
    /// label).
    fn remove_other_xattrs(&self, meta: &Meta, fd: &OwnedFd) -> Result<(), Error> {
        let mut names = Vec::new();
        loop {
            let size = fs::flistxattr_query(fd)
                .map_err(|e| self.os(meta, "listing the extended attributes", e))?;
            names.resize(size, 0);
            match fs::flistxattr(fd, &mut names[..]) {
                Ok(n) => {
                    names.truncate(n);
                    break;
                }
                // Grew since the query: ask again.
                Err(Errno::RANGE) => {}
                Err(e) => return Err(self.os(meta, "listing the extended attributes", e)),
            }
        }
        for name in names.split(|b| *b == 0).filter(|name| !name.is_empty()) {
            let carried = meta.xattrs.iter().any(|(key, _)| key.as_bytes() == name);
            let skipped = SKIPPED_XATTR_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix.as_bytes()));
            if carried || skipped {
                continue;
            }
            match fs::fremovexattr(fd, OsStr::from_bytes(name)) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => {
                    return Err(self.os(
                        meta,
                        &format!(
                            "removing the extended attribute {:?} the entry does not carry",
                            String::from_utf8_lossy(name)
                        ),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Copies a regular file's data, counting it against the size limit (a sparse entry
    /// writes more than the stream holds).
    fn write_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        meta: &Meta,
        state: &StreamState,
    ) -> Result<(), Error> {
        let max = self.options.limits.max_uncompressed_size;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(stream_error(state, self.options, &e)),
            };
            self.written += n as u64;
            if self.written > max {
                return Err(Error::resource_exhausted(format!(
                    "layer entry {:?}: the layer writes more than max_uncompressed_size ({max} \
                     bytes) into files: stopped as a possible decompression bomb; raise \
                     max_uncompressed_size in the differ's configuration if the layer is \
                     genuine",
                    meta.display
                )));
            }
            file.write_all(&self.buffer[..n]).map_err(|e| {
                Error::io(format_args!("layer entry {:?}: writing", meta.display), &e)
            })?;
        }
    }

    /// Owner, mode, extended attributes and (except for directories, done at the end) times
    /// of a written entry, through its descriptor where there is one.
    fn metadata(
        &self,
        meta: &Meta,
        dir: BorrowedFd<'_>,
        base: &OsStr,
        opened: Option<&OwnedFd>,
    ) -> Result<(), Error> {
        let is_symlink = meta.kind == Kind::Symlink;
        if self.owners {
            let (uid, gid) = (
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            );
            match opened {
                Some(fd) => fs::fchown(fd, uid, gid),
                None => fs::chownat(dir, base, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
            }
            .map_err(|e| self.os(meta, "setting the owner", e))?;
        }
        if !is_symlink {
            let mode = Mode::from_raw_mode(meta.mode & 0o7777);
            match opened {
                Some(fd) => fs::fchmod(fd, mode),
                // Not a symlink (checked above), so following the last name is harmless.
                None => fs::chmodat(dir, base, mode, AtFlags::empty()),
            }
            .map_err(|e| self.os(meta, "setting the mode", e))?;
        }
        for (key, value) in &meta.xattrs {
            if key.as_bytes().starts_with(OVERLAY_XATTR_PREFIX.as_bytes()) {
                tracing::warn!(entry = %meta.display, xattr = ?key,
                    "overlayfs attribute in a layer: ignored");
                continue;
            }
            let result = match opened {
                Some(fd) => fs::fsetxattr(fd, key.as_os_str(), value, fs::XattrFlags::empty()),
                None => in_root::set_xattr_at(dir, base, key, value),
            };
            match result {
                Ok(()) => {}
                Err(Errno::NOTSUP) => {
                    tracing::warn!(entry = %meta.display, xattr = ?key,
                        "extended attribute not supported here: ignored");
                }
                Err(Errno::PERM)
                    if key.as_bytes().starts_with(b"user.")
                        && !matches!(meta.kind, Kind::File | Kind::Dir) =>
                {
                    tracing::warn!(entry = %meta.display, xattr = ?key,
                        "user.* attribute on an entry that cannot have one: ignored");
                }
                Err(e) => {
                    return Err(self.os(
                        meta,
                        &format!("setting the extended attribute {key:?}"),
                        e,
                    ));
                }
            }
        }
        if meta.kind != Kind::Dir {
            match opened {
                Some(fd) => fs::futimens(fd, &meta.times),
                None => fs::utimensat(dir, base, &meta.times, AtFlags::SYMLINK_NOFOLLOW),
            }
            .map_err(|e| self.os(meta, "setting the times", e))?;
        }
        Ok(())
    }

    /// A whiteout entry `parent/base` (`base` starts with `.wh.`).
    fn whiteout(&mut self, parent: &[OsString], base: &OsStr, meta: &Meta) -> Result<(), Error> {
        let base_bytes = base.as_bytes();
        if base_bytes == WHITEOUT_OPAQUE.as_bytes() {
            let (dir, _) = self.parent(parent, &meta.display)?;
            return match self.options.whiteouts {
                Whiteouts::Overlay => {
                    fs::fsetxattr(&dir, OVERLAY_OPAQUE_XATTR, b"y", fs::XattrFlags::empty())
                        .map_err(|e| self.os(meta, "setting trusted.overlay.opaque", e))
                }
                Whiteouts::Native => {
                    self.parent_cache = None;
                    let unpacked = &self.unpacked;
                    let keep = |device: u64, inode: u64, name: &OsStr| {
                        unpacked.contains(&(device, inode, name.to_os_string()))
                    };
                    in_root::remove_unkept(dir.as_fd(), &keep)
                        .map(|_| ())
                        .map_err(|e| self.os(meta, "emptying the opaque directory", e))
                }
            };
        }
        if base_bytes.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            tracing::debug!(entry = %meta.display, "aufs metadata in a layer: ignored");
            return Ok(());
        }
        let target = OsStr::from_bytes(&base_bytes[WHITEOUT_PREFIX.len()..]);
        if target.is_empty() || target == "." || target == ".." {
            return Err(Error::invalid(format!(
                "layer entry {:?}: a whiteout must name an entry of its directory; {:?} would \
                 delete the directory itself",
                meta.display,
                base.to_string_lossy()
            )));
        }
        let (dir, dir_id) = self.parent(parent, &meta.display)?;
        let dir = dir.as_fd();
        let key = (dir_id.0, dir_id.1, target.to_os_string());
        if self.unpacked.contains(&key) {
            // A whiteout hides the lower layers only (OCI image spec).
            tracing::debug!(entry = %meta.display, "whiteout of an entry of the same layer: kept");
            return Ok(());
        }
        self.parent_cache = None;
        in_root::remove_all(dir, target)
            .map_err(|e| self.os(meta, "removing the whited-out entry", e))?;
        if self.options.whiteouts == Whiteouts::Overlay {
            fs::mknodat(dir, target, FileType::CharacterDevice, Mode::empty(), 0)
                .map_err(|e| self.os(meta, "creating the overlay whiteout (mknod 0/0)", e))?;
            if self.owners {
                fs::chownat(
                    dir,
                    target,
                    Some(rustix::fs::Uid::from_raw(meta.uid)),
                    Some(rustix::fs::Gid::from_raw(meta.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| self.os(meta, "setting the whiteout's owner", e))?;
            }
        }
        Ok(())
    }

    /// The directory (created if missing) that holds `parent`'s last component, and its
    /// device and inode; the last one is kept until something is removed.
    fn parent(
        &mut self,
        parent: &[OsString],
        display: &str,
    ) -> Result<(OwnedFd, (u64, u64)), Error> {
        if let Some((path, fd, id)) = &self.parent_cache {
            if path.as_slice() == parent {
                let fd = rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| {
                    Error::io(format_args!("layer entry {display:?}: dup"), &e.into())
                })?;
                return Ok((fd, *id));
            }
        }
        let fd = self
            .root
            .open_dir(parent, true)
            .map_err(|failure| resolve_error(display, "its directory", &failure))?;
        let stat = fs::fstat(&fd)
            .map_err(|e| Error::io(format_args!("layer entry {display:?}: fstat"), &e.into()))?;
        let id = in_root::identity(&stat);
        let cached = rustix::io::fcntl_dupfd_cloexec(&fd, 0)
            .map_err(|e| Error::io(format_args!("layer entry {display:?}: dup"), &e.into()))?;
        self.parent_cache = Some((parent.to_vec(), cached, id));
        Ok((fd, id))
    }

    /// Resolves a hard link's target inside the root: its directory (followed), its last
    /// name (not followed). Refuses a target that does not exist, is a directory or is the
    /// entry itself.
    fn hard_link_target(
        &self,
        meta: &Meta,
        entry_dir_id: (u64, u64),
        entry_base: &OsStr,
    ) -> Result<(OwnedFd, OsString), Error> {
        let link = meta.link.as_deref().unwrap_or_default();
        let link_display = String::from_utf8_lossy(link);
        let components = clean(link);
        let Some((target_base, target_parent)) = components.split_last() else {
            return Err(Error::invalid(format!(
                "layer entry {:?}: hard link to {link_display:?}, the root directory: a hard \
                 link must name a file",
                meta.display
            )));
        };
        let missing = || {
            Error::invalid(format!(
                "layer entry {:?}: hard link target {link_display:?} does not exist in the \
                 snapshot: a layer may only link to what it or a lower layer holds",
                meta.display
            ))
        };
        let target_dir = match self.root.open_dir(target_parent, false) {
            Ok(fd) => fd,
            Err(failure) if failure.errno == Errno::NOENT => return Err(missing()),
            Err(failure) => {
                return Err(resolve_error(
                    &meta.display,
                    &format!("its hard link target {link_display:?}"),
                    &failure,
                ));
            }
        };
        let target_id =
            in_root::identity(&fs::fstat(&target_dir).map_err(|e| self.os(meta, "fstat", e))?);
        match in_root::type_of(target_dir.as_fd(), target_base)
            .map_err(|e| self.os(meta, "stat of the hard link target", e))?
        {
            None => return Err(missing()),
            Some(FileType::Directory) => {
                return Err(Error::invalid(format!(
                    "layer entry {:?}: hard link target {link_display:?} is a directory: \
                     directories cannot be hard linked",
                    meta.display
                )));
            }
            Some(_) => {}
        }
        if target_id == entry_dir_id && target_base == entry_base {
            return Err(Error::invalid(format!(
                "layer entry {:?}: hard link to itself",
                meta.display
            )));
        }
        Ok((target_dir, target_base.clone()))
    }

    /// Sets the directories' times, last written first, once nothing more is written into
    /// them. A directory the layer removed or replaced since is skipped.
    fn finish(&mut self) -> Result<(), Error> {
        let dirs = std::mem::take(&mut self.dirs);
        for (components, times) in dirs.iter().rev() {
            let Some((base, parent)) = components.split_last() else {
                continue;
            };
            let Ok(dir) = self.root.open_dir(parent, false) else {
                continue;
            };
            if in_root::type_of(dir.as_fd(), base) != Ok(Some(FileType::Directory)) {
                continue;
            }
            fs::utimensat(&dir, base, times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
                Error::io(
                    format_args!(
                        "setting the times of the directory {}",
                        in_root::display_path(components)
                    ),
                    &e.into(),
                )
            })?;
        }
        Ok(())
    }

    /// An error of a system call made for an entry.
    fn os(&self, meta: &Meta, what: &str, errno: Errno) -> Error {
        let error = io::Error::from(errno);
        match errno {
            Errno::NOTDIR | Errno::LOOP | Errno::EXIST | Errno::NAMETOOLONG | Errno::ISDIR => {
                Error::invalid(format!(
                    "layer entry {:?}: {what}: {error}: the layer does not fit the tree it is \
                     applied to",
                    meta.display
                ))
            }
            _ => Error::io(
                format_args!("layer entry {:?}: {what}", meta.display),
                &error,
            ),
        }
    }
}

/// The error of a directory that could not be resolved for an entry.
fn resolve_error(display: &str, what: &str, failure: &ResolveFailure) -> Error {
    let error = io::Error::from(failure.errno);
    let message = format!(
        "layer entry {display:?}: cannot open {what} inside the root at {}: {error}",
        failure.at
    );
    match failure.errno {
        Errno::NOTDIR => Error::invalid(format!(
            "{message}: a path of the layer runs through something that is not a directory"
        )),
        Errno::LOOP => Error::invalid(format!("{message}: more than 40 symbolic links on the way")),
        Errno::NOENT | Errno::NAMETOOLONG => Error::invalid(message),
        _ => Error::io(
            format_args!("layer entry {display:?}: opening {what} at {}", failure.at),
            &error,
        ),
    }
}

/// The entry's header, PAX records included.
fn read_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    extended: &ExtendedHeaders,
    display: String,
    kind: Kind,
) -> Result<Meta, Error> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::invalid(format!("layer entry {display:?}: {what}: {e}"))
    };
    let header = entry.header();
    let mode = header.mode().map_err(|e| bad("mode", &e))?;
    let pax_id = |key: &[u8]| -> Result<Option<u64>, Error> {
        extended
            .record(key)
            .map(|value| {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|value| value.parse().ok())
                    .ok_or_else(|| bad("PAX records", &"an owner that is not a decimal number"))
            })
            .transpose()
    };
    let uid = match pax_id(b"uid")? {
        Some(uid) => uid,
        None => header.uid().map_err(|e| bad("uid", &e))?,
    };
    let gid = match pax_id(b"gid")? {
        Some(gid) => gid,
        None => header.gid().map_err(|e| bad("gid", &e))?,
    };
    let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
        (Ok(uid), Ok(gid)) => (uid, gid),
        _ => {
            return Err(Error::invalid(format!(
                "layer entry {display:?}: owner {uid}:{gid} does not fit in 32 bits"
            )));
        }
    };
    let mtime = header.mtime().map_err(|e| bad("mtime", &e))?;
    let mut modified = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    let device = match kind {
        Kind::Char | Kind::Block => (
            header
                .device_major()
                .map_err(|e| bad("device major", &e))?
                .unwrap_or(0),
            header
                .device_minor()
                .map_err(|e| bad("device minor", &e))?
                .unwrap_or(0),
        ),
        _ => (0, 0),
    };
    let link = match extended.record(b"linkpath") {
        Some(link) if !extended.gnu_long_link => Some(link.to_vec()),
        _ => entry.link_name_bytes().map(|link| link.into_owned()),
    };
    let mut accessed = None;
    let mut xattrs = Vec::new();
    for (key, value) in &extended.records {
        if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX.as_bytes()) {
            xattrs.push((OsString::from_vec(name.to_vec()), value.clone()));
        } else if key == b"mtime" {
            modified = pax_time(value)
                .ok_or_else(|| bad("PAX mtime", &"not a decimal number of seconds"))?;
        } else if key == b"atime" {
            accessed = Some(
                pax_time(value)
                    .ok_or_else(|| bad("PAX atime", &"not a decimal number of seconds"))?,
            );
        }
    }
    // containerd's rule: the access time is the later of atime and mtime.
    let accessed = match accessed {
        Some(accessed)
            if (accessed.tv_sec, accessed.tv_nsec) > (modified.tv_sec, modified.tv_nsec) =>
        {
            accessed
        }
        _ => modified,
    };
    Ok(Meta {
        display,
        kind,
        link,
        mode,
        uid,
        gid,
        device,
        times: Timestamps {
            last_access: accessed,
            last_modification: modified,
        },
        xattrs,
    })
}

/// The extended headers that came before an entry's own header: its PAX records, read by
/// their lengths as POSIX says. (The `tar` crate's reader splits records at newlines, which
/// a value may hold, as a binary `security.capability` can: tar-rs issue #428. Its records
/// are not used.)
#[derive(Debug, Default)]
struct ExtendedHeaders {
    /// Key, value; a later record of a key overrides an earlier one.
    records: PaxRecords,
    /// A GNU long name came too (it wins over a PAX `path`, as in Go and the tar crate).
    gnu_long_name: bool,
    /// A GNU long link name came too.
    gnu_long_link: bool,
}

impl ExtendedHeaders {
    /// Reads them from `stream`, the uncompressed stream from the offset `start` through the
    /// entry's own header (what the tar reader read for the entry; it starts with the
    /// previous entry's padding).
    fn read(stream: &[u8], start: u64) -> Result<ExtendedHeaders, String> {
        const BLOCK: usize = 512;
        let mut extended = ExtendedHeaders::default();
        let mut at = (BLOCK - (start % BLOCK as u64) as usize) % BLOCK;
        while let Some(block) = stream.get(at..at + BLOCK) {
            let header = tar::Header::from_byte_slice(block);
            let size = header
                .entry_size()
                .ok()
                .and_then(|size| usize::try_from(size).ok())
                .ok_or("an extended header's size is not a number")?;
            let data = at + BLOCK;
            match header.entry_type() {
                tar::EntryType::XHeader => {
                    let records = data
                        .checked_add(size)
                        .and_then(|end| stream.get(data..end))
                        .ok_or("the extended header ends before its size")?;
                    extended.records = parse_pax_records(records)?;
                }
                tar::EntryType::GNULongName => extended.gnu_long_name = true,
                tar::EntryType::GNULongLink => extended.gnu_long_link = true,
                _ => break,
            }
            at = data.saturating_add(size.div_ceil(BLOCK).saturating_mul(BLOCK));
        }
        Ok(extended)
    }

    /// The value of the last record of `key`.
    fn record(&self, key: &[u8]) -> Option<&[u8]> {
        self.records
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_slice())
    }
}

/// PAX records: key, value.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// PAX records, `<length> <key>=<value>\n` each, the length (decimal) counting the whole
/// record; the value may hold any byte.
fn parse_pax_records(mut data: &[u8]) -> Result<PaxRecords, String> {
    let mut records = Vec::new();
    // Some writers pad the header's data with NULs.
    while !data.iter().all(|b| *b == 0) {
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("a record without a length")?;
        let length: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or("a record whose length is not a decimal number")?;
        if length <= space + 1 || length > data.len() || data[length - 1] != b'\n' {
            return Err("a record whose length does not match its text".into());
        }
        let body = &data[space + 1..length - 1];
        let equals = body
            .iter()
            .position(|b| *b == b'=')
            .ok_or("a record without '='")?;
        records.push((body[..equals].to_vec(), body[equals + 1..].to_vec()));
        data = &data[length..];
    }
    Ok(records)
}

/// A PAX time: decimal seconds with an optional fraction, possibly negative.
fn pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    // One sign, `-` or `+`, as Go's strconv.ParseInt takes.
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    if seconds.is_empty() || !seconds.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: i64 = seconds.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10_i64.pow(8 - i as u32);
    }
    Some(if !negative {
        Timespec {
            tv_sec: seconds,
            tv_nsec: nanos,
        }
    } else if nanos == 0 {
        Timespec {
            tv_sec: -seconds,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: -seconds - 1,
            tv_nsec: 1_000_000_000 - nanos,
        }
    })
}

/// A layer's name as components inside the root: empty and `.` components dropped, `..`
/// taking away the one before it but never climbing above the root, a leading `/` meaning
/// the root (`filepath.Clean("/" + name)`, as containerd reads names). Empty: the root.
fn clean(name: &[u8]) -> Vec<OsString> {
    let mut components: Vec<OsString> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                components.pop();
            }
            _ => components.push(OsString::from_vec(part.to_vec())),
        }
    }
    components
}
