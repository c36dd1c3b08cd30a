#!/usr/bin/env bash
# A failover under load on the cluster of scripts/cluster.sh (started with `up 1`: until
# requests are forwarded, the HTTP bench drives one node):
#
#   scripts/failover.sh primary [SECONDS]   kill -9 the PostgreSQL primary (Patroni and its
#                                           postgres) mid-load; Patroni promotes the standby
#   scripts/failover.sh node [SECONDS]      kill -9 the tally node mid-load; its restart loop
#                                           starts it again
#   scripts/failover.sh freeze [SECONDS]    SIGSTOP the tally node past its lease, then SIGCONT
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
[ -f "$DIR/admin.key" ] || { echo "no cluster in $DIR: run scripts/cluster.sh up 1" >&2; exit 2; }
[ -x target/release/tally-bench ] || cargo build --release -q -p tally-bench
out=$DIR/failover-$what-$(date +%s)
mkdir -p "$out"

# A prober: one read a 100 ms, logging when the node stops and starts answering.
probe() {
  local up=1
  while [ ! -f "$out/done" ]; do
    if curl -sf -m 1 "$url/readyz" >/dev/null 2>&1; then
      [ $up -eq 0 ] && echo "up $(date +%s.%N)" >>"$out/probe"
      up=1
    else
      [ $up -eq 1 ] && echo "down $(date +%s.%N)" >>"$out/probe"
      up=0
    fi
    sleep 0.1
  done
}
probe &

target/release/tally-bench --http "$url" --admin-key "$(cat "$DIR/admin.key")" \
  --accounts 1000 --clients 16 --duration "$seconds" --quiet --json "$out/bench.json" \
  --account-prefix "fo$(date +%s)-" \
  >"$out/bench.txt" 2>&1 &
bench=$!
# Setup (1,000 accounts) takes a few seconds; strike a third into the load.
sleep $((seconds / 3 + 5))
case "$what" in
  primary)
    leader=$(patronictl -c "$DIR/pg1.yml" list -f json |
      /usr/bin/python3 -c "import json,sys; print([m['Member'] for m in json.load(sys.stdin) if m['Role']=='Leader'][0])")
    pg=$(head -1 "$DIR/$leader/data/postmaster.pid")
    echo "killing the primary $leader (patroni $(cat "$DIR/$leader.pid"), postgres $pg) at $(date +%s.%N)" | tee "$out/action"
    kill -9 "$(cat "$DIR/$leader.pid")" "$pg"
    ;;
  node)
    pid=$(pgrep -f "^[^ ]*/tally-server .*--pg-node node1" | head -1)
    echo "killing tally node1 ($pid) at $(date +%s.%N)" | tee "$out/action"
    kill -9 "$pid"
    ;;
  freeze)
    pid=$(pgrep -f "^[^ ]*/tally-server .*--pg-node node1" | head -1)
    echo "freezing tally node1 ($pid) for 8 s at $(date +%s.%N)" | tee "$out/action"
    kill -STOP "$pid"; sleep 8; kill -CONT "$pid"
    ;;
  *) echo "usage: $0 primary|node|freeze [SECONDS]" >&2; exit 2 ;;
esac
rc=0
wait "$bench" || rc=$?
touch "$out/done"
wait
echo "== bench (exit $rc)"; tail -25 "$out/bench.txt"
echo "== the node answered nothing"
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
