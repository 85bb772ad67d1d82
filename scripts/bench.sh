#!/usr/bin/env bash
# Boot benchmarks with real guests: bare qemu → ssh true vs banger create/run/stop,
# measured in the same run and reported as ratios (see test/e2e/bench_test.go).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
what="${1:-.}"
go test -tags e2e -count=1 -run '^$' -bench "$what" -benchtime 1x -timeout 60m -v ./test/e2e/
# Image pull vs `crane export | tar` + mkfs.ext4, on the e2e rootfs cache as one layer.
if [[ "Pull" =~ $what ]]; then
  cache="${BANGER_E2E_CACHE:-/var/cache/banger-e2e}"
  rootfs=""
  for d in "$cache"/rootfs-*; do
    # The rootfs trees have no dot in their name; lock and temp files do.
    if [ -d "$d" ] && [[ "$(basename "$d")" != *.* ]]; then rootfs="$d"; break; fi
  done
  if [ -n "$rootfs" ]; then
    tarf="$cache/bench-rootfs.tar"
    [ -s "$tarf" ] || tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarf" .
    BANGER_BENCH_ROOTFS_TAR="$tarf" go test -count=1 -run '^$' -bench Pull -benchtime 1x -v ./internal/image/
  fi
fi
