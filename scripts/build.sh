#!/usr/bin/env bash
# Builds husk's deployable binaries as static release executables (the guest agent and
# the functions run in a guest with no libc; the jailer execs the VMM inside a bare
# chroot). Output: target/x86_64-unknown-linux-gnu/release/. Prints that directory last.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
# With an explicit --target, RUSTFLAGS applies to the target artifacts only, not to
# build scripts and proc-macros (which cannot be static).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --target "$TARGET" --workspace --bins "$@" >&2
echo "$PWD/target/$TARGET/release"
