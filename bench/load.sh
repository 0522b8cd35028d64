#!/usr/bin/env bash
# Load benchmark of the `proxy` example in front of a slow upstream: no cache, and each cache
# store (in process, Redis, tiered), on the hit path and the miss path, side by side in one run.
#
#   bash bench/load.sh                                   # the full run: about 9 minutes
#   LOAD_SECONDS=3 SOAK_SECONDS=10 bash bench/load.sh   # a smoke run of about 3 minutes
#   BENCH_NICE=-10 bash bench/load.sh                    # on a machine others are using too
#
# Times leave out the first build. BENCHMARKS.md has a run of it, and reads it.
#
# What it does, in order:
#   1. builds in release the examples `proxy`, `users_api` (built only, to check it),
#      `slow_upstream` (a JSON list of 40 users, 5,134 bytes, after DELAY_MS; counts the requests
#      it gets at GET /__count) and `plot_bench` (the chart);
#   2. starts a private redis-server, the upstream and the proxy on free 127.0.0.1 ports (never
#      the shared Redis on 6379; nothing leaves loopback);
#   3. drives them with oha (installed with `cargo install oha --locked` when missing) for
#      LOAD_SECONDS per run, at each concurrency of CONCURRENCY:
#        - at each upstream delay of DELAYS: the static ceiling (the upstream itself with
#          DELAY_MS=0, no proxy, no cache; its rows carry the delay of their block), the proxy
#          with CACHE_STORE=none (every request goes upstream), then for each cached store the
#          hit path (GET /users, primed, never expires during the run) and the miss path
#          (GET /users?miss=<20 random characters>, a new key for every request, through oha's
#          --rand-regex-url);
#        - one SOAK_SECONDS hit run of the Redis store at the highest concurrency, to see whether
#          the proxy's memory stays flat;
#   4. per run, records requests/s, p50/p95/p99 latency, the requests that reached the upstream,
#      Redis commands per request (INFO commandstats after CONFIG RESETSTAT) and socket reads per
#      request (INFO stats total_reads_processed), CPU time per request of the proxy and of Redis
#      (/proc/<pid>/stat), the proxy's RSS at the start and the end of the run (/proc/<pid>/status
#      VmRSS), and the share of the CPU that other programs took meanwhile; then, for Redis and
#      tiered at the first delay, the Redis round trips a hit and a miss wait for: the same
#      requests through a relay that holds what goes to Redis for RTT_PROBE_MS, so that each
#      round trip adds that much to the latency;
#   5. prints a Markdown table and writes it to $OUT_DIR/$RUN_NAME.md, with the CSV next to it,
#      the Redis size of one entry (MEMORY USAGE) and the ratios of the project's targets; draws
#      $OUT_DIR/latency.svg from the CSV.
#
# The `tiered` configuration (tower_redis_cache::TieredStore, an in-process L1 in front of Redis)
# runs when the proxy example accepts CACHE_STORE=tiered; otherwise it is skipped with a note.
#
# Everything shares the machine: the load generator, the proxy, the upstream and Redis compete
# for the same cores, so the figures compare configurations with each other on one machine;
# they are not the capacity of a dedicated server.
#
# Environment (all optional):
#   LOAD_SECONDS  seconds per run (default 10)
#   SOAK_SECONDS  seconds of the long Redis hit run, 0 to skip it (default 60)
#   DELAYS        upstream delays in milliseconds (default "20 200")
#   CONCURRENCY   connections of the load generator (default "32 1")
#   CONFIGS       cache configurations (default "none memory redis tiered")
#   OUT_DIR       where results go (default bench/results)
#   RUN_NAME      results file name without extension (default: today's date, UTC)
#   OHA           the oha binary (default: oha on PATH)
#   RTT_PROBE_MS  the delay the relay adds to each Redis round trip in the probe (default 10)
#   WAIT_QUIET    before each run, wait up to this many seconds for the machine to be less than
#                 15% busy (other programs' builds or tests skew a run); 0: do not wait (default)
#   BENCH_NICE    niceness of everything the benchmark starts after the build, e.g. -10 (root
#                 only) so that other programs on a shared machine take less CPU from the runs;
#                 0: unchanged (default). Where the kernel groups processes by session
#                 (sched_autogroup), niceness only orders processes of one session, so this also
#                 sets the niceness of the script's session group, and restores it on exit.
#   KEEP_WORK=1   keep the temporary directory of logs and oha JSON files
#
# Needs: cargo, redis-server and redis-cli, curl, jq, python3 (Debian: apt-get install
# redis-server curl jq). Stops everything it started, by PID, on exit or interruption.
set -euo pipefail
cd "$(dirname "$0")/.."

LOAD_SECONDS=${LOAD_SECONDS:-10}
SOAK_SECONDS=${SOAK_SECONDS:-60}
DELAYS=${DELAYS:-"20 200"}
CONCURRENCY=${CONCURRENCY:-"32 1"}
CONFIGS=${CONFIGS:-"none memory redis tiered"}
OUT_DIR=${OUT_DIR:-bench/results}
RUN_NAME=${RUN_NAME:-$(date -u +%F)}
OHA=${OHA:-oha}
WAIT_QUIET=${WAIT_QUIET:-0}
BENCH_NICE=${BENCH_NICE:-0}
# Every upstream request must come back long before this; a hung run is cut off.
RUN_GRACE_SECONDS=30
# Entries never expire during a run.
CACHE_TTL_SECS=3600

say() { echo "== $*" >&2; }
die() { echo "bench/load.sh: $*" >&2; exit 1; }

for tool in cargo redis-server redis-cli curl jq python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required (see the top of this script)"
done
if ! command -v "$OHA" >/dev/null 2>&1; then
  say "oha not found: cargo install oha --locked"
  cargo install oha --locked
  OHA=oha
fi

work=$(mktemp -d)
pids=()
autogroup_restore=""
cleanup() {
  local pid
  if [ -n "$autogroup_restore" ]; then
    echo "$autogroup_restore" >"/proc/$$/autogroup" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "${KEEP_WORK:-0}" = 1 ]; then
    echo "logs and oha output kept in $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. Build

say "building the examples in release"
cargo build --release --example proxy --example users_api --example slow_upstream \
  --example plot_bench 2>"$work/build.log" || { cat "$work/build.log" >&2; die "build failed"; }
bin=target/release/examples
if [ "$BENCH_NICE" != 0 ]; then
  # Every process started from here on inherits it.
  renice -n "$BENCH_NICE" -p $$ >/dev/null || die "cannot set the niceness to $BENCH_NICE"
  if [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo 0)" = 1 ] \
    && [ -w "/proc/$$/autogroup" ]; then
    autogroup_restore=$(awk '{print $NF}' "/proc/$$/autogroup")
    echo "$BENCH_NICE" >"/proc/$$/autogroup" || die "cannot set the session group's niceness"
  fi
  say "running at niceness $BENCH_NICE"
fi

# ---------------------------------------------------------------------------------------------
# Is the machine quiet? Another program's load skews every figure: say so in the results.

busy_percent() { # seconds: how busy the whole machine is over that long, in percent
  local a b
  a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat)
  sleep "$1"
  b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat)
  echo "$a $b" | awk '{ printf "%.0f", 100 * ($3 - $1) / ($4 - $2) }'
}
# Between runs only other programs use the CPU: waits (WAIT_QUIET seconds at most) until they
# leave it less than 15% busy.
wait_quiet() {
  [ "$WAIT_QUIET" -gt 0 ] || return 0
  local waited=0 busy
  while busy=$(busy_percent 1) && [ "$busy" -gt 15 ]; do
    if [ "$waited" -ge "$WAIT_QUIET" ]; then
      say "the machine is still ${busy}% busy after ${waited} s: running anyway"
      return 0
    fi
    [ "$waited" = 0 ] && say "the machine is ${busy}% busy: waiting up to ${WAIT_QUIET} s for it to calm down"
    waited=$((waited + 1))
  done
}
busy_at_start=$(busy_percent 2)
if [ "$busy_at_start" -gt 15 ]; then
  say "WARNING: the machine is ${busy_at_start}% busy before the benchmark starts; the busiest processes:"
  ps -eo pid,pcpu,etime,comm --sort=-pcpu | head -n 4 >&2
fi

# ---------------------------------------------------------------------------------------------
# Processes

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

forget_pid() { # pid: stop tracking it (it was stopped)
  local kept=() pid
  for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
}

stop() { # pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget_pid "$1"
}

# Waits until the log file $2 of process $1 says "listening on http://"; fails if the process
# exits first or after 30 s.
wait_listening() { # pid log
  local _
  for _ in $(seq 1 300); do
    grep -q "listening on http://" "$2" 2>/dev/null && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
redis_pid=$!
pids+=("$redis_pid")
redis() { redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }
for _ in $(seq 1 100); do redis PING >/dev/null 2>&1 && break; sleep 0.1; done
redis PING >/dev/null || die "redis-server did not start (see $work/redis.log)"
redis_url="redis://127.0.0.1:$redis_port"

start_upstream() { # delay_ms -> sets up_pid, up_url
  local port log
  port=$(free_port)
  log="$work/upstream-$1.log"
  BIND="127.0.0.1:$port" DELAY_MS="$1" RUST_LOG=warn "$bin/slow_upstream" >"$log" 2>&1 &
  up_pid=$!
  pids+=("$up_pid")
  wait_listening "$up_pid" "$log" || { cat "$log" >&2; die "slow_upstream did not start"; }
  up_url="http://127.0.0.1:$port"
}

# Starts the proxy in front of $up_url with CACHE_STORE=$1; sets proxy_pid, proxy_url, proxy_log.
# Returns 1 (and leaves nothing running) when the proxy exits during startup.
start_proxy() { # config
  local port
  port=$(free_port)
  proxy_log="$work/proxy-$1-$RANDOM.log"
  CACHE_STORE="$1" REDIS_URL="$redis_url" UPSTREAM_URL="$up_url" BIND="127.0.0.1:$port" \
    CACHE_TTL_SECS="$CACHE_TTL_SECS" RUST_LOG=warn "$bin/proxy" >"$proxy_log" 2>&1 &
  proxy_pid=$!
  pids+=("$proxy_pid")
  if ! wait_listening "$proxy_pid" "$proxy_log"; then
    stop "$proxy_pid"
    return 1
  fi
  proxy_url="http://127.0.0.1:$port"
}

upstream_count() { curl -fsS "$up_url/__count" | tr -d '[:space:]'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks the whole machine spent busy (user, nice, system, irq, softirq, steal).
machine_busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
now() { date +%s.%N; }
clk_tck=$(getconf CLK_TCK)
cores=$(nproc)

# The headers oha sends: the proxy keys entries on Accept and Accept-Encoding, so the entry is
# primed with the same ones.
OHA_HEADERS=(-H 'accept: */*' -H 'accept-encoding: gzip, compress, deflate, br')

# Primes GET $proxy_url$1 and waits (3 s at most) until it is answered from the cache.
prime() { # path
  local _
  curl -fsS -o /dev/null "${OHA_HEADERS[@]}" "$proxy_url$1"
  for _ in $(seq 1 60); do
    curl -fsS -o /dev/null -D - "${OHA_HEADERS[@]}" "$proxy_url$1" | tr -d '\r' \
      | grep -qi '^x-cache: HIT' && return 0
    sleep 0.05
  done
  die "GET $1 was not cached after priming (proxy log: $proxy_log)"
}

# ---------------------------------------------------------------------------------------------
# Runs

csv="$work/results.csv"
echo "config,delay_ms,path,concurrency,seconds,requests,errors,rps,p50_ms,p95_ms,p99_ms,upstream_requests,redis_cmds_per_req,redis_reads_per_req,proxy_cpu_us_per_req,redis_cpu_us_per_req,rss_start_kb,rss_end_kb,other_cpu_pct,redis_cmds" >"$csv"
table="$work/table.md"
{
  echo "| config | upstream delay | path | conns | s | requests | errors | req/s | p50 ms | p95 ms | p99 ms | reached upstream | Redis cmds/req | Redis reads/req | proxy CPU µs/req | Redis CPU µs/req | proxy RSS start → end (MiB) | other CPU % |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} >"$table"

# Drives $url for $seconds at $conc connections and appends a row to the CSV and the table.
# `pid` is the process measured for RSS and CPU (the proxy; the upstream for the ceiling).
# "Other CPU" is the share of the machine's CPU spent by anything but oha, the proxy, the
# upstream and Redis during the run: another program's load there skews the run.
run_load() { # config delay_ms path conc seconds pid url [oha args...]
  local config=$1 delay=$2 path=$3 conc=$4 secs=$5 pid=$6 url=$7
  shift 7
  local name="$config-$delay-$path-$conc" uses_redis=0
  case $config in redis | tiered) uses_redis=1 ;; esac
  say "$config, upstream delay ${delay} ms, $path path, $conc connections, ${secs} s"

  wait_quiet
  if [ "$uses_redis" = 1 ]; then redis CONFIG RESETSTAT >/dev/null; fi
  local count0 rss0 cpu0 rcpu0 ucpu0 busy0 t0
  count0=$(upstream_count)
  rss0=$(rss_kb "$pid")
  cpu0=$(cpu_ticks "$pid")
  rcpu0=$(cpu_ticks "$redis_pid")
  ucpu0=$(cpu_ticks "$up_pid")
  busy0=$(machine_busy_ticks)
  t0=$(now)
  local sampler=""
  if [ -n "${SAMPLE_RSS_TO:-}" ]; then
    # The measured process's RSS every second of the run, from its start.
    (
      echo "second,rss_kb"
      for second in $(seq 0 $((secs + RUN_GRACE_SECONDS))); do
        [ -r "/proc/$pid/status" ] || break
        echo "$second,$(rss_kb "$pid")"
        sleep 1
      done
    ) >"$SAMPLE_RSS_TO" 2>/dev/null &
    sampler=$!
    pids+=("$sampler")
  fi
  local TIMEFORMAT='%U %S'
  { time timeout $((secs + RUN_GRACE_SECONDS)) "$OHA" -z "${secs}s" -c "$conc" --no-tui \
    --output-format json "$@" "$url" >"$work/$name.json" 2>"$work/$name.err"; } \
    2>"$work/$name.time" || die "oha failed on $name (see $work/$name.err)"
  local count1 rss1 cpu1 rcpu1 ucpu1 busy1 t1
  t1=$(now)
  if [ -n "$sampler" ]; then stop "$sampler"; fi
  busy1=$(machine_busy_ticks)
  count1=$(upstream_count)
  rss1=$(rss_kb "$pid")
  cpu1=$(cpu_ticks "$pid")
  rcpu1=$(cpu_ticks "$redis_pid")
  ucpu1=$(cpu_ticks "$up_pid")
  # Seconds of CPU: ours (the upstream counted once when it is the measured process) and oha's.
  local other_cpu
  other_cpu=$(awk -v t="$clk_tck" -v busy=$((busy1 - busy0)) -v p=$((cpu1 - cpu0)) \
    -v r=$((rcpu1 - rcpu0)) -v u=$((ucpu1 - ucpu0)) -v same="$([ "$pid" = "$up_pid" ] && echo 1 || echo 0)" \
    -v oha="$(awk '{print $1 + $2}' "$work/$name.time")" -v el="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
    -v cores="$cores" 'BEGIN {
      ours = (p + r + (same ? 0 : u)) / t + oha
      other = busy / t - ours
      if (other < 0) other = 0
      printf "%.0f", 100 * other / (el * cores)
    }')

  local requests errors rps p50 p95 p99
  read -r requests errors rps p50 p95 p99 < <(jq -r '
    ([.statusCodeDistribution[]] | add // 0) as $all
    | ((.statusCodeDistribution["200"] // 0)) as $ok
    | ([.errorDistribution | to_entries[] | select(.key != "aborted due to deadline") | .value] | add // 0) as $errs
    | [$all, ($all - $ok + $errs), .summary.requestsPerSec,
       .latencyPercentiles.p50 * 1000, .latencyPercentiles.p95 * 1000, .latencyPercentiles.p99 * 1000]
    | map(tostring) | join(" ")' "$work/$name.json")
  [ "$requests" -gt 0 ] || die "no request was answered in $name"

  local cmds_per_req="" reads_per_req="" redis_cpu="" breakdown=""
  if [ "$uses_redis" = 1 ]; then
    local info
    info=$(redis INFO stats commandstats | tr -d '\r')
    # Commands of this run: all but the script's own (RESETSTAT and this INFO).
    breakdown=$(echo "$info" | awk -F'[:=,]' -v n="$requests" '
      /^cmdstat_/ {
        name = substr($1, 9)
        if (name != "info" && name != "config|resetstat") { printf "%s%s=%.3f", sep, name, $3 / n; sep = " " }
      }')
    cmds_per_req=$(echo "$info" | awk -F'[:=,]' -v n="$requests" '
      /^cmdstat_/ { name = substr($1, 9); if (name != "info" && name != "config|resetstat") sum += $3 }
      END { printf "%.3f", sum / n }')
    # Two reads are the script's own: the close of RESETSTAT's connection and this INFO.
    reads_per_req=$(echo "$info" | awk -F: -v n="$requests" '
      /^total_reads_processed:/ { r = $2 - 2; if (r < 0) r = 0; printf "%.3f", r / n }')
    redis_cpu=$(awk -v a="$rcpu0" -v b="$rcpu1" -v t="$clk_tck" -v n="$requests" \
      'BEGIN { printf "%.1f", (b - a) / t * 1e6 / n }')
  fi
  local upstream=$((count1 - count0))
  local proxy_cpu
  proxy_cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v t="$clk_tck" -v n="$requests" \
    'BEGIN { printf "%.1f", (b - a) / t * 1e6 / n }')

  printf '%s,%s,%s,%s,%s,%s,%s,%.1f,%.3f,%.3f,%.3f,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' \
    "$config" "$delay" "$path" "$conc" "$secs" "$requests" "$errors" "$rps" "$p50" "$p95" "$p99" \
    "$upstream" "$cmds_per_req" "$reads_per_req" "$proxy_cpu" "$redis_cpu" "$rss0" "$rss1" \
    "$other_cpu" "$breakdown" >>"$csv"
  local shown_delay="${delay} ms"
  [ "$config" = ceiling ] && shown_delay="none (no proxy; ${delay} ms block)"
  printf '| %s | %s | %s | %s | %s | %s | %s | %.0f | %.3f | %.3f | %.3f | %s | %s | %s | %s | %s | %.1f → %.1f | %s |\n' \
    "$config" "$shown_delay" "$path" "$conc" "$secs" "$requests" "$errors" "$rps" "$p50" "$p95" \
    "$p99" "$upstream" "${cmds_per_req:--}${breakdown:+ ($breakdown)}" "${reads_per_req:--}" \
    "$proxy_cpu" "${redis_cpu:--}" "$(awk -v k="$rss0" 'BEGIN { print k / 1024 }')" \
    "$(awk -v k="$rss1" 'BEGIN { print k / 1024 }')" "$other_cpu" >>"$table"
  tail -n 1 "$table" >&2
}

# Redis round trips on the critical path of a request, measured by their cost: a second proxy
# talks to Redis through a relay that holds every client-to-Redis packet for RTT_PROBE_MS, and
# runs $requests requests at 1 connection. Each round trip a request waits for adds that delay
# to its latency, whatever the number of commands pipelined in it; a write the layer makes after
# the response has left (storing a miss) adds nothing. The summary divides the added p50 latency
# (against the same path without the relay) by the delay.
RTT_PROBE_MS=${RTT_PROBE_MS:-10}
rtt_csv="$work/round_trips.csv"
echo "config,delay_ms,path,requests,probe_ms,p50_ms,commands" >"$rtt_csv"
cat >"$work/relay.py" <<'PY'
"""Relays 127.0.0.1:<listen> to 127.0.0.1:<target>, holding client-to-target bytes <ms> ms."""
import asyncio, sys

listen, target, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000

async def delayed(reader, writer):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    async def pump():
        while (item := await queue.get()) is not None:
            due, data = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()
    task = asyncio.create_task(pump())
    while data := await reader.read(65536):
        queue.put_nowait((loop.time() + hold, data))
    queue.put_nowait(None)
    await task

async def direct(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()

async def serve(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(delayed(client_reader, server_writer), direct(server_reader, client_writer))
    except (ConnectionError, OSError):
        client_writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", listen)
    print("listening on http://127.0.0.1:%d" % listen, flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
probe_round_trips() { # config delay_ms path requests url-path [oha args...]
  local config=$1 delay=$2 path=$3 n=$4 url_path=$5
  shift 5
  say "$config, $path path: Redis round trips of $n requests at 1 connection, Redis ${RTT_PROBE_MS} ms away"
  local relay_port relay_pid relay_log="$work/relay-$config-$path.log"
  relay_port=$(free_port)
  python3 "$work/relay.py" "$relay_port" "$redis_port" "$RTT_PROBE_MS" >"$relay_log" 2>&1 &
  relay_pid=$!
  pids+=("$relay_pid")
  wait_listening "$relay_pid" "$relay_log" || die "the relay did not start (see $relay_log)"
  local saved_url=$redis_url
  redis_url="redis://127.0.0.1:$relay_port"
  start_proxy "$config" || die "the proxy did not start through the relay (see $proxy_log)"
  redis_url=$saved_url
  if [ "$path" = hit ]; then prime /users; fi
  redis CONFIG RESETSTAT >/dev/null
  timeout $((n + RUN_GRACE_SECONDS)) "$OHA" -n "$n" -c 1 --no-tui --output-format json "$@" \
    "$proxy_url$url_path" >"$work/rtt-$config-$path.json" 2>"$work/rtt-$config-$path.err" \
    || die "oha failed while counting round trips (see $work/rtt-$config-$path.err)"
  local commands p50 ok
  commands=$(redis INFO commandstats | tr -d '\r' | awk -F'[:=,]' '
    /^cmdstat_/ { name = substr($1, 9); if (name != "info" && name != "config|resetstat") sum += $3 }
    END { print sum + 0 }')
  read -r ok p50 < <(jq -r '[(.statusCodeDistribution["200"] // 0), .latencyPercentiles.p50 * 1000]
    | map(tostring) | join(" ")' "$work/rtt-$config-$path.json")
  stop "$proxy_pid"
  stop "$relay_pid"
  echo "$config,$delay,$path,$ok,$RTT_PROBE_MS,$p50,$commands" >>"$rtt_csv"
  say "$config $path through the relay: p50 $p50 ms, $commands Redis commands for $ok requests"
}

notes="$work/notes.md"
: >"$notes"
miss_path='/users\?miss=[a-z0-9]{20}'

tiered_ok=""
entry_measured=0
first_delay=$(printf '%s\n' $DELAYS | head -n 1)
for delay in $DELAYS; do
  # The static ceiling: the upstream itself, no delay, no proxy; measured again in each delay's
  # block, so that every ratio compares runs minutes apart at most.
  start_upstream 0
  body_bytes=$(curl -fsS "$up_url/users" | wc -c | tr -d ' ')
  for conc in $CONCURRENCY; do
    run_load ceiling "$delay" static "$conc" "$LOAD_SECONDS" "$up_pid" "$up_url/users"
  done
  stop "$up_pid"

  start_upstream "$delay"
  for config in $CONFIGS; do
    redis FLUSHALL >/dev/null
    if ! start_proxy "$config"; then
      if [ "$config" = tiered ]; then
        why=$(grep -m1 '^Error:' "$proxy_log" || grep -v '^\s*$' "$proxy_log" | tail -n 1 || true)
        say "SKIPPING tiered: the proxy example does not run with CACHE_STORE=tiered: $why"
        if [ "$tiered_ok" != no ]; then
          echo "- \`tiered\` skipped: the \`proxy\` example does not start with \`CACHE_STORE=tiered\` (\`$why\`)." >>"$notes"
        fi
        tiered_ok=no
        continue
      fi
      cat "$proxy_log" >&2
      die "the proxy did not start with CACHE_STORE=$config"
    fi
    [ "$config" = tiered ] && tiered_ok=yes
    if [ "$config" = none ]; then
      for conc in $CONCURRENCY; do
        run_load none "$delay" uncached "$conc" "$LOAD_SECONDS" "$proxy_pid" "$proxy_url/users"
      done
    else
      prime /users
      if [ "$config" = redis ] && [ "$entry_measured" = 0 ]; then
        # The Redis size of the one entry: its value (zstd-compressed when enabled) and the
        # memory Redis gives it with its key and overhead.
        key=$(redis --scan --pattern '*:e:*' | head -n 1)
        if [ -n "$key" ]; then
          usage=$(redis MEMORY USAGE "$key" SAMPLES 0)
          value=$(redis STRLEN "$key")
          # The stored body alone: what a client accepting zstd is served from the entry, as
          # it is stored (its first request stores an entry of its own, since the rule varies
          # on Accept-Encoding; the second is the hit).
          curl -sf -o /dev/null -H 'accept-encoding: zstd' "$proxy_url/users"
          sleep 0.2
          stored_body=$(curl -sf -H 'accept-encoding: zstd' "$proxy_url/users" | wc -c)
          limit=$(python3 -c "print(int($stored_body * 1.1 + 200))")
          verdict=$([ "$usage" -le "$limit" ] && echo met || echo missed)
          echo "- Redis entry of \`GET /users\` ($body_bytes-byte body): stored body (zstd) $stored_body bytes, value (body and metadata) $value bytes, \`MEMORY USAGE\` $usage bytes (key \`$key\`, $(redis DBSIZE) keys in Redis after priming); target: at most $limit bytes (stored body + 10% + 200): $verdict." >>"$notes"
          entry_measured=1
        fi
      fi
      for conc in $CONCURRENCY; do
        run_load "$config" "$delay" hit "$conc" "$LOAD_SECONDS" "$proxy_pid" "$proxy_url/users"
      done
      for conc in $CONCURRENCY; do
        run_load "$config" "$delay" miss "$conc" "$LOAD_SECONDS" "$proxy_pid" \
          "$proxy_url$miss_path" --rand-regex-url
      done
    fi
    stop "$proxy_pid"
    if [ "$delay" = "$first_delay" ] && { [ "$config" = redis ] || [ "$config" = tiered ]; }; then
      redis FLUSHALL >/dev/null
      probe_round_trips "$config" "$delay" hit 200 /users
      probe_round_trips "$config" "$delay" miss 50 "$miss_path" --rand-regex-url
    fi
  done
  stop "$up_pid"
done

# The long hit run: Redis store, highest concurrency, first delay.
if [ "$SOAK_SECONDS" -gt 0 ] && [[ " $CONFIGS " == *" redis "* ]]; then
  soak_conc=$(printf '%s\n' $CONCURRENCY | sort -n | tail -n 1)
  soak_delay=$(printf '%s\n' $DELAYS | head -n 1)
  start_upstream "$soak_delay"
  redis FLUSHALL >/dev/null
  start_proxy redis || die "the proxy did not start with CACHE_STORE=redis"
  prime /users
  # The proxy's RSS every second of the run, to see whether it is flat.
  soak_rss="$work/soak_rss.csv"
  SAMPLE_RSS_TO=$soak_rss run_load redis "$soak_delay" soak "$soak_conc" "$SOAK_SECONDS" \
    "$proxy_pid" "$proxy_url/users"
  echo "- Proxy RSS during the ${SOAK_SECONDS}-second Redis hit run (second: MiB): $(awk -F, -v last="$SOAK_SECONDS" '
    NR > 1 && $1 <= last && ($1 % 5 == 0 || $1 == last) { printf "%s%s: %.1f", sep, $1, $2 / 1024; sep = ", " }' "$soak_rss")." >>"$notes"
  stop "$proxy_pid"
  stop "$up_pid"
fi

# ---------------------------------------------------------------------------------------------
# 5. Results

# The targets, each from runs of this one run.
summary="$work/summary.md"
python3 - "$csv" "$rtt_csv" "${soak_rss:-}" >"$summary" <<'PY'
import csv, os, sys

rows = list(csv.DictReader(open(sys.argv[1])))
trips = list(csv.DictReader(open(sys.argv[2])))
soak_rss = []
if sys.argv[3] and os.path.exists(sys.argv[3]):
    soak_rss = [(int(r["second"]), int(r["rss_kb"])) for r in csv.DictReader(open(sys.argv[3]))]
def find(config, path, conc, delay=None):
    for r in rows:
        if r["config"] == config and r["path"] == path and r["concurrency"] == str(conc) \
                and (delay is None or str(r["delay_ms"]) == str(delay)):
            return r
    return None

concs = sorted({int(r["concurrency"]) for r in rows}, reverse=True)
delays = sorted({int(r["delay_ms"]) for r in rows})
out = []
def line(text):
    out.append(text)

line("| target | measured | met? |")
line("|---|---|---|")
for config, goal in (("redis", 0.50), ("tiered", 0.85)):
    for conc in concs:
        for delay in delays:
            ceiling = find("ceiling", "static", conc, delay)
            hit = find(config, "hit", conc, delay)
            if not (ceiling and hit):
                continue
            ratio = float(hit["rps"]) / float(ceiling["rps"])
            line(f"| {config} hit req/s ≥ {goal:.0%} of the static ceiling ({conc} conns, upstream {delay} ms) "
                 f"| {float(hit['rps']):.0f} / {float(ceiling['rps']):.0f} = **{ratio:.1%}** "
                 f"| {'met' if ratio >= goal else 'MISSED'} |")
if 20 in delays:
    for config in ("memory", "redis", "tiered"):
        for conc in concs:
            base, miss = find("none", "uncached", conc, 20), find(config, "miss", conc, 20)
            if not (base and miss):
                continue
            d = float(miss["p50_ms"]) / float(base["p50_ms"]) - 1
            line(f"| {config} miss p50 within 3% of no cache (20 ms upstream, {conc} conns) "
                 f"| {float(miss['p50_ms']):.3f} ms vs {float(base['p50_ms']):.3f} ms = **{d:+.1%}** "
                 f"| {'met' if abs(d) <= 0.03 else 'MISSED'} |")
for config in ("redis", "tiered"):
    for conc in concs:
        for delay in delays:
            hit = find(config, "hit", conc, delay)
            if not hit or not hit["redis_cmds_per_req"]:
                continue
            cmds, reads = float(hit["redis_cmds_per_req"]), float(hit["redis_reads_per_req"])
            line(f"| {config}: Redis commands per hit ({conc} conns, upstream {delay} ms) "
                 f"| {cmds:.3f} commands/hit ({hit['redis_cmds'] or 'none'}), {reads:.3f} socket reads/hit "
                 f"| (see round trips) |")
for t in trips:
    n, hold, p50 = int(t["requests"]), float(t["probe_ms"]), float(t["p50_ms"])
    if n == 0:
        continue
    if t["path"] == "hit":
        base = find(t["config"], "hit", 1, t["delay_ms"])
        base_name = f"{t['config']} hit at 1 conn"
    else:
        base = find("none", "uncached", 1, t["delay_ms"])
        base_name = "no cache at 1 conn"
    if not base:
        continue
    added = p50 - float(base["p50_ms"])
    per = added / hold
    verdict = ("met" if per <= 1.2 else "MISSED") if t["path"] == "hit" else "(no target)"
    line(f"| {t['config']}: Redis round trips per {t['path']} ≤ 1 (Redis {hold:.0f} ms away, {n} requests at 1 conn, upstream {t['delay_ms']} ms) "
         f"| p50 {p50:.2f} ms vs {float(base['p50_ms']):.2f} ms ({base_name}) = +{added:.2f} ms = **{per:.2f} round trips**; "
         f"{int(t['commands']) / n:.2f} commands/req | {verdict} |")
soak = find("redis", "soak", max(concs)) if concs else None
if soak:
    start, end = int(soak["rss_start_kb"]), int(soak["rss_end_kb"])
    growth = (end - start) / start
    line(f"| proxy RSS flat under {soak['seconds']} s of Redis hits ({soak['concurrency']} conns), start → end "
         f"| {start / 1024:.1f} MiB → {end / 1024:.1f} MiB (**{growth:+.1%}**), "
         f"{int(soak['requests'])} requests | {'met' if abs(growth) <= 0.05 else 'MISSED'} (±5%) |")
    warm = [kb for second, kb in soak_rss if second == 5]
    if warm:
        w = warm[0]
        g = (end - w) / w
        line(f"| the same, from second 5 (connections open, buffers allocated) to the end "
             f"| {w / 1024:.1f} MiB → {end / 1024:.1f} MiB (**{g:+.1%}**) "
             f"| {'met' if abs(g) <= 0.05 else 'MISSED'} (±5%) |")
print("\n".join(out))
PY

mkdir -p "$OUT_DIR"
md="$OUT_DIR/$RUN_NAME.md"
cp "$csv" "$OUT_DIR/$RUN_NAME.csv"
{
  echo "# Load benchmark, $RUN_NAME"
  echo
  echo "- Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -g | awk '/^Mem:/ {print $2}') GiB;" \
    "load generator, proxy, upstream and Redis share the cores."
  echo "- $(redis-server --version | cut -d' ' -f1-3); $("$OHA" --version); $(rustc --version)."
  echo "- Command: \`BENCH_NICE=$BENCH_NICE WAIT_QUIET=$WAIT_QUIET LOAD_SECONDS=$LOAD_SECONDS SOAK_SECONDS=$SOAK_SECONDS DELAYS=\"$DELAYS\" CONCURRENCY=\"$CONCURRENCY\" CONFIGS=\"$CONFIGS\" bash bench/load.sh\`"
  echo "- Body: $body_bytes bytes of JSON (40 users). Hit: \`GET /users\`; miss: \`GET /users?miss=<20 random characters>\` (oha \`--rand-regex-url\`)."
  echo "- Niceness of the benchmark's processes: $BENCH_NICE (BENCH_NICE)."
  echo "- The machine was ${busy_at_start}% busy in the 2 s before the first run; \"other CPU %\" is the share of the machine's CPU that anything but oha, the proxy, the upstream and Redis took during each run (0 on a quiet machine)."
  echo "- Latency is oha's, in ms; \"reached upstream\" counts requests that arrived at slow_upstream during the run; Redis cmds and reads are per request answered; RSS is the proxy's (the upstream's for \`ceiling\`)."
  cat "$notes"
  echo
  cat "$table"
  echo
  echo "## Targets"
  echo
  cat "$summary"
} >"$md"

"$bin/plot_bench" "$OUT_DIR/$RUN_NAME.csv" "$OUT_DIR/latency.svg" >/dev/null
echo
cat "$md"
echo
echo "Wrote $md, $OUT_DIR/$RUN_NAME.csv and $OUT_DIR/latency.svg"
if [ "$tiered_ok" = no ]; then echo "Note: tiered was skipped (see above)." >&2; fi
