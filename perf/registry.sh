#!/usr/bin/env bash
# perf/registry.sh: what the cluster registry costs Redis per connection, for
# perf/SCALE.md. One herald pod (one shard, pinned) on a private redis-server;
# the bundled load client opens CONNS streams, holds them for HOLD seconds and
# closes them. Redis INFO (commands, bytes sent and received, CPU) is read at
# the phase edges:
#
#   connect     from before the first connect to when the pod's stats report
#               CONNS connections: per connect
#   hold        HOLD seconds of idle streams: per heartbeat interval (HB), and
#               per connection and interval (the registry heartbeats, the probe,
#               the cleanup job, the reader's idle XREAD)
#   disconnect  from the client's exit to 0 connections: per disconnect
#
#   perf/registry.sh                          # CONNS="1000 10000", HB=2, HOLD=20
#   CONNS=10000 PARTITIONS=8 perf/registry.sh # same with --partitions 8 (one Redis)
#   HERALD=/path/herald perf/registry.sh
#
# Loopback only; every process is stopped by the EXIT trap; the load client is
# bounded by `timeout` and its own watchdog. Output: $OUT/summary.md and one
# line per point in $OUT/points.tsv.
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"

CONNS=${CONNS:-1000 10000}
HB=${HB:-2}
HOLD=${HOLD:-20}
PARTITIONS=${PARTITIONS:-1}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$ROOT/perf/out/registry-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "registry.sh: $*" >&2; exit 1; }
note() { echo "registry.sh: $*" >&2; }
command -v redis-server >/dev/null || die "redis-server is missing (apt-get install -y redis-server)"
command -v taskset >/dev/null || die "taskset is missing (util-linux)"
mkdir -p "$OUT/logs"
herald_and_loadtest "$ROOT" "$TARGET" || die "no herald or loadtest build (see above)"

REDIS_PID= POD= CLIENT= REDIS_DIR=
cleanup() {
    [[ -z $CLIENT ]] || { kill -TERM "$CLIENT" 2>/dev/null || true; wait "$CLIENT" 2>/dev/null || true; }
    [[ -z $POD ]] || { kill -TERM "$POD" 2>/dev/null || true; wait "$POD" 2>/dev/null || true; }
    [[ -z $REDIS_PID ]] || { kill -KILL "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; }
    [[ -z $REDIS_DIR ]] || rm -rf "$REDIS_DIR"
    CLIENT= POD= REDIS_PID= REDIS_DIR=
}
trap cleanup EXIT


# snap: "commands bytes_out bytes_in cpu_seconds" of the private Redis.
snap() { redis_snap "$REDIS_PORT"; }

# connections ADDR: what the pod's stats report.
connections() {
    curl -s "http://$1/api/user/sse/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])'
}

# wait_conns ADDR N SECONDS
wait_conns() {
    local until=$((SECONDS + $3))
    while (( SECONDS < until )); do
        [[ $(connections "$1") == "$2" ]] && return 0
        sleep 0.1
    done
    return 1
}

printf 'conns\tpartitions\tphase\tcommands\tbytes_out\tbytes_in\tcpu_us\tper\n' >"$OUT/points.tsv"
for conns in $CONNS; do
    tag="c${conns}__p${PARTITIONS}"
    note "$tag"
    REDIS_DIR=$(mktemp -d /tmp/herald-perf-redis.XXXXXX)
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$REDIS_DIR" >"$OUT/logs/$tag.redis.log" 2>&1 &
    REDIS_PID=$!
    wait_for_port "$REDIS_PORT" "$REDIS_PID"
    taskset -c "$SERVER_CPU" "$HERALD" --listen 127.0.0.1:0 --shards 1 --grace-period 1s --log warn \
        --redis "redis://127.0.0.1:$REDIS_PORT" --pod-id reg-a --partitions "$PARTITIONS" \
        --heartbeat-interval "${HB}s" --cleanup-interval "${HB}s" \
        >"$OUT/logs/$tag.pod.out" 2>"$OUT/logs/$tag.pod" &
    POD=$!
    line=$(wait_for_line "$OUT/logs/$tag.pod.out" 'listening on http://' "$POD") || die "pod did not start"
    addr=$(sed -E 's|.*http://([^ ]+).*|\1|' <<<"$line")
    sleep 1
    read -r c0 o0 i0 u0 < <(snap)
    hold=$((HOLD + 30))
    timeout $((hold + 60)) taskset -c "$CLIENT_CPU" "$LOADTEST" idle \
        --sub-url "http://$addr/api/user/sse/connect?userId=u{i}" \
        --connections "$conns" --duration "${hold}s" --json "$OUT/$tag.json" \
        >"$OUT/logs/$tag.client" 2>&1 &
    CLIENT=$!
    wait_conns "$addr" "$conns" 60 || die "$conns connections never opened"
    read -r c1 o1 i1 u1 < <(snap)
    sleep "$HOLD"
    read -r c2 o2 i2 u2 < <(snap)
    kill -INT "$CLIENT" 2>/dev/null || true
    wait "$CLIENT" 2>/dev/null || true
    CLIENT=
    wait_conns "$addr" 0 30 || note "connections did not all close"
    sleep 1
    read -r c3 o3 i3 u3 < <(snap)
    intervals=$(python3 -c "print($HOLD / $HB)")
    python3 - "$conns" "$PARTITIONS" "$intervals" >>"$OUT/points.tsv" <<EOF
import sys
conns, parts, iv = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
rows = [
    ("connect", $c1 - $c0, $o1 - $o0, $i1 - $i0, ($u1 - $u0) * 1e6, conns, "connect"),
    ("hold", $c2 - $c1, $o2 - $o1, $i2 - $i1, ($u2 - $u1) * 1e6, iv, "interval"),
    ("disconnect", $c3 - $c2, $o3 - $o2, $i3 - $i2, ($u3 - $u2) * 1e6, conns, "disconnect"),
]
for phase, c, o, i, u, n, per in rows:
    print(f"{conns}\t{parts}\t{phase}\t{c / n:.3f}\t{o / n:.1f}\t{i / n:.1f}\t{u / n:.2f}\t{per}")
EOF
    cleanup
done

python3 - "$OUT" "$HB" <<'EOF' | tee "$OUT/summary.md"
import csv, sys
out, hb = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(f"{out}/points.tsv"), delimiter="\t"))
print(f"Redis cost of the cluster registry, per connect, per heartbeat interval ({hb} s, idle streams) and per disconnect (one pod, one shard).\n")
print("| connections | partitions | phase | per | commands | bytes sent | bytes received | Redis CPU µs |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {int(r['conns']):,} | {r['partitions']} | {r['phase']} | {r['per']} | {float(r['commands']):,.3f} "
          f"| {float(r['bytes_out']):,.1f} | {float(r['bytes_in']):,.1f} | {float(r['cpu_us']):,.2f} |")
EOF
note "results in $OUT"
