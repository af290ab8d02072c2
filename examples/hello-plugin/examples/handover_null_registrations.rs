//! A bad plugin library for the end-to-end tests: its header matches the host, but its
//! handover reports one registration at a null address.

#[macro_use]
#[path = "hand_made/mod.rs"]
mod hand_made;

use plinth_dynamic_loader::abi::{HANDOVER_OK, Handover};

#[allow(
    unsafe_code,
    reason = "the handover writes through the pointer the host gives it"
)]
extern "C" fn handover(out: *mut Handover) -> u32 {
    let mut filled = Handover::empty();
    filled.len = 1;
    // SAFETY: the host passes a valid, writable `Handover` (the ABI contract).
    unsafe { out.write(filled) };
    HANDOVER_OK
}

entry!(hand_made::header(
    hand_made::MAGIC,
    hand_made::ABI_VERSION,
    &hand_made::fingerprint(),
    handover,
));
