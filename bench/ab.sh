#!/usr/bin/env bash
# Side-by-side hit-path comparison of builds of the `proxy` example: the static ceiling, then
# each build with each store, in turn, for ROUNDS rounds, on one machine in one run. This is how
# BENCHMARKS.md compares the code before and after a change; bench/load.sh is the full benchmark.
#
#   git stash; cargo build --release --example proxy; mkdir -p /tmp/before
#   cp target/release/examples/proxy /tmp/before/; git stash pop
#   cargo build --release --example proxy; mkdir -p /tmp/after
#   cp target/release/examples/proxy /tmp/after/
#   bash bench/ab.sh /tmp/before /tmp/after
#
# Each DIR holds a `proxy` binary. Per run it prints requests/s and the CPU time per request of
# the proxy (or the static server), of oha and of Redis.
#
# Environment (all optional):
#   STORES    stores to run (default "memory tiered redis")
#   REQUESTS  requests per run (default 100000)
#   CONNS     connections of oha (default 32)
#   ROUNDS    rounds (default 2)
#   OHA       the oha binary (default: oha on PATH; `cargo install oha --locked`)
#
# Needs: cargo, redis-server, curl, python3, oha. Everything listens on free 127.0.0.1 ports and
# is stopped, by PID, on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash bench/ab.sh DIR [DIR ...]" >&2; exit 2; }
STORES=${STORES:-"memory tiered redis"}
REQUESTS=${REQUESTS:-100000}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-2}
OHA=${OHA:-oha}
for dir in "$@"; do [ -x "$dir/proxy" ] || { echo "no proxy binary in $dir" >&2; exit 2; }; done

cargo build --release --quiet --example slow_upstream
upstream_bin=target/release/examples/slow_upstream
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
wait_http() { for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
redis_pid=$!; pids+=("$redis_pid")
static_port=$(free_port)
DELAY_MS=0 BIND="127.0.0.1:$static_port" RUST_LOG=warn "$upstream_bin" >/dev/null 2>&1 &
static_pid=$!; pids+=("$static_pid")
upstream_port=$(free_port)
DELAY_MS=20 BIND="127.0.0.1:$upstream_port" RUST_LOG=warn "$upstream_bin" >/dev/null 2>&1 &
pids+=("$!")
wait_http "http://127.0.0.1:$static_port/users"
wait_http "http://127.0.0.1:$upstream_port/__count"

# measure LABEL PID URL: one run of REQUESTS requests, with the CPU each process used.
measure() {
  local label=$1 pid=$2 url=$3 tick r0 r1 p0 p1
  tick=$(getconf CLK_TCK)
  p0=$(cpu_ticks "$pid"); r0=$(cpu_ticks "$redis_pid")
  /usr/bin/time -f "%U %S" -o "$work/oha.time" \
    "$OHA" -n "$REQUESTS" -c "$CONNS" --no-tui --output-format json "$url" >"$work/oha.json"
  p1=$(cpu_ticks "$pid"); r1=$(cpu_ticks "$redis_pid")
  python3 - "$label" "$work/oha.json" "$work/oha.time" "$REQUESTS" "$tick" "$p0" "$p1" "$r0" "$r1" <<'PY'
import json, sys
label, oha, times, n, tick, p0, p1, r0, r1 = sys.argv[1:]
n, tick = int(n), int(tick)
summary = json.load(open(oha))["summary"]
user, system = map(float, open(times).read().split())
us = lambda ticks: ticks / tick / n * 1e6
print(f"| {label} | {summary['requestsPerSec']:,.0f} | {us(int(p1) - int(p0)):.1f} "
      f"| {(user + system) / n * 1e6:.1f} | {us(int(r1) - int(r0)):.1f} |")
PY
}

echo "| run | req/s | server CPU µs/req | oha CPU µs/req | Redis CPU µs/req |"
echo "|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
  measure "round $round: static ceiling" "$static_pid" "http://127.0.0.1:$static_port/users"
  for store in $STORES; do
    for dir in "$@"; do
      port=$(free_port)
      CACHE_STORE=$store REDIS_URL="redis://127.0.0.1:$redis_port" \
        UPSTREAM_URL="http://127.0.0.1:$upstream_port" BIND="127.0.0.1:$port" \
        CACHE_TTL_SECS=3600 RUST_LOG=warn "$dir/proxy" >"$work/proxy.log" 2>&1 &
      proxy_pid=$!; pids+=("$proxy_pid")
      wait_http "http://127.0.0.1:$port/users" || { cat "$work/proxy.log" >&2; exit 1; }
      measure "round $round: $store, $dir" "$proxy_pid" "http://127.0.0.1:$port/users"
      kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
    done
  done
done
