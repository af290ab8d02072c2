//! A bad plugin library for the end-to-end tests: its header matches the host, but its
//! handover returns a code the contract does not know.

#[macro_use]
#[path = "hand_made/mod.rs"]
mod hand_made;

extern "C" fn handover(_: *mut plinth_dynamic_loader::abi::Handover) -> u32 {
    7
}

entry!(hand_made::header(
    hand_made::MAGIC,
    hand_made::ABI_VERSION,
    &hand_made::fingerprint(),
    handover,
));
