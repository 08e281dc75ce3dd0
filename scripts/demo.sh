#!/usr/bin/env bash
# A working demo on this machine: MariaDB and Redis checked (started or
# installed as needed), a release build, a seeded graph in its own database
# (connstatus_demo), a development token and curl lines that work as shown,
# then the service in the foreground on 127.0.0.1:8080 (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_mariadb
ensure_redis

export DATABASE_URL="${DATABASE_URL:-mysql://root@127.0.0.1:3306/connstatus_demo}"
export CONNSTATUS_REDIS_PREFIX="${CONNSTATUS_REDIS_PREFIX:-demo:1:}"
export CONNSTATUS_BIND="${CONNSTATUS_BIND:-127.0.0.1:8080}"
USERS="${DEMO_USERS:-10000}"
PAIRS="${DEMO_CONNECTIONS:-200000}"

cargo build --release --locked --quiet
bin=target/release/connstatus

"$bin" migrate
seeded=$("$bin" seed --users "$USERS" --connections "$PAIRS" --seed 42 --reset)
printf '%s\n' "$seeded"
token=$("$bin" token --user 1 --ttl 24h)

base="http://$CONNSTATUS_BIND"
cat <<MSG

connstatus demo: $USERS users, $PAIRS pairs, seed 42, in $DATABASE_URL.
A development token for user 1 (valid 24 h):

  TOKEN=$token

Try (in another terminal):
MSG
printf '%s\n' "$seeded" | sed -n 's/^example: user 1 -> user \([0-9]*\): \(.*\)$/\1 \2/p' |
  while read -r other status; do
    printf '  curl -s -H "Authorization: Bearer $TOKEN" %s/api/v2/user/%s/connection_status/   # %s\n' \
      "$base" "$other" "$status"
  done
cat <<MSG
  curl -s -H "Authorization: Bearer \$TOKEN" $base/api/v2/user/999999999/connection_status/   # 404, no such user
  curl -s $base/api/v2/user/2/connection_status/                                           # 401, no token
  curl -s $base/readyz

Serving on $base (Ctrl-C to stop).
MSG
exec "$bin" serve
