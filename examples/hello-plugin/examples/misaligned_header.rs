//! A bad plugin library for the end-to-end tests: its entry returns a misaligned header
//! pointer.

#[macro_use]
#[path = "hand_made/mod.rs"]
mod hand_made;

entry!(
    hand_made::header(
        hand_made::MAGIC,
        hand_made::ABI_VERSION,
        &hand_made::fingerprint(),
        hand_made::never_called,
    )
    .wrapping_byte_add(1)
);
