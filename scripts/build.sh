#!/usr/bin/env bash
# Builds banger, bangerd and the static banger-agent into ./bin.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
mkdir -p bin
go build -o bin/banger ./cmd/banger
go build -o bin/bangerd ./cmd/bangerd
CGO_ENABLED=0 go build -ldflags='-s -w' -o bin/banger-agent ./cmd/banger-agent
