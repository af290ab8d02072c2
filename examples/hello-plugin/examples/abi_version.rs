//! A bad plugin library for the end-to-end tests: it speaks another version of the loader ABI.

#[macro_use]
#[path = "hand_made/mod.rs"]
mod hand_made;

entry!(hand_made::header(
    hand_made::MAGIC,
    hand_made::ABI_VERSION + 1,
    &hand_made::fingerprint(),
    hand_made::never_called,
));
