#!/usr/bin/env bash
# plinthd and containerd under the same concurrent load, in one invocation: for each client
# count, a fresh plinthd and a fresh containerd (Debian's package, default GC settings) on
# temporary directories, each driven by `plinth-load run` with the same mix and seed for
# DURATION, connections dropped mid-call included; then `plinth-load table` prints the
# Markdown tables for BENCHMARKS.md (throughput, per-operation latency, the daemons' RSS,
# fds and threads). Fails if either daemon gave an unexpected error or a wrong answer, or
# held more fds or threads after the clients left than the run explains.
#
# ROUNDS rounds of it (default 3), interleaved (plinthd, containerd, plinthd, ...), the
# tables showing each figure's median over the rounds: one run's p99 of an operation that
# makes a few hundred calls rests on a handful of them.
#
# Environment: CLIENTS (default "1 16 64"; "none" for only the RATE or SOAK runs), DURATION (default 20s), ROUNDS (default 3; the RATE runs too, not SOAK), SNAPSHOTTER (default
# native), RATE=N to add a run of both daemons at the largest client count offered N calls
# per second in all (latency at equal load), SOAK=1 to add a 10-minute run at 16 clients on each daemon after a 30-second
# warm-up at the same concurrency (RSS before the warm-up, at the start, the end and after),
# CONTAINERD (default /usr/bin/containerd), SKIP_BUILD=1 to use the existing
# target/release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "building plinthd and plinth-load (release)..." >&2
    cargo build --release -p plinthd --bins >&2
fi
for b in plinthd plinth-load; do
    [[ -x target/release/$b ]] || { echo "bench-load: target/release/$b not built" >&2; exit 1; }
done
containerd=${CONTAINERD:-/usr/bin/containerd}
command -v "$containerd" >/dev/null || {
    echo "bench-load: containerd not found (apt-get install -y containerd)" >&2
    exit 1
}
clients=${CLIENTS:-1 16 64}
[[ $clients == none ]] && clients=
duration=${DURATION:-20s}
snapshotter=${SNAPSHOTTER:-native}
seed=${SEED:-20261130}
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
    echo "bench-load: nothing answers on $1" >&2
    exit 1
}

start_plinthd() {
    local dir=$1
    mkdir -p "$dir"
    printf 'version = 3\n' > "$dir/config.toml"
    target/release/plinthd --config "$dir/config.toml" --root "$dir/root" --state "$dir/state" \
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

reports=()
failed=0
# One run: daemon name, client count, duration, report name, more plinth-load flags.
one() {
    local daemon=$1 n=$2 length=$3 name=$4
    shift 4
    local dir=$work/$name
    "start_$daemon" "$dir"
    echo "==> $daemon, $n clients, $length" >&2
    if ! target/release/plinth-load run --address "$dir/d.sock" --clients "$n" \
        --duration "$length" --snapshotter "$snapshotter" --seed "$seed" --disconnects \
        --check-leaks --label "$daemon" --report "$work/$name.json" --progress 5s "$@" >&2; then
        echo "bench-load: $daemon at $n clients failed its checks (above)" >&2
        failed=1
    fi
    stop
    reports+=("$work/$name.json")
}

rounds=${ROUNDS:-3}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD), $($containerd --version | cut -d' ' -f3), $duration per run, $rounds rounds, $snapshotter snapshotter"
for round in $(seq "$rounds"); do
    for n in $clients; do
        one plinthd "$n" "$duration" "plinthd-$n-$round"
        one containerd "$n" "$duration" "containerd-$n-$round"
    done
done
if (( ${#reports[@]} > 0 )); then
    target/release/plinth-load table "${reports[@]}"
fi
# The same load offered to both: RATE calls per second at the largest client count, so
# that latencies compare at equal work (unpaced, the faster daemon is also the busier one).
if [[ -n ${RATE:-} ]]; then
    paced=()
    n=${clients##* }
    n=${n:-64}
    for round in $(seq "$rounds"); do
        for daemon in plinthd containerd; do
            one "$daemon" "$n" "$duration" "paced-$daemon-$round" --rate "$RATE"
            paced+=("$work/paced-$daemon-$round.json")
        done
    done
    echo
    echo "$n clients offered $RATE calls/s in all:"
    echo
    target/release/plinth-load table "${paced[@]}"
fi
if [[ ${SOAK:-0} == 1 ]]; then
    soak=()
    for daemon in plinthd containerd; do
        one "$daemon" 16 10m "soak-$daemon" --warm-up 30s
        soak+=("$work/soak-$daemon.json")
    done
    echo
    echo "10-minute run, 16 clients:"
    echo
    target/release/plinth-load table "${soak[@]}"
fi
exit "$failed"
