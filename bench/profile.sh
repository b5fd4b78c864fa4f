#!/usr/bin/env bash
# Where the time of `dbp bench` goes, by method: builds the CLI (Release), runs `dbp bench` with the options
# given under Linux perf, and prints the methods with the most samples (self time, % of all samples taken
# after the first DELAY ms, so start-up, data loading and most JIT work are left out). .NET's compiled code is
# named through the runtime's perf map (DOTNET_PerfMapEnabled=3: the map, no jitdump); ReadyToRun code and
# the W^X double mapping would hide the names, so both are turned off for the profiled run.
# Needs perf (Debian: linux-perf) and the right to use it (root, or kernel.perf_event_paranoid ≤ 1).
#   bash bench/profile.sh [TOP] [DELAY_MS] -- [dbp bench options]
#   e.g. bash bench/profile.sh 25 3000 -- --batch-size 128 --threads 1 --no-gemm --data ../shared/datasets/fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
top=25; delay=3000
if [ "${1:-}" != "--" ] && [ $# -gt 0 ]; then top=$1; shift; fi
if [ "${1:-}" != "--" ] && [ $# -gt 0 ]; then delay=$1; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi
case "$top$delay" in *[!0-9]*) echo "bench/profile.sh: TOP and DELAY_MS must be whole numbers (got '$top', '$delay')" >&2; exit 2;; esac
command -v perf >/dev/null || { echo "bench/profile.sh: perf is not installed (Debian: apt-get install linux-perf)" >&2; exit 2; }
dotnet build src/DistributedBackprop.Cli -c Release -nologo -v:q -clp:ErrorsOnly
out=$(mktemp -d "${TMPDIR:-/tmp}/dbp-profile.XXXXXX")
touch "$out/start"
# The runtime writes /tmp/perf-PID.map (and perfinfo-PID.map) for perf to read; removed with the rest.
trap 'find /tmp -maxdepth 1 -name "perf*-[0-9]*.map" -newer "$out/start" -delete 2>/dev/null; rm -rf "$out"' EXIT
DOTNET_PerfMapEnabled=3 DOTNET_ReadyToRun=0 DOTNET_EnableWriteXorExecute=0 \
  perf record --quiet -F 1999 -D "$delay" -o "$out/perf.data" -- \
  dotnet src/DistributedBackprop.Cli/bin/Release/net10.0/dbp.dll bench "$@" > "$out/bench.txt"
cat "$out/bench.txt"
echo "--- self time by method, % of samples after the first ${delay} ms (perf record -F 1999):"
cat > "$out/methods.py" <<'PY'
import re, sys
from collections import defaultdict
top = int(sys.argv[1])
percents = defaultdict(float)
for line in sys.stdin:
    m = re.match(r'\s+([0-9.]+)%\s+\[(.)\]\s+(.*?)\s*$', line)
    if not m:
        continue
    percent, kind, symbol = float(m.group(1)), m.group(2), m.group(3)
    # '[Assembly] Namespace.Type`1[Args]::Method(args)[Optimized]' -> 'Type::Method' (a generic method's
    # instantiations summed); native symbols as they are.
    named = re.search(r'\] (\S+?)::([\w<>`|.]+)\(', symbol)
    if named:
        name = re.sub(r'`\d+(\[[^:]*\])?', '', named.group(1)).split('.')[-1] + '::' + named.group(2)
    else:
        name = re.split(r'[ (]', symbol)[0]
    percents[('kernel: ' if kind == 'k' else '') + name] += percent
for name, percent in sorted(percents.items(), key=lambda item: -item[1])[:top]:
    print(f'{percent:6.2f} %  {name}')
PY
perf report -i "$out/perf.data" --no-children --sort symbol --stdio 2>/dev/null | python3 "$out/methods.py" "$top"
