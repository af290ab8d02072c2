//! The directory a layer is applied to, held as a file descriptor and reached only through
//! it: every directory a layer names is resolved inside it (with `openat2`'s
//! `RESOLVE_IN_ROOT`, or with a walk of our own, one component at a time, where the kernel
//! lacks it or where missing directories must be created), and every change is an `*at` call
//! on a directory resolved that way, on a single name that is never followed.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How many symbolic links one resolution follows before it gives up (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// The mode of a directory the applier creates because a layer names something inside it
/// without an entry of its own (containerd's choice too).
pub(super) const IMPLICIT_DIR_MODE: u32 = 0o755;

/// How directories are resolved inside the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolver {
    /// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` first; our own walk where it fails
    /// (a missing directory to create, a precise error to give) or where the kernel lacks it.
    Auto,
    /// Our own walk only: what runs where `openat2` is missing (tests force it).
    #[cfg_attr(not(test), expect(dead_code, reason = "only the tests force the walk"))]
    Walk,
}

/// Why a directory could not be resolved: the error and the in-root path where it happened.
#[derive(Debug)]
pub(super) struct ResolveFailure {
    /// What the failing call returned.
    pub(super) errno: Errno,
    /// Where, as a path inside the root (`/a/b`).
    pub(super) at: String,
}

/// The root directory of an apply, open.
pub(super) struct InRoot {
    root: OwnedFd,
    /// Whether `openat2` is still worth trying (false once it said ENOSYS).
    openat2: Cell<bool>,
    /// The lower directories under an overlay upper root, top first: a directory the walk
    /// creates takes its mode, owner and attributes from the first of them that holds it.
    lowers: Vec<OwnedFd>,
}

impl InRoot {
    /// Opens `path` (the caller's own directory; a symlink there is the caller's choice and
    /// is followed).
    pub(super) fn open(path: &Path, resolver: Resolver) -> Result<InRoot, Errno> {
        let root = fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(InRoot {
            root,
            openat2: Cell::new(resolver == Resolver::Auto),
            lowers: Vec::new(),
        })
    }

    /// Opens the lower directories of an overlay whose upper directory is the root, top
    /// first (see [`InRoot::lowers`]).
    pub(super) fn with_lowers(mut self, lowers: &[std::path::PathBuf]) -> Result<InRoot, Errno> {
        for lower in lowers {
            self.lowers.push(fs::open(
                lower,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        Ok(self)
    }

    /// The directory at `names` in the first lower that has anything there, if that is a
    /// directory; every component opened with `O_NOFOLLOW`, so nothing outside a lower is
    /// looked at. A lower with something else there (a whiteout, a file, a link) hides the
    /// lowers under it.
    fn lower_dir(&self, names: &[OsString]) -> Option<OwnedFd> {
        'lowers: for lower in &self.lowers {
            let mut dir = rustix::io::fcntl_dupfd_cloexec(lower, 0).ok()?;
            for name in names {
                match type_of(dir.as_fd(), name) {
                    Ok(Some(FileType::Directory)) => {
                        dir = open_dir_nofollow(dir.as_fd(), name).ok()?;
                    }
                    // Missing here: the lowers below may have it, unless this directory is
                    // opaque (it hides them).
                    Ok(None) if !is_opaque(dir.as_fd()) => continue 'lowers,
                    // Anything else (a whiteout, a file, a link, an opaque directory without
                    // it) hides the path in every lower below.
                    Ok(_) | Err(_) => return None,
                }
            }
            return Some(dir);
        }
        None
    }

    /// Gives `created` (a directory the walk just made at `names`) the mode, owner and
    /// extended attributes of the lower directory it stands over, if any, so that the merged
    /// view keeps them (overlayfs shows the upper directory's). overlayfs's own attributes
    /// are not copied.
    fn copy_up_attributes(&self, names: &[OsString], created: BorrowedFd<'_>) -> Result<(), Errno> {
        let Some(lower) = self.lower_dir(names) else {
            return Ok(());
        };
        let stat = fs::fstat(&lower)?;
        if rustix::process::geteuid().is_root() {
            fs::fchown(
                created,
                Some(rustix::process::Uid::from_raw(stat.st_uid)),
                Some(rustix::process::Gid::from_raw(stat.st_gid)),
            )?;
        }
        fs::fchmod(created, Mode::from_raw_mode(stat.st_mode & 0o7777))?;
        let mut list = vec![0u8; 64 * 1024];
        let len = fs::flistxattr(&lower, &mut list)?;
        for name in list[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let name = OsStr::from_bytes(name);
            if name.as_bytes().starts_with(b"trusted.overlay.") {
                continue;
            }
            let mut value = vec![0u8; 64 * 1024];
            let Ok(size) = fs::fgetxattr(&lower, name, &mut value) else {
                continue;
            };
            fs::fsetxattr(created, name, &value[..size], fs::XattrFlags::empty())?;
        }
        Ok(())
    }

    /// Opens the directory at `components` (clean names: no `.`, `..` or empty ones) inside
    /// the root. Symbolic links on the way are followed as if the root were `/`: an absolute
    /// target starts again at the root, `..` never climbs above it. With `create`, missing
    /// directories (also those a dangling link points to) are created with mode 0755.
    pub(super) fn open_dir(
        &self,
        components: &[OsString],
        create: bool,
    ) -> Result<OwnedFd, ResolveFailure> {
        if components.is_empty() {
            return rustix::io::fcntl_dupfd_cloexec(&self.root, 0).map_err(|errno| {
                ResolveFailure {
                    errno,
                    at: "/".to_string(),
                }
            });
        }
        if self.openat2.get() {
            let mut path = Vec::new();
            for (i, component) in components.iter().enumerate() {
                if i > 0 {
                    path.push(b'/');
                }
                path.extend_from_slice(component.as_bytes());
            }
            match fs::openat2(
                &self.root,
                OsStr::from_bytes(&path),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => return Ok(fd),
                Err(Errno::NOSYS) => {
                    tracing::debug!("openat2 is not available: resolving layer paths by hand");
                    self.openat2.set(false);
                }
                // Anything else (missing, not a directory, a rename race, too long): the
                // walk creates what is missing or names the failing component.
                Err(_) => {}
            }
        }
        self.walk(components, create)
    }

    /// The walk behind [`InRoot::open_dir`]: a stack of open directories from the root, one
    /// name opened at a time with `O_NOFOLLOW`, `..` as a pop that stops at the root, and
    /// symbolic links read and their targets walked the same way.
    fn walk(&self, components: &[OsString], create: bool) -> Result<OwnedFd, ResolveFailure> {
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut names: Vec<OsString> = Vec::new();
        let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
        let mut links = 0;
        let fail = |names: &[OsString], errno: Errno| ResolveFailure {
            errno,
            at: display_path(names),
        };
        while let Some(name) = pending.pop_front() {
            if name.is_empty() || name == "." {
                continue;
            }
            if name == ".." {
                stack.pop();
                names.pop();
                continue;
            }
            let top = stack.last().map_or(self.root.as_fd(), |fd| fd.as_fd());
            let mut here = names.clone();
            here.push(name.clone());
            match fs::statat(top, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
                    FileType::Directory => {
                        let fd = open_dir_nofollow(top, &name).map_err(|e| fail(&here, e))?;
                        stack.push(fd);
                        names.push(name);
                    }
                    FileType::Symlink => {
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(fail(&here, Errno::LOOP));
                        }
                        let target = fs::readlinkat(top, &name, Vec::new())
                            .map_err(|e| fail(&here, e))?
                            .into_bytes();
                        if target.is_empty() {
                            return Err(fail(&here, Errno::NOENT));
                        }
                        if target.starts_with(b"/") {
                            stack.clear();
                            names.clear();
                        }
                        for part in target.split(|b| *b == b'/').rev() {
                            pending.push_front(OsString::from_vec(part.to_vec()));
                        }
                    }
                    _ => return Err(fail(&here, Errno::NOTDIR)),
                },
                Err(Errno::NOENT) if create => {
                    match fs::mkdirat(top, &name, Mode::from_raw_mode(IMPLICIT_DIR_MODE)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(fail(&here, e)),
                    }
                    let fd = open_dir_nofollow(top, &name).map_err(|e| fail(&here, e))?;
                    // Exactly 0755, whatever the process's umask; over a lower directory,
                    // that directory's mode, owner and attributes.
                    fs::fchmod(&fd, Mode::from_raw_mode(IMPLICIT_DIR_MODE))
                        .map_err(|e| fail(&here, e))?;
                    self.copy_up_attributes(&here, fd.as_fd())
                        .map_err(|e| fail(&here, e))?;
                    stack.push(fd);
                    names.push(name);
                }
                Err(e) => return Err(fail(&here, e)),
            }
        }
        match stack.pop() {
            Some(fd) => Ok(fd),
            None => rustix::io::fcntl_dupfd_cloexec(&self.root, 0).map_err(|e| fail(&[], e)),
        }
    }
}

/// Opens the directory `name` in `dir`, refusing a symbolic link.
pub(super) fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Whether the directory `dir` is an opaque overlay directory (`trusted.overlay.opaque=y`).
fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    let mut value = [0u8; 2];
    matches!(fs::fgetxattr(dir, "trusted.overlay.opaque", &mut value), Ok(1) if value[0] == b'y')
}

/// The type of `name` in `dir`, not following a symbolic link; `None` when it does not exist.
pub(super) fn type_of(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<FileType>, Errno> {
    match fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `name` in `dir` is an overlay whiteout: a character device 0/0.
pub(super) fn is_overlay_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, Errno> {
    match fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(
            FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice && stat.st_rdev == 0,
        ),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `name` from `dir` and, if it is a directory, everything below it, never following
/// a symbolic link. Whether it existed.
pub(super) fn remove_all(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, Errno> {
    match type_of(dir, name)? {
        None => Ok(false),
        Some(FileType::Directory) => {
            let child = open_dir_nofollow(dir, name)?;
            for entry in list(child.as_fd())? {
                remove_all(child.as_fd(), &entry)?;
            }
            fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
            Ok(true)
        }
        Some(_) => {
            fs::unlinkat(dir, name, AtFlags::empty())?;
            Ok(true)
        }
    }
}

/// Removes from `dir` (and below) what `keep` does not keep, never following a symbolic
/// link: a kept directory loses what it holds that is not kept; a directory not kept is
/// removed unless something below it is kept. Whether anything was kept. `keep` is asked
/// with the device and inode of the directory that holds the name.
pub(super) fn remove_unkept(
    dir: BorrowedFd<'_>,
    keep: &dyn Fn(u64, u64, &OsStr) -> bool,
) -> Result<bool, Errno> {
    let stat = fs::fstat(dir)?;
    let (device, inode) = identity(&stat);
    let mut kept_any = false;
    for name in list(dir)? {
        let kept = keep(device, inode, &name);
        if type_of(dir, &name)? == Some(FileType::Directory) {
            let child = open_dir_nofollow(dir, &name)?;
            let kept_below = remove_unkept(child.as_fd(), keep)?;
            drop(child);
            if kept || kept_below {
                kept_any = true;
            } else {
                fs::unlinkat(dir, &name, AtFlags::REMOVEDIR)?;
            }
        } else if kept {
            kept_any = true;
        } else {
            fs::unlinkat(dir, &name, AtFlags::empty())?;
        }
    }
    Ok(kept_any)
}

/// The names in `dir`, without `.` and `..`.
fn list(dir: BorrowedFd<'_>) -> Result<Vec<OsString>, Errno> {
    let mut names = Vec::new();
    for entry in fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    Ok(names)
}

/// The device and inode of a stat.
#[allow(
    clippy::useless_conversion,
    reason = "st_dev and st_ino are u64 on some targets and narrower on others"
)]
pub(super) fn identity(stat: &fs::Stat) -> (u64, u64) {
    (u64::from(stat.st_dev), u64::from(stat.st_ino))
}

/// Sets an extended attribute on `name` in `dir` without following it, for entries that
/// cannot be opened for it (symbolic links, devices, fifos): through the directory's own
/// `/proc/self/fd` link, whose last component (`name`) `lsetxattr` does not follow.
pub(super) fn set_xattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &OsStr,
    value: &[u8],
) -> Result<(), Errno> {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(name);
    fs::lsetxattr(&path, key, value, fs::XattrFlags::empty())
}

/// `/a/b` for names `a`, `b`: how errors show a place inside the root.
pub(super) fn display_path(names: &[OsString]) -> String {
    let mut text = String::new();
    for name in names {
        text.push('/');
        text.push_str(&name.to_string_lossy());
    }
    if text.is_empty() {
        text.push('/');
    }
    text
}
