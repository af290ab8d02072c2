//! A bad plugin library for the end-to-end tests: its fingerprint is not UTF-8.

#[macro_use]
#[path = "hand_made/mod.rs"]
mod hand_made;

entry!(hand_made::header(
    hand_made::MAGIC,
    hand_made::ABI_VERSION,
    b"rustc: \xff\xfe\n",
    hand_made::never_called,
));
