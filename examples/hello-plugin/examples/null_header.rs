//! A bad plugin library for the end-to-end tests: its entry returns no header.

#[macro_use]
#[path = "hand_made/mod.rs"]
mod hand_made;

entry!(std::ptr::null());
