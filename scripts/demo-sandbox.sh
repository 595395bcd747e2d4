#!/usr/bin/env bash
# Runs on a KVM host (started by scripts/demo through husk-testhost): the headline job.
#  1. boot: a sandbox boots the function cold and answers one invocation;
#  2. pool: `husk pool --function` boots the function again, warms it with one
#     invocation, snapshots it, and keeps 2 sandboxes restored from that snapshot ready;
#     HUSK_DEMO_INVOCATIONS invocations go through the pool's socket, each served by a
#     fresh restored sandbox (destroyed afterwards);
#  3. restore: HUSK_DEMO_RESTORES sandboxes restored by hand from the pool's snapshot
#     (`husk snapshot restore`, Restored handshake, one invocation each);
# then prints boot -> first response beside restore -> first response and the pool's
# request -> result.
# Inputs come from the environment scripts/demo sets.
set -euo pipefail
: "${HUSK_KERNEL:?} ${HUSK_BIN_DIR:?} ${HUSK_DEMO_INITRD:?} ${HUSK_DEMO_PAYLOAD:?}"
RESTORES=${HUSK_DEMO_RESTORES:-3}
INVOCATIONS=${HUSK_DEMO_INVOCATIONS:-4}
HUSK=$HUSK_BIN_DIR/husk
WORK=$(mktemp -d /tmp/husk-demo.XXXXXX)
BASE="console=ttyS0 reboot=k panic=0 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
fail() {
  echo "demo: $1" >&2
  for f in "$WORK"/*.log; do echo "== $f ==" >&2; tail -n 30 "$f" >&2; done
  exit 1
}

# 1. Cold boot -> first response.
t0=$(now_ms)
"$HUSK" run --kernel "$HUSK_KERNEL" --initrd "$HUSK_DEMO_INITRD" --mem-mib 128 \
  --vsock-cid 3 --vsock-uds "$WORK/boot.sock" --entropy --console "$WORK/boot-console.log" \
  --boot-timer --boot-timeout-secs 120 2>"$WORK/boot-husk.log" &
PIDS+=($!)
"$HUSK" invoke --uds "$WORK/boot.sock" --payload "$HUSK_DEMO_PAYLOAD" --wait-ready-ms 120000 \
  >"$WORK/boot.body" 2>"$WORK/boot-invoke.log" || fail "the cold-booted sandbox did not answer"
boot_ms=$(( $(now_ms) - t0 ))
kill "${PIDS[0]}" 2>/dev/null || true
echo "== boot: a cold sandbox =="
echo "result:  $(cat "$WORK/boot.body")"
grep -h "guest ready after" "$WORK/boot-husk.log" | sed 's/^/         /' || true
echo "boot -> first response: $boot_ms ms"

# 2. The pool: boot, warm with one invocation, snapshot, restore 2 sandboxes ahead.
t0=$(now_ms)
"$HUSK" pool --function "$HUSK_DEMO_INITRD" --kernel "$HUSK_KERNEL" \
  --warm-payload "$HUSK_DEMO_PAYLOAD" --keep-snapshot --size 2 --work-dir "$WORK/pool" \
  --socket "$WORK/pool.sock" --status-file "$WORK/pool.json" 2>"$WORK/pool.log" &
pool_pid=$!
PIDS+=("$pool_pid")
# One blocking reader for the pool's "ready" line, not a polling loop.
mkfifo "$WORK/pool.fifo"
timeout 180 tail -n +1 -f --pid="$pool_pid" "$WORK/pool.log" >"$WORK/pool.fifo" &
tail_pid=$!
grep -m1 -q "sandbox(es) ready" <"$WORK/pool.fifo" || fail "husk pool did not get ready"
kill "$tail_pid" 2>/dev/null || true
pool_ready_ms=$(( $(now_ms) - t0 ))
snap=$WORK/pool/function
echo
echo "== pool: husk pool --function boots it, warms it (one invocation), snapshots it, restores 2 ahead =="
sed -n 's/^husk pool: //p' "$WORK/pool.log"
echo "state file $(stat -c %s "$snap.state") bytes; memory file" \
  "$(( $(stat -c %s "$snap.mem") >> 20 )) MiB apparent," \
  "$(( $(stat -c %b "$snap.mem") * $(stat -c %B "$snap.mem") >> 10 )) KiB allocated;" \
  "2 sandboxes ready $pool_ready_ms ms after the pool started"
echo
echo "== $INVOCATIONS invocations through the pool (husk invoke --uds pool.sock), each on a fresh sandbox =="
pool_ms=()
for i in $(seq 1 "$INVOCATIONS"); do
  # Low rate: wait until the pool has refilled (2 ready) before each request.
  for _ in $(seq 1 300); do
    grep -q '"ready":2' "$WORK/pool.json" 2>/dev/null && break
    sleep 0.1
  done
  "$HUSK" invoke --uds "$WORK/pool.sock" --payload "$HUSK_DEMO_PAYLOAD" --timings \
    >"$WORK/p$i.body" 2>"$WORK/p$i.log" || fail "pool invocation $i failed"
  # request -> result = connect (the pool hands over a ready sandbox) + round trip.
  line=$(grep -h "husk invoke: sandbox" "$WORK/p$i.log")
  us=$(sed -n 's/.*connect+hello \([0-9]*\) us, round trip \([0-9]*\) us.*/\1 \2/p' <<<"$line")
  ms=$(awk -v a="${us% *}" -v b="${us#* }" 'BEGIN { printf "%.1f", (a + b) / 1000 }')
  pool_ms+=("$ms")
  sb=$(sed -n 's/.*sandbox \([^ ]*\) generation \([0-9]*\).*/\1 (restore generation \2)/p' <<<"$line")
  echo "invocation $i: result $(cat "$WORK/p$i.body") from sandbox $sb; request -> result $ms ms"
done
restore_mean=$(sed -n 's/.*"restore_ms_mean":\([0-9]*\).*/\1/p' "$WORK/pool.json")
restored=$(sed -n 's/.*"restored":\([0-9]*\).*/\1/p' "$WORK/pool.json")
kill -TERM "$pool_pid"
wait "$pool_pid" || fail "husk pool did not stop cleanly"
echo "$(tail -n 1 "$WORK/pool.log")"

# 3. Restores by hand from the pool's snapshot: restore -> first response.
echo
echo "== restore: $RESTORES sandbox(es) restored from that snapshot by husk snapshot restore =="
restore_ms=()
for i in $(seq 1 "$RESTORES"); do
  sock=$WORK/r$i.sock
  log=$WORK/restore-$i.log
  t0=$(now_ms)
  "$HUSK" snapshot restore --boot-timer --snapshot-path "$snap.state" \
    --mem-file-path "$snap.mem" --vsock-uds "$sock" --sandbox-id "demo-$i" \
    --console null 2>"$log" &
  pid=$!
  PIDS+=("$pid")
  # --wait-ready-ms covers the socket appearing and the agent refusing invocations
  # until husk's Restored handshake reached it (the invocation is sent again).
  "$HUSK" invoke --uds "$sock" --payload "$HUSK_DEMO_PAYLOAD" --wait-ready-ms 10000 \
    >"$WORK/r$i.body" 2>"$WORK/r$i-invoke.log" || fail "restored sandbox $i did not answer"
  ms=$(( $(now_ms) - t0 ))
  restore_ms+=("$ms")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "sandbox demo-$i: result $(cat "$WORK/r$i.body"); $(grep -h "snapshot loaded in" "$log" | sed 's/^husk: //');" \
    "restore -> first response $ms ms"
done

median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
rmed=$(median "${restore_ms[@]}")
pmed=$(median "${pool_ms[@]}")
echo
echo "== boot vs restore vs pool (same function, same host, this run) =="
printf '%-48s %8s ms\n' "boot -> first response (cold boot)" "$boot_ms"
printf '%-48s %8s ms   (median of %s)\n' "restore -> first response (husk snapshot restore)" "$rmed" "$RESTORES"
printf '%-48s %8s ms   (mean of the pool'"'"'s %s restores)\n' "restore -> ready (in the pool)" "$restore_mean" "$restored"
printf '%-48s %8s ms   (median of %s: %s)\n' "pool: request -> result (sandbox restored ahead)" "$pmed" \
  "$INVOCATIONS" "$(IFS=,; echo "${pool_ms[*]}")"
awk -v b="$boot_ms" -v r="$rmed" -v p="$pmed" 'BEGIN {
  if (r > 0) printf "restore -> first response / boot -> first response = %.2f (%.1fx faster)\n", r / b, b / r
  if (p > 0) printf "pool request -> result / boot -> first response = %.3f (%.0fx faster)\n", p / b, b / p }'
