#!/usr/bin/env bash
# Refresh-ahead under steady load: one hot key with a 10 s TTL, read by 32 connections for
# DURATION seconds through the `proxy` example, with refreshing ahead on and then off, over each
# store. Counts the responses that waited for the upstream (misses, and requests that waited for
# another's miss) and the requests that reached the upstream, with the latency percentiles of
# the whole run (every expiry is in it).
#
#   bash bench/refresh_ahead.sh
#
# Environment (all optional):
#   STORES    stores to run (default "memory redis")
#   DURATION  seconds per run (default 120)
#   CONNS     connections of wrk (default 32; wrk runs one thread)
#   TTL       the entry's time to live in seconds (default 10)
#
# Needs: cargo, redis-server, curl, python3, wrk. Everything listens on free 127.0.0.1 ports and
# is stopped, by PID, on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
STORES=${STORES:-"memory redis"}
DURATION=${DURATION:-120}
CONNS=${CONNS:-32}
TTL=${TTL:-10}

cargo build --release --quiet --example slow_upstream --example proxy
source bench/common.sh

# Counts each response's X-Cache value; `done` prints them after wrk's own summary.
# Counts the responses that waited for the upstream, by their Cache-Status (RFC 9211): a miss
# (`fwd=`, `MISS`) or a request that waited for another's miss (`collapsed`, `HIT`). `done`
# prints them after wrk's own summary.
cat >"$work/count.lua" <<'LUA'
answered, waited, forwarded = 0, 0, 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  local value = headers["cache-status"] or ""
  answered = answered + 1
  if string.find(value, "collapsed", 1, true) then waited = waited + 1
  elseif string.find(value, "fwd=", 1, true) then forwarded = forwarded + 1 end
end
function done(summary, latency, requests)
  local a, w, f = 0, 0, 0
  for _, thread in ipairs(threads) do
    a = a + thread:get("answered"); w = w + thread:get("waited"); f = f + thread:get("forwarded")
  end
  io.write(string.format("counts %d %d %d\n", a, f, w))
  io.write(string.format("latency %.0f %.0f %.0f %.0f\n", latency:percentile(50),
    latency:percentile(99), latency:percentile(99.99), latency.max))
end
LUA

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=("$!")
upstream_port=$(free_port)
DELAY_MS=20 BIND="127.0.0.1:$upstream_port" RUST_LOG=warn \
  target/release/examples/slow_upstream >/dev/null 2>&1 &
pids+=("$!")
wait_http "http://127.0.0.1:$upstream_port/__count"
count() { curl -sf "http://127.0.0.1:$upstream_port/__count"; }

echo "| store, refresh ahead | requests | misses | waited for a miss | upstream requests | p50 ms | p99 ms | p99.99 ms | max ms |"
echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|"
for store in $STORES; do
  for mode in on off; do
    port=$(free_port)
    CACHE_STORE=$store REDIS_URL="redis://127.0.0.1:$redis_port" CACHE_REFRESH_AHEAD=$mode \
      UPSTREAM_URL="http://127.0.0.1:$upstream_port" BIND="127.0.0.1:$port" \
      CACHE_TTL_SECS=$TTL RUST_LOG=${PROXY_LOG:-warn} target/release/examples/proxy >"$work/proxy.log" 2>&1 &
    proxy_pid=$!; pids+=("$proxy_pid")
    # A path of its own per run, so that no run finds another's entry; warmed by one miss.
    url="http://127.0.0.1:$port/users?run=$store-$mode"
    wait_http "$url" || { cat "$work/proxy.log" >&2; exit 1; }
    # wrk sends no `Accept`, which the proxy keys on: warm the entry it will read.
    curl -sf -H 'Accept:' -o /dev/null "$url"
    before=$(count)
    wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$work/count.lua" "$url" >"$work/wrk.out"
    after=$(count)
    read -r _ answered forwarded waited < <(grep '^counts' "$work/wrk.out")
    read -r _ p50 p99 p9999 max < <(grep '^latency' "$work/wrk.out")
    python3 -c "
import sys
a, f, w, up, p50, p99, p9999, mx = map(float, sys.argv[1:])
print(f'| $store, $mode | {a:,.0f} | {f:.0f} | {w:.0f} | {up:.0f} | {p50/1e3:.2f} | {p99/1e3:.2f} | {p9999/1e3:.2f} | {mx/1e3:.2f} |')
" "$answered" "$forwarded" "$waited" "$((after - before))" "$p50" "$p99" "$p9999" "$max"
    kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true
    [ -z "${KEEP_LOG:-}" ] || cp "$work/proxy.log" "$KEEP_LOG.$store.$mode"
  done
done
