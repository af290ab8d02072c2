//! A bad plugin library for the end-to-end tests: its header does not start with the magic
//! bytes.

#[macro_use]
#[path = "hand_made/mod.rs"]
mod hand_made;

entry!(hand_made::header(
    *b"NOTPLINT",
    hand_made::ABI_VERSION,
    &hand_made::fingerprint(),
    hand_made::never_called,
));
