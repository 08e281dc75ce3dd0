#!/usr/bin/env bash
# How stale the near cache (CONNSTATUS_CACHE_L1_ENTRIES) lets a read through
# another instance be: two release instances on 127.0.0.1, both with the
# near cache on, over one database and Redis. NEAR_ROUNDS times (10000): a
# mutation through instance A (user 1 requests user 2, then cancels, in
# turn), and as soon as A has answered, user 2 reads the pair through
# instance B (whose near cache holds it: every round reads it). A read that
# trails the write is polled until it agrees, and the time it took is the
# staleness window. Prints how many reads trailed and the worst window, into
# bench-results/near.txt. Bounded by NEAR_ROUNDS; stops its servers on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_mariadb
ensure_redis

ROUNDS=${NEAR_ROUNDS:-10000}
export DATABASE_URL=mysql://root@127.0.0.1:3306/connstatus_near
export REDIS_URL=redis://127.0.0.1:6379
export CONNSTATUS_REDIS_PREFIX=near:1:
export CONNSTATUS_CACHE_L1_ENTRIES=100000
export CONNSTATUS_FOLLOW=false
export RUST_LOG=warn
A=127.0.0.1:18280 B=127.0.0.1:18281

cargo build --release --locked --quiet --bins
bin=target/release/connstatus
"$bin" migrate
"$bin" seed --users 100 --connections 0 --seed 1 --reset >/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
CONNSTATUS_BIND=$A CONNSTATUS_ADMIN_BIND=127.0.0.1:18288 "$bin" serve & pids+=($!)
CONNSTATUS_BIND=$B CONNSTATUS_ADMIN_BIND=127.0.0.1:18289 "$bin" serve & pids+=($!)
for url in "http://$A/readyz" "http://$B/readyz"; do
  cs_wait_until 30 "$url" curl -sf "$url" || exit 1
done

mkdir -p bench-results
python3 - "$A" "$B" "$ROUNDS" "$("$bin" token --user 1 --ttl 1h)" "$("$bin" token --user 2 --ttl 1h)" <<'PY' | tee bench-results/near.txt
import http.client, json, sys, time
a, b, rounds, token1, token2 = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
conn_a, conn_b = http.client.HTTPConnection(a), http.client.HTTPConnection(b)

def call(conn, method, path, token):
    conn.request(method, path, headers={"Authorization": f"Bearer {token}", "Content-Length": "0"})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, (method, path, response.status, body)
    return json.loads(body)["connection_status"]

read = lambda: call(conn_b, "GET", "/api/v2/user/1/connection_status/", token2)
call(conn_a, "POST", "/api/v2/user/2/connection/cancel_request/", token1)
for _ in range(3):  # filled, then kept in B's near cache
    read()
stale, windows, worst = 0, [], 0.0
for i in range(rounds):
    action, want = ("request", "received_connection_request") if i % 2 == 0 else ("cancel_request", None)
    call(conn_a, "POST", f"/api/v2/user/2/connection/{action}/", token1)
    start = time.perf_counter()
    if read() != want:
        stale += 1
        while read() != want:
            if time.perf_counter() - start > 5:
                sys.exit(f"round {i}: B still stale after 5 s")
        window = time.perf_counter() - start
        windows.append(window)
        worst = max(worst, window)
    # The next round's read must find the entry kept again.
    read()
print(f"near cache, two instances (scripts/near-staleness.sh): {rounds} writes through A, each read through B at once")
print(f"reads through B that trailed the write: {stale} of {rounds} ({stale / rounds * 100:.2f}%)")
if windows:
    windows.sort()
    print(f"staleness window of those (until B agreed): median {windows[len(windows) // 2] * 1e3:.2f} ms, "
          f"worst {worst * 1e3:.2f} ms")
else:
    print("staleness window: none observed (every read through B already had the write)")
PY
