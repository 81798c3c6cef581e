# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are read by the scripts that source it
# Start and stop the servers compared by perf/compare.sh. Source this file; every
# start_* function sets SERVER_PID (the process to measure), SERVER_STOP (the PIDs
# to signal on stop, in order), SERVER_ADDR (127.0.0.1:PORT) and the load-test URLs
# SUB_URL, PUB_URL, PUB_BODY. Servers are pinned with `taskset -c $SERVER_CPU`.
#
# Needs: bash, taskset, pgrep, nginx with libnginx-mod-nchan (for nchan).

SERVER_CPU=${SERVER_CPU:-0}
START_TIMEOUT=${START_TIMEOUT:-15}   # seconds a server gets to come up
STOP_TIMEOUT=${STOP_TIMEOUT:-15}     # seconds a server gets to exit on SIGTERM
PERF_DIR=${PERF_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}

SERVER_PID=
SERVER_STOP=
SERVER_ADDR=
SERVER_TMP=
SUB_URL=
PUB_URL=
PUB_BODY=

# The load client's PID while it runs (compare.sh sets it), for stop_all.
CLIENT_PID=

# wait_for_line FILE PATTERN PID: waits until FILE has a line matching PATTERN
# (prints it), or PID dies, or START_TIMEOUT passes.
wait_for_line() {
    local file=$1 pattern=$2 pid=$3 deadline=$((SECONDS + START_TIMEOUT)) line
    while ((SECONDS < deadline)); do
        line=$(grep -m1 -E "$pattern" "$file" 2>/dev/null || true)
        if [[ -n $line ]]; then
            printf '%s\n' "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "server $pid exited before it was ready" >&2; return 1; }
        sleep 0.05
    done
    echo "server $pid not ready after ${START_TIMEOUT}s" >&2
    return 1
}

# wait_for_port PORT PID: waits until 127.0.0.1:PORT accepts a connection.
wait_for_port() {
    local port=$1 pid=$2 deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "server $pid exited before it was ready" >&2; return 1; }
        sleep 0.05
    done
    echo "port $port not answering after ${START_TIMEOUT}s" >&2
    return 1
}

# redis_snap PORT: "commands bytes_out bytes_in cpu_seconds" of the Redis on
# 127.0.0.1:PORT (INFO itself left out of the commands).
redis_snap() {
    local info cmds
    info=$(redis-cli -h 127.0.0.1 -p "$1" INFO all | tr -d '\r')
    cmds=$(awk -F'[=,:]' '/^cmdstat_/ && $1 != "cmdstat_info" { s += $3 } END { print s + 0 }' <<<"$info")
    awk -F: -v c="$cmds" '
        /^total_net_output_bytes:/ { o = $2 } /^total_net_input_bytes:/ { i = $2 }
        /^used_cpu_sys:/ { s = $2 } /^used_cpu_user:/ { u = $2 }
        END { printf "%d %d %d %.6f\n", c, o, i, s + u }' <<<"$info"
}

# herald_and_loadtest ROOT TARGET: sets HERALD (built in release unless given)
# and LOADTEST (next to it, or in TARGET/release); returns 1 when one is missing.
herald_and_loadtest() {
    local root=$1 target=$2
    if [[ -z ${HERALD:-} ]]; then
        echo "building herald and loadtest (release)" >&2
        (cd "$root" && cargo build --release -q -p herald -p loadtest) || return 1
        HERALD=$target/release/herald
    fi
    LOADTEST=${LOADTEST:-$(dirname "$HERALD")/loadtest}
    [[ -x $LOADTEST ]] || LOADTEST=$target/release/loadtest
    [[ -x $LOADTEST ]]
}

# free_port: prints a TCP port on 127.0.0.1 that is free right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# free_ports N: N distinct TCP ports on 127.0.0.1 that are free right now.
free_ports() {
    python3 -c '
import socket, sys
ss = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ss.append(s)
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}

# stop_bounded PID...: SIGTERM to each and its children (a `timeout` wrapper passes
# it on), SIGKILL to what is left after STOP_TIMEOUT; reaps them.
stop_bounded() {
    local pid pids=() deadline alive
    for pid in "$@"; do
        pids+=("$pid")
        # shellcheck disable=SC2207
        pids+=($(pgrep -P "$pid" || true))
    done
    ((${#pids[@]})) || return 0
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ((SECONDS < deadline)); do
        alive=
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ -n $alive ]] || break
        sleep 0.05
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# rss_kb PID: the process's resident memory in KB (0 when it is gone).
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# rss_floor PID SECONDS: the lowest RSS (KB) of PID sampled every 0.25 s for
# SECONDS: what it holds between its periodic work (a cluster pod's registry
# heartbeat builds, for a moment, a batch naming every stream it holds).
rss_floor() {
    local pid=$1 end=$((SECONDS + $2)) low v
    low=$(rss_kb "$pid")
    while ((SECONDS < end)); do
        sleep 0.25
        v=$(rss_kb "$pid")
        ((v > 0 && v < low)) && low=$v
    done
    echo "$low"
}

# wait_open FILE N SECONDS: waits (at most SECONDS) until the last snapshot a
# `loadtest rehearse` wrote to FILE counts N open streams; prints the last count.
wait_open() {
    wait_counter "$1" open "$2" "$3"
}

# wait_counter FILE NAME N SECONDS: the same for any of the snapshot's counters
# (`reopened`: streams opened again after they ended).
wait_counter() {
    local file=$1 name=$2 n=$3 deadline=$((SECONDS + $4)) v=0
    while ((SECONDS < deadline)); do
        v=$(tail -n 1 "$file" 2>/dev/null |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["counters"][sys.argv[1]])' "$name" 2>/dev/null || echo 0)
        ((v >= n)) && break
        sleep 1
    done
    echo "$v"
}

# Private, unpersisted Redis nodes started by redis_node: their PIDs, ports and
# temp dirs (stop_redis_nodes ends them). PIN_REDIS: a command prefix (taskset).
RNODE_PIDS=() RNODE_PORTS=() RDIRS=() PIN_REDIS=()

# redis_node PORT LOG [ARGS...]: one private redis-server on 127.0.0.1:PORT.
redis_node() {
    local port=$1 log=$2 dir
    shift 2
    dir=$(mktemp -d /tmp/herald-perf-redis.XXXXXX)
    RDIRS+=("$dir")
    ${PIN_REDIS[@]+"${PIN_REDIS[@]}"} redis-server --port "$port" --bind 127.0.0.1 --save '' \
        --appendonly no --dir "$dir" "$@" >"$log" 2>&1 &
    RNODE_PIDS+=($!)
    RNODE_PORTS+=("$port")
    wait_for_port "$port" "$!"
}

# stop_redis_nodes: SIGKILL every node (nothing to flush), remove their dirs.
stop_redis_nodes() {
    local p d
    for p in "${RNODE_PIDS[@]}"; do [[ $p == 0 ]] || kill -KILL "$p" 2>/dev/null || true; done
    for p in "${RNODE_PIDS[@]}"; do [[ $p == 0 ]] || wait "$p" 2>/dev/null || true; done
    for d in "${RDIRS[@]}"; do rm -rf "$d"; done
    RNODE_PIDS=() RNODE_PORTS=() RDIRS=()
}

# redis_cluster LOG MASTERS REPLICAS NODE_TIMEOUT_MS [ARGS...]: a Redis Cluster of
# MASTERS masters with REPLICAS replicas each (cluster bus ports free too); waits
# (60 s at most) until every node says cluster_state:ok and every replica's link is
# up; sets REDIS_URL (redis-cluster://, every node). Returns 1 on failure.
redis_cluster() {
    local log=$1 masters=$2 replicas=$3 timeout_ms=$4 n ports k deadline ok up sep addrs=()
    shift 4
    n=$((masters * (1 + replicas)))
    read -r -a ports <<<"$(free_ports $((2 * n)))"
    for ((k = 0; k < n; k++)); do
        redis_node "${ports[$k]}" "$log.redis$((k + 1)).log" --cluster-enabled yes \
            --cluster-port "${ports[$((k + n))]}" --cluster-config-file nodes.conf \
            --cluster-node-timeout "$timeout_ms" "$@"
        addrs+=("127.0.0.1:${ports[$k]}")
    done
    timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" \
        --cluster-yes >"$log.cluster-create.log" 2>&1 ||
        { echo "redis-cli --cluster create failed (see $log.cluster-create.log)" >&2; return 1; }
    deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        ok=0 up=0
        for ((k = 0; k < n; k++)); do
            timeout 5 redis-cli -h 127.0.0.1 -p "${ports[$k]}" cluster info 2>/dev/null |
                grep -q '^cluster_state:ok' && ok=$((ok + 1))
            ((replicas == 0)) || ! timeout 5 redis-cli -h 127.0.0.1 -p "${ports[$k]}" info replication \
                2>/dev/null | grep -q '^master_link_status:up' || up=$((up + 1))
        done
        ((ok == n && up == masters * replicas)) && break
        sleep 0.2
    done
    ((ok == n && up == masters * replicas)) ||
        { echo "Redis Cluster not ok after 60 s ($ok of $n ok, $up replicas linked)" >&2; return 1; }
    REDIS_URL="redis-cluster://${addrs[0]}" sep='?'
    for ((k = 1; k < n; k++)); do
        REDIS_URL+="${sep}node=${addrs[$k]}" sep='&'
    done
}

# started OUT: the server just started in the background prints
# "... listening on http://ADDR" on OUT; sets SERVER_PID, SERVER_STOP and
# SERVER_ADDR once it does (fails if it exits first).
started() {
    local line
    SERVER_PID=$!
    SERVER_STOP=$SERVER_PID
    line=$(wait_for_line "$1" 'listening on https?://' "$SERVER_PID") || return 1
    SERVER_ADDR=$(sed -E 's|.*https?://([^ ]+).*|\1|' <<<"$line")
}

# start_herald BIN LOG [ARGS...]: herald with one shard, on a free loopback
# port, with any more flags after LOG (e.g. --redis URL).
start_herald() {
    local bin=$1 log=$2
    taskset -c "$SERVER_CPU" "$bin" --listen 127.0.0.1:0 --shards 1 --grace-period 1s --log warn "${@:3}" >"$log.out" 2>"$log" &
    started "$log.out" || return 1
    SUB_URL="http://$SERVER_ADDR/api/user/sse/connect?userId=u{i}"
    PUB_URL="http://$SERVER_ADDR/api/broadcast"
    PUB_BODY='{"data":"{payload}","target":"all"}'
}

# start_floor BIN COALESCE LOG: the floor, one write per event (1) or coalescing.
start_floor() {
    local bin=$1 coalesce=$2 log=$3
    taskset -c "$SERVER_CPU" "$bin" --listen 127.0.0.1:0 --coalesce "$coalesce" >"$log.out" 2>"$log" &
    started "$log.out" || return 1
    local scheme=http
    [[ -z ${NCHAN_TLS_CERT:-} ]] || scheme=https
    SUB_URL="$scheme://$SERVER_ADDR/sub/{i}"
    PUB_URL="$scheme://$SERVER_ADDR/pub"
    PUB_BODY='{payload}'
}

# start_axum BIN LOG: axum-peer (axum + tokio::sync::broadcast), current-thread
# runtime (AXUM_THREADS, default 1: a multi-thread runtime with that many workers
# above 1).
start_axum() {
    local bin=$1 log=$2
    taskset -c "$SERVER_CPU" "$bin" --listen 127.0.0.1:0 --threads "${AXUM_THREADS:-1}" >"$log.out" 2>"$log" &
    started "$log.out" || return 1
    local scheme=http
    [[ -z ${NCHAN_TLS_CERT:-} ]] || scheme=https
    SUB_URL="$scheme://$SERVER_ADDR/sub/{i}"
    PUB_URL="$scheme://$SERVER_ADDR/pub"
    PUB_BODY='{payload}'
}

# start_nchan LOG: nginx + nchan from perf/nchan.conf.in (the reference peer's
# configuration, unchanged) in a fresh temp dir; SERVER_PID is the worker.
start_nchan() {
    local log=$1 port dir master worker deadline
    command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install -y nginx libnginx-mod-nchan)" >&2; return 1; }
    [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]] || { echo "libnginx-mod-nchan is not installed" >&2; return 1; }
    dir=$(mktemp -d /tmp/herald-perf-nchan.XXXXXX)
    SERVER_TMP=$dir
    port=$(free_port)
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" "$PERF_DIR/nchan.conf.in" >"$dir/nginx.conf"
    # NCHAN_TLS_CERT and NCHAN_TLS_KEY (PEM files): HTTPS with HTTP/2 on the same port,
    # TLS 1.3 offered (Debian's nginx 1.22 offers TLS 1.2 only unless told).
    if [[ -n ${NCHAN_TLS_CERT:-} ]]; then
        sed -i "s|listen 127.0.0.1:$port backlog=4096;|listen 127.0.0.1:$port ssl http2 backlog=4096; ssl_certificate $NCHAN_TLS_CERT; ssl_certificate_key $NCHAN_TLS_KEY; ssl_protocols TLSv1.2 TLSv1.3;|" "$dir/nginx.conf"
    fi
    # The worker runs as nobody when nginx starts as root: let it reach its files.
    chmod 755 "$dir"
    taskset -c "$SERVER_CPU" nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" >"$log.out" 2>"$log" &
    master=$!
    SERVER_STOP=$master
    wait_for_port "$port" "$master" || { cat "$dir/error.log" >&2 2>/dev/null; return 1; }
    deadline=$((SECONDS + START_TIMEOUT))
    worker=
    while [[ -z $worker ]] && ((SECONDS < deadline)); do
        worker=$(pgrep -P "$master" | head -n1 || true)
        [[ -n $worker ]] || sleep 0.05
    done
    [[ -n $worker ]] || { echo "no nginx worker under master $master" >&2; return 1; }
    SERVER_PID=$worker
    SERVER_STOP="$master $worker"
    SERVER_ADDR=127.0.0.1:$port
    local scheme=http
    [[ -z ${NCHAN_TLS_CERT:-} ]] || scheme=https
    SUB_URL="$scheme://$SERVER_ADDR/sub/{i}"
    PUB_URL="$scheme://$SERVER_ADDR/pub"
    PUB_BODY='{payload}'
}

# stop_server: SIGTERM to the server's processes (and their children, e.g. an
# nginx worker), SIGKILL to whatever is left after STOP_TIMEOUT.
stop_server() {
    local pid deadline alive pids
    [[ -n $SERVER_STOP ]] || return 0
    pids=$SERVER_STOP
    for pid in $SERVER_STOP; do pids+=" $(pgrep -P "$pid" | tr '\n' ' ' || true)"; done
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ((SECONDS < deadline)); do
        alive=
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ -n $alive ]] || break
        sleep 0.05
    done
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in $SERVER_STOP; do wait "$pid" 2>/dev/null || true; done
    [[ -z $SERVER_TMP ]] || rm -rf "$SERVER_TMP"
    SERVER_STOP='' SERVER_PID='' SERVER_TMP=''
}

# build_herald_at ROOT COMMIT DEST: herald as it was at COMMIT (any rev of the
# repository at ROOT), built in a temp `git worktree` (PREV_WORKTREE, removed by
# remove_prev_worktree) with its own target dir PREV_TARGET (kept between runs,
# so only the first build is slow), copied to DEST. Only herald is built there:
# the worktree's workspace member list is cut to ["."] (members that commit does
# not have, loadtest or perf/floor, would stop cargo). Returns 2 when COMMIT has
# no herald, 1 when it does not build.
PREV_TARGET=${PREV_TARGET:-/tmp/herald-perf-prev-target}
CARGO_TIMEOUT=${CARGO_TIMEOUT:-1800}
PREV_WORKTREE=
PREV_ROOT=
build_herald_at() {
    local root=$1 rev=$2 dest=$3 base
    if ! base=$(git -C "$root" rev-parse --verify -q "$rev^{commit}") ||
        ! git -C "$root" cat-file -e "$base:src/main.rs" 2>/dev/null ||
        ! git -C "$root" show "$base:Cargo.toml" 2>/dev/null | grep -q '^name = "herald"'; then
        return 2
    fi
    echo "== building herald at $rev ($(git -C "$root" rev-parse --short "$base")) in a worktree, target $PREV_TARGET" >&2
    remove_prev_worktree
    PREV_ROOT=$root
    PREV_WORKTREE=$(mktemp -d /tmp/herald-perf-prev.XXXXXX)
    git -C "$root" worktree add --detach -q "$PREV_WORKTREE/tree" "$base" || return 1
    perl -0pi -e 's/^members\s*=\s*\[[^\]]*\]/members = ["."]/m' "$PREV_WORKTREE/tree/Cargo.toml"
    (cd "$PREV_WORKTREE/tree" && CARGO_TARGET_DIR=$PREV_TARGET timeout "$CARGO_TIMEOUT" \
        cargo build --release -q --bin herald) || return 1
    cp "$PREV_TARGET/release/herald" "$dest"
}

# remove_prev_worktree: removes build_herald_at's worktree (for an EXIT trap).
remove_prev_worktree() {
    [[ -n $PREV_WORKTREE ]] || return 0
    git -C "$PREV_ROOT" worktree remove --force "$PREV_WORKTREE/tree" >/dev/null 2>&1 || true
    rm -rf "$PREV_WORKTREE"
    git -C "$PREV_ROOT" worktree prune >/dev/null 2>&1 || true
    PREV_WORKTREE=
}

# stop_all: for an EXIT trap; stops the load client (and its children) and the
# current server.
stop_all() {
    local child
    if [[ -n $CLIENT_PID ]] && kill -0 "$CLIENT_PID" 2>/dev/null; then
        for child in $(pgrep -P "$CLIENT_PID" || true); do kill -KILL "$child" 2>/dev/null || true; done
        kill -KILL "$CLIENT_PID" 2>/dev/null || true
        wait "$CLIENT_PID" 2>/dev/null || true
    fi
    CLIENT_PID=
    stop_server
}
