#!/usr/bin/env bash
# Shared by scripts/mutants.sh and scripts/fuzz.sh, which run code that may write where it
# must not: a mutant, or a fuzzed input that finds a bug. As root, a mutant of the code that
# keeps writes inside a directory can write anywhere: a mutant of the layer applier's name
# cleaning removed the whole /etc of the machine running this (2026-12-01). So as root
# `confined COMMAND...` runs the command confined: a private mount namespace where / is
# read-only, with only this tree (target/ included: keep CARGO_TARGET_DIR inside it),
# cargo's and rustup's homes writable and a fresh tmpfs on /tmp, where the tests and the
# fuzz targets make their directories. A write outside those fails
# with EROFS, which fails the test (the mutant counts as caught) or crashes the fuzz target
# (a finding), and nothing is lost. As another user it runs the command as it is.
confined() {
  if [ "$(id -u)" != 0 ] || [ -n "${PLINTH_CONFINED:-}" ]; then
    "$@"
    return
  fi
  command -v unshare >/dev/null || {
    echo "confine: unshare (util-linux) is needed to confine a run as root" >&2
    exit 1
  }
  PLINTH_CONFINED=1 unshare --mount --propagation private -- bash -c '
    set -e
    for dir in "$PWD" "${CARGO_HOME:-$HOME/.cargo}" "${RUSTUP_HOME:-$HOME/.rustup}"; do
      if [ -d "$dir" ]; then mount --bind "$dir" "$dir"; fi
    done
    mount -o remount,bind,ro /
    mount -t tmpfs -o size=16g,mode=1777 tmpfs /tmp
    # The working directory was resolved before the tree was mounted over itself: enter
    # it again, through the writable mount.
    cd "$PWD"
    exec "$@"' confined "$@"
}
