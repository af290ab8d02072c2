#!/usr/bin/env bash
# Builds a statically linked plinthd and plinthctl (glibc, `+crt-static`, non-PIE: with PIE
# kept, `file` would say "static-pie linked"), checks that `file` calls them statically
# linked, and runs the end-to-end tests against them.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
target=${STATIC_TARGET_DIR:-target/static}
echo "==> static build for $host"
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build -q -p plinthd --bins --target "$host" --target-dir "$target"
bin="$target/$host/debug"
for name in plinthd plinthctl; do
  description=$(file -L "$bin/$name")
  echo "$description"
  case "$description" in
    *"statically linked"*) ;;
    *) echo "$name is not statically linked" >&2; exit 1 ;;
  esac
done
echo "==> end-to-end tests against the static binaries"
PLINTH_BIN_DIR="$(pwd)/$bin" cargo test -q -p plinthd --test e2e
