#!/usr/bin/env bash
# Runs on a KVM host (started by scripts/demo through husk-testhost): the headline job.
#  1. boot: a sandbox boots the function cold and answers one invocation;
#  2. snapshot: a second sandbox boots, and `husk snapshot create --at-ready` pauses and
#     saves it once its function is loaded and warm (the agent's ready marker);
#  3. restore: HUSK_DEMO_RESTORES invocations, each served by a fresh sandbox restored
#     from that snapshot (its own `husk snapshot restore` process, vsock socket and
#     sandbox id; husk sends the agent Restored with fresh entropy first);
# then prints boot -> first response beside restore -> first response.
# Inputs come from the environment scripts/demo sets.
set -euo pipefail
: "${HUSK_KERNEL:?} ${HUSK_BIN_DIR:?} ${HUSK_DEMO_INITRD:?} ${HUSK_DEMO_PAYLOAD:?}"
RESTORES=${HUSK_DEMO_RESTORES:-3}
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

# 2. Boot again and snapshot at ready (the function loaded and warm), in one command.
t0=$(now_ms)
"$HUSK" snapshot create --at-ready --snapshot-path "$WORK/fn.state" \
  --mem-file-path "$WORK/fn.mem" -- --kernel "$HUSK_KERNEL" --initrd "$HUSK_DEMO_INITRD" \
  --mem-mib 128 --vsock-cid 3 --vsock-uds "$WORK/snap.sock" --entropy --console null \
  --boot-timeout-secs 120 --cmdline "$BASE husk.await_restore=1" 2>"$WORK/snapshot.log" \
  || fail "husk snapshot create --at-ready failed"
snap_ms=$(( $(now_ms) - t0 ))
echo
echo "== snapshot: boot, wait for ready, pause, save (husk snapshot create --at-ready) =="
echo "took $snap_ms ms; state file $(stat -c %s "$WORK/fn.state") bytes;" \
  "memory file $(( $(stat -c %s "$WORK/fn.mem") >> 20 )) MiB apparent," \
  "$(( $(stat -c %b "$WORK/fn.mem") * $(stat -c %B "$WORK/fn.mem") >> 10 )) KiB allocated"

# 3. Each invocation on a fresh restored sandbox.
echo
echo "== restore: $RESTORES invocations, each on a fresh sandbox restored from the snapshot =="
restore_ms=()
for i in $(seq 1 "$RESTORES"); do
  sock=$WORK/r$i.sock
  log=$WORK/restore-$i.log
  t0=$(now_ms)
  "$HUSK" snapshot restore --boot-timer --snapshot-path "$WORK/fn.state" \
    --mem-file-path "$WORK/fn.mem" --vsock-uds "$sock" --sandbox-id "demo-$i" \
    --console null 2>"$log" &
  pid=$!
  PIDS+=("$pid")
  # The agent refuses invocations until husk's Restored handshake is through (the
  # snapshot was booted with husk.await_restore=1): wait for husk to report it. One
  # blocking reader, not a polling loop: under emulation every extra process costs ms.
  mkfifo "$WORK/r$i.fifo"
  timeout 60 tail -n +1 -f --pid="$pid" "$log" >"$WORK/r$i.fifo" &
  tail_pid=$!
  grep -m1 -q "agent restored" <"$WORK/r$i.fifo" || fail "restore $i: no Restored handshake"
  kill "$tail_pid" 2>/dev/null || true
  "$HUSK" invoke --uds "$sock" --payload "$HUSK_DEMO_PAYLOAD" --wait-ready-ms 10000 \
    >"$WORK/r$i.body" 2>"$WORK/r$i-invoke.log" || fail "restored sandbox $i did not answer"
  ms=$(( $(now_ms) - t0 ))
  restore_ms+=("$ms")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "sandbox demo-$i: result $(cat "$WORK/r$i.body"); $(grep -h "snapshot loaded in" "$log" | sed 's/^husk: //');" \
    "restore -> first response $ms ms"
done

sorted=$(printf '%s\n' "${restore_ms[@]}" | sort -n)
median=$(echo "$sorted" | sed -n "$(( (RESTORES + 1) / 2 ))p")
echo
echo "== boot vs restore (same function, same host, this run) =="
printf '%-40s %8s ms\n' "boot -> first response (cold boot)" "$boot_ms"
printf '%-40s %8s ms   (median of %s: %s)\n' "restore -> first response (snapshot)" "$median" \
  "$RESTORES" "$(echo $sorted | tr ' ' ',')"
awk -v b="$boot_ms" -v r="$median" 'BEGIN { if (r > 0) printf "restore -> first response / boot -> first response = %.2f (%.1fx faster)\n", r / b, b / r }'
