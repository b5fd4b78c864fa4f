#!/usr/bin/env bash
# Cluster mode against local mode on this machine: `dbp serve` + 2 `dbp worker` processes over loopback
# versus `dbp train --workers 2`, 784-256-128-10 on Fashion-MNIST, global batch 256, interleaved rounds.
# Reports the median samples/s of epochs 2.. (epoch 1 includes JIT warm-up) and the cluster's summary line
# (first-step time, bytes on the bulk channel per step) and how busy the workers were.
#   bash bench/cluster-vs-local.sh [rounds] [epochs]          (secure: mutual TLS, join token)
#   DBP_INSECURE=1 bash bench/cluster-vs-local.sh [rounds] [epochs]   (plain TCP, --insecure)
#   DBP_SHARDS=2 bash bench/cluster-vs-local.sh …   (the cluster with `--server-shards 2`: a shard on each worker
#                                                    node, so half of θ and of each gradient stays in its process)
#   DBP_TIMELINE=1 bash bench/cluster-vs-local.sh …   (also where each cluster round's steps spend their time:
#                                                    DBP_STEP_TIMELINE for its three processes, bench/step-timeline.py)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/join-line.sh   # worker_arguments
rounds=${1:-3}; epochs=${2:-4}
data=${DBP_FMNIST:-../shared/datasets/fashion-mnist}
dbp=src/DistributedBackprop.Cli/bin/Release/net10.0/dbp
[ -x "$dbp" ] || dotnet build -c Release src/DistributedBackprop.Cli >/dev/null
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
args=(--data "$data" --layers 256,128 --batch-size ${DBP_BATCH:-256} --epochs "$epochs" --optimizer sgd --lr 0.05 --progress none)
median() { python3 -c "import json,statistics,sys; r=[json.loads(l)['samples_per_second'] for l in open(sys.argv[1])][1:]; print(round(statistics.median(r)))" "$1"; }
busy() { python3 -c "
import json,statistics,sys
rows=[json.loads(l).get('worker_busy_fraction') or {} for l in open(sys.argv[1])][1:]
print(', '.join(f'{w} {statistics.median(r[w] for r in rows if w in r):.2f}' for w in sorted(rows[-1])))" "$1"; }
for r in $(seq 1 "$rounds"); do
  "$dbp" train "${args[@]}" --workers 2 --metrics "$work/local.jsonl" >/dev/null
  timeline=()
  [ -n "${DBP_TIMELINE:-}" ] && timeline=(env DBP_STEP_TIMELINE="$work/timeline-$r")
  "${timeline[@]}" "$dbp" serve "${args[@]}" --port 0 --min-workers 2 --metrics "$work/cluster.jsonl" ${DBP_INSECURE:+--insecure} --server-shards "${DBP_SHARDS:-1}" \
    --state-dir "$work/state" --token-file "$work/token" >"$work/serve.out" 2>"$work/serve.err" &
  server=$!
  # The exact worker command line the server printed (join address, bulk port, token file or --insecure).
  arguments=$(worker_arguments "$work/serve.err") || { kill "$server"; exit 1; }
  read -r -a join <<<"$arguments"
  "${timeline[@]}" "$dbp" "${join[@]}" >/dev/null 2>&1 &
  "${timeline[@]}" "$dbp" "${join[@]}" >/dev/null 2>&1 &
  wait "$server"
  wait
  l=$(median "$work/local.jsonl"); c=$(median "$work/cluster.jsonl")
  echo "round $r: local mode $l samples/s, cluster (3 processes) $c samples/s, ratio $(python3 -c "print(round($c/$l, 3))")"
  grep '^cluster:' "$work/serve.out"
  echo "  workers busy (median fraction of epochs 2..): cluster $(busy "$work/cluster.jsonl"); local $(busy "$work/local.jsonl")"
  if [ -n "${DBP_TIMELINE:-}" ]; then
    python3 bench/step-timeline.py "$work/timeline-$r" | sed 's/^/  /' || echo "  (no timeline for round $r)"
  fi
done
