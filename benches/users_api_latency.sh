#!/usr/bin/env bash
# Hit and miss latency of the users_api example with the Redis store, side by side in one run.
#
#   bash benches/users_api_latency.sh [seconds per run, default 10]
#
# Starts a private redis-server and the example (release build) on free loopback ports, then
# drives them with wrk: hits (`GET /users/1`, answered from Redis) and misses
# (`GET /users/1?miss=<unique>`, each a lookup, a database read and a store write). Needs
# redis-server and wrk (Debian: apt-get install redis-server wrk). Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --example users_api >/dev/null 2>&1 || cargo build --release --example users_api

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!)
app_port=$(free_port)
REDIS_URL="redis://127.0.0.1:$redis_port" BIND="127.0.0.1:$app_port" RUST_LOG=warn \
  target/release/examples/users_api >"$work/app.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:$app_port"
for _ in $(seq 1 100); do curl -fs "$base/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$base/users/1" >/dev/null
sleep 0.2
[ "$(curl -fsi "$base/users/1" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')" = HIT ] \
  || { echo "warm-up did not give a HIT" >&2; exit 1; }

cat >"$work/miss.lua" <<'LUA'
local n = 0
math.randomseed(os.time())
request = function()
  n = n + 1
  return wrk.format("GET", "/users/1?miss=" .. n .. "-" .. math.random(1, 1000000000))
end
LUA

run() { # name connections [wrk args...]
  local name=$1 conns=$2; shift 2
  wrk -t1 -c"$conns" -d"${secs}s" --latency "$@" >"$work/$name.txt"
  awk -v name="$name" -v c="$conns" '
    /Requests\/sec/ {rps=$2}
    $1=="50%" {p50=$2} $1=="90%" {p90=$2} $1=="99%" {p99=$2}
    END {printf "| %-4s | %3d | %10s | %8s | %8s | %8s |\n", name, c, rps, p50, p90, p99}' "$work/$name.txt"
}

echo "machine: $(nproc) cores, $(uname -m); $(redis-server --version | cut -d' ' -f3); $(date -u +%F)"
echo "| path | connections | requests/s | p50 | p90 | p99 |"
echo "|---|---|---|---|---|---|"
run hit 1 "$base/users/1"
run miss 1 -s "$work/miss.lua" "$base"
run hit 32 "$base/users/1"
run miss 32 -s "$work/miss.lua" "$base"
