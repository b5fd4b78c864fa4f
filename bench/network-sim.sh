#!/usr/bin/env bash
# A measured network model for cluster mode: one network namespace per node (server 10.77.0.1, workers .2,
# .3, …) on a bridge, every node's link shaped to RATE in each direction with `tc tbf` (netem is not
# available here), `dbp serve` + N `dbp worker` processes, 784-256-128-10 on Fashion-MNIST, batch 256, SGD.
# All nodes share this machine's cores, so besides samples/s it reports what does not depend on them:
#   busiest_link_bytes_per_step_over_model  bytes through the busiest node's link per step (the larger of
#                                           its two directions, from the interfaces' counters) ÷ M, the
#                                           model's bytes (θ down and gradients up: 2·N·M / N·M per
#                                           direction at the single server today)
#   step_time_over_bound                    measured step time ÷ max(compute, busiest-link bytes ÷ RATE),
#                                           compute being the slowest worker's median compute per step
# Usage (repo root, as root; cleans up its namespaces):
#   bash bench/network-sim.sh --workers N [--shards K] [--rate 1gbit] [--epochs 3]
# Ends with one JSON line. --shards other than 1 waits for the sharded parameter server (issue 9).
set -euo pipefail
cd "$(dirname "$0")/.."
workers=2; shards=1; rate=1gbit; epochs=3
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    *) echo "network-sim: unknown option $1 (--workers N --shards K --rate R --epochs E)" >&2; exit 2 ;;
  esac
done
[[ "$workers" =~ ^[1-9][0-9]*$ ]] && [ "$workers" -le 16 ] || { echo "network-sim: --workers: 1 to 16, got $workers" >&2; exit 2; }
[ "$shards" = 1 ] || { echo "network-sim: --shards $shards: the parameter server is not sharded yet (issue 9); only 1 can be measured" >&2; exit 2; }
bits=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+(?:\.\d+)?)(k|m|g)?bit', sys.argv[1]); print(int(float(m[1])*{None:1,'k':1e3,'m':1e6,'g':1e9}[m[2]])) if m else print('')" "$rate")
[ -n "$bits" ] || { echo "network-sim: --rate: like 1gbit or 100mbit, got $rate" >&2; exit 2; }
data=${DBP_FMNIST:-../shared/datasets/fashion-mnist}
[ -e "$data" ] || { echo "network-sim: no Fashion-MNIST at $data (set DBP_FMNIST)" >&2; exit 2; }
data=$(cd "$data" && pwd)
command -v tc >/dev/null || { echo "network-sim: needs tc (iproute2)" >&2; exit 2; }

label="network-sim"
source tests/integration/netns-lib.sh
names=(s); for i in $(seq 1 "$workers"); do names+=("w$i"); done
netns_up "${names[@]}" >/dev/null
# Shape both directions of every node's link: its eth0 (what it sends) and its veth end on the bridge (what
# it receives). A token bucket with a burst of a few packets' worth and a bounded queue, like a switch port.
for n in "${names[@]}"; do
  ip netns exec "dbp$n$tag" tc qdisc add dev eth0 root tbf rate "$rate" burst 64kb latency 20ms
  tc qdisc add dev "v$n$tag" root tbf rate "$rate" burst 64kb latency 20ms
done
counters() { # NAME: "rx tx" bytes of the node's eth0
  ip netns exec "dbp$1$tag" cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth0/statistics/tx_bytes | tr '\n' ' '
}
declare -A before
for n in "${names[@]}"; do before[$n]=$(counters "$n"); done

args=(--data "$data" --layers 256,128 --batch-size 256 --epochs "$epochs" --optimizer sgd --lr 0.05)
ip netns exec "dbps$tag" "$dbp" serve "${args[@]}" --bind-host 10.77.0.1 --port 4053 --min-workers "$workers" \
  --state-dir "$work/state" --token-file "$work/token" --metrics "$work/metrics.jsonl" --progress none >"$work/server.log" 2>&1 &
server=$!; pids+=("$server")
for _ in $(seq 1 100); do grep -q "listening at" "$work/server.log" && break; sleep 0.1; done
for i in $(seq 1 "$workers"); do
  ip netns exec "dbpw$i$tag" "$dbp" worker --join 10.77.0.1:4053 --token-file "$work/token" --bind-host "10.77.0.$((i + 1))" --name "w$i" >"$work/w$i.log" 2>&1 &
  pids+=($!)
done
wait "$server" || { tail -5 "$work/server.log"; say "FAIL: the server exited non-zero"; exit 1; }
wait

for n in "${names[@]}"; do echo "$n ${before[$n]} $(counters "$n")"; done > "$work/links.txt"
python3 - "$work/metrics.jsonl" "$work/links.txt" "$bits" "$workers" "$shards" "$rate" <<'PY'
import json, statistics, sys
epochs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bits, workers, shards, rate = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
model_bytes = (784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10) * 4
steps = epochs[-1]["step"]
steps_per_epoch = epochs[0]["step"]
links = {}
for line in open(sys.argv[2]):
    name, rx0, tx0, rx1, tx1 = line.split()
    links[name] = max(int(rx1) - int(rx0), int(tx1) - int(tx0)) / steps
busiest = max(links, key=links.get)
later = epochs[1:] or epochs
step_seconds = statistics.median(e["epoch_seconds"] / steps_per_epoch for e in later)
compute = statistics.median(max(e["worker_step_seconds_median"].values()) for e in later if e.get("worker_step_seconds_median"))
link_seconds = links[busiest] * 8 / bits
bound = max(compute, link_seconds)
print(f"[network-sim] {workers} worker(s), {shards} shard(s), {rate} links: busiest link {busiest} "
      f"{links[busiest] / 1e6:.2f} MB/step = {links[busiest] / model_bytes:.2f} M; step {step_seconds * 1e3:.1f} ms, "
      f"bound {bound * 1e3:.1f} ms (compute {compute * 1e3:.1f} ms, link {link_seconds * 1e3:.1f} ms); "
      f"{statistics.median(e['samples_per_second'] for e in later):.0f} samples/s")
print(json.dumps({
    "workers": workers, "shards": shards, "rate": rate, "model_bytes": model_bytes, "steps": steps,
    "busiest_link": busiest, "busiest_link_bytes_per_step": round(links[busiest]),
    "busiest_link_bytes_per_step_over_model": round(links[busiest] / model_bytes, 3),
    "step_seconds": round(step_seconds, 5), "compute_seconds": round(compute, 5), "link_seconds": round(link_seconds, 5),
    "step_time_over_bound": round(step_seconds / bound, 3),
    "samples_per_second": round(statistics.median(e["samples_per_second"] for e in later)),
}))
PY
