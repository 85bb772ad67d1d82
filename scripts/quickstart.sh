#!/usr/bin/env bash
# The main job on a fresh Debian/Ubuntu machine, as root: install host
# packages, build, import the Debian cloud kernel, build the default image,
# and run `uname -a` in a fresh VM. Re-running reuses the kernel and image.
#
# VM networking lives in a network namespace of its own (banger-qs), so the
# bridge and TAPs never touch the host's interfaces.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
scripts/install-deps.sh
scripts/build.sh
export BANGER_STATE_DIR="${BANGER_STATE_DIR:-/var/lib/banger-quickstart}"
ns=banger-qs
ip netns list | grep -qw "$ns" || { ip netns add "$ns"; ip -n "$ns" link set lo up; }
b() { ip netns exec "$ns" ./bin/banger "$@"; }
b kernel list --json | grep -q '"name"' || b kernel import --debian
b image list --json | grep -q '"default"' || b image build default
b doctor || true
b vm run --rm -- uname -a
