#!/usr/bin/env bash
# dbp as a .NET tool, as the README's Install section says: pack it, install it into a tool path, run it.
#   bash tests/integration/install.sh        (from the repo root)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d "${TMPDIR:-/tmp}/dbp-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
say() { echo "[install test] $*"; }
fail() { say "FAIL: $*"; exit 1; }

say "dotnet pack src/DistributedBackprop.Cli -c Release -o $work/nupkg"
dotnet pack src/DistributedBackprop.Cli -c Release -o "$work/nupkg" -nologo -v:q -clp:ErrorsOnly
ls "$work"/nupkg/DistributedBackprop.Cli.*.nupkg >/dev/null || fail "no package"
say "dotnet tool install --tool-path $work/tools --add-source $work/nupkg DistributedBackprop.Cli"
dotnet tool install --tool-path "$work/tools" --add-source "$work/nupkg" DistributedBackprop.Cli >/dev/null
dbp="$work/tools/dbp"
[[ -x $dbp ]] || fail "no dbp command in the tool path"

"$dbp" --help | grep -q "train" || fail "dbp --help does not list train"
start=$(date +%s%N)
"$dbp" train --epochs 2 --out "$work/model.safetensors" --progress none >"$work/train.log" || { cat "$work/train.log"; fail "dbp train failed"; }
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
grep -q "test accuracy" "$work/train.log" || fail "no test accuracy line"
[[ -s $work/model.safetensors ]] || fail "no model written"
"$dbp" export --model "$work/model.safetensors" --onnx "$work/model.onnx" >/dev/null || fail "dbp export failed"
"$dbp" plot --help >/dev/null || fail "dbp plot --help failed"
set +e; "$dbp" train --epochs 0 2>"$work/bad.log"; code=$?; set -e
[[ $code == 2 ]] || fail "a bad option exited $code, not 2"
say "PASS: the installed dbp trains ($(grep 'test accuracy' "$work/train.log"); ${elapsed} ms for 2 epochs, startup included), exports, and exits 2 on bad input"
