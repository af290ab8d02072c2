#!/usr/bin/env bash
# Mutation testing of the code where a wrong line loses data or lets someone in: the content
# store's commit path, the metadata layer's content and snapshot views, the snapshotters'
# remove and cleanup, and the dynamic loader's checks. Each mutant (a line of that code
# changed on purpose) must make some test fail; a mutant that survives is either killed by a
# new test or explained, one line each, in TESTING.md.
#
# Usage: ./scripts/mutants.sh [GROUP...]   groups: content metadata gc removal snapshots storage differ loader reload (default: all)
#        ./scripts/mutants.sh --list [GROUP...]   only list the mutants
#        ./scripts/mutants.sh [GROUP...] -- [CARGO-MUTANTS ARGS...]
#          e.g. `-- --in-place` to mutate this tree and reuse its warm target dir (then do
#          not edit or commit here while it runs: use a git worktree of its own)
#
# Not run in CI: on two cores a full run takes hours. Run it before resolving an issue that
# touches these files, and record the survivors per file in TESTING.md. Results land in
# target/mutants/<group>/mutants.out (caught.txt, missed.txt, timeout.txt, unviable.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

version=27.1.0
if ! cargo mutants --version 2>/dev/null | grep -q "$version"; then
  echo "installing cargo-mutants $version from crates.io" >&2
  cargo install --locked cargo-mutants --version "$version"
fi

list=()
if [ "${1:-}" = "--list" ]; then
  list=(--list)
  shift
fi
groups=()
extra=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then
    shift
    extra=("$@")
    break
  fi
  groups+=("$1")
  shift
done
[ ${#groups[@]} -gt 0 ] || groups=(content metadata gc removal snapshots storage differ loader reload)

# Mutated code runs with this user's rights: as root every run is confined (see
# scripts/confine.sh; a mutant of the layer applier once removed the machine's /etc).
# shellcheck source=scripts/confine.sh
source scripts/confine.sh

# Each mutant is an incremental rebuild of one crate's test binary, and most of that is the
# link: with mold (`apt-get install mold`) a build of the gc group takes ~5-12 s instead of
# ~40 s. Used when installed and RUSTFLAGS is not set (the first build then rebuilds every
# dependency once, for the new flags).
if [ -z "${RUSTFLAGS:-}" ] && command -v mold >/dev/null 2>&1; then
  export RUSTFLAGS="-C link-arg=-fuse-ld=mold"
fi

# Each group: the crate whose tests judge the mutants, the features those tests need, the
# files mutated, and which functions in them (a regex over cargo-mutants' mutant names).
run_group() {
  local group=$1 package features re filter=
  local files=()
  case "$group" in
    content)
      package=plinth-builtin-plugins
      features=content-local,testsuite
      files=(builtin-plugins/src/content/local.rs)
      filter='content::'
      # The ingest → commit path and deletion; not listing, labels or formatting.
      re='(commit|write|truncate|finish|close|write_file_atomic|sync_dir|open_ingest|resume_ingest|create_ingest|read_ingest_status|remove_crash_leftovers|delete|detach_many|removing_dir|blob_path|ingest_dir|read_at)'
      ;;
    metadata)
      package=plinth-builtin-plugins
      features=metadata-redb,content-local,snapshotter-native,testsuite
      files=(builtin-plugins/src/metadata/content.rs builtin-plugins/src/metadata/snapshots.rs)
      filter='metadata::'
      re='.'
      ;;
    gc)
      # The collector (what is marked, what the sweep removes, the backend step's re-checks)
      # and the order events are published in; judged by the metadata tests, containerd's
      # GC cases, the model test and the race test.
      package=plinth-builtin-plugins
      features=metadata-redb,content-local,snapshotter-native,event-exchange,testsuite
      files=(builtin-plugins/src/metadata/gc.rs builtin-plugins/src/metadata/order.rs)
      filter='metadata::'
      re='.'
      ;;
    removal)
      package=plinth-builtin-plugins
      features=content-local,snapshotter-native,testsuite
      files=(builtin-plugins/src/removal.rs)
      filter=''
      re='.'
      ;;
    snapshots)
      package=plinth-builtin-plugins
      features=snapshotter-native,snapshotter-overlayfs,testsuite
      files=(builtin-plugins/src/snapshots/storage.rs builtin-plugins/src/snapshots/native.rs builtin-plugins/src/snapshots/overlayfs.rs)
      filter='snapshots::'
      re='::(remove|cleanup)\b|fn (remove|cleanup)|in .*::(remove|cleanup)\b|remove_path|remove_dir_logged|detach_many|remove_records'
      ;;
    storage)
      # How every redb file is used: group commit (nothing acknowledged before its sync),
      # the per-namespace locks, reopening after an I/O error. Judged by the crate's
      # database, metadata and snapshot tests (the reopen is held end to end by the full-disk
      # test in daemon/tests/e2e/storage.rs).
      package=plinth-builtin-plugins
      features=metadata-redb,content-local,snapshotter-native,testsuite
      files=(builtin-plugins/src/redb_store.rs)
      filter=''
      re='.'
      ;;
    differ)
      # Applying a layer (every path resolved under the root, whiteouts, limits) and
      # comparing two trees into one, and the Diff service's checks of what it is given;
      # judged by the differ's tests (the hostile-layer table, the round trips) and the
      # service's.
      package=plinth-builtin-plugins
      features=differ-walking,diff-service,metadata-redb,content-local,snapshotter-native,snapshotter-overlayfs,testsuite
      files=(builtin-plugins/src/differ/apply.rs builtin-plugins/src/differ/apply/in_root.rs builtin-plugins/src/differ/compare.rs builtin-plugins/src/differ/plugin.rs builtin-plugins/src/diff_service.rs)
      filter='diff'
      re='.'
      ;;
    loader)
      package=plinth-dynamic-loader
      features=
      files=(dynamic-loader/src/loader.rs dynamic-loader/src/elf.rs dynamic-loader/src/permissions.rs dynamic-loader/src/fingerprint.rs dynamic-loader/src/abi.rs)
      re='.'
      ;;
    reload)
      # Live reloads in the plugin model: the planner, applying a plan, and how an instance
      # tells that something still holds it.
      package=plinth-core
      features=
      files=(core/src/reload/mod.rs core/src/reload/apply.rs core/src/init/instance.rs)
      filter='reload'
      re='.'
      ;;
    *)
      echo "unknown group $group (content, metadata, gc, removal, snapshots, storage, differ, loader, reload)" >&2
      exit 2
      ;;
  esac
  local args=(--package "$package" --test-package "$package" --re "$re" --timeout 300
    --output "target/mutants/$group")
  [ -z "$features" ] || args+=(--features "$features")
  for file in "${files[@]}"; do
    args+=(--file "$file")
  done
  mkdir -p "target/mutants/$group"
  echo "==> $group: ${files[*]}" >&2
  # Only the tests of the module under test run for each mutant (the crate's whole suite
  # takes minutes): its own tests and the conformance suite every implementation runs.
  local test_args=()
  [ -z "$filter" ] || test_args=(-- -- "$filter")
  # Exit codes: 0 all caught, 2 some missed, 3 some timed out; keep going either way.
  confined cargo mutants "${list[@]}" "${args[@]}" "${extra[@]}" "${test_args[@]}" || true
  if [ "$group" = loader ] && [ ${#list[@]} -eq 0 ]; then
    # Loading a real library (the entry, the header, the handover) is tested end to end:
    # `tests/tests/dynamic.rs` builds plinthd with the loader and one library per refusal.
    # It judges only the survivors of the unit tests (--iterate), as it takes ~15 s a mutant.
    echo "==> loader, survivors of its unit tests: judged by tests/tests/dynamic.rs" >&2
    confined cargo mutants "${args[@]}" "${extra[@]}" --iterate \
      --cargo-test-arg=-p --cargo-test-arg=plinth-tests --cargo-test-arg=--test=dynamic || true
  fi
}

for group in "${groups[@]}"; do
  run_group "$group"
done
