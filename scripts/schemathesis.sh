#!/usr/bin/env bash
# Property-based API test: runs schemathesis (from PyPI, in a venv under
# target/) against a live service on 127.0.0.1, driven by the service's own
# OpenAPI document: no 5xx, and every response matches the schema. Bounded:
# SCHEMATHESIS_EXAMPLES per operation (default 50), and the service it starts
# is stopped on exit. Expects MariaDB and Redis up (scripts/services.sh).
# With SCHEMATHESIS_BASE_URL (and SCHEMATHESIS_TOKEN, a user's JWT) it runs
# against that service instead, e.g. the balancer of scripts/cluster.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
venv=target/st-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  ensure_tool python3 python3
  # Debian splits venv support into its own package.
  python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; cs_apt_install python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/pip" install --quiet schemathesis==4.32.5
fi
if [ -n "${SCHEMATHESIS_BASE_URL:-}" ]; then
  exec "$venv/bin/schemathesis" run "$SCHEMATHESIS_BASE_URL/api/v2/openapi.json" \
    -H "Authorization: Bearer ${SCHEMATHESIS_TOKEN:?a user token for SCHEMATHESIS_BASE_URL}" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-50}" --request-timeout 5 --seed 1 --no-color
fi
cargo build --locked --quiet
bin=target/debug/connstatus
export DATABASE_URL=mysql://root@127.0.0.1:3306/connstatus_schemathesis
export CONNSTATUS_REDIS_PREFIX="schemathesis:$$:"
export CONNSTATUS_BIND=127.0.0.1:0 CONNSTATUS_ADMIN_BIND=127.0.0.1:0 RUST_LOG=warn,connstatus::cli=info
"$bin" seed --users 200 --connections 2000 --seed 7 --reset >/dev/null
token=$("$bin" token --user 1 --ttl 1h)
log=$(mktemp)
"$bin" serve 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; redis-cli --scan --pattern "${CONNSTATUS_REDIS_PREFIX}*" | xargs -r redis-cli unlink >/dev/null' EXIT
for _ in $(seq 1 100); do
  address=$(sed -n 's/.* listening on http:\/\/\([0-9.:]*\)$/\1/p' "$log" | head -1)
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "$address" ] || { cat "$log"; exit 1; }
"$venv/bin/schemathesis" run "http://$address/api/v2/openapi.json" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-50}" --request-timeout 5 --seed 1 --no-color
