#!/usr/bin/env bash
# The whole benchmark sheet in one run, each comparison side by side: binary sizes,
# start-up and idle memory, content ingest and snapshot operations, live reloads, concurrent
# load beside containerd, images and containers beside containerd, one garbage collection
# beside containerd's, image import and pull beside containerd, graph ordering and dynamic-library loading. Every part prints its own table; this script runs
# them in turn and prints them together at the end, with the machine and the date, for BENCHMARKS.md.
# Takes 60–80 minutes on two cores (the garbage collection's population, written twice,
# takes 20–30 of them; three size-tuned builds most of the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() {
  local name=$1; shift
  echo "==> $name" >&2
  "$@" > "$out/$name.txt" 2> "$out/$name.log" || { echo "$name failed; its log:" >&2; tail -30 "$out/$name.log" >&2; exit 1; }
}
run size ./scripts/bench-size.sh
run startup ./scripts/bench-startup.sh
run storage env SKIP_BUILD=1 ./scripts/bench-storage.sh
run reload env SKIP_BUILD=1 ./scripts/bench-reload.sh
run load env SKIP_BUILD=1 RATE=900 ./scripts/bench-load.sh
run metadata env SKIP_BUILD=1 ./scripts/bench-metadata.sh
run gc env SKIP_BUILD=1 ./scripts/bench-gc.sh
run import env SKIP_BUILD=1 ./scripts/bench-import.sh
run graph cargo bench -q -p plinth-core --bench graph
run dynamic cargo bench -q -p plinth-dynamic-loader --bench load
echo "# Plinth benchmark sheet"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(sed -n 's/^model name\t: //p' /proc/cpuinfo | head -1), $(rustc --version)"
for part in size startup storage reload load metadata gc import graph dynamic; do
  echo
  echo "## $part"
  cat "$out/$part.txt"
done
