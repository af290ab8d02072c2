#!/usr/bin/env bash
# Builds plinthd with no plugin feature and with each plugin feature alone, runs each build
# offline (`plinthd plugins ls -q`) and checks that it lists exactly the plugins that feature
# contributes. The feature → plugin table is read from plinth-builtin-plugins'
# FEATURE_PLUGINS, so it cannot drift from the code.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${FEATURES_TARGET_DIR:-target/features}
table=$(sed -n '/^pub const FEATURE_PLUGINS/,/^];/p' builtin-plugins/src/lib.rs | tr -d ' \n' |
  grep -o '("[a-z0-9-]*","[^"]*",\?)' | sed 's/("\([^"]*\)","\([^"]*\)",\?)/\1 \2/')
features=$(echo "$table" | cut -d' ' -f1 | sort -u)
[ -n "$features" ] || { echo "no features found in FEATURE_PLUGINS" >&2; exit 1; }
config=$(mktemp)
trap 'rm -f "$config"' EXIT
echo 'version = 3' > "$config"
failed=0
for feature in "" $features; do
  label=${feature:-none}
  args=(--no-default-features)
  [ -n "$feature" ] && args+=(--features "$feature")
  printf '==> plinthd with %s: ' "$label"
  cargo build -q -p plinthd --bin plinthd "${args[@]}" --target-dir "$target"
  expected=$(echo "$table" | awk -v f="$feature" '$1 == f { print $2 }' | sort)
  actual=$("$target/debug/plinthd" -c "$config" plugins ls -q | sort)
  if [ "$expected" = "$actual" ]; then
    echo "ok (${actual:-no plugins})" | tr '\n' ' '
    echo
  else
    echo "FAILED"
    echo "  expected: ${expected:-nothing}"
    echo "  actual:   ${actual:-nothing}"
    failed=1
  fi
done
exit "$failed"
