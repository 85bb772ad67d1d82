#!/usr/bin/env bash
# Installs the host packages banger needs on Debian/Ubuntu (run as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# uidmap: newuidmap/newgidmap for mmdebstrap --mode=unshare (image build as the owner).
pkgs=(qemu-system-x86 qemu-utils mmdebstrap uidmap e2fsprogs iproute2 nftables dpkg-dev apt-utils cpio
      xfsprogs kmod ca-certificates git xz-utils zstd lz4 openssh-client procps shellcheck
      systemd) # systemd: systemd-analyze verify on the units of `banger system install` (internal/sysinstall)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  echo "note: add /usr/local/go/bin to PATH" >&2
fi
