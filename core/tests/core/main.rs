//! Integration tests of plinth-core, in one binary (one link, one run).

// Tests are tables of (input, expected) tuples; naming each tuple type would hide the table.
#![allow(clippy::type_complexity)]

mod common;
mod config;
mod containerd_cases;
mod graph;
mod graph_props;
mod init;
mod registry;
mod reload;
mod reload_apply;
