#!/usr/bin/env bash
# Content ingest throughput and native-snapshot operations per second, plinthd vs containerd,
# side by side in one invocation.
#
# Ingest: one 1 GiB file of random bytes is generated once in the temp dir (same filesystem as
# the daemons' roots) and kept in the page cache for every run (it is read in full just
# before each run), so all contenders read it hot. Each round, in turn:
#   - plinthd:    `ctr --address SOCK content ingest --expected-size … --expected-digest … REF < FILE`
#   - containerd: the same command against containerd 1.6;
#   - sha256sum:  `sha256sum FILE` (the hashing limit the target names);
#   - openssl:    `openssl dgst -sha256 FILE` (for reference: a SHA-NI hash, see BENCHMARKS.md);
#   - dd+fsync:   `dd if=FILE of=OUT bs=1M conv=fsync` into the temp dir (for reference: the
#                 disk's share, a buffered write of the same bytes plus one fsync, no hashing).
# Each daemon is started on fresh temp root/state dirs for each run and stopped after it, so
# nothing is deduplicated. `sync` runs between runs, so the previous run's writeback does not
# bleed into the next (both daemons fsync the blob before commit, so the disk write is part of
# their figure; the hashers only read). With DROP_CACHES=1 (root only), the page cache is also
# dropped before the source file is re-read (off by default: it slows everyone else's builds).
# Figure: MiB/s = 1024 / wall seconds of the command, median over the runs.
#
# Snapshots: on a freshly started daemon, `ctr snapshots --snapshotter native prepare base-a`
# and `commit base base-a`, then N × (`prepare key-i base`, `commit name-i key-i`,
# `info base`), each a separate `ctr` process timed on its own (bash's EPOCHREALTIME, no
# process started to read the clock). ctr's own cost (process start, connect) dominates; the
# interleaved `info` (one Stat on the same service, next to no server work) is the baseline
# subtracted to give "net" per-call figures. The daemon's CPU time (utime + stime from
# /proc/PID/stat) over the loop is reported per pair as well: it needs no client at all.
#
# Environment: RUNS (ingest and snapshot rounds, default 3), SNAP_N (pairs per snapshot run,
# default 200), SIZE_MIB (ingest file size, default 1024), DROP_CACHES=1, CONTAINERD (default
# /usr/bin/containerd), CTR (default /usr/bin/ctr), SKIP_BUILD=1 to use the existing
# target/release/plinthd.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)

RUNS=${RUNS:-3}
SNAP_N=${SNAP_N:-200}
SIZE_MIB=${SIZE_MIB:-1024}
DROP_CACHES=${DROP_CACHES:-0}
CONTAINERD=${CONTAINERD:-/usr/bin/containerd}
CTR=${CTR:-/usr/bin/ctr}
PLINTHD=$repo/target/release/plinthd
READY_TIMEOUT_MS=20000

daemons=(plinthd containerd)

die() {
    echo "bench-storage: $*" >&2
    exit 1
}

for tool in "$CONTAINERD" "$CTR" sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y containerd)"
done
have_openssl=0
command -v openssl >/dev/null && have_openssl=1

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "building plinthd (release)..." >&2
    cargo build --release -p plinthd >&2
fi
[[ -x $PLINTHD ]] || die "$PLINTHD not built"

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-storage.XXXXXX")
daemon_pid=
daemon_sock=

stop_daemon() {
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        # Give it 5 s to stop, then kill it.
        for _ in $(seq 50); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    if [[ -n $daemon_pid ]]; then
        wait "$daemon_pid" 2>/dev/null || true
    fi
    daemon_pid=
}

cleanup() {
    local status=$?
    stop_daemon
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Plugins neither benchmark needs and that would do background work or touch the host
# (CRI watches CNI config and starts its own services; aufs/btrfs/devmapper/zfs probe).
# Content store, native snapshotter, metadata, GC, content and snapshots services stay.
containerd_disabled=(
    io.containerd.grpc.v1.cri
    io.containerd.snapshotter.v1.aufs
    io.containerd.snapshotter.v1.btrfs
    io.containerd.snapshotter.v1.devmapper
    io.containerd.snapshotter.v1.zfs
)

# start_daemon DAEMON DIR: starts it on fresh dirs under DIR, waits until it serves
# `ctr version`; sets daemon_pid and daemon_sock (not a command substitution: the daemon
# must be this shell's child, for stop_daemon).
start_daemon() {
    local daemon=$1 dir=$2 sock=$2/d.sock cfg=$2/config.toml t0
    mkdir -p "$dir"
    case $daemon in
        plinthd)
            echo 'version = 3' >"$cfg"
            "$PLINTHD" -c "$cfg" --root "$dir/root" --state "$dir/state" --address "$sock" \
                >"$dir/log" 2>&1 &
            ;;
        containerd)
            {
                echo 'version = 2'
                echo 'disabled_plugins = ['
                printf '  "%s",\n' "${containerd_disabled[@]}"
                echo ']'
                echo '[grpc]'
                echo "  address = \"$sock\""
                echo '[plugins."io.containerd.internal.v1.opt"]'
                echo "  path = \"$dir/opt\""
            } >"$cfg"
            "$CONTAINERD" --config "$cfg" --root "$dir/root" --state "$dir/state" \
                --address "$sock" >"$dir/log" 2>&1 &
            ;;
    esac
    daemon_pid=$!
    t0=$(now_ns)
    until [[ -S $sock ]] && "$CTR" --address "$sock" version >/dev/null 2>&1; do
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            tail -n 20 "$dir/log" >&2
            die "$daemon exited before serving"
        fi
        if (($(now_ns) - t0 > READY_TIMEOUT_MS * 1000000)); then
            tail -n 20 "$dir/log" >&2
            die "$daemon did not serve within ${READY_TIMEOUT_MS} ms"
        fi
        sleep 0.01
    done
    daemon_sock=$sock
}

now_ns() { date +%s%N; }
# Microseconds, without starting a process (bash 5).
now_us() { echo "${EPOCHREALTIME/./}"; }

# utime + stime of the running daemon, in ms (clock ticks are 10 ms at USER_HZ = 100).
daemon_cpu_ms() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print int(($12 + $13) * 1000 / hz) }' \
        "/proc/$daemon_pid/stat"
}

# Median of a file of numbers, one per line.
median() {
    sort -g "$1" | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
minimum() { sort -g "$1" | head -n 1; }
maximum() { sort -g "$1" | tail -n 1; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# Saves the daemon log's warnings and errors (first run only).
keep_problems() {
    local name=$1 log=$2
    [[ -e $work/$name.problems ]] && return 0
    grep -E 'level=(warning|error|fatal|panic)|^[^ ]+ +(WARN|ERROR) |panicked' "$log" \
        >"$work/$name.problems" || true
}

settle() {
    sync
    if ((DROP_CACHES)); then
        echo 3 >/proc/sys/vm/drop_caches
    fi
    cat "$blob" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Content ingest
# ---------------------------------------------------------------------------------------------
blob=$work/blob
echo "generating ${SIZE_MIB} MiB of random data..." >&2
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$blob"
size=$(stat -c %s "$blob")
digest=sha256:$(sha256sum "$blob" | cut -d' ' -f1)

ingest_names=(plinthd containerd sha256sum)
((have_openssl)) && ingest_names+=(openssl)
ingest_names+=(dd+fsync)

# ingest_run NAME ROUND: one timed run; appends MiB/s to $work/NAME.ingest.
ingest_run() {
    local name=$1 round=$2 dir=$work/ingest-$1-$2 sock t0 t1 got
    case $name in
        plinthd | containerd)
            start_daemon "$name" "$dir"
            sock=$daemon_sock
            settle
            t0=$(now_ns)
            "$CTR" --address "$sock" content ingest --expected-size "$size" \
                --expected-digest "$digest" "bench-$round" <"$blob"
            t1=$(now_ns)
            got=$("$CTR" --address "$sock" content ls -q)
            [[ $got == "$digest" ]] || die "$name: content ls after ingest gave '$got', not $digest"
            stop_daemon
            keep_problems "$name" "$dir/log"
            rm -rf "$dir"
            ;;
        sha256sum)
            settle
            t0=$(now_ns)
            got=sha256:$(sha256sum "$blob" | cut -d' ' -f1)
            t1=$(now_ns)
            [[ $got == "$digest" ]] || die "sha256sum disagrees with itself"
            ;;
        openssl)
            settle
            t0=$(now_ns)
            got=sha256:$(openssl dgst -sha256 -r "$blob" | cut -d' ' -f1)
            t1=$(now_ns)
            [[ $got == "$digest" ]] || die "openssl disagrees with sha256sum"
            ;;
        dd+fsync)
            settle
            t0=$(now_ns)
            dd if="$blob" of="$work/dd-out" bs=1M conv=fsync status=none
            t1=$(now_ns)
            rm -f "$work/dd-out"
            ;;
    esac
    calc '%.1f\n' "$size / 1048576 / (($t1 - $t0) / 1e9)" >>"$work/$name.ingest"
}

ingest_started=$(now_ns)
for ((round = 1; round <= RUNS; round++)); do
    for name in "${ingest_names[@]}"; do
        ingest_run "$name" "$round"
    done
    printf 'ingest round %d/%d done\n' "$round" "$RUNS" >&2
done
ingest_finished=$(now_ns)
ingest_load=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Snapshot prepare + commit (native snapshotter)
# ---------------------------------------------------------------------------------------------
# snap_run DAEMON ROUND: SNAP_N × (prepare, commit, info), each ctr run timed on its own;
# appends each call's wall ms to $work/DAEMON.{prepare,commit,info}, the loop's wall ms to
# $work/DAEMON.snap and the daemon's CPU ms over the loop to $work/DAEMON.cpu.
snap_run() {
    local daemon=$1 round=$2 dir=$work/snap-$1-$2 sock t0 t1 i c0 c1 c2 c3 cpu0 cpu1 snap n_snaps
    start_daemon "$daemon" "$dir"
    sock=$daemon_sock
    snap=("$CTR" --address "$sock" snapshots --snapshotter native)
    "${snap[@]}" prepare base-a >/dev/null
    "${snap[@]}" commit base base-a

    cpu0=$(daemon_cpu_ms)
    t0=$(now_us)
    for ((i = 0; i < SNAP_N; i++)); do
        c0=$(now_us)
        "${snap[@]}" prepare "key-$i" base >/dev/null
        c1=$(now_us)
        "${snap[@]}" commit "name-$i" "key-$i"
        c2=$(now_us)
        "${snap[@]}" info base >/dev/null
        c3=$(now_us)
        echo "$(((c1 - c0) / 1000)).$(printf '%03d' $(((c1 - c0) % 1000)))" >>"$work/$daemon.prepare"
        echo "$(((c2 - c1) / 1000)).$(printf '%03d' $(((c2 - c1) % 1000)))" >>"$work/$daemon.commit"
        echo "$(((c3 - c2) / 1000)).$(printf '%03d' $(((c3 - c2) % 1000)))" >>"$work/$daemon.info"
    done
    t1=$(now_us)
    cpu1=$(daemon_cpu_ms)
    calc '%.3f\n' "($t1 - $t0) / 1e3" >>"$work/$daemon.snap"
    echo $((cpu1 - cpu0)) >>"$work/$daemon.cpu"

    n_snaps=$("${snap[@]}" ls | awk 'NR > 1' | wc -l)
    ((n_snaps == SNAP_N + 1)) || die "$daemon: $n_snaps snapshots after the loop, expected $((SNAP_N + 1))"
    stop_daemon
    keep_problems "$daemon" "$dir/log"
    rm -rf "$dir"
}

snap_started=$(now_ns)
for ((round = 1; round <= RUNS; round++)); do
    for daemon in "${daemons[@]}"; do
        snap_run "$daemon" "$round"
    done
    printf 'snapshot round %d/%d done\n' "$round" "$RUNS" >&2
done
snap_finished=$(now_ns)
snap_load=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
echo
echo "$(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(uname -r);" \
    "filesystem of $work: $(df --output=fstype "$work" | tail -n 1)"
echo "plinthd: $PLINTHD; containerd: $("$CONTAINERD" --version); ctr: $("$CTR" --version)"
echo
echo "Content ingest of $SIZE_MIB MiB ($digest), $RUNS runs each, alternating, in" \
    "$(calc '%.0f' "($ingest_finished - $ingest_started) / 1e9") s; source file hot" \
    "(read in full before each run), drop_caches $( ((DROP_CACHES)) && echo on || echo off);" \
    "load average after: $ingest_load"
echo
p_ingest=$(median "$work/plinthd.ingest")
s_ingest=$(median "$work/sha256sum.ingest")
echo "| contender | median | min | max | plinthd / this |"
echo "|---|---:|---:|---:|---:|"
for name in "${ingest_names[@]}"; do
    m=$(median "$work/$name.ingest")
    printf '| %s | %s MiB/s | %s MiB/s | %s MiB/s | %s |\n' "$name" "$m" \
        "$(minimum "$work/$name.ingest")" "$(maximum "$work/$name.ingest")" \
        "$(calc '%.0f %%' "100 * $p_ingest / $m")"
done
echo
echo "plinthd: $(calc '%.0f' "100 * $p_ingest / $s_ingest") % of sha256sum," \
    "$(calc '%.2f' "$p_ingest / $(median "$work/containerd.ingest")")× containerd"

echo
echo "Snapshot prepare+commit pairs on the native snapshotter: $SNAP_N × (prepare key-i base," \
    "commit name-i key-i, info base), each a separate ctr run timed on its own, $RUNS runs each," \
    "alternating, in $(calc '%.0f' "($snap_finished - $snap_started) / 1e9") s;" \
    "load average after: $snap_load"
echo "Medians over all $((RUNS * SNAP_N)) calls of each kind; net = call - info (ctr's own cost" \
    "plus one cheap Stat); daemon CPU = utime + stime of the daemon over the loops / pairs."
echo
echo "| daemon | pairs/s via ctr (median run) | prepare | commit | info (baseline) | net prepare | net commit | net pairs/s | daemon CPU per pair |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for daemon in "${daemons[@]}"; do
    prep=$(calc '%.2f' "$(median "$work/$daemon.prepare")")
    comm=$(calc '%.2f' "$(median "$work/$daemon.commit")")
    info=$(calc '%.2f' "$(median "$work/$daemon.info")")
    # The loop also runs the info calls: take them out of the pairs/s figure.
    pairs_ms=$(calc '%.3f' "$(median "$work/$daemon.snap") / $SNAP_N - $info")
    np=$(calc '%.2f' "$prep - $info")
    nc=$(calc '%.2f' "$comm - $info")
    cpu=0
    while read -r c; do cpu=$((cpu + c)); done <"$work/$daemon.cpu"
    printf '| %s | %s | %s ms | %s ms | %s ms | %s ms | %s ms | %s | %s ms |\n' "$daemon" \
        "$(calc '%.1f' "1000 / $pairs_ms")" "$prep" "$comm" "$info" "$np" "$nc" \
        "$(calc '%.0f' "1000 / ($np + $nc)")" "$(calc '%.2f' "$cpu / ($RUNS * $SNAP_N)")"
done

for name in "${daemons[@]}"; do
    if [[ -s $work/$name.problems ]]; then
        echo
        echo "$name: warnings/errors in its log (first run):"
        sed 's/^/    /' "$work/$name.problems"
    fi
done
