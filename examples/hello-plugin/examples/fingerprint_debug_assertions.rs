//! A bad plugin library for the end-to-end tests: its build fingerprint differs from the
//! host's in the `debug-assertions` field only.

#[macro_use]
#[path = "hand_made/mod.rs"]
mod hand_made;

entry!(hand_made::header(
    hand_made::MAGIC,
    hand_made::ABI_VERSION,
    &hand_made::fingerprint_with("debug-assertions", "hand-made"),
    hand_made::never_called,
));
