#!/usr/bin/env bash
# Live reloads under load, and a restart instead, plinthd beside containerd in one
# invocation: builds plinthd (release) and runs `cargo bench -p plinthd --bench reload`,
# which starts the daemons on temporary directories, drives four gRPC client loops against
# each (content info+read, one-message writes, native prepare+commit+remove) and prints two
# tables (see daemon/benches/reload.rs for what each column is).
#
# Environment: REPS (reloads per scenario, default 30; restarts are min(REPS, 5)),
# CONTAINERD (default /usr/bin/containerd), SKIP_BUILD=1 to use the existing
# target/release/plinthd.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "building plinthd (release)..." >&2
    cargo build --release -p plinthd >&2
fi
[[ -x target/release/plinthd ]] || { echo "bench-reload: target/release/plinthd not built" >&2; exit 1; }
command -v "${CONTAINERD:-/usr/bin/containerd}" >/dev/null || {
    echo "bench-reload: containerd not found (apt-get install -y containerd)" >&2
    exit 1
}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
cargo bench -q -p plinthd --bench reload
