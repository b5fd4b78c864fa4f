# Shared by the multi-host suites (sourced, not run): network namespaces on one bridge, each node with its
# own address 10.77.0.I and a veth pair, no loopback shortcuts; cleanup on exit; the dbp binary published.
# The sourcing script sets `label` (its log prefix) before sourcing, then calls netns_up NAME…

[ "$(id -u)" = 0 ] || { echo "$label: needs root (ip netns)"; exit 1; }
command -v ip >/dev/null || { echo "$label: needs iproute2"; exit 1; }
tag=$$
bridge=dbpbr$((tag % 10000))
work=$(mktemp -d)
pids=()
namespaces=()
say() { echo "[$label] $*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
netns_cleanup() {
  for pid in "${pids[@]}"; do pkill -9 -P "$pid" 2>/dev/null || true; kill -9 "$pid" 2>/dev/null || true; done
  iptables -D FORWARD -i "$bridge" -o "$bridge" -j ACCEPT 2>/dev/null || true
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  ip link del "$bridge" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap netns_cleanup EXIT

dotnet publish src/DistributedBackprop.Cli -c Release -o out/dbp >/dev/null
dbp="$PWD/out/dbp/dbp"

# netns_up NAME…: namespace dbpNAME$tag for each name, addresses 10.77.0.1, .2, … in the order given.
netns_up() {
  ip link add "$bridge" type bridge
  ip link set "$bridge" up
  # With br_netfilter loaded (docker loads it), bridged frames traverse iptables' FORWARD chain, whose policy
  # docker sets to DROP: let our bridge's own traffic through.
  if command -v iptables >/dev/null; then iptables -I FORWARD -i "$bridge" -o "$bridge" -j ACCEPT 2>/dev/null || true; fi
  local i=1 n ns
  for n in "$@"; do
    ns="dbp$n$tag"
    ip netns add "$ns"; namespaces+=("$ns")
    ip link add "v$n$tag" type veth peer name eth0 netns "$ns"
    ip link set "v$n$tag" master "$bridge" up
    ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    i=$((i + 1))
  done
}
