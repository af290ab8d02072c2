//! Which files of a plugin directory are plugin libraries: `*-<os>-<arch>.<ext>`, with Rust's
//! own names for this platform.
//!
//! | part | from | values |
//! |---|---|---|
//! | `<os>` | [`std::env::consts::OS`] | `linux`, `macos`, `windows`, `freebsd`, … |
//! | `<arch>` | [`std::env::consts::ARCH`] | `x86_64`, `aarch64`, `riscv64`, … |
//! | `<ext>` | [`std::env::consts::DLL_EXTENSION`] | `so`, `dylib`, `dll` |
//!
//! So on 64-bit x86 Linux a library is named e.g. `hello-linux-x86_64.so`. Anything else in
//! the directory (other platforms' builds, READMEs, directories) is ignored with a debug log.

use std::path::{Path, PathBuf};

use crate::error::LoadError;

/// The file-name suffix of plugin libraries on this platform, e.g. `-linux-x86_64.so`.
pub fn library_suffix() -> String {
    format!(
        "-{}-{}.{}",
        std::env::consts::OS,
        std::env::consts::ARCH,
        std::env::consts::DLL_EXTENSION
    )
}

/// The file name a library called `stem` must have here, e.g. `hello-linux-x86_64.so`.
pub fn library_file_name(stem: &str) -> String {
    format!("{stem}{}", library_suffix())
}

/// Whether `file_name` is a plugin library name for this platform (a non-empty name before
/// the suffix).
pub fn is_library_name(file_name: &str) -> bool {
    let suffix = library_suffix();
    file_name.len() > suffix.len() && file_name.ends_with(&suffix)
}

/// The plugin libraries in `dir`, sorted by file name (byte order). Symlinks are listed
/// like files; the permission checks resolve them.
///
/// # Errors
/// When the directory cannot be read.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::Io {
        what: "reading directory",
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LoadError::Io {
            what: "reading directory",
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::debug!(path = %path.display(), "ignored: file name is not UTF-8");
            continue;
        };
        if !is_library_name(&name) {
            tracing::debug!(
                path = %path.display(),
                expected = %format!("*{}", library_suffix()),
                "ignored: not a plugin library name for this platform"
            );
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            tracing::debug!(path = %path.display(), "ignored: a directory");
            continue;
        }
        found.push((name, path));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let here = library_suffix();
        let cases: &[(String, bool)] = &[
            (format!("hello{here}"), true),
            (format!("a{here}"), true),
            (here.clone(), false),
            (format!("hello{here}.bak"), false),
            ("hello-plan9-mips.so".to_string(), false),
            ("hello.so".to_string(), false),
            ("README".to_string(), false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_library_name(name), *expected, "{name}");
        }
    }

    #[test]
    fn discovery_is_sorted_and_filtered() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["b", "a", "c"] {
            std::fs::write(tmp.path().join(library_file_name(name)), b"").unwrap();
        }
        std::fs::write(tmp.path().join("notes.txt"), b"").unwrap();
        std::fs::create_dir(tmp.path().join(library_file_name("dir"))).unwrap();
        let found: Vec<String> = discover(tmp.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            found,
            ["a", "b", "c"].map(library_file_name).to_vec(),
            "sorted, only library names, no directories"
        );
    }
}
