#!/usr/bin/env bash
# A/B of the cached GET between another build of connstatus (BASELINE, e.g.
# a release binary built from an earlier commit) and this checkout's release
# build, on the graph that scripts/load.sh leaves in `connstatus_bench`. Each
# build reads its own key prefix (BASELINE_PREFIX, `bench:2:` by default, for
# a build of an earlier key layout; this one `bench:3:`), both warmed first;
# Floor H reads load.sh's string keys. Both services and Floor H run at once;
# wrk drives them in turn, alternating, ROUNDS times, one key and 10 000 keys.
# Everything is on 127.0.0.1, every run is bounded, every server is stopped.
#   usage: scripts/compare.sh BASELINE [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=${1:?usage: scripts/compare.sh BASELINE_BINARY [ROUNDS]}
rounds=${2:-3}
export DATABASE_URL=mysql://root@127.0.0.1:3306/connstatus_bench
export REDIS_URL=redis://127.0.0.1:6379 RUST_LOG=warn
export CONNSTATUS_MIGRATE_ON_START=false CONNSTATUS_FOLLOW=false
source scripts/services.sh
floors=$(cs_release_build)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
CONNSTATUS_REDIS_PREFIX=${BASELINE_PREFIX:-bench:2:} CONNSTATUS_BIND=127.0.0.1:18190 CONNSTATUS_ADMIN_BIND=127.0.0.1:18191 \
  "$baseline" serve & pids+=($!)
CONNSTATUS_REDIS_PREFIX=bench:3: CONNSTATUS_BIND=127.0.0.1:18192 CONNSTATUS_ADMIN_BIND=127.0.0.1:18193 \
  target/release/connstatus serve & pids+=($!)
FLOOR_KEY="bench:3:floor:{id}" "$floors" h 127.0.0.1:18194 & pids+=($!)
for url in http://127.0.0.1:18190/readyz http://127.0.0.1:18192/readyz http://127.0.0.1:18194/floor/2; do
  cs_wait_until 30 "$url" curl -sf "$url" || exit 1
done
token=$(target/release/connstatus token --user 1 --ttl 1h)
status='/api/v2/user/{id}/connection_status/'
run() { # NAME HOST PATH MODE HI
  WRK_PATH=$3 WRK_MODE=$4 WRK_LO=2 WRK_HI=$5 WRK_TOKEN=$token WRK_THREADS=2 \
    wrk -t2 -c64 -d8s -s scripts/wrk/load.lua "http://$2" | awk -v n="$1" '/^RESULT/ {print n, $2}'
}
# Twice: the first pass fills each prefix's misses, the second reads back.
for _ in 1 2; do
  run warm 127.0.0.1:18190 "$status" spread 10000 >/dev/null
  run warm 127.0.0.1:18192 "$status" spread 10000 >/dev/null
done
for _ in $(seq 1 "$rounds"); do
  run floor-h 127.0.0.1:18194 /floor/2 fixed 2
  run baseline-one 127.0.0.1:18190 "$status" fixed 2
  run this-one 127.0.0.1:18192 "$status" fixed 2
  run baseline-many 127.0.0.1:18190 "$status" spread 10000
  run this-many 127.0.0.1:18192 "$status" spread 10000
done | awk '{ sum[$1] += $2; n[$1]++; print } END {
  printf "mean req/s: floor-h %.0f, baseline one key %.0f, this %.0f (%+.1f%%); 10 000 keys %.0f, this %.0f (%+.1f%%)\n",
    sum["floor-h"]/n["floor-h"], sum["baseline-one"]/n["baseline-one"], sum["this-one"]/n["this-one"],
    100*(sum["this-one"]/sum["baseline-one"]-1), sum["baseline-many"]/n["baseline-many"], sum["this-many"]/n["this-many"],
    100*(sum["this-many"]/sum["baseline-many"]-1) }'
