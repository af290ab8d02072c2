//! Integration tests of plinth-core, in one binary (one link, one run).

mod common;
mod config;
mod containerd_cases;
mod graph;
mod graph_props;
mod init;
mod registry;
