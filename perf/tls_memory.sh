#!/usr/bin/env bash
# perf/tls_memory.sh: idle memory per stream over TLS, herald against nginx+nchan,
# side by side: HTTP/1.1 over TLS, HTTP/2 with one stream per connection, HTTP/2
# with 10 streams per connection. A fresh server per measurement; the client is
# perf/tls_idle.py (Python asyncio + ssl, and the h2 package for HTTP/2), which
# reports the server's RSS growth per stream. One self-signed P-256 certificate
# (openssl) for both servers.
#
#   python3 -m venv /tmp/perf-venv && /tmp/perf-venv/bin/pip install -r perf/requirements.txt
#   PYTHON=/tmp/perf-venv/bin/python perf/tls_memory.sh            # 2,000 streams
#   STREAMS="2000 10000" PYTHON=/tmp/perf-venv/bin/python perf/tls_memory.sh
set -euo pipefail
PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"
PYTHON=${PYTHON:-python3}
STREAMS=${STREAMS:-2000}
MODES=${MODES:-0 1 10}        # 0: HTTP/1.1; K: HTTP/2 with K streams per connection
SERVERS=${SERVERS:-herald nchan}
CLIENT_CPU=${CLIENT_CPU:-1}
HOLD=${HOLD:-5}               # seconds streams are held before the second figure (herald gives the heap back once a connect burst is over)
"$PYTHON" -c 'import h2' 2>/dev/null || { echo "tls_memory.sh: $PYTHON lacks the h2 package (pip install -r perf/requirements.txt)" >&2; exit 1; }
cargo build --release -q -p herald --manifest-path "$ROOT/Cargo.toml"
tmp=$(mktemp -d)
chmod 755 "$tmp"
trap 'stop_server; rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
chmod 644 "$tmp/key.pem"

printf '| server | streams | per connection | bytes per stream, all open | after %s s |\n|---|---:|---|---:|---:|\n' "$HOLD"
for n in $STREAMS; do
    for mode in $MODES; do
        for server in $SERVERS; do
            case $server in
                herald)
                    start_herald "$ROOT/target/release/herald" "$tmp/herald.log" \
                        --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem"
                    url="https://$SERVER_ADDR/api/user/sse/connect?userId=u{i}" ;;
                nchan)
                    NCHAN_TLS_CERT=$tmp/cert.pem NCHAN_TLS_KEY=$tmp/key.pem start_nchan "$tmp/nchan.log"
                    url=$SUB_URL ;;
            esac
            out=$(taskset -c "$CLIENT_CPU" timeout 600 "$PYTHON" "$PERF_DIR/tls_idle.py" --url "$url" \
                --streams "$n" --per-conn "$mode" --server-pid "$SERVER_PID" --hold "$HOLD" 2>"$tmp/client.err") \
                || { echo "tls_memory.sh: $server $n/$mode failed: $(tail -1 "$tmp/client.err")" >&2; stop_server; continue; }
            per=$("$PYTHON" -c 'import json,sys; j = json.loads(sys.argv[1]); print(j["bytes_per_stream_open"], "|", j["bytes_per_stream"])' "$out")
            what=$([[ $mode == 0 ]] && echo "HTTP/1.1 over TLS" || echo "HTTP/2, $mode streams per connection")
            printf '| %s | %s | %s | %s |\n' "$server" "$n" "$what" "$per"
            stop_server
        done
    done
done
