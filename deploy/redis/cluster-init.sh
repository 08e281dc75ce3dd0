#!/bin/sh
# One-shot job of compose.yaml: joins the six nodes into a cluster of three
# masters with one replica each, once. On a later `compose up` it finds the
# cluster formed and leaves it alone.
set -eu

nodes="redis-1 redis-2 redis-3 redis-4 redis-5 redis-6"

cluster_ok() {
  redis-cli -h redis-1 -p 6379 cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

if cluster_ok; then
  echo "redis cluster: already formed"
  exit 0
fi

# CLUSTER MEET takes addresses, not host names.
addresses=""
for node in $nodes; do
  ip=$(getent hosts "$node" | awk '{ print $1; exit }')
  if [ -z "$ip" ]; then
    echo "redis cluster: cannot resolve $node" >&2
    exit 1
  fi
  addresses="$addresses $ip:6379"
done

# shellcheck disable=SC2086 # one argument per node
redis-cli --cluster create $addresses --cluster-replicas 1 --cluster-yes

tries=0
until cluster_ok; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "redis cluster: not ok after 60 s" >&2
    exit 1
  fi
  sleep 1
done
echo "redis cluster: formed"
