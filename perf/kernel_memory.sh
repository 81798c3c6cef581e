#!/usr/bin/env bash
# perf/kernel_memory.sh: kernel memory per idle SSE stream (for docs/tuning.md).
#
# Opens N idle herald streams from the bundled load client on loopback and
# reads the kernel's slab caches (/proc/slabinfo, root only) and its TCP buffer
# pages (/proc/net/sockstat) before and while they are held. On loopback both
# ends of a stream live in this kernel, so a stream pair is two sockets; the
# per-socket figure halves the pair (the two sides hold the same objects: a
# TCP socket, its inode and file, an epoll entry).
#
#   perf/kernel_memory.sh                 # 10,000 streams
#   CONNS=50000 perf/kernel_memory.sh
set -euo pipefail
PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
# shellcheck source=servers.sh
source "$PERF_DIR/servers.sh"
CONNS=${CONNS:-10000}
HOLD=${HOLD:-12s}
[[ -r /proc/slabinfo ]] || { echo "kernel_memory.sh: /proc/slabinfo is not readable (run as root)" >&2; exit 1; }
cargo build --release -q -p herald -p loadtest --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release
tmp=$(mktemp -d)
trap 'stop_server; rm -rf "$tmp"' EXIT

# slab_bytes: "cache bytes" for every slab cache (active objects x object size).
slab_bytes() { awk 'NR > 2 { print $1, $2 * $4 }' /proc/slabinfo; }
tcp_pages() { awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat; }

start_herald "$BIN/herald" "$tmp/herald.log"
slab_bytes >"$tmp/before"
pages_before=$(tcp_pages)
taskset -c 1 "$BIN/loadtest" idle --sub-url "$SUB_URL" --connections "$CONNS" \
    --duration "$HOLD" --server-pid "$SERVER_PID" >"$tmp/client.log" 2>&1 &
client=$!
# Wait (bounded) until every stream is open on the server.
deadline=$((SECONDS + 60))
until [[ $(curl -s "http://$SERVER_ADDR/api/user/sse/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])' 2>/dev/null) == "$CONNS" ]]; do
    ((SECONDS < deadline)) || { echo "streams did not open" >&2; exit 1; }
    sleep 0.2
done
sleep 2 # let the CONNECTED frames be read and the buffers settle
slab_bytes >"$tmp/during"
pages_during=$(tcp_pages)
wait "$client"
python3 - "$tmp/before" "$tmp/during" "$CONNS" "$pages_before" "$pages_during" <<'PY'
import sys
before = dict(l.split() for l in open(sys.argv[1]))
during = dict(l.split() for l in open(sys.argv[2]))
n = int(sys.argv[3])
delta = {k: int(during.get(k, 0)) - int(before.get(k, 0)) for k in during}
top = sorted(((v, k) for k, v in delta.items() if v > 0), reverse=True)[:10]
total = sum(v for v in delta.values())
pages = (int(sys.argv[5]) - int(sys.argv[4])) * 4096
print(f"{n} idle streams over loopback ({2 * n} sockets)")
print(f"slab growth: {total / 1e6:.1f} MB = {total / n:.0f} B per stream pair = {total / (2 * n):.0f} B per socket")
print(f"TCP buffer pages (sockstat mem): {pages / 1e6:.2f} MB = {pages / (2 * n):.0f} B per socket")
print("largest slab caches (B per socket):")
for v, k in top:
    print(f"  {k:<28} {v / (2 * n):8.0f}")
PY
