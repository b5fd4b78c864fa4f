#!/usr/bin/env bash
# Where the time of `dbp bench` goes, by method: builds the CLI (Release), runs `dbp bench` with the options
# given under Linux perf, and prints the methods with the most samples (self time, % of all samples taken
# after the first DELAY ms, so start-up, data loading and most JIT work are left out). .NET's compiled code is
# named through the runtime's perf map (DOTNET_PerfMapEnabled=3: the map, no jitdump); ReadyToRun code and
# the W^X double mapping would hide the names, so both are turned off for the profiled run.
# Needs perf (Debian: linux-perf) and the right to use it (root, or kernel.perf_event_paranoid ≤ 1).
#   bash bench/profile.sh [TOP] [DELAY_MS] -- [dbp bench options]
#   e.g. bash bench/profile.sh 25 3000 -- --batch-size 128 --threads 1 --no-gemm --data ../shared/datasets/fashion-mnist
# PROFILE_ANNOTATE=REGEX also prints, for each compiled method whose perf-map name matches REGEX, its machine
# code (objdump) with the % of all samples on each instruction. The code is read from the running process
# (/proc/PID/mem) 2 s after sampling starts, so the method must have been compiled (optimized) by then. A stall
# is usually charged to the instruction after the one that waits (sample skid).
#   e.g. PROFILE_ANNOTATE='Gemm::ChunkTreeProduct\(valuetype' bash bench/profile.sh 10 -- --workers 2 --no-gemm
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
  dotnet src/DistributedBackprop.Cli/bin/Release/net10.0/dbp.dll bench "$@" > "$out/bench.txt" &
recorder=$!
if [ -n "${PROFILE_ANNOTATE:-}" ]; then
  sleep "$(( (delay + 2000) / 1000 ))"
  pid=$(pgrep -P "$recorder" | head -1 || true)
  # Each matching method's code, copied out of the process while it runs (JIT code exists only there).
  # A failure here must not end the script while perf still records in the background: it is reported, then waited for.
  [ -n "$pid" ] && python3 - "$pid" "$PROFILE_ANNOTATE" "$out" <<'PY' || echo "bench/profile.sh: could not copy the code of PID ${pid:-?} (the run ended within 2 s of sampling?)" >&2
import re, sys
pid, pattern, out = sys.argv[1:]
with open(f'/tmp/perf-{pid}.map') as mapping, open(f'/proc/{pid}/mem', 'rb') as memory, open(f'{out}/regions.txt', 'w') as regions:
    for line in mapping:
        start, size, name = line.rstrip('\n').split(' ', 2)
        if re.search(pattern, name) and '[Optimized' in name:
            start, size = int(start, 16), int(size, 16)
            memory.seek(start)
            code = f'{out}/code-{start:x}.bin'
            open(code, 'wb').write(memory.read(size))
            regions.write(f'{start:x} {size:x} {code} {name}\n')
PY
fi
wait "$recorder"
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
if [ -s "$out/regions.txt" ]; then
  perf script -i "$out/perf.data" -F ip 2>/dev/null | python3 -c '
import collections, subprocess, sys
samples = collections.Counter(int(line, 16) for line in sys.stdin if line.strip())
total = sum(samples.values())
for region in open(sys.argv[1]):
    start, size, code, name = region.rstrip("\n").split(" ", 3)
    start, size = int(start, 16), int(size, 16)
    here = {ip - start: n for ip, n in samples.items() if start <= ip < start + size}
    print(f"--- {100 * sum(here.values()) / total:.2f} % of samples: {name}")
    listing = subprocess.run(["objdump", "-D", "-b", "binary", "-mi386:x86-64", "-M", "intel", code], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        offset = line.split(":", 1)[0].strip()
        if ":" not in line or not all(c in "0123456789abcdef" for c in offset) or not offset:
            continue
        n = here.get(int(offset, 16), 0)
        print(f"{100 * n / total:6.2f} " if n else "       ", line)
' "$out/regions.txt"
elif [ -n "${PROFILE_ANNOTATE:-}" ]; then
  echo "bench/profile.sh: no optimized method matched PROFILE_ANNOTATE='$PROFILE_ANNOTATE' 2 s into sampling" >&2
fi
