#!/usr/bin/env bash
# Runs on a KVM host (started by scripts/demo through husk-testhost): boots one
# sandbox, invokes it once, stops it. Inputs come from the environment scripts/demo sets.
set -euo pipefail
: "${HUSK_KERNEL:?} ${HUSK_BIN_DIR:?} ${HUSK_DEMO_INITRD:?} ${HUSK_DEMO_PAYLOAD:?}"
HUSK=$HUSK_BIN_DIR/husk
WORK=$(mktemp -d /tmp/husk-demo.XXXXXX)
UDS=$WORK/vsock.sock

start_ns=$(date +%s%N)
"$HUSK" run --kernel "$HUSK_KERNEL" --initrd "$HUSK_DEMO_INITRD" --mem-mib 128 \
  --vsock-cid 3 --vsock-uds "$UDS" --entropy --console "$WORK/console.log" \
  --boot-timer --boot-timeout-secs 120 2>"$WORK/husk.log" &
HUSK_PID=$!
cleanup() {
  kill "$HUSK_PID" 2>/dev/null || true
  wait "$HUSK_PID" 2>/dev/null || true
}
trap cleanup EXIT

set +e
"$HUSK" invoke --uds "$UDS" --payload "$HUSK_DEMO_PAYLOAD" --wait-ready-ms 120000 \
  --timings >"$WORK/body" 2>"$WORK/invoke.log"
rc=$?
set -e
end_ns=$(date +%s%N)

echo "== result (husk invoke exit status $rc) =="
cat "$WORK/body"; echo
echo "== timings =="
grep -i "ready" "$WORK/husk.log" | sed 's/^/husk:   /' || echo "husk:   (no ready marker line; see below)"
sed 's/^/invoke: /' "$WORK/invoke.log"
echo "total:  VMM start -> result received: $(( (end_ns - start_ns) / 1000000 )) ms"
if [ "$rc" -ne 0 ]; then
  echo "== husk log ==" ; cat "$WORK/husk.log"
  echo "== guest console ==" ; tail -n 40 "$WORK/console.log"
fi
exit "$rc"
