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
# All-in-one mode: banger, bangerd and the VMs as root (split mode, the
# daemon as your user with a root helper, is in the README).
export BANGER_ALLOW_ROOT=1
bin=$PWD/bin
# Downloads (apt-get, mmdebstrap) need the host's network, so kernel import and
# image build run with a daemon in the host namespace; that daemon creates no
# bridge or TAP (those appear only when a VM starts). It is then stopped, and
# the VM runs under a daemon auto-started inside the namespace.
stop_daemon() {
  "$bin/banger" daemon stop >/dev/null
  while "$bin/banger" daemon status >/dev/null 2>&1; do sleep 0.2; done
}
stop_daemon # a daemon left in the namespace by an earlier run cannot download
export BANGER_DNS=off # the download-only daemon serves no DNS
"$bin/banger" kernel list --json | grep -q '"name"' || "$bin/banger" kernel import --debian
"$bin/banger" image list --json | grep -q '"default"' || "$bin/banger" image build default
stop_daemon
unset BANGER_DNS
ns=banger-qs
ip netns list | grep -qw "$ns" || { ip netns add "$ns"; ip -n "$ns" link set lo up; }
b() { ip netns exec "$ns" "$bin/banger" "$@"; }
b doctor || true
b vm run --rm -- uname -a
