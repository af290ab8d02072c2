#!/usr/bin/env bash
# The Images and Containers services of plinthd and containerd over many records, in one
# invocation: a fresh plinthd and a fresh containerd (Debian's package, CRI disabled) on
# temporary directories, each driven by `plinth-load metadata` with the same arguments
# (Version calls as the round-trip floor; 10 000 images created, listed whole and filtered,
# got; 2 000 containers created and listed; everything deleted; every answer checked), in
# ROUNDS rounds that alternate which daemon goes first, then `plinth-load table` prints the
# Markdown table for BENCHMARKS.md (per call, the round with the median rate and the range
# over the rounds). Fails if either daemon gave an unexpected error or a wrong answer.
#
# Environment: ROUNDS (default 3), IMAGES (default 10000), CONTAINERS (default 2000),
# SEQUENTIAL (default 1000: how many of each are created by one client before the rest over
# CLIENTS), CLIENTS (default 4), REPEAT (default 20: calls of each list), GETS (default 1000),
# CONTAINERD (default /usr/bin/containerd), FEATURES (plinthd's cargo features instead of the
# default set, built with --no-default-features), SKIP_BUILD=1 to use the existing release
# binaries, CARGO_TARGET_DIR as cargo's.
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
    [[ -x $target/release/$b ]] || { echo "bench-metadata: $target/release/$b not built" >&2; exit 1; }
done
containerd=${CONTAINERD:-/usr/bin/containerd}
command -v "$containerd" >/dev/null || {
    echo "bench-metadata: containerd not found (apt-get install -y containerd)" >&2
    exit 1
}
args=(--images "${IMAGES:-10000}" --containers "${CONTAINERS:-2000}"
    --sequential "${SEQUENTIAL:-1000}" --clients "${CLIENTS:-4}" --repeat "${REPEAT:-20}"
    --gets "${GETS:-1000}")
work=$(mktemp -d)
pid=
stop() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
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
    echo "bench-metadata: nothing answers on $1" >&2
    exit 1
}

start_plinthd() {
    local dir=$1
    mkdir -p "$dir"
    printf 'version = 3\n' > "$dir/config.toml"
    "$target/release/plinthd" --config "$dir/config.toml" --root "$dir/root" --state "$dir/state" \
        --address "$dir/d.sock" --log-level warn 2> "$dir/log" &
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
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
    "$containerd" --config "$dir/config.toml" 2> "$dir/log" &
    pid=$!
    wait_socket "$dir/d.sock"
}

failed=0
reports=()
rounds=${ROUNDS:-3}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD), $($containerd --version | cut -d' ' -f3), $rounds rounds of plinth-load metadata ${args[*]}"
for round in $(seq "$rounds"); do
    order=(plinthd containerd)
    (( round % 2 == 0 )) && order=(containerd plinthd)
    for daemon in "${order[@]}"; do
        dir=$work/$daemon-$round
        "start_$daemon" "$dir"
        echo "==> round $round, $daemon (load $(cut -d' ' -f1 /proc/loadavg))" >&2
        if ! "$target/release/plinth-load" metadata --address "$dir/d.sock" --label "$daemon" \
            --report "$dir.json" "${args[@]}" >&2; then
            echo "bench-metadata: $daemon failed its checks (above)" >&2
            failed=1
        fi
        stop
        if grep -E 'level=(error|fatal)|ERROR|WARN' "$dir/log" >&2; then
            echo "bench-metadata: (the lines above are from $daemon's log)" >&2
        fi
        rm -rf "$dir"
        [[ -f $dir.json ]] && reports+=("$dir.json")
    done
done
echo "# finished $(date -u '+%H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"
if (( ${#reports[@]} > 0 )); then
    "$target/release/plinth-load" table "${reports[@]}"
fi
exit "$failed"
