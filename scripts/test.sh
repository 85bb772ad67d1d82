#!/usr/bin/env bash
# Runs every test tier: vet, unit tests with the race detector, and the e2e
# suite that boots real guests under QEMU inside a test-made network namespace.
# Large assets (kernel .deb, debootstrapped rootfs, opencode npm tarball) are cached outside the
# clone in $BANGER_E2E_CACHE (default /var/cache/banger-e2e), keyed by inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
scripts/install-deps.sh
echo "== go vet"
go vet ./...
go vet -tags e2e ./test/e2e/...
echo "== staticcheck (pinned)"
staticcheck=honnef.co/go/tools/cmd/staticcheck@v0.8.2
go run "$staticcheck" ./...
go run "$staticcheck" -tags e2e ./test/e2e/...
echo "== shellcheck"
shellcheck scripts/*.sh .ci/run
echo "== go test -race ./..."
go test -race -count=1 ./...
echo "== e2e (real guests)"
go test -tags e2e -count=1 -timeout 50m -v ./test/e2e/... 2>&1 | tee /tmp/banger-e2e.log
rc="${PIPESTATUS[0]}"
[ "$rc" = 0 ] || exit "$rc"

echo "== QEMU driver e2e (real QEMU, the kernel the e2e suite cached)"
cache="${BANGER_E2E_CACHE:-/var/cache/banger-e2e}"
deb=""
for f in "$cache"/kernel/linux-image-*.deb; do [ -f "$f" ] && deb="$f"; done
if [ -z "$deb" ]; then
  echo "no cached kernel .deb under $cache/kernel" >&2
  exit 1
fi
vmlinuz="${deb%.deb}.vmlinuz"
if [ ! -s "$vmlinuz" ]; then
  dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards './boot/vmlinuz-*' > "$vmlinuz.tmp"
  mv "$vmlinuz.tmp" "$vmlinuz"
fi
BANGER_TEST_KERNEL="$vmlinuz" go test -tags e2e -count=1 -timeout 10m -v ./internal/vmm/qemu/
