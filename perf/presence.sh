#!/usr/bin/env bash
# perf/presence.sh: what presence queries cost, for perf/SCALE.md. One herald pod
# (one shard, pinned) on a private redis-server; the bundled load client holds
# CONNS streams of users u0..u(CONNS-1); then, QUERIES times each:
#
#   users      POST /api/presence for 1,000 users (u0..u999: all online)
#   mixed      POST /api/presence for 1,000 users, half of them offline
#              (never connected)
#   topics     POST /api/presence for 1,000 topics
#   conns      GET /api/user/sse/connections?userId=u1
#
# and reports the answer time (p50, p99, over QUERIES, measured by a keep-alive
# client) and the Redis commands and CPU per query (INFO commandstats and
# used_cpu, before and after).
#
#   perf/presence.sh                      # CONNS=10000 QUERIES=200 PARTITIONS=1
#   PARTITIONS=8 perf/presence.sh         # one script per partition asked
#   HERALD=/path/herald perf/presence.sh
#
# Loopback only; every process is stopped by the EXIT trap; the load client is
# bounded by `timeout`. Output: $OUT/summary.md.
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"

CONNS=${CONNS:-10000}
QUERIES=${QUERIES:-200}
PARTITIONS=${PARTITIONS:-1}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$ROOT/perf/out/presence-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "presence.sh: $*" >&2; exit 1; }
note() { echo "presence.sh: $*" >&2; }
command -v redis-server >/dev/null || die "redis-server is missing (apt-get install -y redis-server)"
command -v taskset >/dev/null || die "taskset is missing (util-linux)"
mkdir -p "$OUT/logs"
herald_and_loadtest "$ROOT" "$TARGET" || die "no herald or loadtest build (see above)"
((CONNS >= 1000)) || die "CONNS must be at least 1000 (the queries name u0..u999)"

REDIS_PID= POD= CLIENT= REDIS_DIR=
cleanup() {
    [[ -z $CLIENT ]] || { kill -TERM "$CLIENT" 2>/dev/null || true; wait "$CLIENT" 2>/dev/null || true; }
    [[ -z $POD ]] || { kill -TERM "$POD" 2>/dev/null || true; wait "$POD" 2>/dev/null || true; }
    [[ -z $REDIS_PID ]] || { kill -KILL "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; }
    [[ -z $REDIS_DIR ]] || rm -rf "$REDIS_DIR"
    CLIENT= POD= REDIS_PID= REDIS_DIR=
}
trap cleanup EXIT

# snap: "commands cpu_seconds" of the private Redis (INFO itself left out).
snap() { redis_snap "$REDIS_PORT" | awk '{ print $1, $4 }'; }

REDIS_DIR=$(mktemp -d /tmp/herald-perf-redis.XXXXXX)
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$REDIS_DIR" >"$OUT/logs/redis.log" 2>&1 &
REDIS_PID=$!
wait_for_port "$REDIS_PORT" "$REDIS_PID"
taskset -c "$SERVER_CPU" "$HERALD" --listen 127.0.0.1:0 --shards 1 --grace-period 1s --log warn \
    --redis "redis://127.0.0.1:$REDIS_PORT" --pod-id pres-a --partitions "$PARTITIONS" \
    >"$OUT/logs/pod.out" 2>"$OUT/logs/pod" &
POD=$!
line=$(wait_for_line "$OUT/logs/pod.out" 'listening on http://' "$POD") || die "pod did not start"
addr=$(sed -E 's|.*http://([^ ]+).*|\1|' <<<"$line")
timeout 600 taskset -c "$CLIENT_CPU" "$LOADTEST" idle \
    --sub-url "http://$addr/api/user/sse/connect?userId=u{i}&topics=t{i}" \
    --connections "$CONNS" --duration 300s --json "$OUT/client.json" \
    >"$OUT/logs/client" 2>&1 &
CLIENT=$!
until=$((SECONDS + 120))
until [[ $(curl -s "http://$addr/api/user/sse/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])') == "$CONNS" ]]; do
    ((SECONDS < until)) || die "$CONNS connections never opened"
    sleep 0.2
done
sleep 2 # the topic counts are written within half a second

# One query kind: QUERIES requests on one keep-alive connection, timed by the
# client; Redis commands and CPU before and after.
measure() {
    local kind=$1 method=$2 path=$3 body=$4 c0 u0 c1 u1 times
    read -r c0 u0 < <(snap)
    times=$(taskset -c "$CLIENT_CPU" python3 - "$addr" "$method" "$path" "$body" "$QUERIES" <<'EOF'
import http.client, sys, time
addr, method, path, body, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
host, port = addr.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=10)
out = []
for _ in range(n):
    t = time.perf_counter()
    c.request(method, path, body=body or None, headers={"content-type": "application/json"})
    r = c.getresponse()
    r.read()
    out.append(time.perf_counter() - t)
    assert r.status == 200, r.status
out.sort()
print(f"{out[len(out) // 2] * 1e3:.2f} {out[min(len(out) - 1, int(len(out) * 0.99))] * 1e3:.2f}")
EOF
)
    read -r c1 u1 < <(snap)
    python3 - "$kind" "$QUERIES" "$c0" "$c1" "$u0" "$u1" "$times" >>"$OUT/points.tsv" <<'EOF'
import sys
kind, n, c0, c1, u0, u1, times = sys.argv[1:8]
n = int(n)
p50, p99 = times.split()
print(f"{kind}\t{p50}\t{p99}\t{(int(c1) - int(c0)) / n:.1f}\t{(float(u1) - float(u0)) * 1e6 / n:.0f}")
EOF
}

users=$(python3 -c 'import json; print(json.dumps({"users": [f"u{i}" for i in range(1000)]}))')
mixed=$(python3 -c "import json; print(json.dumps({'users': [f'u{i}' for i in range($CONNS - 500, $CONNS + 500)]}))")
topics=$(python3 -c 'import json; print(json.dumps({"topics": [f"t{i}" for i in range(1000)]}))')
printf 'kind\tp50_ms\tp99_ms\tcommands\tredis_cpu_us\n' >"$OUT/points.tsv"
measure users POST /api/presence "$users"
measure mixed POST /api/presence "$mixed"
measure topics POST /api/presence "$topics"
measure conns GET "/api/user/sse/connections?userId=u1" ""

python3 - "$OUT" "$CONNS" "$PARTITIONS" "$QUERIES" <<'EOF' | tee "$OUT/summary.md"
import csv, sys
out, conns, parts, n = sys.argv[1:5]
rows = list(csv.DictReader(open(f"{out}/points.tsv"), delimiter="\t"))
print(f"Presence queries with {int(conns):,} streams held, --partitions {parts}, one pod, {n} queries each.\n")
print("| query | p50 ms | p99 ms | Redis commands per query | Redis CPU µs per query |")
print("|---|---:|---:|---:|---:|")
names = {"users": "1,000 users, all online", "mixed": "1,000 users, half online",
         "topics": "1,000 topics", "conns": "one user's connections"}
for r in rows:
    print(f"| {names[r['kind']]} | {r['p50_ms']} | {r['p99_ms']} | {r['commands']} | {r['redis_cpu_us']} |")
EOF
note "results in $OUT"
