# Sourced by the bench scripts that start `dbp serve` and its workers on this host.
# worker_arguments SERVE_STDERR: waits up to 20 s for the line where `dbp serve` prints how workers join
# ("workers join with: dbp worker …", the join address, bulk port and token file or --insecure) and prints the
# arguments after "dbp"; without the line, says so with the server's output on stderr and returns 1.
worker_arguments() {
  local err=$1
  for _ in $(seq 1 200); do grep -q "workers join with" "$err" && break; sleep 0.1; done
  if ! grep -q "workers join with" "$err"; then
    echo "dbp serve printed no join line within 20 s ($err):" >&2; cat "$err" >&2; return 1
  fi
  grep -o 'workers join with: dbp worker .*' "$err" | head -1 | sed 's/.*dbp //'
}
