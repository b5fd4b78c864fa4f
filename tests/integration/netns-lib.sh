# Shared by the multi-host suites (sourced, not run): network namespaces on one bridge, each node with its
# own address 10.77.0.I and a veth pair, no loopback shortcuts; cleanup on exit; the dbp binary published.
# The bridge lives in a namespace of its own ($switch, the "switch"), not in the host's: with br_netfilter
# loaded (docker loads it) a bridge in the host's namespace sends every frame through the host's iptables
# (docker's FORWARD policy is DROP) and conntrack, which took a large share of both cores in the network
# model's runs. In a fresh namespace there are no rules and bridged frames skip iptables altogether.
# The sourcing script sets `label` (its log prefix) before sourcing, then calls netns_up NAME…

[ "$(id -u)" = 0 ] || { echo "$label: needs root (ip netns)"; exit 1; }
command -v ip >/dev/null || { echo "$label: needs iproute2"; exit 1; }
tag=$$
bridge=dbpbr$((tag % 10000))
switch=dbpsw$tag
work=$(mktemp -d)
pids=()
namespaces=()
say() { echo "[$label] $*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
netns_cleanup() {
  for pid in "${pids[@]}"; do pkill -9 -P "$pid" 2>/dev/null || true; kill -9 "$pid" 2>/dev/null || true; done
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap netns_cleanup EXIT

dotnet publish src/DistributedBackprop.Cli -c Release -o out/dbp >/dev/null
dbp="$PWD/out/dbp/dbp"

# netns_up NAME…: namespace dbpNAME$tag for each name, addresses 10.77.0.1, .2, … in the order given.
netns_up() {
  ip netns add "$switch"; namespaces+=("$switch")
  ip -n "$switch" link add "$bridge" type bridge
  ip -n "$switch" link set "$bridge" up
  ip netns exec "$switch" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0 2>/dev/null || true
  local i=1 n ns
  for n in "$@"; do
    ns="dbp$n$tag"
    ip netns add "$ns"; namespaces+=("$ns")
    # The node's end is eth0 in its namespace; the switch's end, v$n$tag, a port of the bridge.
    ip -n "$switch" link add "v$n$tag" type veth peer name eth0 netns "$ns"
    ip -n "$switch" link set "v$n$tag" master "$bridge" up
    ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    i=$((i + 1))
  done
}
