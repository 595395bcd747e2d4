#!/usr/bin/env bash
# Runs e2e test binaries one after another inside a KVM host session and reports;
# scripts/test runs it once per test binary (one husk-testhost session each).
# Usage: tests/run-e2e.sh TEST_BINARY...
# Counts individual tests from libtest's "test result:" lines; a binary that ends
# without one (crash, abort) counts as one failed test. Tests inside a binary run one
# at a time unless RUST_TEST_THREADS is set.
# Figures: functions marked #[ignore = "figure, ..."] are benchmarks (boot times, the
# QEMU peer boot), not tests. Unless HUSK_E2E_FIGURES=0, each binary is run a second time
# with --ignored to print them; they are reported as "figures: N produced, N failed" and
# never counted as tests. Ends with "e2e: N passed, N failed" and exits non-zero if a
# test failed or no binary was given (a failed figure is reported, not a test failure).
set -uo pipefail
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-1}
passed=0
failed=0
failed_bins=()
fig_done=0
fig_failed=0
fig_failed_bins=()
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
  # The figures of this binary (its ignored functions), if it has any.
  n=0
  if [ "${HUSK_E2E_FIGURES:-1}" != 0 ]; then
    n=$("$bin" --list --ignored 2>/dev/null | grep -c ': test$')
  fi
  if [ "$n" -gt 0 ]; then
    echo "=== figures: $name ($n, benchmarks: not counted as tests)"
    start=$(date +%s.%N)
    "$bin" --ignored --show-output 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    summary=$(grep -E '^test result: ' "$log" | tail -n 1)
    p=$(sed -n 's/.* \([0-9]\+\) passed;.*/\1/p' <<<"$summary")
    f=$(sed -n 's/.* \([0-9]\+\) failed;.*/\1/p' <<<"$summary")
    p=${p:-0}
    f=${f:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
      f=1
    fi
    echo "=== figures: $name: $p produced, $f failed, exit $rc, ${secs} s"
    fig_done=$((fig_done + p))
    fig_failed=$((fig_failed + f))
    [ "$f" -eq 0 ] || fig_failed_bins+=("$name")
  fi
done
rm -f "$log"
[ ${#failed_bins[@]} -eq 0 ] || echo "e2e: failed binaries: ${failed_bins[*]}"
[ ${#fig_failed_bins[@]} -eq 0 ] || echo "figures: failed in: ${fig_failed_bins[*]}"
echo "figures: $fig_done produced, $fig_failed failed (not counted as tests)"
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
