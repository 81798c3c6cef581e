#!/usr/bin/env bash
# perf/cluster_memory.sh: memory per stream in cluster mode against embedded, told
# apart into what each stream costs and what a pod costs whatever it holds. For each
# size in SIZES, one embedded herald and one cluster pod (`--partitions 8`, on a
# private redis-server) each take that many streams of the rehearsal's layout
# (`loadtest rehearse`: users with 1-3 streams, 100 topics of Zipf sizes); RSS is
# read before the streams and, SETTLE seconds after they are all open, as the
# lowest of a 6 s sampling (`--heartbeat-interval 5s`: a cluster pod's registry
# heartbeat names every stream in one batch, held for a moment). The slope
# between two sizes is the cost of one more stream; the intercept, what the mode
# costs per process (in a cluster: the Redis connections, their buffers, scripts).
#
# Then, for CHURN streams (0: skip), flat after a storm? In each mode one pod
# takes CHURN streams while events are published (user 100/s, topic 5/s,
# broadcast 0.2/s; `--history-events 1000` and `--idempotency-window 5s`, both
# full before the first reading, so that what fills with time is not counted); RSS
# is read SETTLE s after they are open, then every user is disconnected (each
# stream ends; its client resumes with Last-Event-ID and gets a replay: the
# storm a restarted pod's streams make) and RSS is read again SETTLE s after
# every stream is back (`--heartbeat-interval 5s`: heartbeats pass meanwhile);
# then a second storm the same way. Same pod, same streams: what is left is what
# a storm left, and the second says whether storms add up.
#
#   perf/cluster_memory.sh                    # SIZES="4000 16000" SETTLE=10 CHURN=12500
#   HERALD=/path/herald perf/cluster_memory.sh
#
# Loopback only; every process is stopped by the EXIT trap; each load client is
# bounded by `timeout`. Output: $OUT/summary.md.
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"

SIZES=${SIZES:-4000 16000}
SETTLE=${SETTLE:-10}
CHURN=${CHURN:-12500}
OUT=${OUT:-$ROOT/perf/out/cluster-memory-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "cluster_memory.sh: $*" >&2; exit 1; }
command -v redis-server >/dev/null || die "redis-server is missing (apt-get install -y redis-server)"
mkdir -p "$OUT/logs"
herald_and_loadtest "$ROOT" "$TARGET" || die "no herald or loadtest build (see above)"

POD= CLIENT= PUB=
trap 'stop_bounded ${PUB:+"$PUB"} ${CLIENT:+"$CLIENT"} ${POD:+"$POD"}; stop_redis_nodes' EXIT
trap 'exit 130' INT TERM

# start_pod MODE LOG NAME [ARGS...]: one pod (a private redis-server for a cluster
# pod); sets POD and ADDR.
start_pod() {
    local mode=$1 log=$2 name=$3 args=() line
    shift 3
    if [[ $mode == cluster ]]; then
        local port
        port=$(free_port)
        redis_node "$port" "$log.redis"
        args=(--redis "redis://127.0.0.1:$port" --pod-id "mem-$name" --partitions 8)
    fi
    "$HERALD" --listen 127.0.0.1:0 --shards 1 --log warn --grace-period 1s "${args[@]}" "$@" \
        >"$log.out" 2>"$log.err" &
    POD=$!
    line=$(wait_for_line "$log.out" 'listening on http://' "$POD") || die "$mode pod did not start"
    ADDR=$(sed -E 's|.*http://([^ ]+).*|\1|' <<<"$line")
    sleep 1
}

# open_streams LOG N SECONDS: a rehearse client of N streams on ADDR for SECONDS;
# returns once all are open.
open_streams() {
    local log=$1 n=$2 secs=$3 open
    timeout --kill-after=5 $((secs + 20)) "$LOADTEST" rehearse --pods "http://$ADDR" --streams "$n" \
        --topics 100 --seed 1 --part 0 --parts 1 --snapshot "$log.jsonl" --duration "${secs}s" \
        >"$log.client" 2>&1 &
    CLIENT=$!
    open=$(wait_open "$log.jsonl" "$n" 60)
    ((open >= n)) || die "$log: only $open of $n streams opened"
}

stop_all() {
    stop_bounded ${PUB:+"$PUB"} ${CLIENT:+"$CLIENT"} ${POD:+"$POD"}
    CLIENT= POD= PUB=
    stop_redis_nodes
}

# measure MODE N: prints "RSS before, RSS after" (KB) of one pod holding N streams.
measure() {
    local mode=$1 n=$2 log=$OUT/logs/$1-$2 rss0
    # Run in a subshell (`< <(measure …)`), which the EXIT trap above does not
    # cover: its own stops what it started, also when it dies.
    trap stop_all EXIT
    start_pod "$mode" "$log" "$n" --heartbeat-interval 5s
    rss0=$(rss_kb "$POD")
    open_streams "$log" "$n" 100
    sleep "$SETTLE"
    echo "$rss0 $(rss_floor "$POD" 6)"
    stop_all
}

# storm LOG N ROUND: every stream of the pod at ADDR disconnected (each user's,
# r0.. r<N>: more than there are users, listed, then each of its connections
# ended; one keep-alive connection); returns once all N are back and open.
storm() {
    local log=$1 n=$2 round=$3 back open
    python3 - "$ADDR" "$n" >"$log.disconnect-$round" 2>&1 <<'PY'
import http.client, json, sys
host, port = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=10)
def call(method, path):
    c.request(method, path)
    r = c.getresponse()
    return r.read()
ended = 0
for u in range(int(sys.argv[2])):
    conns = json.loads(call("GET", f"/api/user/sse/connections?userId=r{u}"))["connections"]
    for conn in conns:
        body = call("POST", f"/api/user/sse/disconnect?userId=r{u}&connectionId={conn['connectionId']}")
        ended += b'"disconnected":true' in body
print(f"streams disconnected: {ended}")
PY
    back=$(wait_counter "$log.jsonl" reopened $((n * round)) 90)
    ((back >= n * round)) || die "storm $round on $log: only $back of $((n * round)) reopened"
    open=$(wait_open "$log.jsonl" "$n" 30)
    ((open >= n)) || die "storm $round on $log: only $open of $n streams open after it"
}

# churn MODE N: prints "RSS before the streams, with N open, after a storm, after a
# second storm" (KB).
churn() {
    local mode=$1 n=$2 log=$OUT/logs/churn-$1-$2 rss0 rss1 rss2
    trap stop_all EXIT
    start_pod "$mode" "$log" "churn-$n" --history-events 1000 --heartbeat-interval 5s \
        --idempotency-window 5s
    rss0=$(rss_kb "$POD")
    timeout --kill-after=5 250 "$LOADTEST" rehearse-pub --pods "http://$ADDR" --streams "$n" \
        --topics 100 --seed 1 --user-rate 100 --topic-rate 5 --bcast-rate 0.2 --duration 230s \
        --retry-for 5s --snapshot "$log.pub.jsonl" --final "$log.pub-final.json" \
        >"$log.pub" 2>&1 &
    PUB=$!
    open_streams "$log" "$n" 220
    sleep "$SETTLE"
    rss1=$(rss_floor "$POD" 6)
    storm "$log" "$n" 1
    sleep "$SETTLE"
    rss2=$(rss_floor "$POD" 6)
    storm "$log" "$n" 2
    sleep "$SETTLE"
    echo "$rss0 $rss1 $rss2 $(rss_floor "$POD" 6)"
    stop_all
}

{
    echo "# Memory per stream, cluster (--partitions 8) against embedded"
    echo
    echo "herald: $("$HERALD" --version 2>/dev/null || echo "$HERALD"); RSS $SETTLE s after every" \
        "stream opened (the lowest of 6 s of samples)."
    echo
    echo "| streams | embedded growth (KB) | cluster growth (KB) | cluster − embedded (KB) | per stream: embedded / cluster (B) |"
    echo "|---:|---:|---:|---:|---|"
} >"$OUT/summary.md"
declare -A GROW
for n in $SIZES; do
    for mode in embedded cluster; do
        read -r a b < <(measure "$mode" "$n")
        GROW[$mode-$n]=$((b - a))
    done
    e=${GROW[embedded-$n]} c=${GROW[cluster-$n]}
    echo "| $n | $e | $c | $((c - e)) | $((e * 1024 / n)) / $((c * 1024 / n)) |" >>"$OUT/summary.md"
done
read -r lo hi < <(tr ' ' '\n' <<<"$SIZES" | sort -n | awk 'NR == 1 { l = $1 } { h = $1 } END { print l, h }')
if ((hi > lo)); then
    {
        echo
        echo "One more stream ($lo -> $hi streams): embedded" \
            "$(((GROW[embedded-$hi] - GROW[embedded-$lo]) * 1024 / (hi - lo))) B," \
            "cluster $(((GROW[cluster-$hi] - GROW[cluster-$lo]) * 1024 / (hi - lo))) B."
    } >>"$OUT/summary.md"
fi
if ((CHURN > 0)); then
    {
        echo
        echo "Flat after a storm ($CHURN streams, every user disconnected and resumed, events" \
            "published throughout; RSS $SETTLE s after every stream was back, the lowest of 6 s):"
        echo
        echo "| mode | per stream, open (B) | after a storm (B) | after a second (B) | left by the first / the second (B per stream) |"
        echo "|---|---:|---:|---:|---|"
    } >>"$OUT/summary.md"
    for mode in embedded cluster; do
        read -r a b c d < <(churn "$mode" "$CHURN")
        echo "| $mode | $(((b - a) * 1024 / CHURN)) | $(((c - a) * 1024 / CHURN)) | $(((d - a) * 1024 / CHURN)) |" \
            "$(((c - b) * 1024 / CHURN)) / $(((d - c) * 1024 / CHURN)) |" >>"$OUT/summary.md"
    done
fi
cat "$OUT/summary.md"
