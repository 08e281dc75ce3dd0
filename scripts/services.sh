# Sourced by the other scripts: makes sure MariaDB and Redis answer on this
# machine, as the service and its tests expect them by default:
#   MariaDB at 127.0.0.1:3306, user root with an empty password, with its
#   binary log on in ROW format (the binlog follower reads it);
#   Redis at 127.0.0.1:6379.
# Each is checked; started if installed and stopped; installed from Debian's
# packages if missing; then waited for until it answers.

CS_MYSQL_HOST=127.0.0.1
CS_MYSQL_PORT=3306
CS_REDIS_PORT=6379

cs_log() { printf '[services] %s\n' "$*" >&2; }

cs_as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    cs_log "need root for: $*"; return 1; fi
}

cs_apt_install() {
  if [ -z "${CS_APT_UPDATED:-}" ]; then
    cs_log "apt-get update"
    cs_as_root apt-get update -qq
    CS_APT_UPDATED=1
  fi
  cs_log "installing $*"
  cs_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND until it succeeds.
cs_wait_until() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then cs_log "$what did not answer within ${seconds}s"; return 1; fi
    sleep 0.5
  done
}

cs_mysql_tcp() { mariadb -h"$CS_MYSQL_HOST" -P"$CS_MYSQL_PORT" -uroot -e 'SELECT 1'; }
cs_mysql_socket() { cs_as_root mariadb-admin ping; }

ensure_mariadb() {
  if command -v mariadb >/dev/null 2>&1 && cs_mysql_tcp >/dev/null 2>&1; then
    cs_log "MariaDB answers on $CS_MYSQL_HOST:$CS_MYSQL_PORT"; ensure_binlog; return
  fi
  if [ ! -x /usr/sbin/mariadbd ]; then cs_apt_install mariadb-server mariadb-client; fi
  if ! cs_mysql_socket >/dev/null 2>&1; then cs_start_mariadb; fi
  cs_wait_until 60 "MariaDB (socket)" cs_mysql_socket || return 1
  if ! cs_mysql_tcp >/dev/null 2>&1; then
    # A fresh Debian install lets root in by unix socket only; the service
    # connects over TCP as root with an empty password (development default).
    cs_log "allowing root with an empty password over TCP (development only)"
    cs_as_root mariadb -uroot -e "
      ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
      CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
      GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
      FLUSH PRIVILEGES;"
  fi
  cs_wait_until 60 "MariaDB (TCP)" cs_mysql_tcp || return 1
  cs_log "MariaDB answers on $CS_MYSQL_HOST:$CS_MYSQL_PORT"
  ensure_binlog
}

cs_start_mariadb() {
  cs_log "starting MariaDB"
  cs_as_root install -d -o mysql -g mysql /run/mysqld 2>/dev/null || true
  cs_as_root service mariadb start >/dev/null 2>&1 ||
    cs_as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
}

cs_binlog_state() {
  mariadb -h"$CS_MYSQL_HOST" -P"$CS_MYSQL_PORT" -uroot -N -e "SELECT CONCAT(IF(@@log_bin, 1, 0), ' ', @@binlog_format)"
}

# The binlog follower needs the server's binary log in ROW format. A server
# without it gets a config file that turns it on (a server id, ROW, three
# days of retention) and is restarted once.
CS_BINLOG_CNF=/etc/mysql/mariadb.conf.d/60-connstatus-binlog.cnf
ensure_binlog() {
  local state
  state=$(cs_binlog_state) || return 1
  if [ "$state" = "1 ROW" ]; then
    cs_log "MariaDB's binary log is on (ROW)"; return 0
  fi
  cs_log "MariaDB's binary log is off or not ROW ($state): turning it on in $CS_BINLOG_CNF and restarting MariaDB once"
  cs_as_root install -d "$(dirname "$CS_BINLOG_CNF")"
  printf '%s\n' '# Written by connstatus scripts/services.sh: the binlog follower reads the' \
    '# binary log in ROW format.' '[mysqld]' 'log_bin = mariadb-bin' 'binlog_format = ROW' \
    'server_id = 1' 'binlog_expire_logs_seconds = 259200' | cs_as_root tee "$CS_BINLOG_CNF" >/dev/null
  # Debian's my.cnf includes the folder; a trimmed one may not.
  local cnf=/etc/mysql/my.cnf
  if [ -f "$cnf" ] && ! grep -qsE '^!includedir /etc/mysql/mariadb\.conf\.d/?$' "$cnf" "$(readlink -f "$cnf")"; then
    printf '\n!includedir /etc/mysql/mariadb.conf.d/\n' | cs_as_root tee -a "$cnf" >/dev/null
  fi
  cs_as_root mariadb-admin shutdown >/dev/null 2>&1 || cs_as_root service mariadb stop >/dev/null 2>&1 || true
  cs_wait_until 60 "MariaDB (stopping)" cs_mysql_down || return 1
  cs_start_mariadb
  cs_wait_until 60 "MariaDB (TCP)" cs_mysql_tcp || return 1
  state=$(cs_binlog_state) || return 1
  if [ "$state" != "1 ROW" ]; then cs_log "MariaDB's binary log is still not on in ROW format ($state)"; return 1; fi
  cs_log "MariaDB's binary log is on (ROW)"
}

# Down: no answer on the socket, and the server's process (by its pid file;
# tests' private servers are other processes) is gone.
cs_mysql_down() {
  local pid
  pid=$(cat /run/mysqld/mysqld.pid 2>/dev/null || true)
  ! cs_mysql_socket >/dev/null 2>&1 && { [ -z "$pid" ] || ! ps -p "$pid" >/dev/null 2>&1; }
}

cs_redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$CS_REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

ensure_redis() {
  if command -v redis-cli >/dev/null 2>&1 && cs_redis_ping; then
    cs_log "Redis answers on 127.0.0.1:$CS_REDIS_PORT"; return 0
  fi
  if ! command -v redis-server >/dev/null 2>&1; then cs_apt_install redis-server; fi
  if ! cs_redis_ping; then
    cs_log "starting Redis"
    cs_as_root install -d /var/lib/redis /var/log/redis 2>/dev/null || true
    cs_as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$CS_REDIS_PORT" \
      --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/connstatus.log
  fi
  cs_wait_until 30 "Redis" cs_redis_ping || return 1
  cs_log "Redis answers on 127.0.0.1:$CS_REDIS_PORT"
}

# ensure_tool COMMAND PACKAGE: installs PACKAGE from Debian if COMMAND is missing.
ensure_tool() {
  command -v "$1" >/dev/null 2>&1 || cs_apt_install "$2"
}

# cs_release_build: builds the service and the floors (benches/floors.rs) in
# release, in one cargo call (a separate `cargo build` and `cargo bench` would
# unify features differently and build everything twice); prints the floors
# binary's path. The service is target/release/connstatus.
cs_release_build() {
  cargo build --release --locked --bins --bench floors --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "floors" and m.get("executable"):
        print(m["executable"])'
}
