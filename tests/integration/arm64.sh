#!/usr/bin/env bash
# The same bits on ARM64 as on x86-64: publish dbp self-contained for linux-arm64 and linux-x64, train the
# same small runs with both (the arm64 build under qemu-user on this x86-64 machine: its NEON lanes are 4
# wide, its GEMM runs the NEON micro-kernel) and require byte-identical model files.
#
#   sudo bash tests/integration/arm64.sh        (from the repo root; root for apt-get the first time)
#
# Needs Debian's qemu-user-static and the arm64 cross runtime libraries (installed if missing), the arm64
# libssl3 (downloaded with a private apt state into ARM64_SYSROOT; the system's apt setup is not touched),
# and NuGet for the two runtime packs. Env: ARM64_SYSROOT (default /var/cache/dbp-arm64/sysroot),
# ARM64_QEMU_CPU (default max), KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dbp-arm64.XXXXXX")
SYSROOT=${ARM64_SYSROOT:-/var/cache/dbp-arm64/sysroot}
CPU=${ARM64_QEMU_CPU:-max}
CROSS=/usr/aarch64-linux-gnu            # arm64 glibc, libstdc++, libgcc_s from the *-arm64-cross packages
SSLDIR="$SYSROOT/usr/lib/aarch64-linux-gnu"
log() { echo "[arm64 $(date -u +%T)] $*"; }
fail() { echo "FAIL: $*"; exit 1; }
cleanup() { if [[ ${KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

# 1. qemu-user-static and the arm64 C/C++ runtime libraries.
if ! command -v qemu-aarch64-static >/dev/null || [[ ! -e $CROSS/lib/libstdc++.so.6 || ! -e $CROSS/lib/libgcc_s.so.1 ]]; then
  log "installing qemu-user-static libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq qemu-user-static libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross >/dev/null
fi

# 2. libssl3 for arm64: the runtime's crypto shim loads libssl.so.3 (dbp hashes data and models with
#    SHA-256), and there is no *-arm64-cross package of it: download the arm64 .deb with a private apt
#    state (own lists, status and cache; the system's architectures and lists are not touched) and unpack it.
if [[ ! -e $SSLDIR/libssl.so.3 || ! -e $SSLDIR/libcrypto.so.3 ]]; then
  log "fetching libssl3:arm64 into $SYSROOT"
  A="$WORK/apt"
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/debs"; touch "$A/status"
  APT=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o "Dir::State::Lists=$A/lists"
       -o "Dir::State::status=$A/status" -o "Dir::Cache=$A/cache" -o "Dir::Cache::archives=$A/cache/archives"
       -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${APT[@]}" -qq update
  (cd "$A/debs" && apt-get "${APT[@]}" -qq download libssl3)
  mkdir -p "$SYSROOT.tmp"; dpkg-deb -x "$A"/debs/libssl3_*_arm64.deb "$SYSROOT.tmp"
  rm -rf "$SYSROOT"; mv "$SYSROOT.tmp" "$SYSROOT"
fi

# 3. Publish both from a copy of the sources: restoring for a runtime identifier rewrites
#    obj/project.assets.json, which would disturb builds of the working tree.
log "copying the sources"
mkdir -p "$WORK/src"
tar -C "$REPO" --exclude=./.git --exclude=bin --exclude=obj --exclude=./tests --exclude=./bench \
    --exclude=./out --exclude=./output -cf - . | tar -C "$WORK/src" -xf -
for rid in linux-arm64 linux-x64; do
  log "publishing $rid (self-contained)"
  dotnet publish "$WORK/src/src/DistributedBackprop.Cli" -c Release -r "$rid" --self-contained \
      -o "$WORK/$rid" -nologo -v:q -clp:ErrorsOnly
done

# DOTNET_EnableWriteXorExecute=0 is required under qemu-user: with W^X the runtime writes JIT code through
# a second mapping that qemu does not watch, so qemu can run stale translations (seen as a
# NullReferenceException in System.Text.Json's reflection stubs; it could as well compute wrong numbers).
arm64() {
  qemu-aarch64-static -cpu "$CPU" -L "$CROSS" -E DOTNET_EnableWriteXorExecute=0 -E LD_LIBRARY_PATH="$SSLDIR" \
      "$WORK/linux-arm64/dbp" "$@"
}
x64() { "$WORK/linux-x64/dbp" "$@"; }

# The runtime really is arm64 under qemu (not a silent fallback to the host's), and its numeric fingerprint
# (what a server compares before admitting a worker) is the x64 build's.
probe=(bench --json --seconds 0.05 --windows 1 --warmup 0.05 --no-gemm --layers 8 --inputs 8 --batch-size 8)
arm64_reports=$(arm64 "${probe[@]}" 2>&1 | grep -o '"simd":[^}]*' || true)
x64_reports=$(x64 "${probe[@]}" 2>&1 | grep -o '"simd":[^}]*' || true)
log "arm64 build: $arm64_reports"
log "x64 build:   $x64_reports"
[[ $arm64_reports == *'"architecture":"Arm64"'* ]] || fail "the arm64 build does not run as Arm64 under qemu"
fingerprint() { grep -o '"numeric_fingerprint":"[^"]*"' <<<"$1"; }
[[ -n $(fingerprint "$arm64_reports") && $(fingerprint "$arm64_reports") == "$(fingerprint "$x64_reports")" ]] \
  || fail "the numeric fingerprints differ: a server would refuse an arm64 worker"

# 4. The runs: every hidden activation, both losses, each optimizer, the cosine schedule, and the actor path
#    (--workers 2) once. Small networks on the embedded digits: a run takes ~10 s under qemu.
runs=(
  "relu-softmax-ce|--epochs 2 --workers 0"
  "tanh-softmax-mse-adam-cosine|--epochs 2 --workers 0 --layers 32,16 --activation tanh --loss mse --optimizer adam --lr 0.01 --schedule cosine"
  "sigmoid-sigmoid-mse-sgd|--epochs 2 --workers 0 --layers 24 --activation sigmoid --output-activation sigmoid --loss mse --optimizer sgd --lr 0.5"
  "relu-softmax-ce-2-workers|--epochs 1 --workers 2 --layers 32 --batch-size 64"
)
for run in "${runs[@]}"; do
  name=${run%%|*}; read -r -a args <<<"${run#*|}"
  s=$SECONDS
  arm64 train "${args[@]}" --progress none --out "$WORK/$name-arm64.safetensors" >"$WORK/$name-arm64.log" 2>&1 \
    || { tail -20 "$WORK/$name-arm64.log"; fail "$name: the arm64 run failed"; }
  x64 train "${args[@]}" --progress none --out "$WORK/$name-x64.safetensors" >"$WORK/$name-x64.log" 2>&1 \
    || { tail -20 "$WORK/$name-x64.log"; fail "$name: the x64 run failed"; }
  a=$(md5sum <"$WORK/$name-arm64.safetensors" | cut -d' ' -f1); b=$(md5sum <"$WORK/$name-x64.safetensors" | cut -d' ' -f1)
  log "$name: arm64 $a, x64 $b ($((SECONDS - s)) s)"
  [[ $a == "$b" ]] || fail "$name: the arm64 model differs from the x64 model"
done
log "PASS: every model is byte-identical on arm64 (qemu) and x86-64"
