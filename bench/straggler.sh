#!/usr/bin/env bash
# A worker at half speed among three. `dbp serve` + 3 `dbp worker` processes over loopback, each worker in a
# cgroup (v1 cpu controller) with a CPU quota: healthy workers 0.5 CPU each, the slow one 0.25 (half speed);
# the server has no quota. Three runs per round, interleaved: all healthy; one slow with even dealing
# (dbp.dealing = even: equal shares whatever the speeds); one slow with proportional dealing (the default).
# Reports the median samples/s of epochs 3.. (the first include JIT warm-up and the first pace measurements)
# and each slow run's ratio to the healthy one. 784-256-128-10 on Fashion-MNIST, global batch 2048, so that a
# step is mostly compute (with batch 256 the workers were busy 10-40 % of a step and a slow one hardly
# mattered), 8 chunks (DBP_CHUNKS=16: finer shares; 3 workers with one at half speed can at best
# reach 0.75x of the healthy rate with 8 chunks — 4 slow chunk-times against 3 — and 0.86x with 16).
#   sudo bash bench/straggler.sh [rounds] [epochs]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/join-line.sh   # worker_arguments
rounds=${1:-2}; epochs=${2:-12}
[ "$(id -u)" = 0 ] || { echo "straggler bench: needs root (cgroups)"; exit 1; }
cpu=/sys/fs/cgroup/cpu
[ -f "$cpu/cpu.cfs_quota_us" ] || { echo "straggler bench: needs the cgroup v1 cpu controller at $cpu"; exit 1; }
dbp=src/DistributedBackprop.Cli/bin/Release/net10.0/dbp
[ -x "$dbp" ] || dotnet build -c Release src/DistributedBackprop.Cli >/dev/null
work=$(mktemp -d)
groups=()
cleanup() {
  pkill -9 -f "$work/state" 2>/dev/null || true
  for g in "${groups[@]}"; do rmdir "$g" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
# quota_group NAME QUOTA_US: a cgroup allowed QUOTA_US of CPU time per 4 ms. A short period makes the quota a
# steady slow-down at the scale of a step (milliseconds): with the default 100 ms, a worker runs at full speed
# for its quota and then stops for the rest of the period, which is not a slow worker but a stalling one.
quota_group() {
  local g="$cpu/dbp-straggler-$$-$1"
  mkdir -p "$g"; echo 4000 > "$g/cpu.cfs_period_us"; echo "$2" > "$g/cpu.cfs_quota_us"; groups+=("$g"); echo "$g"
}
healthy=(); for i in 1 2 3; do healthy+=("$(quota_group "w$i" 2000)"); done
slow=$(quota_group slow 1000)
echo 'dbp.dealing = even' > "$work/even.hocon"
echo 'dbp.dealing = proportional' > "$work/proportional.hocon"
chunks=${DBP_CHUNKS:-8}
data=${DBP_FMNIST:-../shared/datasets/fashion-mnist}
args=(--data "$data" --layers 256,128 --batch-size 2048 --chunks "$chunks" --epochs "$epochs" --optimizer sgd --lr 0.05 --progress none)
median() { python3 -c "import json,statistics,sys; r=[json.loads(l)['samples_per_second'] for l in open(sys.argv[1])][2:]; print(round(statistics.median(r)))" "$1"; }

# run NAME DEALING SLOW(0|1): one cluster run; prints its median samples/s.
run() {
  local name=$1 dealing=$2 with_slow=$3
  rm -rf "$work/state"
  "$dbp" serve "${args[@]}" --port 0 --min-workers 3 --cluster-config "$work/$dealing.hocon" --metrics "$work/$name.jsonl" \
    --state-dir "$work/state" --token-file "$work/state/token" >"$work/$name.out" 2>"$work/$name.err" &
  local server=$!
  local arguments join
  arguments=$(worker_arguments "$work/$name.err") || { kill "$server"; exit 1; }
  read -r -a join <<<"$arguments"
  local workers=()
  for i in 0 1 2; do
    "$dbp" "${join[@]}" --name "w$i" >"$work/$name-w$i.log" 2>&1 &
    workers+=($!)
    local group=${healthy[$i]}
    [ "$with_slow" = 1 ] && [ "$i" = 2 ] && group=$slow
    echo $! > "$group/cgroup.procs"
  done
  wait "$server"
  for _ in $(seq 1 150); do kill -0 "${workers[@]}" 2>/dev/null || break; sleep 0.1; done
  for i in 0 1 2; do
    if kill -0 "${workers[$i]}" 2>/dev/null; then
      echo "straggler bench: worker w$i of run $name had not exited 15 s after the server (last lines below)" >&2
      tail -3 "$work/$name-w$i.log" >&2; kill -9 "${workers[$i]}"
    fi
  done
  wait
  median "$work/$name.jsonl"
}

for r in $(seq 1 "$rounds"); do
  h=$(run healthy proportional 0)
  e=$(run slow-even even 1)
  p=$(run slow-proportional proportional 1)
  echo "round $r: all healthy $h samples/s; one at half speed: even dealing $e ($(python3 -c "print(round($e/$h, 3))")x), proportional dealing $p ($(python3 -c "print(round($p/$h, 3))")x)"
done
