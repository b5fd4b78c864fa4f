#!/usr/bin/env bash
# In-process A/B of the GEMM against an earlier commit: builds BASE's numeric core in a temporary worktree
# under another assembly name, then times each matrix product of a 784-256-128-10 step with BASE's build and
# this tree's alternated call by call in one process (bench/DistributedBackprop.GemmAB), and prints per
# product both GFLOP/s, the median and quartiles of the per-round ratio (BASE time ÷ this tree's time) and
# whether the two builds give the same bits; then the whole training step (the plain trainer, 1 thread, SGD)
# the same way, two trainers in rounds of equal step counts, checking that their parameters end with the same
# bits. On a VM whose speed swings within a minute this resolves differences of a few percent that
# process-level alternation (bench/ab-step.sh) cannot. BASE must have the public API the harness calls.
#   bash bench/gemm-ab.sh BASE [ROUNDS] [BATCH]        e.g. bash bench/gemm-ab.sh 3f2490c 100 128
# GEMMAB_ROWS=60000: the training step on a data set as large as Fashion-MNIST (rows gathered from memory, not
# the cache); default max(16 × batch, 4096) rows, as `dbp bench`'s synthetic set.
# GEMMAB_IMAGES=1: the data set's values made 8-bit pixels, then scaled by 1/255 as Fashion-MNIST's are (so the
# step gathers them from byte codes), instead of uniform floats in [0, 1) scaled the same way.
# GEMMAB_THREADS=T: the trainers' --threads (default 1). With 2 on a 2-vCPU VM the rounds spread too widely to
# read (0.52–1.67 in one run): each trainer's lanes wait for the other's threads and for the host's other tenants.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/gemm-ab.sh BASE [ROUNDS] [BATCH]}; rounds=${2:-100}; batch=${3:-128}
tree=$(mktemp -d "${TMPDIR:-/tmp}/dbp-gemm-ab.XXXXXX")
trap 'git worktree remove --force "$tree/src" >/dev/null 2>&1 || true; rm -rf "$tree"' EXIT
git worktree add --detach "$tree/src" "$base" >/dev/null
dotnet build "$tree/src/src/DistributedBackprop.Core" -c Release -nologo -v:q -clp:ErrorsOnly \
  -p:AssemblyName=DistributedBackprop.Core.Baseline -o "$tree/baseline"
dotnet build bench/DistributedBackprop.GemmAB -c Release -nologo -v:q -clp:ErrorsOnly \
  -p:BaselineCore="$tree/baseline/DistributedBackprop.Core.Baseline.dll"
dotnet bench/DistributedBackprop.GemmAB/bin/Release/net10.0/DistributedBackprop.GemmAB.dll "$rounds" "$batch"
