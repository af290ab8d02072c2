//! Why a plugin directory or library was refused or failed to load.

use std::path::PathBuf;

use crate::fingerprint::FieldMismatch;

/// Why a plugin library (or the whole plugin directory) was not loaded. Every message names
/// what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A permission or ownership rule refused a path (before anything was opened).
    #[error("refused {}{}: {reason}", path.display(), resolved_note(path, resolved))]
    Refused {
        /// The path as found.
        path: PathBuf,
        /// The path with symlinks resolved (what was checked).
        resolved: PathBuf,
        /// Which rule, with the mode or owner found.
        reason: String,
    },
    /// A file system error while checking or listing.
    #[error("{what} {}: {message}", path.display())]
    Io {
        /// What was being done, e.g. `reading directory`.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The file is not a shared object the dynamic linker could map safely (checked before
    /// `dlopen`, which would crash on a truncated file).
    #[error("is not a loadable shared library: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The dynamic linker could not open the file.
    #[error("cannot be opened as a shared library: {message}")]
    Open {
        /// What the dynamic linker said.
        message: String,
    },
    /// The library lacks the entry symbol.
    #[error(
        "has no entry symbol `{symbol}`: not a Plinth plugin library, or built without \
         `plinth_dynamic_loader::export_plugins!()` ({message})"
    )]
    NoEntry {
        /// The symbol looked for.
        symbol: &'static str,
        /// What the dynamic linker said.
        message: String,
    },
    /// The entry returned a null header (building it panicked in the library).
    #[error("entry symbol returned no header (it failed inside the library)")]
    NullHeader,
    /// The header does not start with the magic bytes.
    #[error("bad magic in the plugin header: expected {expected:?}, found {found:?}")]
    BadMagic {
        /// [`crate::abi::MAGIC`] as text.
        expected: String,
        /// The first eight bytes found, lossily as text.
        found: String,
    },
    /// The library speaks another version of the loader ABI.
    #[error("plugin ABI version mismatch: expected {expected}, found {found}")]
    AbiVersion {
        /// This host's [`crate::abi::ABI_VERSION`].
        expected: u32,
        /// The library's.
        found: u32,
    },
    /// The fingerprint text is not readable (null, too long or not UTF-8).
    #[error("unreadable build fingerprint: {reason}")]
    BadFingerprint {
        /// What is wrong with it.
        reason: String,
    },
    /// The library was built differently from this host.
    #[error(
        "build fingerprint mismatch (the library must be built with the same compiler, \
         target and plinth crates as this plinthd): {}",
        mismatches.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Fingerprint {
        /// Each differing field, expected (this host) and found (the library).
        mismatches: Vec<FieldMismatch>,
    },
    /// Handing over the registrations panicked in the library.
    #[error("panicked while handing over its registrations: {message}")]
    HandoverPanicked {
        /// The panic message.
        message: String,
    },
    /// Handing over returned an unknown code or an unusable result.
    #[error("handing over its registrations failed: {reason}")]
    HandoverFailed {
        /// What was wrong.
        reason: String,
    },
    /// A registration of the library breaks a rule.
    #[error("invalid registration: {message}")]
    InvalidRegistration {
        /// The rule broken.
        message: String,
    },
    /// A registration of the library claims a URI that is taken.
    #[error("plugin {uri} is already registered by {other}")]
    Duplicate {
        /// The URI.
        uri: String,
        /// Who has it: this binary or another library.
        other: String,
    },
    /// The plugin directory setting is unusable.
    #[error("plugin_dir {}: {reason}", path.display())]
    BadPluginDir {
        /// The configured path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn resolved_note(path: &std::path::Path, resolved: &std::path::Path) -> String {
    if path == resolved {
        String::new()
    } else {
        format!(" (resolved to {})", resolved.display())
    }
}
