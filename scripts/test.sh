#!/usr/bin/env bash
# Runs the whole test suite against a real MariaDB and a real Redis (checked,
# started or installed first). Extra arguments go to the test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_mariadb
ensure_redis

# Tests name their databases cs_test_<pid>_…; drop those whose process is
# gone (a run that was killed), never those of a run still going.
mariadb -h127.0.0.1 -uroot -N -e \
  "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'cs\_test\_%'" |
  while read -r db; do
    pid=$(printf '%s' "$db" | sed -E 's/^cs_test_(new_)?([0-9]+)_.*/\2/')
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      mariadb -h127.0.0.1 -uroot -e "DROP DATABASE \`$db\`"
    fi
  done

# Doc tests, the schemathesis run and the checks of deploy/ first, so that
# the runner's summary is the last thing printed.
cargo test --locked --doc --quiet
./scripts/schemathesis.sh
./scripts/check-deploy.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast --test-threads 4 "$@"
else
  cargo test --locked --no-fail-fast "$@"
fi
