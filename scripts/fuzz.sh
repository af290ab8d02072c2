#!/usr/bin/env bash
# Fuzzes one of Plinth's fuzz targets (fuzz/src, `plinth_fuzz::TARGETS`) with AFL++, through
# cargo-afl (stable Rust, from crates.io), starting from its corpus in fuzz/corpus/TARGET.
#
# Usage: ./scripts/fuzz.sh TARGET SECONDS
#   targets: config filters identifiers elf services layer
#
# Installs cargo-afl and builds AFL++ the first time (a few minutes). Runs confined as root
# (scripts/confine.sh): a fuzzed layer or request that found a way out of its directory
# must not reach the machine. Findings land in target/fuzz/TARGET/default/{crashes,hangs};
# a crash becomes a regression input by copying it to fuzz/corpus/TARGET/crash-<what>, where
# `cargo test -p plinth-fuzz --test corpora` runs it on every CI run. The last lines printed
# are the figures for BENCHMARKS.md's "Fuzzing" table.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/confine.sh
source scripts/confine.sh

target=${1:?usage: scripts/fuzz.sh TARGET SECONDS}
seconds=${2:?usage: scripts/fuzz.sh TARGET SECONDS}
if [ ! -d "fuzz/corpus/$target" ]; then
  echo "fuzz: no corpus fuzz/corpus/$target: targets are $(ls fuzz/corpus | tr '\n' ' ')" >&2
  exit 2
fi

version=0.18.2
if ! cargo afl --version 2>/dev/null | grep -q "$version"; then
  echo "fuzz: installing cargo-afl $version from crates.io" >&2
  cargo install --locked cargo-afl --version "$version"
fi
# AFL++ itself, built by cargo-afl under its data directory, once.
afl_help=$(cargo afl fuzz -h 2>&1 || true)
if [[ $afl_help != *afl-fuzz* ]]; then
  echo "fuzz: building AFL++ (once)" >&2
  cargo afl config --build
fi

export CARGO_TARGET_DIR="$PWD/target/afl"
(cd fuzz/afl && cargo afl build --release)

out="target/fuzz/$target"
mkdir -p "$out"
# The services target starts a daemon on its first input (about a second): its time-out is
# longer. A seed that is slow or crashes is reported by AFL before it starts.
timeout_ms=1000
[ "$target" = services ] && timeout_ms=10000+
echo "fuzz: $target for ${seconds}s (findings in $out)" >&2
AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  PLINTH_FUZZ_TARGET="$target" \
  confined cargo afl fuzz -V "$seconds" -m none -t "$timeout_ms" \
  -i "fuzz/corpus/$target" -o "$out" -- "$CARGO_TARGET_DIR/release/plinth-fuzz-afl" \
  >"$out/afl.log" 2>&1 || {
  tail -n 30 "$out/afl.log" >&2
  exit 1
}

stats="$out/default/fuzzer_stats"
value() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
crashes=$(find "$out/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
hangs=$(find "$out/default/hangs" -type f -name 'id:*' 2>/dev/null | wc -l)
echo "target $target: $(value execs_done) executions in $(value run_time) s ($(value execs_per_sec)/s)," \
  "coverage $(value bitmap_cvg) of the map ($(value edges_found) edges), corpus $(value corpus_count)," \
  "crashes $crashes, hangs $hangs"
if [ "$crashes" -gt 0 ]; then
  echo "crashing inputs:" >&2
  find "$out/default/crashes" -type f -name 'id:*' >&2
  exit 1
fi
