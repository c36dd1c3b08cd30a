#!/usr/bin/env bash
# A failover under load on the cluster of scripts/cluster.sh (started with `up 1`: until
# requests are forwarded, the HTTP bench drives one node):
#
#   scripts/failover.sh primary [SECONDS]   kill -9 the PostgreSQL primary (Patroni and its
#                                           postgres) mid-load; Patroni promotes the standby
#   scripts/failover.sh node [SECONDS]      kill -9 the tally node mid-load; its restart loop
#                                           starts it again
#   scripts/failover.sh freeze [SECONDS]    SIGSTOP the tally node past its lease, then SIGCONT
#   scripts/failover.sh peer [SECONDS]      (on `up 3`) the bench drives all three nodes; kill -9
#                                           node2; the others take its shards over; the prober
#                                           reads 20 accounts through node1 (forwarded to their
#                                           owners) and logs when any read is refused
#
# Each run has accounts of its own (a hold an earlier run left pending would expire during this
# one, which its books cannot foresee). The HTTP bench keeps its own books of every acknowledged
# write and, after the load, requires
# every account's balance to equal what it read before plus those books (accounts a write of
# unknown outcome touched are left out and counted), and the audit to pass: an acknowledged
# write lost in the failover fails it. Prints the bench's verdict and how long the node
# answered nothing (the first failed call to the first answered one after it).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${TALLY_CLUSTER_DIR:-/tmp/tally-cluster}
what=${1:-primary}
seconds=${2:-30}
url=http://127.0.0.1:8081
urls=$url
victim=node1
if [ "$what" = peer ]; then
  urls=http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083
  victim=node2
fi
[ -f "$DIR/admin.key" ] || { echo "no cluster in $DIR: run scripts/cluster.sh up 1" >&2; exit 2; }
[ -x target/release/tally-bench ] || cargo build --release -q -p tally-bench
out=$DIR/failover-$what-$(date +%s)
mkdir -p "$out"

# A prober: one read a 100 ms, logging when the node stops and starts answering.
probe_once() {
  if [ "$what" != peer ]; then curl -sf -m 1 "$url/readyz"; return; fi
  local k
  for k in $(seq 0 19); do
    curl -sf -m 1 -H "Authorization: Bearer $(cat "$DIR/admin.key")" \
      "$url/v1/accounts/${prefix}user-$k/balance" || return 1
  done
}
probe() {
  local up=1
  while [ ! -f "$out/done" ]; do
    if probe_once >/dev/null 2>&1; then
      [ $up -eq 0 ] && echo "up $(date +%s.%N)" >>"$out/probe"
      up=1
    else
      [ $up -eq 1 ] && echo "down $(date +%s.%N)" >>"$out/probe"
      up=0
    fi
    sleep 0.1
  done
}
prefix="fo$(date +%s)-"
target/release/tally-bench --http "$urls" --admin-key "$(cat "$DIR/admin.key")" \
  --accounts 1000 --clients 16 --duration "$seconds" --quiet --json "$out/bench.json" \
  --account-prefix "$prefix" --settle-ms 2000 \
  >"$out/bench.txt" 2>&1 &
bench=$!
# Setup (1,000 accounts) takes a few seconds: probe once it is done; strike a third into the load.
sleep 5
probe &
sleep $((seconds / 3))
case "$what" in
  primary)
    leader=$(patronictl -c "$DIR/pg1.yml" list -f json |
      /usr/bin/python3 -c "import json,sys; print([m['Member'] for m in json.load(sys.stdin) if m['Role']=='Leader'][0])")
    pg=$(head -1 "$DIR/$leader/data/postmaster.pid")
    echo "killing the primary $leader (patroni $(cat "$DIR/$leader.pid"), postgres $pg) at $(date +%s.%N)" | tee "$out/action"
    kill -9 "$(cat "$DIR/$leader.pid")" "$pg"
    ;;
  node|peer)
    pid=$(pgrep -f "^[^ ]*/tally-server .*--pg-node $victim" | head -1)
    echo "killing tally $victim ($pid) at $(date +%s.%N)" | tee "$out/action"
    kill -9 "$pid"
    ;;
  freeze)
    pid=$(pgrep -f "^[^ ]*/tally-server .*--pg-node node1" | head -1)
    echo "freezing tally node1 ($pid) for 8 s at $(date +%s.%N)" | tee "$out/action"
    kill -STOP "$pid"; sleep 8; kill -CONT "$pid"
    ;;
  *) echo "usage: $0 primary|node|freeze|peer [SECONDS]" >&2; exit 2 ;;
esac
rc=0
wait "$bench" || rc=$?
touch "$out/done"
wait
echo "== bench (exit $rc)"; tail -25 "$out/bench.txt"
echo "== the node answered nothing (peer: a read through node1 was refused)"
/usr/bin/python3 - "$out/probe" <<'EOF' || true
import sys
try:
    lines = [l.split() for l in open(sys.argv[1])]
except FileNotFoundError:
    lines = []
down = None
for kind, at in lines:
    if kind == "down":
        down = float(at)
    elif kind == "up" and down is not None:
        print(f"  from {down:.3f} for {float(at) - down:.2f} s")
        down = None
if not lines:
    print("  never (every probe answered)")
EOF
echo "== PostgreSQL now"; patronictl -c "$DIR/pg1.yml" list 2>&1 | tail -4
echo "(files in $out)"
exit $rc
