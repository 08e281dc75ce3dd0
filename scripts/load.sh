#!/usr/bin/env bash
# Load benchmark of the GET endpoint against this machine's floors, all on
# 127.0.0.1, load generator (wrk) in its own process, identical settings for
# every scenario. Seeds a graph, warms the cache, then drives in turn:
#   floor-h      Floor H: one Redis GET per request (benches/floors.rs)
#   cached-one   connstatus GET, one cached pair
#   cached-many  connstatus GET, cached pairs spread over LOAD_HOT targets
#   floor-m      Floor M: one MySQL primary-key select per request
#   uncached     connstatus GET, a pair never read before on every request
#   batch-50     POST statuses with 50 cached ids per request
#   batch-500    POST statuses with 500 cached ids per request
# and prints req/s, p50 and p99 with the ratios to the floors. Before that it
# times `connstatus warm --all` on the seeded graph (an empty cache). The
# table is also written to bench-results/load.txt.
#
# Knobs (environment): LOAD_USERS (100000), LOAD_PAIRS (1000000),
# LOAD_DURATION (10s), LOAD_CONNS (64), LOAD_THREADS (2), LOAD_HOT (10000).
# Every request loop is bounded by LOAD_DURATION and every server it starts
# is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_mariadb
ensure_redis
ensure_tool wrk wrk

USERS=${LOAD_USERS:-100000}
PAIRS=${LOAD_PAIRS:-1000000}
DURATION=${LOAD_DURATION:-10s}
CONNS=${LOAD_CONNS:-64}
THREADS=${LOAD_THREADS:-2}
HOT=${LOAD_HOT:-10000}
VIEWERS=256
export DATABASE_URL=mysql://root@127.0.0.1:3306/connstatus_bench
export REDIS_URL=redis://127.0.0.1:6379
export CONNSTATUS_REDIS_PREFIX=bench:1:
export RUST_LOG=warn
APP=127.0.0.1:18180 FLOOR_H=127.0.0.1:18181 FLOOR_M=127.0.0.1:18182

cargo build --release --locked --quiet
floors=$(cargo bench --locked --bench floors --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "floors" and m.get("executable"):
        print(m["executable"])')
bin=target/release/connstatus

"$bin" seed --users "$USERS" --connections "$PAIRS" --seed 42 --reset
# The seed emptied the cache prefix: warm it all, and keep the summary line.
warm_line=$("$bin" warm --all 2>/dev/null | tail -1)
echo "$warm_line"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
CONNSTATUS_BIND=$APP CONNSTATUS_ADMIN_BIND=127.0.0.1:18189 "$bin" serve & pids+=($!)
FLOOR_KEY="${CONNSTATUS_REDIS_PREFIX}floor" "$floors" h "$FLOOR_H" & pids+=($!)
"$floors" m "$FLOOR_M" & pids+=($!)
redis-cli -h 127.0.0.1 set "${CONNSTATUS_REDIS_PREFIX}floor" "1:c" >/dev/null
for url in "http://$APP/readyz" "http://$FLOOR_H/floor/2" "http://$FLOOR_M/floor/2"; do
  cs_wait_until 30 "$url" curl -sf "$url" || exit 1
done

token=$("$bin" token --user 1 --ttl 1h)
tokens=$(mktemp)
for v in $(seq 1 "$VIEWERS"); do "$bin" token --user "$v" --ttl 1h; done >"$tokens"

# drive NAME HOST PATH MODE LO HI: one wrk run; prints "NAME rps p50 p99 non2xx errors".
drive() {
  local name=$1 host=$2 path=$3 mode=$4 lo=$5 hi=$6 d=${7:-$DURATION}
  local line
  line=$(WRK_PATH=$path WRK_MODE=$mode WRK_LO=$lo WRK_HI=$hi WRK_TOKEN=$token WRK_TOKENS=$tokens WRK_BATCH=${WRK_BATCH:-50} \
    WRK_THREADS=$THREADS wrk -t"$THREADS" -c"$CONNS" -d"$d" -s scripts/wrk/load.lua "http://$host" |
    grep '^RESULT')
  echo "$name ${line#RESULT }"
}

status_path='/api/v2/user/{id}/connection_status/'
echo "warming: cached pairs for user 1 and targets 2..$HOT"
drive warm "$APP" "$status_path" spread 2 "$HOT" 10s >/dev/null
drive warm "$APP" "$status_path" fixed 2 2 2s >/dev/null
drive warm "$FLOOR_H" /floor/2 fixed 2 2 2s >/dev/null
drive warm "$FLOOR_M" '/floor/{id}' spread 1 "$USERS" 2s >/dev/null

results=$(mktemp)
{
  drive floor-h "$FLOOR_H" /floor/2 fixed 2 2
  drive cached-one "$APP" "$status_path" fixed 2 2
  drive cached-many "$APP" "$status_path" spread 2 "$HOT"
  drive floor-m "$FLOOR_M" '/floor/{id}' spread 1 "$USERS"
  drive uncached "$APP" "$status_path" uncached $((VIEWERS + 1)) "$USERS"
  WRK_BATCH=50 drive batch-50 "$APP" /api/v2/user/connection/statuses/ batch 2 "$HOT"
  WRK_BATCH=500 drive batch-500 "$APP" /api/v2/user/connection/statuses/ batch 2 "$HOT"
} | tee "$results"

mkdir -p bench-results
python3 - "$results" "$THREADS" "$CONNS" "$DURATION" "$USERS" "$PAIRS" "$warm_line" <<'PY' | tee bench-results/load.txt
import sys
path, threads, conns, duration, users, pairs, warm = sys.argv[1:]
rows = {}
for line in open(path):
    name, rps, p50, p99, non2xx, errors = line.split()
    rows[name] = dict(rps=float(rps), p50=int(p50), p99=int(p99), non2xx=int(non2xx), errors=int(errors))
floor = {"cached-one": "floor-h", "cached-many": "floor-h", "uncached": "floor-m",
         "batch-50": "floor-h", "batch-500": "floor-h"}
print(f"connstatus warm --all, empty cache: {warm.removeprefix('warm: ')}")
print(f"wrk -t{threads} -c{conns} -d{duration}, 127.0.0.1, {users} users / {pairs} pairs seeded")
print(f"{'scenario':<12} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'non-2xx':>8}  vs floor")
for name, r in rows.items():
    vs = ""
    if name in floor and floor[name] in rows:
        f = rows[floor[name]]
        vs = f"{r['rps'] / f['rps']:.2f}x {floor[name]} req/s, p99 {r['p99'] / max(f['p99'], 1):.2f}x"
    print(f"{name:<12} {r['rps']:>9.0f} {r['p50']:>8} {r['p99']:>8} {r['non2xx'] + r['errors']:>8}  {vs}")
for name, ids in (("batch-50", 50), ("batch-500", 500)):
    if name in rows:
        print(f"{name}: {rows[name]['rps'] * ids:.0f} statuses/s")
PY
