#!/usr/bin/env bash
# Runs e2e test binaries one after another inside a KVM host session and reports;
# scripts/test runs it once per test binary (one husk-testhost session each).
# Usage: tests/run-e2e.sh TEST_BINARY...
# Counts individual tests from libtest's "test result:" lines; a binary that ends
# without one (crash, abort) counts as one failed test. Tests inside a binary run one
# at a time unless RUST_TEST_THREADS is set. Ends with "e2e: N passed, N failed" and
# exits non-zero if anything failed or no binary was given.
set -uo pipefail
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-1}
passed=0
failed=0
failed_bins=()
if [ $# -eq 0 ]; then
  echo "run-e2e: no e2e test binaries given" >&2
  echo "e2e: 0 passed, 0 failed"
  exit 1
fi
log=$(mktemp)
for bin in "$@"; do
  name=$(basename "$bin" | sed 's/-[0-9a-f]\{16\}$//')
  echo "=== e2e: $name"
  start=$(date +%s.%N)
  "$bin" --show-output 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  summary=$(grep -E '^test result: ' "$log" | tail -n 1)
  p=$(sed -n 's/.* \([0-9]\+\) passed;.*/\1/p' <<<"$summary")
  f=$(sed -n 's/.* \([0-9]\+\) failed;.*/\1/p' <<<"$summary")
  p=${p:-0}
  f=${f:-0}
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1  # crashed or aborted without a summary
  fi
  passed=$((passed + p))
  failed=$((failed + f))
  [ "$f" -eq 0 ] || failed_bins+=("$name")
  echo "=== e2e: $name: $p passed, $f failed, exit $rc, ${secs} s"
done
rm -f "$log"
[ ${#failed_bins[@]} -eq 0 ] || echo "e2e: failed binaries: ${failed_bins[*]}"
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
