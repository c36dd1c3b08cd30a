#!/usr/bin/env bash
# A tally cluster on loopback, from the distribution's packages:
#   etcd (3 members) ── Patroni ── PostgreSQL 15: a primary and a synchronous standby
#   (synchronous_mode, synchronous_commit = remote_apply) ── N tally-server nodes sharing
#   one ledger schema, each serving the shards whose lease it holds.
#
#   scripts/cluster.sh up [N]     start it (N tally nodes, 3 by default); installs what is missing
#   scripts/cluster.sh status     etcd health, Patroni's members, each node's readiness and shards
#   scripts/cluster.sh down       stop everything (the data stays in $TALLY_CLUSTER_DIR)
#   scripts/cluster.sh destroy    stop everything and remove $TALLY_CLUSTER_DIR
#
# Ports: etcd 2379/2381/2383 (peers +1), PostgreSQL 5433/5434, Patroni REST 8008/8009,
# tally nodes 8081.. . The admin key is in $TALLY_CLUSTER_DIR/admin.key. Each tally node runs
# under a restart loop with --exit-on-storage-failure, so a node that fail-stops (its database
# failed over, its lease was taken) comes back reading what is durable.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${TALLY_CLUSTER_DIR:-/tmp/tally-cluster}
ETCD_CLIENTS=127.0.0.1:2379,127.0.0.1:2381,127.0.0.1:2383
PG_PORTS=(5433 5434)
REST_PORTS=(8008 8009)
NODE_PORT0=8081
CONNINFO="host=127.0.0.1,127.0.0.1 port=5433,5434 user=postgres password=tally-pg dbname=postgres target_session_attrs=read-write connect_timeout=3"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# Patroni runs postgres, which refuses to run as root.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

install_missing() {
  local want=()
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want+=(postgresql)
  command -v patroni >/dev/null 2>&1 || want+=(patroni)
  /usr/bin/python3 -c 'import etcd' >/dev/null 2>&1 || want+=(python3-etcd)
  command -v etcd >/dev/null 2>&1 || want+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || want+=(etcd-client)
  command -v curl >/dev/null 2>&1 || want+=(curl)
  if [ ${#want[@]} -gt 0 ]; then
    echo "installing ${want[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
  fi
  # The distribution's packages may start their own instances: this cluster uses its own.
  as_root sh -c 'pkill -x etcd -u etcd 2>/dev/null; true'
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1; }

wait_for() { # seconds, what, command...
  local limit=$1 what=$2; shift 2
  local i=0
  until "$@" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt $((limit * 5)) ]; then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 0.2
  done
}

start_etcd() {
  local cluster="e1=http://127.0.0.1:2380,e2=http://127.0.0.1:2382,e3=http://127.0.0.1:2384"
  for i in 1 2 3; do
    local client=$((2377 + 2 * i)) peer=$((2378 + 2 * i))
    [ -f "$DIR/etcd$i.pid" ] && kill -0 "$(cat "$DIR/etcd$i.pid")" 2>/dev/null && continue
    local state=new
    [ -d "$DIR/etcd$i/member" ] && state=existing
    nohup etcd --name "e$i" --data-dir "$DIR/etcd$i" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$cluster" --initial-cluster-state "$state" --initial-cluster-token tally \
      --enable-v2=true >"$DIR/etcd$i.log" 2>&1 &
    echo $! >"$DIR/etcd$i.pid"
  done
  wait_for 30 "etcd" etcdctl --endpoints "$ETCD_CLIENTS" endpoint health
}

patroni_yml() { # index
  local i=$1 name="pg$(( $1 + 1 ))"
  cat <<EOF
scope: tally
name: $name
restapi:
  listen: 127.0.0.1:${REST_PORTS[$i]}
  connect_address: 127.0.0.1:${REST_PORTS[$i]}
etcd3:
  hosts: $ETCD_CLIENTS
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        synchronous_commit: remote_apply
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        max_connections: 200
  initdb:
    - encoding: UTF8
    - data-checksums
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 md5
    - host all all 127.0.0.1/32 md5
postgresql:
  listen: 127.0.0.1:${PG_PORTS[$i]}
  connect_address: 127.0.0.1:${PG_PORTS[$i]}
  data_dir: $DIR/$name/data
  bin_dir: $(pg_bin)
  pgpass: $DIR/$name/pgpass
  authentication:
    replication: {username: replicator, password: tally-rep}
    superuser: {username: postgres, password: tally-pg}
    rewind: {username: rewind_user, password: tally-rewind}
  parameters:
    unix_socket_directories: $DIR/$name
EOF
}

start_patroni() {
  for i in 0 1; do
    local name="pg$((i + 1))"
    [ -f "$DIR/$name.pid" ] && kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null && continue
    mkdir -p "$DIR/$name"
    patroni_yml "$i" >"$DIR/$name.yml"
    [ "$(id -u)" -eq 0 ] && chown -R postgres: "$DIR/$name" "$DIR/$name.yml"
    as_pg nohup /usr/bin/patroni "$DIR/$name.yml" >>"$DIR/$name.log" 2>&1 &
    # The pid of Patroni itself (not of runuser): what a failover test kills.
    # (runuser's command line names the file too: wait for Patroni's own process.)
    wait_for 10 "Patroni $name" pgrep -f "^/usr/bin/python3 /usr/bin/patroni $DIR/$name.yml"
    pgrep -f "^/usr/bin/python3 /usr/bin/patroni $DIR/$name.yml" | head -1 >"$DIR/$name.pid"
    # The first one bootstraps the cluster (or, restarted, rejoins it) before the second.
    [ "$i" -eq 0 ] && wait_for 90 "a PostgreSQL primary" sh -c \
      "curl -sf http://127.0.0.1:${REST_PORTS[0]}/primary || curl -sf http://127.0.0.1:${REST_PORTS[1]}/primary"
  done
  wait_for 120 "a synchronous standby" sh -c \
    "curl -sf http://127.0.0.1:${REST_PORTS[0]}/cluster http://127.0.0.1:${REST_PORTS[1]}/cluster | grep -q sync_standby"
}

start_nodes() { # count
  local n=$1
  if [ ! -x target/release/tally-server ] || [ -n "$(find crates src -newer target/release/tally-server -name '*.rs' -print -quit 2>/dev/null)" ]; then
    cargo build --release -q -p tally-server
  fi
  [ -f "$DIR/admin.key" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/admin.key"
  for i in $(seq 1 "$n"); do
    local port=$((NODE_PORT0 + i - 1))
    [ -f "$DIR/node$i.pid" ] && kill -0 "$(cat "$DIR/node$i.pid")" 2>/dev/null && continue
    mkdir -p "$DIR/node$i"
    # A restart loop: the node exits 75 when its store fail-stops, and comes back.
    nohup bash -c "while [ ! -f '$DIR/stopping' ]; do
        '$ROOT/target/release/tally-server' --listen 127.0.0.1:$port --data-dir '$DIR/node$i' \
          --postgres '$CONNINFO' --pg-schema tally --pg-node node$i \
          --admin-key-file '$DIR/admin.key' --exit-on-storage-failure true
        echo \"node$i exited (\$?) at \$(date +%T.%N)\"; sleep 0.5
      done" >>"$DIR/node$i.log" 2>&1 &
    echo $! >"$DIR/node$i.pid"
  done
  for i in $(seq 1 "$n"); do
    wait_for 60 "tally node $i" curl -sf "http://127.0.0.1:$((NODE_PORT0 + i - 1))/readyz"
  done
}

psql_cluster() {
  PGPASSWORD=tally-pg "$(pg_bin)/psql" "host=127.0.0.1,127.0.0.1 port=5433,5434 user=postgres dbname=postgres target_session_attrs=read-write" -Atq "$@"
}

status() {
  echo "== etcd"
  etcdctl --endpoints "$ETCD_CLIENTS" endpoint health 2>&1 || true
  echo "== PostgreSQL (Patroni)"
  [ -f "$DIR/pg1.yml" ] && patronictl -c "$DIR/pg1.yml" list 2>&1 || echo "not running"
  echo "== tally nodes"
  for pidfile in "$DIR"/node*.pid; do
    [ -f "$pidfile" ] || continue
    local i=${pidfile##*/node}; i=${i%.pid}
    local port=$((NODE_PORT0 + i - 1))
    printf 'node%s http://127.0.0.1:%s %s\n' "$i" "$port" \
      "$(curl -s -m 2 "http://127.0.0.1:$port/readyz" || echo down)"
  done
  echo "== shards per node (lease held and not lapsed)"
  psql_cluster -c "SELECT node, count(*), max(epoch) FROM tally.leases WHERE expires_at > now() GROUP BY node ORDER BY node" 2>&1 || true
}

down() {
  touch "$DIR/stopping" 2>/dev/null || true
  for pidfile in "$DIR"/node*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  pkill -f "tally-server --listen 127.0.0.1:80[0-9][0-9] --data-dir $DIR" 2>/dev/null || true
  for name in pg2 pg1; do
    [ -f "$DIR/$name.pid" ] && kill "$(cat "$DIR/$name.pid")" 2>/dev/null || true
    rm -f "$DIR/$name.pid"
  done
  # Patroni stops its postgres on SIGTERM; wait for both before etcd goes.
  for _ in $(seq 1 100); do pgrep -f "patroni $DIR" >/dev/null || break; sleep 0.2; done
  for i in 1 2 3; do
    [ -f "$DIR/etcd$i.pid" ] && kill "$(cat "$DIR/etcd$i.pid")" 2>/dev/null || true
    rm -f "$DIR/etcd$i.pid"
  done
  # An etcd still closing holds its data directory: an `up` right after would start members
  # that cannot open theirs and leave the survivor without a quorum.
  for _ in $(seq 1 100); do pgrep -f "etcd --name e[123] --data-dir $DIR" >/dev/null || break; sleep 0.2; done
  rm -f "$DIR/stopping"
}

case "${1:-}" in
  up)
    nodes=${2:-3}
    install_missing
    mkdir -p "$DIR"
    [ "$(id -u)" -eq 0 ] && chmod 755 "$DIR"
    rm -f "$DIR/stopping"
    start_etcd
    start_patroni
    start_nodes "$nodes"
    status
    ;;
  status) status ;;
  down) down ;;
  destroy) down; rm -rf "$DIR" ;;
  *)
    echo "usage: $0 up [NODES] | status | down | destroy" >&2
    exit 2
    ;;
esac
