#!/usr/bin/env bash
# Runs the whole test suite: every crate of the workspace with the default registration
# backend (inventory), then the plugin-model crate again with the linkme backend.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace "$@"
cargo test -p plinth-core --features linkme "$@"
