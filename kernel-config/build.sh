#!/usr/bin/env bash
# Builds the husk guest kernel (an uncompressed ELF vmlinux) from Debian's
# linux-source-6.12 package and the Kconfig fragment kernel-config/guest.config.
#
# Cache: ${HUSK_CACHE_DIR:-$HOME/.cache/husk}/kernel/
#   src/<debian-version>/         the unpacked source tree (unpacked once)
#   obj/<debian-version>/         kbuild object dir (O=), reused for incremental rebuilds
#   <debian-version>-<frag12>/    vmlinux + config  (frag12 = sha256 of guest.config, 12 hex)
#   logs/<key>.log                make output of the last build of that key
#   .lock                         flock: one build at a time
# A second run with the same inputs only checks the cache and prints "cached".
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
FRAGMENT="$SCRIPT_DIR/guest.config"
SRC_PKG=linux-source-6.12
TARBALL=/usr/src/$SRC_PKG.tar.xz
CACHE_ROOT="${HUSK_CACHE_DIR:-$HOME/.cache/husk}/kernel"

PRINT_PATH=0
FORCE=0

usage() {
  cat <<EOF
Usage: kernel-config/build.sh [--print-path] [--force] [--help]

Builds the stripped husk guest kernel (ELF vmlinux) from Debian's $SRC_PKG
source and kernel-config/guest.config, and caches it under
  ${CACHE_ROOT}/<debian-version>-<sha256(guest.config):12>/vmlinux

  --print-path  build if needed, then print only the vmlinux path on stdout
                (all progress goes to stderr):  KERNEL=\$(kernel-config/build.sh --print-path)
  --force       rebuild from a clean object dir even if the kernel is cached
  --help        this text

Environment: HUSK_CACHE_DIR (default \$HOME/.cache/husk), JOBS (default nproc).
Needs: $SRC_PKG, flex, bison, bc, libelf-dev, libssl-dev, build-essential
(scripts/setup.sh installs them).
EOF
}

for arg in "$@"; do
  case "$arg" in
    --print-path) PRINT_PATH=1 ;;
    --force) FORCE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "kernel: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

# All human-readable output goes to stderr; stdout carries only the path with --print-path.
say() { echo "kernel: $*" >&2; }
die() { echo "kernel: error: $*" >&2; exit 1; }

START=$(date +%s)

[ -f "$FRAGMENT" ] || die "fragment $FRAGMENT not found"

# --- Inputs: source package and fragment ------------------------------------------------
if [ ! -f "$TARBALL" ]; then
  say "$TARBALL missing; running scripts/setup.sh to install $SRC_PKG"
  "$REPO_DIR/scripts/setup.sh" </dev/null >&2 || die "scripts/setup.sh failed; install $SRC_PKG with apt"
  [ -f "$TARBALL" ] || die "$TARBALL still missing after scripts/setup.sh; install $SRC_PKG with apt"
fi

SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null || true)
if [ -z "$SRC_VERSION" ]; then
  # Not installed as a package (tarball copied in by hand): use the kernel version.
  SRC_VERSION=$(tar -xJOf "$TARBALL" "$SRC_PKG/Makefile" 2>/dev/null |
    awk -F' *= *' '/^VERSION/{v=$2} /^PATCHLEVEL/{p=$2} /^SUBLEVEL/{s=$2} END{if (v!="") print v"."p"."s}')
  [ -n "$SRC_VERSION" ] || die "cannot read the kernel version from $TARBALL"
fi
# Keep the version path-safe (Debian versions may contain ':' and '~').
SRC_VERSION_SAFE=$(printf '%s' "$SRC_VERSION" | tr -c 'A-Za-z0-9.+~_-' '_')

FRAG_HASH=$(sha256sum "$FRAGMENT" | cut -c1-12)
KEY="$SRC_VERSION_SAFE-$FRAG_HASH"
OUT_DIR="$CACHE_ROOT/$KEY"
VMLINUX="$OUT_DIR/vmlinux"
SRC_DIR="$CACHE_ROOT/src/$SRC_VERSION_SAFE"
OBJ_DIR="$CACHE_ROOT/obj/$SRC_VERSION_SAFE"
LOG_DIR="$CACHE_ROOT/logs"
LOG="$LOG_DIR/$KEY.log"

finish() {
  local how=$1
  local size
  size=$(stat -c %s "$VMLINUX")
  say "$how: $VMLINUX ($((size / 1024 / 1024)) MiB, $(($(date +%s) - START)) s)"
  if [ "$PRINT_PATH" = 1 ]; then
    echo "$VMLINUX"
  fi
  exit 0
}

if [ "$FORCE" = 0 ] && [ -f "$VMLINUX" ] && [ -f "$OUT_DIR/config" ]; then
  finish cached
fi

mkdir -p "$CACHE_ROOT" "$LOG_DIR"

# --- Lock: one build at a time per cache --------------------------------------------------
exec 9>"$CACHE_ROOT/.lock"
if ! flock -n 9; then
  say "another build holds $CACHE_ROOT/.lock; waiting"
  flock 9
fi
# Another run may have built it while we waited.
if [ "$FORCE" = 0 ] && [ -f "$VMLINUX" ] && [ -f "$OUT_DIR/config" ]; then
  finish cached
fi

# --- Build tools ---------------------------------------------------------------------------
missing=()
for tool in make gcc flex bison bc perl tar xz; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -f /usr/include/libelf.h ] || missing+=("libelf-dev")
[ -f /usr/include/openssl/ssl.h ] || missing+=("libssl-dev")
if [ ${#missing[@]} -gt 0 ]; then
  die "missing build tools: ${missing[*]}; run scripts/setup.sh"
fi

say "source $SRC_PKG $SRC_VERSION, fragment sha256 $FRAG_HASH"

# Work from a snapshot of the fragment, so an edit during the build cannot make the
# published kernel disagree with its cache key.
FRAG_SNAP=$(mktemp "$CACHE_ROOT/.fragment.XXXXXX")
trap 'rm -f "$FRAG_SNAP"' EXIT
cp "$FRAGMENT" "$FRAG_SNAP"
[ "$(sha256sum "$FRAG_SNAP" | cut -c1-12)" = "$FRAG_HASH" ] ||
  die "$FRAGMENT changed while this run started; run it again"

# --- Phase 1: unpack the source once ----------------------------------------------------------
if [ ! -f "$SRC_DIR/Makefile" ]; then
  say "[1/5] unpacking $TARBALL (about 30 s)"
  mkdir -p "$CACHE_ROOT/src"
  tmp_src=$(mktemp -d "$CACHE_ROOT/src/.unpack.XXXXXX")
  tar -xJf "$TARBALL" -C "$tmp_src" || { rm -rf "$tmp_src"; die "unpacking $TARBALL failed"; }
  [ -f "$tmp_src/$SRC_PKG/Makefile" ] || { rm -rf "$tmp_src"; die "$TARBALL has no $SRC_PKG/Makefile"; }
  rm -rf "$SRC_DIR"
  mv "$tmp_src/$SRC_PKG" "$SRC_DIR"
  rm -rf "$tmp_src"
else
  say "[1/5] source already unpacked in $SRC_DIR"
fi

if [ "$FORCE" = 1 ]; then
  say "--force: cleaning $OBJ_DIR"
  rm -rf "$OBJ_DIR"
fi
mkdir -p "$OBJ_DIR"
: >"$LOG"

# Runs make in the object dir with its output appended to the log; on failure prints the
# log's tail and exits.
run_make() {
  if ! make -C "$SRC_DIR" O="$OBJ_DIR" ARCH=x86_64 "$@" >>"$LOG" 2>&1 </dev/null; then
    say "make $* failed; last lines of $LOG:"
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

# --- Phase 2: configure ------------------------------------------------------------------------
say "[2/5] make allnoconfig + guest.config, olddefconfig"
KCONFIG_ALLCONFIG="$FRAG_SNAP" run_make allnoconfig
run_make olddefconfig

# --- Phase 3: every option the fragment sets must survive with the same value -------------
say "[3/5] checking every fragment option against .config"
CONFIG="$OBJ_DIR/.config"
bad=0
checked=0
while IFS= read -r line || [ -n "$line" ]; do
  if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
    sym=${BASH_REMATCH[1]}
    want=${BASH_REMATCH[2]}
    checked=$((checked + 1))
    got=$(grep -m1 -E "^$sym=" "$CONFIG" | cut -d= -f2- || true)
    if [ "$got" != "$want" ]; then
      if [ -z "$got" ]; then got="not set"; fi
      say "  DROPPED: $sym: fragment wants '$want', final .config has '$got'"
      bad=$((bad + 1))
    fi
  elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
    sym=${BASH_REMATCH[1]}
    checked=$((checked + 1))
    got=$(grep -m1 -E "^$sym=" "$CONFIG" | cut -d= -f2- || true)
    if [ -n "$got" ]; then
      say "  FORCED ON: $sym: fragment wants it unset, final .config has '$got'"
      bad=$((bad + 1))
    fi
  fi
done <"$FRAG_SNAP"
if [ "$bad" -gt 0 ]; then
  die "$bad of $checked fragment options did not survive Kconfig (see above): fix their dependencies in $FRAGMENT"
fi
say "  all $checked fragment options present with the requested values"

# --- Phase 4: build vmlinux ---------------------------------------------------------------------
JOBS=${JOBS:-$(nproc)}
say "[4/5] make -j$JOBS vmlinux (4-12 min on 2 cores from scratch; log: $LOG)"
build_start=$(date +%s)
make -C "$SRC_DIR" O="$OBJ_DIR" ARCH=x86_64 -j"$JOBS" vmlinux >>"$LOG" 2>&1 </dev/null &
make_pid=$!
# Compact progress: one line per 30 s with the number of objects compiled so far.
while kill -0 "$make_pid" 2>/dev/null; do
  for _ in $(seq 30); do
    kill -0 "$make_pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$make_pid" 2>/dev/null; then
    n=$(grep -cE '^\s+(CC|AS)\s' "$LOG" || true)
    say "  ... $(($(date +%s) - build_start)) s, $n files compiled"
  fi
done
if ! wait "$make_pid"; then
  say "make vmlinux failed; last lines of $LOG:"
  tail -n 40 "$LOG" >&2
  exit 1
fi
say "  vmlinux built in $(($(date +%s) - build_start)) s"

# --- Phase 5: publish atomically ----------------------------------------------------------------
say "[5/5] publishing to $OUT_DIR"
tmp_out=$(mktemp -d "$CACHE_ROOT/.out.XXXXXX")
cp "$OBJ_DIR/vmlinux" "$tmp_out/vmlinux"
cp "$OBJ_DIR/.config" "$tmp_out/config"
cp "$FRAG_SNAP" "$tmp_out/guest.config"
chmod 644 "$tmp_out/guest.config"
chmod 755 "$tmp_out"
# Replace an old copy (--force) with two renames, so the path is missing only between them.
old_out=""
if [ -e "$OUT_DIR" ]; then
  old_out="$CACHE_ROOT/.old.$KEY.$$"
  mv "$OUT_DIR" "$old_out"
fi
mv "$tmp_out" "$OUT_DIR"
if [ -n "$old_out" ]; then
  rm -rf "$old_out"
fi
finish built
