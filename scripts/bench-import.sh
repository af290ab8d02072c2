#!/usr/bin/env bash
# `ctr images import` of one generated image archive into plinthd and into containerd
# (Debian's package, CRI disabled), both on overlayfs, in one invocation: the archive is
# generated once by `plinth-load image-archive` (LAYERS gzip layers holding SIZE of file
# content, many small files and a few large ones; kept in ARCHIVE_DIR under a name made of
# its arguments and the generator's source hash, so a second run reuses it), then, in ROUNDS
# rounds that alternate which daemon goes first, a fresh daemon on temporary directories and
#
#     ctr -n bench images import --base-name plinth.bench/import --snapshotter overlayfs ARCHIVE
#
# (ctr unpacks by default: the content is written through the Content service, then each
# layer is applied through Snapshots Prepare, Diff Apply and Snapshots Commit). Measured:
# the import's wall time, the daemon's CPU over it (user + system from /proc/<pid>/stat,
# its waited-for children included: containerd would run `unpigz` if it were installed),
# the ctr client's own CPU (/usr/bin/time), the daemon's peak RSS (VmHWM), and, untimed
# in the import, how long a `sync` right after it takes (what the import left unwritten).
# Before each import the archive is read once (page cache) and `sync` run, so neither
# daemon pays for the other's writes. After it: `ctr images check` must say complete and
# unpacked, and the committed snapshots must be exactly the image's chain ids (the same top
# chain id on both daemons). Prints a Markdown table: one row per daemon and round, then
# plinthd ÷ containerd (throughput: containerd's wall time over plinthd's; daemon CPU).
#
# Then the same for a pull, when Debian's `docker-registry` and `skopeo` are installed: a
# registry on 127.0.0.1 seeded once (untimed) with `skopeo copy` of the same archive, and
#
#     ctr -n bench images pull --plain-http --snapshotter overlayfs 127.0.0.1:PORT/bench/import:latest
#
# into a fresh daemon, measured and checked the same way (the registry's own CPU is in
# neither daemon's figure; it runs on the same two cores for both). PULL=0 leaves it out.
#
# Environment: ROUNDS (default 1), SIZE (default 1GiB: bytes of file content, uncompressed),
# LAYERS (default 10), SEED (default 1), SMALL_SHARE (default 0.4: share of the bytes in
# 1-16 KiB files), ARCHIVE_DIR (default /var/tmp/plinth-bench-import), DAEMONS (default
# "plinthd containerd"), CONTAINERD (default /usr/bin/containerd), PLINTHD (a plinthd binary
# instead of the release build), FEATURES (plinthd's cargo features instead of the default
# set, built with --no-default-features), SKIP_BUILD=1 to use the existing release binaries,
# CARGO_TARGET_DIR as cargo's, PERF=DIR to record `perf record -g` of each daemon during its
# import or pull into DIR/<daemon>-<operation>-<round>.data (it slows the daemon: not for the timed figures),
# KEEP_LOGS=DIR to keep each daemon's log there, PULL=0 to measure the import only.
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
    [[ -x $target/release/$b ]] || { echo "bench-import: $target/release/$b not built" >&2; exit 1; }
done
plinthd=${PLINTHD:-$target/release/plinthd}
containerd=${CONTAINERD:-/usr/bin/containerd}
for tool in "$containerd" ctr /usr/bin/time jq bc; do
    command -v "$tool" >/dev/null || {
        echo "bench-import: $tool not found (apt-get install -y containerd time jq bc)" >&2
        exit 1
    }
done
size=${SIZE:-1GiB}
layers=${LAYERS:-10}
seed=${SEED:-1}
small_share=${SMALL_SHARE:-0.4}
snapshotter=overlayfs
namespace=bench
base=plinth.bench/import
reference=$base:latest

work=$(mktemp -d)
# The binaries measured are copies: a build in the shared target directory during the run
# must not swap them.
mkdir -p "$work/bin"
cp "$plinthd" "$work/bin/plinthd"
cp "$target/release/plinth-load" "$work/bin/"
pid=
perf_pid=
stop() {
    if [[ -n $perf_pid ]] && kill -0 "$perf_pid" 2>/dev/null; then
        kill -INT "$perf_pid"
        wait "$perf_pid" || true
    fi
    perf_pid=
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    pid=
}
trap 'stop; rm -rf "$work"' EXIT

# The archive, generated once per (size, layers, seed, share, generator source).
generator=$(sha256sum daemon/src/bin/plinth-load/image_archive.rs | cut -c1-12)
archive_dir=${ARCHIVE_DIR:-/var/tmp/plinth-bench-import}
mkdir -p "$archive_dir"
archive=$archive_dir/image-$size-$layers-$seed-$small_share-$generator.tar
summary=$archive.json
if [[ ! -s $archive || ! -s $summary ]]; then
    echo "bench-import: generating $archive..." >&2
    started=$(date +%s.%N)
    "$work/bin/plinth-load" image-archive --output "$archive.partial" --size "$size" \
        --layers "$layers" --seed "$seed" --small-share "$small_share" \
        --reference "$reference" > "$summary.partial"
    mv "$summary.partial" "$summary"
    mv "$archive.partial" "$archive"
    echo "bench-import: generated in $(echo "$(date +%s.%N) - $started" | bc) s" >&2
fi
archive_bytes=$(jq .archive_bytes "$summary")
archive_mib=$(echo "scale=1; $archive_bytes / 1048576" | bc)
content_mib=$(echo "scale=1; $(jq .content_bytes "$summary") / 1048576" | bc)
files=$(jq .files "$summary")
top_chain=$(jq -r '.chain_ids[-1]' "$summary")
jq -r '.chain_ids[]' "$summary" | sort > "$work/chain-ids"

# Waits (bounded) until the daemon answers on socket $1.
wait_socket() {
    for _ in $(seq 200); do
        ctr --address "$1" version >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "bench-import: nothing answers on $1" >&2
    exit 1
}

start_plinthd() {
    local dir=$1
    mkdir -p "$dir"
    printf 'version = 3\n' > "$dir/config.toml"
    "$work/bin/plinthd" --config "$dir/config.toml" --root "$dir/root" --state "$dir/state" \
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

# User + system CPU of process $1 and of its waited-for children, in seconds (fields 14-17
# of /proc/<pid>/stat, in USER_HZ = 100 ticks; neither daemon's name holds a space).
cpu_seconds() {
    awk '{ printf "%.2f\n", ($14 + $15 + $16 + $17) / 100 }' "/proc/$1/stat"
}

# The pull row: Debian's `docker-registry` on 127.0.0.1 (its storage in the temp dir),
# seeded once (untimed) by `skopeo copy` of the same archive, which keeps its blobs and
# manifest as they are. Without the two, or with PULL=0, only the import is measured.
operations=(import)
registry_pid=
stop_registry() {
    if [[ -n $registry_pid ]] && kill -0 "$registry_pid" 2>/dev/null; then
        kill -TERM "$registry_pid"
        wait "$registry_pid" 2>/dev/null || true
    fi
    registry_pid=
}
trap 'stop; stop_registry; rm -rf "$work"' EXIT
if [[ ${PULL:-1} == 1 ]] && command -v docker-registry >/dev/null && command -v skopeo >/dev/null; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    registry_host=127.0.0.1:$port
    mkdir -p "$work/registry"
    cat > "$work/registry/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry/storage
http:
  addr: $registry_host
YAML
    docker-registry serve "$work/registry/config.yml" > "$work/registry/log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 100); do
        curl -fsS "http://$registry_host/v2/" >/dev/null 2>&1 && break
        sleep 0.1
    done
    pulled=$registry_host/bench/import:latest
    echo "bench-import: seeding $pulled (skopeo copy, untimed)..." >&2
    skopeo --insecure-policy copy -q --dest-tls-verify=false "oci-archive:$archive" \
        "docker://$pulled" >&2
    operations+=(pull)
else
    echo "bench-import: no pull row (PULL=0, or docker-registry or skopeo not installed)" >&2
fi

failed=0
rounds=${ROUNDS:-1}
read -r -a daemons <<< "${DAEMONS:-plinthd containerd}"
: > "$work/results"

# Runs operation $1 (import or pull) into a fresh daemon $2 in round $3: timed, checked,
# one line of results.
measure() {
    local operation=$1 daemon=$2 round=$3
    local dir=$work/$daemon-$operation-$round image command
    "start_$daemon" "$dir"
    cat "$archive" > /dev/null
    sync
    echo "==> round $round, $operation into $daemon (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    local client=(ctr --address "$dir/d.sock" -n "$namespace")
    if [[ $operation == import ]]; then
        image=$reference
        command=(images import --base-name "$base" --snapshotter "$snapshotter" "$archive")
    else
        image=$pulled
        command=(images pull --plain-http --snapshotter "$snapshotter" "$pulled")
    fi
    if [[ -n ${PERF:-} ]]; then
        mkdir -p "$PERF"
        perf record -g -q -p "$pid" -o "$PERF/$daemon-$operation-$round.data" 2> "$dir/perf.log" &
        perf_pid=$!
        sleep 1
    fi
    local cpu_before cpu_after started ended
    cpu_before=$(cpu_seconds "$pid")
    started=$(date +%s.%N)
    if ! /usr/bin/time -f '%U %S' -o "$dir/ctr.time" "${client[@]}" "${command[@]}" \
        > "$dir/ctr.out" 2>&1; then
        echo "bench-import: $daemon: ctr ${command[*]} failed:" >&2
        tail -20 "$dir/ctr.out" >&2
        failed=1
    fi
    ended=$(date +%s.%N)
    cpu_after=$(cpu_seconds "$pid")
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid"
        wait "$perf_pid" || true
        perf_pid=
    fi
    local synced_started synced wall daemon_cpu ctr_cpu peak_rss check
    synced_started=$(date +%s.%N)
    sync
    synced=$(echo "$(date +%s.%N) - $synced_started" | bc)
    wall=$(echo "$ended - $started" | bc)
    daemon_cpu=$(echo "$cpu_after - $cpu_before" | bc)
    ctr_cpu=$(awk 'END { printf "%.2f\n", $1 + $2 }' "$dir/ctr.time")
    peak_rss=$(awk '/^VmHWM:/ { printf "%.0f\n", $2 / 1024 }' "/proc/$pid/status")

    # The image is complete and unpacked, on the image's chain.
    check=$("${client[@]}" images check --snapshotter "$snapshotter" 2>&1) || true
    if ! grep -F "$image" <<< "$check" | grep -q 'complete.*true'; then
        echo "bench-import: $daemon: $image is not complete and unpacked:" >&2
        echo "$check" >&2
        failed=1
    fi
    "${client[@]}" snapshots --snapshotter "$snapshotter" ls | awk 'NR > 1 { print $1 }' \
        | sort > "$dir/snapshots"
    if ! cmp -s "$dir/snapshots" "$work/chain-ids"; then
        echo "bench-import: $daemon: the snapshots are not the image's chain ids" \
            "(< snapshots, > chain ids):" >&2
        diff "$dir/snapshots" "$work/chain-ids" >&2 || true
        failed=1
    elif ! grep -qx "$top_chain" "$dir/snapshots"; then
        echo "bench-import: $daemon: the top chain id $top_chain is missing" >&2
        failed=1
    fi
    echo "$round $operation $daemon $wall $daemon_cpu $ctr_cpu $synced $peak_rss" >> "$work/results"
    echo "bench-import: $operation into $daemon: $wall s, daemon CPU $daemon_cpu s, ctr CPU" \
        "$ctr_cpu s, sync after $synced s, peak RSS $peak_rss MiB," \
        "$(wc -l < "$dir/snapshots") snapshots, root $(du -sh "$dir/root" | cut -f1)" >&2
    stop
    if grep -E 'level=(error|fatal)|ERROR|WARN' "$dir/log" >&2; then
        echo "bench-import: (the lines above are from $daemon's log)" >&2
    fi
    if [[ -n ${KEEP_LOGS:-} ]]; then
        mkdir -p "$KEEP_LOGS"
        cp "$dir/log" "$KEEP_LOGS/$daemon-$operation-$round.log"
    fi
    rm -rf "$dir"
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD), $($containerd --version | cut -d' ' -f3), $rounds rounds of ${operations[*]}; archive $(basename "$archive"): $archive_mib MiB, $layers gzip layers, $content_mib MiB in $files files"
for round in $(seq "$rounds"); do
    order=("${daemons[@]}")
    if (( round % 2 == 0 && ${#daemons[@]} == 2 )); then
        order=("${daemons[1]}" "${daemons[0]}")
    fi
    for operation in "${operations[@]}"; do
        for daemon in "${order[@]}"; do
            measure "$operation" "$daemon" "$round"
        done
    done
done
echo "# finished $(date -u '+%H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg); top chain id $top_chain on every daemon$( ((failed)) && echo ' (NOT: see the errors above)')"
echo
echo "| round | operation | daemon | wall s | archive MiB/s | daemon CPU s | ctr CPU s | sync after s | daemon peak RSS MiB |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|"
awk -v mib="$archive_mib" '{ printf "| %s | %s | %s | %.2f | %.0f | %.2f | %.2f | %.2f | %s |\n", $1, $2, $3, $4, mib / $4, $5, $6, $7, $8 }' "$work/results"
# plinthd ÷ containerd: the medians over the rounds.
median() {
    awk -v o="$1" -v d="$2" -v col="$3" '$2 == o && $3 == d { print $col }' "$work/results" | sort -g \
        | awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio_header=0
for operation in "${operations[@]}"; do
    p_wall=$(median "$operation" plinthd 4)
    c_wall=$(median "$operation" containerd 4)
    [[ -n $p_wall && -n $c_wall ]] || continue
    if (( ! ratio_header )); then
        echo
        echo "| plinthd ÷ containerd (medians of $rounds rounds) | throughput | daemon CPU |"
        echo "|---|---:|---:|"
        ratio_header=1
    fi
    p_cpu=$(median "$operation" plinthd 5)
    c_cpu=$(median "$operation" containerd 5)
    awk -v op="$operation" -v pw="$p_wall" -v cw="$c_wall" -v pc="$p_cpu" -v cc="$c_cpu" \
        'BEGIN { printf "| %s | %.2f× | %.2f× |\n", op, cw / pw, (cc > 0 ? pc / cc : 0) }'
done
exit "$failed"
