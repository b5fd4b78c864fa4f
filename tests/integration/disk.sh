#!/usr/bin/env bash
# Disk trouble on real file systems (tmpfs mounts this script makes): a read-only target and one too small
# for the model are refused before training, exit 2, one line; a disk that fills during training stops the
# run with one line naming the file, exit 1, no temporary file left, and the previous checkpoint intact (it
# resumes to the uninterrupted run's bytes once there is room again). Needs root (mount).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "disk test: needs root (mount)"; exit 1; }
work=$(mktemp -d)
say() { echo "[disk test] $*"; }
fail() { say "FAIL: $*"; exit 1; }
cleanup() { for m in ro small fills; do umount "$work/$m" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
dotnet publish src/DistributedBackprop.Cli -c Release -o out/dbp >/dev/null
dbp="$PWD/out/dbp/dbp"
mkdir -p "$work/ro" "$work/small" "$work/fills"
mount -t tmpfs -o ro,size=1m none "$work/ro"
mount -t tmpfs -o size=64k none "$work/small"
mount -t tmpfs -o size=2m none "$work/fills"

# one_line_error FILE: stderr is exactly one line and has no stack trace.
one_line_error() { [ "$(wc -l < "$1")" = 1 ] && ! grep -q "   at " "$1"; }

set +e
"$dbp" train --epochs 1 --out "$work/ro/model.safetensors" --progress plain >"$work/ro.out" 2>"$work/ro.err"; code=$?
set -e
[ "$code" = 2 ] || { cat "$work/ro.err"; fail "read-only --out: exit $code, not 2"; }
one_line_error "$work/ro.err" || { cat "$work/ro.err"; fail "read-only --out: not one line"; }
grep -q -- "--out: cannot write in $work/ro" "$work/ro.err" || { cat "$work/ro.err"; fail "read-only --out: the line does not name it"; }
grep -q "epoch" "$work/ro.out" && fail "read-only --out: training ran before the refusal"
say "read-only --out: $(cat "$work/ro.err")"

set +e
"$dbp" train --epochs 1 --layers 512 --out "$work/small/model.safetensors" --progress plain >"$work/small.out" 2>"$work/small.err"; code=$?
set -e
[ "$code" = 2 ] || { cat "$work/small.err"; fail "--out on a 64 KiB file system: exit $code, not 2"; }
one_line_error "$work/small.err" || { cat "$work/small.err"; fail "--out too small: not one line"; }
grep -q -- "--out: $work/small has .* MB free; model.safetensors needs about" "$work/small.err" || { cat "$work/small.err"; fail "--out too small: unclear line"; }
say "--out too small: $(cat "$work/small.err")"

# A disk that fills during training: checkpoints every 20 steps on a 2 MiB tmpfs; once the first is written, the
# run is stopped (SIGSTOP), a file takes all the room left, and the run goes on (SIGCONT). Without the stop this was
# a race the run could win: at 60 epochs it trained for ~0.15 s in all, and once finished between the first
# checkpoint and the filling in CI. 600 epochs (~0.7 s of training) leave the polling below ample time to stop it.
# If the run has already ended when it is stopped (a zombie, State Z) or written its model, the race was lost, not
# the test: it tries again, up to three times; a run that was stopped alive before its model must then fail on the
# full disk.
args=(--epochs 600 --layers 64 --seed 5)
"$dbp" train "${args[@]}" --out "$work/uninterrupted.safetensors" --progress none
set +e
for attempt in 1 2 3; do
  rm -f "$work/fills/"* "$work/model.safetensors"
  "$dbp" train "${args[@]}" --checkpoint "$work/fills/run.ckpt" --checkpoint-every 20 --out "$work/fills/model.safetensors" --progress none 2>"$work/fills.err" &
  run=$!
  for _ in $(seq 1 1000); do [ -f "$work/fills/run.ckpt" ] && break; sleep 0.005; done
  [ -f "$work/fills/run.ckpt" ] || fail "no checkpoint was written"
  kill -STOP "$run"
  state=$(awk '/^State:/ {print $2}' "/proc/$run/status" 2>/dev/null || echo gone)
  [ -f "$work/fills/model.safetensors" ] && state="$state, its model already written"
  dd if=/dev/zero of="$work/fills/ballast" bs=64k 2>/dev/null
  kill -CONT "$run" 2>/dev/null
  wait "$run"; code=$?
  [ "$state" = T ] && break
  say "attempt $attempt: the run had ended (state $state) before it could be stopped; again"
done
set -e
[ "$state" = T ] || fail "the run ended before the disk could be filled, three times"
say "full disk: the run stopped alive after its first checkpoint; $(df -k "$work/fills" | awk 'NR == 2 {print $4}') KB left after the filling; exit $code"
[ "$code" = 1 ] || { cat "$work/fills.err"; fail "full disk: exit $code, not 1"; }
one_line_error "$work/fills.err" || { cat "$work/fills.err"; fail "full disk: not one line"; }
grep -q "$work/fills/run.ckpt: cannot write (.*No space left on device" "$work/fills.err" || { cat "$work/fills.err"; fail "full disk: the line does not name the checkpoint"; }
leftovers=$(find "$work/fills" -name '*.tmp' | wc -l)
[ "$leftovers" = 0 ] || fail "full disk: $leftovers temporary file(s) left"
[ -f "$work/fills/model.safetensors" ] && fail "full disk: a model was written"
say "full disk: $(cat "$work/fills.err")"
rm "$work/fills/ballast"
"$dbp" train "${args[@]}" --resume "$work/fills/run.ckpt" --out "$work/resumed.safetensors" --progress none
cmp "$work/uninterrupted.safetensors" "$work/resumed.safetensors" || fail "the checkpoint left by the full disk does not resume to the same bytes"
say "PASS: refused before training (read-only, too small); full disk: one line, no temporary file, the checkpoint kept resumes to the same bytes"
