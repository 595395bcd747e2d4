#!/usr/bin/env bash
# Installs every Debian package husk needs to build, test and benchmark, and the nightly
# Rust toolchain the fuzz targets build with.
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
  # the API e2e test's HTTP client (curl --unix-socket)
  curl
  # husk image build: ext4 root filesystems without root (mkfs.ext4 -d, debugfs)
  e2fsprogs
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo)
fi

# The emulated test host downloads its L1 kernel package with `apt-get download`, which
# needs package lists that know a current linux-image-6.1.0-*-amd64-unsigned: refresh
# lists that are missing or older than a week even when every package is installed.
lists_fresh() {
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -7 2>/dev/null | head -n 1)" ] &&
    apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' 2>/dev/null | grep -q .
}

# The fuzz targets (vmm/fuzz; scripts/test builds them and runs each briefly) need a
# nightly toolchain for libFuzzer's coverage instrumentation; cargo-fuzz is not needed.
# Installed only when missing, with rustup's minimal profile.
if command -v rustup >/dev/null 2>&1; then
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "setup: installing the nightly Rust toolchain (minimal profile) for the fuzz targets"
    rustup toolchain install nightly --profile minimal
  fi
else
  echo "setup: rustup not found; the fuzz step of scripts/test needs a nightly toolchain" >&2
fi

if [ ${#missing[@]} -eq 0 ]; then
  if ! lists_fresh; then
    echo "setup: refreshing Debian package lists (older than a week, or no L1 kernel package listed)"
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get update -q
  fi
  echo "setup: all ${#PACKAGES[@]} Debian packages present"
  exit 0
fi

if [ ${#SUDO[@]} -gt 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "setup: not root and no sudo; install as root: ${missing[*]}" >&2
  exit 1
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
echo "setup: done"
