#!/usr/bin/env bash
# Installs every Debian package husk needs to build, test and benchmark.
# Idempotent: packages already installed are skipped; apt runs only when something is missing.
# Uses sudo only when not root. Safe to run without a terminal (CI=true, no stdin).
set -euo pipefail

PACKAGES=(
  # emulated KVM test host (L1) and the reference peer (QEMU microvm)
  qemu-system-x86
  busybox-static
  cpio
  xz-utils
  kmod
  # guest kernel build (kernel-config/build.sh)
  linux-source-6.12
  build-essential
  flex
  bison
  bc
  libelf-dev
  libssl-dev
  python3
  # jailer tests (ip netns) and measuring seccomp allowlists (strace in the test host)
  iproute2
  strace
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} Debian packages present"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "setup: not root and no sudo; install as root: ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
echo "setup: done"
