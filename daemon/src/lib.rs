//! The pieces of `plinthd` and `plinthctl`: default paths, config loading with command-line
//! overrides, the gRPC server on a unix socket, the offline commands, and the client.
//!
//! The binaries are thin: `main` parses flags, calls into here, and turns the error chain
//! into one message and an exit code.

pub mod client;
pub mod commands;
pub mod linger;
pub mod logging;
pub mod namespace_check;
pub mod notify;
pub mod paths;
pub mod reload;
pub mod server;
pub mod setup;
pub mod too_large;

/// The name of the running program (its executable's file name), for the lines it prints:
/// `plinthd`, or the name of a daemon built on this crate, such as `minimal-daemon`.
pub fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
        // Linux names an executable replaced since it started `<name> (deleted)`.
        .map(|name| name.trim_end_matches(" (deleted)").to_string())
        .unwrap_or_else(|| "plinthd".to_string())
}
