#!/usr/bin/env bash
# perf/cluster.sh: herald as a two-pod cluster on its own Redis, measured by the
# bundled load test: subscribers on pod A, publishes to pod B (every event crosses
# Redis), cross-pod latency and loss, and Redis commands per heartbeat interval
# (idle and while publishing) at several connection counts. The same load on one
# embedded pod (no Redis) is the reference for the latency Redis adds.
#
#   perf/cluster.sh                       # CONNS="1000 10000", 3 runs each
#   CONNS="1000" RUNS=1 perf/cluster.sh    # quick
#
# Environment (defaults in brackets): CONNS [1000 10000] RATE [20] events/s,
# DURATION [10s], HB [2s] heartbeat interval (stale-after 3x, cleanup = HB),
# IDLE [3 x HB] idle window for the Redis count, RUNS [3], SERVER_CPU [0],
# CLIENT_CPU [1], OUT [perf/out/cluster-<date>].
# Results: $OUT/<conns>__<cluster|embedded>__r<k>.json and summary.md
# (SUMMARY_ONLY=1 OUT=<dir> perf/cluster.sh rebuilds the summary of a past run).
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"

CONNS=${CONNS:-1000 10000}
RATE=${RATE:-20}
DURATION=${DURATION:-10s}
HB=${HB:-2}
IDLE=${IDLE:-$((3 * HB))}
RUNS=${RUNS:-3}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$ROOT/perf/out/cluster-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "cluster.sh: $*" >&2; exit 1; }
note() { echo "cluster.sh: $*" >&2; }
command -v redis-server >/dev/null || die "redis-server is missing (apt-get install -y redis-server)"
command -v taskset >/dev/null || die "taskset is missing (util-linux)"

mkdir -p "$OUT/logs"
if [[ ${SUMMARY_ONLY:-0} == 1 ]]; then CONNS= ; fi
note "building herald and loadtest (release)"
(cd "$ROOT" && cargo build --release -q -p herald -p loadtest) || die "build failed"
HERALD=$TARGET/release/herald
LOADTEST=$TARGET/release/loadtest

REDIS_PID= POD_A= POD_B= REDIS_DIR=
cleanup() {
    local p
    for p in $POD_A $POD_B; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $POD_A $POD_B; do wait "$p" 2>/dev/null || true; done
    [[ -z $REDIS_PID ]] || { kill -KILL "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; }
    [[ -z $REDIS_DIR ]] || rm -rf "$REDIS_DIR"
    stop_all
    POD_A= POD_B= REDIS_PID= REDIS_DIR=
}
trap cleanup EXIT

# A private Redis, so that its command count is herald's alone.
start_redis() {
    REDIS_DIR=$(mktemp -d /tmp/herald-perf-redis.XXXXXX)
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$REDIS_DIR" >"$OUT/logs/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_for_port "$REDIS_PORT" "$REDIS_PID"
}

# start_pod NAME LOG: one pod of the cluster; prints its address.
start_pod() {
    local name=$1 log=$2 pid line
    taskset -c "$SERVER_CPU" "$HERALD" --listen 127.0.0.1:0 --shards 1 --grace-period 1s --log warn \
        --redis "redis://127.0.0.1:$REDIS_PORT" --pod-id "$name" \
        --heartbeat-interval "${HB}s" --cleanup-interval "${HB}s" >"$log.out" 2>"$log" &
    pid=$!
    line=$(wait_for_line "$log.out" 'listening on http://' "$pid") || return 1
    echo "$pid $(sed -E 's|.*http://([^ ]+).*|\1|' <<<"$line")"
}

run_client() {
    local json=$1 log=$2
    shift 2
    taskset -c "$CLIENT_CPU" "$LOADTEST" "$@" --json "$json" >"$log" 2>&1 &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || note "load client exited non-zero (see $log)"
    CLIENT_PID=
}

for conns in $CONNS; do
    for ((r = 1; r <= RUNS; r++)); do
        tag="${conns}__cluster__r$r"
        note "$tag"
        start_redis
        read -r POD_A ADDR_A < <(start_pod a "$OUT/logs/$tag.a")
        read -r POD_B ADDR_B < <(start_pod b "$OUT/logs/$tag.b")
        run_client "$OUT/$tag.json" "$OUT/logs/$tag.client" cluster \
            --sub-url "http://$ADDR_A/api/user/sse/connect?userId=u{i}" \
            --pub-url "http://$ADDR_B/api/broadcast" --pub-body '{"data":"{payload}","target":"all"}' \
            --connections "$conns" --rate "$RATE" --duration "$DURATION" --server-pid "$POD_A" \
            --redis-url "redis://127.0.0.1:$REDIS_PORT" --heartbeat-interval "${HB}s" --redis-idle "${IDLE}s"
        cleanup

        tag="${conns}__embedded__r$r"
        note "$tag"
        start_herald "$HERALD" "$OUT/logs/$tag.server"
        run_client "$OUT/$tag.json" "$OUT/logs/$tag.client" fanout \
            --sub-url "$SUB_URL" --pub-url "$PUB_URL" --pub-body "$PUB_BODY" \
            --connections "$conns" --rate "$RATE" --duration "$DURATION" --server-pid "$SERVER_PID"
        stop_server
    done
done

python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    conns, kind, _ = os.path.basename(f)[:-5].split("__")
    with open(f) as fh:
        j = json.load(fh)
    j = j[0] if isinstance(j, list) else j
    rows.setdefault((int(conns), kind), []).append(j)
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def fmt(x, unit=""):
    return "–" if x is None else f"{x:,.1f}{unit}" if isinstance(x, float) and x < 100 else f"{x:,.0f}{unit}"
print("| conns | setup | runs | delivered | lost | p50 µs | p99 µs | p99.9 µs | pod A ns/delivery | pod A RSS B/conn | Redis cmds/interval idle | while publishing |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for (conns, kind), js in sorted(rows.items()):
    lat = [j.get("latency_us") or {} for j in js]
    redis = [j.get("redis") or {} for j in js]
    print(f"| {conns:,} | {kind} | {len(js)} | {fmt(med([j.get('delivered') for j in js]))} "
          f"| {fmt(med([j.get('lost') for j in js]))} | {fmt(med([l.get('p50') for l in lat]))} "
          f"| {fmt(med([l.get('p99') for l in lat]))} | {fmt(med([l.get('p999') for l in lat]))} "
          f"| {fmt(med([(j.get('server') or {}).get('cpu_ns_per_delivery') for j in js]))} "
          f"| {fmt(med([(j.get('server') or {}).get('rss_per_connection') for j in js]))} "
          f"| {fmt(med([r.get('idle_commands_per_heartbeat_interval') for r in redis]))} "
          f"| {fmt(med([r.get('commands_per_heartbeat_interval') for r in redis]))} |")
EOF
note "results in $OUT"
