#!/usr/bin/env bash
# perf/attack.sh: herald under attack, side by side with its previous build and
# nginx+nchan (`ssl http2`): for each MODE, N hostile HTTP/2 connections against
# a fresh server (pinned to SERVER_CPU), the client perf/attack.py pinned to
# CLIENT_CPU, one honest SSE stream on its own connection that must keep
# receiving events published during and after the attack. Per row: the server's
# RSS growth per attacking connection at the peak and at the end of the hold, its
# CPU time per connection and per MB sent, how long it kept the connections, and
# the GOAWAY/RST_STREAM/answers the attacker got. One self-signed P-256
# certificate for every server. Servers run with their defaults (herald:
# --header-timeout 10s, --idle-timeout 60s, --max-body 64KiB; nginx: perf/nchan.conf.in).
#
#   python3 -m venv /tmp/perf-venv && /tmp/perf-venv/bin/pip install -r perf/requirements.txt
#   PYTHON=/tmp/perf-venv/bin/python perf/attack.sh
#   MODES="bodies idle" SERVERS="herald nchan" N=10 PYTHON=/tmp/perf-venv/bin/python perf/attack.sh
#
# Environment (defaults in brackets):
#   SERVERS [herald herald-prev nchan]
#   MODES [bodies zero_window slow_headers partial partial_record empty_frames idle]
#   N [20]             attacking connections per row
#   HOLD [35]          seconds from the attack's start to its end (past herald's
#                      3 x --header-timeout for answers without window)
#   IDLE_HOLD [65]     the same for `idle` (past herald's --idle-timeout)
#   FLOOD [10]         seconds of empty_frames' flood
#   HERALD_BASE [273b89d]  the commit built as herald-prev (servers.sh's build_herald_at)
#   PYTHON [python3]   with the h2 package
#   SERVER_CPU [0] CLIENT_CPU [1]   OUT [perf/out/attack-<date>]
# Results: $OUT/<mode>__<server>.json (attack.py's report), logs/, table.md.
set -euo pipefail
PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"
PYTHON=${PYTHON:-python3}
SERVERS=${SERVERS:-herald herald-prev nchan}
MODES=${MODES:-bodies zero_window slow_headers partial partial_record empty_frames idle}
N=${N:-20}
HOLD=${HOLD:-35}
IDLE_HOLD=${IDLE_HOLD:-65}
FLOOD=${FLOOD:-10}
HERALD_BASE=${HERALD_BASE:-273b89d}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$PERF_DIR/out/attack-$(date +%Y%m%d-%H%M%S)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "attack.sh: $*" >&2; exit 1; }
note() { echo "== $*" >&2; }

for v in N HOLD IDLE_HOLD FLOOD; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
((N >= 1 && N <= 200)) || die "N must be within 1..200"
((HOLD >= 5 && HOLD <= 300 && IDLE_HOLD >= 5 && IDLE_HOLD <= 300)) || die "HOLD and IDLE_HOLD must be within 5..300"
for m in $MODES; do
    case $m in bodies | zero_window | slow_headers | partial | partial_record | empty_frames | idle) ;;
        *) die "unknown mode '$m'" ;;
    esac
done
for s in $SERVERS; do
    case $s in herald | herald-prev | nchan) ;; *) die "unknown server '$s'" ;; esac
done
command -v taskset >/dev/null || die "taskset is missing (util-linux)"
command -v openssl >/dev/null || die "openssl is missing"
"$PYTHON" -c 'import h2' 2>/dev/null || die "$PYTHON lacks the h2 package (pip install -r perf/requirements.txt)"

cleanup() {
    local rc=$?
    stop_all
    remove_prev_worktree
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$OUT/logs" "$OUT/bin" "$OUT/tls"
OUT=$(cd "$OUT" && pwd)   # nginx reads the certificate relative to its own prefix otherwise
note "results in $OUT"
(cd "$ROOT" && timeout "$CARGO_TIMEOUT" cargo build --release -q -p herald) || die "cargo build failed"
cp "$TARGET/release/herald" "$OUT/bin/herald"
echo "herald: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml || echo '+dirty')" >"$OUT/versions.txt"
if [[ " $SERVERS " == *" herald-prev "* ]]; then
    if build_herald_at "$ROOT" "$HERALD_BASE" "$OUT/bin/herald-prev"; then
        echo "herald-prev: $(git -C "$ROOT" rev-parse --short "$HERALD_BASE^{commit}") ($HERALD_BASE)" >>"$OUT/versions.txt"
    else
        note "herald at $HERALD_BASE could not be built: herald-prev skipped"
        SERVERS=$(tr ' ' '\n' <<<"$SERVERS" | grep -vx herald-prev | tr '\n' ' ')
    fi
    remove_prev_worktree
fi
if [[ " $SERVERS " == *" nchan "* ]]; then
    if command -v nginx >/dev/null && [[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]]; then
        echo "nchan: $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo '?'), $(nginx -v 2>&1)" >>"$OUT/versions.txt"
    else
        note "nginx/nchan not installed (apt-get install -y nginx libnginx-mod-nchan): nchan skipped"
        SERVERS=$(tr ' ' '\n' <<<"$SERVERS" | grep -vx nchan | tr '\n' ' ')
    fi
fi

# nginx reads the certificate as its worker user: world-readable, a throwaway key.
chmod 755 "$OUT" "$OUT/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -keyout "$OUT/tls/key.pem" -out "$OUT/tls/cert.pem" 2>/dev/null ||
    die "openssl could not make the run's certificate"
chmod 644 "$OUT/tls/key.pem"

rows=()
for mode in $MODES; do
    hold=$HOLD
    [[ $mode != idle ]] || hold=$IDLE_HOLD
    for server in $SERVERS; do
        name="${mode}__${server}"
        log="$OUT/logs/$name"
        case $server in
            herald | herald-prev)
                start_herald "$OUT/bin/$server" "$log.server.log" \
                    --tls-cert "$OUT/tls/cert.pem" --tls-key "$OUT/tls/key.pem" || { note "$name: server did not start"; stop_server; continue; }
                # zero_window asks for /metrics (6 KB, rendered for each request, so
                # each answer waiting on the window is held in memory); the larger
                # page at / (15 KB) is a static slice that costs nothing to hold.
                args=(--sub-path '/api/user/sse/connect?userId=honest' --pub-path /api/broadcast
                    --pub-body '{"data":"{marker}","target":"all"}' --post-path /api/broadcast
                    --get-path /metrics)
                ;;
            nchan)
                NCHAN_TLS_CERT=$OUT/tls/cert.pem NCHAN_TLS_KEY=$OUT/tls/key.pem start_nchan "$log.server.log" ||
                    { note "$name: server did not start"; stop_server; continue; }
                # nchan.conf.in serves no static page: the zero-window GETs subscribe.
                # Bodies past client_body_buffer_size go to files under body/: counted too.
                args=(--sub-path /sub/honest --pub-path /pub --pub-body '{marker}' --post-path /pub
                    --get-path '/sub/{i}' --get-sse --disk-dir "$SERVER_TMP/body")
                ;;
        esac
        set +e
        taskset -c "$CLIENT_CPU" timeout -k 5 $((hold + 90)) "$PYTHON" "$PERF_DIR/attack.py" \
            --base "https://$SERVER_ADDR" --mode "$mode" --conns "$N" --server-pid "$SERVER_PID" \
            --hold "$hold" --flood "$FLOOD" --label "$server" "${args[@]}" \
            >"$OUT/$name.json" 2>"$log.client.log" &
        CLIENT_PID=$!
        wait "$CLIENT_PID"
        rc=$?
        CLIENT_PID=
        set -e
        stop_server
        if [[ $rc -eq 0 && -s $OUT/$name.json ]]; then
            rows+=("$OUT/$name.json")
            note "$name: ok"
        else
            note "$name: FAILED (rc=$rc): $(tail -n 1 "$log.client.log")"
            rm -f "$OUT/$name.json"
        fi
    done
done
((${#rows[@]})) || die "no row measured"
"$PYTHON" "$PERF_DIR/attack.py" table "${rows[@]}" | tee "$OUT/table.md"
note "table: $OUT/table.md"
