#!/usr/bin/env bash
# perf/scale.sh: what one published event costs Redis as herald pods are added.
#
# For each pod count P in $PODS, P herald pods share one private Redis (a fresh
# redis-server on a free loopback port per point; with REDIS_CLUSTER=1 a fresh
# local 3-master Redis Cluster instead). Three kinds of events are measured one
# after the other on the same pods, EVENTS of each, published by the bundled load
# client (loadtest/) at RATE events/s from PUB_CONCURRENCY publisher connections,
# always to the LAST pod (pod P; pod 1 when P = 1), with the measured subscribers
# on pod 1, so for P > 1 every measured event crosses Redis:
#
#   user   one stream of user u0 on pod 1; each event targets u0
#          (`loadtest targeted --connections 1`, body {"target":{"users":["u{user}"]}});
#          with USERS=n, n users u0..u(n-1), the events round-robin over them (so
#          that with --partitions they spread over the partitions)
#   topic  SUBS_TOPIC streams on pod 1 with `&topics=t1`; each event targets topic t1
#          (`loadtest cluster`, body {"target":{"topics":["t1"]}})
#   all    SUBS_ALL streams on pod 1; each event targets "all" (`loadtest cluster`)
#
# Background: pods 2..P each hold SUBS_ALL streams of their own users, subscribed
# to topic t2 (`loadtest idle`, opened before the first window, held until the
# point ends). They are the "a few subscribers on every pod" of `all` (each must
# get every `all` event: checked from the pods' herald_events_delivered_total,
# column "other pods missing"), and for `user`/`topic` they are pods with
# connections but no interest in the event (their deliveries must stay 0).
#
# Per kind, from Redis INFO (stats, cpu, commandstats) on every Redis node:
#   bytes/event     total_net_output_bytes delta (what Redis sent to all clients)
#   commands/event  sum of commandstats calls deltas (INFO itself excluded),
#                   and the same per command. Redis counts a command a script runs
#                   as well as the EVALSHA that ran it (so does herald's
#                   herald_redis_commands_total, kept per op in the JSON). The
#                   commandstats usec are in the JSON only: a script's usec include
#                   those of the commands it runs, so they do not add up.
#   CPU µs/event    used_cpu_sys + used_cpu_user delta (noisy on a shared machine:
#                   read it as an order of magnitude; bytes and commands are exact)
# plus the pods' CPU (utime + stime of every pod, summed; idle-corrected the same
# way; all pods are pinned to SERVER_CPU, so also noisy)
# and from the load client: loss, latency p50/p99 (publish -> receive on pod 1).
#
# Idle baseline (subtracted): each kind runs twice on the same pods. First the
# publish run: INFO, then the whole load client run (connect the subscribers,
# settle, publish EVENTS, drain, close), GAP seconds for the pods to finish
# (disconnect batches, 1 s stats flush), INFO. Then at once the idle run: INFO,
# `loadtest idle` with the same subscribe URLs and connection count held for as
# long as the publish run took, GAP, INFO. The idle run thus contains the same
# connects, disconnects, heartbeats, cleanups and XREAD BLOCK timeouts, only no
# publishes. Figure per event = (publish delta - idle delta x Wp/Wi) / events
# published, Wp and Wi being the two windows' lengths (INFO to INFO; they differ by
# well under a second, and the ratio corrects for that proportionally). The reply
# to the opening INFO of each window is taken out of both byte deltas first. The
# heartbeat interval is HB (15 s) so heartbeats barely count either way. Note that
# while events flow, the pods' XREAD BLOCK calls return with events instead of
# timing out once a second, so subtracting the idle XREADs over-subtracts them by
# up to P/RATE per event (8 pods at 200/s: xread 7.96 per event where 8 ran).
#
#   perf/scale.sh                                   # build this tree; PODS="1 2 4 8"
#   HERALD=/path/herald LOADTEST=/path/loadtest perf/scale.sh
#   HERALD_PREV=/tmp/herald-prev-bin/herald perf/scale.sh   # side by side, label "prev"
#   PODS="1 4" EVENTS=500 KINDS="user" perf/scale.sh        # quick
#   REDIS_CLUSTER=1 PARTITIONS="1 8" perf/scale.sh          # 3-master Redis Cluster
#   SUMMARY_ONLY=1 OUT=perf/out/scale-... perf/scale.sh     # re-summarize a run
#
# Environment (defaults in brackets):
#   PODS [1 2 4 8]  EVENTS [3000] per kind  RATE [200] events/s  PUB_CONCURRENCY [2]
#   KINDS [user topic all]  SUBS_TOPIC [4]  SUBS_ALL [4] (per pod)  PAYLOAD_BYTES [100]
#   HB [15] heartbeat interval, s  CLEANUP [30] cleanup interval, s  GAP [2] s
#   SETTLE [1] s (load client's pause after connecting, before publishing)
#   HERALD [build this tree]  HERALD_LABEL [herald]  HERALD_PREV [none; label prev]
#   LOADTEST [next to $HERALD if there, else built from this tree]
#   REDIS_CLUSTER [0]: 0 standalone Redis, 1 a 3-master Redis Cluster, both
#   PARTITIONS [1 8] (Redis Cluster mode; `--partitions N` is passed only to a
#     binary whose --help lists it, others run N=1 without the flag, noted)
#   SERVER_CPU [0] pods, CLIENT_CPU [1] load clients, REDIS_CPU [unpinned]
#   OUT [perf/out/scale-<date>]
# Results in $OUT: <label>__<setup>__p<P>__<kind>.json per point, points.csv,
# summary.md, notes.txt, versions.txt, bin/ (copies of the binaries measured),
# logs/ (pods, Redis, load client output and JSON), raw/ (INFO and /metrics texts).
#
# Safety as perf/cluster.sh: everything binds 127.0.0.1, the load client only
# targets loopback, every load client run is bounded (`timeout` plus its own
# watchdog), every process started here (pods, Redis nodes, load clients) is
# stopped after its point and by an EXIT trap (Ctrl-C included), temp dirs removed.
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"

PODS=${PODS:-1 2 4 8}
EVENTS=${EVENTS:-3000}
RATE=${RATE:-200}
PUB_CONCURRENCY=${PUB_CONCURRENCY:-2}
KINDS=${KINDS:-user topic all}
USERS=${USERS:-1}
SUBS_TOPIC=${SUBS_TOPIC:-4}
SUBS_ALL=${SUBS_ALL:-4}
PAYLOAD_BYTES=${PAYLOAD_BYTES:-100}
HB=${HB:-15}
CLEANUP=${CLEANUP:-30}
GAP=${GAP:-2}
SETTLE=${SETTLE:-1}
REDIS_CLUSTER=${REDIS_CLUSTER:-0}
PARTITIONS=${PARTITIONS:-1 8}
HERALD_LABEL=${HERALD_LABEL:-herald}
CLIENT_CPU=${CLIENT_CPU:-1}
REDIS_CPU=${REDIS_CPU:-}
OUT=${OUT:-$ROOT/perf/out/scale-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "scale.sh: $*" >&2; exit 1; }
note() { echo "scale.sh: $*" >&2; }
# A note that also goes into the summary.
remark() { note "$*"; echo "- $*" >>"$OUT/notes.txt"; }

int() { [[ $2 =~ ^[0-9]+$ ]] && (($2 >= $3)) || die "$1 must be an integer >= $3 (got '$2')"; }
int EVENTS "$EVENTS" 1
int RATE "$RATE" 1
int PUB_CONCURRENCY "$PUB_CONCURRENCY" 1
int SUBS_TOPIC "$SUBS_TOPIC" 1
int SUBS_ALL "$SUBS_ALL" 1
int PAYLOAD_BYTES "$PAYLOAD_BYTES" 32
int HB "$HB" 1
int CLEANUP "$CLEANUP" 1
int GAP "$GAP" 1
int SETTLE "$SETTLE" 0
for p in $PODS; do int "a value of PODS" "$p" 1; ((p <= 64)) || die "at most 64 pods"; done
for p in $PARTITIONS; do int "a value of PARTITIONS" "$p" 1; done
for k in $KINDS; do [[ $k =~ ^(user|topic|all)$ ]] || die "KINDS: user, topic, all (got '$k')"; done
case $REDIS_CLUSTER in
0) SETUPS=single ;;
1) SETUPS=cluster ;;
both) SETUPS="single cluster" ;;
*) die "REDIS_CLUSTER must be 0, 1 or both" ;;
esac

mkdir -p "$OUT/bin" "$OUT/logs" "$OUT/raw"
RAW=$OUT/raw

# ---------------------------------------------------------------- summary
summarize() {
    python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import glob, json, os, sys
out = sys.argv[1]
pts = []
for f in sorted(glob.glob(os.path.join(out, "*__*__p*__*.json"))):
    with open(f) as fh:
        pts.append(json.load(fh))
kinds = {"user": 0, "topic": 1, "all": 2}
labels = []
for p in pts:
    if p["label"] not in labels:
        labels.append(p["label"])
def key(p):
    return (p["setup"], kinds.get(p["kind"], 9), p["pods"], labels.index(p["label"]))
pts.sort(key=key)
def f(x, d=1):
    if x is None:
        return "–"
    return f"{x:,.{d}f}"
meta = {}
mf = os.path.join(out, "params.json")
if os.path.exists(mf):
    meta = json.load(open(mf))
print("# perf/scale.sh: Redis cost per published event\n")
if meta:
    print(f"{meta.get('events')} events per kind at {meta.get('rate')}/s from {meta.get('pub_concurrency')} "
          f"publisher connection(s), published to the last pod (pod P), measured subscribers on pod 1: "
          f"user = 1 stream of one user; topic = {meta.get('subs_topic')} streams of topic t1; "
          f"all = {meta.get('subs_all')} streams; pods 2..P also hold {meta.get('subs_all')} streams each "
          f"(other users, topic t2). Heartbeat {meta.get('hb')} s, cleanup {meta.get('cleanup')} s, "
          f"payload {meta.get('payload_bytes')} B. Idle baseline (same subscribers, same window, no "
          f"publishes) subtracted. Redis CPU = INFO used_cpu_sys + used_cpu_user; pods CPU = utime + stime of all pods. CPU figures are noisy on a shared "
          f"machine; bytes and commands are exact counts. Latency: publish on pod P to receipt on pod 1.\n")
print("| setup | kind | pods | binary | events | bytes/event | commands/event | Redis CPU µs/event | pods CPU µs/event | p50 ms | p99 ms | lost | other pods missing | commands per master |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for p in pts:
    shares = p.get("node_command_share") or []
    sh = " / ".join(f"{s*100:.0f}%" for s in shares) if len(shares) > 1 else ""
    other = p.get("other_pods_missing")
    print(f"| {p['setup']} | {p['kind']} | {p['pods']} | {p['label']} | {p['events_published']:,} "
          f"| {f(p['bytes_per_event'])} | {f(p['commands_per_event'], 2)} | {f(p['cpu_us_per_event'])} "
          f"| {f(p.get('pods_cpu_us_per_event'))} | {f(p['p50_ms'], 2)} | {f(p['p99_ms'], 2)} | {p['lost'] if p['lost'] is not None else '–'} "
          f"| {other if other is not None else '–'} | {sh} |")
print("\n## Commands per event, by command\n")
print("| setup | kind | pods | binary | per command (idle-corrected) |")
print("|---|---|---|---|---|")
for p in pts:
    cmds = sorted(p["commands_per_event_by_name"].items(), key=lambda kv: -kv[1])
    s = ", ".join(f"{n} {v:.2f}" for n, v in cmds if abs(v) >= 0.005) or "–"
    print(f"| {p['setup']} | {p['kind']} | {p['pods']} | {p['label']} | {s} |")
# Linear fits in (pods - 1).
groups = {}
for p in pts:
    groups.setdefault((p["setup"], p["kind"], p["label"]), []).append(p)
rows = []
for (setup, kind, label), ps in groups.items():
    xs = [p["pods"] - 1 for p in ps]
    if len(set(xs)) < 2:
        continue
    def fit(ys):
        n = len(xs); mx = sum(xs) / n; my = sum(ys) / n
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        return my - b * mx, b
    ba, bb = fit([p["bytes_per_event"] for p in ps])
    ca, cb = fit([p["commands_per_event"] for p in ps])
    rows.append((setup, kinds.get(kind, 9), kind, labels.index(label), label, ba, bb, ca, cb))
if rows:
    print("\n## Fit over pods: a + b × (pods − 1), least squares\n")
    print("| setup | kind | binary | bytes/event | commands/event |")
    print("|---|---|---|---|---|")
    for setup, _, kind, _, label, ba, bb, ca, cb in sorted(rows):
        print(f"| {setup} | {kind} | {label} | {ba:,.0f} + {bb:,.1f} × (pods − 1) | {ca:.2f} + {cb:.2f} × (pods − 1) |")
warn = [(p, w) for p in pts for w in p.get("warnings", [])]
notes = os.path.join(out, "notes.txt")
if warn or (os.path.exists(notes) and os.path.getsize(notes)):
    print("\n## Notes\n")
    if os.path.exists(notes):
        print(open(notes).read().rstrip())
    for p, w in warn:
        print(f"- {p['label']} {p['setup']} p{p['pods']} {p['kind']}: {w}")
vf = os.path.join(out, "versions.txt")
if os.path.exists(vf):
    print("\n## Binaries\n\n```\n" + open(vf).read().rstrip() + "\n```")
EOF
}

if [[ ${SUMMARY_ONLY:-0} == 1 ]]; then
    summarize
    exit 0
fi
command -v redis-server >/dev/null || die "redis-server is missing (apt-get install -y redis-server)"
command -v redis-cli >/dev/null || die "redis-cli is missing (apt-get install -y redis-tools)"
command -v taskset >/dev/null || die "taskset is missing (util-linux)"
command -v curl >/dev/null || die "curl is missing"
command -v python3 >/dev/null || die "python3 is missing"
: >"$OUT/notes.txt"

# ---------------------------------------------------------------- binaries
if [[ -z ${HERALD:-} ]]; then
    note "building herald and loadtest (release) from $ROOT"
    (cd "$ROOT" && cargo build --release -q -p herald -p loadtest) || die "build failed"
    HERALD=$TARGET/release/herald
    LOADTEST=${LOADTEST:-$TARGET/release/loadtest}
elif [[ -z ${LOADTEST:-} ]]; then
    if [[ -x $(dirname "$HERALD")/loadtest ]]; then
        LOADTEST=$(dirname "$HERALD")/loadtest
    else
        note "building loadtest (release) from $ROOT"
        (cd "$ROOT" && cargo build --release -q -p loadtest) || die "build failed"
        LOADTEST=$TARGET/release/loadtest
    fi
fi
[[ -x $HERALD ]] || die "HERALD=$HERALD is not an executable"
[[ -x $LOADTEST ]] || die "LOADTEST=$LOADTEST is not an executable"
# Copies, so that a rebuild during the run does not change what is measured.
cp "$HERALD" "$OUT/bin/herald"
cp "$LOADTEST" "$OUT/bin/loadtest"
LABELS=("$HERALD_LABEL")
BINS=("$OUT/bin/herald")
SOURCES=("$HERALD")
if [[ -n ${HERALD_PREV:-} ]]; then
    [[ -x $HERALD_PREV ]] || die "HERALD_PREV=$HERALD_PREV is not an executable"
    cp "$HERALD_PREV" "$OUT/bin/herald-prev"
    LABELS+=(prev)
    BINS+=("$OUT/bin/herald-prev")
    SOURCES+=("$HERALD_PREV")
fi
[[ ${LABELS[0]} != prev || ${#LABELS[@]} == 1 ]] || die "HERALD_LABEL must not be 'prev' with HERALD_PREV"
LOADTEST=$OUT/bin/loadtest
has_partitions() { "$1" --help 2>&1 | grep -q -- '--partitions'; }
{
    for i in "${!BINS[@]}"; do
        echo "${LABELS[$i]}: ${SOURCES[$i]}"
        echo "  $("${BINS[$i]}" --version 2>&1 | head -n1)  sha256 $(sha256sum "${BINS[$i]}" | cut -c1-16)"
        if has_partitions "${BINS[$i]}"; then echo "  --partitions: yes"; else echo "  --partitions: no"; fi
    done
    echo "loadtest: $(readlink -f "$LOADTEST") $("$LOADTEST" --version 2>&1 | head -n1)"
    echo "redis: $(redis-server --version)"
    echo "host: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg) at start"
} >"$OUT/versions.txt"
python3 - "$OUT/params.json" <<EOF
import json, sys
json.dump({"pods": "$PODS", "events": $EVENTS, "rate": $RATE, "pub_concurrency": $PUB_CONCURRENCY,
           "kinds": "$KINDS", "subs_topic": $SUBS_TOPIC, "subs_all": $SUBS_ALL,
           "payload_bytes": $PAYLOAD_BYTES, "hb": $HB, "cleanup": $CLEANUP, "gap": $GAP,
           "settle": $SETTLE, "redis_cluster": "$REDIS_CLUSTER", "partitions": "$PARTITIONS"},
          open(sys.argv[1], "w"), indent=1)
EOF

# ---------------------------------------------------------------- processes
POD_PIDS=() POD_ADDRS=() HOLDER_PIDS=()
REDIS_URL=
[[ -z $REDIS_CPU ]] || PIN_REDIS=(taskset -c "$REDIS_CPU")

stop_point() {
    stop_all # the load client, if one runs (servers.sh)
    stop_bounded "${HOLDER_PIDS[@]}"
    stop_bounded "${POD_PIDS[@]}"
    stop_redis_nodes
    POD_PIDS=() POD_ADDRS=() HOLDER_PIDS=()
    REDIS_URL=
}
trap stop_point EXIT
trap 'exit 130' INT TERM

start_redis_single() {
    local port
    port=$(free_ports 1)
    redis_node "$port" "$1.redis.log"
    REDIS_URL="redis://127.0.0.1:$port"
}

# A 3-master Redis Cluster (no replicas).
start_redis_cluster() {
    redis_cluster "$1" 3 0 5000 || { note "Redis Cluster failed to start"; return 1; }
}

# start_pods N BIN PARTS LOG: N pods on $REDIS_URL (PARTS: a --partitions value or empty).
start_pods() {
    local n=$1 bin=$2 parts=$3 log=$4 k line pid args deadline code
    for ((k = 1; k <= n; k++)); do
        args=(--listen 127.0.0.1:0 --shards 1 --grace-period 1s --log warn --redis "$REDIS_URL"
            --pod-id "pod$k" --heartbeat-interval "${HB}s" --cleanup-interval "${CLEANUP}s")
        [[ -z $parts ]] || args+=(--partitions "$parts")
        taskset -c "$SERVER_CPU" "$bin" "${args[@]}" >"$log.pod$k.out" 2>"$log.pod$k" &
        pid=$!
        POD_PIDS+=("$pid")
        line=$(wait_for_line "$log.pod$k.out" 'listening on http://' "$pid") || return 1
        POD_ADDRS+=("$(sed -E 's|.*http://([^ ]+).*|\1|' <<<"$line")")
    done
    for ((k = 0; k < n; k++)); do
        deadline=$((SECONDS + START_TIMEOUT))
        code=
        while ((SECONDS < deadline)); do
            code=$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://${POD_ADDRS[$k]}/health/ready" || true)
            [[ $code == 200 ]] && break
            sleep 0.1
        done
        [[ $code == 200 ]] || { note "pod $((k + 1)) not ready (last answer $code)"; return 1; }
    done
}

# start_holders N LOG: SUBS_ALL streams (users h<k>x<i>, topic t2) on each of pods 2..N.
start_holders() {
    local n=$1 log=$2 k hold bound
    # Long enough for every kind's two runs; stopped with the point anyway.
    hold=$((3 * 2 * (EVENTS / RATE + SETTLE + GAP + 20) + 120))
    bound=$((hold + 60))
    for ((k = 2; k <= n; k++)); do
        timeout -k 5 "$bound" taskset -c "$CLIENT_CPU" "$LOADTEST" idle \
            --sub-url "http://${POD_ADDRS[$((k - 1))]}/api/user/sse/connect?userId=h${k}x{i}&topics=t2" \
            --connections "$SUBS_ALL" --duration "${hold}s" --settle 0s \
            --json "$log.holder$k.json" >"$log.holder$k" 2>&1 &
        HOLDER_PIDS+=($!)
        wait_for_line "$log.holder$k" 'holding [0-9]+ streams' "$!" >/dev/null ||
            { note "holders on pod $k did not open (see $log.holder$k)"; return 1; }
    done
}

now() { date +%s.%N; }

# snap TAG: INFO stats, cpu, commandstats of every Redis node, the time, and
# every pod's CPU ticks (utime + stime).
snap() {
    local i
    now >"$RAW/$1.t"
    for i in "${!POD_PIDS[@]}"; do
        awk '{ print $14 + $15 }' "/proc/${POD_PIDS[$i]}/stat" 2>/dev/null || echo 0
    done >"$RAW/$1.cpu"
    for i in "${!RNODE_PORTS[@]}"; do
        timeout 10 redis-cli -h 127.0.0.1 -p "${RNODE_PORTS[$i]}" info stats cpu commandstats \
            >"$RAW/$1.n$((i + 1))" || note "INFO on node $((i + 1)) failed"
    done
}

# msnap TAG: every pod's /metrics (no Redis traffic: counters are local).
msnap() {
    local k
    for k in "${!POD_ADDRS[@]}"; do
        curl -s --max-time 5 "http://${POD_ADDRS[$k]}/metrics" >"$RAW/$1.pod$((k + 1))" || true
    done
}

# run_client BOUND LOG ARGS...: one bounded load client run on CLIENT_CPU.
run_client() {
    local bound=$1 log=$2
    shift 2
    timeout -k 5 "$bound" taskset -c "$CLIENT_CPU" "$LOADTEST" "$@" >"$log" 2>&1 &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || note "load client exited with $? (see $log)"
    CLIENT_PID=
}

# run_kind KIND TAG LABEL SETUP PARTS N: publish run, idle run, figures.
run_kind() {
    local kind=$1 tag=$2 label=$3 setup=$4 parts=$5 n=$6
    local sub pub scen conns body t0 t1 idle_ms bound
    sub="http://${POD_ADDRS[0]}/api/user/sse/connect"
    pub="http://${POD_ADDRS[$((n - 1))]}/api/broadcast"
    case $kind in
    user)
        scen=targeted conns=$USERS sub+='?userId=u{i}'
        body='{"data":"{payload}","target":{"users":["u{user}"]}}'
        ;;
    topic)
        scen=cluster conns=$SUBS_TOPIC sub+='?userId=t{i}&topics=t1'
        body='{"data":"{payload}","target":{"topics":["t1"]}}'
        ;;
    all)
        scen=cluster conns=$SUBS_ALL sub+='?userId=a{i}'
        body='{"data":"{payload}","target":"all"}'
        ;;
    esac
    bound=$((2 * EVENTS / RATE + 90))
    note "$tag: $EVENTS $kind events at $RATE/s to pod $n, $conns subscriber(s) on pod 1"
    msnap "$tag.m0"
    snap "$tag.s0"
    t0=$(now)
    run_client "$bound" "$OUT/logs/$tag.client" "$scen" \
        --sub-url "$sub" --connections "$conns" --pub-url "$pub" --pub-body "$body" \
        --rate "$RATE" --pub-concurrency "$PUB_CONCURRENCY" --max-events "$EVENTS" \
        --duration "$((EVENTS / RATE + 2))s" --payload-bytes "$PAYLOAD_BYTES" \
        --settle "${SETTLE}s" --drain-timeout 5s --server-pid "${POD_PIDS[0]}" \
        --json "$OUT/logs/$tag.client.json"
    t1=$(now)
    sleep "$GAP"
    snap "$tag.s1"
    msnap "$tag.m1"
    # The idle run holds the streams as long as the publish run took overall,
    # less the part both share (connect and settle).
    idle_ms=$(awk -v a="$t0" -v b="$t1" -v s="$SETTLE" 'BEGIN { x = (b - a - s - 0.1) * 1000; if (x < 100) x = 100; printf "%d", x }')
    snap "$tag.s2"
    run_client "$((idle_ms / 1000 + 90))" "$OUT/logs/$tag.idle" idle \
        --sub-url "$sub" --connections "$conns" --duration "${idle_ms}ms" --settle "${SETTLE}s" \
        --json "$OUT/logs/$tag.idle.json"
    sleep "$GAP"
    snap "$tag.s3"
    python3 - "$OUT" "$tag" "$label" "$setup" "$parts" "$n" "$kind" "$conns" "$SUBS_ALL" "$EVENTS" "$(getconf CLK_TCK)" <<'EOF' || note "$tag: no figures (see above)"
import csv, json, os, sys
out, tag, label, setup, parts, n, kind, conns, subs_other, events, tck = sys.argv[1:]
n, conns, subs_other, events, tck = int(n), int(conns), int(subs_other), int(events), int(tck)
raw = os.path.join(out, "raw")

def info(path):
    d, cmds, usec = {}, {}, {}
    with open(path, errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#") or ":" not in line:
                continue
            k, v = line.split(":", 1)
            if k.startswith("cmdstat_"):
                fields = dict(x.split("=", 1) for x in v.split(",") if "=" in x)
                cmds[k[len("cmdstat_"):]] = int(fields.get("calls", 0))
                usec[k[len("cmdstat_"):]] = int(fields.get("usec", 0))
            else:
                d[k] = v
    size = os.path.getsize(path)
    return {
        "bytes": int(d["total_net_output_bytes"]),
        "cpu": float(d["used_cpu_sys"]) + float(d["used_cpu_user"]),
        "cmds": cmds,
        "usec": usec,
        # The reply to this INFO (a bulk string) is counted in the next snapshot.
        "reply": size + len(str(size)) + 5,
    }

def t(s):
    return float(open(os.path.join(raw, f"{tag}.{s}.t")).read())

nodes = sorted({f.rsplit(".n", 1)[1] for f in os.listdir(raw) if f.startswith(f"{tag}.s0.n")}, key=int)
snaps = {s: [info(os.path.join(raw, f"{tag}.{s}.n{k}")) for k in nodes] for s in ("s0", "s1", "s2", "s3")}
wp, wi = t("s1") - t("s0"), t("s3") - t("s2")
scale = wp / wi

def delta(a, b):
    names = set(a["cmds"]) | set(b["cmds"])
    cmds = {c: b["cmds"].get(c, 0) - a["cmds"].get(c, 0) for c in names if c != "info"}
    return {"bytes": b["bytes"] - a["bytes"] - a["reply"], "cpu": b["cpu"] - a["cpu"],
            "usec": {c: b["usec"].get(c, 0) - a["usec"].get(c, 0) for c in cmds if cmds[c]},
            "cmds": {c: v for c, v in cmds.items() if v}}

pub = [delta(a, b) for a, b in zip(snaps["s0"], snaps["s1"])]
idle = [delta(a, b) for a, b in zip(snaps["s2"], snaps["s3"])]
def net(p, i):
    names = set(p["cmds"]) | set(i["cmds"])
    return {"bytes": p["bytes"] - i["bytes"] * scale, "cpu": p["cpu"] - i["cpu"] * scale,
            "usec": {c: p["usec"].get(c, 0) - i["usec"].get(c, 0) * scale for c in names},
            "cmds": {c: p["cmds"].get(c, 0) - i["cmds"].get(c, 0) * scale for c in names}}
nets = [net(p, i) for p, i in zip(pub, idle)]

with open(os.path.join(out, "logs", f"{tag}.client.json")) as fh:
    client = json.load(fh)
client = client[0] if isinstance(client, list) else client
published = client.get("events_published") or 0
lat = client.get("latency_us") or {}

def metrics(s):
    dl, ops = [], {}
    for k in range(1, n + 1):
        tot = 0
        p = os.path.join(raw, f"{tag}.{s}.pod{k}")
        if os.path.exists(p):
            for line in open(p, errors="replace"):
                if line.startswith("herald_events_delivered_total"):
                    tot += float(line.split()[-1])
                elif line.startswith("herald_redis_commands_total{"):
                    lab = line[line.index("{") + 1:line.index("}")]
                    op = dict(x.split("=", 1) for x in lab.split(",")).get("op", "?").strip('"')
                    ops[op] = ops.get(op, 0) + float(line.split()[-1])
        dl.append(tot)
    return dl, ops
d0, o0 = metrics("m0")
d1, o1 = metrics("m1")
delivered_per_pod = [int(b - a) for a, b in zip(d0, d1)]
herald_ops = {op: int(o1.get(op, 0) - o0.get(op, 0)) for op in set(o0) | set(o1)}
herald_ops = {k: v for k, v in herald_ops.items() if v}
other_expected = published * subs_other if kind == "all" else 0
other = delivered_per_pod[1:]
other_missing = sum(max(0, other_expected - d) for d in other) if n > 1 else None
other_extra = sum(max(0, d - other_expected) for d in other) if n > 1 else None

tot_bytes = sum(x["bytes"] for x in nets)
tot_cpu = sum(x["cpu"] for x in nets)
usec_by_name = {}
for x in nets:
    for c, v in x["usec"].items():
        usec_by_name[c] = usec_by_name.get(c, 0) + v
by_name = {}
for x in nets:
    for c, v in x["cmds"].items():
        by_name[c] = by_name.get(c, 0) + v
node_cmds = [sum(x["cmds"].values()) for x in nets]
tot_cmds = sum(node_cmds)
pe = lambda v: v / published if published else None
def podcpu(s):
    with open(os.path.join(raw, f"{tag}.{s}.cpu")) as fh:
        return [int(x) / tck for x in fh.read().split()]
c0, c1, c2, c3 = (podcpu(s) for s in ("s0", "s1", "s2", "s3"))
pods_cpu = sum(b - a for a, b in zip(c0, c1)) - sum(b - a for a, b in zip(c2, c3)) * scale
warnings = list(client.get("warnings") or [])
if published < events:
    warnings.append(f"only {published} of {events} events published")
if other_extra:
    warnings.append(f"pods 2..{n} wrote {other_extra} deliveries nobody there should have had")
r = {
    "label": label, "setup": setup, "partitions": int(parts) if parts else None, "pods": n,
    "kind": kind, "publish_pod": n, "subscribers_pod1": conns,
    "subscribers_other_pods": subs_other if n > 1 else 0,
    "events_published": published, "publish_errors": client.get("publish_errors"),
    "bytes_per_event": pe(tot_bytes), "commands_per_event": pe(tot_cmds),
    "cpu_us_per_event": pe(tot_cpu * 1e6),
    "pods_cpu_us_per_event": pe(pods_cpu * 1e6),
    "command_usec_per_event_by_name": {c: pe(v) for c, v in sorted(usec_by_name.items())},
    "commands_per_event_by_name": {c: pe(v) for c, v in sorted(by_name.items())},
    "node_command_share": [c / tot_cmds if tot_cmds else None for c in node_cmds],
    "node_bytes_per_event": [pe(x["bytes"]) for x in nets],
    "p50_ms": lat.get("p50") / 1000 if lat else None,
    "p99_ms": lat.get("p99") / 1000 if lat else None,
    "lost": client.get("lost"), "delivered": client.get("delivered"),
    "expected_deliveries": client.get("expected_deliveries"),
    "duplicates": client.get("duplicates"), "drained": client.get("drained"),
    "delivered_per_pod": delivered_per_pod, "other_pods_missing": other_missing,
    "herald_redis_commands_by_op": herald_ops,
    "window_publish_s": wp, "window_idle_s": wi,
    "raw_publish": pub, "raw_idle": idle,
    "idle_per_s": {"bytes": sum(i["bytes"] for i in idle) / wi,
                    "commands": sum(sum(i["cmds"].values()) for i in idle) / wi,
                    "cpu_ms": sum(i["cpu"] for i in idle) / wi * 1e3},
    "warnings": warnings,
}
with open(os.path.join(out, f"{tag}.json"), "w") as fh:
    json.dump(r, fh, indent=1)
path = os.path.join(out, "points.csv")
new = not os.path.exists(path)
with open(path, "a", newline="") as fh:
    w = csv.writer(fh)
    if new:
        w.writerow(["label", "setup", "partitions", "pods", "kind", "events", "bytes_per_event",
                    "commands_per_event", "cpu_us_per_event", "pods_cpu_us_per_event", "p50_ms", "p99_ms", "lost",
                    "other_pods_missing", "publish_errors", "node_command_share", "commands_by_name"])
    fmt = lambda x: "" if x is None else f"{x:.4g}" if isinstance(x, float) else x
    w.writerow([label, setup, r["partitions"] or "", n, kind, published, fmt(r["bytes_per_event"]),
                fmt(r["commands_per_event"]), fmt(r["cpu_us_per_event"]),
                fmt(r["pods_cpu_us_per_event"]), fmt(r["p50_ms"]),
                fmt(r["p99_ms"]), r["lost"], "" if other_missing is None else other_missing,
                r["publish_errors"], " ".join(f"{s:.3f}" for s in r["node_command_share"] if s is not None),
                " ".join(f"{c}={v:.3f}" for c, v in r["commands_per_event_by_name"].items() if v is not None and abs(v) >= 0.0005)])
print(f"scale.sh: {tag}: {r['bytes_per_event'] or 0:,.1f} B/event, {r['commands_per_event'] or 0:.2f} cmds/event, "
      f"{r['cpu_us_per_event'] or 0:.1f} µs Redis CPU/event, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
      f"lost {r['lost']}, other pods missing {other_missing}", file=sys.stderr)
EOF
}

# run_point LABEL BIN SETUP PARTS N
run_point() {
    local label=$1 bin=$2 setup=$3 parts=$4 n=$5 sname tag0 kind
    sname=$setup
    [[ $setup == single ]] || sname="cluster-part${parts:-1}"
    tag0="${label}__${sname}__p${n}"
    note "== $tag0"
    if [[ $setup == single ]]; then
        start_redis_single "$OUT/logs/$tag0" || { remark "$tag0: Redis did not start"; stop_point; return 0; }
    else
        start_redis_cluster "$OUT/logs/$tag0" || { remark "$tag0: Redis Cluster did not start"; stop_point; return 0; }
    fi
    start_pods "$n" "$bin" "$parts" "$OUT/logs/$tag0" || { remark "$tag0: pods did not start (logs/$tag0.pod*)"; stop_point; return 0; }
    start_holders "$n" "$OUT/logs/$tag0" || { remark "$tag0: background streams did not open"; stop_point; return 0; }
    sleep "$GAP"
    for kind in $KINDS; do
        run_kind "$kind" "${tag0}__$kind" "$label" "$sname" "$parts" "$n"
    done
    stop_point
}

for n in $PODS; do
    for setup in $SETUPS; do
        if [[ $setup == single ]]; then
            parts_list=-
        else
            parts_list=$PARTITIONS
        fi
        for parts in $parts_list; do
            # Binaries interleaved within a point, so they share the machine's moods.
            for i in "${!BINS[@]}"; do
                p=
                if [[ $setup == cluster ]]; then
                    if has_partitions "${BINS[$i]}"; then
                        p=$parts
                    elif [[ $parts != 1 ]]; then
                        [[ $n != "${PODS%% *}" ]] ||
                            remark "${LABELS[$i]}: its --help has no --partitions: Redis Cluster measured with 1 partition only (no flag passed)"
                        continue
                    fi
                fi
                run_point "${LABELS[$i]}" "${BINS[$i]}" "$setup" "$p" "$n"
            done
        done
    done
done

summarize
note "results in $OUT"
