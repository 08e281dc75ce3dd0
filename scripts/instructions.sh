#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: the service's
# own user-space work (every thread, libraries included, the kernel not) for
# one request of each kind, next to Floor H's (benches/floors.rs). Unlike
# req/s on two cores shared with the load generator and Redis, the count
# repeats to within a fraction of a percent from run to run, so a change of
# 1 % on the hot path shows. It is not time: a cache miss or a system call
# costs the same one instruction here, and callgrind counts every iteration
# of a `rep stos` (actix zeroes a ~12 000-instruction header buffer per
# request, in the service and the floor alike).
#
# Seeds a small graph of its own (database `connstatus_instr`, key prefix
# `instr:`), warms it, then for each scenario starts one server under
# callgrind, sends WARMUP requests, zeroes the counters, sends N more on one
# keep-alive connection, and divides.
#   usage: scripts/instructions.sh [BASELINE_BINARY]
# With a baseline (a release build of another commit) its figures are
# printed beside this checkout's. Knobs: INSTR_N (2000), INSTR_WARMUP (300).
# Everything is on 127.0.0.1; every server it starts is stopped.
set -euo pipefail
# The baseline as given, before the working directory changes.
baseline=${1:+$(realpath "$1")}
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_mariadb
ensure_redis
ensure_tool valgrind valgrind

N=${INSTR_N:-2000}
WARMUP=${INSTR_WARMUP:-300}
export DATABASE_URL=mysql://root@127.0.0.1:3306/connstatus_instr
export REDIS_URL=redis://127.0.0.1:6379
export CONNSTATUS_REDIS_PREFIX=instr:
export RUST_LOG=warn CONNSTATUS_FOLLOW=false
ADDR=127.0.0.1:18197
floors=$(cs_release_build)
bin=target/release/connstatus
"$bin" seed --users 10000 --connections 100000 --seed 42 --reset >/dev/null
"$bin" warm --all >/dev/null 2>&1
# User 1's pairs with every user, relation or not: the GETs below are hits.
"$bin" warm --users 1 --with "$(seq -s, 2 10000)" >/dev/null 2>&1
# Floor H's string keys, one per user.
python3 -c '
import sys
for i in range(1, 10001):
    key = f"instr:floor:{i}"
    sys.stdout.write(f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n$3\r\n1:a\r\n")
' | redis-cli -h 127.0.0.1 --pipe >/dev/null
token=$("$bin" token --user 1 --ttl 1h)
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

# count NAME KIND PROBE ENV COMMAND...: instructions per request of one
# server, started with the variables of ENV (space-separated assignments).
count() {
  local name=$1 kind=$2 probe=$3 vars=$4; shift 4
  local out="$work/$name.out"
  # shellcheck disable=SC2086 # ENV is split into assignments on purpose
  env $vars valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$work/$name.log" 2>&1 &
  server=$!
  cs_wait_until 120 "$name under callgrind" curl -sf "http://$ADDR$probe" || { cat "$work/$name.log"; exit 1; }
  python3 - "$token" "$kind" "$N" "$WARMUP" "$server" <<'PY'
import http.client, random, subprocess, sys
token, kind, n, warmup, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
conn = http.client.HTTPConnection("127.0.0.1", 18197)
rnd = random.Random(7)
auth = {"Authorization": "Bearer " + token}
def one():
    # The near cache is measured on its hits: 100 targets, all read in the
    # warm-up.
    target = rnd.randint(2, 101) if kind == "near" else rnd.randint(2, 10000)
    if kind == "floor":
        conn.request("GET", f"/floor/{target}")
    elif kind in ("get", "near"):
        conn.request("GET", f"/api/v2/user/{target}/connection_status/", headers=auth)
    elif kind == "is":
        conn.request("GET", f"/api/v2/user/{target}/is_connection/", headers=auth)
    else:
        body = '{"users":[' + ",".join(map(str, rnd.sample(range(2, 10001), 50))) + "]}"
        conn.request("POST", "/api/v2/user/connection/statuses/", body=body,
                     headers={**auth, "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"{kind}: HTTP {response.status}")
for _ in range(warmup):
    one()
subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)
for _ in range(n):
    one()
subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
PY
  kill "$server"; wait "$server" 2>/dev/null || true; server=
  local dump total
  dump=$(ls "$out".* | sort | head -1)
  total=$(callgrind_annotate "$dump" 2>/dev/null | grep -m1 'PROGRAM TOTALS' | tr -d ',' | awk '{print $1}')
  echo "$name $((total / N))"
}

results="$work/results"
# In this shell, not a pipeline's subshell: the EXIT trap must see `server`.
{
  count floor-h floor /floor/2 "FLOOR_KEY=instr:floor:{id}" "$floors" h "$ADDR"
  listen="CONNSTATUS_BIND=$ADDR CONNSTATUS_ADMIN_BIND=127.0.0.1:18198"
  for build in ${baseline:+baseline} this; do
    b=$bin; [ "$build" = baseline ] && b=$baseline
    count "$build:cached-get" get /readyz "$listen" "$b" serve
    count "$build:is-connection" is /readyz "$listen" "$b" serve
    count "$build:batch-50" batch /readyz "$listen" "$b" serve
    count "$build:near-get" near /readyz "$listen CONNSTATUS_CACHE_L1_ENTRIES=100000" "$b" serve
  done
} >"$results"
cat "$results"
mkdir -p bench-results
python3 - "$results" "$N" <<'PY' | tee bench-results/instructions.txt
import sys
rows = dict(line.split() for line in open(sys.argv[1]))
floor = int(rows["floor-h"])
print(f"user-space instructions per request (callgrind, {sys.argv[2]} requests after a warm-up, one keep-alive connection; scripts/instructions.sh)")
print(f"{'scenario':<24} {'instructions':>12}  vs floor H")
for name, value in rows.items():
    print(f"{name:<24} {int(value):>12}  {int(value) / floor:.2f}x")
PY
