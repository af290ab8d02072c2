#!/usr/bin/env bash
# Start-up time to the first served `plugins ls`, and idle RSS, for plinthd vs containerd,
# side by side in one invocation.
#
# Each round starts each daemon in turn (plinthd as `cargo build --release` makes it; plinthd
# as shipped statically linked: `dist` profile, `+crt-static`, non-PIE; containerd with its
# default plugin set; containerd with its plugin set reduced to plinthd's) three times:
#   first    fresh temp root, state and socket; timed by startup-probe (below); then one
#            snapshot prepared and removed on each snapshotter and a namespace listed, so
#            that every database exists (plinthd creates one on its first use); stopped.
#   restart  the same root and state again; timed by startup-probe;
#            ~1 s later VmRSS is read from /proc/<pid>/status and one `ctr plugins ls` is
#            timed against the running daemon (the client's own cost); stopped.
#   via ctr  fresh dirs again; every 5 ms, once the socket exists, `ctr --address SOCK
#            plugins ls` is run until it exits 0; stopped. This one includes a Go client's
#            process start-up in every figure.
# Start-up = the moment the first `plugins ls` reply arrived minus the moment just before the
# daemon was started (both wall-clock ns). startup-probe (daemon/examples/startup-probe.rs)
# polls every 250 µs with an in-process gRPC client, so the figure is the daemon's own.
# Stopping is SIGTERM then waiting for the exit (status 0 required); dirs are then removed.
#
# Environment: RUNS (measured rounds, default 15), WARMUP (unmeasured rounds first, to get
# the binaries into the page cache, default 1), CONTAINERD (default /usr/bin/containerd),
# CTR (default /usr/bin/ctr), SKIP_BUILD=1 to use the binaries already built (release
# plinthd and startup-probe in target/release, the static one in target/static-dist).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)

RUNS=${RUNS:-15}
WARMUP=${WARMUP:-1}
CONTAINERD=${CONTAINERD:-/usr/bin/containerd}
CTR=${CTR:-/usr/bin/ctr}
PLINTHD=$repo/target/release/plinthd
host=$(rustc -vV | sed -n 's/^host: //p')
PLINTHD_STATIC=$repo/target/static-dist/$host/dist/plinthd
PROBE=$repo/target/release/examples/startup-probe
POLL_TIMEOUT_MS=20000

daemons=(plinthd plinthd-static containerd-default containerd-reduced)

die() {
    echo "bench-startup: $*" >&2
    exit 1
}

for tool in "$CONTAINERD" "$CTR"; do
    [[ -x $tool ]] || die "$tool not found (apt-get install -y containerd)"
done

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "building plinthd and startup-probe (release)..." >&2
    cargo build --release -p plinthd --bin plinthd --example startup-probe >&2
    echo "building the static plinthd (dist profile)..." >&2
    RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
        cargo build --profile dist -p plinthd --bin plinthd --target "$host" \
        --target-dir "$repo/target/static-dist" >&2
fi
[[ -x $PLINTHD ]] || die "$PLINTHD not built"
[[ -x $PLINTHD_STATIC ]] || die "$PLINTHD_STATIC not built (run without SKIP_BUILD=1)"
[[ -x $PROBE ]] || die "$PROBE not built (cargo build --release -p plinthd --example startup-probe)"

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-startup.XXXXXX")
daemon_pid=
elapsed=

cleanup() {
    local status=$?
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        # Give it 5 s to stop, then kill it.
        for _ in $(seq 50); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Plugins containerd 1.6 has and plinthd does not, disabled in the reduced set so that both
# serve the same things: a content store, native and overlayfs snapshotters, metadata, and the
# content, snapshots, namespaces, introspection and version services (containerd's services
# sit on service.v1 plugins and its metadata needs the event exchange, so those stay).
containerd_extra_plugins=(
    io.containerd.snapshotter.v1.aufs
    io.containerd.snapshotter.v1.btrfs
    io.containerd.snapshotter.v1.devmapper
    io.containerd.snapshotter.v1.zfs
    io.containerd.differ.v1.walking
    io.containerd.gc.v1.scheduler
    io.containerd.service.v1.containers-service
    io.containerd.service.v1.diff-service
    io.containerd.service.v1.images-service
    io.containerd.service.v1.leases-service
    io.containerd.service.v1.tasks-service
    io.containerd.runtime.v1.linux
    io.containerd.runtime.v2.task
    io.containerd.monitor.v1.cgroups
    io.containerd.internal.v1.restart
    io.containerd.internal.v1.opt
    io.containerd.grpc.v1.containers
    io.containerd.grpc.v1.diff
    io.containerd.grpc.v1.events
    io.containerd.grpc.v1.healthcheck
    io.containerd.grpc.v1.images
    io.containerd.grpc.v1.leases
    io.containerd.grpc.v1.tasks
    io.containerd.grpc.v1.cri
)

# write_config DAEMON DIR SOCK: the daemon's config file, printed as its path.
write_config() {
    local daemon=$1 dir=$2 sock=$3 cfg=$2/config.toml
    case $daemon in
        plinthd*)
            # Just the version: embedded defaults, and no user config file is read.
            echo 'version = 3' >"$cfg"
            ;;
        containerd-default)
            # The opt plugin would otherwise create /opt/containerd.
            cat >"$cfg" <<EOF
version = 2
[grpc]
  address = "$sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
            ;;
        containerd-reduced)
            {
                echo 'version = 2'
                echo 'disabled_plugins = ['
                printf '  "%s",\n' "${containerd_extra_plugins[@]}"
                echo ']'
                echo '[grpc]'
                echo "  address = \"$sock\""
            } >"$cfg"
            ;;
    esac
    echo "$cfg"
}

# start_daemon DAEMON DIR SOCK CFG: starts it in the background; sets daemon_pid.
start_daemon() {
    local daemon=$1 dir=$2 sock=$3 cfg=$4
    case $daemon in
        plinthd)
            "$PLINTHD" -c "$cfg" --root "$dir/root" --state "$dir/state" --address "$sock" \
                >>"$dir/log" 2>&1 &
            ;;
        plinthd-static)
            "$PLINTHD_STATIC" -c "$cfg" --root "$dir/root" --state "$dir/state" \
                --address "$sock" >>"$dir/log" 2>&1 &
            ;;
        containerd-*)
            "$CONTAINERD" --config "$cfg" --root "$dir/root" --state "$dir/state" \
                --address "$sock" >>"$dir/log" 2>&1 &
            ;;
    esac
    daemon_pid=$!
}

now_ns() { date +%s%N; }

# ns → ms with one decimal.
ms() { awk -v ns="$1" 'BEGIN { printf "%.1f\n", ns / 1e6 }'; }

# timed_start DAEMON DIR CLIENT ROUND: starts the daemon on DIR (its root, state, socket,
# config), waits until CLIENT (probe or ctr) got a `plugins ls` reply, sets `elapsed` (ms).
# The daemon keeps running (daemon_pid). Not for $(...): it sets globals.
timed_start() {
    local daemon=$1 dir=$2 client=$3 round=$4
    local sock=$dir/d.sock cfg t0 t1 deadline
    cfg=$(write_config "$daemon" "$dir" "$sock")
    t0=$(now_ns)
    start_daemon "$daemon" "$dir" "$sock" "$cfg"
    case $client in
        probe)
            if ! t1=$("$PROBE" "$sock" "$daemon_pid" "$POLL_TIMEOUT_MS" 2>"$dir/probe.err"); then
                tail -n 20 "$dir/log" >&2
                die "$daemon, round $round: $(cat "$dir/probe.err")"
            fi
            ;;
        ctr)
            deadline=$((t0 + POLL_TIMEOUT_MS * 1000000))
            # ctr itself waits (up to 10 s, retrying every 10 ms) for a socket that is not
            # there yet; checking for the socket first keeps the polling here, at 5 ms.
            until [[ -S $sock ]] && "$CTR" --address "$sock" plugins ls >/dev/null 2>&1; do
                if ! kill -0 "$daemon_pid" 2>/dev/null; then
                    tail -n 20 "$dir/log" >&2
                    die "$daemon exited before serving (round $round)"
                fi
                if (($(now_ns) > deadline)); then
                    tail -n 20 "$dir/log" >&2
                    die "$daemon did not serve plugins ls within ${POLL_TIMEOUT_MS} ms (round $round)"
                fi
                sleep 0.005
            done
            t1=$(now_ns)
            ;;
    esac
    elapsed=$(ms $((t1 - t0)))
}

# use_every_store DIR: makes the running daemon use its metadata and both snapshotters.
use_every_store() {
    local sock=$1/d.sock snapshotter
    "$CTR" --address "$sock" namespaces ls >/dev/null
    for snapshotter in native overlayfs; do
        "$CTR" --address "$sock" snapshots --snapshotter "$snapshotter" prepare warm "" >/dev/null
        "$CTR" --address "$sock" snapshots --snapshotter "$snapshotter" rm warm
    done
}

# stop_daemon DAEMON DIR ROUND: SIGTERM, wait, require exit status 0.
stop_daemon() {
    local daemon=$1 dir=$2 round=$3 rc=0
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || rc=$?
    daemon_pid=
    if ((rc != 0)); then
        tail -n 20 "$dir/log" >&2
        die "$daemon exited with status $rc after SIGTERM (round $round)"
    fi
    [[ -e $dir/d.sock ]] && echo "note: $daemon left its socket behind (round $round)" >&2
    return 0
}

# one_run DAEMON ROUND MEASURED: first start, restart, start timed via ctr; appends to the
# result files if MEASURED=1.
one_run() {
    local daemon=$1 round=$2 measured=$3
    local dir first restart via_ctr rss c0 c1
    dir=$work/$daemon-$round
    mkdir -p "$dir"

    timed_start "$daemon" "$dir" probe "$round"
    first=$elapsed
    use_every_store "$dir"
    stop_daemon "$daemon" "$dir" "$round"

    timed_start "$daemon" "$dir" probe "$round"
    restart=$elapsed
    sleep 1
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$daemon_pid/status")
    c0=$(now_ns)
    "$CTR" --address "$dir/d.sock" plugins ls >"$dir/plugins"
    c1=$(now_ns)
    stop_daemon "$daemon" "$dir" "$round"
    if ((measured)) && [[ ! -e $work/$daemon.plugins ]]; then
        # Keep the first measured round's plugin list and the log lines above info of its
        # first start and restart (start_daemon appends to one log).
        cp "$dir/plugins" "$work/$daemon.plugins"
        grep -E 'level=(warning|error|fatal|panic)|^[^ ]+ +(WARN|ERROR) |panicked' "$dir/log" \
            >"$work/$daemon.problems" || true
    fi
    rm -rf "$dir"
    mkdir -p "$dir"

    timed_start "$daemon" "$dir" ctr "$round"
    via_ctr=$elapsed
    stop_daemon "$daemon" "$dir" "$round"
    rm -rf "$dir"

    if ((measured)); then
        echo "$first" >>"$work/$daemon.first"
        echo "$restart" >>"$work/$daemon.restart"
        echo "$via_ctr" >>"$work/$daemon.ctr"
        echo "$rss" >>"$work/$daemon.rss"
        ms $((c1 - c0)) >>"$work/$daemon.client"
    fi
}

# Median, min and max of a file of numbers, one per line.
median() {
    sort -g "$1" | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
minimum() { sort -g "$1" | head -n 1; }
maximum() { sort -g "$1" | tail -n 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

started=$(now_ns)
total=$((WARMUP + RUNS))
for ((round = 1; round <= total; round++)); do
    measured=$((round > WARMUP))
    for daemon in "${daemons[@]}"; do
        one_run "$daemon" "$round" "$measured"
    done
    if ((measured)); then
        printf 'round %d/%d done\n' $((round - WARMUP)) "$RUNS" >&2
    fi
done
finished=$(now_ns)

# "median (min–max)" of a result file.
spread() { printf '%s (%s–%s)' "$(median "$1")" "$(minimum "$1")" "$(maximum "$1")"; }

echo
echo "Start-up to the first served \`plugins ls\` (ms) and idle RSS ~1 s later;"
echo "$RUNS rounds (after $WARMUP warm-up round(s)), daemons alternating, in $(ms $((finished - started))) ms."
echo "$(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "plinthd: $PLINTHD; plinthd-static: $PLINTHD_STATIC ($(stat -c %s "$PLINTHD_STATIC") bytes)"
echo "containerd: $("$CONTAINERD" --version)"
echo
echo "| daemon | plugins ok | first start | restart | first start via \`ctr\` | warm \`ctr plugins ls\` | idle RSS |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for daemon in "${daemons[@]}"; do
    okcount=$(awk 'NR > 1 && $NF == "ok"' "$work/$daemon.plugins" | wc -l)
    printf '| %s | %d | %s | %s | %s | %s | %s KiB |\n' "$daemon" "$okcount" \
        "$(spread "$work/$daemon.first")" "$(spread "$work/$daemon.restart")" \
        "$(spread "$work/$daemon.ctr")" "$(median "$work/$daemon.client")" \
        "$(median "$work/$daemon.rss")"
done
echo
echo "Ratios of medians:"
echo
echo "| | first start | restart | first start via \`ctr\` | idle RSS |"
echo "|---|---:|---:|---:|---:|"
for ours in plinthd plinthd-static; do
    for theirs in containerd-default containerd-reduced; do
        row="| $ours / $theirs"
        for figure in first restart ctr rss; do
            row+=" | $(ratio "$(median "$work/$ours.$figure")" "$(median "$work/$theirs.$figure")")"
        done
        echo "$row |"
    done
done

for daemon in "${daemons[@]}"; do
    echo
    echo "$daemon: plugins (ctr plugins ls, first measured run):"
    sed 's/^/    /' "$work/$daemon.plugins"
    if [[ -s $work/$daemon.problems ]]; then
        echo "$daemon: warnings/errors in its log (first measured run):"
        sed 's/^/    /' "$work/$daemon.problems"
    fi
done
