#!/usr/bin/env bash
# One garbage collection over a large population, plinthd beside containerd, in one
# invocation: a fresh containerd (Debian's package, CRI disabled) and a fresh plinthd on
# temporary directories, each driven by `plinth-load gc` with the same arguments (the same
# population written through the same client: IMAGES images, BLOBS blobs and SNAPSHOTS
# snapshots under a lease, half of them reachable from the images; the lease deleted with
# `sync`, whose latency is the collection's total time; WRITERS writers beside it, whose
# longest write is the hold-up; then every blob and snapshot checked, kept or gone), in
# ROUNDS rounds that alternate which daemon goes first, then `plinth-load table` prints the
# Markdown table for BENCHMARKS.md (each figure the median over the rounds, its range, and
# plinthd ÷ containerd). Fails if either daemon gave an unexpected error or a wrong answer.
#
# Both daemons' schedulers are configured alike so that the timed collection is the only
# one: `startup_delay` of 1000 h (no collection on a timer, so none while the population is
# written or the writers warm up), `schedule_delay` 0 (a synchronous delete collects at
# once), and the thresholds at their defaults (with a collection scheduled far away, neither
# a deletion nor mutations bring one forward; see containerd's gc/scheduler/scheduler.go).
# The collection is started by deleting the population's lease itself with `sync` (not by a
# later image delete): no scheduled collection can take its work between the lease's delete
# and the timed one, whatever the scheduler's settings (TRIGGER=image for the other way).
#
# Environment: ROUNDS (default 1), IMAGES (default 10000), BLOBS (default 100000), SNAPSHOTS
# (default 20000), CHAIN (default 4: snapshots per chain), CLIENTS (default 16), WRITERS
# (default 6: two of each kind), WRITER_INTERVAL (default 20ms), BASELINE (default 30s: how
# long the writers write before the collection; the baseline is the last stretch of it as
# long as the collection), TRIGGER (lease or image, default lease), SNAPSHOTTER (default
# overlayfs), DAEMONS (default "containerd plinthd"), CONTAINERD (default
# /usr/bin/containerd), FEATURES (plinthd's cargo features instead of the default set, built
# with --no-default-features), SKIP_BUILD=1 to use the existing release binaries,
# CARGO_TARGET_DIR as cargo's, KEEP_LOGS=DIR to keep each daemon's log there,
# CONTAINERD_LOG_LEVEL (default debug: containerd's own figures of the collection are debug
# lines of its log, which plinth-load reads; plinthd's are its gc plugin's exports) and
# PLINTHD_LOG_LEVEL (default warn).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "building plinthd and plinth-load (release)..." >&2
    if [[ -n ${FEATURES:-} ]]; then
        cargo build --release -p plinthd --bins --no-default-features --features "$FEATURES" >&2
    else
        cargo build --release -p plinthd --bins >&2
    fi
fi
for b in plinthd plinth-load; do
    [[ -x $target/release/$b ]] || { echo "bench-gc: $target/release/$b not built" >&2; exit 1; }
done
containerd=${CONTAINERD:-/usr/bin/containerd}
command -v "$containerd" >/dev/null || {
    echo "bench-gc: containerd not found (apt-get install -y containerd)" >&2
    exit 1
}
snapshotter=${SNAPSHOTTER:-overlayfs}
args=(--images "${IMAGES:-10000}" --blobs "${BLOBS:-100000}" --snapshots "${SNAPSHOTS:-20000}"
    --chain "${CHAIN:-4}" --clients "${CLIENTS:-16}" --writers "${WRITERS:-6}"
    --writer-interval "${WRITER_INTERVAL:-20ms}" --baseline "${BASELINE:-30s}"
    --trigger "${TRIGGER:-lease}" --snapshotter "$snapshotter")
work=$(mktemp -d)
# The binaries measured are copies: a build in the shared target directory during the run
# must not swap them.
mkdir -p "$work/bin"
cp "$target/release/plinthd" "$target/release/plinth-load" "$work/bin/"
pid=
stop() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    pid=
}
trap 'stop; rm -rf "$work"' EXIT

# Waits (bounded) until the daemon answers on socket $1.
wait_socket() {
    for _ in $(seq 200); do
        ctr --address "$1" version >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "bench-gc: nothing answers on $1" >&2
    exit 1
}

# The scheduler's settings, the same for both daemons (see the top of this file).
scheduler_config() {
    cat <<TOML
[plugins."io.containerd.gc.v1.scheduler"]
  startup_delay = "1000h"
  schedule_delay = "0s"
TOML
}

start_plinthd() {
    local dir=$1
    mkdir -p "$dir"
    { printf 'version = 3\n'; scheduler_config; } > "$dir/config.toml"
    "$work/bin/plinthd" --config "$dir/config.toml" --root "$dir/root" --state "$dir/state" \
        --address "$dir/d.sock" --log-level "${PLINTHD_LOG_LEVEL:-warn}" 2> "$dir/log" &
    pid=$!
    wait_socket "$dir/d.sock"
}

start_containerd() {
    local dir=$1
    mkdir -p "$dir"
    cat > "$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/d.sock"
[ttrpc]
  address = "$dir/d.sock.ttrpc"
[debug]
  level = "${CONTAINERD_LOG_LEVEL:-debug}"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
$(scheduler_config)
TOML
    "$containerd" --config "$dir/config.toml" 2> "$dir/log" &
    pid=$!
    wait_socket "$dir/d.sock"
}

failed=0
reports=()
rounds=${ROUNDS:-1}
read -r -a daemons <<< "${DAEMONS:-containerd plinthd}"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD), $($containerd --version | cut -d' ' -f3), $rounds rounds of plinth-load gc ${args[*]}"
for round in $(seq "$rounds"); do
    order=("${daemons[@]}")
    if (( round % 2 == 0 && ${#daemons[@]} == 2 )); then
        order=("${daemons[1]}" "${daemons[0]}")
    fi
    for daemon in "${order[@]}"; do
        dir=$work/$daemon-$round
        "start_$daemon" "$dir"
        echo "==> round $round, $daemon (load $(cut -d' ' -f1 /proc/loadavg))" >&2
        own=()
        [[ $daemon == containerd ]] && own=(--containerd-log "$dir/log")
        if ! "$work/bin/plinth-load" gc --address "$dir/d.sock" --label "$daemon" \
            --report "$dir.json" "${own[@]}" "${args[@]}" >&2; then
            echo "bench-gc: $daemon failed its checks (above)" >&2
            failed=1
        fi
        echo "bench-gc: $daemon's root after the collection: $(du -sh "$dir/root" | cut -f1)," \
            "$(find "$dir/root" -path '*blobs/sha256/*' -type f | wc -l) blob files" >&2
        stop
        if grep -E 'level=(error|fatal)|ERROR|WARN' "$dir/log" >&2; then
            echo "bench-gc: (the lines above are from $daemon's log)" >&2
        fi
        if [[ -n ${KEEP_LOGS:-} ]]; then
            mkdir -p "$KEEP_LOGS"
            cp "$dir/log" "$KEEP_LOGS/$daemon-$round.log"
        fi
        rm -rf "$dir"
    done
done
echo "# finished $(date -u '+%H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"
# containerd's reports first: its column first, the ratio plinthd ÷ containerd.
for daemon in "${daemons[@]}"; do
    for round in $(seq "$rounds"); do
        [[ -f $work/$daemon-$round.json ]] && reports+=("$work/$daemon-$round.json")
    done
done
if (( ${#reports[@]} > 0 )); then
    "$work/bin/plinth-load" table "${reports[@]}"
fi
exit "$failed"
