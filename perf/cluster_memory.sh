#!/usr/bin/env bash
# perf/cluster_memory.sh: memory per stream in cluster mode against embedded, told
# apart into what each stream costs and what a pod costs whatever it holds. For each
# size in SIZES, one embedded herald and one cluster pod (`--partitions 8`, on a
# private redis-server) each take that many streams of the rehearsal's layout
# (`loadtest rehearse`: users with 1-3 streams, 100 topics of Zipf sizes); RSS is
# read before the streams and SETTLE seconds after they are all open. The slope
# between two sizes is the cost of one more stream; the intercept, what the mode
# costs per process (in a cluster: the Redis connections, their buffers, scripts).
#
#   perf/cluster_memory.sh                    # SIZES="4000 16000" SETTLE=10
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
OUT=${OUT:-$ROOT/perf/out/cluster-memory-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "cluster_memory.sh: $*" >&2; exit 1; }
command -v redis-server >/dev/null || die "redis-server is missing (apt-get install -y redis-server)"
mkdir -p "$OUT/logs"
herald_and_loadtest "$ROOT" "$TARGET" || die "no herald or loadtest build (see above)"

POD= CLIENT=
trap 'stop_bounded ${CLIENT:+"$CLIENT"} ${POD:+"$POD"}; stop_redis_nodes' EXIT
trap 'exit 130' INT TERM

# measure MODE N: prints "RSS before, RSS after" (KB) of one pod holding N streams.
measure() {
    local mode=$1 n=$2 log=$OUT/logs/$1-$2 args=() line addr rss0 open
    if [[ $mode == cluster ]]; then
        local port
        port=$(free_port)
        redis_node "$port" "$log.redis"
        args=(--redis "redis://127.0.0.1:$port" --pod-id "mem-$n" --partitions 8)
    fi
    "$HERALD" --listen 127.0.0.1:0 --shards 1 --log warn --grace-period 1s "${args[@]}" \
        >"$log.out" 2>"$log.err" &
    POD=$!
    line=$(wait_for_line "$log.out" 'listening on http://' "$POD") || die "$mode pod did not start"
    addr=$(sed -E 's|.*http://([^ ]+).*|\1|' <<<"$line")
    sleep 1
    rss0=$(rss_kb "$POD")
    timeout --kill-after=5 120 "$LOADTEST" rehearse --pods "http://$addr" --streams "$n" \
        --topics 100 --seed 1 --part 0 --parts 1 --snapshot "$log.jsonl" --duration 100s \
        >"$log.client" 2>&1 &
    CLIENT=$!
    open=$(wait_open "$log.jsonl" "$n" 60)
    ((open >= n)) || die "$mode: only $open of $n streams opened"
    sleep "$SETTLE"
    echo "$rss0 $(rss_kb "$POD")"
    stop_bounded "$CLIENT" "$POD"
    CLIENT= POD=
    stop_redis_nodes
}

{
    echo "# Memory per stream, cluster (--partitions 8) against embedded"
    echo
    echo "herald: $("$HERALD" --version 2>/dev/null || echo "$HERALD"); RSS $SETTLE s after every stream opened."
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
cat "$OUT/summary.md"
