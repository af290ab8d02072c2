//! End-to-end tests: plinthd as a process, the stock `ctr`, plinthctl and the offline commands.

// Tests are tables of (input, expected) tuples; naming each tuple type would hide the table.
#![allow(clippy::type_complexity)]

mod bad_input;
mod commands;
mod crash;
mod gc;
mod images;
mod interop;
mod lifecycle;
mod load;
mod metadata;
mod plinthctl;
mod proxy;
mod refusals;
mod reload;
mod storage;

/// The harness finds the binaries next to the test executable; cargo rebuilds exactly those
/// for this package's integration tests, so they are never stale.
#[test]
fn harness_uses_the_binaries_cargo_built_for_this_run() {
    if let Some(dir) = std::env::var_os("PLINTH_BIN_DIR") {
        // Another build of the same sources (CI's static build): the harness must use it.
        let dir = std::path::PathBuf::from(dir);
        assert_eq!(plinth_tests::binary("plinthd"), dir.join("plinthd"));
        assert_eq!(plinth_tests::binary("plinthctl"), dir.join("plinthctl"));
        return;
    }
    let expected = std::path::Path::new(env!("CARGO_BIN_EXE_plinthd"));
    assert_eq!(plinth_tests::binary("plinthd"), expected);
    let expected = std::path::Path::new(env!("CARGO_BIN_EXE_plinthctl"));
    assert_eq!(plinth_tests::binary("plinthctl"), expected);
}
