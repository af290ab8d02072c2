//! The C-ABI contract between a plugin library and its host, and the library side of it
//! (what [`export_plugins!`](crate::export_plugins) expands to calls into this module).
//!
//! A library exports one symbol, [`ENTRY_SYMBOL`]: an `extern "C" fn() -> *const Header`.
//! The [`Header`] is `#[repr(C)]` and starts with [`MAGIC`] and [`ABI_VERSION`], whose
//! offsets never change; the host reads them first, then — only for ABI version 1 — the
//! fingerprint text, and only when that matches its own does it call `handover`, the one
//! place where Rust types (`plinth_core::Registration`) cross the boundary.
//!
//! Panics never cross it: the library side catches them (`catch_unwind` in the library's
//! own std) and returns an error code. A panic cannot be caught by the other side anyway:
//! each image has its own std, and a Rust panic from another std is a foreign exception,
//! which `catch_unwind` turns into an abort. For the same reason each registration's init is
//! wrapped, in the library, by a `catch_unwind` of the library's std.

#![allow(unsafe_code)]

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use plinth_core::registration::{Init, SharedInitFn};
use plinth_core::{InitContext, InitError, Instance, Registration};

use crate::fingerprint::Fingerprint;

/// The first eight bytes of every header.
pub const MAGIC: [u8; 8] = *b"PLINTHDL";

/// The layout version of [`Header`] and [`Handover`]. Bumped with [`ENTRY_SYMBOL`].
pub const ABI_VERSION: u32 = 1;

/// The name of the entry symbol a plugin library exports.
pub const ENTRY_SYMBOL: &str = "plinth_plugin_entry_v1";

/// `handover` succeeded: [`Handover::registrations`] and `len` are set.
pub const HANDOVER_OK: u32 = 0;
/// `handover` caught a panic: [`Handover::error`] holds its message.
pub const HANDOVER_PANICKED: u32 = 1;

/// A UTF-8 string owned by the library (static, never freed).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawStr {
    /// First byte (may be null when `len` is 0).
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl RawStr {
    const EMPTY: RawStr = RawStr {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// Leaks `text` and points at it.
    fn leak(text: String) -> RawStr {
        let text: &'static str = Box::leak(text.into_boxed_str());
        RawStr {
            ptr: text.as_ptr(),
            len: text.len(),
        }
    }
}

/// What the entry symbol returns.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// The library's [`ABI_VERSION`].
    pub abi_version: u32,
    /// The library's [`Fingerprint`] as text.
    pub fingerprint: RawStr,
    /// Fills a [`Handover`]; returns [`HANDOVER_OK`] or [`HANDOVER_PANICKED`].
    pub handover: unsafe extern "C" fn(out: *mut Handover) -> u32,
}

/// What `handover` fills in.
#[repr(C)]
#[derive(Debug)]
pub struct Handover {
    /// The library's registrations (static, never freed).
    pub registrations: *const Registration,
    /// How many.
    pub len: usize,
    /// The panic message when `handover` returned [`HANDOVER_PANICKED`].
    pub error: RawStr,
}

impl Handover {
    /// An empty handover for the library to fill.
    pub fn empty() -> Handover {
        Handover {
            registrations: std::ptr::null(),
            len: 0,
            error: RawStr::EMPTY,
        }
    }
}

/// The header, built once per library.
struct SharedHeader(Header);

// SAFETY: the header's pointers point at leaked, immutable data (the fingerprint text) and
// at a function; nothing is ever written through them, so sharing it between threads is
// sound.
unsafe impl Sync for SharedHeader {}
// SAFETY: as for `Sync`: immutable, 'static data.
unsafe impl Send for SharedHeader {}

/// The body of the entry symbol: this library's header. Never panics; returns null if
/// building the header did.
pub fn entry() -> *const Header {
    static HEADER: OnceLock<SharedHeader> = OnceLock::new();
    let built = catch_unwind(|| {
        HEADER
            .get_or_init(|| {
                SharedHeader(Header {
                    magic: MAGIC,
                    abi_version: ABI_VERSION,
                    fingerprint: RawStr::leak(Fingerprint::current().to_text()),
                    handover,
                })
            })
            .0
            .as_ptr()
    });
    built.unwrap_or(std::ptr::null())
}

impl Header {
    fn as_ptr(&self) -> *const Header {
        self
    }
}

/// Hands this library's link-time registrations to the host.
///
/// # Safety
/// `out` must point to a writable [`Handover`].
unsafe extern "C" fn handover(out: *mut Handover) -> u32 {
    let (filled, code) = match catch_unwind(collect) {
        Ok(registrations) => {
            let registrations: &'static [Registration] =
                Box::leak(registrations.into_boxed_slice());
            let filled = Handover {
                registrations: registrations.as_ptr(),
                len: registrations.len(),
                error: RawStr::EMPTY,
            };
            (filled, HANDOVER_OK)
        }
        Err(panic) => {
            let filled = Handover {
                registrations: std::ptr::null(),
                len: 0,
                error: RawStr::leak(panic_text(panic.as_ref())),
            };
            (filled, HANDOVER_PANICKED)
        }
    };
    // SAFETY: the caller guarantees `out` points to a writable `Handover`.
    unsafe { out.write(filled) };
    code
}

/// This library's registrations, each init wrapped so that its panics are caught here.
///
/// Each registration's config type is exercised once (`Default`, serialising, decoding an
/// empty section): that is plugin code the host would otherwise be the first to run, where
/// a panic could not be caught; a panic here fails the library instead.
fn collect() -> Vec<Registration> {
    let mut registrations: Vec<Registration> = plinth_core::registry::link_time_registrations()
        .map(|registration| {
            if let Some(spec) = registration.config_spec() {
                let _ = spec.defaults();
                let _ = spec.decode(toml::Table::new());
            }
            registration.with_init(wrap_init(*registration.init_fn()))
        })
        .collect();
    registrations.sort_by_cached_key(Registration::uri);
    registrations
}

/// `init` behind a `catch_unwind` of this library's std.
fn wrap_init(init: Init) -> Init {
    let wrapped: Box<SharedInitFn> = Box::new(move |ctx: &mut InitContext| {
        catch_unwind(AssertUnwindSafe(|| call(init, ctx))).unwrap_or_else(|panic| {
            Err(InitError::msg(format!(
                "panicked (in the plugin library): {}",
                panic_text(panic.as_ref())
            )))
        })
    });
    Init::Shared(Box::leak(wrapped))
}

fn call(init: Init, ctx: &mut InitContext) -> Result<Instance, InitError> {
    match init {
        Init::Fn(f) => f(ctx),
        Init::Shared(f) => f(ctx),
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_text_reads_both_string_payloads() {
        let text: Box<dyn Any + Send> = Box::new("a &str payload");
        assert_eq!(panic_text(text.as_ref()), "a &str payload");
        let owned: Box<dyn Any + Send> = Box::new(String::from("a String payload"));
        assert_eq!(panic_text(owned.as_ref()), "a String payload");
        let other: Box<dyn Any + Send> = Box::new(7u8);
        assert_eq!(panic_text(other.as_ref()), "(non-string panic payload)");
    }
}
