//! The habit of sshd's `StrictModes`: a plugin directory and each library in it must not be
//! writable by group or others, nor owned by a user other than root and the user running
//! the host. Symlinks are resolved first and the target is checked (and, for a library whose
//! target lies outside the plugin directory, the target's directory too): whoever can write
//! the file, or the directory holding it, can make the host run their code.

use std::path::{Path, PathBuf};

use crate::error::LoadError;

/// Resolves `path` and checks it is a directory that only its owner (root or this user) can
/// write. Returns the resolved path.
pub(crate) fn check_dir(path: &Path) -> Result<PathBuf, LoadError> {
    let resolved = resolve(path)?;
    let meta = metadata(path, &resolved)?;
    if !meta.is_dir() {
        return Err(refused(path, &resolved, "not a directory".to_string()));
    }
    check_mode_and_owner(path, &resolved, &resolved, &meta, "directory")?;
    Ok(resolved)
}

/// Resolves `path` (a library in the plugin directory `dir`, itself resolved and checked)
/// and checks it is a regular file only its owner can write; when a symlink takes it out of
/// `dir`, the directory it lands in is checked as well. Returns the resolved path.
pub(crate) fn check_library(path: &Path, dir: &Path) -> Result<PathBuf, LoadError> {
    let resolved = resolve(path)?;
    let meta = metadata(path, &resolved)?;
    if !meta.is_file() {
        return Err(refused(path, &resolved, "not a regular file".to_string()));
    }
    check_mode_and_owner(path, &resolved, &resolved, &meta, "library")?;
    if let Some(parent) = resolved.parent().filter(|p| *p != dir) {
        let parent_meta = metadata(path, parent)?;
        check_mode_and_owner(
            path,
            &resolved,
            parent,
            &parent_meta,
            "directory of the symlink target",
        )?;
    }
    Ok(resolved)
}

fn resolve(path: &Path) -> Result<PathBuf, LoadError> {
    std::fs::canonicalize(path).map_err(|e| LoadError::Io {
        what: "resolving",
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn metadata(path: &Path, resolved: &Path) -> Result<std::fs::Metadata, LoadError> {
    std::fs::metadata(resolved).map_err(|e| LoadError::Io {
        what: "reading the metadata of",
        path: if path == resolved {
            path.to_path_buf()
        } else {
            resolved.to_path_buf()
        },
        message: e.to_string(),
    })
}

fn refused(path: &Path, resolved: &Path, reason: String) -> LoadError {
    LoadError::Refused {
        path: path.to_path_buf(),
        resolved: resolved.to_path_buf(),
        reason,
    }
}

#[cfg(unix)]
fn check_mode_and_owner(
    path: &Path,
    resolved: &Path,
    checked: &Path,
    meta: &std::fs::Metadata,
    what: &str,
) -> Result<(), LoadError> {
    use std::os::unix::fs::MetadataExt as _;
    let mode = meta.mode() & 0o7777;
    let writable_by = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("group and others"),
        (true, false) => Some("group"),
        (false, true) => Some("others"),
        (false, false) => None,
    };
    if let Some(who) = writable_by {
        return Err(refused(
            path,
            resolved,
            format!(
                "{what} {} is writable by {who} (mode {mode:04o}); only its owner may write \
                 it (chmod go-w)",
                checked.display()
            ),
        ));
    }
    let owner = meta.uid();
    let me = effective_uid();
    if owner != 0 && owner != me {
        return Err(refused(
            path,
            resolved,
            format!(
                "{what} {} is owned by uid {owner}, which is neither root nor the user \
                 running plinthd (uid {me})",
                checked.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode_and_owner(
    path: &Path,
    resolved: &Path,
    _checked: &Path,
    _meta: &std::fs::Metadata,
    what: &str,
) -> Result<(), LoadError> {
    Err(refused(
        path,
        resolved,
        format!("{what}: permission checks are only implemented on unix; refusing to load"),
    ))
}

#[cfg(unix)]
#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn modes_table() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        let lib = dir.join("x-linux-x86_64.so");
        std::fs::write(&lib, b"").unwrap();
        // (dir mode, file mode, expected error fragment or "" for ok)
        let cases: &[(u32, u32, &str)] = &[
            (0o755, 0o644, ""),
            (0o700, 0o600, ""),
            (0o775, 0o644, "writable by group (mode 0775)"),
            (0o757, 0o644, "writable by others (mode 0757)"),
            (0o755, 0o664, "writable by group (mode 0664)"),
            (0o755, 0o666, "writable by group and others (mode 0666)"),
        ];
        for &(dir_mode, file_mode, expected) in cases {
            chmod(&dir, dir_mode);
            chmod(&lib, file_mode);
            let result = check_dir(&dir).and_then(|d| check_library(&lib, &d));
            match result {
                Ok(_) => assert_eq!(expected, "", "{dir_mode:o}/{file_mode:o} passed"),
                Err(e) => assert!(
                    !expected.is_empty() && e.to_string().contains(expected),
                    "{dir_mode:o}/{file_mode:o}: {e}"
                ),
            }
        }
    }

    /// The directory check alone: it returns the resolved path, and names the directory
    /// (not a library) in what it refuses.
    #[test]
    fn the_directory_is_checked_by_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        chmod(&dir, 0o755);
        let resolved = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(check_dir(&link).unwrap(), resolved);
        chmod(&dir, 0o775);
        let error = check_dir(&dir).unwrap_err().to_string();
        assert!(
            error.contains(&format!(
                "directory {} is writable by group (mode 0775)",
                resolved.display()
            )),
            "{error}"
        );
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let error = check_dir(&file).unwrap_err().to_string();
        assert!(error.contains("not a directory"), "{error}");
    }

    /// A library owned by a user other than root and the one running the host is refused;
    /// root's and the host user's own are not. Needs root (to give files away), as the suite
    /// does everywhere it checks ownership.
    #[test]
    fn only_root_and_the_host_user_may_own_a_library() {
        assert_eq!(
            effective_uid(),
            std::fs::metadata("/proc/self").unwrap().uid(),
            "effective_uid is not this process's"
        );
        assert_eq!(
            effective_uid(),
            0,
            "run the tests as root: this one gives files away to other users"
        );
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        let dir = check_dir(&dir).unwrap();
        let lib = dir.join("x-linux-x86_64.so");
        std::fs::write(&lib, b"").unwrap();
        chmod(&lib, 0o644);
        assert!(check_library(&lib, &dir).is_ok(), "owned by root");
        for uid in [1, 4242] {
            std::os::unix::fs::chown(&lib, Some(uid), None).unwrap();
            let error = check_library(&lib, &dir).unwrap_err().to_string();
            assert!(
                error.contains(&format!(
                    "library {} is owned by uid {uid}, which is neither root nor the user \
                     running plinthd (uid 0)",
                    lib.display()
                )),
                "{error}"
            );
        }
    }

    #[test]
    fn symlink_target_directory_is_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        chmod(&dir, 0o755);
        chmod(&elsewhere, 0o777);
        let target = elsewhere.join("real.so");
        std::fs::write(&target, b"").unwrap();
        chmod(&target, 0o644);
        let link = dir.join("x-linux-x86_64.so");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dir = check_dir(&dir).unwrap();
        let error = check_library(&link, &dir).unwrap_err().to_string();
        assert!(error.contains("resolved to"), "{error}");
        assert!(
            error.contains("directory of the symlink target") && error.contains("mode 0777"),
            "{error}"
        );
    }
}
