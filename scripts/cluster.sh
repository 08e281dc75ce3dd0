#!/usr/bin/env bash
# The topology a high-traffic deployment runs (deploy/compose.yaml), on this
# machine's loopback and without a container engine, for tests and load runs:
#
#   HAProxy :18080 ── connstatus 1..3 ──┬── Redis Cluster :7000..7005
#   (checks /readyz, stats :18404)      │   (3 masters, 1 replica each)
#     public :18081..18083              ├── MariaDB primary :3307 (binary log, ROW)
#     admin  :19091..19093              └── MariaDB replica :3308 (replicates it)
#
#   scripts/cluster.sh up               takes down what a previous `up` left,
#                                       brings everything up, prints and writes
#                                       target/cluster/env (shell assignments)
#   scripts/cluster.sh status           one line per component; exit 0 if all is up
#   scripts/cluster.sh down             stops everything, removes target/cluster
#   scripts/cluster.sh start-instance N starts instance N again (after it was
#                                       stopped), waits for its /readyz, and
#                                       updates PIDS_INSTANCES in the env file
#
# Ports (everything binds 127.0.0.1 only); each default can be overridden:
#   CLUSTER_REDIS_PORT=7000            first of six Redis nodes (7000..7005;
#                                      their cluster bus is the port + 10000)
#   CLUSTER_MARIADB_PRIMARY_PORT=3307  CLUSTER_MARIADB_REPLICA_PORT=3308
#   CLUSTER_INSTANCE_PORT=18081        first of three public listeners
#   CLUSTER_ADMIN_PORT=19091           first of three admin listeners
#   CLUSTER_LB_PORT=18080              CLUSTER_LB_STATS_PORT=18404
# Other settings:
#   CONNSTATUS_BIN         the service binary (default target/release/connstatus,
#                          built with cargo when missing)
#   CLUSTER_DRAIN_SECONDS  the instances' CONNSTATUS_DRAIN_SECONDS (default 3)
#   RUST_LOG               the instances' log filter (default info)
# Any other CONNSTATUS_* setting exported by the caller reaches the instances.
#
# All state (data directories, logs, the pid list, the env file) lives under
# target/cluster/. haproxy, redis-server and mariadb-server are installed from
# Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# For cs_apt_install, cs_wait_until and ensure_tool.
# shellcheck source=/dev/null
source scripts/services.sh

ROOT=$PWD
STATE=$ROOT/target/cluster
ENV_FILE=$STATE/env
# Every long-running process as it is started: "component pid start-time".
# `down` reads it, so a topology whose `up` failed halfway is cleaned too; the
# start time (from /proc) keeps a recycled pid from being signalled.
PID_FILE=$STATE/pids

REDIS_PORT=${CLUSTER_REDIS_PORT:-7000}
MARIADB_PRIMARY_PORT=${CLUSTER_MARIADB_PRIMARY_PORT:-3307}
MARIADB_REPLICA_PORT=${CLUSTER_MARIADB_REPLICA_PORT:-3308}
INSTANCE_PORT=${CLUSTER_INSTANCE_PORT:-18081}
ADMIN_PORT=${CLUSTER_ADMIN_PORT:-19091}
LB_PORT=${CLUSTER_LB_PORT:-18080}
LB_STATS_PORT=${CLUSTER_LB_STATS_PORT:-18404}
DRAIN_SECONDS=${CLUSTER_DRAIN_SECONDS:-3}

REDIS_NODE_COUNT=6
INSTANCE_COUNT=3

log() { printf '[cluster] %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

# ---- processes ---------------------------------------------------------------

# The fields of /proc/PID/stat after the command name (which may hold spaces):
# the state is the first, the start time the twentieth.
pid_stat() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  printf '%s\n' "${stat##*) }"
}

pid_start_time() {
  local fields
  fields=$(pid_stat "$1") || { echo 0; return; }
  read -ra fields <<<"$fields"
  echo "${fields[19]}"
}

# Alive, and not a zombie: processes this script started and that already
# exited stay zombies until the script ends, and `kill -0` succeeds on them.
pid_alive() {
  local fields
  [ -n "$1" ] || return 1
  fields=$(pid_stat "$1") || return 1
  [ "${fields%% *}" != Z ]
}

# pid_is PID START: alive and still the process that was recorded.
pid_is() {
  pid_alive "$1" && { [ -z "${2:-}" ] || [ "$(pid_start_time "$1")" = "$2" ]; }
}

record_pid() {
  printf '%s %s %s\n' "$1" "$2" "$(pid_start_time "$2")" >>"$PID_FILE"
}

# spawn COMPONENT LOG COMMAND...: starts COMMAND in the background in its own
# session (so that it outlives this script and a signal to the caller's
# process group does not reach it), output to LOG; sets SPAWNED to its pid.
# setsid execs the command in place (a background job of a script is never a
# process group leader), so $! is the server's own pid.
SPAWNED=
spawn() {
  local component=$1 logfile=$2
  shift 2
  setsid "$@" </dev/null >>"$logfile" 2>&1 &
  SPAWNED=$!
  record_pid "$component" "$SPAWNED"
}

# stop_pids "PID START" ...: SIGTERM to each, up to 10 s for all of them to
# exit, then SIGKILL to what is left.
stop_pids() {
  local entry pid start deadline left=()
  for entry in "$@"; do
    read -r pid start <<<"$entry"
    if pid_is "$pid" "$start"; then
      kill -TERM "$pid" 2>/dev/null || true
      left+=("$pid $start")
    fi
  done
  deadline=$((SECONDS + 10))
  while [ "${#left[@]}" -gt 0 ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.2
    local still=()
    for entry in "${left[@]}"; do
      read -r pid start <<<"$entry"
      if pid_is "$pid" "$start"; then still+=("$entry"); fi
    done
    left=("${still[@]}")
  done
  for entry in "${left[@]}"; do
    read -r pid start <<<"$entry"
    log "pid $pid did not stop within 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# wait_process SECONDS WHAT PID COMMAND...: as cs_wait_until, but gives up at
# once when PID has exited (a server that refused its configuration should
# not cost the whole timeout).
wait_process() {
  local seconds=$1 what=$2 pid=$3
  shift 3
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$pid"; then log "$what: its process (pid $pid) exited"; return 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then log "$what did not answer within ${seconds}s"; return 1; fi
    sleep 0.2
  done
}

# ---- ports -----------------------------------------------------------------------

port_busy() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# check_port PORT WHAT VARIABLE
check_port() {
  if [ "$1" -lt 1 ] || [ "$1" -gt 65535 ]; then fail "port $1 ($2) is out of range: set $3"; fi
  if port_busy "$1"; then
    fail "port $1 ($2) is already in use on this machine: stop what listens there or set $3"
  fi
}

check_ports() {
  local i
  for ((i = 0; i < REDIS_NODE_COUNT; i++)); do
    check_port $((REDIS_PORT + i)) "Redis node $((i + 1))" CLUSTER_REDIS_PORT
    check_port $((REDIS_PORT + i + 10000)) "Redis node $((i + 1))'s cluster bus" CLUSTER_REDIS_PORT
  done
  check_port "$MARIADB_PRIMARY_PORT" "MariaDB primary" CLUSTER_MARIADB_PRIMARY_PORT
  check_port "$MARIADB_REPLICA_PORT" "MariaDB replica" CLUSTER_MARIADB_REPLICA_PORT
  for ((i = 0; i < INSTANCE_COUNT; i++)); do
    check_port $((INSTANCE_PORT + i)) "instance $((i + 1)), public" CLUSTER_INSTANCE_PORT
    check_port $((ADMIN_PORT + i)) "instance $((i + 1)), admin" CLUSTER_ADMIN_PORT
  done
  check_port "$LB_PORT" "HAProxy" CLUSTER_LB_PORT
  check_port "$LB_STATS_PORT" "HAProxy statistics" CLUSTER_LB_STATS_PORT
}

# ---- the env file --------------------------------------------------------------

# Single quotes keep any value literal when the file is sourced.
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# env_set NAME VALUE: adds or replaces NAME in the env file, atomically (a
# reader never sees half a file) and under a lock (start-instance may run for
# two instances at once).
env_set() {
  local name=$1 value=$2 tmp
  (
    flock 9
    tmp=$(mktemp "$STATE/.env.XXXXXX")
    { grep -v "^$name=" "$ENV_FILE" 2>/dev/null || true; printf '%s=%s\n' "$name" "$(quote "$value")"; } >"$tmp"
    mv "$tmp" "$ENV_FILE"
  ) 9>"$STATE/.lock"
}

hex_secret() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# ---- Redis Cluster ---------------------------------------------------------------

redis_ports() {
  local i
  for ((i = 0; i < REDIS_NODE_COUNT; i++)); do echo $((REDIS_PORT + i)); done
}

redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }

# Formed: every node says ok, `--cluster check` finds them agreeing on the
# slots, three masters, and every replica has synced with its master (a
# replica that never synced is not promoted when its master dies).
redis_cluster_formed() {
  local port role info masters=0
  for port in $(redis_ports); do
    # Captured first: `grep -q` in a pipeline may close it early, and with
    # pipefail the writer's SIGPIPE would fail the check.
    info=$(redis-cli -p "$port" cluster info) || return 1
    [[ $info == *cluster_state:ok* ]] || return 1
    role=$(redis-cli -p "$port" role | sed -n 1p)
    case $role in
      master) masters=$((masters + 1)) ;;
      slave)
        info=$(redis-cli -p "$port" info replication) || return 1
        [[ $info == *master_link_status:up* ]] || return 1
        ;;
      *) return 1 ;;
    esac
  done
  [ "$masters" -eq 3 ] || return 1
  redis-cli --cluster check "127.0.0.1:$REDIS_PORT" >/dev/null 2>&1
}

start_redis() {
  local port dir nodes=()
  for port in $(redis_ports); do
    dir=$STATE/redis-$port
    mkdir -p "$dir"
    # Nothing is persisted: a node that restarts comes back empty and, with
    # its nodes.conf, rejoins as a replica of whoever took over its slots.
    spawn redis "$STATE/redis-$port.log" redis-server \
      --port "$port" --bind 127.0.0.1 --dir "$dir" \
      --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
      --cluster-node-timeout 2000 \
      --save "" --appendonly no --daemonize no --logfile ""
    REDIS_PIDS+=("$SPAWNED")
    nodes+=("127.0.0.1:$port")
  done
  local i=0
  for port in $(redis_ports); do
    STEP_LOG=$STATE/redis-$port.log
    wait_process 15 "Redis node :$port" "${REDIS_PIDS[i]}" redis_ping "$port"
    i=$((i + 1))
  done
  STEP_LOG=$STATE/redis-create.log
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$STEP_LOG" 2>&1
  cs_wait_until 30 "Redis Cluster (formed, replicas synced)" redis_cluster_formed
}

# ---- MariaDB ----------------------------------------------------------------------

MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)

sql() {
  local port=$1
  shift
  mariadb -h127.0.0.1 -P"$port" -uroot --batch --skip-column-names -e "$*"
}

mariadb_answers() { sql "$1" 'SELECT 1' >/dev/null 2>&1; }

# Runs in the background (both servers at once: this is the slowest part of
# `up`), in its own session so that a failed `up` can stop it whole
# (mariadb-install-db runs a bootstrap server under it).
init_mariadb() {
  local name=$1 dir=$STATE/mariadb-$1
  mkdir -p "$dir/tmp"
  # Each server keeps its temporary files to itself (tests/api/helpers.rs:
  # two installs sharing a tmpdir can collide).
  TMPDIR=$dir/tmp setsid mariadb-install-db --no-defaults --user=root \
    --auth-root-authentication-method=normal --skip-test-db \
    --datadir="$dir/data" --tmpdir="$dir/tmp" \
    </dev/null >"$STATE/mariadb-$name-install.log" 2>&1 &
  INIT_PIDS+=("$!")
}

# start_mariadb NAME PORT SERVER_ID [OPTION...]
start_mariadb() {
  local name=$1 port=$2 id=$3 dir=$STATE/mariadb-$1
  shift 3
  local socket=$STATE/mariadb-$name.sock
  # A unix socket path is at most 107 bytes.
  [ "${#socket}" -le 100 ] || fail "the MariaDB socket path $socket is too long: move the repository to a shorter path"
  # As deploy/compose.yaml runs them: ROW events with full images are what the
  # binlog follower reads; trusting function creators lets migrations create
  # triggers with the binary log on; utf8mb4 is what the service wants.
  # --log-slave-updates: the follower reads the log of the server readers use.
  spawn mariadb "$STATE/mariadb-$name.log" "$MARIADBD" --no-defaults --user=root \
    --skip-name-resolve --bind-address=127.0.0.1 --port="$port" \
    --datadir="$dir/data" --tmpdir="$dir/tmp" --socket="$socket" \
    --innodb-buffer-pool-size=64M \
    --log-bin=mariadb-bin --relay-log=mariadb-relay-bin --binlog-format=ROW \
    --binlog-row-image=FULL --server-id="$id" --log-slave-updates \
    --log-bin-trust-function-creators=1 \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci "$@"
  MARIADB_PIDS+=("$SPAWNED")
}

replica_running() {
  local status
  status=$(mariadb -h127.0.0.1 -P"$MARIADB_REPLICA_PORT" -uroot -e 'SHOW SLAVE STATUS\G') || return 1
  grep -q 'Slave_IO_Running: Yes' <<<"$status" && grep -q 'Slave_SQL_Running: Yes' <<<"$status"
}

replica_has_database() {
  [ "$(sql "$MARIADB_REPLICA_PORT" "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'connstatus'")" = 1 ]
}

start_mariadb_pair() {
  local pid
  for pid in "${INIT_PIDS[@]}"; do
    STEP_LOG=$STATE/mariadb-primary-install.log
    [ "$pid" = "${INIT_PIDS[1]}" ] && STEP_LOG=$STATE/mariadb-replica-install.log
    wait "$pid"
  done
  INIT_PIDS=()
  start_mariadb primary "$MARIADB_PRIMARY_PORT" 1
  # read-only keeps everyone but replication and administrators from writing
  # to the replica, as in compose.yaml; root (which the URLs use here) is an
  # administrator, so it does not get in the service's way.
  start_mariadb replica "$MARIADB_REPLICA_PORT" 2 --read-only=ON
  STEP_LOG=$STATE/mariadb-primary.log
  wait_process 60 "MariaDB primary :$MARIADB_PRIMARY_PORT" "${MARIADB_PIDS[0]}" mariadb_answers "$MARIADB_PRIMARY_PORT"
  STEP_LOG=$STATE/mariadb-replica.log
  wait_process 60 "MariaDB replica :$MARIADB_REPLICA_PORT" "${MARIADB_PIDS[1]}" mariadb_answers "$MARIADB_REPLICA_PORT"

  STEP=replication
  STEP_LOG=$STATE/mariadb-replica.log
  local password master file pos
  password=$(hex_secret 16)
  sql "$MARIADB_PRIMARY_PORT" "CREATE USER 'replicator'@'127.0.0.1' IDENTIFIED BY '$password';
    GRANT REPLICATION SLAVE ON *.* TO 'replicator'@'127.0.0.1'"
  # The position after the account: the replica starts from there, so the
  # database created next reaches it through replication.
  master=$(sql "$MARIADB_PRIMARY_PORT" 'SHOW MASTER STATUS')
  read -r file pos _ <<<"$master"
  [ -n "$file" ] && [ -n "$pos" ] || fail "SHOW MASTER STATUS on the primary returned nothing (is the binary log on?)"
  sql "$MARIADB_REPLICA_PORT" "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$MARIADB_PRIMARY_PORT,
    MASTER_USER='replicator', MASTER_PASSWORD='$password',
    MASTER_LOG_FILE='$file', MASTER_LOG_POS=$pos, MASTER_USE_GTID=no, MASTER_CONNECT_RETRY=1;
    START SLAVE"
  cs_wait_until 30 "MariaDB replication (IO and SQL threads running)" replica_running
  sql "$MARIADB_PRIMARY_PORT" 'CREATE DATABASE connstatus CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci'
  cs_wait_until 30 "the connstatus database on the replica" replica_has_database
}

# ---- connstatus ---------------------------------------------------------------------

resolve_bin() {
  if [ -n "${CONNSTATUS_BIN:-}" ]; then
    BIN=$CONNSTATUS_BIN
  else
    BIN=target/release/connstatus
    if [ ! -x "$BIN" ]; then
      log "building $BIN (cargo build --release)"
      cargo build --release --locked --bin connstatus
    fi
  fi
  [ -x "$BIN" ] || fail "the service binary $BIN does not exist or is not executable"
  # Absolute: the instance scripts must not depend on the directory they run in.
  BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
}

instance_url() { echo "http://127.0.0.1:$((INSTANCE_PORT + $1 - 1))"; }
admin_url() { echo "http://127.0.0.1:$((ADMIN_PORT + $1 - 1))"; }

# The variables the topology sets for the instances; a caller's value of any
# of them is replaced, any other CONNSTATUS_* or RUST_* of the caller's is
# kept.
TOPOLOGY_VARS=(DATABASE_URL DATABASE_REPLICA_URL REDIS_URL CONNSTATUS_REDIS_MODE
  CONNSTATUS_JWT_SECRET CONNSTATUS_INTERNAL_TOKEN CONNSTATUS_DRAIN_SECONDS)

# Writes target/cluster/instance-N.sh: the instance's whole start command, so
# that `start-instance N` (or a person) starts it again exactly as `up` did.
write_instance_script() {
  local n=$1 file=$STATE/instance-$1.sh name
  {
    echo '#!/usr/bin/env bash'
    echo "# Starts connstatus instance $n of the loopback topology (written by scripts/cluster.sh up)."
    echo 'set -euo pipefail'
    # The service reads config/ from its working directory.
    echo "cd $(quote "$ROOT")"
    echo "# shellcheck source=/dev/null"
    echo "source $(quote "$ENV_FILE")"
    echo "export ${TOPOLOGY_VARS[*]}"
    echo "export CONNSTATUS_BIND=$(quote "127.0.0.1:$((INSTANCE_PORT + n - 1))")"
    echo "export CONNSTATUS_ADMIN_BIND=$(quote "127.0.0.1:$((ADMIN_PORT + n - 1))")"
    echo "export RUST_LOG=$(quote "${RUST_LOG:-info}")"
    # What the caller of `up` exported: kept unless the caller of a later
    # start-instance exports its own value.
    for name in $(compgen -e); do
      case $name in
        CONNSTATUS_BIN | CONNSTATUS_BIND | CONNSTATUS_ADMIN_BIND) continue ;;
        CONNSTATUS_* | RUST_*) ;;
        *) continue ;;
      esac
      [[ " ${TOPOLOGY_VARS[*]} RUST_LOG " == *" $name "* ]] && continue
      echo "[ -n \"\${$name+set}\" ] || export $name=$(quote "${!name}")"
    done
    echo "exec $(quote "$BIN") serve"
  } >"$file"
  chmod +x "$file"
}

ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1/readyz")" = 200 ]; }

# wait_instance N PID: its admin /readyz answers 200 within 60 s, or its
# log's tail is printed and `up` fails.
wait_instance() {
  local n=$1 pid=$2
  if ! wait_process 60 "instance $n ($(admin_url "$n")/readyz)" "$pid" ready "$(admin_url "$n")"; then
    STEP_LOG=
    log "last lines of $STATE/instance-$n.log:"
    tail -n 30 "$STATE/instance-$n.log" >&2 || true
    return 1
  fi
}

start_instance_process() {
  local n=$1
  spawn instance "$STATE/instance-$n.log" "$STATE/instance-$n.sh"
}

# ---- HAProxy -------------------------------------------------------------------------

# "server status" for the backend's servers, from the statistics CSV.
haproxy_servers() {
  curl -s --max-time 2 "http://127.0.0.1:$LB_STATS_PORT/;csv" |
    awk -F, '$1 == "connstatus" && $2 ~ /^connstatus-[0-9]+$/ { print $2, $18 }'
}

haproxy_all_up() {
  local servers
  servers=$(haproxy_servers)
  [ "$(grep -c ' UP$' <<<"$servers")" -eq "$INSTANCE_COUNT" ]
}

haproxy_server_up() {
  local servers
  servers=$(haproxy_servers)
  grep -q "^connstatus-$1 UP$" <<<"$servers"
}

start_haproxy() {
  local env=(LB_BIND="127.0.0.1:$LB_PORT" LB_STATS_BIND="127.0.0.1:$LB_STATS_PORT") n
  for ((n = 1; n <= INSTANCE_COUNT; n++)); do
    env+=("LB_SERVER_$n=127.0.0.1:$((INSTANCE_PORT + n - 1))")
  done
  STEP_LOG=$STATE/haproxy.log
  env "${env[@]}" haproxy -c -q -f deploy/haproxy.cfg >"$STEP_LOG" 2>&1
  # -db: in the foreground, one process, so the recorded pid is the one that
  # takes signals (SIGTERM stops it, SIGUSR1 finishes the connections first).
  spawn haproxy "$STEP_LOG" env "${env[@]}" haproxy -db -f "$ROOT/deploy/haproxy.cfg"
  HAPROXY_PID=$SPAWNED
}

# ---- up -------------------------------------------------------------------------------

STEP=
STEP_LOG=
INIT_PIDS=()
REDIS_PIDS=()
MARIADB_PIDS=()
INSTANCE_PIDS=()
HAPROXY_PID=

up_failed() {
  local rc=$?
  [ "$rc" -ne 0 ] || return 0
  trap - EXIT
  log "up failed at step: $STEP"
  if [ -n "$STEP_LOG" ] && [ -s "$STEP_LOG" ]; then
    log "last lines of $STEP_LOG:"
    tail -n 30 "$STEP_LOG" >&2 || true
  fi
  local pid
  for pid in "${INIT_PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  down || true
  exit "$rc"
}

write_env() {
  local n urls=() admins=() nodes=() redis_urls=() port
  for ((n = 1; n <= INSTANCE_COUNT; n++)); do
    urls+=("$(instance_url "$n")")
    admins+=("$(admin_url "$n")")
  done
  for port in $(redis_ports); do
    nodes+=("127.0.0.1:$port")
    redis_urls+=("redis://127.0.0.1:$port")
  done
  local IFS=,
  local redis_url="${redis_urls[*]}"
  IFS=' '
  {
    printf 'BALANCER_URL=%s\n' "$(quote "http://127.0.0.1:$LB_PORT")"
    printf 'BALANCER_STATS_URL=%s\n' "$(quote "http://127.0.0.1:$LB_STATS_PORT")"
    printf 'INSTANCE_URLS=%s\n' "$(quote "${urls[*]}")"
    printf 'ADMIN_URLS=%s\n' "$(quote "${admins[*]}")"
    printf 'REDIS_NODES=%s\n' "$(quote "${nodes[*]}")"
    printf 'REDIS_URL=%s\n' "$(quote "$redis_url")"
    printf 'CONNSTATUS_REDIS_MODE=%s\n' "$(quote cluster)"
    printf 'DATABASE_URL=%s\n' "$(quote "mysql://root@127.0.0.1:$MARIADB_PRIMARY_PORT/connstatus")"
    printf 'DATABASE_REPLICA_URL=%s\n' "$(quote "mysql://root@127.0.0.1:$MARIADB_REPLICA_PORT/connstatus")"
    printf 'MARIADB_PRIMARY_SOCKET=%s\n' "$(quote "$STATE/mariadb-primary.sock")"
    printf 'MARIADB_REPLICA_SOCKET=%s\n' "$(quote "$STATE/mariadb-replica.sock")"
    printf 'CONNSTATUS_JWT_SECRET=%s\n' "$(quote "$JWT_SECRET")"
    printf 'CONNSTATUS_INTERNAL_TOKEN=%s\n' "$(quote "$INTERNAL_TOKEN")"
    printf 'CONNSTATUS_DRAIN_SECONDS=%s\n' "$(quote "$DRAIN_SECONDS")"
    printf 'CONNSTATUS_BIN=%s\n' "$(quote "$BIN")"
    printf 'PIDS_INSTANCES=%s\n' "$(quote "${INSTANCE_PIDS[*]}")"
    printf 'PIDS_REDIS=%s\n' "$(quote "${REDIS_PIDS[*]}")"
    printf 'PIDS_MARIADB=%s\n' "$(quote "${MARIADB_PIDS[*]}")"
    printf 'PIDS_HAPROXY=%s\n' "$(quote "$HAPROXY_PID")"
  } >"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

up() {
  local started=$SECONDS n
  if [ -e "$STATE" ]; then
    log "taking down what a previous up left"
    down
  fi
  STEP="installing tools"
  ensure_tool ss iproute2
  ensure_tool curl curl
  ensure_tool flock util-linux
  ensure_tool redis-server redis-server
  ensure_tool redis-cli redis-tools
  if [ ! -x "$MARIADBD" ] || ! command -v mariadb-install-db >/dev/null 2>&1; then
    cs_apt_install mariadb-server
  fi
  MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
  ensure_tool mariadb mariadb-client
  ensure_tool haproxy haproxy
  STEP="the service binary"
  resolve_bin
  STEP="checking ports"
  check_ports

  mkdir -p "$STATE"
  : >"$PID_FILE"
  trap up_failed EXIT

  JWT_SECRET=$(hex_secret 32)
  INTERNAL_TOKEN=$(hex_secret 32)

  STEP="MariaDB data directories (mariadb-install-db)"
  init_mariadb primary
  init_mariadb replica

  STEP="Redis Cluster"
  log "starting the Redis Cluster (:$REDIS_PORT..:$((REDIS_PORT + REDIS_NODE_COUNT - 1)))"
  start_redis

  STEP="MariaDB primary and replica"
  log "starting MariaDB (primary :$MARIADB_PRIMARY_PORT, replica :$MARIADB_REPLICA_PORT)"
  start_mariadb_pair

  # Written before the instances: their scripts read it.
  write_env

  STEP="connstatus migrate"
  STEP_LOG=$STATE/migrate.log
  log "migrating (once, before the instances start)"
  (
    set -a
    # shellcheck source=/dev/null
    source "$ENV_FILE"
    set +a
    "$BIN" migrate
  ) </dev/null >"$STEP_LOG" 2>&1

  STEP="connstatus instances"
  STEP_LOG=
  log "starting $INSTANCE_COUNT instances (public :$INSTANCE_PORT.., admin :$ADMIN_PORT..) and HAProxy (:$LB_PORT)"
  for ((n = 1; n <= INSTANCE_COUNT; n++)); do
    write_instance_script "$n"
    start_instance_process "$n"
    INSTANCE_PIDS+=("$SPAWNED")
  done
  # HAProxy starts while the instances get ready: it marks each one UP as
  # soon as its /readyz answers.
  STEP="HAProxy"
  start_haproxy
  STEP="connstatus instances"
  for ((n = 1; n <= INSTANCE_COUNT; n++)); do
    wait_instance "$n" "${INSTANCE_PIDS[n - 1]}"
  done

  STEP="HAProxy (all servers UP)"
  STEP_LOG=$STATE/haproxy.log
  wait_process 30 "HAProxy with every instance UP" "$HAPROXY_PID" haproxy_all_up

  write_env
  trap - EXIT
  log "up in $((SECONDS - started)) s; target/cluster/env:"
  cat "$ENV_FILE"
}

# ---- start-instance ---------------------------------------------------------------------

start_instance() {
  local n=${1:-}
  [[ $n =~ ^[1-9][0-9]*$ ]] && [ "$n" -le "$INSTANCE_COUNT" ] || fail "usage: $0 start-instance N (1..$INSTANCE_COUNT)"
  [ -f "$ENV_FILE" ] && [ -x "$STATE/instance-$n.sh" ] || fail "no topology is up (run $0 up first)"
  # shellcheck source=/dev/null
  source "$ENV_FILE"
  local pids old port admin
  read -ra pids <<<"$PIDS_INSTANCES"
  old=${pids[n - 1]:-}
  # A stopped instance is still draining for a while: wait for it to exit
  # (its listeners are busy until then).
  if pid_alive "$old"; then
    log "instance $n (pid $old) is still running: waiting for it to exit"
    local deadline=$((SECONDS + 60))
    while pid_alive "$old"; do
      [ "$SECONDS" -lt "$deadline" ] || fail "instance $n (pid $old) is still running after 60 s: stop it first"
      sleep 0.2
    done
  fi
  # The ports `up` used (its caller's CLUSTER_* may differ from this one's).
  local urls
  read -ra urls <<<"$INSTANCE_URLS"
  port=${urls[n - 1]##*:}
  read -ra urls <<<"$ADMIN_URLS"
  admin=${urls[n - 1]##*:}
  INSTANCE_PORT=$((port - n + 1))
  ADMIN_PORT=$((admin - n + 1))
  LB_STATS_PORT=${BALANCER_STATS_URL##*:}
  check_port "$port" "instance $n, public" CLUSTER_INSTANCE_PORT
  check_port "$admin" "instance $n, admin" CLUSTER_ADMIN_PORT
  start_instance_process "$n"
  pids[n - 1]=$SPAWNED
  env_set PIDS_INSTANCES "${pids[*]}"
  wait_instance "$n" "$SPAWNED" || fail "instance $n did not get ready"
  # Back in rotation, so that what follows sees the topology whole.
  if pid_alive "$PIDS_HAPROXY"; then
    cs_wait_until 30 "HAProxy marking connstatus-$n UP" haproxy_server_up "$n" || fail "HAProxy did not mark connstatus-$n UP"
  fi
  log "instance $n started again (pid $SPAWNED)"
}

# ---- down ----------------------------------------------------------------------------

down() {
  if [ ! -d "$STATE" ]; then
    log "nothing is up"
    return 0
  fi
  local first=() second=() component pid start
  if [ -f "$PID_FILE" ]; then
    while read -r component pid start; do
      case $component in
        instance | haproxy) first+=("$pid $start") ;;
        *) second+=("$pid $start") ;;
      esac
    done <"$PID_FILE"
  elif [ -f "$ENV_FILE" ]; then
    # No pid list (removed by hand?): the env file's pids, without start times.
    # shellcheck source=/dev/null
    source "$ENV_FILE"
    for pid in ${PIDS_INSTANCES:-} ${PIDS_HAPROXY:-}; do first+=("$pid"); done
    for pid in ${PIDS_REDIS:-} ${PIDS_MARIADB:-}; do second+=("$pid"); done
  fi
  log "stopping the instances and HAProxy"
  stop_pids "${first[@]}"
  log "stopping Redis and MariaDB"
  stop_pids "${second[@]}"
  rm -rf "$STATE"
  log "down"
}

# ---- status ----------------------------------------------------------------------------

status() {
  if [ ! -f "$ENV_FILE" ]; then
    log "nothing is up (no $ENV_FILE)"
    return 1
  fi
  # shellcheck source=/dev/null
  source "$ENV_FILE"
  local ok=0 pid node port state role line n url code stats io sqlr lag nodes pids urls public
  # Prints a word; whether all is up is counted from the pids at the end.
  alive() { if pid_alive "$1"; then echo up; else echo DOWN; fi; }

  echo "Redis Cluster:"
  read -ra nodes <<<"$REDIS_NODES"
  read -ra pids <<<"$PIDS_REDIS"
  state=
  for node in "${nodes[@]}"; do
    state=$(redis-cli -h 127.0.0.1 -p "${node##*:}" cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_state://p') || true
    [ -z "$state" ] || break
  done
  echo "  cluster_state: ${state:-unknown}"
  [ "$state" = ok ] || ok=1
  for ((n = 0; n < ${#nodes[@]}; n++)); do
    port=${nodes[n]##*:}
    role=$(redis-cli -h 127.0.0.1 -p "$port" role 2>/dev/null | sed -n 1p) || true
    printf '  %s pid %s %s, role %s\n' "${nodes[n]}" "${pids[n]:-?}" "$(alive "${pids[n]:-}")" "${role:-none}"
  done

  echo "MariaDB:"
  read -ra pids <<<"$PIDS_MARIADB"
  printf '  primary %s pid %s %s\n' "${DATABASE_URL%/*}" "${pids[0]:-?}" "$(alive "${pids[0]:-}")"
  printf '  replica %s pid %s %s\n' "${DATABASE_REPLICA_URL%/*}" "${pids[1]:-?}" "$(alive "${pids[1]:-}")"
  port=${DATABASE_REPLICA_URL##*:}
  port=${port%%/*}
  line=$(mariadb -h127.0.0.1 -P"$port" -uroot -e 'SHOW SLAVE STATUS\G' 2>/dev/null |
    awk -F': ' '/ Slave_IO_Running:/ { io = $2 } / Slave_SQL_Running:/ { sqlr = $2 }
      / Seconds_Behind_Master:/ { lag = $2 } END { printf "%s %s %s", io, sqlr, lag }') || true
  read -r io sqlr lag <<<"$line"
  printf '  replication: IO %s, SQL %s, Seconds_Behind_Master %s\n' "${io:-?}" "${sqlr:-?}" "${lag:-?}"
  [ "${io:-}" = Yes ] && [ "${sqlr:-}" = Yes ] || ok=1

  echo "connstatus:"
  read -ra pids <<<"$PIDS_INSTANCES"
  read -ra urls <<<"$ADMIN_URLS"
  read -ra public <<<"$INSTANCE_URLS"
  for ((n = 0; n < ${#urls[@]}; n++)); do
    url=${urls[n]}
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/readyz") || true
    printf '  %d %s (admin %s) pid %s %s, /readyz %s\n' "$((n + 1))" "${public[n]}" "$url" "${pids[n]:-?}" \
      "$(alive "${pids[n]:-}")" "$code"
    [ "$code" = 200 ] || ok=1
  done

  echo "HAProxy:"
  printf '  %s pid %s %s\n' "$BALANCER_URL" "$PIDS_HAPROXY" "$(alive "$PIDS_HAPROXY")"
  LB_STATS_PORT=${BALANCER_STATS_URL##*:}
  stats=$(haproxy_servers) || true
  if [ -z "$stats" ]; then
    echo "  statistics: no answer"
    ok=1
  else
    while read -r node state; do
      echo "  $node $state"
      [ "$state" = UP ] || ok=1
    done <<<"$stats"
  fi
  # alive ran in subshells: count the pids here.
  for pid in $PIDS_INSTANCES $PIDS_REDIS $PIDS_MARIADB $PIDS_HAPROXY; do
    pid_alive "$pid" || ok=1
  done
  return "$ok"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  start-instance) start_instance "${2:-}" ;;
  *)
    echo "usage: $0 up | down | status | start-instance N" >&2
    exit 2
    ;;
esac
