#!/usr/bin/env bash
# What a step costs in CPU, local mode against the loopback cluster, and the fastest the cluster could then be on
# this host's cores. Runs `dbp train --workers 2` and `dbp serve` + 2 `dbp worker` processes (secure, then
# `--insecure`; the same arguments as bench/cluster-vs-local.sh: 784-256-128-10, Fashion-MNIST, global batch 256)
# for SHORT and for LONG epochs, takes each process's user + system CPU (/usr/bin/time), the run's wall time (of `train`
# or `serve`) and the metrics' steps, and divides the differences by the steps between them, so start-up and data loading cancel out
# (each epoch's evaluation stays in, in every mode alike). For each mode: CPU ms per step, wall ms per step, cores
# busy, and the cluster's ceiling against local mode: local wall per step ÷ (cluster CPU per step ÷ cores). At the
# CPU a step measured (this code's transport, sealing and idle spinning included) no schedule of the cluster's
# threads can beat that ceiling on this host; only less CPU a step or more cores can. The last line is one JSON object.
#   bash bench/cpu-per-step.sh [SHORT] [LONG]          (default 2 and 8 epochs)
set -euo pipefail
shopt -s inherit_errexit   # a failing run inside $(…) stops the script too
cd "$(dirname "$0")/.."
source bench/join-line.sh   # worker_arguments
short=${1:-2}; long=${2:-8}
case "$short$long" in *[!0-9]*|"") echo "bench/cpu-per-step.sh: SHORT and LONG must be whole numbers of epochs" >&2; exit 2;; esac
[ "$short" -ge 1 ] && [ "$long" -gt "$short" ] || { echo "bench/cpu-per-step.sh: need 1 ≤ SHORT < LONG (got $short, $long)" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "bench/cpu-per-step.sh: needs /usr/bin/time (Debian: apt-get install time)" >&2; exit 2; }
data=${DBP_FMNIST:-../shared/datasets/fashion-mnist}
dbp=src/DistributedBackprop.Cli/bin/Release/net10.0/dbp
[ -x "$dbp" ] || dotnet build -c Release src/DistributedBackprop.Cli >/dev/null
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# run MODE EPOCHS: prints "cpu_seconds steps wall_seconds" (wall: the training or serving process's whole run)
run() {
  local mode=$1 epochs=$2 dir; dir=$(mktemp -d "$work/run.XXXXXX")
  local args=(--data "$data" --layers 256,128 --batch-size 256 --epochs "$epochs" --optimizer sgd --lr 0.05 --progress none --metrics "$dir/m.jsonl")
  if [ "$mode" = local ]; then
    /usr/bin/time -f "%e %U %S" -o "$dir/t.local" "$dbp" train "${args[@]}" --workers 2 >/dev/null || true
  else
    local insecure=(); [ "$mode" = insecure ] && insecure=(--insecure)
    /usr/bin/time -f "%e %U %S" -o "$dir/t.serve" timeout 1800 "$dbp" serve "${args[@]}" --port 0 --min-workers 2 "${insecure[@]}" \
      --state-dir "$dir/state" --token-file "$dir/token" >"$dir/serve.out" 2>"$dir/serve.err" &
    local server=$!
    local arguments join
    arguments=$(worker_arguments "$dir/serve.err") || { kill "$server" 2>/dev/null; exit 1; }
    read -r -a join <<<"$arguments"
    /usr/bin/time -f "%e %U %S" -o "$dir/t.worker1" "$dbp" "${join[@]}" >/dev/null 2>&1 &
    /usr/bin/time -f "%e %U %S" -o "$dir/t.worker2" "$dbp" "${join[@]}" >/dev/null 2>&1 &
    wait "$server" || true; wait || true
  fi
  # /usr/bin/time writes "Command exited with non-zero status N" before the figures of a process that failed
  # (the failures above are let through to be named here).
  if grep -l "Command exited\|Command terminated" "$dir"/t.* >/dev/null; then
    echo "bench/cpu-per-step.sh: a $mode run failed ($(grep -h "Command" "$dir"/t.* | head -1))" >&2; exit 1
  fi
  python3 -c "
import json,sys
rows=[json.loads(l) for l in open(sys.argv[1])]
times={f: [float(x) for x in open(f).read().split()[-3:]] for f in sys.argv[2:]}
cpu=sum(t[1]+t[2] for t in times.values())
wall=max(t[0] for f,t in times.items() if f.endswith(('t.local','t.serve')))
print(cpu, rows[-1]['step'], wall)" "$dir/m.jsonl" "$dir"/t.*
}

cores=$(nproc)
results=()
for mode in local secure insecure; do
  first=$(run "$mode" "$short"); second=$(run "$mode" "$long")   # an assignment: a failed run stops the script
  read -r cpu1 steps1 secs1 <<<"$first"
  read -r cpu2 steps2 secs2 <<<"$second"
  results+=("$mode $cpu1 $steps1 $secs1 $cpu2 $steps2 $secs2")
done
printf '%s\n' "${results[@]}" | python3 -c "
import json,sys
cores=int(sys.argv[1]); out={'cores': cores}
for line in sys.stdin:
    mode,c1,s1,e1,c2,s2,e2=line.split()
    steps=int(s2)-int(s1)
    out[mode]={'cpu_ms_per_step': round((float(c2)-float(c1))/steps*1e3,2), 'wall_ms_per_step': round((float(e2)-float(e1))/steps*1e3,2), 'steps': steps}
    out[mode]['cores_busy']=round(out[mode]['cpu_ms_per_step']/out[mode]['wall_ms_per_step'],2)
local=out['local']['wall_ms_per_step']
for mode in ('secure','insecure'):
    m=out[mode]
    m['ratio_to_local']=round(local/m['wall_ms_per_step'],3)
    m['ceiling_ratio_to_local']=round(local/(m['cpu_ms_per_step']/cores),3)
    print(f\"{mode}: {m['cpu_ms_per_step']} ms of CPU a step against local mode's {out['local']['cpu_ms_per_step']}; {m['wall_ms_per_step']} ms a step against {local} ({m['ratio_to_local']} × local, {m['cores_busy']} of {cores} cores busy); on {cores} cores at best {m['ceiling_ratio_to_local']} × local\")
print(json.dumps(out))" "$cores"
