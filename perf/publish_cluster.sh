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
#   fanout    `all` events at FANOUT_RATE/s to FANOUT_CONNS subscribers on the
#             pod: the pod reads each event back from Redis and delivers it
#             (CPU per delivered event)
#
# TRANSPORTS [plain]: `plain` (redis://) and/or `tls` (rediss:// to a
# redis-server serving TLS only, with a certificate made for the run and
# --redis-tls-ca): the same points over both, side by side.
#
#   perf/publish_cluster.sh                        # this tree
#   HERALD=/path/herald PREV=/path/prev perf/publish_cluster.sh   # side by side
#   PUBLISHERS="1 16" KINDS="all pending" DURATION=5s RUNS=3 perf/publish_cluster.sh
#   TRANSPORTS="plain tls" KINDS="all pending fanout" perf/publish_cluster.sh
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
TRANSPORTS=${TRANSPORTS:-plain}
FANOUT_CONNS=${FANOUT_CONNS:-1000}
FANOUT_RATE=${FANOUT_RATE:-200}
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
CERT_DIR=$OUT/tls
if [[ " $TRANSPORTS " == *" tls "* ]]; then
    # A CA of the run's own and Redis' certificate signed by it (rustls takes
    # no self-signed certificate as a server's).
    mkdir -p "$CERT_DIR"
    {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=herald-perf-ca -keyout "$CERT_DIR/ca.key" -out "$CERT_DIR/ca.pem" &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -subj /CN=127.0.0.1 -keyout "$CERT_DIR/key.pem" -out "$CERT_DIR/leaf.csr" &&
            printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
                >"$CERT_DIR/leaf.ext" &&
            openssl x509 -req -in "$CERT_DIR/leaf.csr" -CA "$CERT_DIR/ca.pem" -CAkey "$CERT_DIR/ca.key" \
                -CAcreateserial -days 2 -extfile "$CERT_DIR/leaf.ext" -out "$CERT_DIR/cert.pem"
    } >/dev/null 2>&1 || die "openssl could not make the test certificates"
fi
REDIS_CLI_TLS=()
calls() {
    redis-cli "${REDIS_CLI_TLS[@]}" -p "$1" info commandstats |
        awk -F'[=,:]' '/^cmdstat_/ {s += $3} END {print s}'
}

printf 'build\ttransport\tkind\tpublishers\trun\tevents_per_s\tpod_cpu_us_per_event\tredis_cmds_per_event\tredis_bytes_out_per_event\tpod_cpu_ns_per_delivery\n' >"$OUT/points.tsv"
for run in $(seq 1 "$RUNS"); do
    for kind in $KINDS; do
        for p in $PUBLISHERS; do
            for transport in $TRANSPORTS; do
            for b in $BUILDS; do
                name=${b%%=*} bin=${b#*=}
                REDIS_DIR=$(mktemp -d /tmp/herald-pubperf-redis.XXXXXX)
                rport=$(free_port)
                redis_args=(--port "$rport") url=redis://127.0.0.1:$rport tls_flags=()
                REDIS_CLI_TLS=()
                if [[ $transport == tls ]]; then
                    # TLS only: the pod and redis-cli both speak TLS to it.
                    redis_args=(--port 0 --tls-port "$rport" --tls-cert-file "$CERT_DIR/cert.pem"
                        --tls-key-file "$CERT_DIR/key.pem" --tls-ca-cert-file "$CERT_DIR/ca.pem"
                        --tls-auth-clients no)
                    url=rediss://127.0.0.1:$rport tls_flags=(--redis-tls-ca "$CERT_DIR/ca.pem")
                    REDIS_CLI_TLS=(--tls --cacert "$CERT_DIR/ca.pem")
                fi
                taskset -c 0 redis-server "${redis_args[@]}" --bind 127.0.0.1 --save '' --appendonly no \
                    --dir "$REDIS_DIR" >"$OUT/logs/redis.log" 2>&1 &
                REDIS_PID=$!
                for _ in $(seq 50); do
                    redis-cli "${REDIS_CLI_TLS[@]}" -p "$rport" ping >/dev/null 2>&1 && break
                    sleep 0.1
                done
                log=$OUT/logs/$name-$transport-$kind-$p-r$run.log
                start_herald "$bin" "$log" --redis "$url" "${tls_flags[@]}" ||
                    die "pod did not start: $(cat "$log")"
                extra=() conns=0 rate=0
                case $kind in
                    all) body='{"data":"{payload}","target":"all"}' ;;
                    pending) body='{"data":"{payload}","target":{"users":["offline"]}}' ;;
                    batch16) body='{"data":"{payload}","target":"all"}' extra=(--pub-batch 16) ;;
                    fanout) body='{"data":"{payload}","target":"all"}' conns=$FANOUT_CONNS rate=$FANOUT_RATE ;;
                    *) die "unknown kind $kind" ;;
                esac
                before=$(calls "$rport")
                bytes_before=$(redis-cli "${REDIS_CLI_TLS[@]}" -p "$rport" info stats |
                    awk -F: '/^total_net_output_bytes/ {print $2+0}')
                json=$OUT/$name-$transport-$kind-$p-r$run.json
                timeout 120 taskset -c 1 "$LOADTEST" fanout \
                    --sub-url "$SUB_URL" --pub-url "$PUB_URL" --pub-body "$body" "${extra[@]}" \
                    --connections "$conns" --rate "$rate" --pub-concurrency "$p" --duration "$DURATION" \
                    --server-pid "$SERVER_PID" --json "$json" \
                    >"$OUT/logs/$name-$transport-$kind-$p-r$run.out" 2>&1 ||
                    echo "publish_cluster.sh: load client failed ($name $transport $kind $p)" >&2
                after=$(calls "$rport")
                bytes_after=$(redis-cli "${REDIS_CLI_TLS[@]}" -p "$rport" info stats |
                    awk -F: '/^total_net_output_bytes/ {print $2+0}')
                python3 - "$json" "$before" "$after" "$bytes_before" "$bytes_after" "$name" "$transport" \
                    "$kind" "$p" "$run" >>"$OUT/points.tsv" <<'PY'
import json, sys
path, before, after, b0, b1, name, transport, kind, p, run = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception:
    print(f"{name}\t{transport}\t{kind}\t{p}\t{run}\t-\t-\t-\t-\t-")
    sys.exit(0)
events = r.get("events_published") or r.get("published") or 0
rate = r.get("publishes_per_sec") or 0
server = r.get("server") or {}
cpu = server.get("cpu_us_per_publish")
per_delivery = server.get("cpu_ns_per_delivery")
# Per event (a batch request counts its events); Redis' bytes are what it sent
# (replies and reads), whatever the transport adds under them.
cmds = (int(after) - int(before)) / events if events else 0
out = (int(b1) - int(b0)) / events if events else 0
r2 = lambda v: "-" if v is None else round(v, 2)
print(f"{name}\t{transport}\t{kind}\t{p}\t{run}\t{rate:.0f}\t{r2(cpu)}\t{cmds:.2f}\t{out:.0f}\t{r2(per_delivery)}")
PY
                tail -1 "$OUT/points.tsv"
                cleanup
            done
            done
        done
    done
done
echo "== $OUT/points.tsv"
