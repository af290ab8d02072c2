//! Loading: permission checks, `dlopen`, the ABI and fingerprint checks, the handover, and
//! the checks of what was handed over against the host's own registrations.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use plinth_core::registration::SharedInitFn;
use plinth_core::{InitContext, InitError, Instance, Registration};

use crate::abi::{
    ABI_VERSION, ENTRY_SYMBOL, HANDOVER_OK, HANDOVER_PANICKED, Handover, Header, MAGIC, RawStr,
};
use crate::error::LoadError;
use crate::fingerprint::Fingerprint;

/// The plugin type of the entries that stand for a library (or plugin directory) that
/// failed: `io.plinth.dynamic.v1.<library file stem>`, status failed with the reason.
pub const FAILED_LIBRARY_TYPE: &str = "io.plinth.dynamic.v1";

/// The id of the entry that stands for a refused plugin directory.
pub const FAILED_DIR_ID: &str = "plugin_dir";

/// The longest fingerprint text read from a library.
const MAX_FINGERPRINT_LEN: usize = 64 * 1024;

/// A library that loaded: its registrations, in URI order.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The library file as found in the plugin directory.
    pub path: PathBuf,
    /// Its registrations (every init wrapped so that a panic stays in the library).
    pub registrations: Vec<Registration>,
    /// URIs it carried that are exact copies of this host's own registrations (it links a
    /// plugin crate this host links too, e.g. plinth-builtin-plugins for its interfaces);
    /// the host's are used.
    pub copies_of_host: Vec<String>,
}

/// A library that was refused or failed.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The library file as found in the plugin directory.
    pub path: PathBuf,
    /// Why.
    pub error: LoadError,
}

/// The outcome of [`load_dir`].
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The plugin directory.
    pub dir: PathBuf,
    /// When the directory itself was refused or unreadable: nothing in it was loaded.
    pub dir_error: Option<LoadError>,
    /// The libraries that loaded, in file-name order.
    pub loaded: Vec<Loaded>,
    /// The libraries that did not, in file-name order.
    pub failed: Vec<Failed>,
}

impl LoadReport {
    /// What a host adds to its registry with `RegistryBuilder::add_dynamic`: the
    /// registrations of every loaded library, and for every failure one registration of
    /// type [`FAILED_LIBRARY_TYPE`] whose init fails with the path and the reason — so that
    /// failures show in introspection and `plugins ls` as plugins with status error, and
    /// `required_plugins` can name them.
    pub fn registrations(&self) -> Vec<(PathBuf, Registration)> {
        let mut out = Vec::new();
        if let Some(error) = &self.dir_error {
            out.push((
                self.dir.clone(),
                failed_registration(
                    FAILED_DIR_ID.to_string(),
                    format!("plugin directory {}: {error}", self.dir.display()),
                ),
            ));
        }
        for loaded in &self.loaded {
            for registration in &loaded.registrations {
                out.push((loaded.path.clone(), *registration));
            }
        }
        for failed in &self.failed {
            out.push((
                failed.path.clone(),
                failed_registration(
                    failed_id(&failed.path),
                    format!("plugin library {}: {}", failed.path.display(), failed.error),
                ),
            ));
        }
        out
    }
}

/// Finds, checks and loads every plugin library in `dir`, in file-name order.
///
/// `host` are the host's own (link-time) registrations: a library registration with one of
/// their URIs fails the library, unless it is an exact copy (same type, id, requires, config
/// type and migration hook: the library links the same plugin crate, compiled identically,
/// as the fingerprint guarantees), which is dropped. A library's registrations are taken all
/// or none. A missing directory is not an error (nothing to load).
///
/// Libraries are never unloaded: whatever loaded stays mapped for the life of the process,
/// so the `'static` data in its registrations stays valid.
pub fn load_dir(dir: &Path, host: &[Registration]) -> LoadReport {
    let mut report = LoadReport {
        dir: dir.to_path_buf(),
        ..LoadReport::default()
    };
    if dir.is_relative() {
        report.dir_error = Some(LoadError::BadPluginDir {
            path: dir.to_path_buf(),
            reason: "must be an absolute path".to_string(),
        });
        return report;
    }
    if !dir.exists() {
        tracing::debug!(dir = %dir.display(), "no plugin directory: no plugin libraries");
        return report;
    }
    let resolved_dir = match crate::permissions::check_dir(dir) {
        Ok(resolved) => resolved,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "plugin directory refused");
            report.dir_error = Some(error);
            return report;
        }
    };
    let paths = match crate::discovery::discover(dir) {
        Ok(paths) => paths,
        Err(error) => {
            report.dir_error = Some(error);
            return report;
        }
    };

    let host_by_uri: HashMap<String, &Registration> = host.iter().map(|r| (r.uri(), r)).collect();
    let mut taken: HashMap<String, PathBuf> = HashMap::new();
    for path in paths {
        let result = crate::permissions::check_library(&path, &resolved_dir)
            .and_then(|resolved| open(&resolved))
            .and_then(|registrations| admit(registrations, &host_by_uri, &taken));
        match result {
            Ok((registrations, copies_of_host)) => {
                for registration in &registrations {
                    taken.insert(registration.uri(), path.clone());
                }
                tracing::debug!(
                    library = %path.display(),
                    plugins = registrations.len(),
                    "plugin library loaded"
                );
                report.loaded.push(Loaded {
                    path,
                    registrations,
                    copies_of_host,
                });
            }
            Err(error) => {
                tracing::warn!(library = %path.display(), %error, "plugin library not loaded");
                report.failed.push(Failed { path, error });
            }
        }
    }
    report
}

/// Validates a library's registrations and checks their URIs against the host's and those
/// of libraries loaded before it. Returns the registrations to add and the host copies
/// dropped.
fn admit(
    registrations: Vec<Registration>,
    host: &HashMap<String, &Registration>,
    taken: &HashMap<String, PathBuf>,
) -> Result<(Vec<Registration>, Vec<String>), LoadError> {
    let mut own = Vec::new();
    let mut copies = Vec::new();
    let mut seen: HashMap<String, ()> = HashMap::new();
    for registration in registrations {
        registration
            .validate()
            .map_err(|e| LoadError::InvalidRegistration {
                message: e.to_string(),
            })?;
        let uri = registration.uri();
        if seen.insert(uri.clone(), ()).is_some() {
            return Err(LoadError::Duplicate {
                uri,
                other: "this same library".to_string(),
            });
        }
        if let Some(existing) = host.get(&uri) {
            if same_plugin(existing, &registration) {
                copies.push(uri);
                continue;
            }
            return Err(LoadError::Duplicate {
                uri,
                other: "this binary (link time)".to_string(),
            });
        }
        if let Some(other) = taken.get(&uri) {
            return Err(LoadError::Duplicate {
                uri,
                other: format!("library {}", other.display()),
            });
        }
        own.push(registration);
    }
    Ok((own, copies))
}

/// Whether two registrations are the same plugin compiled twice: everything comparable
/// across copies is equal (init functions are not comparable: each copy has its own).
fn same_plugin(a: &Registration, b: &Registration) -> bool {
    a.plugin_type() == b.plugin_type()
        && a.id() == b.id()
        && a.required_types() == b.required_types()
        && a.config_spec().map(|s| s.type_name()) == b.config_spec().map(|s| s.type_name())
        && a.migration().is_some() == b.migration().is_some()
        && a.reconfigure_hook().is_some() == b.reconfigure_hook().is_some()
}

/// Opens one library (already permission-checked) and takes its registrations, checking
/// magic, ABI version and fingerprint first.
///
/// # Errors
/// Every way a library can be unusable, as a [`LoadError`].
pub fn open(path: &Path) -> Result<Vec<Registration>, LoadError> {
    #[cfg(all(unix, not(target_vendor = "apple")))]
    crate::elf::check(path).map_err(|reason| LoadError::Malformed { reason })?;
    let library = open_library(path)?;
    // Never unloaded: registrations point into the library's code and data for the rest of
    // the process.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    let symbol = format!("{ENTRY_SYMBOL}\0");
    // SAFETY: the symbol is looked up with the type every `export_plugins!` expansion gives
    // it (`extern "C" fn() -> *const Header`). A library that exports this versioned name
    // with another type is not one we can defend against in-process.
    let entry: libloading::Symbol<'static, unsafe extern "C" fn() -> *const Header> =
        unsafe { library.get(symbol.as_bytes()) }.map_err(|e| LoadError::NoEntry {
            symbol: ENTRY_SYMBOL,
            message: e.to_string(),
        })?;
    // SAFETY: the entry takes no arguments; the library side catches any panic and returns
    // null instead.
    let header = unsafe { entry() };
    if header.is_null() {
        return Err(LoadError::NullHeader);
    }
    if !header.is_aligned() {
        return Err(LoadError::HandoverFailed {
            reason: "the header pointer is misaligned".to_string(),
        });
    }
    // SAFETY: `header` is non-null and aligned and points at a `Header` the library keeps
    // for its lifetime (forever). Fields are read one at a time, in the order of the
    // contract: magic and ABI version (fixed offsets in every ABI version) first, the rest
    // only once they match.
    let magic = unsafe { (&raw const (*header).magic).read() };
    if magic != MAGIC {
        return Err(LoadError::BadMagic {
            expected: String::from_utf8_lossy(&MAGIC).into_owned(),
            found: String::from_utf8_lossy(&magic).into_owned(),
        });
    }
    // SAFETY: as above; the magic matched, so this is a Plinth header.
    let abi_version = unsafe { (&raw const (*header).abi_version).read() };
    if abi_version != ABI_VERSION {
        return Err(LoadError::AbiVersion {
            expected: ABI_VERSION,
            found: abi_version,
        });
    }
    // SAFETY: as above; ABI version 1 has this field at this offset.
    let fingerprint = unsafe { (&raw const (*header).fingerprint).read() };
    let found = read_str(fingerprint, MAX_FINGERPRINT_LEN)
        .map_err(|reason| LoadError::BadFingerprint { reason })?;
    let expected = Fingerprint::current();
    if found != expected.to_text() {
        return Err(LoadError::Fingerprint {
            mismatches: expected.mismatches(&Fingerprint::parse(&found)),
        });
    }
    // SAFETY: as above; read only now that the fingerprint says both sides agree on Rust
    // layouts.
    let handover = unsafe { (&raw const (*header).handover).read() };
    let mut out = Handover::empty();
    // SAFETY: `out` is a valid, writable `Handover`; the library catches its panics and
    // reports them through the return code.
    let code = unsafe { handover(&mut out) };
    match code {
        HANDOVER_OK => {}
        HANDOVER_PANICKED => {
            let message = read_str(out.error, MAX_FINGERPRINT_LEN)
                .unwrap_or_else(|reason| format!("(unreadable message: {reason})"));
            return Err(LoadError::HandoverPanicked { message });
        }
        other => {
            return Err(LoadError::HandoverFailed {
                reason: format!("unknown return code {other}"),
            });
        }
    }
    if out.len == 0 {
        return Ok(Vec::new());
    }
    if out.registrations.is_null() || !out.registrations.is_aligned() {
        return Err(LoadError::HandoverFailed {
            reason: "null or misaligned registrations".to_string(),
        });
    }
    // SAFETY: the library leaked `len` initialised registrations at this address (never
    // freed, never unloaded), of the same `Registration` layout as ours (fingerprint).
    let registrations = unsafe { std::slice::from_raw_parts(out.registrations, out.len) };
    Ok(registrations.to_vec())
}

#[cfg(unix)]
fn open_library(path: &Path) -> Result<libloading::Library, LoadError> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: opening a library runs its initialisers (for a Plinth library: inventory's
    // registrations, which only link list nodes). The permission checks made sure only root
    // or this user could have put this file here. RTLD_NOW resolves every symbol now, so a
    // missing one fails here instead of aborting the process at its first call; RTLD_LOCAL
    // keeps its symbols from interposing on anyone else's.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) };
    library.map(Into::into).map_err(|e| LoadError::Open {
        message: e.to_string(),
    })
}

#[cfg(not(unix))]
fn open_library(path: &Path) -> Result<libloading::Library, LoadError> {
    // SAFETY: as on unix: initialisers run; the permission checks refuse everything here.
    unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open {
        message: e.to_string(),
    })
}

/// Copies a library-owned string.
fn read_str(raw: RawStr, max: usize) -> Result<String, String> {
    if raw.len == 0 {
        return Ok(String::new());
    }
    if raw.ptr.is_null() {
        return Err("null pointer".to_string());
    }
    if raw.len > max {
        return Err(format!("{} bytes, more than the {max} allowed", raw.len));
    }
    // SAFETY: non-null, bounded length; the library keeps the bytes for its lifetime
    // (forever) and the contract says they are initialised.
    let bytes = unsafe { std::slice::from_raw_parts(raw.ptr, raw.len) };
    String::from_utf8(bytes.to_vec()).map_err(|e| format!("not UTF-8: {e}"))
}

/// The id of the entry standing for a failed library: its file stem, with any character
/// that cannot be in a plugin id replaced by `_`.
fn failed_id(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() { "_".to_string() } else { id }
}

/// A registration whose init fails with `message` (leaked once per failed library).
fn failed_registration(id: String, message: String) -> Registration {
    let id: &'static str = Box::leak(id.into_boxed_str());
    let init: Box<SharedInitFn> =
        Box::new(move |_: &mut InitContext| -> Result<Instance, InitError> {
            Err(InitError::msg(message.clone()))
        });
    Registration::with_shared_init(FAILED_LIBRARY_TYPE, id, Box::leak(init))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(_: &mut InitContext) -> Result<Instance, InitError> {
        Ok(Instance::none())
    }
    fn other_init(_: &mut InitContext) -> Result<Instance, InitError> {
        Err(InitError::msg("other"))
    }
    fn take_in_place(
        _: &Instance,
        _: &plinth_core::registration::AnyConfig,
    ) -> Result<(), plinth_core::init::BoxError> {
        Ok(())
    }

    /// `read_str` copies exactly the bytes it is pointed at, and refuses a null pointer, a
    /// length over the bound (the bound itself passes) and bytes that are not UTF-8.
    #[test]
    fn read_str_copies_what_it_may_and_refuses_the_rest() {
        let raw = |bytes: &'static [u8]| RawStr {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        };
        assert_eq!(
            read_str(raw(b"fingerprint"), 64),
            Ok("fingerprint".to_string())
        );
        assert_eq!(read_str(raw(b"12345678"), 8), Ok("12345678".to_string()));
        assert_eq!(
            read_str(raw(b"123456789"), 8),
            Err("9 bytes, more than the 8 allowed".to_string())
        );
        assert_eq!(
            read_str(
                RawStr {
                    ptr: std::ptr::null(),
                    len: 3
                },
                8
            ),
            Err("null pointer".to_string())
        );
        assert_eq!(
            read_str(
                RawStr {
                    ptr: std::ptr::null(),
                    len: 0
                },
                8
            ),
            Ok(String::new())
        );
        let error = read_str(raw(b"\xff\xfe"), 8).unwrap_err();
        assert!(error.starts_with("not UTF-8"), "{error}");
    }

    /// The bound on a fingerprint is far above any real one and well below a runaway length.
    #[test]
    fn fingerprint_bound_fits_a_real_fingerprint() {
        let text = Fingerprint::current().to_text();
        assert!(
            text.len() * 8 < MAX_FINGERPRINT_LEN,
            "{} bytes: raise MAX_FINGERPRINT_LEN",
            text.len()
        );
    }

    #[test]
    fn admit_table() {
        let host = [Registration::new("io.t.v1", "builtin", init).requires(&["io.x.v1"])];
        let host_by_uri: HashMap<String, &Registration> =
            host.iter().map(|r| (r.uri(), r)).collect();
        let mut taken = HashMap::new();
        taken.insert(
            "io.t.v1.other".to_string(),
            PathBuf::from("/p/a-linux-x86_64.so"),
        );
        // (library registrations, expected: Ok(own uris, copies) or Err(message fragment))
        type Expected = Result<(Vec<&'static str>, Vec<&'static str>), &'static str>;
        let cases: Vec<(Vec<Registration>, Expected)> = vec![
            (
                vec![Registration::new("io.t.v1", "mine", init)],
                Ok((vec!["io.t.v1.mine"], vec![])),
            ),
            (
                // An exact copy of the host's: dropped.
                vec![
                    Registration::new("io.t.v1", "builtin", other_init).requires(&["io.x.v1"]),
                    Registration::new("io.t.v1", "mine", init),
                ],
                Ok((vec!["io.t.v1.mine"], vec!["io.t.v1.builtin"])),
            ),
            (
                // The host's plugin, but taking its config in place: another plugin.
                vec![
                    Registration::new("io.t.v1", "builtin", other_init)
                        .requires(&["io.x.v1"])
                        .reconfigure(take_in_place),
                ],
                Err("plugin io.t.v1.builtin is already registered by this binary (link time)"),
            ),
            (
                // Same URI, another plugin: a clash.
                vec![Registration::new("io.t.v1", "builtin", init)],
                Err("plugin io.t.v1.builtin is already registered by this binary (link time)"),
            ),
            (
                vec![Registration::new("io.t.v1", "other", init)],
                Err("plugin io.t.v1.other is already registered by library /p/a-linux-x86_64.so"),
            ),
            (
                vec![
                    Registration::new("io.t.v1", "twice", init),
                    Registration::new("io.t.v1", "twice", init),
                ],
                Err("already registered by this same library"),
            ),
            (
                vec![Registration::new("io.t.v1", "bad id", init)],
                Err("invalid registration"),
            ),
        ];
        for (registrations, expected) in cases {
            let uris: Vec<String> = registrations.iter().map(Registration::uri).collect();
            let got = admit(registrations, &host_by_uri, &taken);
            match (got, expected) {
                (Ok((own, copies)), Ok((want_own, want_copies))) => {
                    let own: Vec<String> = own.iter().map(Registration::uri).collect();
                    assert_eq!(own, want_own, "{uris:?}");
                    assert_eq!(copies, want_copies, "{uris:?}");
                }
                (Err(e), Err(fragment)) => {
                    assert!(e.to_string().contains(fragment), "{uris:?}: {e}")
                }
                (got, expected) => panic!("{uris:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn failed_ids_are_valid_plugin_ids() {
        let cases = [
            ("/p/hello-linux-x86_64.so", "hello-linux-x86_64"),
            ("/p/h é+llo-linux-x86_64.so", "h___llo-linux-x86_64"),
        ];
        for (path, id) in cases {
            assert_eq!(failed_id(Path::new(path)), id);
            failed_registration(failed_id(Path::new(path)), String::new())
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn missing_and_relative_dirs() {
        let report = load_dir(Path::new("/nonexistent/plinth/plugins"), &[]);
        assert!(report.dir_error.is_none() && report.registrations().is_empty());
        let report = load_dir(Path::new("plugins"), &[]);
        let entries = report.registrations();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].0,
            Path::new("plugins"),
            "the entry names the directory"
        );
        assert_eq!(entries[0].1.uri(), "io.plinth.dynamic.v1.plugin_dir");
    }

    #[test]
    fn bad_files_fail_with_their_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        let random = dir.join(crate::discovery::library_file_name("random"));
        std::fs::write(&random, b"definitely not an ELF file").unwrap();
        set_mode(&dir, 0o755);
        set_mode(&random, 0o644);
        let report = load_dir(&dir, &[]);
        assert!(report.loaded.is_empty());
        assert_eq!(report.failed.len(), 1);
        let error = report.failed[0].error.to_string();
        assert!(
            error.contains("is not a loadable shared library: not an ELF file"),
            "{error}"
        );
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    fn set_mode(_: &Path, _: u32) {}
}
