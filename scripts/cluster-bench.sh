#!/usr/bin/env bash
# The cost of scale-out, measured in one run on this machine: the cached GET
# and the batch of 50 through HAProxy and directly, with a single Redis and
# with the Redis Cluster of scripts/cluster.sh. All on 127.0.0.1, wrk in its
# own process, every run bounded; the topology is taken down on exit.
#
#   standalone  one instance, the machine's Redis (127.0.0.1:6379)
#   cluster     one instance of the topology, directly (Redis Cluster)
#   haproxy     the topology's balancer in front of its three instances
#
# All three read the same MariaDB (the topology's primary and replica), the
# same seeded graph, warmed into both Redis setups. Prints req/s, p50/p99,
# the ratios, and CPU µs per request of the instances and of Redis; writes
# bench-results/cluster.txt.
# Knobs: BENCH_USERS (20000), BENCH_PAIRS (200000), BENCH_DURATION (10s),
# BENCH_CONNS (64), BENCH_HOT (5000), BENCH_ROUNDS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_mariadb
ensure_redis
ensure_tool wrk wrk

USERS=${BENCH_USERS:-20000}
PAIRS=${BENCH_PAIRS:-200000}
DURATION=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNS:-64}
HOT=${BENCH_HOT:-5000}
ROUNDS=${BENCH_ROUNDS:-2}
STANDALONE=127.0.0.1:18280

cs_release_build >/dev/null
bin=$PWD/target/release/connstatus
CONNSTATUS_BIN=$bin RUST_LOG=warn scripts/cluster.sh up >/dev/null
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
# shellcheck source=/dev/null
source target/cluster/env
export DATABASE_URL DATABASE_REPLICA_URL CONNSTATUS_JWT_SECRET RUST_LOG=warn

# The graph, seeded once into the topology's MariaDB; warmed into the
# cluster and into a prefix of its own on the machine's Redis.
CONNSTATUS_REDIS_MODE=cluster REDIS_URL=$REDIS_URL "$bin" seed --users "$USERS" --connections "$PAIRS" --seed 42 >/dev/null
# The warm job reads the replica: wait until it has the whole graph.
count() { local port=${1##*:}; mariadb -h127.0.0.1 -P"${port%%/*}" -uroot -N connstatus -e 'SELECT COUNT(*) FROM user_connections'; }
deadline=$((SECONDS + 120))
until [ "$(count "$DATABASE_URL")" = "$(count "$DATABASE_REPLICA_URL")" ]; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "the replica did not catch up within 120 s" >&2; exit 1; }
  sleep 0.5
done
CONNSTATUS_REDIS_MODE=cluster REDIS_URL=$REDIS_URL "$bin" warm --all 2>/dev/null | tail -1
single_prefix="clusterbench:$$:"
export CONNSTATUS_REDIS_MODE=standalone REDIS_URL=redis://127.0.0.1:6379
CONNSTATUS_REDIS_PREFIX=$single_prefix "$bin" warm --all 2>/dev/null | tail -1
CONNSTATUS_REDIS_PREFIX=$single_prefix CONNSTATUS_FOLLOW=false CONNSTATUS_MIGRATE_ON_START=false \
  CONNSTATUS_BIND=$STANDALONE CONNSTATUS_ADMIN_BIND=127.0.0.1:18281 "$bin" serve & pids+=($!)
standalone_pid=$!
cs_wait_until 30 standalone curl -sf "http://127.0.0.1:18281/readyz"
trap 'cleanup; redis-cli --scan --pattern "${single_prefix}*" | xargs -r -n 1000 redis-cli unlink >/dev/null' EXIT

token=$("$bin" token --user 1 --ttl 1h)
status='/api/v2/user/{id}/connection_status/'
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(ticks "$p"))); done; echo "$t"; }
hz=$(getconf CLK_TCK)
local_redis=$(redis-cli -h 127.0.0.1 info server | tr -d '\r' | sed -n 's/^process_id://p')
read -ra instance_pids <<<"$PIDS_INSTANCES"
read -ra redis_pids <<<"$PIDS_REDIS"

# drive NAME URL PATH MODE SERVICE_PIDS REDIS_PIDS: one wrk run; prints
# "NAME rps p50 p99 bad service_cpu_us redis_cpu_us".
drive() {
  local name=$1 url=$2 path=$3 mode=$4 service=$5 redis=$6 line s0 r0 n
  # shellcheck disable=SC2086
  s0=$(sum_ticks $service) r0=$(sum_ticks $redis)
  line=$(WRK_PATH=$path WRK_MODE=$mode WRK_LO=2 WRK_HI=$HOT WRK_TOKEN=$token WRK_BATCH=50 WRK_THREADS=2 \
    wrk -t2 -c"$CONNS" -d"$DURATION" -s scripts/wrk/load.lua "$url" | grep '^RESULT')
  read -r rps p50 p99 non2xx errors <<<"${line#RESULT }"
  n=$(( ${rps%.*} * ${DURATION%s} ))
  # shellcheck disable=SC2086
  awk -v name="$name" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v bad=$((non2xx + errors)) \
    -v ds="$(( $(sum_ticks $service) - s0 ))" -v dr="$(( $(sum_ticks $redis) - r0 ))" -v n="$n" -v hz="$hz" \
    'BEGIN { printf "%s %s %s %s %s %.1f %.1f\n", name, rps, p50, p99, bad, ds / hz * 1e6 / n, dr / hz * 1e6 / n }'
}

for what in "get spread $status" "batch50 batch /api/v2/user/connection/statuses/"; do
  read -r kind mode path <<<"$what"
  drive "warm-$kind" "http://$STANDALONE" "$path" "$mode" "$standalone_pid" "$local_redis" >/dev/null
  drive "warm-$kind" "${INSTANCE_URLS%% *}" "$path" "$mode" "${instance_pids[0]}" "${redis_pids[*]}" >/dev/null
done
results=$(mktemp)
for _ in $(seq 1 "$ROUNDS"); do
  for what in "get spread $status" "batch50 batch /api/v2/user/connection/statuses/"; do
    read -r kind mode path <<<"$what"
    drive "standalone-$kind" "http://$STANDALONE" "$path" "$mode" "$standalone_pid" "$local_redis"
    drive "cluster-$kind" "${INSTANCE_URLS%% *}" "$path" "$mode" "${instance_pids[0]}" "${redis_pids[*]}"
    drive "haproxy-$kind" "$BALANCER_URL" "$path" "$mode" "${instance_pids[*]}" "${redis_pids[*]}"
  done
done | tee "$results"

mkdir -p bench-results
python3 - "$results" "$USERS" "$PAIRS" "$DURATION" "$CONNS" "$ROUNDS" <<'PY' | tee bench-results/cluster.txt
import sys
path, users, pairs, duration, conns, rounds = sys.argv[1:]
runs = {}
for line in open(path):
    name, rps, p50, p99, bad, cpu_s, cpu_r = line.split()
    runs.setdefault(name, []).append((float(rps), int(p50), int(p99), int(bad), float(cpu_s), float(cpu_r)))
rows = {k: [sum(x[i] for x in v) / len(v) for i in range(6)] for k, v in runs.items()}
print(f"scripts/cluster-bench.sh: wrk -t2 -c{conns} -d{duration}, 127.0.0.1, {users} users / {pairs} pairs, mean of {rounds} rounds")
print(f"{'run':<20} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'bad':>5} {'service µs/req':>15} {'redis µs/req':>13}")
for name, (rps, p50, p99, bad, s, r) in rows.items():
    print(f"{name:<20} {rps:>9.0f} {p50:>8.0f} {p99:>8.0f} {bad:>5.0f} {s:>15.1f} {r:>13.1f}")
for kind in ("get", "batch50"):
    st, cl, hp = (rows.get(f"{m}-{kind}") for m in ("standalone", "cluster", "haproxy"))
    if st and cl and hp:
        print(f"{kind}: cluster / single Redis {cl[0] / st[0]:.2f}x req/s (Redis CPU {cl[5]:.1f} vs {st[5]:.1f} µs/req, "
              f"service CPU {cl[4]:.1f} vs {st[4]:.1f} µs/req); through HAProxy / direct {hp[0] / cl[0]:.2f}x req/s, "
              f"p99 {hp[2] / max(cl[2], 1):.2f}x")
PY
