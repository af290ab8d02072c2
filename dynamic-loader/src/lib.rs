//! Plugins from shared libraries, for hosts built on Plinth (plinthd's `dynamic-loader`
//! feature).
//!
//! # Writing a plugin library
//!
//! A plugin library is a Rust `cdylib` whose plugins are registered exactly like built-in
//! ones, plus one line that exports them:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! plinth-core = "0.1"
//! plinth-dynamic-loader = "0.1"
//! ```
//!
//! ```
//! use plinth_core::{register, InitContext, InitError, Instance, Registration};
//!
//! fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
//!     ctx.meta_mut().exports.insert("hello".into(), "from a library".into());
//!     Ok(Instance::none())
//! }
//!
//! register!(Registration::new("io.example.hello.v1", "hello", init)
//!     .requires(&["io.containerd.content.v1"]));
//!
//! // One C-ABI entry symbol that hands this library's registrations to the host.
//! plinth_dynamic_loader::export_plugins!();
//! # fn main() { assert!(!plinth_plugin_entry_v1().is_null()); }
//! ```
//!
//! Install it in the host's `plugin_dir` (plinthd: `<root>/plugins` unless configured) under
//! a name of the form `*-<os>-<arch>.<ext>` with Rust's names for the platform (see
//! [`discovery`]); [`library_file_name`] gives it, e.g. `hello-linux-x86_64.so`. The file and
//! the directory must be writable by their owner only, and owned by root or the user running
//! the host (see [the rules](crate#rules-the-host-keeps)).
//!
//! **Build it with the host.** Rust has no stable ABI, so a library works only with a host
//! built by the same compiler, for the same target, with the same profile and the same
//! plinth-core (version, features, dependency graph); the host checks this with a
//! [`Fingerprint`] and refuses anything else. Instances of shared interfaces (e.g.
//! `Arc<dyn ContentStore>` from plinth-builtin-plugins) are looked up by `TypeId`, which
//! matches only when the interface crate was built with the same features and dependencies
//! on both sides: build the library in the same `cargo build` as the host, e.g.
//! `cargo build -p plinthd --features dynamic-loader -p my-plugin`. A mismatch there is a
//! lookup error, never undefined behaviour.
//!
//! **Stay on your side.** The library has its own copy of std and of every crate it links:
//! its own allocator shims (both sides use the system allocator, so memory may move across),
//! its own panic machinery, thread-locals and statics. So:
//! - a panic must not unwind into the host: the loader wraps every init in a `catch_unwind`
//!   of the library's std (a panic becomes a failed plugin), but methods of instances the
//!   host calls later must not panic (the host cannot catch another std's panic: it aborts);
//! - the library's `tracing` events go to its own dispatcher (none): report through errors;
//! - async code of the host (e.g. the content store's methods) runs on the host's tokio
//!   runtime, which the library's copy of tokio cannot see (`Handle::current()` and friends
//!   are thread-locals of one copy): use synchronous APIs at init.
//!
//! # Loading (the host side)
//!
//! ```no_run
//! let host: Vec<_> = plinth_core::registry::link_time_registrations().copied().collect();
//! let report = plinth_dynamic_loader::load_dir("/var/lib/plinth/plugins".as_ref(), &host);
//! let mut builder = plinth_core::Registry::builder().link_time();
//! for (library, registration) in report.registrations() {
//!     builder = builder.add_dynamic(library, registration);
//! }
//! ```
//!
//! # Rules the host keeps
//!
//! - Only files named for this platform are considered, in sorted order; others are ignored
//!   with a debug log ([`discovery`]).
//! - The plugin directory and each library (symlinks resolved; for a symlink leading out of
//!   the directory, the target's directory too) must not be writable by group or others,
//!   nor owned by a user other than root and the one running the host — the habit of sshd's
//!   `StrictModes`. A refusal names the path and the rule.
//! - Before anything else, the host checks the header's magic, the ABI version
//!   ([`abi`]) and the build fingerprint ([`fingerprint`]); a mismatch is refused with
//!   expected and found.
//! - An ELF library's header and program headers are checked before `dlopen` (a truncated
//!   file would make the dynamic linker fault on a page past its end and kill the process).
//! - Libraries are opened with `RTLD_NOW | RTLD_LOCAL` and never unloaded.
//! - A library that cannot be opened, lacks the entry symbol, mismatches, panics while
//!   handing over its registrations, hands over an invalid one, or clashes with a URI
//!   already taken (by the host or a library earlier in the order) loads nothing and becomes
//!   one failed plugin `io.plinth.dynamic.v1.<file stem>` whose error is the path and the
//!   reason ([`LoadReport::registrations`]). Registrations that are exact copies of the
//!   host's own (a library linking plinth-builtin-plugins for its interfaces carries those)
//!   are dropped.
//!
//! Only `dlopen` itself runs library code before the checks: its initialisers. Code that can
//! run there is code that root or the host's user installed; that is what the permission
//! rules are for.
//!
//! # Feature flags
//!
//! None. (This is the only Plinth crate allowed `unsafe`; see `Cargo.toml`.)

pub mod abi;
pub mod discovery;
#[cfg(all(unix, not(target_vendor = "apple")))]
mod elf;
pub mod error;
pub mod fingerprint;
pub mod loader;
mod permissions;

pub use crate::discovery::{library_file_name, library_suffix};
pub use crate::error::LoadError;
pub use crate::fingerprint::{FieldMismatch, Fingerprint};
pub use crate::loader::{FAILED_DIR_ID, FAILED_LIBRARY_TYPE, Failed, LoadReport, Loaded, load_dir};

/// Exports this library's plugins to a Plinth host: defines the one C-ABI entry symbol,
/// `plinth_plugin_entry_v1` ([`abi::ENTRY_SYMBOL`]), that hands over every registration
/// submitted with `plinth_core::register!` in this library.
///
/// Call it once, at the crate root of a `cdylib`. It expands to a `#[unsafe(no_mangle)]`
/// function (the only way to give a symbol a fixed name); the unsafe part is reviewed here,
/// so a crate that forbids `unsafe_code` can still call the macro.
#[macro_export]
macro_rules! export_plugins {
    () => {
        /// The entry point a Plinth host looks up (generated by
        /// `plinth_dynamic_loader::export_plugins!`).
        #[unsafe(no_mangle)]
        pub extern "C" fn plinth_plugin_entry_v1() -> *const $crate::__private::Header {
            $crate::__private::entry()
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::abi::{Header, entry};
}

/// The checks the loader makes of a file before the dynamic linker ever sees it, for
/// Plinth's fuzz targets (`fuzz/`). Not part of the API.
#[doc(hidden)]
#[cfg(all(unix, not(target_vendor = "apple")))]
pub mod __fuzz {
    /// The ELF check of a library file: its class, byte order, type and that its loadable
    /// segments lie within it.
    ///
    /// # Errors
    /// What is wrong, in a sentence.
    pub fn check_elf(path: &std::path::Path) -> Result<(), String> {
        crate::elf::check(path)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn macro_symbol_is_the_entry_symbol() {
        // The name in the macro must be the one the loader looks up.
        let source = include_str!("lib.rs");
        assert!(source.contains(&format!("extern \"C\" fn {}()", crate::abi::ENTRY_SYMBOL)));
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::LoadError>();
        check::<crate::Fingerprint>();
        check::<crate::LoadReport>();
    }
}
