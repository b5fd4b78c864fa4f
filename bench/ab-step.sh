#!/usr/bin/env bash
# A/B of the training step against an earlier commit, in one run: builds BASE in a temporary worktree,
# then alternates `dbp bench --json --no-gemm` between BASE and the working tree, ROUNDS times per hidden
# activation, and prints each round's samples/s and the ratio of medians (new ÷ base).
#   bash bench/ab-step.sh BASE [ROUNDS] [ACTIVATIONS]     e.g. bash bench/ab-step.sh 7f1620a 5 tanh,sigmoid,relu
# Extra `dbp bench` options go in AB_BENCH_ARGS (default: 784-256-128-10, batch 128, 1 thread).
# AB_GEMM=1: compare each of the step's matrix products instead (the GFLOP/s `dbp bench` times per product),
# the ratio of medians per product.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/ab-step.sh BASE [ROUNDS] [ACTIVATIONS]}; rounds=${2:-5}; activations=${3:-tanh,sigmoid,relu}
tree=$(mktemp -d "${TMPDIR:-/tmp}/dbp-ab.XXXXXX")
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$tree"' EXIT
git worktree add --detach "$tree" "$base" >/dev/null
dotnet build "$tree/src/DistributedBackprop.Cli" -c Release -nologo -v:q -clp:ErrorsOnly
dotnet build src/DistributedBackprop.Cli -c Release -nologo -v:q -clp:ErrorsOnly
declare -A dll=([base]="$tree/src/DistributedBackprop.Cli/bin/Release/net10.0/dbp.dll" [new]=src/DistributedBackprop.Cli/bin/Release/net10.0/dbp.dll)
results=$(mktemp)
for round in $(seq 1 "$rounds"); do
  for activation in ${activations//,/ }; do
    for side in base new; do
      if [ -n "${AB_GEMM:-}" ]; then
        dotnet "${dll[$side]}" bench --json --windows 1 --seconds 0.2 --warmup 0.2 --activation "$activation" ${AB_BENCH_ARGS:-} \
          | python3 -c "
import json, sys
for g in json.load(sys.stdin)['gemm']:
    print(f\"layer{g['layer']}:{g['product'].split()[0]}:{g['m']}x{g['k']}x{g['n']} $round $side {g['gflops']}\")" | tee -a "$results"
        continue
      fi
      rate=$(dotnet "${dll[$side]}" bench --json --no-gemm --windows 5 --warmup 2 --activation "$activation" ${AB_BENCH_ARGS:-} \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['samples_per_second'])")
      echo "$activation $round $side $rate" | tee -a "$results"
    done
  done
done
python3 - "$results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    activation, _, side, rate = line.split()
    runs[activation, side].append(float(rate))
for activation in dict.fromkeys(a for a, _ in runs):
    base, new = runs[activation, "base"], runs[activation, "new"]
    print(f"{activation}: base median {statistics.median(base):.0f}, new median {statistics.median(new):.0f}, "
          f"new/base {statistics.median(new) / statistics.median(base):.3f}, per round {[round(n / b, 3) for b, n in zip(base, new)]}")
PY
