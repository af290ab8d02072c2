#!/usr/bin/env bash
# Builds the minimal embedded example (examples/minimal-daemon) on its own, so it carries
# only the plugins it picks, starts it on temporary directories holding one blob, and checks
# with the stock `ctr` that it serves exactly those plugins, all ok, that it says its own
# name, and that its greeter counts the blob; then stops it with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
# Where cargo put it (the target directory may be configured elsewhere).
binary=$(cargo build -q -p minimal-daemon --message-format=json |
  grep -o '"executable":"[^"]*minimal-daemon"' | cut -d'"' -f4)
dir=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
echo 'version = 3' > "$dir/config.toml"
blobs="$dir/root/io.containerd.content.v1.content/blobs/sha256"
mkdir -p "$blobs"
printf 'hello, minimal\n' > "$dir/blob"
mv "$dir/blob" "$blobs/$(sha256sum < "$dir/blob" | cut -d' ' -f1)"
"$binary" -c "$dir/config.toml" --root "$dir/root" --state "$dir/state" \
  --address "$dir/minimal.sock" 2> "$dir/log" &
pid=$!
for _ in $(seq 200); do [ -S "$dir/minimal.sock" ] && break; sleep 0.05; done
listing=$(ctr --address "$dir/minimal.sock" plugins ls | awk 'NR > 1 { print $1 "." $2 " " $NF }' | sort)
expected=$(printf '%s\n' "io.containerd.content.v1.content ok" "io.containerd.grpc.v1.introspection ok" \
  "io.example.greeter.v1.hello ok" | sort)
if [ "$listing" != "$expected" ]; then
  echo "minimal-daemon serves:"; echo "$listing"; echo "expected:"; echo "$expected"; cat "$dir/log"; exit 1
fi
if ! grep -qx "minimal-daemon listening on $dir/minimal.sock" "$dir/log"; then
  echo "minimal-daemon does not say its own name:"; cat "$dir/log"; exit 1
fi
blob_count=$(ctr --address "$dir/minimal.sock" plugins ls -d id==hello | awk '$1 == "blobs" { print $2 }')
if [ "$blob_count" != 1 ]; then
  echo "the greeter counts ${blob_count:-no} blobs, not 1:"
  ctr --address "$dir/minimal.sock" plugins ls -d id==hello; exit 1
fi
kill -TERM "$pid"
wait "$pid"
pid=""
size=$(stat -c %s "$binary")
echo "minimal-daemon ok: 3 plugins, 1 blob counted, debug binary ${size} bytes"
