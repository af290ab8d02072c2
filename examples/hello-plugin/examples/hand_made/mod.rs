//! Hand-made plugin headers for the bad libraries of the end-to-end tests: each library
//! exports the entry symbol itself (instead of `export_plugins!`) and returns a header that
//! breaks one rule the host checks — magic, ABI version, fingerprint, handover.

// Each bad library uses only the parts its refusal needs.
#![allow(dead_code, unused_imports)]

use plinth_dynamic_loader::Fingerprint;
use plinth_dynamic_loader::abi::{Handover, Header, RawStr};

pub(crate) use plinth_dynamic_loader::abi::{ABI_VERSION, MAGIC};

/// Exports `plinth_plugin_entry_v1` returning `$header` (a `*const Header` expression).
macro_rules! entry {
    ($header:expr) => {
        /// The entry point a Plinth host looks up, made by hand so that it can be wrong.
        // The unmangled symbol is the whole point of this library; the host looks it up with
        // exactly this signature (`extern "C" fn() -> *const Header`), which it has.
        #[allow(
            unsafe_code,
            reason = "exporting the entry symbol by hand needs no_mangle"
        )]
        #[unsafe(no_mangle)]
        pub extern "C" fn plinth_plugin_entry_v1() -> *const plinth_dynamic_loader::abi::Header {
            $header
        }
    };
}

/// A header (leaked: the host reads it for the life of the process) with these fields.
pub(crate) fn header(
    magic: [u8; 8],
    abi_version: u32,
    fingerprint: &[u8],
    handover: unsafe extern "C" fn(*mut Handover) -> u32,
) -> *const Header {
    let bytes: &'static [u8] = Box::leak(fingerprint.to_vec().into_boxed_slice());
    let header: &'static Header = Box::leak(Box::new(Header {
        magic,
        abi_version,
        fingerprint: RawStr {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        },
        handover,
    }));
    header
}

/// This build's fingerprint text (what the host expects) with `field` set to `value`.
pub(crate) fn fingerprint_with(field: &str, value: &str) -> Vec<u8> {
    let current = Fingerprint::current();
    assert!(
        current.fields().iter().any(|(name, _)| name == field),
        "no fingerprint field {field}"
    );
    let mut text = String::new();
    for (name, current_value) in current.fields() {
        let value = if name == field { value } else { current_value };
        text.push_str(&format!("{name}: {value}\n"));
    }
    text.into_bytes()
}

/// This build's fingerprint text, unchanged.
pub(crate) fn fingerprint() -> Vec<u8> {
    Fingerprint::current().to_text().into_bytes()
}

/// A handover the host must never call, as the header is refused before it. If it is
/// called, it fails with a code of its own (the host then reports "unknown return code
/// 99"), so that the test's message shows which refusal was skipped.
pub(crate) extern "C" fn never_called(_: *mut Handover) -> u32 {
    99
}
