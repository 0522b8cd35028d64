#!/usr/bin/env bash
# The soak run (not part of CI): three `proxy` instances on one Redis for ten minutes, 90% reads
# and 10% writes over 3,000 items, Redis restarted every two minutes. Every read is checked
# against the last acknowledged write. Writes soak.md, soak.csv and soak-rss.svg to OUT_DIR.
#
#   bash bench/soak.sh                                  # the full run
#   DURATION_SECS=60 RESTART_EVERY_SECS=20 bash bench/soak.sh   # a short one
#
# Environment: see examples/soak.rs (DURATION_SECS, RESTART_EVERY_SECS, URLS, CLIENTS,
# WRITES_PERCENT, OUT_DIR). Exits 1 when a request failed or a read was stale.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is required on PATH" >&2; exit 1; }
cargo build --release --example proxy --example soak
export OUT_DIR="${OUT_DIR:-bench/results/soak-$(date +%Y-%m-%d)}"
PROXY_BIN=target/release/examples/proxy target/release/examples/soak
