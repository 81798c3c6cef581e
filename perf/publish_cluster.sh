#!/usr/bin/env bash
# perf/publish_cluster.sh: publishes per second one cluster pod takes, and what
# each costs the pod and Redis. One herald pod (one shard, pinned to CPU 0) on a
# private redis-server (CPU 0 too: this is a 2-core figure), no subscribers; the
# bundled load client (CPU 1) publishes as fast as the pod answers from
# PUBLISHERS keep-alive connections for DURATION. Kinds of publish:
#
#   all       {"target":"all"}: log + broadcast stream
#   pending   {"target":{"users":["offline"]}}: a user with no connection, kept
#             as pending (RPUSH, LTRIM at --max-pending, PEXPIRE)
#   batch16   16 `all` events per request (--pub-batch 16)
#
#   perf/publish_cluster.sh                        # this tree
#   HERALD=/path/herald PREV=/path/prev perf/publish_cluster.sh   # side by side
#   PUBLISHERS="1 16" KINDS="all pending" DURATION=5s RUNS=3 perf/publish_cluster.sh
#
# Loopback only; every process is stopped by the EXIT trap; the load client is
# bounded by `timeout` and its own watchdog. Output: one line per run on stdout
# and in $OUT/points.tsv.
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"
PUBLISHERS=${PUBLISHERS:-16}
KINDS=${KINDS:-all pending batch16}
DURATION=${DURATION:-5s}
RUNS=${RUNS:-3}
OUT=${OUT:-$ROOT/perf/out/publish-cluster-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "publish_cluster.sh: $*" >&2; exit 1; }
command -v redis-server >/dev/null || die "redis-server is missing (apt-get install -y redis-server)"
command -v redis-cli >/dev/null || die "redis-cli is missing"
mkdir -p "$OUT/logs"
if [[ -z ${HERALD:-} ]]; then
    (cd "$ROOT" && cargo build --release -q -p herald -p loadtest) || die "build failed"
    HERALD=$TARGET/release/herald
fi
LOADTEST=${LOADTEST:-$TARGET/release/loadtest}
[[ -x $LOADTEST ]] || die "no loadtest at $LOADTEST"
BUILDS="herald=$HERALD"
[[ -z ${PREV:-} ]] || BUILDS="$BUILDS prev=$PREV"

REDIS_PID= REDIS_DIR=
cleanup() {
    stop_server
    [[ -z $REDIS_PID ]] || { kill -KILL "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; }
    [[ -z $REDIS_DIR ]] || rm -rf "$REDIS_DIR"
    REDIS_PID= REDIS_DIR=
}
trap cleanup EXIT
calls() { redis-cli -p "$1" info commandstats | awk -F'[=,:]' '/^cmdstat_/ {s += $3} END {print s}'; }

printf 'build\tkind\tpublishers\trun\tevents_per_s\tpod_cpu_us_per_event\tredis_cmds_per_event\n' >"$OUT/points.tsv"
for run in $(seq 1 "$RUNS"); do
    for kind in $KINDS; do
        for p in $PUBLISHERS; do
            for b in $BUILDS; do
                name=${b%%=*} bin=${b#*=}
                REDIS_DIR=$(mktemp -d /tmp/herald-pubperf-redis.XXXXXX)
                rport=$(free_port)
                taskset -c 0 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
                    --dir "$REDIS_DIR" >"$OUT/logs/redis.log" 2>&1 &
                REDIS_PID=$!
                for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
                log=$OUT/logs/$name-$kind-$p-r$run.log
                start_herald "$bin" "$log" --redis "redis://127.0.0.1:$rport" ||
                    die "pod did not start: $(cat "$log")"
                extra=()
                case $kind in
                    all) body='{"data":"{payload}","target":"all"}' ;;
                    pending) body='{"data":"{payload}","target":{"users":["offline"]}}' ;;
                    batch16) body='{"data":"{payload}","target":"all"}' extra=(--pub-batch 16) ;;
                    *) die "unknown kind $kind" ;;
                esac
                before=$(calls "$rport")
                json=$OUT/$name-$kind-$p-r$run.json
                timeout 120 taskset -c 1 "$LOADTEST" fanout \
                    --sub-url "$SUB_URL" --pub-url "$PUB_URL" --pub-body "$body" "${extra[@]}" \
                    --connections 0 --rate 0 --pub-concurrency "$p" --duration "$DURATION" \
                    --server-pid "$SERVER_PID" --json "$json" >"$OUT/logs/$name-$kind-$p-r$run.out" 2>&1 ||
                    echo "publish_cluster.sh: load client failed ($name $kind $p)" >&2
                after=$(calls "$rport")
                python3 - "$json" "$before" "$after" "$name" "$kind" "$p" "$run" >>"$OUT/points.tsv" <<'PY'
import json, sys
path, before, after, name, kind, p, run = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception:
    print(f"{name}\t{kind}\t{p}\t{run}\t-\t-\t-")
    sys.exit(0)
events = r.get("events_published") or r.get("published") or 0
rate = r.get("publishes_per_sec") or 0
cpu = (r.get("server") or {}).get("cpu_us_per_publish")
# Both per event (a batch request counts its events).
cmds = (int(after) - int(before)) / events if events else 0
print(f"{name}\t{kind}\t{p}\t{run}\t{rate:.0f}\t{cpu if cpu is None else round(cpu, 2)}\t{cmds:.2f}")
PY
                tail -1 "$OUT/points.tsv"
                cleanup
            done
        done
    done
done
echo "== $OUT/points.tsv"
