#!/usr/bin/env bash
# Two or more plinthd command lines under the same load, interleaved: for each round, each
# variant in turn gets a fresh plinthd on temporary directories (its extra flags appended),
# driven by `plinth-load run` with the same seed, mix and client count; then the median over
# the rounds of each operation's p50 and p99, and of the total calls per second, per variant.
# Interleaving matters here: this machine's speed drifts by more than most changes between
# two runs minutes apart, so only variants measured side by side compare.
#
# Usage: ./scripts/bench-plinthd-ab.sh "FLAGS A" "FLAGS B" ...   ("" for the defaults)
#   e.g. ./scripts/bench-plinthd-ab.sh "--blocking-threads 512" ""
# A variant that starts with @PATH runs the plinthd binary at PATH (e.g. a copy built from
# another commit) instead of target/release/plinthd: "@/tmp/plinthd-old" "".
# Environment: ROUNDS (default 3), CLIENTS (default 64), DURATION (default 12s), RATE (calls
# per second in all; default: unpaced), OPS (the rows to print, a regular expression;
# default: every row), SKIP_BUILD=1 to use the existing target/release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
(( $# >= 1 )) || { sed -n '2,15p' "$0" >&2; exit 2; }
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    echo "building plinthd and plinth-load (release)..." >&2
    cargo build --release -p plinthd --bins >&2
fi
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
pace=()
[[ -n ${RATE:-} ]] && pace=(--rate "$RATE")
rows=$work/rows
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD), ${ROUNDS:-3} rounds of ${CLIENTS:-64} clients for ${DURATION:-12s}${RATE:+ at $RATE calls/s}"
for round in $(seq "${ROUNDS:-3}"); do
    variant=0
    for flags in "$@"; do
        variant=$((variant + 1))
        dir=$work/d
        mkdir -p "$dir"
        printf 'version = 3\n' > "$dir/config.toml"
        bin=target/release/plinthd
        if [[ $flags == @* ]]; then
            bin=${flags%% *}
            bin=${bin#@}
            flags=${flags#"@$bin"}
        fi
        # shellcheck disable=SC2086 # the flags are words
        "$bin" --config "$dir/config.toml" --root "$dir/root" --state "$dir/state" \
            --address "$dir/d.sock" --log-level warn $flags 2> "$dir/log" &
        pid=$!
        for _ in $(seq 200); do
            ctr --address "$dir/d.sock" version >/dev/null 2>&1 && break
            sleep 0.05
        done
        echo "==> round $round, variant $variant: plinthd ${flags:-(defaults)}" >&2
        target/release/plinth-load run --address "$dir/d.sock" --clients "${CLIENTS:-64}" \
            --duration "${DURATION:-12s}" --seed 20261130 --disconnects "${pace[@]}" \
            --progress 1h 2>/dev/null |
            awk -v v="$variant" '$1 == "total:" { print v, "total", $2 }
                $3 ~ /^[0-9.]+$/ && $5 == "ms" { print v, $1, $4, $6 }' >> "$rows"
        stop
        rm -rf "$dir"
    done
done
# Medians per variant and row.
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
variant=0
for flags in "$@"; do
    variant=$((variant + 1))
    total=$(awk -v v="$variant" '$1 == v && $2 == "total" { print $3 }' "$rows" | median)
    echo "variant $variant (plinthd ${flags:-with its defaults}): $total calls/s (median)"
done
printf '\n| operation |'; for flags in "$@"; do printf ' %s p50 / p99 ms |' "${flags:-defaults}"; done; echo
printf '|---|'; for _ in "$@"; do printf -- '---|'; done; echo
for op in $(awk '$2 != "total" { print $2 }' "$rows" | sort -u | grep -E "${OPS:-.}"); do
    printf '| %s |' "$op"
    for v in $(seq "$#"); do
        p50=$(awk -v v="$v" -v op="$op" '$1 == v && $2 == op { print $3 }' "$rows" | median)
        p99=$(awk -v v="$v" -v op="$op" '$1 == v && $2 == op { print $4 }' "$rows" | median)
        printf ' %s / %s |' "$p50" "$p99"
    done
    echo
done
