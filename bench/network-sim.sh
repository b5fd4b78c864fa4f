#!/usr/bin/env bash
# A measured network model for cluster mode: one network namespace per node (server 10.77.0.1, workers .2,
# .3, …) on a bridge, every node's link shaped to RATE in each direction with `tc tbf` (netem is not
# available here), `dbp serve` + N `dbp worker` processes, 784-256-128-10 on Fashion-MNIST, batch 256 (--batch-size), SGD.
# With --replicas R --local-steps H (local steps), an update is a round of H steps: one exchange of θ and
# the replicas' changes. Every "step" below is an update (H = 1: a step).
# All nodes share this machine's cores, so besides samples/s it reports what does not depend on them:
#   busiest_link_bytes_per_step_over_model  bytes through the busiest node's link per update (the larger of
#                                           its two directions, from the interfaces' counters) ÷ M, the
#                                           model's bytes (θ down and gradients up: 2·N·M / N·M per
#                                           direction at a single server; with K = N shards co-located on the
#                                           worker nodes each node sends and receives 2·(N−1)/N·M)
#   step_time_over_bound                    measured update time ÷ max(compute, busiest-link bytes ÷ RATE),
#                                           compute being the slowest worker's median compute per update
#   over_plain_one_core                     samples/s ÷ the plain trainer's on one core (`dbp train
#                                           --workers 0 --threads 1`, synchronous, measured before and after
#                                           the cluster in this run: the median of both runs' epochs after the first)
#   host_cpu_busy, cpu_ms_per_update       how busy this host's cores were over those epochs, and CPU-ms per
#                                           update by group (compute, bulk_channel, kernel_softirq, other; see
#                                           bench/host-cpu.py)
#   step_time_over_bound_with_host_cpu      the same ratio with a third limit, the host's CPU work per update ÷
#                                           its cores: near 1, the run measured this box's CPU, not the network
#   tcp_retransmitted_segments_per_step,    the nodes' TCP segments sent again and retransmission timeouts
#   tcp_timeouts_per_step                   (each ≥ 200 ms of silence), summed over every node's namespace
# Usage (repo root, as root; cleans up its namespaces):
#   bash bench/network-sim.sh --workers N [--shards K] [--replicas R --local-steps H [--outer-overlap]
#        [--outer-optimizer O --outer-lr G --outer-momentum M]] [--rate 1gbit] [--mtu 1500] [--queue-ms 20] [--epochs 3] [--batch-size 256]
# --mtu: the links' frame size (9000: jumbo frames). All nodes' kernels share this machine's cores, so each
# packet's cost in the bridge, the shaper and TCP is paid by the same two cores the workers compute on (at
# 1500 bytes the kernel's packet processing took ~35 % of a core at H = 32; on machines of their own it would not).
# Ends with one JSON line. --shards K runs `dbp serve --server-shards K` (shards on the worker nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
workers=2; shards=1; rate=1gbit; mtu=1500; queue_ms=20; epochs=3; batch=256; replicas=1; local_steps=1; outer=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --mtu) mtu=$2; shift 2 ;;
    --queue-ms) queue_ms=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --batch-size) batch=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    --local-steps) local_steps=$2; shift 2 ;;
    --outer-overlap) outer+=(--outer-overlap); shift ;;
    --outer-momentum|--outer-lr|--outer-optimizer) outer+=("$1" "$2"); shift 2 ;;
    *) echo "network-sim: unknown option $1 (--workers N --shards K --replicas R --local-steps H --outer-overlap --outer-optimizer/--outer-lr/--outer-momentum V --rate R --mtu BYTES --queue-ms MS --epochs E --batch-size B)" >&2; exit 2 ;;
  esac
done
[[ "$workers" =~ ^[1-9][0-9]*$ ]] && [ "$workers" -le 16 ] || { echo "network-sim: --workers: 1 to 16, got $workers" >&2; exit 2; }
[[ "$replicas" =~ ^[1-9][0-9]*$ ]] || { echo "network-sim: --replicas: a positive integer, got $replicas" >&2; exit 2; }
[[ "$local_steps" =~ ^[1-9][0-9]*$ ]] || { echo "network-sim: --local-steps: a positive integer, got $local_steps" >&2; exit 2; }
[[ "$queue_ms" =~ ^[1-9][0-9]*$ ]] && [ "$queue_ms" -le 1000 ] || { echo "network-sim: --queue-ms: 1 to 1000, got $queue_ms" >&2; exit 2; }
[[ "$batch" =~ ^[1-9][0-9]*$ ]] || { echo "network-sim: --batch-size: a positive integer, got $batch" >&2; exit 2; }
[[ "$shards" =~ ^[1-9][0-9]*$ ]] || { echo "network-sim: --shards: a positive integer, got $shards" >&2; exit 2; }
[[ "$mtu" =~ ^[1-9][0-9]*$ ]] && [ "$mtu" -ge 1280 ] && [ "$mtu" -le 65535 ] || { echo "network-sim: --mtu: 1280 to 65535 bytes, got $mtu" >&2; exit 2; }
if [ "$shards" -gt 1 ] && [ "$replicas" -gt 1 ] && [ "$local_steps" -gt 1 ]; then
  echo "network-sim: --shards with local steps: dbp does not combine them yet" >&2; exit 2
fi
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
# it receives). A token bucket with a burst of a few packets' worth and a bounded queue, like a switch port
# (--queue-ms: how long a full queue takes to drain; 20 ms is 250 KB at 100 Mbit/s).
ip -n "$switch" link set "$bridge" mtu "$mtu"
for n in "${names[@]}"; do
  ip -n "$switch" link set "v$n$tag" mtu "$mtu"
  ip -n "dbp$n$tag" link set eth0 mtu "$mtu"
  ip netns exec "dbp$n$tag" tc qdisc add dev eth0 root tbf rate "$rate" burst 64kb latency "${queue_ms}ms"
  ip netns exec "$switch" tc qdisc add dev "v$n$tag" root tbf rate "$rate" burst 64kb latency "${queue_ms}ms"
done
counters() { # NAME: "rx tx" bytes of the node's eth0, then its TCP stack's retransmitted segments and retransmission timeouts
  ip netns exec "dbp$1$tag" cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth0/statistics/tx_bytes | tr '\n' ' '
  ip netns exec "dbp$1$tag" awk '$1 == "Tcp:" && !h { for (i = 2; i <= NF; i++) col[$i] = i; h = 1; next }
    $1 == "Tcp:" { r = $col["RetransSegs"] } END { printf "%s ", r }' /proc/net/snmp
  ip netns exec "dbp$1$tag" awk '$1 == "TcpExt:" && !h { for (i = 2; i <= NF; i++) col[$i] = i; h = 1; next }
    $1 == "TcpExt:" { t = $col["TCPTimeouts"] } END { printf "%s ", t }' /proc/net/netstat
}
declare -A before
for n in "${names[@]}"; do before[$n]=$(counters "$n"); done

sync=(--data "$data" --layers 256,128 --batch-size "$batch" --epochs "$epochs" --optimizer sgd --lr 0.05)
# --shards K: the parameter server's K shards, placed round robin on the worker nodes (co-located).
args=("${sync[@]}" --replicas "$replicas" --local-steps "$local_steps" --server-shards "$shards" "${outer[@]}")
# The reference: the plain trainer on one core, synchronous (no local steps), on this machine, before and after.
taskset -c 0 "$dbp" train "${sync[@]}" --workers 0 --threads 1 --metrics "$work/plain.jsonl" --progress none >"$work/plain.log" 2>&1 \
  || { tail -3 "$work/plain.log"; say "FAIL: the plain trainer failed"; exit 1; }
ip netns exec "dbps$tag" "$dbp" serve "${args[@]}" --bind-host 10.77.0.1 --port 4053 --min-workers "$workers" \
  --state-dir "$work/state" --token-file "$work/token" --metrics "$work/metrics.jsonl" --progress none >"$work/server.log" 2>&1 &
server=$!; pids+=("$server")
# Where the host's CPU goes while the cluster trains (every node shares this machine's cores and kernel).
python3 bench/host-cpu.py "$work/cpu.jsonl" "$work/metrics.jsonl" & sampler=$!; pids+=("$sampler")
for _ in $(seq 1 100); do grep -q "listening at" "$work/server.log" && break; sleep 0.1; done
for i in $(seq 1 "$workers"); do
  # Each worker is told its link's rate (a real NIC reports it; the namespaces' veth ends report 10 Gbit/s), so its
  # bulk channel paces each connection at the link's share of each peer (DBP_LINK_RATE=off: unpaced, to compare).
  ip netns exec "dbpw$i$tag" "$dbp" worker --join 10.77.0.1:4053 --token-file "$work/token" --bind-host "10.77.0.$((i + 1))" --link-rate "${DBP_LINK_RATE:-$rate}" --name "w$i" >"$work/w$i.log" 2>&1 &
  pids+=($!)
done
wait "$server" || { tail -5 "$work/server.log"; say "FAIL: the server exited non-zero"; exit 1; }
kill "$sampler"; wait "$sampler" 2>/dev/null || true
wait
# And once more after, into the same file: this machine's speed drifts over minutes, so the reference
# brackets the cluster run.
taskset -c 0 "$dbp" train "${sync[@]}" --workers 0 --threads 1 --metrics "$work/plain-after.jsonl" --progress none >"$work/plain.log" 2>&1 \
  || { tail -3 "$work/plain.log"; say "FAIL: the plain trainer failed"; exit 1; }

for n in "${names[@]}"; do echo "$n ${before[$n]} $(counters "$n")"; done > "$work/links.txt"
python3 - "$work/metrics.jsonl" "$work/links.txt" "$bits" "$workers" "$shards" "$rate" "$replicas" "$local_steps" "$work/plain.jsonl" "$mtu" "$work/cpu.jsonl" "$batch" "$queue_ms" <<'PY'
import json, math, os, statistics, sys
epochs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bits, workers, shards, rate = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
replicas, local_steps, mtu = int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[10])
plain_runs = [[json.loads(l) for l in open(path) if l.strip()] for path in (sys.argv[9], sys.argv[9].replace("plain.jsonl", "plain-after.jsonl"))]
plain = plain_runs[0]
# R = 1 or H = 1 is synchronous training: one update per step.
if replicas == 1 or local_steps == 1:
    local_steps = 1
model_bytes = (784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10) * 4
steps_per_epoch = epochs[0]["step"]
updates_per_epoch = math.ceil(steps_per_epoch / local_steps)
steps = updates_per_epoch * len(epochs)
links, retransmits, timeouts = {}, 0, 0
for line in open(sys.argv[2]):
    name, rx0, tx0, re0, to0, rx1, tx1, re1, to1 = line.split()
    links[name] = max(int(rx1) - int(rx0), int(tx1) - int(tx0)) / steps
    # Segments sent again, and retransmission timeouts (each at least 200 ms of silence), over the whole run.
    retransmits += int(re1) - int(re0)
    timeouts += int(to1) - int(to0)
busiest = max(links, key=links.get)
later = epochs[1:] or epochs
step_seconds = statistics.median(e["epoch_seconds"] / updates_per_epoch for e in later)
compute = statistics.median(max(e["worker_step_seconds_median"].values()) for e in later if e.get("worker_step_seconds_median"))
link_seconds = links[busiest] * 8 / bits
bound = max(compute, link_seconds)
samples = statistics.median(e["samples_per_second"] for e in later)
plain_samples = statistics.median(e["samples_per_second"] for run in plain_runs for e in (run[1:] or run))
unit = "step" if local_steps == 1 else f"round of {local_steps} steps"
# The host's CPU over the epochs the step time comes from (samples from the end of the first epoch to the
# last one before the final epoch ended): how busy the cores were, and CPU-seconds per update by group.
samples_cpu = [json.loads(l) for l in open(sys.argv[11]) if l.strip()]
window = [c for c in samples_cpu if 1 <= c["epochs"] < len(epochs)] or samples_cpu
cpu = None
if len(window) >= 2:
    a, b = window[0], window[-1]
    host = [y - x for x, y in zip(a["host"], b["host"])]
    seconds, cores, hz = b["t"] - a["t"], os.cpu_count(), os.sysconf("SC_CLK_TCK")
    per_update = lambda ticks: ticks / hz / seconds * step_seconds
    groups = {}
    for thread, (key, user, system) in b["ticks"].items():
        group = key.split(".")[1]
        _, user0, system0 = a["ticks"].get(thread, (key, 0, 0))  # a thread born in the window started at 0
        groups[group] = groups.get(group, 0) + per_update(user + system - user0 - system0)
    # Interrupt work is charged to no thread: its share of the host's time, in CPU-seconds per update.
    groups["kernel_softirq"] = (host[5] + host[6]) / sum(host) * cores * step_seconds
    busy = 1 - (host[3] + host[4]) / sum(host)
    cpu = {"host_cpu_busy": round(busy, 3), "cores": cores,
           "cpu_ms_per_update": {g: round(v * 1e3, 2) for g, v in sorted(groups.items())},
           "transport_cpu_over_compute": round((groups.get("bulk_channel", 0) + groups["kernel_softirq"]) / groups["compute"], 2) if groups.get("compute") else None,
           # The host's CPU work per update ÷ its cores (busy · cores · step ÷ cores): near the step when busy is near 1.
           "cpu_bound_seconds": round(busy * step_seconds, 5)}
    cpu["step_time_over_bound_with_host_cpu"] = round(step_seconds / max(bound, cpu["cpu_bound_seconds"]), 3)
print(f"[network-sim] {workers} worker(s), {shards} shard(s), {replicas} replica(s) x {local_steps} local step(s), {rate} links (MTU {mtu}): "
      f"busiest link {busiest} {links[busiest] / 1e6:.2f} MB/{unit} = {links[busiest] / model_bytes:.2f} M; {unit} {step_seconds * 1e3:.1f} ms, "
      f"bound {bound * 1e3:.1f} ms (compute {compute * 1e3:.1f} ms, link {link_seconds * 1e3:.1f} ms); "
      f"{samples:.0f} samples/s, the plain trainer on one core {plain_samples:.0f} ({samples / plain_samples:.2f}x); "
      f"final test accuracy {epochs[-1].get('test_accuracy', 0) * 100:.2f} % (plain {plain[-1].get('test_accuracy', 0) * 100:.2f} %); "
      f"TCP: {retransmits / steps:.1f} segments sent again and {timeouts / steps:.2f} retransmission timeouts per {unit}")
if cpu:
    ms = cpu["cpu_ms_per_update"]
    print(f"[network-sim] host CPU {cpu['host_cpu_busy'] * 100:.0f} % busy on {cpu['cores']} cores; CPU ms per {unit}: compute {ms.get('compute', 0):.1f}, "
          f"bulk channel {ms.get('bulk_channel', 0):.1f}, kernel softirq {ms['kernel_softirq']:.1f}, other {ms.get('other', 0):.1f} "
          f"(transport ÷ compute {cpu['transport_cpu_over_compute']}); with the host's CPU as a third limit the bound is "
          f"{max(bound, cpu['cpu_bound_seconds']) * 1e3:.1f} ms ({cpu['step_time_over_bound_with_host_cpu']:.2f} x)")
print(json.dumps({
    "workers": workers, "shards": shards, "batch_size": int(sys.argv[12]), "queue_ms": int(sys.argv[13]), "replicas": replicas, "local_steps": local_steps, "rate": rate, "mtu": mtu, "model_bytes": model_bytes, "updates": steps,
    "busiest_link": busiest, "busiest_link_bytes_per_step": round(links[busiest]),
    "busiest_link_bytes_per_step_over_model": round(links[busiest] / model_bytes, 3),
    "step_seconds": round(step_seconds, 5), "compute_seconds": round(compute, 5), "link_seconds": round(link_seconds, 5),
    "step_time_over_bound": round(step_seconds / bound, 3),
    "tcp_retransmitted_segments_per_step": round(retransmits / steps, 2), "tcp_timeouts_per_step": round(timeouts / steps, 3),
    "samples_per_second": round(samples),
    "plain_one_core_samples_per_second": round(plain_samples),
    "over_plain_one_core": round(samples / plain_samples, 3),
    "test_accuracy": epochs[-1].get("test_accuracy"), "plain_test_accuracy": plain[-1].get("test_accuracy"),
    **(cpu or {}),
}))
PY
