#!/usr/bin/env bash
# Load benchmark of the GET endpoint against this machine's floors, all on
# 127.0.0.1, load generator (wrk) in its own process, identical settings for
# every scenario. Seeds a graph, warms the cache, then drives in turn:
#   floor-h      Floor H: one Redis GET per request (benches/floors.rs) of
#                one key, the user entry of the target cached-one reads
#   cached-one   connstatus GET, one cached pair
#   floor-h-many Floor H reading the string keys of the targets
#                cached-many reads, one random key per request: Redis's
#                lookup of a random key
#                among a million costs several times a hot key's
#   cached-many  connstatus GET, cached pairs spread over LOAD_HOT targets
#   is-connection  GET is_connection/ on the same pairs as cached-many
#   floor-m      Floor M: one MySQL primary-key select per request
#   floor-z      Floor Z: the same server answering with no I/O at all, the
#                ceiling of any answer from memory (the near cache's) here
#   uncached     connstatus GET, a pair never read before on every request
#   batch-50     POST statuses with 50 cached ids per request, one viewer
#   feed-50      the same, each request a random viewer of 256 (a feed)
#   batch-500    POST statuses with 500 cached ids per request
#   l1-one, l1-many, l1-batch-50
#                cached-one, cached-many and batch-50 against a second
#                instance with the near cache on (CONNSTATUS_CACHE_L1_ENTRIES)
# and prints req/s, p50, p99 and p99.9 with the ratios to the floors. Then
# the tail: floor-h-many and cached-many at 16, 32, 64 and 128 connections
# (LOAD_SWEEP_DURATION each), and a CPU profile of the service (perf, when
# the machine lets it sample) during cached-many, batch-50 and l1-many; per
# scenario, Redis's commands per request (INFO commandstats). Before that it
# times `connstatus warm --all` on the seeded graph (an empty cache). The
# table is also written to bench-results/load.txt.
#
# Each scenario runs LOAD_ROUNDS times, the rounds alternating between the
# floors and connstatus, and the table shows the mean. Then a soak of
# LOAD_SOAK seconds on cached pairs samples the service's resident memory
# every 5 s (flat means: no growth beyond the first 10 s by more than 10%).
# The targets of the performance work are checked and printed last.
#
# Knobs (environment): LOAD_USERS (100000), LOAD_PAIRS (1000000),
# LOAD_DURATION (10s), LOAD_CONNS (64), LOAD_THREADS (2), LOAD_HOT (10000),
# LOAD_ROUNDS (2), LOAD_SOAK (60), LOAD_SWEEP_DURATION (5s), LOAD_L1 (1000000
# entries of the near cache).
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
ROUNDS=${LOAD_ROUNDS:-2}
SOAK=${LOAD_SOAK:-60}
SWEEP_DURATION=${LOAD_SWEEP_DURATION:-5s}
L1_ENTRIES=${LOAD_L1:-1000000}
VIEWERS=256
export DATABASE_URL=mysql://root@127.0.0.1:3306/connstatus_bench
export REDIS_URL=redis://127.0.0.1:6379
export CONNSTATUS_REDIS_PREFIX=bench:3:
export RUST_LOG=warn
APP=127.0.0.1:18180 FLOOR_H=127.0.0.1:18181 FLOOR_M=127.0.0.1:18182 NEAR=127.0.0.1:18183 FLOOR_Z=127.0.0.1:18184

floors=$(cs_release_build)
bin=target/release/connstatus

"$bin" seed --users "$USERS" --connections "$PAIRS" --seed 42 --reset
# The seed emptied the cache prefix: warm it all, and keep the summary line.
# Redis's memory before and after tells the bytes per cached relation.
used_memory() { redis-cli -h 127.0.0.1 info memory | tr -d '\r' | sed -n 's/^used_memory://p'; }
memory_before=$(used_memory)
warm_line=$("$bin" warm --all 2>/dev/null | tail -1)
memory_after=$(used_memory)
echo "$warm_line"
echo "redis used_memory: $memory_before before the warm, $memory_after after"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
CONNSTATUS_BIND=$APP CONNSTATUS_ADMIN_BIND=127.0.0.1:18189 "$bin" serve & pids+=($!)
app_pid=$!
# The near cache's instance: same database, Redis and prefix; the first
# instance runs the binlog follower.
CONNSTATUS_BIND=$NEAR CONNSTATUS_ADMIN_BIND=127.0.0.1:18188 CONNSTATUS_FOLLOW=false \
  CONNSTATUS_CACHE_L1_ENTRIES=$L1_ENTRIES "$bin" serve & pids+=($!)
near_pid=$!
# Floor H reads a string key per user (the service keeps a user's presence
# in the user's hash, whose field read it pays for itself): one per user,
# written after the memory above was measured.
python3 -c '
import sys
prefix, users = sys.argv[1], int(sys.argv[2])
out = sys.stdout
for i in range(1, users + 1):
    key = f"{prefix}floor:{i}"
    out.write(f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n$3\r\n1:a\r\n")
' "$CONNSTATUS_REDIS_PREFIX" "$USERS" | redis-cli -h 127.0.0.1 --pipe >/dev/null
FLOOR_KEY="${CONNSTATUS_REDIS_PREFIX}floor:{id}" "$floors" h "$FLOOR_H" & pids+=($!)
floor_h_pid=$!
"$floors" m "$FLOOR_M" & pids+=($!)
floor_m_pid=$!
"$floors" z "$FLOOR_Z" & pids+=($!)
floor_z_pid=$!
for url in "http://$APP/readyz" "http://$NEAR/readyz" "http://$FLOOR_H/floor/2" "http://$FLOOR_M/floor/2" "http://$FLOOR_Z/floor/2"; do
  cs_wait_until 30 "$url" curl -sf "$url" || exit 1
done

# The seed's million rows are in the binary log: the service's follower
# refreshes them at start. Measuring before it is done would charge its work
# to whichever scenario runs first.
# Caught up: active and within a few events of the log's end (its own
# position writes are in the log too), three polls in a row a second apart.
caught_up() {
  curl -sf "http://127.0.0.1:18189/readyz" |
    python3 -c 'import json,sys; f = json.load(sys.stdin)["follower"]; sys.exit(0 if f["state"] == "active" and f.get("lag_bytes", 1) < 65536 else 1)'
}
for _ in 1 2 3; do
  cs_wait_until 300 "the follower to catch up with the seed" caught_up || exit 1
  sleep 1
done

token=$("$bin" token --user 1 --ttl 1h)
tokens=$(mktemp)
for v in $(seq 1 "$VIEWERS"); do "$bin" token --user "$v" --ttl 1h; done >"$tokens"

# Where the CPU goes: the server under test, Redis and MariaDB, each read
# from /proc (user + system ticks) around every run, and reported as CPU
# microseconds per request. On a machine without hardware counters this is
# the profile that does not need perf.
redis_pid=$(redis-cli -h 127.0.0.1 info server | tr -d '\r' | sed -n 's/^process_id://p')
mysql_pid=$(pgrep -o -x mariadbd || pgrep -o -x mysqld || echo 0)
declare -A server_pid=([$APP]=$app_pid [$NEAR]=$near_pid [$FLOOR_H]=$floor_h_pid [$FLOOR_M]=$floor_m_pid [$FLOOR_Z]=$floor_z_pid)
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)
# per_request T0 T1 N: CPU µs per request of N requests between two tick counts.
per_request() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$hz" 'BEGIN { printf "%.1f", (b - a) / hz * 1e6 / (n > 0 ? n : 1) }'; }

# Redis's own profile of a run: its commands per request and µs per call,
# from INFO commandstats (reset before each run), into $redis_log.
redis_log=$(mktemp)
commandstats() {
  redis-cli -h 127.0.0.1 info commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2 \3/p'
}

# drive NAME HOST PATH MODE LO HI [DURATION]: one wrk run (WRK_CONNS
# connections, else LOAD_CONNS); prints "NAME rps p50 p99 non2xx errors
# p99.9 server_cpu_us redis_cpu_us mysql_cpu_us".
drive() {
  local name=$1 host=$2 path=$3 mode=$4 lo=$5 hi=$6 d=${7:-$DURATION}
  local line pid=${server_pid[$host]} conns=${WRK_CONNS:-$CONNS}
  local s0 r0 m0
  redis-cli -h 127.0.0.1 config resetstat >/dev/null
  s0=$(ticks "$pid") r0=$(ticks "$redis_pid") m0=$(ticks "$mysql_pid")
  line=$(WRK_PATH=$path WRK_MODE=$mode WRK_LO=$lo WRK_HI=$hi WRK_TOKEN=$token WRK_TOKENS=$tokens WRK_BATCH=${WRK_BATCH:-50} \
    WRK_THREADS=$THREADS wrk -t"$THREADS" -c"$conns" -d"$d" -s scripts/wrk/load.lua "http://$host" |
    grep '^RESULT')
  read -r rps rest <<<"${line#RESULT }"
  local secs=${d%s}
  local n=$((${rps%.*} * secs))
  commandstats | sed "s/^/$name $n /" >>"$redis_log"
  echo "$name ${line#RESULT } $(per_request "$s0" "$(ticks "$pid")" "$n") \
$(per_request "$r0" "$(ticks "$redis_pid")" "$n") $(per_request "$m0" "$(ticks "$mysql_pid")" "$n")"
}

status_path='/api/v2/user/{id}/connection_status/'
echo "warming: cached pairs for user 1 and targets 2..$HOT"
drive warm "$APP" "$status_path" spread 2 "$HOT" 10s >/dev/null
drive warm "$APP" "$status_path" fixed 2 2 2s >/dev/null
drive warm "$FLOOR_H" /floor/2 fixed 2 2 2s >/dev/null
drive warm "$FLOOR_M" '/floor/{id}' spread 1 "$USERS" 2s >/dev/null
# The feed's pairs (256 viewers × targets 2..FEED_HI) are mostly pairs
# without a row, which the warm job does not write: a first pass reads
# them in.
FEED_HI=2001
WRK_BATCH=500 drive warm "$APP" /api/v2/user/connection/statuses/ feed 2 "$FEED_HI" 20s >/dev/null
for host in "$NEAR"; do
  drive warm "$host" "$status_path" spread 2 "$HOT" 10s >/dev/null
  drive warm "$host" "$status_path" fixed 2 2 2s >/dev/null
done

results=$(mktemp)
for round in $(seq 1 "$ROUNDS"); do
  # Uncached pairs must be new in every round: each round takes its own
  # band of targets.
  # (above the feed's targets, which were read in).
  band=$(( (USERS - FEED_HI) / ROUNDS ))
  lo=$(( FEED_HI + 1 + (round - 1) * band ))
  drive floor-h "$FLOOR_H" /floor/2 fixed 2 2
  drive cached-one "$APP" "$status_path" fixed 2 2
  drive floor-h-many "$FLOOR_H" '/floor/{id}' spread 2 "$HOT"
  drive cached-many "$APP" "$status_path" spread 2 "$HOT"
  drive is-connection "$APP" '/api/v2/user/{id}/is_connection/' spread 2 "$HOT"
  drive floor-m "$FLOOR_M" '/floor/{id}' spread 1 "$USERS"
  drive uncached "$APP" "$status_path" uncached "$lo" $(( lo + band - 1 ))
  WRK_BATCH=50 drive batch-50 "$APP" /api/v2/user/connection/statuses/ batch 2 "$HOT"
  WRK_BATCH=50 drive feed-50 "$APP" /api/v2/user/connection/statuses/ feed 2 "$FEED_HI"
  WRK_BATCH=500 drive batch-500 "$APP" /api/v2/user/connection/statuses/ batch 2 "$HOT"
  drive floor-z "$FLOOR_Z" /floor/2 fixed 2 2
  drive l1-one "$NEAR" "$status_path" fixed 2 2
  drive l1-many "$NEAR" "$status_path" spread 2 "$HOT"
  WRK_BATCH=50 drive l1-batch-50 "$NEAR" /api/v2/user/connection/statuses/ batch 2 "$HOT"
done | tee "$results"

# The tail, by connections: the floor and the service on the same keys.
sweep=$(mktemp)
for c in 16 32 64 128; do
  WRK_CONNS=$c drive "floor-h-many@$c" "$FLOOR_H" '/floor/{id}' spread 2 "$HOT" "$SWEEP_DURATION"
  WRK_CONNS=$c drive "cached-many@$c" "$APP" "$status_path" spread 2 "$HOT" "$SWEEP_DURATION"
done | tee "$sweep"

# Where the service's time goes: perf's samples of its CPU (a software
# clock: this machine may have no hardware counters), by symbol.
profile=$(mktemp)
if perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1; then
  for spec in "cached-many $APP $status_path spread 50" "batch-50 $APP /api/v2/user/connection/statuses/ batch 50" \
              "l1-many $NEAR $status_path spread 50"; do
    read -r name host path mode batch <<<"$spec"
    data=$(mktemp)
    perf record -e cpu-clock -F 1999 -p "${server_pid[$host]}" -o "$data" -- sleep 5 >/dev/null 2>&1 &
    perf_pid=$!
    WRK_BATCH=$batch drive "profile-$name" "$host" "$path" "$mode" 2 "$HOT" 5s >/dev/null
    wait "$perf_pid" || true
    { echo "== $name: the service's CPU samples by binary, then by symbol (perf report --no-children)"
      perf report -i "$data" --stdio --no-children --sort dso --percent-limit 1 2>/dev/null |
        grep -E '^ +[0-9]' | sed -E 's/ {2,}/ /g; s/ +$//' | tr '\n' ';' | sed 's/;$/\n/'
      perf report -i "$data" --stdio --no-children --sort symbol --percent-limit 1 2>/dev/null |
        grep -E '^ +[0-9]' | sed -E 's/ {2,}/ /g; s/ +$//' | cut -c1-120 | head -12
    } >>"$profile"
    rm -f "$data"
  done
else
  echo "perf cannot sample here: no profile" >"$profile"
fi

# Soak: resident memory of the service every 5 s under cached load.
rss_log=$(mktemp)
( for _ in $(seq 1 $((SOAK / 5))); do sleep 5; ps -o rss= -p "$app_pid"; done >"$rss_log" ) &
sampler=$!
drive soak "$APP" "$status_path" spread 2 "$HOT" "${SOAK}s" >/dev/null
wait "$sampler" || true

mkdir -p bench-results
python3 - "$results" "$THREADS" "$CONNS" "$DURATION" "$USERS" "$PAIRS" "$warm_line" "$ROUNDS" "$rss_log" "$SOAK" "$memory_before" "$memory_after" \
  "$sweep" "$redis_log" "$profile" <<'PY' | tee bench-results/load.txt
import re, sys
path, threads, conns, duration, users, pairs, warm, rounds, rss_path, soak, mem0, mem1, sweep_path, redis_path, profile_path = sys.argv[1:]
def read_runs(path):
    runs = {}
    for line in open(path):
        name, rps, p50, p99, non2xx, errors, p999, cpu_s, cpu_r, cpu_m = line.split()
        runs.setdefault(name, []).append(dict(rps=float(rps), p50=int(p50), p99=int(p99), p999=int(p999), non2xx=int(non2xx),
                                              errors=int(errors), cpu_s=float(cpu_s), cpu_r=float(cpu_r), cpu_m=float(cpu_m)))
    mean = lambda xs: sum(xs) / len(xs)
    return {name: dict(rps=mean([r["rps"] for r in rs]), p50=int(mean([r["p50"] for r in rs])),
                       p99=int(mean([r["p99"] for r in rs])), p999=int(mean([r["p999"] for r in rs])),
                       non2xx=sum(r["non2xx"] for r in rs), errors=sum(r["errors"] for r in rs),
                       cpu_s=mean([r["cpu_s"] for r in rs]), cpu_r=mean([r["cpu_r"] for r in rs]),
                       cpu_m=mean([r["cpu_m"] for r in rs]))
            for name, rs in runs.items()}
rows = read_runs(path)
sweep = read_runs(sweep_path)
floor = {"cached-one": "floor-h", "cached-many": "floor-h-many", "is-connection": "floor-h-many", "uncached": "floor-m",
         "batch-50": "floor-h", "feed-50": "floor-h", "batch-500": "floor-h",
         "l1-one": "floor-h", "l1-many": "floor-h-many", "l1-batch-50": "floor-h"}
print(f"connstatus warm --all, empty cache: {warm.removeprefix('warm: ')}")
print(f"redis memory for the warmed graph: {int(mem1) - int(mem0)} bytes, {(int(mem1) - int(mem0)) / int(pairs):.1f} per relation "
      f"({pairs} relations, two copies each, and {users} user entries; `used_memory` of INFO memory)")
print(f"wrk -t{threads} -c{conns} -d{duration}, 127.0.0.1, {users} users / {pairs} pairs seeded, mean of {rounds} alternating rounds")
print(f"{'scenario':<12} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} {'non-2xx':>8}  vs floor")
for name, r in rows.items():
    vs = ""
    if name in floor and floor[name] in rows:
        f = rows[floor[name]]
        vs = f"{r['rps'] / f['rps']:.2f}x {floor[name]} req/s, p99 {r['p99'] / max(f['p99'], 1):.2f}x"
    print(f"{name:<12} {r['rps']:>9.0f} {r['p50']:>8} {r['p99']:>8} {r['p999']:>9} {r['non2xx'] + r['errors']:>8}  {vs}")
print("CPU µs per request (user + system, from /proc): the server under test, Redis, MariaDB")
for name, r in rows.items():
    print(f"{name:<12} {r['cpu_s']:>8.1f} {r['cpu_r']:>8.1f} {r['cpu_m']:>8.1f}")
for name, ids in (("batch-50", 50), ("feed-50", 50), ("batch-500", 500), ("l1-batch-50", 50)):
    if name in rows:
        print(f"{name}: {rows[name]['rps'] * ids:.0f} statuses/s")
print(f"the tail by connections (wrk -t{threads}, LOAD_SWEEP_DURATION each): p99 and p99.9 in µs")
print(f"{'conns':>5} {'floor req/s':>11} {'p99':>6} {'p99.9':>7} {'cached req/s':>12} {'p99':>6} {'p99.9':>7}  p99 ratio  p99.9 ratio")
tail = {}
for c in (16, 32, 64, 128):
    f, s = sweep.get(f"floor-h-many@{c}"), sweep.get(f"cached-many@{c}")
    if f and s:
        tail[c] = (s["p99"] / max(f["p99"], 1), s["p999"] / max(f["p999"], 1))
        print(f"{c:>5} {f['rps']:>11.0f} {f['p99']:>6} {f['p999']:>7} {s['rps']:>12.0f} {s['p99']:>6} {s['p999']:>7}  "
              f"{tail[c][0]:>8.2f}x  {tail[c][1]:>10.2f}x")
print("Redis per request (INFO commandstats; mean of the rounds): calls, and µs inside Redis per request")
stats = {}
for line in open(redis_path):
    name, n, cmd, calls, usec = line.split()
    if name in rows:
        stats.setdefault(name, {}).setdefault(cmd, []).append((int(calls) / max(int(n), 1), int(usec) / max(int(n), 1)))
for name, cmds in stats.items():
    top = sorted(((sum(c for c, _ in v) / len(v), sum(u for _, u in v) / len(v), cmd) for cmd, v in cmds.items()),
                 key=lambda t: -t[1])[:4]
    print(f"{name:<12} " + ", ".join(f"{cmd} {calls:.2f}/req {usec:.1f} µs" for calls, usec, cmd in top if calls >= 0.01))
print(open(profile_path).read().rstrip())
rss = [int(x) for x in open(rss_path).read().split()]
growth = None
if len(rss) >= 3:
    base = rss[1]  # the sample at 10 s
    growth = (max(rss[2:]) - base) / base
    print(f"soak {soak}s on cached pairs: RSS every 5 s (KiB): {' '.join(map(str, rss))}; growth after 10 s: {growth * 100:+.1f}%")
m = re.search(r"in ([0-9.]+)s", warm)
pairs_s = int(pairs) / float(m.group(1)) if m else 0
f = lambda a, b: rows[a]["rps"] / rows[b]["rps"] if a in rows and b in rows else 0
p99 = lambda a, b: rows[a]["p99"] / max(rows[b]["p99"], 1) if a in rows and b in rows else 99
statuses = lambda name, ids: rows[name]["rps"] * ids if name in rows else 0
bytes_per_relation = (int(mem1) - int(mem0)) / int(pairs)
targets = [  # (what, measured, bound, "at least" or "at most")
    ("cached GET, many keys, req/s / floor H on the same keys", f("cached-many", "floor-h-many"), 0.9, "at least"),
    ("cached GET, one key, req/s / floor H on the same key", f("cached-one", "floor-h"), 0.9, "at least"),
    ("is_connection req/s / cached GET on the same keys", f("is-connection", "cached-many"), 0.95, "at least"),
] + [(f"cached GET p99 / floor H p99, many keys, {c} connections", tail[c][0], 1.5, "at most") for c in sorted(tail)] + [
    ("batch of 50 req/s / floor H, one viewer", f("batch-50", "floor-h"), 0.5, "at least"),
    ("batch of 50 req/s / floor H, random viewers (feed)", f("feed-50", "floor-h"), 0.5, "at least"),
    ("batch of 500 statuses/s", statuses("batch-500", 500), 2000000, "at least"),
    ("uncached GET req/s / floor M", f("uncached", "floor-m"), 0.75, "at least"),
    ("Redis bytes per cached relation", bytes_per_relation, 40, "at most"),
    ("near cache GET req/s / floor H, one key", f("l1-one", "floor-h"), 1.5, "at least"),
    ("near cache GET req/s / floor H, many keys", f("l1-many", "floor-h-many"), 1.5, "at least"),
    ("warm pairs/s", pairs_s, 100000, "at least"),
]
if growth is not None:
    targets.append(("RSS growth after 10 s", growth, 0.10, "at most"))
print("targets:")
for label, got, bound, kind in targets:
    ok = got >= bound if kind == "at least" else got <= bound
    print(f"  {'met ' if ok else 'MISS'} {label}: {got:.2f}, {kind} {bound}")
if "floor-z" in rows:
    print(f"the ceiling: floor Z (no I/O) / floor H = {f('floor-z', 'floor-h'):.2f}: about the most an answer from memory can reach here "
          f"(the load generator shares the cores); near cache GET / floor Z = {f('l1-one', 'floor-z'):.2f} one key, "
          f"{f('l1-many', 'floor-z'):.2f} many keys")
print("(scripts/load.sh; every figure above from this one run)")
PY
