#!/usr/bin/env bash
# Boot benchmarks with real guests: bare qemu → ssh true vs banger create/run/stop,
# measured in the same run and reported as ratios (see test/e2e/bench_test.go).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
go test -tags e2e -count=1 -run '^$' -bench "${1:-.}" -benchtime 1x -timeout 60m -v ./test/e2e/
