#!/usr/bin/env bash
# Binary size of plinthd in three plugin sets, built with the `dist` profile (LTO, one
# codegen unit, opt-level "s", stripped), next to the containerd binary of Debian's package
# (which is stripped too), in one table.
#
#   minimal: content store + introspection (no metadata, no other services)
#   default: the default features (every built-in plugin)
#   full:    default + the dynamic loader
set -euo pipefail
cd "$(dirname "$0")/.."
target=${SIZE_TARGET_DIR:-target/size}
declare -A sets=(
  [minimal]="--no-default-features --features content-local,introspection"
  [default]=""
  [full]="--features dynamic-loader"
)
declare -A sizes
for name in minimal default full; do
  echo "==> building $name" >&2
  # shellcheck disable=SC2086 # the feature arguments are meant to split
  cargo build -q --profile dist -p plinthd --bin plinthd ${sets[$name]} --target-dir "$target/$name" >&2
  sizes[$name]=$(stat -c %s "$target/$name/dist/plinthd")
done
containerd_bin=$(command -v containerd || true)
containerd_size=0
[ -n "$containerd_bin" ] && containerd_size=$(stat -L -c %s "$containerd_bin")
kib() { echo $(( ($1 + 512) / 1024 )); }
printf '%-22s %12s %10s\n' "binary" "size (KiB)" "vs containerd"
for name in minimal default full; do
  ratio="-"
  [ "$containerd_size" -gt 0 ] && ratio=$(awk -v a="${sizes[$name]}" -v b="$containerd_size" 'BEGIN { printf "%.2f", a / b }')
  printf '%-22s %12s %10s\n' "plinthd ($name)" "$(kib "${sizes[$name]}")" "$ratio"
done
if [ "$containerd_size" -gt 0 ]; then
  printf '%-22s %12s %10s\n' "containerd $(containerd --version | awk '{ print $3 }')" "$(kib "$containerd_size")" "1.00"
  file -L "$containerd_bin" | sed 's/^/# /'
fi
