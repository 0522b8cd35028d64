#!/usr/bin/env bash
# Hit and miss latency of the `users_api` example (SQLite behind the cache), with the
# in-process store and with Redis, side by side in one run. bench/load.sh is the full benchmark,
# of the `proxy` example; this one shows the same layer in front of a real database handler.
#
#   bash bench/users_api.sh          # 10 s per run
#   SECONDS_PER_RUN=3 bash bench/users_api.sh
#
# Hits are `GET /users/1` (primed); misses are `GET /users/1?miss=<20 random characters>`
# (oha's --rand-regex-url): each one a lookup, a database read and a store write. Runs at 1 and
# 32 connections. Prints a Markdown table with requests/s, p50/p95/p99 in ms and the example's
# CPU time per request.
#
# Needs: cargo, redis-server, curl, python3, oha (`cargo install oha --locked`). Everything
# listens on free 127.0.0.1 ports (never the shared Redis on 6379) and is stopped, by PID, on
# exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
OHA=${OHA:-oha}
command -v "$OHA" >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }

cargo build --release --quiet --example users_api
source bench/common.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
pids+=("$!")

# run STORE PID PATH CONNS [oha args...] URL: one row of the table.
run() {
  local store=$1 pid=$2 path=$3 conns=$4; shift 4
  local t0 t1
  t0=$(cpu_ticks "$pid")
  "$OHA" -z "${SECONDS_PER_RUN}s" -c "$conns" --no-tui --output-format json "$@" >"$work/oha.json"
  t1=$(cpu_ticks "$pid")
  python3 - "$store" "$path" "$conns" "$work/oha.json" "$((t1 - t0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
store, path, conns, oha, ticks, tick = sys.argv[1:]
o = json.load(open(oha))
done = sum(o["statusCodeDistribution"].values())
ms = lambda q: o["latencyPercentiles"][q] * 1000
cpu = int(ticks) / int(tick) / max(done, 1) * 1e6
print(f"| {store} | {path} | {conns} | {o['summary']['requestsPerSec']:,.0f} "
      f"| {ms('p50'):.3f} | {ms('p95'):.3f} | {ms('p99'):.3f} | {cpu:.1f} |")
PY
}

echo "machine: $(nproc) cores; $(redis-server --version | cut -d' ' -f3); $("$OHA" --version); $(date -u +%F)"
echo "| store | path | conns | req/s | p50 ms | p95 ms | p99 ms | users_api CPU µs/req |"
echo "|---|---|---|---|---|---|---|---|"
for store in memory redis; do
  port=$(free_port)
  redis_url=""
  [ "$store" = redis ] && redis_url="redis://127.0.0.1:$redis_port"
  REDIS_URL=$redis_url BIND="127.0.0.1:$port" RUST_LOG=warn \
    target/release/examples/users_api >"$work/app.log" 2>&1 &
  app=$!
  pids+=("$app")
  base="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -fs "$base/health" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "$base/users/1" >/dev/null
  sleep 0.2
  x_cache=$(curl -fsi "$base/users/1" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')
  [ "$x_cache" = HIT ] || { echo "$store: the warm-up did not give a HIT" >&2; exit 1; }
  for conns in 1 32; do
    run "$store" "$app" hit "$conns" "$base/users/1"
    run "$store" "$app" miss "$conns" --rand-regex-url "$base/users/1\\?miss=[a-z0-9]{20}"
  done
  kill "$app"
  wait "$app" 2>/dev/null || true
done
