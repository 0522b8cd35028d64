#!/usr/bin/env bash
# Side-by-side hit-path comparison of builds of the `proxy` example: the static ceiling, then
# each build with each store, then tower-http-cache (bench/peers' `peer_proxy`) with each of its
# backends, in turn, for ROUNDS rounds, on one machine in one run. Each row's "× ceiling" is its
# requests/s over the static ceiling's in the same round. This is how BENCHMARKS.md compares the
# code before and after a change, and with the nearest Rust peer; bench/load.sh is the full
# benchmark, and bench/ratio_chart.py draws this table.
#
#   git stash; cargo build --release --example proxy; mkdir -p /tmp/before
#   cp target/release/examples/proxy /tmp/before/; git stash pop
#   cargo build --release --example proxy; mkdir -p /tmp/after
#   cp target/release/examples/proxy /tmp/after/
#   bash bench/ab.sh /tmp/before /tmp/after
#
# Each DIR holds a `proxy` binary (or a script that runs one with settings of its own). Per run it
# prints requests/s, its ratio to the static ceiling, wrk's p50 and p99, and the CPU time per
# request of the proxy (or the static server), of wrk and of Redis.
#
# Environment (all optional):
#   STORES    stores to run (default "memory tiered redis")
#   DURATION  seconds per run (default 10)
#   CONNS     connections of wrk (default 32; wrk runs one thread)
#   ROUNDS    rounds (default 2)
#   WRK       the wrk binary (default: wrk on PATH; `apt-get install wrk`)
#   PEERS     backends of bench/peers' `peer_proxy` (tower-http-cache 0.6) to run after each
#             store in every round (default "moka redis"; "" for none). Built here.
#
# Needs: cargo, redis-server, curl, python3, wrk. Everything listens on free 127.0.0.1 ports and
# is stopped, by PID, on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash bench/ab.sh DIR [DIR ...]" >&2; exit 2; }
STORES=${STORES:-"memory tiered redis"}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-2}
WRK=${WRK:-wrk}
for dir in "$@"; do [ -x "$dir/proxy" ] || { echo "no proxy binary in $dir" >&2; exit 2; }; done

PEERS=${PEERS-"moka redis"}
cargo build --release --quiet --example slow_upstream
if [ -n "$PEERS" ]; then
  cargo build --release --quiet --manifest-path bench/peers/Cargo.toml
fi
peer_bin=bench/peers/target/release/peer_proxy
upstream_bin=target/release/examples/slow_upstream
source bench/common.sh

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

# measure LABEL PID URL: one wrk run of DURATION seconds, with the CPU each process used per
# request, and the ratio of its requests/s to the static ceiling's in the same round.
measure() {
  local label=$1 pid=$2 url=$3 tick r0 r1 p0 p1
  tick=$(getconf CLK_TCK)
  p0=$(cpu_ticks "$pid"); r0=$(cpu_ticks "$redis_pid")
  /usr/bin/time -f "%U %S" -o "$work/wrk.time" \
    "$WRK" -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url" >"$work/wrk.out"
  p1=$(cpu_ticks "$pid"); r1=$(cpu_ticks "$redis_pid")
  python3 - "$label" "$work/wrk.out" "$work/wrk.time" "$tick" "$p0" "$p1" "$r0" "$r1" \
    "$work/ceiling" <<'PY'
import re, sys
label, out, times, tick, p0, p1, r0, r1, ceiling_file = sys.argv[1:]
text, tick = open(out).read(), int(tick)
n = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(q):
    value, unit = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", text)
user, system = map(float, open(times).read().split())
us = lambda ticks: ticks / tick / n * 1e6
if label.endswith("static ceiling"):
    open(ceiling_file, "w").write(str(rps))
ratio = rps / float(open(ceiling_file).read())
print(f"| {label} | {rps:,.0f} | {ratio:.2f} | {ms(50):.2f} | {ms(99):.2f} "
      f"| {us(int(p1) - int(p0)):.1f} | {(user + system) / n * 1e6:.1f} "
      f"| {us(int(r1) - int(r0)):.1f} |" + (f" {errors.group(0)}" if errors else ""))
PY
}

# serve PID LABEL LOG URL: waits for the server PID to answer URL, primes the entry wrk reads
# (wrk sends no `Accept`, which the proxy keys on), measures it as LABEL and stops it.
serve() {
  local pid=$1 label=$2 log=$3 url=$4
  pids+=("$pid")
  wait_http "$url" || { cat "$log" >&2; exit 1; }
  curl -sf -H 'Accept:' -o /dev/null "$url"
  measure "$label" "$pid" "$url"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "| run | req/s | × ceiling | p50 ms | p99 ms | server CPU µs/req | wrk CPU µs/req | Redis CPU µs/req |"
echo "|---|--:|--:|--:|--:|--:|--:|--:|"
for round in $(seq 1 "$ROUNDS"); do
  measure "round $round: static ceiling" "$static_pid" "http://127.0.0.1:$static_port/users"
  for store in $STORES; do
    for dir in "$@"; do
      port=$(free_port)
      CACHE_STORE=$store REDIS_URL="redis://127.0.0.1:$redis_port" \
        UPSTREAM_URL="http://127.0.0.1:$upstream_port" BIND="127.0.0.1:$port" \
        CACHE_TTL_SECS=3600 RUST_LOG=warn "$dir/proxy" >"$work/proxy.log" 2>&1 &
      serve $! "round $round: $store, $dir" "$work/proxy.log" "http://127.0.0.1:$port/users"
    done
  done
  for backend in $PEERS; do
    port=$(free_port)
    PEER_BACKEND=$backend REDIS_URL="redis://127.0.0.1:$redis_port" \
      UPSTREAM_URL="http://127.0.0.1:$upstream_port" BIND="127.0.0.1:$port" \
      CACHE_TTL_SECS=3600 RUST_LOG=warn "$peer_bin" >"$work/peer.log" 2>&1 &
    serve $! "round $round: tower-http-cache, $backend" "$work/peer.log" \
      "http://127.0.0.1:$port/users"
  done
done
