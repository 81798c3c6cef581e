#!/usr/bin/env bash
# perf/rehearsal.sh: the scale rehearsal of issue 25 — STREAMS browser-like streams
# over PODS herald pods (`--partitions 8`) on a 3-master Redis Cluster with a replica
# each, a steady phase with user events, topic events and broadcasts, then faults one
# after another, each followed by a recovery window, with per-phase reports.
#
# Phases (marks in $OUT/phases.tsv, wall-clock ms):
#   ramp         the clients open every stream (first connects to pod i % PODS,
#                CONNECT_CONCURRENCY in flight per client process)
#   idle         IDLE seconds: nothing published (heartbeats and upkeep alone)
#   steady       STEADY seconds (default 10 heartbeat intervals) of publishing only
#   kill_pod     SIGKILL pod PODS: its streams reconnect (after their retry: hint) to
#                the other pods; RECOVER seconds; the pod is then started again on the
#                same port (8 -> 7 -> 8) and the window goes on until RECOVER is over
#   kill_master  SIGKILL the Redis master that holds slot 0: its replica takes over
#                (cluster-node-timeout NODE_TIMEOUT ms); RECOVER seconds
#   drain_pod    SIGTERM pod 1 (drain: final retry: hints, streams closed over half
#                the grace period), a new pod started on its port once it exited;
#                RECOVER seconds
#   slow_redis   SLOW_BURSTS times `DEBUG SLEEP SLOW_S` on every master at once,
#                SLOW_GAP seconds apart; then RECOVER seconds
#   (FAULTS picks and orders them.)
#
# Publishing (loadtest rehearse-pub) starts once every stream is open and runs through
# steady and every fault window: USER_RATE user events/s (round-robin over the users),
# TOPIC_RATE topic events/s (round-robin over TOPICS topics of Zipf sizes) and
# BCAST_RATE broadcasts/s, each with an Idempotency-Key and retried on another pod
# until taken. The clients (loadtest rehearse, one process per PER_CLIENT streams,
# users 1-3 streams each) reconnect like EventSource (retry: hint, Last-Event-ID;
# backoff on 503/429) and count every user/topic/broadcast event exactly: loss and
# duplicates across reconnects, latency publish -> receive.
#
# Per phase (summary.md, phases.json): streams open per pod at the end, connects/s and
# the peak opened/s, refusals (503/429), TCP connect errors (a dead pod) and timeouts,
# seconds until every stream was open again, user/topic/broadcast duplicates, the lost
# ones that could be listed (attributed by their publish sequence), latency p50/p99
# (from 1/8-octave buckets: within 9%), Redis commands/s and CPU per node (INFO
# commandstats, cpu; role at the end), each pod's CPU and RSS per stream, the
# registry (stats: cluster connections, users) and presence (streams per topic,
# summed) against what the clients hold, and after a fault the seconds until they
# match (polled once a second for CONVERGE seconds). Totals: expected, received,
# lost, duplicated per kind, exact. Steady Redis commands/s against perf/SCALE.md's
# model; memory per stream (herald RSS growth over the pods; kernel TCP buffer pages
# and slab from /proc, system-wide: both ends of every loopback stream).
#
#   perf/rehearsal.sh                                  # STREAMS=4000, small windows
#   STREAMS=100000 PER_CLIENT=15000 HB=15 perf/rehearsal.sh   # issue 25's size (see README)
#   FAULTS="kill_pod" STEADY=20 perf/rehearsal.sh
#
# Environment (defaults in brackets):
#   STREAMS [4000]  PODS [8]  PARTITIONS [8]  TOPICS [100]  SEED [1]
#   PER_CLIENT [15000] streams per client process (each may open at most 20,000 files)
#   CLIENT_THREADS [1]  CONNECT_CONCURRENCY [500] per client
#   HB [2] heartbeat interval, s (herald's --heartbeat-interval)
#   STALE [max(1.5 x HB, HB + 2 x NODE_TIMEOUT + 1 s)] s (--stale-after: above a heartbeat
#     plus a failover, so that a failover does not make live pods look dead)
#   CLEANUP [HB / 3] s (--cleanup-interval): a dead pod is cleaned within STALE + CLEANUP
#   RETRY [2s] RETRY_JITTER [3s] (herald's --retry, --retry-jitter)  GRACE [10s]
#   LINGER [5s] (--presence-linger: a user back within it makes no offline/online pair)
#   HISTORY [10000] (--history-events: a smaller one is full before the faults, so
#     that memory after them shows churn, not the history filling)
#   USER_RATE [100]  TOPIC_RATE [10]  BCAST_RATE [1]  PAYLOAD [64] bytes
#   IDLE [2 x HB] s with every stream open and nothing published (0: none)
#   STEADY [10 x HB] s  RECOVER [25] s per fault window  CONVERGE [RECOVER - 2] s
#   FAULTS [kill_pod kill_master drain_pod slow_redis]
#   NODE_TIMEOUT [3000] ms (Redis cluster-node-timeout)
#   SLOW_BURSTS [5]  SLOW_S [0.5]  SLOW_GAP [1] s
#   EMBEDDED [1]: first measure one embedded herald with STREAMS/PODS streams (0: skip)
#   RAMP_TIMEOUT [120] s  HERALD [build this tree]  LOADTEST [next to HERALD]
#   OUT [perf/out/rehearsal-<date>]
# Results in $OUT: summary.md, phases.json, phases.tsv, config.json, notes.txt,
# sub-<k>.jsonl / sub-<k>.json (clients' snapshots, final reports), pub.jsonl,
# pub-final.json, raw/<phase>-{start,end,converge}.json, logs/.
#
# Safety: everything binds 127.0.0.1 (pods, Redis nodes and their cluster bus),
# the clients only target loopback (loadtest refuses anything else), every wait is
# bounded, every process started here is stopped by the EXIT trap (Ctrl-C included)
# and the Redis nodes' temp dirs are removed. Each client process raises its
# open-file limit to the hard limit; the script raises its own (the pods inherit it).
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"

STREAMS=${STREAMS:-4000}
PODS=${PODS:-8}
PARTITIONS=${PARTITIONS:-8}
TOPICS=${TOPICS:-100}
SEED=${SEED:-1}
PER_CLIENT=${PER_CLIENT:-15000}
CLIENT_THREADS=${CLIENT_THREADS:-1}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-500}
HB=${HB:-2}
NODE_TIMEOUT=${NODE_TIMEOUT:-3000}
STALE=${STALE:-$((HB + HB / 2 > HB + 2 * NODE_TIMEOUT / 1000 + 1 ? HB + HB / 2 : HB + 2 * NODE_TIMEOUT / 1000 + 1))}
CLEANUP=${CLEANUP:-$((HB / 3 > 0 ? HB / 3 : 1))}
RETRY=${RETRY:-2s}
LINGER=${LINGER:-5s}
HISTORY=${HISTORY:-10000}
RETRY_JITTER=${RETRY_JITTER:-3s}
GRACE=${GRACE:-10s}
USER_RATE=${USER_RATE:-100}
TOPIC_RATE=${TOPIC_RATE:-10}
BCAST_RATE=${BCAST_RATE:-1}
PAYLOAD=${PAYLOAD:-64}
STEADY=${STEADY:-$((10 * HB))}
IDLE=${IDLE:-$((2 * HB))}
RECOVER=${RECOVER:-25}
CONVERGE=${CONVERGE:-$((RECOVER - 2))}
FAULTS=${FAULTS:-kill_pod kill_master drain_pod slow_redis}
SLOW_BURSTS=${SLOW_BURSTS:-5}
SLOW_S=${SLOW_S:-0.5}
SLOW_GAP=${SLOW_GAP:-1}
RAMP_TIMEOUT=${RAMP_TIMEOUT:-120}
OUT=${OUT:-$ROOT/perf/out/rehearsal-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PY=$PERF_DIR/rehearsal.py

die() { echo "rehearsal.sh: $*" >&2; exit 1; }
note() { echo "rehearsal.sh: $(date +%T) $*" >&2; }
remark() { note "$*"; echo "- $*" >>"$OUT/notes.txt"; }
int() { [[ $2 =~ ^[0-9]+$ ]] && (($2 >= $3)) || die "$1 must be an integer >= $3 (got '$2')"; }
int STREAMS "$STREAMS" 1; int PODS "$PODS" 2; int PARTITIONS "$PARTITIONS" 1; int TOPICS "$TOPICS" 1
int PER_CLIENT "$PER_CLIENT" 1; int HB "$HB" 1; int STEADY "$STEADY" 1; int RECOVER "$RECOVER" 5
((PER_CLIENT <= 19000)) || die "PER_CLIENT must stay below the 20,000 open files a process may have"
for f in $FAULTS; do
    case $f in kill_pod | kill_master | drain_pod | slow_redis) ;; *) die "unknown fault $f" ;; esac
done
command -v redis-server >/dev/null || die "redis-server is missing (apt-get install -y redis-server)"
command -v redis-cli >/dev/null || die "redis-cli is missing (apt-get install -y redis-tools)"
command -v python3 >/dev/null || die "python3 is missing"

mkdir -p "$OUT/logs" "$OUT/raw"
: >"$OUT/notes.txt"
: >"$OUT/phases.tsv"
if [[ -z ${HERALD:-} ]]; then
    note "building herald and loadtest (release)"
    (cd "$ROOT" && cargo build --release -q -p herald -p loadtest) || die "build failed"
    HERALD=$TARGET/release/herald
fi
LOADTEST=${LOADTEST:-$(dirname "$HERALD")/loadtest}
[[ -x $LOADTEST ]] || LOADTEST=$TARGET/release/loadtest
[[ -x $LOADTEST ]] || die "no loadtest binary next to $HERALD or in $TARGET/release"
"$LOADTEST" rehearse --help >/dev/null 2>&1 || die "$LOADTEST has no 'rehearse' subcommand (rebuild it)"

# Open files: the pods inherit this shell's limit; after a pod's death and another's
# drain the streams spread over PODS - 2 pods for a while (the clients raise their own).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
PEAK=$((STREAMS / (PODS > 2 ? PODS - 2 : 1) + 1000))
((PEAK <= NOFILE)) || remark "open-file limit $NOFILE: a pod may need ~$PEAK after the faults"

CLIENTS=$(((STREAMS + PER_CLIENT - 1) / PER_CLIENT))
T_FAULTS=0
for f in $FAULTS; do T_FAULTS=$((T_FAULTS + RECOVER + 5)); done
[[ $FAULTS != *slow_redis* ]] || T_FAULTS=$((T_FAULTS + SLOW_BURSTS * (SLOW_GAP + 1)))
[[ $FAULTS != *drain_pod* ]] || T_FAULTS=$((T_FAULTS + ${GRACE%s} + 5))
# The publisher runs through steady and every fault window (and a margin); the
# faults are timed by this script, so if they take longer the publisher just
# stops earlier (noted).
PUB_SECONDS=$((STEADY + T_FAULTS + 10))
CLIENT_BOUND=$((RAMP_TIMEOUT + IDLE + PUB_SECONDS + 60 + 120))
cat >"$OUT/config.json" <<EOF
{"streams": $STREAMS, "pods": $PODS, "partitions": $PARTITIONS, "topics": $TOPICS, "seed": $SEED,
 "clients": $CLIENTS, "per_client": $PER_CLIENT, "hb": $HB, "stale_after_s": $STALE,
 "cleanup_s": $CLEANUP, "retry": "$RETRY",
 "retry_jitter": "$RETRY_JITTER", "linger": "$LINGER", "history": $HISTORY, "grace": "$GRACE", "user_rate": $USER_RATE,
 "topic_rate": $TOPIC_RATE, "bcast_rate": $BCAST_RATE, "payload": $PAYLOAD, "idle_s": $IDLE, "steady_s": $STEADY,
 "recover_s": $RECOVER, "faults": "$FAULTS", "node_timeout_ms": $NODE_TIMEOUT,
 "slow_bursts": $SLOW_BURSTS, "slow_s": $SLOW_S, "publish_s": $PUB_SECONDS}
EOF
{ "$HERALD" --version 2>/dev/null || echo "herald: $HERALD"; redis-server --version; uname -r; nproc; } >"$OUT/versions.txt" 2>&1 || true
(cd "$ROOT" && git rev-parse HEAD 2>/dev/null && git status --short 2>/dev/null | head -20) >>"$OUT/versions.txt" || true

# ───────────────────────── processes and their cleanup ─────────────────────────
POD_PIDS=() POD_PORTS=() CLIENT_PIDS=() PUB_PID= PRES_PID=
cleanup() {
    local p
    set +e
    [[ -z $PUB_PID ]] || stop_bounded "$PUB_PID"
    ((${#CLIENT_PIDS[@]} == 0)) || stop_bounded "${CLIENT_PIDS[@]}"
    [[ -z $PRES_PID ]] || stop_bounded "$PRES_PID"
    for p in "${POD_PIDS[@]}"; do [[ $p == 0 ]] || kill -KILL "$p" 2>/dev/null; done
    for p in "${POD_PIDS[@]}"; do [[ $p == 0 ]] || wait "$p" 2>/dev/null; done
    stop_redis_nodes
    PUB_PID= PRES_PID= CLIENT_PIDS=() POD_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }

# state.json: what rehearsal.py samples.
write_state() {
    local k pods=() rp=()
    for ((k = 0; k < PODS; k++)); do
        pods+=("{\"k\": $((k + 1)), \"port\": ${POD_PORTS[$k]}, \"pid\": ${POD_PIDS[$k]}}")
    done
    for k in "${RNODE_PORTS[@]}"; do rp+=("$k"); done
    local IFS=,
    printf '{"pods": [%s], "redis": [%s], "topics": %s}\n' "${pods[*]}" "${rp[*]}" "$TOPICS" >"$OUT/state.json.tmp"
    mv "$OUT/state.json.tmp" "$OUT/state.json"
}

# ───────────────────────────── Redis Cluster 3 + 3 ─────────────────────────────
start_redis_cluster() {
    # SLOWLOG keeps what ran 20 ms or more (dumped per node at the end).
    redis_cluster "$OUT/logs/cluster" 3 1 "$NODE_TIMEOUT" --enable-debug-command local \
        --slowlog-log-slower-than 20000 --slowlog-max-len 1000 ||
        die "the Redis Cluster did not start (see $OUT/logs/cluster.*)"
    redis-cli -h 127.0.0.1 -p "${RNODE_PORTS[0]}" cluster nodes >"$OUT/logs/cluster-nodes-start.txt"
}

# cluster_nodes: CLUSTER NODES as a live node sees it.
cluster_nodes() {
    local p out
    for p in "${RNODE_PORTS[@]}"; do
        if out=$(timeout 5 redis-cli -h 127.0.0.1 -p "$p" cluster nodes 2>/dev/null) && [[ -n $out ]]; then
            echo "$out"
            return 0
        fi
    done
}

# masters: ports of the nodes that are masters now.
masters() {
    cluster_nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && NF > 8 { split($2, a, "[:@]"); print a[2] }'
}

# The master that holds slot 0.
master_of_slot0() {
    cluster_nodes | awk '$3 ~ /master/ && $3 !~ /fail/ {
        for (i = 9; i <= NF; i++) if ($i ~ /^0-/ || $i == "0") { split($2, a, "[:@]"); print a[2] } }'
}

# ─────────────────────────────────── pods ───────────────────────────────────
# start_pod K: pod K (1-based) on its fixed port; waits until ready.
start_pod() {
    local k=$1 i=$(($1 - 1)) pid line deadline code log
    log="$OUT/logs/pod$k"
    [[ -e $log.out ]] && log="$log.$(now_ms)"
    "$HERALD" --listen "127.0.0.1:${POD_PORTS[$i]}" --shards 1 --log warn --redis "$REDIS_URL" \
        --partitions "$PARTITIONS" --pod-id "pod$k-$(now_ms)" --heartbeat-interval "${HB}s" \
        --stale-after "${STALE}s" --cleanup-interval "${CLEANUP}s" --retry "$RETRY" --retry-jitter "$RETRY_JITTER" \
        --presence-linger "$LINGER" --history-events "$HISTORY" --grace-period "$GRACE" >"$log.out" 2>"$log.err" &
    pid=$!
    POD_PIDS[i]=$pid
    line=$(wait_for_line "$log.out" 'listening on http://' "$pid") || die "pod $k did not start (see $log.err)"
    deadline=$((SECONDS + START_TIMEOUT))
    code=
    while ((SECONDS < deadline)); do
        code=$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://127.0.0.1:${POD_PORTS[$i]}/health/ready" || true)
        [[ $code == 200 ]] && break
        sleep 0.1
    done
    [[ $code == 200 ]] || remark "pod $k not ready after ${START_TIMEOUT}s (last answer $code)"
    write_state
}

# ─────────────────────────────── phase marks ───────────────────────────────
PHASE= PHASE_T0=
phase_begin() {
    PHASE=$1
    python3 "$PY" sample "$OUT" "$PHASE-start" || remark "sample $PHASE-start failed"
    PHASE_T0=$(now_ms)
    note "phase $PHASE"
}
phase_end() {
    python3 "$PY" sample "$OUT" "$PHASE-end" || remark "sample $PHASE-end failed"
    printf '%s\t%s\t%s\n' "$PHASE" "$PHASE_T0" "$(now_ms)" >>"$OUT/phases.tsv"
}
# sleep_until T_MS
sleep_until() {
    local left
    left=$(($1 - $(now_ms)))
    ((left <= 0)) || sleep "$(awk -v l="$left" 'BEGIN { printf "%.3f", l / 1000 }')"
}
# recover_window: polls (from 2 s after the fault, once the clients' snapshots show
# it) until the registry and presence match the clients, every stream open again,
# at most CONVERGE s after the fault; then sleeps out RECOVER s from the fault.
recover_window() {
    python3 "$PY" converge "$OUT" "$PHASE-converge" "$PHASE_T0" "$CONVERGE" >>"$OUT/logs/converge.log" 2>&1 ||
        remark "converge $PHASE failed"
    sleep_until $((PHASE_T0 + RECOVER * 1000))
}

client_open() {
    python3 - "$OUT" <<'PY'
import glob, json, sys
n = 0
for p in glob.glob(sys.argv[1] + "/sub-*.jsonl"):
    last = None
    for line in open(p):
        last = line
    if last:
        try:
            n += json.loads(last)["counters"]["open"]
        except (ValueError, KeyError):
            pass
print(n)
PY
}

# ─────────────────────── the embedded figure, side by side ───────────────────────
# One embedded herald (no Redis) with STREAMS/PODS streams of the same layout: its
# RSS growth per stream is what the cluster's pods are held to (memory per stream
# in cluster mode <= embedded + 10%). raw/embedded.json.
embedded_baseline() {
    local n=$((STREAMS / PODS)) log=$OUT/logs/embedded pid cpid line addr rss0 rss1 open
    "$HERALD" --listen 127.0.0.1:0 --shards 1 --log warn --grace-period 1s \
        --heartbeat-interval "${HB}s" >"$log.out" 2>"$log.err" &
    pid=$!
    line=$(wait_for_line "$log.out" 'listening on http://' "$pid") ||
        { remark "embedded herald did not start (see $log.err)"; return 0; }
    addr=$(sed -E 's|.*http://([^ ]+).*|\1|' <<<"$line")
    sleep 0.5
    rss0=$(rss_kb "$pid")
    timeout --kill-after=5 $((RAMP_TIMEOUT + 30)) "$LOADTEST" rehearse --pods "http://$addr" \
        --streams "$n" --topics "$TOPICS" --seed "$SEED" --part 0 --parts 1 \
        --connect-concurrency "$CONNECT_CONCURRENCY" --snapshot "$OUT/embedded.jsonl" \
        --duration "$((RAMP_TIMEOUT + 20))s" >"$log.client" 2>&1 &
    cpid=$!
    open=$(wait_open "$OUT/embedded.jsonl" "$n" "$RAMP_TIMEOUT")
    sleep 2 # the last connects' buffers settle
    rss1=$(rss_kb "$pid")
    stop_bounded "$cpid"
    stop_bounded "$pid"
    printf '{"streams": %s, "open": %s, "rss0_kb": %s, "rss1_kb": %s}\n' "$n" "$open" "$rss0" "$rss1" \
        >"$OUT/raw/embedded.json"
    note "embedded: $open streams, RSS $rss0 -> $rss1 KB"
}

# ──────────────────────────────────── run ────────────────────────────────────
[[ ${EMBEDDED:-1} == 0 ]] || embedded_baseline
note "Redis Cluster 3 masters + 3 replicas"
start_redis_cluster
read -r -a POD_PORTS <<<"$(free_ports "$PODS")"
for ((k = 0; k < PODS; k++)); do POD_PIDS[k]=0; done
note "$PODS pods (--partitions $PARTITIONS, heartbeat ${HB}s)"
for ((k = 1; k <= PODS; k++)); do start_pod "$k"; done
PODS_CSV=$(for p in "${POD_PORTS[@]}"; do printf 'http://127.0.0.1:%s,' "$p"; done)
PODS_CSV=${PODS_CSV%,}
python3 "$PY" sample "$OUT" baseline

# Presence on: a presence stream on pod 2 (records online/offline transitions).
timeout $((CLIENT_BOUND + 60)) curl -sN "http://127.0.0.1:${POD_PORTS[1]}/api/presence/stream" \
    >"$OUT/presence-stream.txt" 2>/dev/null &
PRES_PID=$!

COMMON=(--pods "$PODS_CSV" --streams "$STREAMS" --topics "$TOPICS" --seed "$SEED")
phase_begin ramp
for ((c = 0; c < CLIENTS; c++)); do
    timeout --kill-after=10 "$CLIENT_BOUND" "$LOADTEST" rehearse "${COMMON[@]}" --part "$c" --parts "$CLIENTS" \
        --threads "$CLIENT_THREADS" --connect-concurrency "$CONNECT_CONCURRENCY" \
        --snapshot "$OUT/sub-$c.jsonl" --pub-final "$OUT/pub-final.json" \
        --duration "$((CLIENT_BOUND - 90))s" --drain-timeout 30s --json "$OUT/sub-$c.json" \
        --silent-after "$((3 * HB))s" \
        >"$OUT/logs/client$c.log" 2>&1 &
    CLIENT_PIDS+=($!)
done
deadline=$((SECONDS + RAMP_TIMEOUT))
open=0
while ((SECONDS < deadline)); do
    open=$(client_open)
    ((open >= STREAMS)) && break
    sleep 1
done
((open >= STREAMS)) || remark "ramp: only $open of $STREAMS streams open after ${RAMP_TIMEOUT}s"
phase_end

# Idle: every stream open, nothing published: heartbeats and the pods' upkeep alone
# (the model's per-pod and per-connection rows, apart from the events').
if ((IDLE > 0)); then
    phase_begin idle
    sleep_until $((PHASE_T0 + IDLE * 1000))
    phase_end
fi

note "publisher: user ${USER_RATE}/s, topic ${TOPIC_RATE}/s, broadcast ${BCAST_RATE}/s for ${PUB_SECONDS}s"
timeout --kill-after=10 $((PUB_SECONDS + 200)) "$LOADTEST" rehearse-pub "${COMMON[@]}" \
    --user-rate "$USER_RATE" --topic-rate "$TOPIC_RATE" --bcast-rate "$BCAST_RATE" \
    --payload-bytes "$PAYLOAD" --duration "${PUB_SECONDS}s" --retry-for 60s \
    --snapshot "$OUT/pub.jsonl" --final "$OUT/pub-final.json" --run-id "rh$(now_ms)" \
    >"$OUT/logs/publisher.log" 2>&1 &
PUB_PID=$!
PUB_T0=$(now_ms)

phase_begin steady
sleep_until $((PHASE_T0 + STEADY * 1000))
phase_end

for fault in $FAULTS; do
    case $fault in
    kill_pod)
        phase_begin kill_pod
        victim=$PODS
        kill -KILL "${POD_PIDS[$((victim - 1))]}" 2>/dev/null || true
        wait "${POD_PIDS[$((victim - 1))]}" 2>/dev/null || true
        POD_PIDS[victim - 1]=0
        write_state
        note "SIGKILLed pod $victim"
        recover_window
        note "starting pod $victim again"
        start_pod "$victim"
        sleep 2
        phase_end
        ;;
    kill_master)
        phase_begin kill_master
        m=$(master_of_slot0)
        [[ -n $m ]] || die "no master for slot 0"
        for ((k = 0; k < ${#RNODE_PORTS[@]}; k++)); do
            if [[ ${RNODE_PORTS[$k]} == "$m" ]]; then
                kill -KILL "${RNODE_PIDS[$k]}" 2>/dev/null || true
                wait "${RNODE_PIDS[$k]}" 2>/dev/null || true
                RNODE_PIDS[k]=0
            fi
        done
        t_kill=$(now_ms)
        note "SIGKILLed Redis master $m"
        # Its replica's promotion (bounded by the window).
        promoted=
        while (($(now_ms) < PHASE_T0 + RECOVER * 1000)); do
            s0=$(master_of_slot0 || true)
            if [[ -n $s0 && $s0 != "$m" ]]; then promoted=$s0; break; fi
            sleep 0.2
        done
        if [[ -n $promoted ]]; then
            remark "kill_master: replica $promoted took slot 0 after $((($(now_ms) - t_kill)))ms (cluster-node-timeout ${NODE_TIMEOUT}ms)"
        else
            remark "kill_master: no replica took slot 0 within ${RECOVER}s"
        fi
        recover_window
        phase_end
        ;;
    drain_pod)
        phase_begin drain_pod
        victim=1
        pid=${POD_PIDS[$((victim - 1))]}
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + ${GRACE%s} + 10))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            remark "drain_pod: pod $victim still running ${GRACE} + 10 s after SIGTERM; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null && rc=0 || rc=$?
        remark "drain_pod: pod $victim exited with status $rc after SIGTERM"
        POD_PIDS[victim - 1]=0
        write_state
        start_pod "$victim"
        recover_window
        phase_end
        ;;
    slow_redis)
        phase_begin slow_redis
        read -r -a ms <<<"$(masters | tr '\n' ' ')"
        for ((b = 0; b < SLOW_BURSTS; b++)); do
            sleepers=()
            for m in "${ms[@]}"; do
                timeout 10 redis-cli -h 127.0.0.1 -p "$m" DEBUG SLEEP "$SLOW_S" >/dev/null 2>&1 &
                sleepers+=($!)
            done
            for m in "${sleepers[@]}"; do wait "$m" 2>/dev/null || true; done
            sleep "$SLOW_GAP"
        done
        note "slowed Redis masters ${ms[*]}: $SLOW_BURSTS x ${SLOW_S}s"
        recover_window
        phase_end
        ;;
    esac
done

# The publisher ends on its own; then every client drains and writes its report.
note "waiting for the publisher and the clients to finish"
left=$((PUB_T0 / 1000 + PUB_SECONDS - $(date +%s)))
((left >= 0)) || remark "the faults outlasted the publishing time by $((-left)) s (the last window had no publishing at its end)"
wait "$PUB_PID" 2>/dev/null && rc=0 || rc=$?
PUB_PID=
((rc == 0)) || remark "publisher exited with status $rc (see logs/publisher.log)"
for ((c = 0; c < CLIENTS; c++)); do
    wait "${CLIENT_PIDS[$c]}" 2>/dev/null && rc=0 || rc=$?
    ((rc == 0)) || remark "client $c exited with status $rc (see logs/client$c.log)"
done
CLIENT_PIDS=()
python3 "$PY" sample "$OUT" end || true
for p in "${RNODE_PORTS[@]}"; do
    timeout 10 redis-cli --json -h 127.0.0.1 -p "$p" slowlog get 1000 >"$OUT/logs/slowlog-$p.json" 2>&1 || true
done
stop_bounded "$PRES_PID"
PRES_PID=
grep -c '^event: online' "$OUT/presence-stream.txt" >"$OUT/raw/presence-online.count" 2>/dev/null || true
grep -c '^event: offline' "$OUT/presence-stream.txt" >"$OUT/raw/presence-offline.count" 2>/dev/null || true
remark "presence stream on pod 2: $(cat "$OUT/raw/presence-online.count" 2>/dev/null || echo ?) online, $(cat "$OUT/raw/presence-offline.count" 2>/dev/null || echo ?) offline events"
for f in "$OUT"/logs/pod*.err; do
    n=$(grep -c -E 'ERROR|panicked' "$f" || true)
    ((n == 0)) || remark "$(basename "$f"): $n ERROR/panic lines"
done
python3 "$PY" summary "$OUT"
note "results in $OUT"
