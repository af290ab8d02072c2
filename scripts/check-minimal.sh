#!/usr/bin/env bash
# Builds the minimal embedded example (examples/minimal-daemon) on its own, so it carries
# only the plugins it picks, starts it on temporary directories, and checks with the stock
# `ctr` that it serves exactly those plugins, all ok; then stops it with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p minimal-daemon
dir=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
echo 'version = 3' > "$dir/config.toml"
target/debug/minimal-daemon -c "$dir/config.toml" --root "$dir/root" --state "$dir/state" \
  --address "$dir/minimal.sock" 2> "$dir/log" &
pid=$!
for _ in $(seq 200); do [ -S "$dir/minimal.sock" ] && break; sleep 0.05; done
listing=$(ctr --address "$dir/minimal.sock" plugins ls | awk 'NR > 1 { print $1 "." $2 " " $NF }' | sort)
expected=$(printf '%s\n' "io.containerd.content.v1.content ok" "io.containerd.grpc.v1.introspection ok" \
  "io.example.greeter.v1.hello ok" | sort)
if [ "$listing" != "$expected" ]; then
  echo "minimal-daemon serves:"; echo "$listing"; echo "expected:"; echo "$expected"; cat "$dir/log"; exit 1
fi
kill -TERM "$pid"
wait "$pid"
pid=""
size=$(stat -c %s target/debug/minimal-daemon)
echo "minimal-daemon ok: 3 plugins, debug binary ${size} bytes"
