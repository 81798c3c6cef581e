#!/usr/bin/env bash
# perf/compare.sh: herald, the previous herald build, nginx+nchan, an axum peer
# and the floor, side by side, under the same load client, in one run. See
# perf/README.md.
#
#   perf/compare.sh                 # full: 6 servers x 12 points x 3 runs (~45 min)
#   QUICK=1 perf/compare.sh         # 2 s windows, 1 run (~7 min)
#   SERVERS="herald floor" POINTS="throughput" RUNS=5 perf/compare.sh
#
# Results: perf/out/<date>/<point>__<server>__r<k>.json (the load client's JSON),
# logs/ (server and client output), summary.md (medians and spreads).
#
# Environment (defaults in brackets):
#   QUICK [0]            1: DURATION=2s, IDLE_DURATION=2s, RUNS=1
#   RUNS [3]             runs per server and point, fresh server process per run
#   DURATION [10s]       publish window of every point but idle
#   IDLE_DURATION [5s]   how long the idle connections are held
#   SERVERS              [herald herald-prev nchan axum floor floor16]; also
#                        herald-tls, herald-prev-tls, nchan-tls: the same servers
#                        over HTTPS (a self-signed P-256 certificate made for the run);
#                        herald-h2, herald-prev-h2, nchan-h2: over HTTPS with the subscribers on
#                        HTTP/2, H2_STREAMS [10] streams per connection
#   POINTS               [idle low mid throughput burst million churn pub1 pub4 pub16 batch16 pubonly]
#                        (also: pubwrk, publishes only with wrk as the client; needs wrk)
#   IDLE_CONNS [10000] LOW_CONNS [1000] LOW_RATE [25] MID_CONNS [10000] MID_RATE [5]
#   TP_CONNS [10000] (throughput, burst, million, pub1/4/16, batch16) BURST_PUBLISHERS [8]
#   MILLION_RATE [100] MILLION_PUBLISHERS [16]  (10k x 100/s = 1,000,000 deliveries/s offered)
#   PUB_BATCH [16] (batch16: events per request; herald only)
#   PUBONLY_PUBLISHERS [16] (pubonly, pubwrk: keep-alive publishers, no subscriber)
#   CHURN_CONCURRENCY [64] PAYLOAD_BYTES [100]
#   HERALD_BASE [HEAD~1] the commit built as herald-prev
#   SERVER_CPU [0] CLIENT_CPU [1]   taskset CPUs of the server and the load client
#   LOADTEST_THREADS [1] load client threads (all on CLIENT_CPU)
#   OUT [perf/out/<date>]
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    RUNS=${RUNS:-1}
    DURATION=${DURATION:-2s}
    IDLE_DURATION=${IDLE_DURATION:-2s}
else
    RUNS=${RUNS:-3}
    DURATION=${DURATION:-10s}
    IDLE_DURATION=${IDLE_DURATION:-5s}
fi
SERVERS=${SERVERS:-herald herald-prev nchan axum floor floor16}
POINTS=${POINTS:-idle low mid throughput burst million churn pub1 pub4 pub16 batch16 pubonly}
MILLION_RATE=${MILLION_RATE:-100}
MILLION_PUBLISHERS=${MILLION_PUBLISHERS:-16}
IDLE_CONNS=${IDLE_CONNS:-10000}
LOW_CONNS=${LOW_CONNS:-1000}
LOW_RATE=${LOW_RATE:-25}
MID_CONNS=${MID_CONNS:-10000}
MID_RATE=${MID_RATE:-5}
TP_CONNS=${TP_CONNS:-10000}
BURST_PUBLISHERS=${BURST_PUBLISHERS:-8}
PUB_BATCH=${PUB_BATCH:-16}
PUBONLY_PUBLISHERS=${PUBONLY_PUBLISHERS:-16}
CHURN_CONCURRENCY=${CHURN_CONCURRENCY:-64}
PAYLOAD_BYTES=${PAYLOAD_BYTES:-100}
H2_STREAMS=${H2_STREAMS:-10}
HERALD_BASE=${HERALD_BASE:-HEAD~1}
CLIENT_CPU=${CLIENT_CPU:-1}
LOADTEST_THREADS=${LOADTEST_THREADS:-1}
OUT=${OUT:-$PERF_DIR/out/$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "compare.sh: $*" >&2; exit 1; }
note() { echo "== $*" >&2; }

# seconds SPEC: "10s", "500ms", "2m", "10" -> whole seconds, rounded up
seconds() {
    local v=$1
    case $v in
        *ms) echo $(((${v%ms} + 999) / 1000)) ;;
        *s) echo "${v%s}" ;;
        *m) echo $((${v%m} * 60)) ;;
        *) echo "$v" ;;
    esac
}

for v in RUNS H2_STREAMS IDLE_CONNS LOW_CONNS LOW_RATE MID_CONNS MID_RATE TP_CONNS BURST_PUBLISHERS PUB_BATCH PUBONLY_PUBLISHERS CHURN_CONCURRENCY PAYLOAD_BYTES LOADTEST_THREADS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
((RUNS >= 1 && RUNS <= 20)) || die "RUNS must be within 1..20"
for p in $POINTS; do
    case $p in idle | low | mid | throughput | burst | million | churn | pub1 | pub4 | pub16 | batch16 | pubonly | pubwrk) ;;
        *) die "unknown point '$p'" ;;
    esac
done
for s in $SERVERS; do
    case $s in herald | herald-prev | nchan | axum | floor | floor16 | herald-tls | herald-prev-tls | nchan-tls | herald-h2 | herald-prev-h2 | nchan-h2) ;; *) die "unknown server '$s'" ;; esac
done
((PUB_BATCH >= 2 && PUB_BATCH <= 1000)) || die "PUB_BATCH must be within 2..1000 (herald's batch limit)"
((PUBONLY_PUBLISHERS >= 1 && PUBONLY_PUBLISHERS <= 4096)) || die "PUBONLY_PUBLISHERS must be within 1..4096"
command -v taskset >/dev/null || die "taskset is missing (util-linux)"
[[ " $POINTS " != *" pubwrk "* ]] || command -v wrk >/dev/null || die "pubwrk needs wrk (apt-get install -y wrk)"
command -v python3 >/dev/null || die "python3 is missing"
(($(nproc) >= 2)) || note "only $(nproc) CPU: server and client will share it"

cleanup() {
    local rc=$?
    stop_all
    remove_prev_worktree
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$OUT/logs" "$OUT/bin"
note "results in $OUT"

# ---- build ------------------------------------------------------------------
crates=(herald floor loadtest)
[[ " $SERVERS " != *" axum "* ]] || crates+=(axum-peer)
build_args=()
for c in "${crates[@]}"; do build_args+=(-p "$c"); done
note "building ${crates[*]} (release)"
(cd "$ROOT" && timeout "$CARGO_TIMEOUT" cargo build --release -q "${build_args[@]}") ||
    die "cargo build failed"
# Copies, so that a rebuild while this runs does not change what is measured.
for c in "${crates[@]}"; do cp "$TARGET/release/$c" "$OUT/bin/"; done
{
    echo "herald: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml || echo '+dirty')"
} >"$OUT/versions.txt"

PREV_BATCH=
if [[ " $SERVERS " == *" herald-prev"* ]]; then
    prev_ok=
    set +e
    build_herald_at "$ROOT" "$HERALD_BASE" "$OUT/bin/herald-prev"
    rc=$?
    set -e
    if ((rc == 0)); then
        base=$(git -C "$ROOT" rev-parse --verify -q "$HERALD_BASE^{commit}")
        echo "herald-prev: $(git -C "$ROOT" rev-parse --short "$base") ($HERALD_BASE)" >>"$OUT/versions.txt"
        prev_ok=1
        # Publish batches (a JSON array body) came with f97a0e2.
        if [[ $(git -C "$ROOT" show "$base:src/http/publish.rs" 2>/dev/null) == *MAX_BATCH* ]]; then
            PREV_BATCH=1
        fi
    elif ((rc == 2)); then
        note "$HERALD_BASE has no herald: herald-prev skipped"
    else
        note "herald at $HERALD_BASE does not build: herald-prev skipped"
    fi
    if [[ -z $prev_ok ]]; then
        SERVERS=$(tr ' ' '\n' <<<"$SERVERS" | grep -vxE 'herald-prev(-tls|-h2)?' | tr '\n' ' ')
        echo "herald-prev: skipped ($HERALD_BASE has no buildable herald)" >>"$OUT/versions.txt"
    fi
fi
if [[ " $SERVERS " == *" nchan"* ]]; then
    if command -v nginx >/dev/null && [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]]; then
        echo "nchan: $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo '?'), $(nginx -v 2>&1)" >>"$OUT/versions.txt"
    else
        note "nginx/nchan not installed (apt-get install -y nginx libnginx-mod-nchan): nchan skipped"
        SERVERS=$(tr ' ' '\n' <<<"$SERVERS" | grep -vxE 'nchan(-tls|-h2)?' | tr '\n' ' ')
    fi
fi

if [[ " $SERVERS " == *" axum "* ]]; then
    lock_version() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/[^0-9.]/, ""); print; exit }' "$ROOT/Cargo.lock"; }
    echo "axum: axum-peer, axum $(lock_version axum), tokio $(lock_version tokio), ${AXUM_THREADS:-1} runtime thread(s)" >>"$OUT/versions.txt"
fi

if [[ " $SERVERS " == *-tls\ * || " $SERVERS " == *-h2\ * ]]; then
    # One certificate for every HTTPS server of the run (nginx reads it as its
    # worker user: the directory and files are world-readable; a throwaway key).
    mkdir -p "$OUT/tls"
    chmod 755 "$OUT" "$OUT/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj /CN=localhost -keyout "$OUT/tls/key.pem" -out "$OUT/tls/cert.pem" 2>/dev/null ||
        die "openssl could not make the run's certificate"
    chmod 644 "$OUT/tls/key.pem"
fi

# ---- runs -------------------------------------------------------------------
start_named() { # SERVER LOG
    case $1 in
        herald) start_herald "$OUT/bin/herald" "$2" ;;
        herald-prev) start_herald "$OUT/bin/herald-prev" "$2" ;;
        nchan) start_nchan "$2" ;;
        axum) start_axum "$OUT/bin/axum-peer" "$2" ;;
        floor) start_floor "$OUT/bin/floor" 1 "$2" ;;
        floor16) start_floor "$OUT/bin/floor" 16 "$2" ;;
        herald-tls | herald-prev-tls | herald-h2 | herald-prev-h2)
            local bin=$OUT/bin/herald
            [[ $1 != herald-prev-* ]] || bin=$OUT/bin/herald-prev
            start_herald "$bin" "$2" --tls-cert "$OUT/tls/cert.pem" --tls-key "$OUT/tls/key.pem" || return 1
            SUB_URL=${SUB_URL/http:/https:}
            PUB_URL=${PUB_URL/http:/https:}
            ;;
        nchan-tls | nchan-h2) NCHAN_TLS_CERT=$OUT/tls/cert.pem NCHAN_TLS_KEY=$OUT/tls/key.pem start_nchan "$2" ;;
    esac
}

# point_args POINT: the load client's arguments for that point.
point_args() {
    case $1 in
        idle) echo "idle --connections $IDLE_CONNS --duration $IDLE_DURATION" ;;
        low) echo "fanout --connections $LOW_CONNS --rate $LOW_RATE --duration $DURATION" ;;
        mid) echo "fanout --connections $MID_CONNS --rate $MID_RATE --duration $DURATION" ;;
        throughput) echo "fanout --connections $TP_CONNS --rate 0 --duration $DURATION" ;;
        burst) echo "fanout --connections $TP_CONNS --rate 0 --pub-concurrency $BURST_PUBLISHERS --duration $DURATION" ;;
        million) echo "fanout --connections $TP_CONNS --rate $MILLION_RATE --pub-concurrency $MILLION_PUBLISHERS --duration $DURATION" ;;
        churn) echo "churn --concurrency $CHURN_CONCURRENCY --duration $DURATION" ;;
        pub1 | pub4 | pub16) echo "fanout --connections $TP_CONNS --rate 0 --pub-concurrency ${1#pub} --duration $DURATION" ;;
        batch16) echo "fanout --connections $TP_CONNS --rate 0 --pub-concurrency 1 --pub-batch $PUB_BATCH --duration $DURATION" ;;
        pubonly) echo "fanout --connections 0 --rate 0 --pub-concurrency $PUBONLY_PUBLISHERS --duration $DURATION" ;;
        # Not the load client: wrk (see wrk_pub.py), with the same publishers.
        pubwrk) echo "pubwrk" ;;
    esac
}

# has_batches SERVER: whether it takes herald's batch publish (a JSON array).
has_batches() {
    case $1 in
        herald | herald-tls | herald-h2) return 0 ;;
        herald-prev | herald-prev-tls | herald-prev-h2) [[ -n $PREV_BATCH ]] ;;
        *) return 1 ;;
    esac
}

# runs_on POINT SERVER: whether that point applies to that server.
runs_on() {
    [[ $1 != batch16 ]] || has_batches "$2"
}

# Upper bound of one load-client run: its window plus connecting and draining.
RUN_TIMEOUT=$(($(seconds "$DURATION") + $(seconds "$IDLE_DURATION") + 120))

read -r -a server_list <<<"$SERVERS"
read -r -a point_list <<<"$POINTS"
total=0
for point in "${point_list[@]}"; do
    skipped=()
    for server in "${server_list[@]}"; do
        if runs_on "$point" "$server"; then total=$((total + RUNS)); else skipped+=("$server"); fi
    done
    if ((${#skipped[@]})); then
        echo "$point: not run on ${skipped[*]} (no batch publishes: one event per request)" >>"$OUT/notes.txt"
        note "$point: skipping ${skipped[*]} (no batch publishes)"
    fi
done
n=0
failed=0
started_at=$SECONDS
# Servers interleaved within each round, so that they share the machine's moods.
for point in "${point_list[@]}"; do
    read -r -a args <<<"$(point_args "$point")"
    for ((k = 1; k <= RUNS; k++)); do
        for server in "${server_list[@]}"; do
            runs_on "$point" "$server" || continue
            n=$((n + 1))
            name="${point}__${server}__r$k"
            log="$OUT/logs/$name"
            t0=$SECONDS
            if ! start_named "$server" "$log.server.log"; then
                echo "[$n/$total] $point $server r$k: server did not start (see $log.server.log)"
                failed=$((failed + 1))
                stop_server
                continue
            fi
            set +e
            pub_args=()
            if [[ ${args[0]} == fanout ]]; then
                pub_args=(--pub-url "$PUB_URL" --pub-body "$PUB_BODY" --payload-bytes "$PAYLOAD_BYTES")
            fi
            h2_args=()
            if [[ $server == *-h2 && ${args[0]} != churn ]]; then
                h2_args=(--h2 --streams-per-conn "$H2_STREAMS")
            fi
            if [[ $point == pubwrk ]]; then
                taskset -c "$CLIENT_CPU" timeout -k 5 "$RUN_TIMEOUT" python3 "$PERF_DIR/wrk_pub.py" \
                    --url "$PUB_URL" --body "$PUB_BODY" --payload-bytes "$PAYLOAD_BYTES" \
                    --connections "$PUBONLY_PUBLISHERS" --duration "$(seconds "$DURATION")" \
                    --server-pid "$SERVER_PID" --json "$OUT/$name.json" --label "$server" \
                    >"$log.client.log" 2>&1 &
            else
                taskset -c "$CLIENT_CPU" timeout -k 5 "$RUN_TIMEOUT" "$OUT/bin/loadtest" "${args[@]}" \
                    --sub-url "$SUB_URL" "${pub_args[@]}" "${h2_args[@]}" --threads "$LOADTEST_THREADS" \
                    --server-pid "$SERVER_PID" --json "$OUT/$name.json" --label "$server" \
                    >"$log.client.log" 2>&1 &
            fi
            CLIENT_PID=$!
            wait "$CLIENT_PID"
            rc=$?
            CLIENT_PID=
            set -e
            stop_server
            if [[ $rc -eq 0 && -s $OUT/$name.json ]]; then
                echo "[$n/$total] $point $server r$k: ok ($((SECONDS - t0)) s)"
            else
                echo "[$n/$total] $point $server r$k: FAILED (rc=$rc, see $log.client.log)"
                tail -n 5 "$log.client.log" | sed 's/^/    /'
                failed=$((failed + 1))
            fi
        done
    done
done

note "runs done in $((SECONDS - started_at)) s, $failed failed"
python3 "$PERF_DIR/summarize.py" "$OUT" | tee "$OUT/summary.md"
note "summary: $OUT/summary.md"
((failed == 0)) || exit 1
