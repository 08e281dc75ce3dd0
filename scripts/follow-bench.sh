#!/usr/bin/env bash
# The binlog follower's figures (benches/follower.rs), on this machine's
# MariaDB (binary log on: scripts/services.sh sees to it) and Redis, in a
# database of its own (connstatus_bench_follow, dropped afterwards):
# commit-to-cache latency over 1 000 single commits, and the follower's
# throughput on a log of FOLLOW_CHANGES (1 000 000) row changes, against
# the warm job's rate over the same graph. Writes bench-results/follower.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_mariadb
ensure_redis
mkdir -p bench-results
out=bench-results/follower.txt
{
  echo "# scripts/follow-bench.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
  echo "# FOLLOW_CHANGES=${FOLLOW_CHANGES:-1000000} FOLLOW_PAIRS=${FOLLOW_PAIRS:-200000}"
  cargo bench --locked --bench follower 2>/dev/null
} | tee "$out"
