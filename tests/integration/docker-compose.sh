#!/usr/bin/env bash
# docker-compose suite: real daemon, real images, real network.
#  1. `docker-compose up --scale worker=2` trains the default data set; the model in the output volume must
#     equal local mode's (`dbp train --workers 2`) byte for byte; `down` removes everything.
#  2. The same with more epochs, a worker `docker kill`ed mid-run: training completes, same bytes. Meanwhile
#     a stranger container on the compose network tries to join with a wrong token (refused, exit 2), and the
#     join token must not appear in any container's environment.
#  3. The server's process is SIGKILLed mid-run (a crash: Docker restarts it by its restart policy; a
#     `docker kill` would count as a manual stop, which Docker never restarts): it resumes from its
#     checkpoint, the workers rejoin by themselves, and the model equals local mode's bytes.
# Needs: a running dockerd, docker-compose (v1) or `docker compose` (v2), the .NET base images
# (../shared/tools/offline-base-images.sh builds local stand-ins when no registry is reachable).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
if docker compose version >/dev/null 2>&1; then compose_cmd=(docker compose); else compose_cmd=(docker-compose); fi
compose() { "${compose_cmd[@]}" "$@"; }
project=dbp-it-$$
work=$(mktemp -d)
cleanup() { compose -p "$project" down -v --remove-orphans >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
say() { echo "[docker-compose test] $*"; }
# Every wait here is bounded: a run that hangs (a worker that never joins, a server that never ends) fails with
# every container's last lines instead of holding CI until its own limit (one CI run was lost so, with no output).
logs() { compose -p "$project" logs --timestamps --tail 80 2>&1 | sed 's/^/  | /' || true; }
fail() { logs; say "FAIL: $*"; exit 1; }

say "publishing dbp and building the image"
dotnet publish src/DistributedBackprop.Cli -c Release -o out/dbp >/dev/null
compose build >/dev/null

say "reference: local mode, 2 workers"
out/dbp/dbp train --workers 2 --out "$work/local.safetensors" --progress none >/dev/null
out/dbp/dbp train --workers 2 --epochs 200 --out "$work/local-long.safetensors" --progress none >/dev/null

say "run 1: up --scale worker=2"
mkdir -p "$work/out1"
start=$(date +%s.%N)
# Without --exit-code-from: it implies --abort-on-container-exit, which stops the server when a worker that was
# told training is over exits before the server's own shutdown is done. `up` waits for every container instead,
# and the server's exit code is read from the container.
DBP_OUTPUT_DIR="$work/out1" timeout 300 "${compose_cmd[@]}" -p "$project" up --scale worker=2 >"$work/run1.log" 2>&1 \
  || { code=$?; cat "$work/run1.log"; say "FAIL: compose run exited with $code (124: it ran over 300 s)"; exit 1; }
server_code=$(docker inspect --format '{{.State.ExitCode}}' "$(compose -p "$project" ps -q server)")
[ "$server_code" = 0 ] || { cat "$work/run1.log"; say "FAIL: the server exited with $server_code"; exit 1; }
say "run 1 took $(echo "$(date +%s.%N) - $start" | bc) s"
cmp "$work/local.safetensors" "$work/out1/model.safetensors" || { say "FAIL: model differs from local mode"; exit 1; }
test "$(wc -l < "$work/out1/metrics.jsonl")" -eq 30 || { say "FAIL: expected 30 metrics lines"; exit 1; }
# The healthcheck reads the socket table: a probe that connected was a failed TLS handshake each second.
# Only inbound connections from the container itself: a worker's own handshakes may fail as it exits.
! grep -q "Rejected incoming connection from \[\[::ffff:127.0.0.1\]" "$work/run1.log" \
  || { grep -m3 "Rejected incoming connection" "$work/run1.log"; say "FAIL: the server refused connections from itself (the healthcheck's?)"; exit 1; }
compose -p "$project" down -v >/dev/null 2>&1
test -z "$(docker ps -aq --filter "label=com.docker.compose.project=$project")" || { say "FAIL: containers left after down"; exit 1; }
say "run 1: model equals local mode, down left nothing"

say "run 2: a worker is killed mid-run"
mkdir -p "$work/out2"
# `up -d` fails when the server is not healthy in time, and then starts no worker (seen once under load).
DBP_OUTPUT_DIR="$work/out2" DBP_MIN_WORKERS=3 DBP_TRAIN_ARGS="--epochs 200" compose -p "$project" up -d --scale worker=3 >"$work/up2.log" 2>&1 \
  || { cat "$work/up2.log"; fail "run 2: compose up -d failed"; }
# Training starts once all three have joined: without 20 epochs in 120 s, one never did (the kill below would
# leave a server waiting for its third worker for ever).
epochs_seen=0
for _ in $(seq 1 600); do
  [ -f "$work/out2/metrics.jsonl" ] && epochs_seen=$(wc -l < "$work/out2/metrics.jsonl") && [ "$epochs_seen" -ge 20 ] && break
  sleep 0.2
done
[ "$epochs_seen" -ge 20 ] || fail "run 2: $epochs_seen epochs after 120 s with 3 workers (did each join?)"
image=distributedbackprop/dbp:local
token=$(docker run --rm --entrypoint cat -v "${project}_dbp-join:/j:ro" "$image" /j/token)
case "$token" in DBPTKN-1-*) ;; *) say "FAIL: no join token in the dbp-join volume"; exit 1 ;; esac
for c in $(docker ps -q --filter "label=com.docker.compose.project=$project"); do
  if docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}{{range .Config.Cmd}}{{println .}}{{end}}' "$c" | grep -q DBPTKN; then
    say "FAIL: the join token is visible in docker inspect of $c"; exit 1
  fi
done
set +e
stranger=$(docker run --rm --network "${project}_default" "$image" worker --join server:4053 --token "${token%-*}-$(printf '0%.0s' $(seq 64))" 2>&1)
stranger_code=$?
set -e
[ "$stranger_code" = 2 ] && echo "$stranger" | grep -q "wrong join token" \
  || { echo "$stranger"; say "FAIL: a worker with a wrong token was not refused with exit 2 (got $stranger_code)"; exit 1; }
say "stranger with a wrong token refused: $(echo "$stranger" | tail -1)"
victim=$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=worker" | head -1)
docker kill "$victim" >/dev/null
killed_at=$(date +%s.%N)
server=$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=server")
code=$(timeout 300 docker wait "$server") || fail "run 2: the server did not end within 300 s of the worker's kill"
compose -p "$project" logs server > "$work/run2.log" 2>&1
[ "$code" = 0 ] || { cat "$work/run2.log"; say "FAIL: server exited with $code"; exit 1; }
# Noticed by DeathWatch ("worker … died"), or first by the step deadline or an undeliverable frame (the
# chunks are dealt around at once; DeathWatch follows unless the run ends first).
grep -qE "worker .* died|waited .* for |cannot deliver step" "$work/run2.log" || { tail -40 "$work/run2.log"; say "FAIL: the server did not notice the killed worker"; exit 1; }
say "run 2: the server noticed: $(grep -m1 -oE "worker [^ ]+ died|waited .* for [^;]+|cannot deliver step [0-9]+'s work" "$work/run2.log")"
grep -q "refused to enroll a node from .*: wrong join token" "$work/run2.log" || { say "FAIL: the server did not log the stranger's refusal"; exit 1; }
cmp "$work/local-long.safetensors" "$work/out2/model.safetensors" || { say "FAIL: model differs after docker kill"; exit 1; }
say "run 2: worker killed at $(date -d @"${killed_at%.*}" +%T), training completed, model equals local mode"
compose -p "$project" down -v >/dev/null 2>&1

say "run 3: the server process is killed mid-run; the restart policy starts it again"
mkdir -p "$work/out3"
DBP_OUTPUT_DIR="$work/out3" DBP_TRAIN_ARGS="--epochs 200" compose -p "$project" up -d --scale worker=2 >"$work/up3.log" 2>&1 \
  || { cat "$work/up3.log"; fail "run 3: compose up -d failed"; }
for _ in $(seq 1 300); do
  [ -f "$work/out3/metrics.jsonl" ] && [ "$(wc -l < "$work/out3/metrics.jsonl")" -ge 30 ] && break
  sleep 0.2
done
server=$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=server")
# The dotnet process running dbp (PID 1 is the container's init, which then exits with the crash's code).
# When the container stops, the exec'd shell is killed with it and docker exec exits 137 (a CI run ended
# there): that is the kill working. Whether it worked is read from the container's state below.
docker exec "$server" sh -c 'for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = dotnet ] && kill -9 "${p#/proc/}"; done; true' || true
killed=$(date +%s.%N)
state=""
for _ in $(seq 1 600); do
  state=$(docker inspect -f '{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}' "$server")
  case "$state" in "exited "[1-9]*" 0") break ;; esac
  sleep 0.5
done
compose -p "$project" logs server > "$work/run3.log" 2>&1
compose -p "$project" logs worker > "$work/run3-workers.log" 2>&1
case "$state" in "exited "[1-9]*" 0") ;; *) tail -30 "$work/run3.log"; say "FAIL: server state '$state' (want exited after a restart, code 0)"; exit 1 ;; esac
grep -q "resuming from /var/lib/dbp/checkpoint.safetensors" "$work/run3.log" || { tail -30 "$work/run3.log"; say "FAIL: the restarted server did not resume from its checkpoint"; exit 1; }
grep -q "rejoining when it answers again" "$work/run3-workers.log" || { tail -30 "$work/run3-workers.log"; say "FAIL: the workers did not rejoin"; exit 1; }
cmp "$work/local-long.safetensors" "$work/out3/model.safetensors" || { say "FAIL: model differs after the server's restart"; exit 1; }
test "$(wc -l < "$work/out3/metrics.jsonl")" -eq 200 || { say "FAIL: expected 200 metrics lines after the restart, got $(wc -l < "$work/out3/metrics.jsonl")"; exit 1; }
say "run 3: server killed at $(date -d @"${killed%.*}" +%T), restarted by Docker ($state), $(grep -o 'resuming from .*' "$work/run3.log" | head -1 | sed 's/.*| //'), model equals local mode"
compose -p "$project" down -v >/dev/null 2>&1
say "PASS"
