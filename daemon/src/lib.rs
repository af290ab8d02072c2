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
pub mod server;
pub mod setup;
